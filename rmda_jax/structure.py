"""Coupled groups: the library's notion of structure.

A *group* is a set of slices across one or more parameter leaves that form
one unit of the model: hidden unit ``j`` of an MLP block is
``{Dense_0/kernel[:, j], Dense_0/bias[j], Dense_1/kernel[j, :]}``, attention
head ``h`` is ``{query/key/value kernel[:, h, :], their bias[h, :],
out/kernel[h, :, :]}``, conv channel ``c`` is ``{Conv_0/kernel[..., c],
Conv_0/bias[c], BatchNorm scale/bias[c], Conv_1/kernel[:, :, c, :]}``.

A :class:`Family` holds all groups of one unit type of one layer (the ``n``
hidden units of a block): each member :class:`Slice` says where the group
index lives in one leaf. Index ``j`` of a family selects, in every member
leaf, the entries whose index along ``axis`` -- viewed as the row-major
shape ``split`` -- has ``j`` at ``position``. ``split = ()`` is the axis
itself; ``split = (H, D), position = 0`` is head ``j`` of a fused
``(H * D, out)`` projection; ``split = (16, 50), position = 1`` is channel
``j`` of a flattened ``4 x 4 x 50`` feature map.

Families of one :class:`Groups` are disjoint: a leaf belongs to at most one
family (see :func:`rmda_jax.discovery.discover_groups` for how shared leaves
are assigned). :func:`rmda_jax.group_lasso` with ``groups=`` penalizes
``sum_g w_g ||x_g||_2`` over them, ``w_g = sqrt(total group size)`` by
default; the optimizers, solvers and metrics all work on them.

Example:
  >>> from rmda_jax.structure import Family, Groups, Slice
  >>> hidden = Family("Dense_0", "units", 16, (
  ...     Slice("Dense_0/kernel", 1), Slice("Dense_0/bias", 0), Slice("Dense_1/kernel", 0)))
  >>> groups = Groups((hidden,))
  >>> groups.families[0].group_size({"Dense_0/kernel": (8, 16), "Dense_0/bias": (16,),
  ...                                "Dense_1/kernel": (16, 4)})
  13
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional, Sequence

KINDS = ("units", "heads", "inputs", "declared")


@dataclasses.dataclass(frozen=True)
class Slice:
  """Where a family's group index lives in one leaf.

  Attributes:
    path: the leaf's ``/``-joined key path (as :func:`rmda_jax.groups.path_to_str`
      writes it; NNX ``Variable.value`` is not a component).
    axis: the leaf axis that carries the group index (non-negative).
    split: the axis viewed as this row-major shape, ``()`` for the axis
      itself; ``prod(split)`` is the axis size.
    position: which factor of ``split`` is the group index.
  """

  path: str
  axis: int
  split: tuple = ()
  position: int = 0

  def __post_init__(self):
    object.__setattr__(self, "split", tuple(int(s) for s in self.split))
    if self.axis < 0:
      raise ValueError(f"Slice {self.path!r}: axis must be >= 0, got {self.axis}.")
    if self.split and not 0 <= self.position < len(self.split):
      raise ValueError(f"Slice {self.path!r}: position {self.position} out of range for split {self.split}.")
    if not self.split and self.position != 0:
      raise ValueError(f"Slice {self.path!r}: position must be 0 without a split.")

  def expanded_shape(self, shape: Sequence[int]) -> tuple:
    """``shape`` with ``axis`` replaced by ``split``."""
    shape = tuple(shape)
    inner = self.split or (shape[self.axis],)
    return shape[:self.axis] + inner + shape[self.axis + 1:]

  def group_axis(self) -> int:
    """The group index's axis in :meth:`expanded_shape`."""
    return self.axis + self.position

  def num_groups(self, shape: Sequence[int]) -> int:
    return self.expanded_shape(shape)[self.group_axis()]

  def check(self, shape: Sequence[int]) -> Optional[str]:
    """An error message if this slice does not fit a leaf of ``shape``, else None."""
    shape = tuple(shape)
    if self.axis >= len(shape):
      return f"axis {self.axis} is out of range for shape {shape}"
    if self.split and math.prod(self.split) != shape[self.axis]:
      return f"split {self.split} does not multiply to axis {self.axis}'s size {shape[self.axis]} (shape {shape})"
    return None

  def describe(self) -> str:
    if not self.split:
      return f"{self.path}[axis {self.axis}]"
    return f"{self.path}[axis {self.axis} as {self.split}, factor {self.position}]"


@dataclasses.dataclass(frozen=True)
class Family:
  """All groups of one unit type of one layer: ``size`` groups over ``members``.

  Attributes:
    name: a readable name (the layer that produces the units).
    kind: ``"units"`` (hidden units, channels), ``"heads"`` (attention heads),
      ``"inputs"`` (features of the model's input), or ``"declared"``.
    size: the number of groups.
    members: the :class:`Slice` of every leaf the groups span.
    weight: ``w_g`` of every group; None means ``sqrt(total group size)``.
    consumers: paths of the leaves the unit is contracted against (a
      consumer kernel's rows, an output projection): zeroing a group's slices
      in these alone removes the unit exactly. Empty when only the whole
      group does (or when unknown, for hand-written families).
  """

  name: str
  kind: str
  size: int
  members: tuple
  weight: Optional[float] = None
  consumers: tuple = ()

  def __post_init__(self):
    object.__setattr__(self, "members", tuple(self.members))
    object.__setattr__(self, "consumers", tuple(self.consumers))
    if self.kind not in KINDS:
      raise ValueError(f"Family {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}.")
    if not self.members:
      raise ValueError(f"Family {self.name!r} has no members.")
    paths = [m.path for m in self.members]
    if len(set(paths)) != len(paths):
      raise ValueError(f"Family {self.name!r}: a leaf appears twice in {paths}.")
    if self.weight is not None and not (self.weight >= 0 and math.isfinite(self.weight)):
      raise ValueError(f"Family {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}.")

  @property
  def paths(self) -> tuple:
    return tuple(m.path for m in self.members)

  def group_size(self, shapes: Mapping[str, Sequence[int]]) -> int:
    """Entries in one group, given the member leaves' shapes by path."""
    return sum(math.prod(shapes[m.path]) // self.size for m in self.members)

  def group_weight(self, shapes: Mapping[str, Sequence[int]]) -> float:
    return float(self.weight) if self.weight is not None else math.sqrt(self.group_size(shapes))


@dataclasses.dataclass(frozen=True)
class Unprunable:
  """A dimension that carries parameters but is not offered as groups, and why."""

  size: int
  members: tuple
  reasons: tuple

  def describe(self) -> str:
    leaves = ", ".join(m.describe() for m in self.members[:4])
    more = f" and {len(self.members) - 4} more" if len(self.members) > 4 else ""
    return f"size {self.size}: {leaves}{more} -- " + "; ".join(self.reasons)


@dataclasses.dataclass(frozen=True)
class Groups:
  """Disjoint coupled group families, plus what was found but not offered.

  Pass it to :func:`rmda_jax.group_lasso` (``groups=``); ``print`` it for a
  summary per kind and layer.
  """

  families: tuple
  unprunable: tuple = ()
  unknown_primitives: tuple = ()
  leaf_shapes: tuple = ()  # ((path, shape), ...) of the params the groups were found on

  def __post_init__(self):
    object.__setattr__(self, "families", tuple(self.families))
    object.__setattr__(self, "leaf_shapes", tuple((p, tuple(s)) for p, s in self.leaf_shapes))
    object.__setattr__(self, "unprunable", tuple(self.unprunable))
    object.__setattr__(self, "unknown_primitives", tuple(self.unknown_primitives))
    owner = {}
    for family in self.families:
      for path in family.paths:
        if path in owner:
          raise ValueError(f"groups: leaf {path!r} is in two families ({owner[path]!r} and {family.name!r}); "
                           "families must be disjoint.")
        owner[path] = family.name

  @property
  def paths(self) -> frozenset:
    return frozenset(p for f in self.families for p in f.paths)

  def of_kind(self, *kinds: str) -> "Groups":
    """Only the families of these kinds."""
    return dataclasses.replace(self, families=tuple(f for f in self.families if f.kind in kinds))

  def num_groups(self) -> int:
    return sum(f.size for f in self.families)

  def summary(self, shapes: Optional[Mapping[str, Sequence[int]]] = None) -> str:
    """A table: kind, layer, groups, entries per group (when ``shapes`` is given), leaves."""
    rows = [("kind", "layer", "groups", "group size", "leaves")]
    for kind in KINDS:
      for f in self.families:
        if f.kind == kind:
          size = str(f.group_size(shapes)) if shapes is not None else "-"
          rows.append((kind, f.name, str(f.size), size, ", ".join(f.paths)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    total = f"{len(self.families)} families, {self.num_groups()} groups"
    lines.insert(0, total)
    if self.unprunable:
      lines.append(f"not prunable ({len(self.unprunable)} dimensions):")
      lines.extend("  " + u.describe() for u in self.unprunable)
    if self.unknown_primitives:
      lines.append("unknown primitives (their dimensions were kept whole): " + ", ".join(self.unknown_primitives))
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.summary(dict(self.leaf_shapes) if self.leaf_shapes else None)


# --------------------------------------------------------------------------- blocks
@dataclasses.dataclass(frozen=True)
class Block:
  """Groups laid on concrete leaves: how per-entry values become per-group ones.

  One block is one family of coupled groups, or one leaf under a per-leaf
  :class:`~rmda_jax.groups.GroupRule` (the special case with one member and
  no reshape). Per-group arrays have shape ``group_shape``: ``(n,)`` for a
  family, the leaf's shape with the reduced axes kept as 1 for a rule, so
  the per-leaf case runs exactly the reductions it always did.

  Attributes:
    shapes: the member leaves' shapes.
    expanded: per member, the shape the leaf is viewed as (None: as is).
    reduce_axes: per member, the axes (of the expanded view) inside a group.
    group_shape: shape of per-group arrays.
    weight: ``w_g`` (the same for every group of the block).
    keep_shapes: per member, the expanded view's shape with every axis but
      the group axis set to 1 (None for a per-leaf rule).
  """

  shapes: tuple
  expanded: tuple
  reduce_axes: tuple
  group_shape: tuple
  weight: float
  keep_shapes: tuple

  @classmethod
  def of_rule(cls, shape: Sequence[int], rule, weight: float) -> "Block":
    shape = tuple(shape)
    group_shape = tuple(1 if a in rule.reduce_axes else s for a, s in enumerate(shape))
    return cls((shape,), (None,), (tuple(rule.reduce_axes),), group_shape, float(weight), (None,))

  @classmethod
  def of_family(cls, family: Family, shapes: Sequence[Sequence[int]]) -> "Block":
    shapes = tuple(tuple(s) for s in shapes)
    expanded, reduce_axes, keep = [], [], []
    for member, shape in zip(family.members, shapes):
      view = member.expanded_shape(shape)
      axis = member.group_axis()
      expanded.append(view if view != shape else None)
      reduce_axes.append(tuple(a for a in range(len(view)) if a != axis))
      keep.append(tuple(s if a == axis else 1 for a, s in enumerate(view)))
    size = sum(math.prod(s) for s in shapes) // max(family.size, 1)
    weight = family.weight if family.weight is not None else math.sqrt(size)
    return cls(shapes, tuple(expanded), tuple(reduce_axes), (family.size,), float(weight), tuple(keep))

  @property
  def coupled(self) -> bool:
    return self.keep_shapes[0] is not None

  @property
  def num_groups(self) -> int:
    return math.prod(self.group_shape)

  @property
  def group_size(self) -> int:
    """Entries in one group (over all members)."""
    return sum(math.prod(s) for s in self.shapes) // max(self.num_groups, 1)

  def _reduce(self, op, combine, arrays):
    total = None
    for m, x in enumerate(arrays):
      if self.expanded[m] is not None:
        x = x.reshape(self.expanded[m])
      r = op(x, axis=self.reduce_axes[m], keepdims=True)
      if self.coupled:
        r = r.reshape(self.group_shape)
      total = r if total is None else combine(total, r)
    return total

  def sum(self, arrays):
    """Per-group sums over every member (``arrays`` aligned with the members)."""
    import jax.numpy as jnp

    return self._reduce(jnp.sum, jnp.add, arrays)

  def max(self, arrays):
    import jax.numpy as jnp

    return self._reduce(jnp.max, jnp.maximum, arrays)

  def min(self, arrays):
    import jax.numpy as jnp

    return self._reduce(jnp.min, jnp.minimum, arrays)

  def reduce_many(self, ops: Sequence[str], operands: Sequence[Sequence]) -> list:
    """Several per-group reductions in one pass over the entries.

    ``ops[j]`` (``"sum"``, ``"max"`` or ``"min"``) reduces ``operands[j]``,
    a list of per-entry arrays aligned with the members. All of them become
    one variadic ``lax.reduce`` per member, which XLA fuses with the
    elementwise expressions that produce the operands: nothing the size of
    a leaf is materialized, and the entries are read once. (Separate
    reductions of shared expressions make XLA store those expressions in
    temporary buffers, which on CPU are freshly allocated, and page-faulted,
    at every call.) A single op is a plain ``reduce_sum`` / ``reduce_max``
    / ``reduce_min``, which XLA:CPU may run as a vectorized kernel on a
    stored operand instead. Several ops are not differentiable; the
    solvers' loops need no gradient.
    """
    import jax
    import jax.numpy as jnp

    combine = {"sum": jnp.add, "max": jnp.maximum, "min": jnp.minimum}
    for op in ops:
      if op not in combine:
        raise ValueError(f"reduce_many: op must be 'sum', 'max' or 'min', got {op!r}.")

    def init(op, dtype):
      if op == "sum":
        return jnp.zeros((), dtype)
      return jnp.array(-jnp.inf if op == "max" else jnp.inf, dtype)

    def computation(acc, new):
      return tuple(combine[op](a, b) for op, a, b in zip(ops, acc, new))

    totals = None
    for m in range(len(self.shapes)):
      xs = [operand[m] for operand in operands]
      shape = self.expanded[m] if self.expanded[m] is not None else self.shapes[m]
      xs = [jnp.broadcast_to(x, self.shapes[m]).reshape(shape) for x in xs]
      dtype = jnp.result_type(*xs)
      xs = [x.astype(dtype) for x in xs]
      reduced = jax.lax.reduce(tuple(xs), tuple(init(op, dtype) for op in ops), computation,
                               tuple(self.reduce_axes[m]))
      reduced = [r.reshape(self.group_shape) for r in reduced]
      totals = reduced if totals is None else [combine[op](t, r) for op, t, r in zip(ops, totals, reduced)]
    return totals

  def nonzero(self, arrays):
    """Which groups are not exactly zero: the structure of a point. ``!= 0``
    rather than ``> 0``, so a group with a NaN entry is never a zero group."""
    import jax.numpy as jnp

    return self.sum([jnp.square(x) for x in arrays]) != 0

  def spread(self, per_group, member: int):
    """A per-group array as an array that broadcasts against member ``member``."""
    import jax.numpy as jnp

    if not self.coupled:
      return per_group
    keep = per_group.reshape(self.keep_shapes[member])
    if self.expanded[member] is None:
      return keep
    return jnp.broadcast_to(keep, self.expanded[member]).reshape(self.shapes[member])
