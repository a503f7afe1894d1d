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

Array = jax.Array


def compute_dtype(dtype) -> Any:
  """Float32, or float64 where the input already is: accumulators never go below float32."""
  return jnp.promote_types(dtype, jnp.float32)


def check_nonnegative(value, argname: str) -> None:
  if isinstance(value, numbers.Real) and not (value >= 0 and math.isfinite(value)):
    raise ValueError(f"{argname} must be a finite number >= 0, got {value!r}.")


def safe_divide(num: Array, den: Array) -> Array:
  """``num / den`` where ``den != 0``, else 0 (no 0/0 anywhere, gradients included)."""
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def group_norm(x: Array, rule: groups.GroupRule) -> Array:
  """``||x_g||_2`` for every group, with the reduced axes kept (size 1)."""
  squared = jnp.sum(jnp.square(x), axis=rule.reduce_axes, keepdims=True)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1)), 0)


def soft_threshold(x: Array, threshold: Array) -> Array:
  """``sign(x) * max(|x| - threshold, 0)``."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)


@dataclasses.dataclass(frozen=True)
class Resolved:
  """A regularizer's rules laid against one params tree."""

  paths: list
  leaves: list
  rules: list
  treedef: Any

  def unflatten(self, leaves):
    return jax.tree_util.tree_unflatten(self.treedef, leaves)


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

  # ------------------------------------------------------------- tree level
  def resolve(self, params) -> Resolved:
    """Lay the rules against ``params`` (raises ValueError on a mismatch)."""
    paths, leaves, rules, treedef = groups.resolve_rules(
        self.rules, params, self.default_rule, self.rule_type, f"{type(self).__name__} rules"
    )
    return Resolved(paths, leaves, rules, treedef)

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
    for x, rule in zip(resolved.leaves, resolved.rules):
      if rule is not None:
        xc = jnp.asarray(x).astype(compute_dtype(jnp.result_type(x)))
        total = total + self.leaf_value(xc, rule)
    return self.strength * total

  def prox(self, params, scale=1.0):
    """``argmin_z 1/2||z - params||^2 + scale * strength * psi(z)``, leaf by leaf.

    Unregularized leaves come back unchanged; the others keep their dtype
    (the math runs in at least float32).
    """
    resolved = self.resolve(params)
    out = []
    for x, rule, s in zip(resolved.leaves, resolved.rules, self.leaf_scales(scale, resolved)):
      if rule is None:
        out.append(x)
        continue
      x = jnp.asarray(x)
      xc = x.astype(compute_dtype(x.dtype))
      threshold = jnp.asarray(s, xc.dtype) * self.strength
      out.append(self.leaf_prox(xc, threshold, rule).astype(x.dtype))
    return resolved.unflatten(out)

  def prox_diag(self, b, diag, scale=1.0):
    """Exact ``argmin_z 1/2 z^T D z - b^T z + scale * strength * psi(z)``.

    ``diag`` is the positive diagonal ``D`` as a pytree like ``b``. With
    ``b = D * y`` this is the prox of ``y`` in the metric ``D``.
    Unregularized leaves get ``b / D``.
    """
    from rmda_jax import solvers  # the solver module owns the dispatch

    return solvers.solve_exact(self, b, diag, scale)[0]

  def support(self, params) -> list:
    """Per leaf: a boolean array of nonzero groups/entries/singular values, or None."""
    resolved = self.resolve(params)
    return [
        None if rule is None else self.leaf_support(jnp.asarray(x), rule)
        for x, rule in zip(resolved.leaves, resolved.rules)
    ]

  def __call__(self, *args, **kwargs):
    raise TypeError(
        f"{type(self).__name__} is not callable: use .value(params) for the penalty or "
        ".prox(params, scale) for its proximal operator."
    )


# --------------------------------------------------------------------------- group lasso
@dataclasses.dataclass(frozen=True)
class GroupLasso(Regularizer):
  """``lambda * sum_g w_g ||x_g||_2`` over the groups given by :class:`groups.GroupRule`.

  prox: ``z_g = max(0, 1 - t w_g / ||x_g||) x_g`` (with ``t = scale * lambda``),
  written without any 0/0. Under a diagonal metric the exact solution comes
  from a per-group 1-D secular equation (see :mod:`rmda_jax.solvers`).
  """

  grouping: str = "input"
  rule_type: ClassVar[type] = groups.GroupRule
  has_exact_diag_prox: ClassVar[bool] = True
  screens: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    if self.grouping not in groups.GROUPINGS:
      raise ValueError(f"grouping must be one of {groups.GROUPINGS}, got {self.grouping!r}.")

  def default_rule(self, path, leaf):
    return groups.default_group_rule(self.grouping)(path, leaf)

  def weight(self, x: Array, rule) -> float:
    return groups.group_weight(x.shape, rule)

  def leaf_value(self, x, rule):
    return self.weight(x, rule) * jnp.sum(group_norm(x, rule))

  def leaf_prox(self, x, threshold, rule):
    thr = threshold * self.weight(x, rule)
    norm = group_norm(x, rule)
    factor = jnp.where(norm > thr, 1 - safe_divide(thr, norm), 0)
    return factor * x

  def leaf_support(self, x, rule):
    return group_norm(x, rule) > 0

  def block_axes(self, rule, ndim):
    return rule.reduce_axes

  def leaf_screen(self, b, threshold, rule):
    return group_norm(b, rule) > threshold * self.weight(b, rule)

  def leaf_prox_diag(self, b, diag, threshold, rule):
    zs, iterations, residual = self.leaves_prox_diag([b], [diag], [threshold], [rule])
    return zs[0], iterations, residual

  def leaves_prox_diag(self, bs, diags, thresholds, rules, inits=None, **options):
    from rmda_jax import solvers

    return solvers.group_lasso_secular(
        bs, diags, [t * self.weight(b, r) for b, t, r in zip(bs, thresholds, rules)],
        [r.reduce_axes for r in rules], inits=inits, **options,
    )


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


def group_lasso(strength: float, rules=None, grouping: str = "input") -> GroupLasso:
  """Group-LASSO ``lambda * sum_g sqrt(|g|) ||x_g||_2`` (channel / neuron sparsity).

  Args:
    strength: ``lambda >= 0``.
    rules: None for the Flax defaults (one group per input feature of a Dense
      kernel, per input channel of a Conv kernel; biases, scales, embeddings
      unpenalized), a callable ``(path, leaf) -> groups.GroupRule | None``
      (see :func:`rmda_jax.groups.by_path`), or a tree of rules matching the
      params.
    grouping: ``"input"`` (default) or ``"output"`` (filter-wise / output-wise
      groups) for the default rules.

  Example:
    >>> import rmda_jax
    >>> reg = rmda_jax.group_lasso(1e-3)                      # input-wise groups
    >>> reg = rmda_jax.group_lasso(1e-3, grouping="output")   # filter-wise groups
  """
  return GroupLasso(strength=strength, rules=rules, grouping=grouping)


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


def is_regularizer(obj) -> bool:
  return isinstance(obj, Regularizer)


def check_regularizer(obj, argname: str = "regularizer") -> Optional[Regularizer]:
  if obj is None or isinstance(obj, Regularizer):
    return obj
  raise TypeError(
      f"{argname} must be a rmda_jax regularizer (l1, group_lasso, nuclear_norm, "
      f"elastic_net, ...) or None, got {type(obj).__name__}."
  )

