"""Tracing a forward pass to a jaxpr and linking its dimensions: the dependency graph.

:func:`trace` runs :func:`jax.make_jaxpr` on ``fn(params, *args)`` with
abstract params, then both passes over the jaxpr (:mod:`~rmda_jax.structure.discovery.graph`,
:mod:`~rmda_jax.structure.discovery.exits`); the :class:`Traced` result is
what discovery assigns families from and what compaction re-evaluates with
smaller shapes.

**Layers of a scan.** The body of a ``scan`` over stacked layers runs once
for all iterations, so a dimension of the body (a block's hidden units) is one
dimension for all layers. It is *per layer* when nothing outside the body
carries it without also carrying the scan's iteration axis: the stacked
params ``(layers, ..., n)`` and the stacked outputs do, a carry or a
closed-over param does not. Then unit ``j`` of layer ``l`` is a unit of its
own (:meth:`Traced.layer_loops`), and discovery offers ``layers x n`` groups.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from rmda_jax.core.groups import Slice
from rmda_jax.core.trees import path_to_str
from rmda_jax.structure.discovery.atoms import Atoms
from rmda_jax.structure.discovery.control_flow import Loop
from rmda_jax.structure.discovery.exits import Exits
from rmda_jax.structure.discovery.graph import DimensionGraph
from rmda_jax.structure.discovery.naming import canonical_slice


@dataclasses.dataclass
class Traced:
  """A forward pass traced to a jaxpr, its dimensions linked (the dependency graph).

  Attributes:
    jaxpr: the ``ClosedJaxpr`` of ``flat(param_leaves, extra_leaves, *args)``.
    atoms, graph, semantics: the union-find of dimensions, the dimension of
      every variable, and the exits / zero sets / kinds.
    paths, shapes: of the parameter leaves, then the extra leaves.
    n_params, n_extras: how many of each.
    input_classes: the dimensions of the example inputs.
    out_tree, args_tree: the structure of ``fn``'s output and of the example args.
  """

  jaxpr: Any
  atoms: Atoms
  graph: DimensionGraph
  semantics: Exits
  paths: list
  shapes: list
  n_params: int
  n_extras: int
  input_classes: set
  out_tree: Any = None
  args_tree: Any = None

  def axis_atoms(self, leaf: int) -> list:
    """Per axis of parameter (or extra) leaf ``leaf``, its leaf atoms."""
    var = self.jaxpr.jaxpr.invars[leaf]
    return [self.atoms.leaves(axis) for axis in self.graph.axes(var)]

  def class_slices(self, cls: int) -> list:
    """``(leaf index, Slice)`` of every parameter and extra axis carrying dimension ``cls``."""
    out = []
    for i in range(self.n_params + self.n_extras):
      for axis, atoms in enumerate(self.axis_atoms(i)):
        sizes = [self.atoms.sizes[a] for a in atoms]
        for position, a in enumerate(atoms):
          if self.atoms.find(a) == cls:
            out.append((i, canonical_slice(self.paths[i], axis, sizes, position)))
    return out

  def silent_when_produced_zero(self, cls: int) -> bool:
    """Whether the dimension vanishes at every exit once the slices that produce it are zero.

    ReLU, GELU, pooling and norms with zero scale and shift keep a zero unit zero.
    """
    exits = self.semantics.exits[cls]
    return exits > 0 and self.semantics.silent_exits[cls] == exits

  def class_of(self, member: Slice) -> int:
    """The dimension (class root) of a family member's group index."""
    i = self.paths.index(member.path)
    atoms = self.axis_atoms(i)[member.axis]
    sizes = [self.atoms.sizes[a] for a in atoms]
    split = member.split or (self.shapes[i][member.axis],)
    before = math.prod(split[: member.position])
    n = split[member.position]
    for k, a in enumerate(atoms):
      if math.prod(sizes[:k]) == before and sizes[k] == n:
        return self.atoms.find(a)
    raise ValueError(
      f"{member.describe()} is not a dimension of the computation (its axis is {sizes})."
    )

  @functools.cached_property
  def layer_loops(self) -> dict[int, Loop]:
    """Per dimension that is per layer of a scan (module doc), that scan (the innermost)."""
    find = self.atoms.find
    carried = [
      (scope, {find(a) for axis in axes for a in axis})
      for (scope, _), axes in self.graph.env.items()
    ]
    loops = [loop for loop in self.graph.loops if loop.iteration is not None]
    out: dict[int, Loop] = {}
    for loop in sorted(loops, key=lambda loop: -len(loop.scope)):
      assert loop.iteration is not None, "loops of one iteration were left out"
      iteration, depth = find(loop.iteration), len(loop.scope)
      inside, outside = set(), set()
      for scope, classes in carried:
        if scope[:depth] == loop.scope:
          inside |= classes
        elif iteration not in classes:
          outside |= classes
      for cls in inside - outside - {iteration}:
        out.setdefault(cls, loop)
    return out

  def layer_axis(self, leaf: int, loop: Loop) -> int | None:
    """The axis of leaf ``leaf`` that is exactly the iterations of ``loop`` (None if none is)."""
    assert loop.iteration is not None, "a loop of one iteration has no layers"
    iteration = self.atoms.find(loop.iteration)
    for axis, atoms in enumerate(self.axis_atoms(leaf)):
      if len(atoms) == 1 and self.atoms.find(atoms[0]) == iteration:
        return axis
    return None


def trace(
  fn: Callable[..., Any],
  params: Any,
  *example_args: Any,
  extras: Any = None,
  couple: Sequence[tuple] = (),
) -> Traced:
  """Trace ``fn(params, *args)`` (or ``fn(params, extras, *args)``) and link its dimensions.

  ``extras`` are arrays the computation reads besides the params (e.g.
  BatchNorm statistics): their dimensions are followed, so compaction slices
  them too, but they are never regularized.
  """
  keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
  extra_keyed, extra_def = (
    jax.tree_util.tree_flatten_with_path(extras) if extras is not None else ([], None)
  )
  paths = [path_to_str(kp) for kp, _ in keyed] + [path_to_str(kp) for kp, _ in extra_keyed]
  shapes = [tuple(np.shape(x)) for _, x in keyed + extra_keyed]

  def abstract(pairs: list[tuple[Any, Any]]) -> list[jax.ShapeDtypeStruct]:
    return [jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x)) for _, x in pairs]

  def flat_fn(leaves: list[Any], extra: list[Any], *args: Any) -> Any:
    p = jax.tree_util.tree_unflatten(treedef, leaves)
    if extras is None:
      return fn(p, *args)
    return fn(p, jax.tree_util.tree_unflatten(extra_def, extra), *args)

  closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(
    abstract(keyed), abstract(extra_keyed), *example_args
  )
  jaxpr = closed.jaxpr
  n_params, n_extras = len(keyed), len(extra_keyed)
  param_vars = {v: i for i, v in enumerate(jaxpr.invars[:n_params])}

  atoms = Atoms()
  graph = DimensionGraph(atoms)
  for v in jaxpr.invars + jaxpr.constvars:
    graph.axes(v)
  index_of = {p: i for i, p in enumerate(paths[:n_params])}
  for entry in couple:
    (pa, aa), (pb, ab) = entry
    for p in (pa, pb):
      if p not in index_of:
        raise ValueError(f"couple: no leaf {p!r} in params (leaves: {', '.join(paths[:8])}...).")
    va, vb = jaxpr.invars[index_of[pa]], jaxpr.invars[index_of[pb]]
    graph.link(graph.axes(va)[aa], graph.axes(vb)[ab], "a declared coupling")
  graph.run(jaxpr)
  graph.finish()

  semantics = Exits(graph, param_vars)
  semantics.run(jaxpr)
  semantics.finish()
  for v in jaxpr.outvars:
    if not isinstance(v, jcore.Literal):
      semantics.atoms_mark_classes(semantics.classes(v), "a model output")
  input_classes = set()
  for v in jaxpr.invars[n_params + n_extras :]:
    input_classes.update(semantics.classes(v))
  return Traced(
    closed,
    atoms,
    graph,
    semantics,
    paths,
    shapes,
    n_params,
    n_extras,
    input_classes,
    jax.tree_util.tree_structure(out_shape),
    jax.tree_util.tree_structure(example_args),
  )
