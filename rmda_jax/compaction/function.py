"""Cut zero groups out of any function: the traced computation re-evaluated with smaller shapes.

:func:`compact_function` takes a forward pass ``fn(params, *args)``, its
params and coupled groups (from :func:`rmda_jax.discover_groups`), and
returns ``small_fn(small_params, *args)`` computing the same outputs with every
removable unit cut from every array it spans: a hidden unit from both kernels
and the bias, a head from q, k, v, their biases and the output projection, a
channel from the conv, its bias, its BatchNorm parameters *and statistics*,
and the consumer.

On stacked leaves (a ``scan`` over layers) each layer loses its own units:
every layer keeps the same number (the most any layer needs), padded with
that layer's removable units, so the stacked arrays stay rectangular and the
scan runs as before, on smaller slices.

A unit is removable when its whole group is zero; when its slices in the
family's consumer leaves are (the kernels that contract it: then nothing of
it reaches the outputs, whatever its producer computes); or when every slice
that produces it is zero (kernel column, bias, norm scale and shift, in any
leaf) and the computation keeps a zero unit zero up to its consumers (ReLU,
GELU, pooling, a norm with zero scale and shift: read from the traced
computation). At least ``keep_at_least`` units of a family are kept.

``small_fn`` walks the jaxpr of ``fn`` and binds each primitive again on the
smaller arrays; the shapes written into the jaxpr (reshapes, broadcasts,
iotas, splits, slices) are recomputed from the dimensions of the dependency
graph, so the batch size (and any input dimension that is not sliced by a
constant) is free, provided the example had more than one along it. Loops and
branches (``scan``, ``while_loop``, ``cond``) run again as loops and branches
over the smaller bodies. Wrap it in ``jax.jit`` for speed.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn, rmda_jax
  >>> class MLP(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     hidden = nn.relu(nn.Dense(8)(x))
  ...     return nn.Dense(3)(hidden)
  >>> model, x = MLP(), jnp.ones((2, 5))
  >>> params = model.init(jax.random.PRNGKey(0), x)["params"]
  >>> params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[:6].set(0)  # units 0-5 unused
  >>> apply = lambda p, x: model.apply({"params": p}, x)
  >>> groups = rmda_jax.discover_groups(apply, params, x)
  >>> small = rmda_jax.compact_function(apply, params, groups, x)
  >>> small.params["Dense_0"]["kernel"].shape, small.params["Dense_1"]["kernel"].shape
  ((5, 2), (2, 3))
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (7, 5))   # another batch size
  >>> bool(jnp.allclose(small(x), apply(params, x), atol=1e-6))
  True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from rmda_jax.compaction.removal import removable_units
from rmda_jax.core.groups import Groups
from rmda_jax.structure.discovery import control_flow
from rmda_jax.structure.discovery.primitives import ELEMENTWISE
from rmda_jax.structure.discovery.tracing import trace


@dataclasses.dataclass
class CompactFunction:
  """A smaller function and its params.

  Attributes:
    fn: ``fn(params, *args)`` (or ``fn(params, extras, *args)`` when extras
      were given): the original outputs from the small arrays.
    params, extras: the sliced arrays (same tree structures as given).
    kept: per family name, the indices of the units kept: ``(k,)``, or
      ``(layers, k)`` for a family on stacked leaves (a layer's row may hold
      removable units, to keep every layer ``k`` wide).
  """

  fn: Callable
  params: Any
  extras: Any
  kept: dict

  def __call__(self, *args: Any) -> Any:
    """The small function on the compact params (and extras)."""
    if self.extras is None:
      return self.fn(self.params, *args)
    return self.fn(self.params, self.extras, *args)


def compact_function(
  fn: Callable,
  params: Any,
  groups: Groups,
  *example_args: Any,
  extras: Any = None,
  keep_at_least: int | Mapping[str, int] = 1,
) -> CompactFunction:
  """The smaller function computing ``fn(params, *args)``; see the module doc.

  Args:
    fn: the forward pass, ``fn(params, *args)``, or ``fn(params, extras,
      *args)`` when ``extras`` (e.g. BatchNorm statistics) is given.
    params: the trained params (e.g. RMDA's structured point).
    groups: the coupled groups of ``fn`` (:func:`rmda_jax.discover_groups`).
    *example_args: example inputs, as for discovery.
    extras: arrays read besides the params; their units are cut too.
    keep_at_least: units kept per family even when all are removable (>= 0),
      or per family name (families not named keep 1); a family keeps its
      removable units of the largest norms to reach it (a module whose one
      field sets the widths of several layers needs them of one width).
  """
  minimum = dict(keep_at_least) if isinstance(keep_at_least, Mapping) else {}
  default = 1 if isinstance(keep_at_least, Mapping) else keep_at_least
  names = {f.name for f in groups.families}
  unknown = sorted(set(minimum) - names)
  if unknown:
    raise ValueError(f"keep_at_least: no family named {unknown[0]!r} (families: {sorted(names)}).")
  if any(not isinstance(v, (int, np.integer)) or v < 0 for v in [default, *minimum.values()]):
    raise ValueError(
      f"keep_at_least must be >= 0 (an int, or ints by family), got {keep_at_least}."
    )
  traced = trace(fn, params, *example_args, extras=extras)
  param_leaves, param_def = jax.tree_util.tree_flatten(params)
  extra_leaves, extra_def = jax.tree_util.tree_flatten(extras) if extras is not None else ([], None)
  arrays = {p: x for p, x in zip(traced.paths, param_leaves + extra_leaves)}
  cut, kept, layers = {}, {}, {}
  for family in groups.families:
    classes = {traced.class_of(m) for m in family.members}
    if len(classes) != 1:
      raise ValueError(
        f"family {family.name!r}: its members are not one dimension of this computation."
      )
    cls = next(iter(classes))
    loop = traced.layer_loops.get(cls) if family.layers is not None else None
    if family.layers is not None and (loop is None or loop.length != family.layers):
      raise ValueError(
        f"family {family.name!r}: its units are not per layer of a scan of {family.layers} "
        "iterations in this computation."
      )
    removable = removable_units(family, arrays, _producers(traced, cls, family, loop))
    norms = sum(_group_norms(arrays[m.path], m) for m in family.members)
    keep = _kept_units(
      np.atleast_2d(removable), np.atleast_2d(norms), minimum.get(family.name, default)
    )
    if family.layers is None:
      keep = keep[0]
    else:
      layers[cls] = loop
    kept[family.name] = keep
    if keep.shape[-1] < family.size:
      cut[cls] = keep
  reducer = _Reducer(traced, cut, layers)
  small = [
    reducer.slice(x, traced.axis_atoms(i)) for i, x in enumerate(param_leaves + extra_leaves)
  ]
  small_params = jax.tree_util.tree_unflatten(param_def, small[: traced.n_params])
  small_extras = (
    None if extras is None else jax.tree_util.tree_unflatten(extra_def, small[traced.n_params :])
  )
  consts = [
    reducer.slice(c, [reducer.atoms.leaves(a) for a in reducer.graph.axes(v)])
    for v, c in zip(traced.jaxpr.jaxpr.constvars, traced.jaxpr.consts)
  ]

  def small_fn(p, *rest):
    if extras is not None:
      e, args = rest[0], rest[1:]
      e_leaves = jax.tree_util.tree_leaves(e)
    else:
      e_leaves, args = [], rest
    arg_leaves = jax.tree_util.tree_leaves(args)
    inputs = jax.tree_util.tree_leaves(p) + e_leaves + arg_leaves
    outs = reducer.run(traced.jaxpr.jaxpr, consts, inputs)
    return jax.tree_util.tree_unflatten(traced.out_tree, outs)

  return CompactFunction(small_fn, small_params, small_extras, kept)


def _producers(traced, cls: int, family, loop) -> tuple:
  """The slices producing a unit that the computation keeps zero once they are, if any.

  With the layer axes of a family on stacked leaves; none when a producer
  leaf has no layer axis.
  """
  if not traced.silent_when_produced_zero(cls):
    return ()
  slices = [
    (i, m)
    for i, m in traced.class_slices(cls)
    if i < traced.n_params and m.path not in family.consumers
  ]
  if loop is None:
    return tuple(m for _, m in slices)
  axes = [traced.layer_axis(i, loop) for i, _ in slices]
  if any(a is None for a in axes):
    return ()
  return tuple(dataclasses.replace(m, layer_axis=a) for (_, m), a in zip(slices, axes))


def _kept_units(removable: np.ndarray, norms: np.ndarray, keep_at_least: int) -> np.ndarray:
  """Per layer (row), the sorted indices of the units kept, every row equally long.

  A row keeps its units that are not removable; rows are padded to the
  longest (and to ``keep_at_least``) with their removable units of the
  largest norms, which leaves the function unchanged.
  """
  width = max(int(np.max(np.sum(~removable, axis=1))), min(keep_at_least, removable.shape[1]))
  rows = []
  for row_removable, row_norms in zip(removable, norms):
    order = np.lexsort((-row_norms, row_removable))  # needed units first, then by norm
    rows.append(np.sort(order[:width]))
  return np.asarray(rows, dtype=np.int64).reshape(len(rows), width)


def _group_norms(x, member) -> np.ndarray:
  """Per group of one member (per layer and group for a stacked member), ``||x_g||_2``."""
  x = np.asarray(x, np.float64).reshape(member.expanded_shape(np.shape(x)))
  kept = [member.group_axis()]
  layer = member.expanded_layer_axis()
  if layer is not None:
    kept = [layer, member.group_axis()]
  norms = np.sqrt(np.sum(np.square(x), axis=tuple(a for a in range(x.ndim) if a not in kept)))
  return norms.T if layer is not None and layer > member.group_axis() else norms


class _Reducer:
  """Evaluates a traced jaxpr with the cut dimensions made smaller.

  ``cut`` maps a dimension to the indices kept, ``(k,)``, or ``(layers, k)``
  for a dimension per layer of the scan ``layers[cls]``: a stacked array
  (one carrying the scan's iterations) is cut layer by layer, and an array of
  the scan's body by the row of the iteration being run.
  """

  def __init__(self, traced, cut: dict, layers: dict | None = None):
    self.traced = traced
    self.graph = traced.graph
    self.atoms = traced.atoms
    self.cut = cut
    self.layers = layers or {}
    self.iteration: dict = {}  # scope of a scan body being run -> its iteration index
    self.loops = {loop.scope: loop for loop in self.graph.loops}

  # ---- sizes
  def atom_size(self, atom: int, overrides: dict) -> int:
    cls = self.atoms.find(atom)
    if cls in self.cut:
      return self.cut[cls].shape[-1]
    return overrides.get(cls, self.atoms.sizes[atom])

  def shape(self, var, overrides: dict) -> tuple:
    traced = tuple(var.aval.shape)
    axes = self.graph.axes(var)
    return tuple(
      math.prod(self.atom_size(a, overrides) for a in self.atoms.leaves(axis)) if axis else size
      for axis, size in zip(axes, traced)
    )

  # ---- arrays
  def slice(self, x, axis_atoms):
    """``x`` with the kept indices of every cut dimension its axes carry."""
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    for axis, atoms in enumerate(axis_atoms):
      hits = [k for k, a in enumerate(atoms) if self.atoms.find(a) in self.cut]
      if not hits:
        continue
      sizes = [self.atoms.sizes[a] for a in atoms]
      shape = tuple(np.shape(x))
      view = x.reshape(shape[:axis] + tuple(sizes) + shape[axis + 1 :])
      for k in hits:
        cls = self.atoms.find(atoms[k])
        view = self._take(view, cls, axis + k, axis, len(sizes), axis_atoms)
      x = view.reshape(
        shape[:axis] + (math.prod(view.shape[axis : axis + len(sizes)]),) + shape[axis + 1 :]
      )
    return x

  def _take(self, view, cls: int, at: int, axis: int, factors: int, axis_atoms):
    """``view`` cut along ``at`` (a factor of ``axis``, split into ``factors``) for ``cls``."""
    keep = self.cut[cls]
    if keep.ndim == 1:
      return view.take(keep, axis=at)
    loop = self.layers[cls]
    iteration = self.atoms.find(loop.iteration)
    stacked = [
      a for a, atoms in enumerate(axis_atoms) if [self.atoms.find(b) for b in atoms] == [iteration]
    ]
    if stacked:
      layer = stacked[0] if stacked[0] < axis else stacked[0] + factors - 1
      index_shape = [1] * view.ndim
      index_shape[layer], index_shape[at] = keep.shape
      index = keep if layer < at else keep.T
      take_along = np.take_along_axis if isinstance(view, np.ndarray) else jnp.take_along_axis
      return take_along(view, index.reshape(index_shape), axis=at)
    if loop.scope in self.iteration:
      return jnp.take(jnp.asarray(view), jnp.asarray(keep)[self.iteration[loop.scope]], axis=at)
    raise ValueError(
      "an array carries units cut per layer of a scan, but neither the scan's layers nor "
      "one of its iterations."
    )

  def _kept_indices(self, axis: list):
    """The indices of a (traced) axis that its cut dimensions keep."""
    atoms = self.atoms.leaves(axis)
    grid = np.arange(math.prod(self.atoms.sizes[a] for a in atoms))
    return self.slice(grid, [atoms])

  def _fit_constants(self, eqn, invals, overrides):
    """Constants of an elementwise op cut to the indices its (cut) result axes keep.

    A constant's axis is not linked to a dimension that several dimensions
    meet (a mask indexed per layer), so its traced size stays; it is indexed
    like the result here instead.
    """
    out_var = eqn.outvars[0]
    out_shape = self.shape(out_var, overrides)
    traced_out = tuple(out_var.aval.shape)
    fitted = list(invals)
    for n, (var, value) in enumerate(zip(eqn.invars, invals)):
      if isinstance(var, jcore.Literal) or not self.graph.is_constant(var):
        continue
      shape = np.shape(value)
      if len(shape) != len(out_shape):
        continue
      for i, (size, want, traced) in enumerate(zip(shape, out_shape, traced_out)):
        if size != want and size == traced:
          index = self._kept_indices(self.graph.axes(out_var)[i])
          if np.shape(index)[0] == want:
            value = jnp.take(jnp.asarray(value), index, axis=i)
      fitted[n] = value
    return fitted

  # ---- evaluation
  def run(self, jaxpr, consts, inputs, overrides: dict | None = None):
    if overrides is None:
      overrides = {}
      for var, value in zip(
        jaxpr.invars[self.traced.n_params + self.traced.n_extras :],
        inputs[self.traced.n_params + self.traced.n_extras :],
      ):
        self._bind_input_sizes(var, np.shape(value), overrides)
    env = {}

    def read(v):
      return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, value in zip(jaxpr.constvars, consts):
      env[v] = value
    for v, value in zip(jaxpr.invars, inputs):
      env[v] = value
    for eqn in jaxpr.eqns:
      invals = [read(v) for v in eqn.invars]
      name = eqn.primitive.name
      inner = control_flow.inner_jaxpr(eqn) if name in control_flow.CALLS else None
      if inner is not None:
        closed = inner if isinstance(inner, jcore.ClosedJaxpr) else None
        body = closed.jaxpr if closed is not None else inner
        outvals = self._nested(body, closed, (id(eqn),), invals, overrides)
      elif name == "scan":
        outvals = self._scan(eqn, invals, overrides)
      elif name == "while":
        outvals = self._while(eqn, invals, overrides)
      elif name == "cond":
        outvals = self._cond(eqn, invals, overrides)
      else:
        if name in ELEMENTWISE and any(self.graph.is_constant(v) for v in eqn.invars):
          invals = self._fit_constants(eqn, invals, overrides)
        out_shapes = [self.shape(v, overrides) for v in eqn.outvars]
        params = self._params(eqn, [np.shape(x) for x in invals], out_shapes)
        outvals = eqn.primitive.bind(*invals, **params)
        if not eqn.primitive.multiple_results:
          outvals = [outvals]
      for v, value in zip(eqn.outvars, outvals):
        if not isinstance(v, jcore.DropVar):
          env[v] = value
    return [read(v) for v in jaxpr.outvars]

  def _nested(self, body, closed, scope: tuple, invals, overrides):
    """A nested jaxpr run in the scope ``scope`` below the current one, its consts cut."""
    outer = self.graph.scope
    self.graph.scope = outer + scope
    try:
      consts = (
        []
        if closed is None
        else [
          self.slice(c, [self.atoms.leaves(a) for a in self.graph.axes(v)])
          for v, c in zip(body.constvars, closed.consts)
        ]
      )
      return self.run(body, consts, list(invals), overrides)
    finally:
      self.graph.scope = outer

  def _scan(self, eqn, invals, overrides):
    """A scan over the smaller body, each iteration knowing its index (for per-layer cuts)."""
    parts = control_flow.scan_parts(eqn)
    closed = eqn.params["jaxpr"]
    n_consts, n_carry = len(parts.consts), len(parts.carry)
    consts = invals[:n_consts]
    carry = invals[n_consts : n_consts + n_carry]
    xs = invals[n_consts + n_carry :]
    scope = self.graph.scope + (id(eqn),)
    iteration = self.loops[scope].iteration
    # the iterations follow the inputs (a longer sequence)
    length = parts.length if iteration is None else self.atom_size(iteration, overrides)

    def body(carry, step):
      index, xs_slices = step
      self.iteration[scope] = index
      try:
        out = self._nested(
          closed.jaxpr, closed, (id(eqn),), consts + list(carry) + list(xs_slices), overrides
        )
      finally:
        del self.iteration[scope]
      return out[:n_carry], out[n_carry:]

    final, ys = jax.lax.scan(
      body,
      list(carry),
      (jnp.arange(length), list(xs)),
      length=length,
      reverse=eqn.params.get("reverse", False),
      unroll=eqn.params.get("unroll", 1),
    )
    return list(final) + list(ys)

  def _while(self, eqn, invals, overrides):
    """A while loop over the smaller body and condition."""
    parts = control_flow.while_parts(eqn)
    p = eqn.params
    n_cond, n_body = len(parts.cond_consts), len(parts.body_consts)
    cond_consts, body_consts = invals[:n_cond], invals[n_cond : n_cond + n_body]
    carry = invals[n_cond + n_body :]

    def cond(carry):
      (out,) = self._nested(
        parts.cond, p["cond_jaxpr"], (id(eqn), "cond"), cond_consts + list(carry), overrides
      )
      return out

    def body(carry):
      return self._nested(
        parts.body, p["body_jaxpr"], (id(eqn), "body"), body_consts + list(carry), overrides
      )

    return list(jax.lax.while_loop(cond, body, list(carry)))

  def _cond(self, eqn, invals, overrides):
    """A switch over the smaller branches."""
    index, operands = invals[0], invals[1:]
    branches = [
      functools.partial(self._branch, eqn, b, branch, overrides)
      for b, branch in enumerate(eqn.params["branches"])
    ]
    return list(jax.lax.switch(index, branches, *operands))

  def _branch(self, eqn, b: int, branch, overrides, *operands):
    return self._nested(branch.jaxpr, branch, (id(eqn), b), list(operands), overrides)

  def _bind_input_sizes(self, var, shape, overrides) -> None:
    traced = tuple(var.aval.shape)
    if tuple(shape) == traced:
      return
    if len(shape) != len(traced):
      raise ValueError(
        f"an input has shape {tuple(shape)}, the traced example {traced} (rank differs)."
      )
    for axis, (new, old) in enumerate(zip(shape, traced)):
      if new == old:
        continue
      atoms = self.atoms.leaves(self.graph.axes(var)[axis])
      if len(atoms) != 1 or old <= 1:
        raise ValueError(
          f"input axis {axis} has size {new}, traced with {old}; this axis cannot change size "
          "in the compacted function (trace with an example of the size you need; an axis "
          "traced with size 1, e.g. a batch of 1, is fixed)."
        )
      overrides[self.atoms.find(atoms[0])] = new

  def _params(self, eqn, in_shapes, out_shapes) -> dict:
    name = eqn.primitive.name
    params = dict(eqn.params)
    if name == "reshape":
      params["new_sizes"] = tuple(out_shapes[0])
      params["dimensions"] = None
    elif (
      name in ("broadcast_in_dim", "iota", "rng_bit_generator", "random_bits") and "shape" in params
    ):
      params["shape"] = tuple(out_shapes[0] if name != "rng_bit_generator" else out_shapes[1])
    elif name == "split":
      params["sizes"] = tuple(s[params["axis"]] for s in out_shapes)
    elif name == "slice":
      traced_in, traced_out = eqn.invars[0].aval.shape, eqn.outvars[0].aval.shape
      start, limit = list(params["start_indices"]), list(params["limit_indices"])
      for i, (tin, tout) in enumerate(zip(traced_in, traced_out)):
        new_in, new_out = in_shapes[0][i], out_shapes[0][i]
        if tin == tout:
          start[i], limit[i] = 0, new_in
        elif (new_in, new_out) != (tin, tout):
          part = start[i] // tout
          start[i], limit[i] = part * new_out, (part + 1) * new_out
      params["start_indices"], params["limit_indices"] = tuple(start), tuple(limit)
    elif name == "dynamic_slice":
      params["slice_sizes"] = tuple(out_shapes[0])
    elif name == "gather":
      traced_in = eqn.invars[0].aval.shape
      sizes = list(params["slice_sizes"])
      for i, s in enumerate(sizes):
        if s == traced_in[i]:
          sizes[i] = in_shapes[0][i]
      params["slice_sizes"] = tuple(sizes)
    elif name == "conv_general_dilated":
      lhs_feature = params["dimension_numbers"].lhs_spec[1]
      groups_count = params.get("feature_group_count", 1)
      if groups_count > 1 and groups_count == eqn.invars[0].aval.shape[lhs_feature]:
        params["feature_group_count"] = in_shapes[0][lhs_feature]
    return params
