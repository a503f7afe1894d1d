"""Discovery: the families of coupled groups of a forward pass, from its traced dimensions.

:func:`discover_groups` (and :func:`discover_linen` / :func:`discover_nnx`
for Flax modules) traces ``fn(params, *args)`` (:mod:`~rmda_jax.structure.discovery.tracing`)
and turns the dimensions that carry parameters into disjoint families,
offering only those whose zeroing removes the unit exactly (the package
docstring of :mod:`rmda_jax.structure.discovery` says how).
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
from collections.abc import Callable, Sequence
from typing import Any

from rmda_jax.core.groups import Family, Groups, Slice, Unprunable
from rmda_jax.structure.discovery.naming import canonical_slice, family_name, unique_names
from rmda_jax.structure.discovery.tracing import trace

KIND_ORDER = ("heads", "units", "inputs")


DEFAULT_KINDS = ("units", "heads")


def discover_groups(
  fn: Callable[..., Any],
  params: Any,
  *example_args: Any,
  kinds: Sequence[str] = DEFAULT_KINDS,
  exclude: Sequence[str] = (),
  couple: Sequence[tuple] = (),
  extras: Any = None,
) -> Groups:
  """Find the coupled groups of ``fn(params, *example_args)`` from its jaxpr.

  Args:
    fn: the forward pass, ``fn(params, *args)``, or ``fn(params, extras,
      *args)`` when ``extras`` is given; every output is treated as a model
      output (return the predictions only, not updated statistics).
    params: the parameters the groups live in (a pytree; ``nnx.State`` paths
      are normalised, NNX's ``value`` attribute is not a component).
    *example_args: example inputs (arrays or ``jax.ShapeDtypeStruct``; the
      batch size does not matter).
    kinds: which families to offer, among ``"units"`` (hidden units,
      channels), ``"heads"`` (attention heads), ``"inputs"`` (features of the
      inputs). Default: units and heads.
    exclude: glob patterns on leaf paths; a family with a matching member is
      not offered (e.g. ``("*/Dense_0/*",)``).
    couple: extra couplings the computation does not show, as pairs
      ``((path_a, axis_a), (path_b, axis_b))`` of parameter axes of the same
      size (e.g. parameters shared by construction).
    extras: arrays the computation reads besides the params (BatchNorm
      statistics, other collections), traced like the params but never part
      of a group. Pass them rather than closing over them: a transform such
      as ``nnx.scan`` refuses state closed over from outside the trace.

  Returns:
    A :class:`~rmda_jax.Groups`: the disjoint families offered,
    the dimensions not offered with the reasons, and unknown primitives.

  Raises:
    ValueError: an unknown kind, or a ``couple`` entry naming no leaf.
  """
  bad = [k for k in kinds if k not in KIND_ORDER]
  if bad:
    raise ValueError(f"kinds must be among {KIND_ORDER}, got {list(kinds)}.")
  traced = trace(fn, params, *example_args, extras=extras, couple=couple)
  atoms, semantics, paths = traced.atoms, traced.semantics, traced.paths

  # every parameter axis: (class, Slice)
  by_class = collections.defaultdict(list)
  iterations = {
    atoms.find(loop.iteration) for loop in traced.graph.loops if loop.iteration is not None
  }
  for i in range(traced.n_params):
    for axis, leaves in enumerate(traced.axis_atoms(i)):
      sizes = [atoms.sizes[a] for a in leaves]
      for position, a in enumerate(leaves):
        by_class[atoms.find(a)].append((i, canonical_slice(paths[i], axis, sizes, position)))

  candidates, unprunable = [], []
  for cls, members in by_class.items():
    reasons = set(atoms.reasons[cls])
    members = _consumer_axes(traced, cls, members)
    leaf_ids = [i for i, _ in members]
    if len(set(leaf_ids)) != len(leaf_ids):
      reasons.add("appears on two axes of one leaf")
    if cls in iterations:
      reasons = {"the iterations of a scan (the layers of its stacked params)"}
    if not reasons and not semantics.exits[cls]:
      reasons.add("never contracted (unused, or only passed through)")
    size = atoms.sizes[cls]
    slices = tuple(s for _, s in sorted(members, key=lambda m: m[0]))
    if reasons:
      unprunable.append(Unprunable(size, slices, tuple(sorted(reasons))))
      continue
    kind = (
      "inputs" if cls in traced.input_classes else "heads" if cls in semantics.heads else "units"
    )
    members, layers = _per_layer(traced, cls, sorted(members, key=lambda m: m[0]))
    candidates.append((cls, kind, size, members, layers))

  candidates.sort(key=lambda c: (KIND_ORDER.index(c[1]), semantics.first_seen.get(c[0], 1 << 30)))
  names = {c[0]: family_name(paths, c[3], semantics.consumers[c[0]], c[1]) for c in candidates}
  owner: dict[int, int] = {}  # leaf index -> the dimension whose family holds it
  offered = []
  deferred = []
  for cls, kind, size, members, layers in candidates:
    if kind not in kinds or any(
      fnmatch.fnmatchcase(paths[i], pat) for i, _ in members for pat in exclude
    ):
      why = "excluded" if kind in kinds else f"kind {kind} not asked for"
      unprunable.append(Unprunable(size, tuple(s for _, s in members), (why,)))
      continue
    if cls in semantics.needs_all:
      deferred.append((cls, kind, size, members, layers))
      continue
    needed = semantics.consumers[cls]
    taken = [i for i in sorted(needed) if i in owner]
    if taken:
      unprunable.append(
        Unprunable(
          size,
          tuple(s for _, s in members),
          (f"its consumer {paths[taken[0]]} belongs to {names[owner[taken[0]]]}",),
        )
      )
      continue
    for i in needed:
      owner[i] = cls
    offered.append((cls, kind, size, members, layers))
  families = []
  for cls, kind, size, members, layers in offered:
    mine = [s for i, s in members if owner.setdefault(i, cls) == cls]
    consumers = tuple(paths[i] for i in sorted(semantics.consumers[cls]))
    families.append(Family(names[cls], kind, size, tuple(mine), consumers=consumers, layers=layers))
  for cls, kind, size, members, layers in deferred:
    taken = [i for i, _ in members if i in owner]
    if taken:
      unprunable.append(
        Unprunable(
          size,
          tuple(s for _, s in members),
          (f"needs all its leaves, but {paths[taken[0]]} belongs to {names[owner[taken[0]]]}",),
        )
      )
      continue
    for i, _ in members:
      owner[i] = cls
    families.append(Family(names[cls], kind, size, tuple(s for _, s in members), layers=layers))
  families = unique_names(families)
  return Groups(
    tuple(families),
    tuple(unprunable),
    tuple(traced.graph.unknown),
    tuple(zip(paths, traced.shapes[: traced.n_params])),
  )


def _consumer_axes(
  traced: Any, cls: int, members: list[tuple[int, Slice]]
) -> list[tuple[int, Slice]]:
  """The members, of a leaf that carries the dimension on two axes only the one contracted.

  A recurrent cell's hidden-to-hidden kernel maps the hidden units to
  themselves: its rows are contracted against the units (zeroing them
  removes a unit exactly), its columns produce them. The group holds the rows;
  compaction cuts both. A leaf whose contracted axis is not known keeps both
  (and the dimension is not offered).
  """
  by_leaf = collections.defaultdict(list)
  for i, s in members:
    by_leaf[i].append(s)
  consumed = traced.semantics.consumed_atoms[cls]
  out = []
  for i, slices in by_leaf.items():
    if len(slices) > 1:
      axis_atoms = traced.axis_atoms(i)
      contracted = [s for s in slices if set(axis_atoms[s.axis]) & consumed]
      if len(contracted) == 1:
        slices = contracted
    out.extend((i, s) for s in slices)
  return out


def _per_layer(
  traced: Any, cls: int, members: list[tuple[int, Slice]]
) -> tuple[list[tuple[int, Slice]], int | None]:
  """The members with their layer axes, and the layers, for a dimension per layer of a scan.

  Unchanged (and no layers) when the dimension is not per layer, or when a
  member leaf has no axis that is exactly the scan's iterations.
  """
  loop = traced.layer_loops.get(cls)
  if loop is None:
    return members, None
  axes = [traced.layer_axis(i, loop) for i, _ in members]
  if any(a is None for a in axes):
    return members, None
  return [
    (i, dataclasses.replace(s, layer_axis=a)) for (i, s), a in zip(members, axes)
  ], loop.length


def discover_linen(
  model: Any,
  params: Any,
  *example_args: Any,
  variables: dict[str, Any] | None = None,
  method: Any = None,
  **kwargs: Any,
) -> Groups:
  """:func:`discover_groups` for a linen module: ``model.apply({"params": p, **variables}, *args)``.

  ``variables`` holds the other collections (e.g. ``{"batch_stats": ...}``,
  read as ``extras``; use the module's inference mode, e.g.
  ``use_running_average=True``); ``kwargs`` go to :func:`discover_groups`
  (``kinds``, ``exclude``, ``couple``).
  """
  from flax.core import meta

  options = {k: kwargs.pop(k) for k in ("kinds", "exclude", "couple") if k in kwargs}
  params = meta.unbox(params)  # boxed params (logical partitioning): the groups' paths are plain
  extra = dict(meta.unbox(variables or {}))
  extra.pop("params", None)

  def fn(p, collections, *args):
    return model.apply({"params": p, **collections}, *args, method=method, **kwargs)

  return discover_groups(fn, params, *example_args, extras=extra, **options)


def discover_nnx(model: Any, *example_args: Any, wrt: Any = None, **kwargs: Any) -> Groups:
  """:func:`discover_groups` for an NNX module, over its ``nnx.Param`` state.

  The groups' paths are those of ``nnx.state(model, nnx.Param)`` (what
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` optimizes). Put the module in
  inference mode first (``model.eval()``) so BatchNorm uses its statistics.
  """
  from flax import nnx

  wrt = nnx.Param if wrt is None else wrt
  graphdef, params, rest = nnx.split(model, wrt, ...)

  def fn(p, state, *args):
    return nnx.merge(graphdef, p, state)(*args)

  return discover_groups(fn, params, *example_args, extras=rest, **kwargs)
