r"""Group-LASSO: ``lambda * sum_g w_g ||x_g||_2`` over per-leaf or coupled groups.

Groups come from per-leaf :class:`~rmda_jax.core.rules.GroupRule` rules (the
Flax defaults: one group per input feature of a Dense kernel, per input
channel of a Conv kernel, per head of an attention projection), or from a
:class:`~rmda_jax.core.groups.Groups` of coupled families (whole hidden
units, channels and heads across every leaf they span, e.g. from
:func:`rmda_jax.discover_groups`). Both are laid on the leaves as
:class:`~rmda_jax.core.layout.GroupLayout` terms, so one code path serves
both.

The prox is ``z_g = max(0, 1 - t w_g / ||x_g||) x_g`` (``t = scale * lambda``),
written without any 0/0; a group with a NaN entry stays NaN (never taken for a
zero group). Under a diagonal metric the exact solution comes from a
per-group 1-D secular equation over the whole group (:mod:`rmda_jax.prox.secular`).

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> from rmda_jax import Family, Groups, Slice
  >>> unit = Family("hidden", "units", 2, (Slice("w1", 1), Slice("w2", 0)))
  >>> reg = rmda_jax.group_lasso(1.0, groups=Groups((unit,)))
  >>> params = {"w1": jnp.array([[3.0, 0.1]]), "w2": jnp.array([[4.0], [0.1]])}
  >>> z = reg.prox(params)   # unit 0: norm 5 shrinks by sqrt(2); unit 1: norm 0.14 < sqrt(2)
  >>> [round(float(v), 4) for v in z["w1"][0]], [round(float(v), 4) for v in z["w2"][:, 0]]
  ([2.1515, 0.0], [2.8686, 0.0])

References:
  Huang & Lee, "Training Structured Neural Networks Through Manifold
  Identification and Variance Reduction", ICLR 2022, arXiv:2112.02612.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import chex
import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import rules as leaf_rules
from rmda_jax.core.groups import Groups
from rmda_jax.core.layout import GroupLayout
from rmda_jax.core.numerics import norm_from_squares, shrink_factor
from rmda_jax.core.trees import path_to_str
from rmda_jax.prox import secular
from rmda_jax.prox.regularizer import Placement, Regularizer, Term

Array = jax.Array


def group_norms(xs: list[Array], layout: GroupLayout) -> Array:
  """``||x_g||_2`` of every group of a layout (``xs`` aligned with its members)."""
  return norm_from_squares(layout.sum([jnp.square(x) for x in xs]))


def group_norm(x: Array, rule: leaf_rules.GroupRule) -> Array:
  """``||x_g||_2`` for every group of one leaf under ``rule``, the reduced axes kept (size 1)."""
  return norm_from_squares(jnp.sum(jnp.square(x), axis=rule.reduce_axes, keepdims=True))


@dataclasses.dataclass(frozen=True)
class GroupLasso(Regularizer):
  """``lambda * sum_g w_g ||x_g||_2`` over per-leaf groups or coupled groups (module doc).

  Attributes:
    grouping: ``"input"`` or ``"output"``, the default per-leaf rules.
    groups: coupled groups instead of per-leaf rules; leaves in no family
      are not penalized.
  """

  rule_type: ClassVar[type] = leaf_rules.GroupRule
  has_exact_diag_prox: ClassVar[bool] = True
  screens: ClassVar[bool] = True
  grouping: str = "input"
  groups: Groups | None = None

  def __post_init__(self) -> None:
    super().__post_init__()
    if self.grouping not in leaf_rules.GROUPINGS:
      raise ValueError(f"grouping must be one of {leaf_rules.GROUPINGS}, got {self.grouping!r}.")
    if self.groups is not None:
      if not isinstance(self.groups, Groups):
        raise TypeError(
          f"groups must be a rmda_jax.Groups (e.g. from rmda_jax.discover_groups), "
          f"got {type(self.groups).__name__}."
        )
      if self.rules is not None:
        raise ValueError(
          "group_lasso: give rules= (per-leaf groups) or groups= (coupled groups), not both."
        )

  def default_rule(self, path: str, leaf: Any) -> leaf_rules.Rule | None:
    return leaf_rules.default_group_rule(self.grouping)(path, leaf)

  def place(self, params: optax.Params) -> Placement:
    """Per-leaf rules or the coupled families, each term a :class:`~rmda_jax.core.GroupLayout`.

    Raises:
      ValueError: the rules do not match ``params``, or a family names a
        leaf the params do not have or does not fit its shape.
    """
    if self.groups is None:
      placement = super().place(params)
      terms = [
        Term(t.leaves, GroupLayout.of_rule(jnp.shape(placement.leaves[t.leaves[0]]), t.rule))
        for t in placement.terms
      ]
      return dataclasses.replace(placement, terms=terms)
    keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_to_str(kp) for kp, _ in keyed]
    leaves = [leaf for _, leaf in keyed]
    terms: list[Term] = []
    if (
      not leaves
    ):  # a tree without arrays (optax.tree_map_params' placeholder): nothing to lay groups on
      return Placement(paths, leaves, [], treedef, terms)
    where = {p: i for i, p in enumerate(paths)}
    for family in self.groups.families:
      index = []
      for member in family.members:
        if member.path not in where:
          raise ValueError(
            f"groups: family {family.name!r} spans {member.path!r}, which is not a leaf of the "
            f"params (leaves: {', '.join(paths[:6])}{', ...' if len(paths) > 6 else ''})."
          )
        i = where[member.path]
        shape = jnp.shape(leaves[i])
        problem = member.check(shape)
        if problem is None and member.num_groups(shape) != family.size:
          problem = f"it holds {member.num_groups(shape)} groups, the family {family.size}"
        if problem is None and member.layer_axis is not None:
          if shape[member.layer_axis] != family.layers:
            problem = (
              f"its layer axis has {shape[member.layer_axis]} layers, the family {family.layers}"
            )
        if problem:
          raise ValueError(
            f"groups: family {family.name!r} does not fit leaf {member.path!r}: {problem}."
          )
        index.append(i)
      if family.size and all(math.prod(jnp.shape(leaves[i])) for i in index):
        terms.append(
          Term(tuple(index), GroupLayout.of_family(family, [jnp.shape(leaves[i]) for i in index]))
        )
    return Placement(paths, leaves, [None] * len(leaves), treedef, terms)

  def term_value(self, xs: list[Array], rule: GroupLayout) -> Array:
    return rule.weight * jnp.sum(group_norms(xs, rule))

  def term_prox(
    self, xs: list[Array], threshold: Array, rule: GroupLayout, stats: list[Array] | None = None
  ) -> list[Array]:
    factor = shrink_factor(
      group_norms(xs if stats is None else stats, rule), threshold * rule.weight
    )
    return [x * rule.spread(factor, m) for m, x in enumerate(xs)]

  def term_support(self, xs: list[Array], rule: GroupLayout) -> Array:
    return rule.nonzero(xs)

  def term_screen(self, bs: list[Array], threshold: Array, rule: GroupLayout) -> list[Array]:
    # kept unless provably zero: a NaN group is kept, so the NaN is seen
    mask = ~(group_norms(bs, rule) <= threshold * rule.weight)
    return [rule.spread(mask, m) for m in range(len(bs))]

  def term_block_max(self, diags: list[Array], rule: GroupLayout) -> tuple[Array, list[Array]]:
    d_max = rule.max(diags)
    return d_max, [rule.spread(d_max, m) for m in range(len(diags))]

  def terms_prox_diag(
    self,
    bs: list[list[Array]],
    diags: list[list[Array]],
    thresholds: list[Array],
    rules: list[Any],
    inits: list[Any] | None = None,
    **options: Any,
  ) -> tuple[list[list[Array]], Array, Array]:
    return secular.group_lasso_secular(
      bs,
      diags,
      [t * layout.weight for t, layout in zip(thresholds, rules)],
      rules,
      inits=inits,
      **options,
    )


def group_lasso(
  strength: chex.Numeric,
  rules: Any = None,
  grouping: str = "input",
  groups: Groups | None = None,
) -> GroupLasso:
  """Group-LASSO ``lambda * sum_g sqrt(|g|) ||x_g||_2`` (channel / neuron / head sparsity).

  Args:
    strength: ``lambda >= 0``.
    rules: None for the Flax defaults (one group per input feature of a Dense
      kernel, per input channel of a Conv kernel; biases, scales, embeddings
      unpenalized), a callable ``(path, leaf) -> GroupRule | None``
      (see :func:`rmda_jax.by_path`), or a tree of rules matching the
      params.
    grouping: ``"input"`` (default) or ``"output"`` (filter-wise / output-wise
      groups) for the default rules.
    groups: coupled groups instead of per-leaf rules: a
      :class:`~rmda_jax.Groups`, e.g. from :func:`rmda_jax.discover_groups`
      (whole hidden units, channels and attention heads across every leaf
      they span). Leaves in no family are not penalized.

  Returns:
    A :class:`GroupLasso`.

  Raises:
    TypeError / ValueError: a strength that is not a finite number ``>= 0``,
      an unknown ``grouping``, ``groups`` that is not a ``Groups``, or both
      ``rules`` and ``groups``.

  Example:
    >>> import rmda_jax
    >>> reg = rmda_jax.group_lasso(1e-3)                      # input-wise groups
    >>> reg = rmda_jax.group_lasso(1e-3, grouping="output")   # filter-wise groups
  """
  return GroupLasso(strength=strength, rules=rules, grouping=grouping, groups=groups)
