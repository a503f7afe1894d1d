r"""The nuclear norm: ``lambda * sum_i sigma_i(X)`` per leaf, for low-rank weights.

Each regularized leaf is the matrix ``X = reshape(leaf, (-1, shape[-1]))``: a
Flax Dense kernel ``(in, out)`` as is, a conv kernel ``(kh, kw, in, out)`` as
the ``(kh * kw * in, out)`` matrix, whose rank is the number of independent
filters; a stacked leaf (``Matrix(layer_axes=...)``, see
:func:`rmda_jax.core.rules.per_layer`) is one such matrix per layer, all
decomposed in one batched SVD. The prox is ``U max(S - t, 0) V^T``. There is no exact prox under a
non-scalar diagonal metric: the adaptive optimizers use the inexact solver
(:mod:`rmda_jax.prox.inexact`) with one step ``1 / max(D)`` per leaf.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.prox import spectral
  >>> sigma = spectral.singular_values(jnp.ones((2, 2, 3)))   # a (4, 3) matrix of rank 1
  >>> [round(float(s), 4) for s in sigma]
  [3.4641, 0.0, 0.0]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp

from rmda_jax.core import rules as leaf_rules
from rmda_jax.prox.regularizer import LeafRegularizer

Array = jax.Array


def _order(ndim: int, layer_axes: Sequence[int]) -> tuple[int, ...]:
  """The layer axes first, then the others in order."""
  return tuple(layer_axes) + tuple(a for a in range(ndim) if a not in layer_axes)


def as_matrix(x: Array, layer_axes: Sequence[int] = ()) -> Array:
  """``x`` as the matrix ``(prod(shape[:-1]), shape[-1])``, or a stack of them.

  With ``layer_axes``, shape ``(*layers, rows, shape[-1])``: each layer's
  other axes as one matrix.
  """
  if not layer_axes:
    return x.reshape(-1, x.shape[-1])
  moved = jnp.transpose(x, _order(x.ndim, layer_axes))
  return moved.reshape(moved.shape[: len(layer_axes)] + (-1, x.shape[-1]))


def from_matrix(m: Array, shape: Sequence[int], layer_axes: Sequence[int] = ()) -> Array:
  """The inverse of :func:`as_matrix` for a leaf of ``shape``."""
  if not layer_axes:
    return m.reshape(shape)
  order = _order(len(shape), layer_axes)
  moved = m.reshape(tuple(shape[a] for a in order))
  return jnp.transpose(moved, tuple(order.index(a) for a in range(len(shape))))


def singular_values(x: Array, layer_axes: Sequence[int] = ()) -> Array:
  """The singular values of :func:`as_matrix` of ``x`` (per layer: ``(*layers, r)``)."""
  return jnp.linalg.svd(as_matrix(x, layer_axes), compute_uv=False)


def rank_tolerance(sigma: Array, shape: Sequence[int]) -> Array:
  """The numerical-rank cutoff used by ``numpy.linalg.matrix_rank`` (per matrix of a stack)."""
  eps = jnp.finfo(sigma.dtype).eps
  return jnp.max(sigma, axis=-1, keepdims=True, initial=0) * max(shape[-2:]) * eps


@dataclasses.dataclass(frozen=True)
class NuclearNorm(LeafRegularizer):
  """``lambda * sum_i sigma_i(X)`` on ``X = reshape(leaf, (-1, shape[-1]))`` (module doc)."""

  rule_type: ClassVar[type] = leaf_rules.Matrix

  def default_rule(self, path: str, leaf: Any) -> leaf_rules.Matrix | None:
    return leaf_rules.default_matrix_rule(path, leaf)

  def leaf_value(self, x: Array, rule: Any) -> Array:
    return jnp.sum(singular_values(x, rule.layer_axes))

  def leaf_prox(self, x: Array, threshold: Array, rule: Any) -> Array:
    layers = rule.layer_axes
    u, s, vt = jnp.linalg.svd(as_matrix(x, layers), full_matrices=False)
    t = jnp.asarray(threshold)
    if t.size == 1:
      t = jnp.reshape(t, ())
    else:  # one threshold per layer, shaped like x with the matrix axes kept as 1
      t = jnp.transpose(jnp.broadcast_to(t, t.shape), _order(t.ndim, layers))
      t = t.reshape(t.shape[: len(layers)] + (1,))
    s = jnp.maximum(s - t, 0)
    return from_matrix((u * s[..., None, :]) @ vt, x.shape, layers)

  def leaf_support(self, x: Array, rule: Any) -> Array:
    sigma = singular_values(x, rule.layer_axes)
    return sigma > rank_tolerance(sigma, as_matrix(x, rule.layer_axes).shape)

  def block_axes(self, rule: Any, ndim: int) -> tuple[int, ...]:
    return tuple(a for a in range(ndim) if a not in rule.layer_axes)


def nuclear_norm(strength: chex.Numeric, rules: Any = None) -> NuclearNorm:
  """Nuclear norm ``lambda * ||X||_*`` per leaf (low-rank weights).

  Args:
    strength: ``lambda >= 0``.
    rules: None (every leaf with ndim >= 2 except biases, norm scales and
      embeddings), a callable ``(path, leaf) -> Matrix() | None``, or a tree
      of those.

  Returns:
    A :class:`NuclearNorm`.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> z = rmda_jax.nuclear_norm(1.0).prox({"w": jnp.diag(jnp.array([3.0, 0.5]))})
    >>> [float(v) for v in jnp.diag(z["w"])]
    [2.0, 0.0]
  """
  return NuclearNorm(strength=strength, rules=rules)
