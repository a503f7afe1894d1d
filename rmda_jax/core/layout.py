"""Groups laid on concrete leaves: how per-entry values become per-group ones, and back.

A :class:`GroupLayout` is the one description of groups on arrays that the
regularizers, the solvers, the metrics, RigL and compaction share. It comes
from a :class:`~rmda_jax.core.groups.Family` of coupled groups over several
leaves (:meth:`GroupLayout.of_family`) or from one leaf under a per-leaf
:class:`~rmda_jax.core.rules.GroupRule` (:meth:`GroupLayout.of_rule`), and
offers per-group reductions over all of its members (:meth:`~GroupLayout.sum`,
:meth:`~GroupLayout.max`, :meth:`~GroupLayout.reduce_many`) and the inverse,
a per-group array spread over a member (:meth:`~GroupLayout.spread`).

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax import Family, Slice
  >>> from rmda_jax.core.layout import GroupLayout
  >>> hidden = Family("h", "units", 2, (Slice("w1", 1), Slice("w2", 0)))
  >>> layout = GroupLayout.of_family(hidden, [(1, 2), (2, 1)])
  >>> w1, w2 = jnp.array([[3.0, 0.0]]), jnp.array([[4.0], [0.0]])
  >>> layout.sum([w1 * w1, w2 * w2]).tolist(), layout.nonzero([w1, w2]).tolist()
  ([25.0, 0.0], [True, False])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from rmda_jax.core.groups import Family
from rmda_jax.core.rules import GroupRule, group_weight

Shape = tuple[int, ...]
REDUCTIONS = ("sum", "max", "min")


@dataclasses.dataclass(frozen=True)
class GroupLayout:
  """The groups of one family, or of one leaf under a rule, laid on leaf shapes.

  Per-group arrays have shape ``group_shape``: ``(n,)`` for a family,
  ``(layers, n)`` for a family on stacked leaves, the leaf's shape with the
  reduced axes kept as 1 for a rule, so that a per-leaf rule runs plain
  ``keepdims`` reductions and broadcasts its results back without a reshape.

  Attributes:
    shapes: the member leaves' shapes.
    views: per member, the shape the leaf is viewed as (None: as is).
    reduce_axes: per member, the axes (of the view) inside a group.
    group_shape: shape of per-group arrays.
    weight: ``w_g`` (the same for every group of the layout).
    spread_shapes: per member, the view's shape with every axis but the
      group (and layer) axes set to 1 (None for a per-leaf rule).
    unit_first: per member, whether its unit axis comes before its layer
      axis (per-group arrays are ``(layers, n)``, so those are transposed).
  """

  shapes: tuple[Shape, ...]
  views: tuple[Shape | None, ...]
  reduce_axes: tuple[tuple[int, ...], ...]
  group_shape: Shape
  weight: float
  spread_shapes: tuple[Shape | None, ...]
  unit_first: tuple[bool, ...] = ()

  @classmethod
  def of_rule(
    cls, shape: Sequence[int], rule: GroupRule, weight: float | None = None
  ) -> GroupLayout:
    """One leaf of ``shape`` under ``rule``; ``weight`` defaults to the rule's ``w_g``."""
    shape = tuple(shape)
    group_shape = tuple(1 if a in rule.reduce_axes else s for a, s in enumerate(shape))
    weight = group_weight(shape, rule) if weight is None else weight
    return cls(
      (shape,), (None,), (tuple(rule.reduce_axes),), group_shape, float(weight), (None,), (False,)
    )

  @classmethod
  def of_family(cls, family: Family, shapes: Sequence[Sequence[int]]) -> GroupLayout:
    """The groups of ``family`` on member leaves of ``shapes`` (in the order of its members)."""
    shapes = tuple(tuple(s) for s in shapes)
    views, reduce_axes, spread, unit_first = [], [], [], []
    for member, shape in zip(family.members, shapes):
      view = member.expanded_shape(shape)
      kept = {member.group_axis()}
      layer = member.expanded_layer_axis()
      if layer is not None:
        kept.add(layer)
      views.append(view if view != shape else None)
      reduce_axes.append(tuple(a for a in range(len(view)) if a not in kept))
      spread.append(tuple(s if a in kept else 1 for a, s in enumerate(view)))
      unit_first.append(layer is not None and member.group_axis() < layer)
    size = sum(math.prod(s) for s in shapes) // max(family.num_groups, 1)
    weight = family.weight if family.weight is not None else math.sqrt(size)
    group_shape = (family.size,) if family.layers is None else (family.layers, family.size)
    return cls(
      shapes,
      tuple(views),
      tuple(reduce_axes),
      group_shape,
      float(weight),
      tuple(spread),
      tuple(unit_first),
    )

  @property
  def coupled(self) -> bool:
    """Whether the groups are indexed as ``(n,)`` (a family) rather than in the leaf's own shape."""
    return self.spread_shapes[0] is not None

  @property
  def num_groups(self) -> int:
    return math.prod(self.group_shape)

  @property
  def group_size(self) -> int:
    """Entries in one group (over all members)."""
    return sum(math.prod(s) for s in self.shapes) // max(self.num_groups, 1)

  def _to_groups(self, reduced: jax.Array, member: int) -> jax.Array:
    """A member's reduction (its kept axes in leaf order) as a per-group array."""
    if self.unit_first and self.unit_first[member]:
      return reduced.reshape(self.group_shape[::-1]).T
    return reduced.reshape(self.group_shape)

  def _reduce(
    self,
    op: Callable[..., jax.Array],
    combine: Callable[[jax.Array, jax.Array], jax.Array],
    arrays: Sequence[jax.Array],
  ) -> jax.Array:
    total = None
    for m, x in enumerate(arrays):
      view = self.views[m]
      if view is not None:
        x = x.reshape(view)
      r = op(x, axis=self.reduce_axes[m], keepdims=True)
      if self.coupled:
        r = self._to_groups(r, m)
      total = r if total is None else combine(total, r)
    assert total is not None, "a layout has at least one member"
    return total

  def sum(self, arrays: Sequence[jax.Array]) -> jax.Array:
    """Per-group sums over every member (``arrays`` aligned with the members)."""
    return self._reduce(jnp.sum, jnp.add, arrays)

  def max(self, arrays: Sequence[jax.Array]) -> jax.Array:
    """Per-group maxima over every member."""
    return self._reduce(jnp.max, jnp.maximum, arrays)

  def min(self, arrays: Sequence[jax.Array]) -> jax.Array:
    """Per-group minima over every member."""
    return self._reduce(jnp.min, jnp.minimum, arrays)

  def reduce_many(self, ops: Sequence[str], operands: Sequence[Sequence[Any]]) -> list[jax.Array]:
    """Several per-group reductions in one pass over the entries.

    ``ops[j]`` (``"sum"``, ``"max"`` or ``"min"``) reduces ``operands[j]``,
    a list of per-entry arrays aligned with the members. All of them become
    one variadic ``lax.reduce`` per member, which XLA fuses with the
    elementwise expressions that produce the operands: nothing the size of
    a leaf is materialized, and the entries are read once. (Separate
    reductions of shared expressions make XLA store those expressions in
    temporary buffers, allocated at every call.) A single op is a plain
    ``reduce_sum`` / ``reduce_max`` / ``reduce_min``, which XLA:CPU may run
    as a vectorized kernel on a stored operand instead. Several ops are not
    differentiable; the solvers' loops need no gradient.

    Raises:
      ValueError: an op that is not ``"sum"``, ``"max"`` or ``"min"``.
    """
    combine = {"sum": jnp.add, "max": jnp.maximum, "min": jnp.minimum}
    for op in ops:
      if op not in combine:
        raise ValueError(f"reduce_many: op must be one of {REDUCTIONS}, got {op!r}.")

    def init(op: str, dtype: Any) -> jax.Array:
      if op == "sum":
        return jnp.zeros((), dtype)
      return jnp.array(-jnp.inf if op == "max" else jnp.inf, dtype)

    def computation(acc: Sequence[jax.Array], new: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
      return tuple(combine[op](a, b) for op, a, b in zip(ops, acc, new))

    totals: list[jax.Array] | None = None
    for m in range(len(self.shapes)):
      xs = [operand[m] for operand in operands]
      view = self.views[m]
      shape = view if view is not None else self.shapes[m]
      xs = [jnp.broadcast_to(x, self.shapes[m]).reshape(shape) for x in xs]
      dtype = jnp.result_type(*xs)
      xs = [x.astype(dtype) for x in xs]
      reduced = jax.lax.reduce(
        tuple(xs), tuple(init(op, dtype) for op in ops), computation, tuple(self.reduce_axes[m])
      )
      reduced = [self._to_groups(r, m) for r in reduced]
      totals = (
        reduced if totals is None else [combine[op](t, r) for op, t, r in zip(ops, totals, reduced)]
      )
    assert totals is not None, "a layout has at least one member"
    return totals

  def nonzero(self, arrays: Sequence[jax.Array]) -> jax.Array:
    """Which groups are not exactly zero: the structure of a point.

    ``!= 0`` rather than ``> 0``, so a group with a NaN entry is never a zero group.
    """
    return self.sum([jnp.square(x) for x in arrays]) != 0

  def spread(self, per_group: jax.Array, member: int) -> jax.Array:
    """A per-group array as an array that broadcasts against member ``member``."""
    spread_shape = self.spread_shapes[member]
    if spread_shape is None:
      return per_group
    if self.unit_first and self.unit_first[member]:
      per_group = per_group.T
    keep = per_group.reshape(spread_shape)
    view = self.views[member]
    if view is None:
      return keep
    return jnp.broadcast_to(keep, view).reshape(self.shapes[member])
