"""What a group is: slices across leaves that form one unit of the model.

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

:class:`Groups` is a set of groups: disjoint families (a leaf belongs to at
most one, see :func:`rmda_jax.discover_groups` for how shared leaves are
assigned), with what discovery found but did not offer.
:func:`rmda_jax.group_lasso` with ``groups=`` penalizes ``sum_g w_g ||x_g||_2``
over them, ``w_g = sqrt(total group size)`` by default; the optimizers,
solvers, metrics, RigL and compaction all take them. Per-leaf rules
(:mod:`rmda_jax.core.rules`) are the special case of groups that live in one
leaf; both are laid on concrete leaves as a :class:`~rmda_jax.core.layout.GroupLayout`.

Example:
  >>> from rmda_jax import Family, Groups, Slice
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
from collections.abc import Mapping, Sequence

KINDS = ("units", "heads", "inputs", "declared")


@dataclasses.dataclass(frozen=True)
class Slice:
  """Where a family's group index lives in one leaf.

  Attributes:
    path: the leaf's ``/``-joined key path (as :func:`rmda_jax.core.rules.path_to_str`
      writes it; NNX ``Variable.value`` is not a component).
    axis: the leaf axis that carries the group index (non-negative).
    split: the axis viewed as this row-major shape, ``()`` for the axis
      itself; ``prod(split)`` is the axis size.
    position: which factor of ``split`` is the group index.
    layer_axis: the leaf axis that indexes the layers of a stacked leaf (the
      parameters of a ``scan`` over layers, shape ``(layers, ...)``) in a
      family whose groups are per layer (:attr:`Family.layers`); None
      otherwise. Must differ from ``axis``.
  """

  path: str
  axis: int
  split: tuple[int, ...] = ()
  position: int = 0
  layer_axis: int | None = None

  def __post_init__(self) -> None:
    object.__setattr__(self, "split", tuple(int(s) for s in self.split))
    if self.axis < 0:
      raise ValueError(f"Slice {self.path!r}: axis must be >= 0, got {self.axis}.")
    if self.layer_axis is not None and not 0 <= self.layer_axis != self.axis:
      raise ValueError(
        f"Slice {self.path!r}: layer_axis must be an axis >= 0 other than axis {self.axis}, "
        f"got {self.layer_axis}."
      )
    if self.split and not 0 <= self.position < len(self.split):
      raise ValueError(
        f"Slice {self.path!r}: position {self.position} out of range for split {self.split}."
      )
    if not self.split and self.position != 0:
      raise ValueError(f"Slice {self.path!r}: position must be 0 without a split.")

  def expanded_shape(self, shape: Sequence[int]) -> tuple:
    """``shape`` with ``axis`` replaced by ``split``."""
    shape = tuple(shape)
    inner = self.split or (shape[self.axis],)
    return shape[: self.axis] + inner + shape[self.axis + 1 :]

  def group_axis(self) -> int:
    """The group index's axis in :meth:`expanded_shape`."""
    return self.axis + self.position

  def expanded_layer_axis(self) -> int | None:
    """The layer axis in :meth:`expanded_shape` (None without one)."""
    if self.layer_axis is None or self.layer_axis < self.axis:
      return self.layer_axis
    return self.layer_axis + max(len(self.split), 1) - 1

  def num_groups(self, shape: Sequence[int]) -> int:
    return self.expanded_shape(shape)[self.group_axis()]

  def check(self, shape: Sequence[int]) -> str | None:
    """An error message if this slice does not fit a leaf of ``shape``, else None."""
    shape = tuple(shape)
    if self.axis >= len(shape):
      return f"axis {self.axis} is out of range for shape {shape}"
    if self.layer_axis is not None and self.layer_axis >= len(shape):
      return f"layer axis {self.layer_axis} is out of range for shape {shape}"
    if self.split and math.prod(self.split) != shape[self.axis]:
      return (
        f"split {self.split} does not multiply to axis {self.axis}'s size {shape[self.axis]} "
        f"(shape {shape})"
      )
    return None

  def describe(self) -> str:
    """``path[axis ...]``, with the split and the layer axis where there are ones."""
    layers = "" if self.layer_axis is None else f", per layer of axis {self.layer_axis}"
    if not self.split:
      return f"{self.path}[axis {self.axis}{layers}]"
    return f"{self.path}[axis {self.axis} as {self.split}, factor {self.position}{layers}]"


@dataclasses.dataclass(frozen=True)
class Family:
  """All groups of one unit type of one layer: ``size`` groups over ``members``.

  On stacked leaves (the parameters of a ``scan`` over ``layers`` layers) a
  family holds the same units of every layer: group ``(l, j)`` is unit ``j``
  of layer ``l``, index ``l`` of each member's :attr:`Slice.layer_axis`, so
  each layer keeps or loses its units on its own and every computation on the
  groups is one pass over the stacked leaves.

  Attributes:
    name: a readable name (the layer that produces the units).
    kind: ``"units"`` (hidden units, channels), ``"heads"`` (attention heads),
      ``"inputs"`` (features of the model's input), or ``"declared"``.
    size: the number of groups (per layer, for a family with ``layers``).
    members: the :class:`Slice` of every leaf the groups span.
    weight: ``w_g`` of every group; None means ``sqrt(total group size)``.
    consumers: paths of the leaves the unit is contracted against (a
      consumer kernel's rows, an output projection): zeroing a group's slices
      in these alone removes the unit exactly. Empty when only the whole
      group does (or when unknown, for hand-written families).
    layers: the number of layers of a family on stacked leaves (every member
      has a ``layer_axis`` of this size), or None.
  """

  name: str
  kind: str
  size: int
  members: tuple[Slice, ...]
  weight: float | None = None
  consumers: tuple[str, ...] = ()
  layers: int | None = None

  def __post_init__(self) -> None:
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
      raise ValueError(
        f"Family {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}."
      )
    layered = [m.layer_axis is not None for m in self.members]
    if self.layers is not None and (self.layers < 1 or not all(layered)):
      raise ValueError(
        f"Family {self.name!r}: a family with layers={self.layers} needs layers >= 1 and a "
        "layer_axis on every member."
      )
    if self.layers is None and any(layered):
      raise ValueError(f"Family {self.name!r}: members with a layer_axis need the family's layers.")

  @property
  def paths(self) -> tuple[str, ...]:
    """The paths of the member leaves."""
    return tuple(m.path for m in self.members)

  @property
  def num_groups(self) -> int:
    """Groups of the family: ``size``, times ``layers`` on stacked leaves."""
    return self.size * (self.layers or 1)

  def group_size(self, shapes: Mapping[str, Sequence[int]]) -> int:
    """Entries in one group, given the member leaves' shapes by path."""
    return sum(math.prod(shapes[m.path]) // self.num_groups for m in self.members)

  def group_weight(self, shapes: Mapping[str, Sequence[int]]) -> float:
    return float(self.weight) if self.weight is not None else math.sqrt(self.group_size(shapes))


@dataclasses.dataclass(frozen=True)
class Unprunable:
  """A dimension that carries parameters but is not offered as groups, and why."""

  size: int
  members: tuple[Slice, ...]
  reasons: tuple[str, ...]

  def describe(self) -> str:
    leaves = ", ".join(m.describe() for m in self.members[:4])
    more = f" and {len(self.members) - 4} more" if len(self.members) > 4 else ""
    return f"size {self.size}: {leaves}{more} -- " + "; ".join(self.reasons)


@dataclasses.dataclass(frozen=True)
class Groups:
  """Disjoint coupled group families, plus what was found but not offered.

  Pass it to :func:`rmda_jax.group_lasso` (``groups=``); ``print`` it for a
  summary per kind and layer.

  Attributes:
    families: the disjoint families of groups.
    unprunable: the dimensions that carry parameters but are not offered, with the reasons.
    unknown_primitives: primitives discovery did not know (their dimensions were kept whole).
    leaf_shapes: ``((path, shape), ...)`` of the params the groups were found on.
  """

  families: tuple[Family, ...]
  unprunable: tuple[Unprunable, ...] = ()
  unknown_primitives: tuple[str, ...] = ()
  leaf_shapes: tuple[tuple[str, tuple[int, ...]], ...] = ()

  def __post_init__(self) -> None:
    object.__setattr__(self, "families", tuple(self.families))
    object.__setattr__(self, "leaf_shapes", tuple((p, tuple(s)) for p, s in self.leaf_shapes))
    object.__setattr__(self, "unprunable", tuple(self.unprunable))
    object.__setattr__(self, "unknown_primitives", tuple(self.unknown_primitives))
    owner = {}
    for family in self.families:
      for path in family.paths:
        if path in owner:
          raise ValueError(
            f"groups: leaf {path!r} is in two families ({owner[path]!r} and {family.name!r}); "
            "families must be disjoint."
          )
        owner[path] = family.name

  @property
  def paths(self) -> frozenset:
    return frozenset(p for f in self.families for p in f.paths)

  def of_kind(self, *kinds: str) -> Groups:
    """Only the families of these kinds."""
    return dataclasses.replace(self, families=tuple(f for f in self.families if f.kind in kinds))

  def num_groups(self) -> int:
    """Groups over all families."""
    return sum(f.num_groups for f in self.families)

  def summary(self, shapes: Mapping[str, Sequence[int]] | None = None) -> str:
    """A table: kind, layer, groups, entries per group (when ``shapes`` is given), leaves."""
    rows = [("kind", "layer", "groups", "group size", "leaves")]
    for kind in KINDS:
      for f in self.families:
        if f.kind == kind:
          size = str(f.group_size(shapes)) if shapes is not None else "-"
          count = str(f.size) if f.layers is None else f"{f.layers} x {f.size}"
          rows.append((kind, f.name, count, size, ", ".join(f.paths)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths)) + "  " + r[4] for r in rows]
    total = f"{len(self.families)} families, {self.num_groups()} groups"
    lines.insert(0, total)
    if self.unprunable:
      lines.append(f"not prunable ({len(self.unprunable)} dimensions):")
      lines.extend("  " + u.describe() for u in self.unprunable)
    if self.unknown_primitives:
      lines.append(
        "unknown primitives (their dimensions were kept whole): "
        + ", ".join(self.unknown_primitives)
      )
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.summary(dict(self.leaf_shapes) if self.leaf_shapes else None)
