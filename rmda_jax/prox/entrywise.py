r"""L1 and the elastic net: every entry of a regularized leaf penalized on its own.

.. math::

   \psi(x) = \rho \|x\|_1 + \frac{1 - \rho}{2} \|x\|_2^2,\qquad
   \mathrm{prox}_{t\psi}(x) = \frac{\mathrm{soft}(x, t\rho)}{1 + t(1 - \rho)},

and under a diagonal metric ``D``: ``z = soft(b, t rho) / (D + t (1 - rho))``.
``rho = l1_ratio = 1`` is the L1 norm (unstructured sparsity).

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> z = rmda_jax.elastic_net(1.0, l1_ratio=0.5).prox({"w": jnp.array([[3.0, -0.2]])})
  >>> [round(float(v), 4) for v in z["w"][0]]   # soft(x, 0.5) / 1.5
  [1.6667, -0.0]
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp

from rmda_jax.core import rules as leaf_rules
from rmda_jax.core.numerics import safe_divide, soft_threshold
from rmda_jax.prox.regularizer import LeafRegularizer

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ElasticNet(LeafRegularizer):
  """``lambda * (l1_ratio * ||x||_1 + (1 - l1_ratio)/2 * ||x||_2^2)`` on the chosen leaves.

  Attributes:
    l1_ratio: in ``[0, 1]``; 1 is pure L1, 0 pure squared L2 (weight decay).
  """

  l1_ratio: float = 0.5
  rule_type: ClassVar[type] = leaf_rules.Elementwise
  has_exact_diag_prox: ClassVar[bool] = True
  screens: ClassVar[bool] = True

  def __post_init__(self) -> None:
    super().__post_init__()
    if not (isinstance(self.l1_ratio, numbers.Real) and 0 <= self.l1_ratio <= 1):
      raise ValueError(f"l1_ratio must be in [0, 1], got {self.l1_ratio!r}.")

  def default_rule(self, path: str, leaf: Any) -> leaf_rules.Elementwise | None:
    return leaf_rules.default_elementwise_rule(path, leaf)

  def leaf_value(self, x: Array, rule: Any) -> Array:
    r = self.l1_ratio
    return r * jnp.sum(jnp.abs(x)) + (1 - r) / 2 * jnp.sum(jnp.square(x))

  def leaf_prox(self, x: Array, threshold: Array, rule: Any) -> Array:
    r = self.l1_ratio
    return soft_threshold(x, threshold * r) / (1 + threshold * (1 - r))

  def leaf_support(self, x: Array, rule: Any) -> Array:
    return x != 0

  def block_axes(self, rule: Any, ndim: int) -> tuple[int, ...]:
    return ()

  def leaf_screen(self, b: Array, threshold: Array, rule: Any) -> Array:
    return jnp.abs(b) > threshold * self.l1_ratio

  def leaf_prox_diag(self, b: Array, diag: Array, threshold: Array, rule: Any) -> Array:
    r = self.l1_ratio
    return safe_divide(soft_threshold(b, threshold * r), diag + threshold * (1 - r))


def l1(strength: chex.Numeric, rules: Any = None) -> ElasticNet:
  """L1 regularizer ``lambda * ||x||_1`` (unstructured sparsity).

  Args:
    strength: ``lambda >= 0``.
    rules: which leaves are penalized: None (every leaf with ndim >= 2 except
      biases, norm scales and embeddings), a callable
      ``(path, leaf) -> Elementwise() | None``, or a tree of those.

  Returns:
    An :class:`ElasticNet` with ``l1_ratio = 1``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> z = rmda_jax.l1(0.5).prox({"w": jnp.array([[1.0, -0.2]])}, 1.0)
    >>> [float(v) for v in z["w"][0]]
    [0.5, -0.0]
  """
  return ElasticNet(strength=strength, rules=rules, l1_ratio=1.0)


def elastic_net(strength: chex.Numeric, l1_ratio: float = 0.5, rules: Any = None) -> ElasticNet:
  """Elastic net ``lambda * (l1_ratio ||x||_1 + (1 - l1_ratio)/2 ||x||^2)``.

  Args:
    strength: ``lambda >= 0``.
    l1_ratio: in ``[0, 1]``; 1 is pure L1, 0 pure squared L2 (weight decay).
    rules: as for :func:`l1`.

  Returns:
    An :class:`ElasticNet`.

  Example:
    >>> import rmda_jax
    >>> rmda_jax.elastic_net(1e-3, l1_ratio=0.9).l1_ratio
    0.9
  """
  return ElasticNet(strength=strength, rules=rules, l1_ratio=l1_ratio)
