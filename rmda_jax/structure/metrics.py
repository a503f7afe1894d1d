"""Structure metrics, with the reference definitions of the RMDA/RAMDA papers.

All functions are pure and jittable (the regularizer's rules are static) and
return float32 scalars; an empty set (no groups, no matrices) gives 0, never
NaN.

* :func:`unstructured_sparsity`: ``1 - nnz / size`` over **all** params
  (biases and norm scales included).
* :func:`group_sparsity`: ``1 - #nonzero groups / #groups`` over the
  regularized groups (conv input channels included, the RAMDA code's
  definition; the ICLR'22 poster counted conv kernels instead).
* :func:`weighted_group_sparsity`: ``1 - sum_g n_g [g nonzero] / sum_g n_g``
  with ``n_g`` the group size: the fraction of regularized weights lying in
  all-zero groups (the metric of the RAMDA tables).
* :func:`low_rank_level`: ``1 - #nonzero singular values / #singular values``
  over the regularized matrices (numerical rank with the
  ``numpy.linalg.matrix_rank`` cutoff).

Which groups (:func:`counted_groups`)? With a :func:`~rmda_jax.group_lasso` regularizer, its groups
(per-leaf, or coupled groups spanning several leaves: a group counts as zero
only when all of its slices are); with :func:`~rmda_jax.l1` / elastic net,
single entries of its leaves; with a nuclear norm or None, the default Flax
input-wise groups. A NaN or infinite entry counts as nonzero, so a diverged
model never looks sparse.

A :class:`StructureTracker` follows the support of the structured point
across steps and reports when it last changed (the identification step).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from rmda_jax.core.groups import Groups
from rmda_jax.core.layout import GroupLayout
from rmda_jax.core.numerics import as_compute_dtype
from rmda_jax.core.rules import GroupRule
from rmda_jax.prox.discrete import DiscreteSet, DiscreteValues
from rmda_jax.prox.entrywise import ElasticNet
from rmda_jax.prox.group_norms import GroupLasso, group_lasso
from rmda_jax.prox.regularizer import Placement, Regularizer, check_regularizer
from rmda_jax.prox.spectral import (
  NuclearNorm,
  as_matrix,
  nuclear_norm,
  rank_tolerance,
  singular_values,
)


def _ratio(num: chex.Numeric, den: chex.Numeric) -> jax.Array:
  num = jnp.asarray(num, jnp.float32)
  den = jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, 1 - num / jnp.where(den > 0, den, 1), 0.0)


def unstructured_sparsity(params: optax.Params) -> jax.Array:
  """Fraction of exactly-zero entries over all leaves of ``params``."""
  leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  total = sum(x.size for x in leaves)
  nonzero = sum((jnp.count_nonzero(x) for x in leaves), jnp.zeros((), jnp.int32))
  return _ratio(nonzero, total)


def counted_groups(params: optax.Params, regularizer: Regularizer | None = None) -> Placement:
  """The groups the metrics count, laid on ``params`` (the module doc says which).

  Every term's rule is a :class:`~rmda_jax.core.GroupLayout`.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}
    >>> placement = counted_groups(params, rmda_jax.l1(1.0))
    >>> [(placement.paths[t.leaves[0]], t.rule.num_groups) for t in placement.terms]   # entries
    [('kernel', 6)]
  """
  check_regularizer(regularizer)
  if isinstance(regularizer, GroupLasso):
    return regularizer.place(params)
  defaults = group_lasso(0.0).place(params)
  if isinstance(regularizer, ElasticNet):
    rules = [None if r is None else GroupRule(()) for r in regularizer.place(params).rules]
  else:
    rules = defaults.rules
    if regularizer is not None:
      rules = [
        r if own is not None else None for r, own in zip(rules, regularizer.place(params).rules)
      ]
  chosen = dict(zip(defaults.paths, rules))
  return GroupLasso(0.0, rules=lambda path, leaf: chosen[path]).place(params)


def nonzero_groups(xs: list[Any], layout: GroupLayout) -> jax.Array:
  """Which groups of one layout are nonzero, in the compute dtype.

  See :meth:`rmda_jax.core.GroupLayout.nonzero`.
  """
  return layout.nonzero([as_compute_dtype(x) for x in xs])


def group_supports(params: optax.Params, regularizer: Regularizer | None = None) -> list[jax.Array]:
  """Per counted term, a boolean array of its nonzero groups.

  A leaf's has its reduced axes kept, a family's has shape ``(n,)``.
  """
  placement = counted_groups(params, regularizer)
  return [nonzero_groups(placement.gather(placement.leaves, t), t.rule) for t in placement.terms]


def group_sparsity(params: optax.Params, regularizer: Regularizer | None = None) -> jax.Array:
  """Fraction of the regularized groups that are exactly zero."""
  placement = counted_groups(params, regularizer)
  total = sum(t.rule.num_groups for t in placement.terms)
  nonzero = sum(
    (
      jnp.sum(nonzero_groups(placement.gather(placement.leaves, t), t.rule))
      for t in placement.terms
    ),
    jnp.zeros((), jnp.int32),
  )
  return _ratio(nonzero, total)


def weighted_group_sparsity(
  params: optax.Params, regularizer: Regularizer | None = None
) -> jax.Array:
  """Fraction of the regularized weights that lie in all-zero groups."""
  placement = counted_groups(params, regularizer)
  total = sum(t.rule.num_groups * t.rule.group_size for t in placement.terms)
  kept = sum(
    (
      jnp.sum(nonzero_groups(placement.gather(placement.leaves, t), t.rule)) * t.rule.group_size
      for t in placement.terms
    ),
    jnp.zeros((), jnp.int32),
  )
  return _ratio(kept, total)


def _matrices(
  params: optax.Params, regularizer: Regularizer | None
) -> list[tuple[jax.Array, tuple[int, ...]]]:
  """Every regularized leaf, with its layer axes (``()`` for a leaf that is one matrix)."""
  spec = regularizer if isinstance(regularizer, NuclearNorm) else nuclear_norm(0.0)
  placement = spec.place(params)
  return [(jnp.asarray(placement.leaves[t.leaves[0]]), t.rule.layer_axes) for t in placement.terms]


def ranks(params: optax.Params, regularizer: Regularizer | None = None) -> list[jax.Array]:
  """Numerical rank of every regularized matrix (conv kernels as ``(-1, out)``).

  Per layer, shape ``(*layers,)``, for a stacked leaf.
  """
  out = []
  for x, layers in _matrices(params, regularizer):
    xc = as_compute_dtype(x)
    sigma = singular_values(xc, layers)
    # ~(<=): a NaN singular value counts towards the rank
    kept = ~(sigma <= rank_tolerance(sigma, as_matrix(xc, layers).shape))
    out.append(jnp.sum(kept, axis=-1))
  return out


def low_rank_level(params: optax.Params, regularizer: Regularizer | None = None) -> jax.Array:
  """``1 - sum rank / sum min(m, n)`` over the regularized matrices (each layer's)."""
  mats = _matrices(params, regularizer)
  total = 0
  for x, layers in mats:
    shape = as_matrix(x, layers).shape
    total += min(shape[-2:]) * math.prod(shape[:-2])
  kept = sum((jnp.sum(r) for r in ranks(params, regularizer)), jnp.zeros((), jnp.int32))
  return _ratio(kept, total)


def on_set_fraction(params: optax.Params, regularizer: DiscreteValues) -> jax.Array:
  """Fraction of a discrete regularizer's weights that are exactly an allowed value.

  Compared in each leaf's own dtype: a bf16 weight is on the set in bf16.

  Raises:
    TypeError: ``regularizer`` is not a discrete set or penalty.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> reg = rmda_jax.discrete_set((-1.0, 1.0))
    >>> float(on_set_fraction({"w": jnp.array([[1.0, -1.0], [0.5, 1.0]])}, reg))
    0.75
  """
  if not isinstance(regularizer, DiscreteValues):
    raise TypeError(
      f"regularizer must be a discrete_set or discrete_penalty, got {type(regularizer).__name__}."
    )
  placement = regularizer.place(params)
  on, total = jnp.zeros((), jnp.int32), 0
  for term in placement.terms:
    x = jnp.asarray(placement.leaves[term.leaves[0]])
    on = on + jnp.sum(regularizer.on_set(x))
    total += x.size
  return on / max(total, 1)


def weight_sparsity(params: optax.Params) -> jax.Array:
  """Fraction of exactly-zero entries among the weights the default rules penalize.

  Kernels; not biases, norm scales or embeddings: the sparsity that RigL and L1 control.
  """
  return weighted_group_sparsity(params, ElasticNet(0.0, l1_ratio=1.0))


def summary(
  params: optax.Params, regularizer: Regularizer | None = None, groups: Groups | None = None
) -> dict[str, jax.Array]:
  """Every structure measure of a point, in one dict of float32 scalars.

  ``unstructured_sparsity``, ``group_sparsity``, ``weighted_group_sparsity``
  (over ``groups`` -- a :class:`~rmda_jax.Groups` of coupled groups -- when
  given, else the regularizer's own groups as the module doc says),
  ``weight_sparsity``; ``low_rank_level`` for a nuclear norm and
  ``on_set_fraction`` for a discrete set.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> out = summary({"kernel": jnp.array([[1.0, 2.0], [0.0, 0.0]])}, rmda_jax.group_lasso(1e-3))
    >>> sorted((k, round(float(v), 2)) for k, v in out.items())  # doctest: +NORMALIZE_WHITESPACE
    [('group_sparsity', 0.5), ('unstructured_sparsity', 0.5), ('weight_sparsity', 0.5),
     ('weighted_group_sparsity', 0.5)]
  """
  if groups is not None:
    counted: Regularizer | None = group_lasso(0.0, groups=groups)
  elif isinstance(regularizer, DiscreteValues):
    counted = None  # a discrete set has no groups: count the default ones
  else:
    counted = regularizer
  out = {
    "unstructured_sparsity": unstructured_sparsity(params),
    "group_sparsity": group_sparsity(params, counted),
    "weighted_group_sparsity": weighted_group_sparsity(params, counted),
    "weight_sparsity": weight_sparsity(params),
  }
  if isinstance(regularizer, NuclearNorm):
    out["low_rank_level"] = low_rank_level(params, regularizer)
  if isinstance(regularizer, DiscreteSet):
    out["on_set_fraction"] = on_set_fraction(params, regularizer)
  return out


class TrackerState(NamedTuple):
  """State of a :class:`StructureTracker`.

  Attributes:
    support: per tracked leaf, the boolean support (nonzero groups or entries).
    step: int32, number of updates seen.
    last_change: int32, the step at which the support last changed (0 if it
      never did): once training has identified the structure, this is the
      identification step.
    num_changes: int32, number of steps at which the support changed.
  """

  support: tuple
  step: jax.Array
  last_change: jax.Array
  num_changes: jax.Array


@dataclasses.dataclass(frozen=True)
class StructureTracker:
  """Follow the support of a (structured) point across steps; pure and jittable.

  Attributes:
    regularizer: decides the groups (see :func:`counted_groups`).
    kind: ``"group"`` (support of groups), ``"unstructured"`` (support of
      the entries of the regularized leaves), or ``"regularizer"`` (the
      regularizer's own notion of the structure of a point,
      :meth:`~rmda_jax.prox.Regularizer.support`: nonzero groups for
      group-LASSO, nonzero entries for L1, nonzero singular values -- the
      rank -- for the nuclear norm).

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tracker = rmda_jax.metrics.StructureTracker(rmda_jax.group_lasso(1e-3))
    >>> t = tracker.init({"kernel": jnp.ones((3, 2))})
    >>> t = tracker.update(t, {"kernel": jnp.array([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])})
    >>> int(t.last_change), int(t.num_changes)
    (1, 1)
  """

  regularizer: Regularizer | None = None
  kind: str = "group"

  def __post_init__(self):
    if self.kind not in ("group", "unstructured", "regularizer"):
      raise ValueError(f"kind must be 'group', 'unstructured' or 'regularizer', got {self.kind!r}.")
    if self.kind == "regularizer" and self.regularizer is None:
      raise ValueError(
        "kind='regularizer' follows a regularizer's own support: give the regularizer."
      )

  def support(self, params: optax.Params) -> tuple[jax.Array, ...]:
    """The support this tracker follows, per counted term (or per leaf, ``"unstructured"``)."""
    if self.kind == "regularizer":
      assert self.regularizer is not None, "checked when the tracker is built"
      return tuple(self.regularizer.support(params))
    placement = counted_groups(params, self.regularizer)
    if self.kind == "unstructured":
      return tuple(
        jnp.asarray(x) != 0 for t in placement.terms for x in placement.gather(placement.leaves, t)
      )
    return tuple(
      nonzero_groups(placement.gather(placement.leaves, t), t.rule) for t in placement.terms
    )

  def init(self, params: optax.Params) -> TrackerState:
    """The tracker's state at the structure of ``params``."""
    zero = jnp.zeros((), jnp.int32)
    return TrackerState(self.support(params), zero, zero, zero)

  def update(self, state: TrackerState, params: optax.Params) -> TrackerState:
    """The state after one more step, whose point is ``params``."""
    support = self.support(params)
    changed = jnp.zeros((), bool)
    for old, new in zip(state.support, support):
      changed = changed | jnp.any(old != new)
    step = state.step + 1
    return TrackerState(
      support,
      step,
      jnp.where(changed, step, state.last_change),
      state.num_changes + changed.astype(jnp.int32),
    )


def family_kept(params: optax.Params, groups: Groups | GroupLasso) -> dict[str, tuple[int, int]]:
  """Per family of coupled groups, ``(units kept, units)``.

  The heads and hidden units of every layer that are not exactly zero.
  ``groups`` is a :class:`~rmda_jax.Groups` (or a ``group_lasso(..., groups=...)``).
  """
  regularizer = groups if isinstance(groups, GroupLasso) else group_lasso(0.0, groups=groups)
  assert regularizer.groups is not None, "family_kept counts coupled groups"
  placement = regularizer.place(params)
  out = {}
  for family, term in zip(regularizer.groups.families, placement.terms):
    support = nonzero_groups(placement.gather(placement.leaves, term), term.rule)
    out[family.name] = (int(jnp.sum(support)), family.num_groups)
  return out
