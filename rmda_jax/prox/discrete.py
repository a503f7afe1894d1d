"""Discrete-weight structure: weights on a finite set of values (binary, ternary, ...).

Two regularizers over the same allowed set ``V = {v_1 < ... < v_K}`` per leaf:

* :func:`discrete_set`, the indicator ``psi(x) = 0`` if every entry is in
  ``V``, ``+inf`` otherwise. Its prox is the projection, entry by entry, to
  the nearest allowed value (for any threshold). Trained with RMDA/RAMDA the
  structured point ``z`` always lies on ``V``; after the stage-wise momentum
  ramp, so do the params.
* :func:`discrete_penalty`, the distance ``psi(x) = sum_i min_k |x_i - v_k|``,
  a continuous (non-convex) pull towards ``V``. Its prox moves every entry
  towards its nearest value by at most the threshold:
  ``z = v(x) + soft(x - v(x), t)`` with ``v(x)`` the nearest allowed value.
  (Among the candidates ``v + soft(x - v, t)``, one per allowed value, the
  nearest ``v`` has the smallest objective, and the minimum over ``z`` of a
  minimum over ``v`` is that candidate.)

Both have exact diagonal-metric proxes (the metric only rescales each entry),
so every optimizer of the library uses them without an inner solver.

``scale="fan_in"`` multiplies the values of a leaf by ``1/sqrt(fan_in)``
(``fan_in = prod(shape[:-1])``), the scale of Flax's default initializers, so
one ``values=(-1, 0, 1)`` fits every layer.

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> reg = rmda_jax.discrete_set((-1.0, 0.0, 1.0))
  >>> [float(v) for v in reg.prox({"w": jnp.array([[0.7, -0.2, -3.0]])})["w"][0]]
  [1.0, 0.0, -1.0]
  >>> pen = rmda_jax.discrete_penalty(0.25, (-1.0, 1.0))
  >>> [float(v) for v in pen.prox({"w": jnp.array([[0.5, -0.9, 2.0]])})["w"][0]]
  [0.75, -1.0, 1.75]

References:
  Bai, Wang & Liberty, "ProxQuant: Quantized Neural Networks via Proximal
  Operators", ICLR 2019; Huang & Lee, ICLR 2022 (section 1: structures a
  regularizer can induce).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np

from rmda_jax.core import rules as leaf_rules
from rmda_jax.core.numerics import safe_divide, soft_threshold
from rmda_jax.prox.regularizer import LeafRegularizer

Array = jax.Array
SCALES = (None, "fan_in")


def _check_values(values: Any) -> tuple[float, ...]:
  if isinstance(values, (str, bytes)):
    raise TypeError(f"values must be a sequence of numbers, got {values!r}.")
  try:
    values = tuple(_value(v) for v in values)
  except (TypeError, ValueError) as err:
    raise TypeError(f"values must be a sequence of numbers, got {values!r}.") from err
  if not values or not all(math.isfinite(v) for v in values):
    raise ValueError(f"values must be a non-empty sequence of finite numbers, got {values!r}.")
  if len(set(values)) != len(values):
    raise ValueError(f"values must be distinct, got {values!r}.")
  return tuple(sorted(values))


def _value(v: Any) -> float:
  """One allowed value: a number or a scalar array (not a bool or a string)."""
  if isinstance(v, (bool, str, bytes, np.bool_)) or np.ndim(v) != 0:
    raise TypeError(f"not a number: {v!r}")
  return float(v)


@dataclasses.dataclass(frozen=True)
class DiscreteValues(LeafRegularizer):
  """The allowed values of a leaf and the nearest one: the base of both discrete regularizers.

  Attributes:
    values: the allowed values, sorted and distinct.
    scale: None (values as given) or ``"fan_in"`` (values / sqrt(fan_in) per leaf).
  """

  values: Sequence[float] = (-1.0, 1.0)
  scale: str | None = None
  rule_type: ClassVar[type] = leaf_rules.Elementwise
  has_exact_diag_prox: ClassVar[bool] = True

  def __post_init__(self) -> None:
    super().__post_init__()
    object.__setattr__(self, "values", _check_values(self.values))
    if self.scale not in SCALES:
      raise ValueError(f"scale must be one of {SCALES}, got {self.scale!r}.")

  def default_rule(self, path: str, leaf: Any) -> leaf_rules.Elementwise | None:
    return leaf_rules.default_elementwise_rule(path, leaf)

  def leaf_values(self, shape: Sequence[int]) -> tuple[float, ...]:
    """The allowed values of a leaf of this shape."""
    if self.scale == "fan_in":
      factor = 1 / math.sqrt(max(math.prod(shape[:-1]), 1))
      return tuple(v * factor for v in self.values)
    return tuple(self.values)

  def nearest(self, x: Array) -> Array:
    """The allowed value nearest to each entry (the lower one at a midpoint)."""
    values = jnp.asarray(self.leaf_values(x.shape), x.dtype)
    midpoints = (values[1:] + values[:-1]) / 2
    return values[jnp.searchsorted(midpoints, x, side="left")]

  def on_set(self, x: Array) -> Array:
    """Boolean mask of the entries that are exactly an allowed value."""
    values = jnp.asarray(self.leaf_values(x.shape), x.dtype)
    return jnp.any(x[..., None] == values, axis=-1)

  def leaf_support(self, x: Array, rule: Any) -> Array:
    return x != 0

  def block_axes(self, rule: Any, ndim: int) -> tuple[int, ...]:
    return ()

  def leaf_prox_diag(self, b: Array, diag: Array, threshold: Array, rule: Any) -> Array:
    # 1/2 D z^2 - b z = D/2 (z - b/D)^2 + const: the prox of y = b/D with threshold t/D.
    y = safe_divide(b, diag)
    return self.leaf_prox(y, safe_divide(threshold, diag), rule)


@dataclasses.dataclass(frozen=True)
class DiscreteSet(DiscreteValues):
  """Indicator of ``V^n``: 0 when every entry is an allowed value, ``+inf`` otherwise."""

  def leaf_value(self, x: Array, rule: Any) -> Array:
    return jnp.where(jnp.all(self.on_set(x)), 0.0, jnp.inf).astype(x.dtype)

  def leaf_prox(self, x: Array, threshold: Array, rule: Any) -> Array:
    return self.nearest(x)


@dataclasses.dataclass(frozen=True)
class DiscretePenalty(DiscreteValues):
  """``lambda * sum_i min_k |x_i - v_k|``: the L1 distance to the allowed set."""

  def leaf_value(self, x: Array, rule: Any) -> Array:
    return jnp.sum(jnp.abs(x - self.nearest(x)))

  def leaf_prox(self, x: Array, threshold: Array, rule: Any) -> Array:
    nearest = self.nearest(x)
    return nearest + soft_threshold(x - nearest, threshold)


def discrete_set(
  values: Sequence[float], rules: Any = None, scale: str | None = None
) -> DiscreteSet:
  """Constrain the chosen leaves to a finite set of values (prox = projection).

  Args:
    values: the allowed values, e.g. ``(-1, 1)`` (binary) or ``(-1, 0, 1)`` (ternary).
    rules: which leaves, as for :func:`rmda_jax.l1`: None (every leaf with
      ndim >= 2 except biases, norm scales and embeddings), a callable
      ``(path, leaf) -> Elementwise() | None`` or a tree of those.
    scale: None (values as given) or ``"fan_in"`` (values / sqrt(fan_in) per leaf).

  Returns:
    A :class:`DiscreteSet`.

  Raises:
    TypeError / ValueError: values that are not distinct finite numbers, an
      unknown ``scale``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> reg = rmda_jax.discrete_set((-1, 0, 1))                   # ternary weights
    >>> tx = rmda_jax.rmda(0.1, momentum=1.0, regularizer=reg)
    >>> params = {"kernel": jnp.array([[0.9, -0.2], [0.4, -1.3]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"kernel": jnp.zeros((2, 2))}, state, params)
    >>> optax.apply_updates(params, updates)["kernel"].tolist()   # each weight on its nearest value
    [[1.0, 0.0], [0.0, -1.0]]
  """
  return DiscreteSet(strength=1.0, rules=rules, values=values, scale=scale)


def discrete_penalty(
  strength: chex.Numeric, values: Sequence[float], rules: Any = None, scale: str | None = None
) -> DiscretePenalty:
  """``strength * sum_i dist(x_i, values)``: a pull of every weight towards the set.

  Args:
    strength: ``lambda >= 0``.
    values: the allowed values, as for :func:`discrete_set`.
    rules: which leaves, as for :func:`discrete_set`.
    scale: as for :func:`discrete_set`.

  Returns:
    A :class:`DiscretePenalty`.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> pen = rmda_jax.discrete_penalty(0.25, (-1.0, 1.0))
    >>> pen.prox({"w": jnp.array([[0.5, -0.9]])})["w"].tolist()   # each moved by at most 0.25
    [[0.75, -1.0]]
  """
  return DiscretePenalty(strength=strength, rules=rules, values=values, scale=scale)
