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

Which groups? With a :func:`~rmda_jax.group_lasso` regularizer, its own groups
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
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from rmda_jax import groups
from rmda_jax import regularizers as regs
from rmda_jax import structure


def _ratio(num, den):
  num = jnp.asarray(num, jnp.float32)
  den = jnp.asarray(den, jnp.float32)
  return jnp.where(den > 0, 1 - num / jnp.where(den > 0, den, 1), 0.0)


def unstructured_sparsity(params) -> jax.Array:
  """Fraction of exactly-zero entries over all leaves of ``params``."""
  leaves = [jnp.asarray(x) for x in jax.tree_util.tree_leaves(params)]
  total = sum(x.size for x in leaves)
  nonzero = sum((jnp.count_nonzero(x) for x in leaves), jnp.zeros((), jnp.int32))
  return _ratio(nonzero, total)


def group_blocks(params, regularizer: Optional[regs.Regularizer] = None) -> list:
  """``[(paths, leaves, Block), ...]``: the counted groups, one entry per
  family of coupled groups or per leaf (see :class:`rmda_jax.structure.Block`)."""
  if isinstance(regularizer, regs.GroupLasso):
    resolved = regularizer.resolve(params)
    return [([resolved.paths[i] for i in u.index], [jnp.asarray(x) for x in resolved.leaves_of(u)], u.rule)
            for u in resolved.units]
  return [([p], [x], structure.Block.of_rule(x.shape, r, groups.group_weight(x.shape, r)))
          for p, x, r in group_structure(params, regularizer)]


def group_supports_of(xs, block) -> jax.Array:
  """Which groups of one block (a leaf's or a family's) are nonzero (see
  :meth:`rmda_jax.structure.Block.nonzero`)."""
  return block.nonzero([x.astype(regs.compute_dtype(x.dtype)) for x in xs])


def group_structure(params, regularizer: Optional[regs.Regularizer] = None) -> list:
  """``[(path, leaf, GroupRule), ...]`` for the leaves whose groups are counted
  (per-leaf groups; see :func:`group_blocks` for coupled ones)."""
  if isinstance(regularizer, regs.GroupLasso):
    if regularizer.groups is not None:
      raise ValueError("group_structure lists per-leaf groups; these are coupled groups: use group_blocks.")
    resolved = regularizer.resolve(params)
    rules = resolved.rules
  elif isinstance(regularizer, regs.ElasticNet):
    resolved = regularizer.resolve(params)
    rules = [None if r is None else groups.GroupRule(()) for r in resolved.rules]
  else:
    if regularizer is not None and not isinstance(regularizer, regs.Regularizer):
      regs.check_regularizer(regularizer)
    default = regs.group_lasso(0.0)
    resolved = default.resolve(params)
    rules = resolved.rules
    if regularizer is not None:
      own = regularizer.resolve(params).rules
      rules = [r if o is not None else None for r, o in zip(rules, own)]
  return [(p, jnp.asarray(x), r) for p, x, r in zip(resolved.paths, resolved.leaves, rules) if r is not None]


def group_supports(params, regularizer: Optional[regs.Regularizer] = None) -> list:
  """Per counted leaf or family, a boolean array of nonzero groups (a leaf's
  with its reduced axes kept, a family's of shape ``(n,)``)."""
  return [group_supports_of(xs, block) for _, xs, block in group_blocks(params, regularizer)]


def group_sparsity(params, regularizer: Optional[regs.Regularizer] = None) -> jax.Array:
  """Fraction of the regularized groups that are exactly zero."""
  blocks = group_blocks(params, regularizer)
  total = sum(block.num_groups for _, _, block in blocks)
  nonzero = sum((jnp.sum(group_supports_of(xs, block)) for _, xs, block in blocks), jnp.zeros((), jnp.int32))
  return _ratio(nonzero, total)


def weighted_group_sparsity(params, regularizer: Optional[regs.Regularizer] = None) -> jax.Array:
  """Fraction of the regularized weights that lie in all-zero groups."""
  blocks = group_blocks(params, regularizer)
  total = sum(block.num_groups * block.group_size for _, _, block in blocks)
  kept = sum((jnp.sum(group_supports_of(xs, block)) * block.group_size for _, xs, block in blocks),
             jnp.zeros((), jnp.int32))
  return _ratio(kept, total)


def _matrices(params, regularizer):
  spec = regularizer if isinstance(regularizer, regs.NuclearNorm) else regs.nuclear_norm(0.0)
  resolved = spec.resolve(params)
  return [jnp.asarray(x) for x, r in zip(resolved.leaves, resolved.rules) if r is not None]


def ranks(params, regularizer: Optional[regs.Regularizer] = None) -> list:
  """Numerical rank of every regularized matrix (conv kernels as ``(-1, out)``)."""
  out = []
  for x in _matrices(params, regularizer):
    xc = x.astype(regs.compute_dtype(x.dtype))
    sigma = regs.singular_values(xc)
    # ~(<=): a NaN singular value counts towards the rank
    out.append(jnp.sum(~(sigma <= regs.rank_tolerance(sigma, regs.as_matrix(xc).shape))))
  return out


def low_rank_level(params, regularizer: Optional[regs.Regularizer] = None) -> jax.Array:
  """``1 - sum rank / sum min(m, n)`` over the regularized matrices."""
  mats = _matrices(params, regularizer)
  total = sum(min(regs.as_matrix(x).shape) for x in mats)
  return _ratio(sum(ranks(params, regularizer), jnp.zeros((), jnp.int32)), total)


def on_set_fraction(params, regularizer) -> jax.Array:
  """Fraction of a discrete regularizer's weights that are exactly an allowed value.

  Compared in each leaf's own dtype: a bf16 weight is on the set in bf16.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> reg = rmda_jax.discrete_set((-1.0, 1.0))
    >>> float(on_set_fraction({"w": jnp.array([[1.0, -1.0], [0.5, 1.0]])}, reg))
    0.75
  """
  from rmda_jax import discrete  # discrete sets are regularizers built on this package's base

  if not isinstance(regularizer, discrete._Discrete):
    raise TypeError(f"regularizer must be a discrete_set or discrete_penalty, got {type(regularizer).__name__}.")
  resolved = regularizer.resolve(params)
  on, total = jnp.zeros((), jnp.int32), 0
  for x, rule in zip(resolved.leaves, resolved.rules):
    if rule is not None:
      x = jnp.asarray(x)
      on = on + jnp.sum(regularizer.on_set(x))
      total += x.size
  return on / max(total, 1)


def weight_sparsity(params) -> jax.Array:
  """Fraction of exactly-zero entries among the weights the default rules
  penalize (kernels; not biases, norm scales or embeddings): the sparsity that
  RigL and L1 control."""
  return weighted_group_sparsity(params, regs.l1(0.0))


def summary(params, regularizer: Optional[regs.Regularizer] = None, groups=None) -> dict:
  """Every structure measure of a point, in one dict of float32 scalars.

  ``unstructured_sparsity``, ``group_sparsity``, ``weighted_group_sparsity``
  (over ``groups`` -- a :class:`~rmda_jax.structure.Groups` of coupled groups
  -- when given, else the regularizer's own groups as the module doc says),
  ``weight_sparsity``; ``low_rank_level`` for a nuclear norm and
  ``on_set_fraction`` for a discrete set.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> out = summary({"kernel": jnp.array([[1.0, 2.0], [0.0, 0.0]])}, rmda_jax.group_lasso(1e-3))
    >>> {k: round(float(v), 2) for k, v in out.items()}
    {'unstructured_sparsity': 0.5, 'group_sparsity': 0.5, 'weighted_group_sparsity': 0.5, 'weight_sparsity': 0.5}
  """
  from rmda_jax import discrete

  if groups is not None:
    counted = regs.group_lasso(0.0, groups=groups)
  elif isinstance(regularizer, discrete._Discrete):
    counted = None   # a discrete set has no groups: count the default ones
  else:
    counted = regularizer
  out = {
      "unstructured_sparsity": unstructured_sparsity(params),
      "group_sparsity": group_sparsity(params, counted),
      "weighted_group_sparsity": weighted_group_sparsity(params, counted),
      "weight_sparsity": weight_sparsity(params),
  }
  if isinstance(regularizer, regs.NuclearNorm):
    out["low_rank_level"] = low_rank_level(params, regularizer)
  if isinstance(regularizer, discrete.DiscreteSet):
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
    regularizer: decides the groups (see :func:`group_structure`).
    kind: ``"group"`` (support of groups), ``"unstructured"`` (support of
      the entries of the regularized leaves), or ``"regularizer"`` (the
      regularizer's own notion of the structure of a point,
      :meth:`~rmda_jax.regularizers.Regularizer.support`: nonzero groups for
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

  regularizer: Optional[regs.Regularizer] = None
  kind: str = "group"

  def __post_init__(self):
    if self.kind not in ("group", "unstructured", "regularizer"):
      raise ValueError(f"kind must be 'group', 'unstructured' or 'regularizer', got {self.kind!r}.")
    if self.kind == "regularizer" and self.regularizer is None:
      raise ValueError("kind='regularizer' follows a regularizer's own support: give the regularizer.")

  def support(self, params) -> tuple:
    if self.kind == "regularizer":
      return tuple(self.regularizer.support(params))
    blocks = group_blocks(params, self.regularizer)
    if self.kind == "unstructured":
      return tuple(x != 0 for _, xs, _ in blocks for x in xs)
    return tuple(group_supports_of(xs, block) for _, xs, block in blocks)

  def init(self, params) -> TrackerState:
    zero = jnp.zeros((), jnp.int32)
    return TrackerState(self.support(params), zero, zero, zero)

  def update(self, state: TrackerState, params) -> TrackerState:
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


def family_kept(params, groups) -> dict:
  """Per family of coupled groups, ``(units kept, units)``: the heads and hidden
  units of every layer that are not exactly zero. ``groups`` is a
  :class:`~rmda_jax.structure.Groups` (or a ``group_lasso(..., groups=...)``)."""
  regularizer = groups if isinstance(groups, regs.GroupLasso) else regs.group_lasso(0.0, groups=groups)
  resolved = regularizer.resolve(params)
  out = {}
  for family, unit in zip(regularizer.groups.families, resolved.units):
    support = group_supports_of([jnp.asarray(x) for x in resolved.leaves_of(unit)], unit.rule)
    out[family.name] = (int(jnp.sum(support)), family.size)
  return out
