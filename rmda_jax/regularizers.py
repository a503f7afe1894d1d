"""Pytree-aware regularizers: value, proximal operators and structure.

A regularizer is ``lambda * psi(params)`` with ``psi`` a sum over the leaves of
``params``; a per-leaf *rule* (see :mod:`rmda_jax.groups`) says how each leaf
is penalized, or that it is not penalized at all. Every regularizer offers

* ``value(params)``: ``lambda * psi(params)``, a float32 scalar;
* ``prox(params, scale)``: ``argmin_z 1/2 ||z - x||^2 + scale * lambda * psi(z)``,
  ``scale`` a scalar or a pytree of per-leaf scalars (the jaxopt convention
  ``prox(x, hyperparams, scaling)`` with the strength held by the object);
* ``prox_diag(b, diag, scale)`` where a closed form or an exact 1-D root
  finding exists: ``argmin_z 1/2 z^T D z - b^T z + scale * lambda * psi(z)``
  for a positive diagonal metric ``D`` (``b = D y`` gives the metric prox of
  ``y``). Regularizers without one are handled by the inexact solver in
  :mod:`rmda_jax.solvers`;
* ``support(params)``: per leaf, which groups / entries / singular values are
  nonzero (``None`` for unregularized leaves), the input of the metrics.

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> reg = rmda_jax.group_lasso(strength=0.5)
  >>> params = {"kernel": jnp.array([[3.0, 4.0], [0.1, 0.1]]), "bias": jnp.ones(2)}
  >>> z = reg.prox(params, 1.0)   # threshold 0.5 * sqrt(2) per row
  >>> [float(v) for v in z["kernel"][1]]
  [0.0, 0.0]

References:
  Huang & Lee, "Training Structured Neural Networks Through Manifold
  Identification and Variance Reduction", ICLR 2022, arXiv:2112.02612.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import Any, ClassVar, Optional

import jax
import jax.numpy as jnp

from rmda_jax import groups
from rmda_jax import solvers
from rmda_jax import structure
from rmda_jax.numerics import compute_dtype, norm_from_squares, safe_divide, shrink_factor, soft_threshold

Array = jax.Array


def check_nonnegative(value, argname: str) -> None:
  """``value`` is a finite number ``>= 0`` or such a scalar array (TypeError for
  another type, ValueError out of range); a traced array is not checked."""
  from rmda_jax import _common  # a leaf module: no import cycle
  _common.check_scalar(value, argname, low=0.0)


def group_norm(x: Array, rule: groups.GroupRule) -> Array:
  """``||x_g||_2`` for every group, with the reduced axes kept (size 1)."""
  return norm_from_squares(jnp.sum(jnp.square(x), axis=rule.reduce_axes, keepdims=True))


def block_norm(xs: list, block: structure.Block) -> Array:
  """``||x_g||_2`` of every group of a block (a family or a per-leaf rule)."""
  return norm_from_squares(block.sum([jnp.square(x) for x in xs]))


@dataclasses.dataclass(frozen=True)
class Unit:
  """What the regularizer's prox couples: one leaf under its rule, or the
  leaves of one family of coupled groups.

  Attributes:
    index: positions of its leaves in ``Resolved.leaves``.
    rule: the leaf's rule (one leaf), or a :class:`~rmda_jax.structure.Block`.
  """

  index: tuple
  rule: Any


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A regularizer's rules laid against one params tree."""

  paths: list
  leaves: list
  rules: list
  treedef: Any
  units: list = dataclasses.field(default_factory=list)

  def unflatten(self, leaves):
    return jax.tree_util.tree_unflatten(self.treedef, leaves)

  def leaves_of(self, unit: Unit, leaves=None) -> list:
    leaves = self.leaves if leaves is None else leaves
    return [leaves[i] for i in unit.index]


@dataclasses.dataclass(frozen=True)
class Regularizer(abc.ABC):
  """Base class: ``strength * sum over regularized leaves of the leaf penalty``.

  Subclasses implement the leaf-level math (``leaf_*`` methods); this class
  maps it over pytrees, handles per-leaf scales and validation.
  """

  strength: float
  rules: Any = None

  rule_type: ClassVar[type] = object
  has_exact_diag_prox: ClassVar[bool] = False
  screens: ClassVar[bool] = False

  def __post_init__(self):
    check_nonnegative(self.strength, f"{type(self).__name__} strength")
    if isinstance(self.rules, (groups.GroupRule, groups.Elementwise, groups.Matrix)):
      raise ValueError(
          "rules: give a callable (path, leaf) -> rule, or a tree of rules matching the "
          "params, not a single rule."
      )

  # ----------------------------------------------------------- per-leaf hooks
  @abc.abstractmethod
  def default_rule(self, path: str, leaf) -> Any:
    """The rule used for a leaf when ``rules`` is None."""

  @abc.abstractmethod
  def leaf_value(self, x: Array, rule) -> Array:
    """``psi`` of one leaf, without the strength."""

  @abc.abstractmethod
  def leaf_prox(self, x: Array, threshold: Array, rule) -> Array:
    """``argmin_z 1/2||z - x||^2 + threshold * psi(z)``; ``threshold`` broadcasts
    against the per-group shape (see :meth:`block_axes`)."""

  @abc.abstractmethod
  def leaf_support(self, x: Array, rule) -> Array:
    """Boolean array: which groups / entries / singular values are nonzero."""

  @abc.abstractmethod
  def block_axes(self, rule, ndim: int) -> tuple[int, ...]:
    """Axes the prox couples: a diagonal metric's step size is constant along them."""

  def leaf_prox_diag(self, b: Array, diag: Array, threshold: Array, rule) -> tuple[Array, Array, Array]:
    """Exact ``argmin_z 1/2 z^T D z - b^T z + threshold * psi(z)``, the number
    of iterations it took and the residual of its equation (0, 0 for closed
    forms)."""
    raise NotImplementedError(f"{type(self).__name__} has no exact diagonal-metric prox.")

  def leaves_prox_diag(self, bs, diags, thresholds, rules, **options) -> tuple[list, Array, Array]:
    """:meth:`leaf_prox_diag` over several leaves; returns the solutions, the
    largest iteration count and the largest residual. Overridden where one
    joint loop is cheaper; ``options`` (``max_iters``, ``rtol``) go to
    iterative solutions."""
    options.pop("inits", None)  # closed forms need no start
    results = [self.leaf_prox_diag(b, d, t, r) for b, d, t, r in zip(bs, diags, thresholds, rules)]
    iterations, residual = jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
    for _, its, res in results:
      iterations = jnp.maximum(iterations, its)
      residual = jnp.maximum(residual, res)
    return [z for z, _, _ in results], iterations, residual

  def leaf_screen(self, b: Array, threshold: Array, rule) -> Optional[Array]:
    """Mask of groups that may be nonzero at the diagonal-metric optimum
    (False = provably zero), or None when the regularizer cannot tell."""
    return None

  # ------------------------------------------------------------- per unit
  # A unit is one leaf for every regularizer but group-LASSO on coupled
  # groups; these defaults hand the single leaf to the leaf hooks above.
  def unit_value(self, xs: list, rule) -> Array:
    return self.leaf_value(xs[0], rule)

  def unit_prox(self, xs: list, threshold: Array, rule, stats: Optional[list] = None) -> list:
    """The unit's prox; ``stats`` (see :meth:`prox`'s ``statistics``) may be ignored."""
    return [self.leaf_prox(xs[0], threshold, rule)]

  def unit_support(self, xs: list, rule) -> Array:
    return self.leaf_support(xs[0], rule)

  def unit_screen(self, bs: list, threshold: Array, rule) -> Optional[list]:
    mask = self.leaf_screen(bs[0], threshold, rule)
    return None if mask is None else [mask]

  def unit_block_max(self, diags: list, rule) -> tuple[Array, list]:
    """The largest ``D`` over each block the prox couples: in the shape the
    unit's prox takes its threshold in, and per member (broadcasting against it)."""
    d = diags[0]
    d_max = jnp.max(d, axis=self.block_axes(rule, d.ndim), keepdims=True)
    return d_max, [d_max]

  def units_prox_diag(self, bs: list, diags: list, thresholds: list, rules: list, inits=None,
                      **options) -> tuple[list, Array, Array]:
    """:meth:`leaves_prox_diag` over units (lists of member arrays)."""
    zs, iterations, residual = self.leaves_prox_diag(
        [b[0] for b in bs], [d[0] for d in diags], thresholds, rules,
        inits=None if inits is None else [i[0] for i in inits], **options)
    return [[z] for z in zs], iterations, residual

  # ------------------------------------------------------------- tree level
  def resolve(self, params) -> Resolved:
    """Lay the rules against ``params`` (raises ValueError on a mismatch)."""
    paths, leaves, rules, treedef = groups.resolve_rules(
        self.rules, params, self.default_rule, self.rule_type, f"{type(self).__name__} rules"
    )
    units = [Unit((i,), r) for i, r in enumerate(rules) if r is not None]
    return Resolved(paths, leaves, rules, treedef, units)

  def check(self, params) -> None:
    """Validate the rules against ``params`` now (optimizers call it in ``init``)."""
    self.resolve(params)

  def leaf_scales(self, scale, resolved: Resolved) -> list:
    """Per-leaf scales from a scalar or a pytree of scalars."""
    if jax.tree_util.tree_structure(scale) == resolved.treedef and resolved.treedef.num_leaves != 1:
      return jax.tree_util.tree_leaves(scale)
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(scale)):
      return [scale] * len(resolved.leaves)
    raise ValueError(
        "scale must be a scalar or a pytree of scalars with the params' structure, got "
        f"{jax.tree_util.tree_structure(scale)}."
    )

  def value(self, params) -> Array:
    """``strength * psi(params)`` as a float32 (or float64) scalar."""
    resolved = self.resolve(params)
    total = jnp.zeros((), jnp.float32)
    for unit in resolved.units:
      xs = [_compute(x) for x in resolved.leaves_of(unit)]
      total = total + self.unit_value(xs, unit.rule)
    return self.strength * total

  def prox(self, params, scale=1.0, statistics=None):
    """``argmin_z 1/2||z - params||^2 + scale * strength * psi(z)``, unit by unit.

    Unregularized leaves come back unchanged; the others keep their dtype
    (the math runs in at least float32). A family of coupled groups takes
    the scale of its first leaf.

    ``statistics``, if given, is a tree holding the same values as
    ``params`` from which the per-group quantities (group-LASSO's norms) are
    read. Computed separately from the same inputs (e.g. passed through
    ``jax.lax.optimization_barrier``), it lets XLA fuse that computation into
    the reduction and the prox's own into the scaling, instead of storing
    ``params`` in a temporary buffer read by both (see
    :func:`rmda_jax.blocks.twin_of`).
    """
    resolved = self.resolve(params)
    out = list(resolved.leaves)
    scales = self.leaf_scales(scale, resolved)
    stat_leaves = None if statistics is None else resolved.treedef.flatten_up_to(statistics)
    for unit in resolved.units:
      xs = [_compute(x) for x in resolved.leaves_of(unit)]
      threshold = jnp.asarray(scales[unit.index[0]], xs[0].dtype) * self.strength
      if stat_leaves is None:
        zs = self.unit_prox(xs, threshold, unit.rule)
      else:
        zs = self.unit_prox(xs, threshold, unit.rule, stats=[_compute(x) for x in resolved.leaves_of(unit, stat_leaves)])
      for i, z in zip(unit.index, zs):
        out[i] = z.astype(jnp.result_type(resolved.leaves[i]))
    return resolved.unflatten(out)

  def prox_diag(self, b, diag, scale=1.0):
    """Exact ``argmin_z 1/2 z^T D z - b^T z + scale * strength * psi(z)``.

    ``diag`` is the positive diagonal ``D`` as a pytree like ``b``. With
    ``b = D * y`` this is the prox of ``y`` in the metric ``D``.
    Unregularized leaves get ``b / D``.
    """
    return solvers.solve_exact(self, b, diag, scale)[0]

  def support(self, params) -> list:
    """Per unit (a regularized leaf, or a family of coupled groups): a boolean
    array of the nonzero groups / entries / singular values. A non-finite
    entry counts as nonzero."""
    resolved = self.resolve(params)
    return [self.unit_support([jnp.asarray(x) for x in resolved.leaves_of(u)], u.rule) for u in resolved.units]


# --------------------------------------------------------------------------- group lasso
@dataclasses.dataclass(frozen=True)
class GroupLasso(Regularizer):
  """``lambda * sum_g w_g ||x_g||_2`` over per-leaf groups or coupled groups.

  Groups come from per-leaf :class:`groups.GroupRule` rules (``rules``, or the
  Flax defaults), or from ``groups``: a :class:`~rmda_jax.structure.Groups`
  of coupled families (e.g. from :func:`rmda_jax.discover_groups`), each group
  a set of slices across several leaves; leaves in no family are not
  penalized. prox: ``z_g = max(0, 1 - t w_g / ||x_g||) x_g`` (with
  ``t = scale * lambda``), written without any 0/0; a group with a NaN entry
  stays NaN (never taken for a zero group). Under a diagonal metric the
  exact solution comes from a per-group 1-D secular equation over the whole
  (joint) group (see :mod:`rmda_jax.solvers`).
  """

  rule_type: ClassVar[type] = groups.GroupRule
  has_exact_diag_prox: ClassVar[bool] = True
  screens: ClassVar[bool] = True
  grouping: str = "input"
  groups: Optional[structure.Groups] = None  # (from here on the class body's name `groups` is this field)

  def __post_init__(self):
    super().__post_init__()
    if self.grouping not in groups.GROUPINGS:
      raise ValueError(f"grouping must be one of {groups.GROUPINGS}, got {self.grouping!r}.")
    if self.groups is not None:
      if not isinstance(self.groups, structure.Groups):
        raise TypeError(f"groups must be a rmda_jax.structure.Groups (e.g. from rmda_jax.discover_groups), "
                        f"got {type(self.groups).__name__}.")
      if self.rules is not None:
        raise ValueError("group_lasso: give rules= (per-leaf groups) or groups= (coupled groups), not both.")

  def default_rule(self, path, leaf):
    return groups.default_group_rule(self.grouping)(path, leaf)

  def weight(self, x: Array, rule) -> float:
    return groups.group_weight(x.shape, rule)

  def resolve(self, params) -> Resolved:
    if self.groups is None:
      resolved = super().resolve(params)
      units = [Unit(u.index, structure.Block.of_rule(jnp.shape(resolved.leaves[u.index[0]]), u.rule,
                                                     groups.group_weight(jnp.shape(resolved.leaves[u.index[0]]),
                                                                         u.rule)))
               for u in resolved.units]
      return dataclasses.replace(resolved, units=units)
    keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [groups.path_to_str(kp) for kp, _ in keyed]
    leaves = [leaf for _, leaf in keyed]
    where = {p: i for i, p in enumerate(paths)}
    units = []
    if not leaves:  # a tree without arrays (optax.tree_map_params' placeholder): nothing to lay groups on
      return Resolved(paths, leaves, [], treedef, units)
    for family in self.groups.families:
      index = []
      for member in family.members:
        if member.path not in where:
          raise ValueError(f"groups: family {family.name!r} spans {member.path!r}, which is not a leaf of the "
                           f"params (leaves: {', '.join(paths[:6])}{', ...' if len(paths) > 6 else ''}).")
        i = where[member.path]
        shape = jnp.shape(leaves[i])
        problem = member.check(shape)
        if problem is None and member.num_groups(shape) != family.size:
          problem = f"it holds {member.num_groups(shape)} groups, the family {family.size}"
        if problem:
          raise ValueError(f"groups: family {family.name!r} does not fit leaf {member.path!r}: {problem}.")
        index.append(i)
      if family.size and all(math.prod(jnp.shape(leaves[i])) for i in index):
        units.append(Unit(tuple(index), structure.Block.of_family(family, [jnp.shape(leaves[i]) for i in index])))
    return Resolved(paths, leaves, [None] * len(leaves), treedef, units)

  # leaf hooks: a per-leaf rule is a one-member block
  def _leaf_block(self, x, rule) -> structure.Block:
    return structure.Block.of_rule(x.shape, rule, self.weight(x, rule))

  def leaf_value(self, x, rule):
    return self.unit_value([x], self._leaf_block(x, rule))

  def leaf_prox(self, x, threshold, rule):
    return self.unit_prox([x], threshold, self._leaf_block(x, rule))[0]

  def leaf_support(self, x, rule):
    return self.unit_support([x], self._leaf_block(x, rule))

  def block_axes(self, rule, ndim):
    return rule.reduce_axes

  def leaf_screen(self, b, threshold, rule):
    return self.unit_screen([b], threshold, self._leaf_block(b, rule))[0]

  def leaf_prox_diag(self, b, diag, threshold, rule):
    zs, iterations, residual = self.units_prox_diag([[b]], [[diag]], [threshold], [self._leaf_block(b, rule)])
    return zs[0][0], iterations, residual

  def leaves_prox_diag(self, bs, diags, thresholds, rules, inits=None, **options):
    blocks = [self._leaf_block(b, r) for b, r in zip(bs, rules)]
    zs, iterations, residual = self.units_prox_diag(
        [[b] for b in bs], [[d] for d in diags], thresholds, blocks,
        inits=None if inits is None else [[i] for i in inits], **options)
    return [z[0] for z in zs], iterations, residual

  # unit hooks: a block is a per-leaf rule or a family of coupled groups
  def unit_value(self, xs, block):
    return block.weight * jnp.sum(block_norm(xs, block))

  def unit_prox(self, xs, threshold, block, stats=None):
    factor = shrink_factor(block_norm(xs if stats is None else stats, block), threshold * block.weight)
    return [x * block.spread(factor, m) for m, x in enumerate(xs)]

  def unit_support(self, xs, block):
    return block.nonzero(xs)

  def unit_screen(self, bs, threshold, block):
    # kept unless provably zero: a NaN group is kept, so the NaN is seen
    mask = ~(block_norm(bs, block) <= threshold * block.weight)
    return [block.spread(mask, m) for m in range(len(bs))]

  def unit_block_max(self, diags, block):
    d_max = block.max(diags)
    return d_max, [block.spread(d_max, m) for m in range(len(diags))]

  def units_prox_diag(self, bs, diags, thresholds, blocks, inits=None, **options):
    return solvers.group_lasso_secular_blocks(
        bs, diags, [t * block.weight for t, block in zip(thresholds, blocks)], blocks, inits=inits, **options)


# --------------------------------------------------------------------------- l1, elastic net
@dataclasses.dataclass(frozen=True)
class ElasticNet(Regularizer):
  """``lambda * (l1_ratio * ||x||_1 + (1 - l1_ratio)/2 * ||x||_2^2)`` on the chosen leaves.

  prox: ``soft(x, t * l1_ratio) / (1 + t * (1 - l1_ratio))``; under a diagonal
  metric ``D``: ``soft(b, t * l1_ratio) / (D + t * (1 - l1_ratio))``.
  ``l1_ratio = 1`` is the L1 norm (unstructured sparsity).
  """

  l1_ratio: float = 0.5
  rule_type: ClassVar[type] = groups.Elementwise
  has_exact_diag_prox: ClassVar[bool] = True
  screens: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    if not (isinstance(self.l1_ratio, numbers.Real) and 0 <= self.l1_ratio <= 1):
      raise ValueError(f"l1_ratio must be in [0, 1], got {self.l1_ratio!r}.")

  def default_rule(self, path, leaf):
    return groups.default_elementwise_rule(path, leaf)

  def leaf_value(self, x, rule):
    r = self.l1_ratio
    return r * jnp.sum(jnp.abs(x)) + (1 - r) / 2 * jnp.sum(jnp.square(x))

  def leaf_prox(self, x, threshold, rule):
    r = self.l1_ratio
    return soft_threshold(x, threshold * r) / (1 + threshold * (1 - r))

  def leaf_support(self, x, rule):
    return x != 0

  def block_axes(self, rule, ndim):
    return ()

  def leaf_screen(self, b, threshold, rule):
    return jnp.abs(b) > threshold * self.l1_ratio

  def leaf_prox_diag(self, b, diag, threshold, rule):
    r = self.l1_ratio
    z = safe_divide(soft_threshold(b, threshold * r), diag + threshold * (1 - r))
    return z, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)


def l1(strength: float, rules=None) -> ElasticNet:
  """L1 regularizer ``lambda * ||x||_1`` (unstructured sparsity).

  Args:
    strength: ``lambda >= 0``.
    rules: which leaves are penalized: None (every leaf with ndim >= 2 except
      embeddings), a callable ``(path, leaf) -> groups.Elementwise() | None``,
      or a tree of those.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> z = rmda_jax.l1(0.5).prox({"w": jnp.array([[1.0, -0.2]])}, 1.0)
    >>> [float(v) for v in z["w"][0]]
    [0.5, -0.0]
  """
  return ElasticNet(strength=strength, rules=rules, l1_ratio=1.0)


def elastic_net(strength: float, l1_ratio: float = 0.5, rules=None) -> ElasticNet:
  """Elastic net ``lambda * (l1_ratio ||x||_1 + (1 - l1_ratio)/2 ||x||^2)``.

  Args:
    strength: ``lambda >= 0``.
    l1_ratio: in ``[0, 1]``; 1 is pure L1, 0 pure squared L2 (weight decay).
    rules: as for :func:`l1`.
  """
  return ElasticNet(strength=strength, rules=rules, l1_ratio=l1_ratio)


def group_lasso(strength: float, rules=None, grouping: str = "input", groups=None) -> GroupLasso:
  """Group-LASSO ``lambda * sum_g sqrt(|g|) ||x_g||_2`` (channel / neuron / head sparsity).

  Args:
    strength: ``lambda >= 0``.
    rules: None for the Flax defaults (one group per input feature of a Dense
      kernel, per input channel of a Conv kernel; biases, scales, embeddings
      unpenalized), a callable ``(path, leaf) -> groups.GroupRule | None``
      (see :func:`rmda_jax.groups.by_path`), or a tree of rules matching the
      params.
    grouping: ``"input"`` (default) or ``"output"`` (filter-wise / output-wise
      groups) for the default rules.
    groups: coupled groups instead of per-leaf rules: a
      :class:`~rmda_jax.structure.Groups`, e.g. from
      :func:`rmda_jax.discover_groups` (whole hidden units, channels and
      attention heads across every leaf they span). Leaves in no family
      are not penalized.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> reg = rmda_jax.group_lasso(1e-3)                      # input-wise groups
    >>> reg = rmda_jax.group_lasso(1e-3, grouping="output")   # filter-wise groups
    >>> unit = rmda_jax.Family("hidden", "units", 2, (rmda_jax.Slice("w1", 1), rmda_jax.Slice("w2", 0)))
    >>> reg = rmda_jax.group_lasso(1.0, groups=rmda_jax.Groups((unit,)))
    >>> params = {"w1": jnp.array([[3.0, 0.1]]), "w2": jnp.array([[4.0], [0.1]])}
    >>> z = reg.prox(params)   # unit 0: norm 5 shrinks by sqrt(2); unit 1: norm 0.14 < sqrt(2)
    >>> [round(float(v), 4) for v in z["w1"][0]], [round(float(v), 4) for v in z["w2"][:, 0]]
    ([2.1515, 0.0], [2.8686, 0.0])
  """
  return GroupLasso(strength=strength, rules=rules, grouping=grouping, groups=groups)


# --------------------------------------------------------------------------- nuclear norm
def as_matrix(x: Array) -> Array:
  return x.reshape(-1, x.shape[-1])


def singular_values(x: Array) -> Array:
  return jnp.linalg.svd(as_matrix(x), compute_uv=False)


def rank_tolerance(sigma: Array, shape) -> Array:
  """The numerical-rank cutoff used by ``numpy.linalg.matrix_rank``."""
  eps = jnp.finfo(sigma.dtype).eps
  return jnp.max(sigma, initial=0) * max(shape) * eps


@dataclasses.dataclass(frozen=True)
class NuclearNorm(Regularizer):
  """``lambda * sum_i sigma_i(X)`` on ``X = reshape(leaf, (-1, shape[-1]))`` (low rank).

  A Flax Dense kernel ``(in, out)`` is used as is; a conv kernel
  ``(kh, kw, in, out)`` is viewed as the ``(kh * kw * in, out)`` matrix, whose
  rank is the number of independent filters. prox: ``U max(S - t, 0) V^T``.
  There is no exact prox under a non-scalar diagonal metric: the adaptive
  optimizers use the inexact solver with one step ``1 / max(D)`` per leaf.
  """

  rule_type: ClassVar[type] = groups.Matrix

  def default_rule(self, path, leaf):
    return groups.default_matrix_rule(path, leaf)

  def leaf_value(self, x, rule):
    return jnp.sum(singular_values(x))

  def leaf_prox(self, x, threshold, rule):
    u, s, vt = jnp.linalg.svd(as_matrix(x), full_matrices=False)
    s = jnp.maximum(s - jnp.reshape(threshold, ()), 0)
    return ((u * s) @ vt).reshape(x.shape)

  def leaf_support(self, x, rule):
    sigma = singular_values(x)
    return sigma > rank_tolerance(sigma, as_matrix(x).shape)

  def block_axes(self, rule, ndim):
    return tuple(range(ndim))


def nuclear_norm(strength: float, rules=None) -> NuclearNorm:
  """Nuclear norm ``lambda * ||X||_*`` per leaf (low-rank weights).

  Args:
    strength: ``lambda >= 0``.
    rules: None (every leaf with ndim >= 2 except embeddings), a callable
      ``(path, leaf) -> groups.Matrix() | None``, or a tree of those.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> z = rmda_jax.nuclear_norm(1.0).prox({"w": jnp.diag(jnp.array([3.0, 0.5]))})
    >>> [float(v) for v in jnp.diag(z["w"])]
    [2.0, 0.0]
  """
  return NuclearNorm(strength=strength, rules=rules)


def _compute(x) -> Array:
  x = jnp.asarray(x)
  return x.astype(compute_dtype(x.dtype))


def is_regularizer(obj) -> bool:
  return isinstance(obj, Regularizer)


def check_regularizer(obj, argname: str = "regularizer") -> Optional[Regularizer]:
  if obj is None or isinstance(obj, Regularizer):
    return obj
  raise TypeError(
      f"{argname} must be a rmda_jax regularizer (l1, group_lasso, nuclear_norm, "
      f"elastic_net, ...) or None, got {type(obj).__name__}."
  )

