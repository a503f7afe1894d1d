r"""What a regularizer is: ``lambda * psi(params)``, a sum of terms over the params tree.

A regularizer is ``lambda * psi(params)`` with ``psi`` a sum of *terms*. A
term is one regularized leaf under its per-leaf rule (see
:mod:`rmda_jax.core.rules`), or the leaves of one family of coupled groups
(group-LASSO with ``groups=``); terms share no leaf, so the prox of ``psi`` is
the prox of each term. :meth:`Regularizer.place` lays the terms on a params
tree (a :class:`Placement`), and every regularizer offers

* ``value(params)``: ``lambda * psi(params)``, a float32 scalar;
* ``prox(params, scale)``: ``argmin_z 1/2 ||z - x||^2 + scale * lambda * psi(z)``,
  ``scale`` a scalar or a pytree of per-leaf scalars (the jaxopt convention
  ``prox(x, hyperparams, scaling)`` with the strength held by the object);
* ``prox_diag(b, diag, scale)`` where a closed form or an exact 1-D root
  finding exists: ``argmin_z 1/2 z^T D z - b^T z + scale * lambda * psi(z)``
  for a positive diagonal metric ``D`` (``b = D y`` gives the metric prox of
  ``y``). Regularizers without one are handled by the inexact solver
  (:mod:`rmda_jax.prox.inexact`);
* ``support(params)``: per term, which groups / entries / singular values are
  nonzero, the input of the metrics.

A new penalty whose terms are single leaves subclasses
:class:`LeafRegularizer` and writes the math of one leaf
(``leaf_value``, ``leaf_prox``, ``leaf_support``, ``block_axes``); a penalty
that couples leaves implements the ``term_*`` hooks of :class:`Regularizer`,
as :class:`~rmda_jax.prox.group_norms.GroupLasso` does.

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> reg = rmda_jax.group_lasso(strength=0.5)
  >>> params = {"kernel": jnp.array([[3.0, 4.0], [0.1, 0.1]]), "bias": jnp.ones(2)}
  >>> z = reg.prox(params, 1.0)   # threshold 0.5 * sqrt(2) per row
  >>> [float(v) for v in z["kernel"][1]]
  [0.0, 0.0]
  >>> placement = reg.place(params)
  >>> placement.paths, [term.leaves for term in placement.terms]
  (['bias', 'kernel'], [(1,)])

References:
  Huang & Lee, "Training Structured Neural Networks Through Manifold
  Identification and Variance Reduction", ICLR 2022, arXiv:2112.02612.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks
from rmda_jax.core.numerics import as_compute_dtype
from rmda_jax.core.rules import Elementwise, GroupRule, Matrix, resolve_rules
from rmda_jax.prox.subproblem import unregularized_solution

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Term:
  """One term of ``psi``: the leaves it couples and how.

  Attributes:
    leaves: positions of its leaves in :attr:`Placement.leaves`.
    rule: the leaf's rule for a one-leaf term, or what the regularizer
      makes of it (group-LASSO: a :class:`~rmda_jax.core.layout.GroupLayout`,
      also for a family of coupled groups over several leaves).
  """

  leaves: tuple[int, ...]
  rule: Any


@dataclasses.dataclass(frozen=True)
class Placement:
  """A regularizer's terms laid on one params tree.

  Attributes:
    paths: the ``/``-joined path of every leaf of the tree.
    leaves: the leaves, in ``jax.tree_util`` order.
    rules: per leaf, its per-leaf rule, or None (not regularized, or under
      coupled groups).
    treedef: the tree's structure.
    terms: the terms of ``psi``, disjoint in their leaves.
  """

  paths: list[str]
  leaves: list[Any]
  rules: list[Any]
  treedef: Any
  terms: list[Term]

  def unflatten(self, leaves: Sequence[Any]) -> optax.Params:
    """A tree of this structure from per-leaf values."""
    return jax.tree_util.tree_unflatten(self.treedef, leaves)

  def flatten(self, tree: optax.Params) -> list[Any]:
    """The leaves of ``tree``, a tree of this structure (raises ValueError otherwise)."""
    return self.treedef.flatten_up_to(tree)

  def gather(self, values: Sequence[Any], term: Term) -> list[Any]:
    """The entries of the per-leaf list ``values`` that ``term`` reads."""
    return [values[i] for i in term.leaves]

  def scatter(self, values: Sequence[Any], per_term: Sequence[Sequence[Any]]) -> list[Any]:
    """``values`` (per leaf) with the leaves of every term replaced by its ``per_term`` entries."""
    out = list(values)
    for term, entries in zip(self.terms, per_term):
      for i, value in zip(term.leaves, entries):
        out[i] = value
    return out


@dataclasses.dataclass(frozen=True)
class Regularizer(abc.ABC):
  """Base class: ``strength * psi``, ``psi`` a sum of terms.

  Subclasses implement the math of a term (the ``term_*`` hooks); this class
  maps it over pytrees, handles per-leaf scales and validation.

  Attributes:
    strength: ``lambda >= 0`` (a number, or a traced scalar inside a step).
    rules: which leaves are regularized and how: None (the defaults), a
      callable ``(path, leaf) -> rule | None`` or a tree of rules.
    rule_type: the per-leaf rule type the regularizer takes.
    has_exact_diag_prox: whether :meth:`terms_prox_diag` is exact.
    screens: whether :meth:`term_screen` can prove groups zero.
  """

  strength: Any
  rules: Any = None

  rule_type: ClassVar[type] = object
  has_exact_diag_prox: ClassVar[bool] = False
  screens: ClassVar[bool] = False

  def __post_init__(self) -> None:
    checks.check_nonnegative(self.strength, f"{type(self).__name__} strength")
    if isinstance(self.rules, (GroupRule, Elementwise, Matrix)):
      raise ValueError(
        "rules: give a callable (path, leaf) -> rule, or a tree of rules matching the "
        "params, not a single rule."
      )

  # ----------------------------------------------------------- hooks of a term
  @abc.abstractmethod
  def default_rule(self, path: str, leaf: Any) -> Any:
    """The rule used for a leaf when ``rules`` is None."""

  @abc.abstractmethod
  def term_value(self, xs: list[Array], rule: Any) -> Array:
    """``psi`` of one term (its leaves ``xs``), without the strength."""

  @abc.abstractmethod
  def term_prox(
    self, xs: list[Array], threshold: Array, rule: Any, stats: list[Array] | None = None
  ) -> list[Array]:
    """``argmin_z 1/2||z - x||^2 + threshold * psi(z)`` over the term's leaves.

    ``stats`` (see :meth:`prox`'s ``statistics``) holds the same values as
    ``xs``; a term may read its per-group quantities from it, or ignore it.
    """

  @abc.abstractmethod
  def term_support(self, xs: list[Array], rule: Any) -> Array:
    """Boolean array: which groups / entries / singular values of the term are nonzero."""

  @abc.abstractmethod
  def term_block_max(self, diags: list[Array], rule: Any) -> tuple[Array, list[Array]]:
    """The largest ``D`` over each block the prox couples.

    Returns it in the shape the term's prox takes its threshold in, and per
    member (broadcasting against it): the inexact solver's step ``1/max D``.
    """

  def term_screen(self, bs: list[Array], threshold: Array, rule: Any) -> list[Array] | None:
    """Per member, a mask of the entries that may be nonzero at the diagonal-metric optimum.

    False means provably zero; None when the regularizer cannot tell.
    """
    return None

  def terms_prox_diag(
    self,
    bs: list[list[Array]],
    diags: list[list[Array]],
    thresholds: list[Array],
    rules: list[Any],
    inits: list[Any] | None = None,
    **options: Any,
  ) -> tuple[list[list[Array]], Array, Array]:
    """Exact ``argmin_z 1/2 z^T D z - b^T z + threshold * psi(z)`` of several terms.

    Returns the solutions, the largest iteration count and the largest
    residual of an iterative solution (0, 0 for closed forms); ``options``
    (``max_iters``, ``rtol``) go to iterative solutions, ``inits`` are their
    warm starts.
    """
    raise NotImplementedError(f"{type(self).__name__} has no exact diagonal-metric prox.")

  # ------------------------------------------------------------- tree level
  def place(self, params: optax.Params) -> Placement:
    """Lay the terms on ``params``: one term per leaf that its rule regularizes.

    Raises:
      ValueError: the rules do not match ``params``.
    """
    paths, leaves, rules, treedef = resolve_rules(
      self.rules, params, self.default_rule, self.rule_type, f"{type(self).__name__} rules"
    )
    terms = [Term((i,), r) for i, r in enumerate(rules) if r is not None]
    return Placement(paths, leaves, rules, treedef, terms)

  def check(self, params: optax.Params) -> None:
    """Validate the rules against ``params`` now (optimizers call it in ``init``)."""
    self.place(params)

  def leaf_scales(self, scale: Any, placement: Placement) -> list[Any]:
    """Per-leaf scales from a scalar or a pytree of scalars.

    Raises:
      ValueError: ``scale`` is neither a scalar nor shaped like the tree.
    """
    if (
      jax.tree_util.tree_structure(scale) == placement.treedef and placement.treedef.num_leaves != 1
    ):
      return jax.tree_util.tree_leaves(scale)
    if jax.tree_util.treedef_is_leaf(jax.tree_util.tree_structure(scale)):
      return [scale] * len(placement.leaves)
    raise ValueError(
      "scale must be a scalar or a pytree of scalars with the params' structure, got "
      f"{jax.tree_util.tree_structure(scale)}."
    )

  def value(self, params: optax.Params) -> Array:
    """``strength * psi(params)`` as a float32 (or float64) scalar."""
    placement = self.place(params)
    total = jnp.zeros((), jnp.float32)
    for term in placement.terms:
      xs = [as_compute_dtype(x) for x in placement.gather(placement.leaves, term)]
      total = total + self.term_value(xs, term.rule)
    return self.strength * total

  def prox(
    self, params: optax.Params, scale: Any = 1.0, statistics: optax.Params | None = None
  ) -> optax.Params:
    """``argmin_z 1/2||z - params||^2 + scale * strength * psi(z)``, term by term.

    Unregularized leaves come back unchanged; the others keep their dtype
    (the math runs in at least float32). A term takes the scale of its first
    leaf.

    ``statistics``, if given, is a tree holding the same values as
    ``params`` from which the per-group quantities (group-LASSO's norms) are
    read. Computed separately from the same inputs (e.g. passed through
    ``jax.lax.optimization_barrier``), it lets XLA fuse that computation into
    the reduction and the prox's own into the scaling, instead of storing
    ``params`` in a temporary buffer read by both (see
    :func:`rmda_jax.optim.proximal.twin_of`).
    """
    placement = self.place(params)
    out = list(placement.leaves)
    scales = self.leaf_scales(scale, placement)
    stat_leaves = None if statistics is None else placement.flatten(statistics)
    for term in placement.terms:
      xs = [as_compute_dtype(x) for x in placement.gather(placement.leaves, term)]
      threshold = jnp.asarray(scales[term.leaves[0]], xs[0].dtype) * self.strength
      stats = (
        None
        if stat_leaves is None
        else [as_compute_dtype(x) for x in placement.gather(stat_leaves, term)]
      )
      zs = self.term_prox(xs, threshold, term.rule, stats=stats)
      for i, z in zip(term.leaves, zs):
        out[i] = z.astype(jnp.result_type(placement.leaves[i]))
    return placement.unflatten(out)

  def lay_out(
    self, b: optax.Params, diag: optax.Params, scale: Any, anchor: optax.Params | None = None
  ) -> tuple[Placement, list[Any], list[Array], list[Array]]:
    """The subproblem ``min_z 1/2 z^T D z - b^T z + scale * strength * psi(z)`` on the terms.

    Args:
      b: the linear term, a pytree like the params.
      diag: the diagonal metric ``D >= 0``, a pytree like ``b``.
      scale: a scalar or a per-leaf pytree multiplying the strength.
      anchor: for unregularized leaves, the value where ``D == 0``; default 0.

    Returns:
      ``(placement, diags, thresholds, solution)``: the terms laid on ``b``,
      the leaves of ``diag``, per term its ``tau = scale * lambda`` (the scale
      of its first leaf, in that leaf's dtype), and per leaf the unregularized
      solution ``b / D`` (the answer on every leaf no term reads).
    """
    placement = self.place(b)
    diags = placement.flatten(diag)
    anchors = [None] * len(diags) if anchor is None else placement.flatten(anchor)
    scales = self.leaf_scales(scale, placement)
    solution = [unregularized_solution(*args) for args in zip(placement.leaves, diags, anchors)]
    thresholds = [
      jnp.asarray(scales[t.leaves[0]], placement.leaves[t.leaves[0]].dtype) * self.strength
      for t in placement.terms
    ]
    return placement, diags, thresholds, solution

  def prox_diag(self, b: optax.Params, diag: optax.Params, scale: Any = 1.0) -> optax.Params:
    """Exact ``argmin_z 1/2 z^T D z - b^T z + scale * strength * psi(z)``.

    ``diag`` is the positive diagonal ``D`` as a pytree like ``b``. With
    ``b = D * y`` this is the prox of ``y`` in the metric ``D``.
    Unregularized leaves get ``b / D``. :func:`rmda_jax.prox.exact.solve_exact`
    also reports the iterations and a residual.
    """
    placement, diags, thresholds, solution = self.lay_out(b, diag, scale)
    if placement.terms:
      per_term, _, _ = self.terms_prox_diag(
        [placement.gather(placement.leaves, t) for t in placement.terms],
        [placement.gather(diags, t) for t in placement.terms],
        thresholds,
        [t.rule for t in placement.terms],
      )
      solution = placement.scatter(solution, per_term)
    return placement.unflatten(solution)

  def support(self, params: optax.Params) -> list[Array]:
    """Per term, a boolean array of its nonzero groups / entries / singular values.

    A non-finite entry counts as nonzero.
    """
    placement = self.place(params)
    return [
      self.term_support([jnp.asarray(x) for x in placement.gather(placement.leaves, t)], t.rule)
      for t in placement.terms
    ]


@dataclasses.dataclass(frozen=True)
class LeafRegularizer(Regularizer):
  """A regularizer whose every term is one leaf: subclasses write the math of a leaf.

  Implement :meth:`default_rule`, :meth:`leaf_value`, :meth:`leaf_prox`,
  :meth:`leaf_support` and :meth:`block_axes`; :meth:`leaf_prox_diag` (with
  ``has_exact_diag_prox = True``) and :meth:`leaf_screen` where they exist.
  The adaptive optimizers then solve their subproblem exactly with
  :meth:`leaf_prox_diag`, or with the inexact solver from :meth:`leaf_prox`
  alone.
  """

  @abc.abstractmethod
  def leaf_value(self, x: Array, rule: Any) -> Array:
    """``psi`` of one leaf, without the strength."""

  @abc.abstractmethod
  def leaf_prox(self, x: Array, threshold: Array, rule: Any) -> Array:
    """``argmin_z 1/2||z - x||^2 + threshold * psi(z)``.

    ``threshold`` broadcasts against the per-group shape (see :meth:`block_axes`).
    """

  @abc.abstractmethod
  def leaf_support(self, x: Array, rule: Any) -> Array:
    """Boolean array: which groups / entries / singular values are nonzero."""

  @abc.abstractmethod
  def block_axes(self, rule: Any, ndim: int) -> tuple[int, ...]:
    """Axes the prox couples: a diagonal metric's step size is constant along them."""

  def leaf_prox_diag(self, b: Array, diag: Array, threshold: Array, rule: Any) -> Array:
    """Exact ``argmin_z 1/2 z^T D z - b^T z + threshold * psi(z)`` (a closed form)."""
    raise NotImplementedError(f"{type(self).__name__} has no exact diagonal-metric prox.")

  def leaf_screen(self, b: Array, threshold: Array, rule: Any) -> Array | None:
    """Mask of entries that may be nonzero at the diagonal-metric optimum, or None."""
    return None

  def term_value(self, xs: list[Array], rule: Any) -> Array:
    return self.leaf_value(xs[0], rule)

  def term_prox(
    self, xs: list[Array], threshold: Array, rule: Any, stats: list[Array] | None = None
  ) -> list[Array]:
    return [self.leaf_prox(xs[0], threshold, rule)]

  def term_support(self, xs: list[Array], rule: Any) -> Array:
    return self.leaf_support(xs[0], rule)

  def term_screen(self, bs: list[Array], threshold: Array, rule: Any) -> list[Array] | None:
    mask = self.leaf_screen(bs[0], threshold, rule)
    return None if mask is None else [mask]

  def term_block_max(self, diags: list[Array], rule: Any) -> tuple[Array, list[Array]]:
    d = diags[0]
    d_max = jnp.max(d, axis=self.block_axes(rule, d.ndim), keepdims=True)
    return d_max, [d_max]

  def terms_prox_diag(
    self,
    bs: list[list[Array]],
    diags: list[list[Array]],
    thresholds: list[Array],
    rules: list[Any],
    inits: list[Any] | None = None,
    **options: Any,
  ) -> tuple[list[list[Array]], Array, Array]:
    del inits, options  # closed forms need no start
    zs = [
      [self.leaf_prox_diag(b[0], d[0], t, r)] for b, d, t, r in zip(bs, diags, thresholds, rules)
    ]
    return zs, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)


def check_regularizer(obj: Any, argname: str = "regularizer") -> Regularizer | None:
  """``obj`` if it is a regularizer or None.

  Raises:
    TypeError: anything else.
  """
  if obj is None or isinstance(obj, Regularizer):
    return obj
  raise TypeError(
    f"{argname} must be a rmda_jax regularizer (l1, group_lasso, nuclear_norm, "
    f"elastic_net, ...) or None, got {type(obj).__name__}."
  )
