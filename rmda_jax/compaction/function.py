"""Cut zero groups out of any function: the traced computation re-evaluated with smaller shapes.

:func:`compact_function` takes a forward pass ``fn(params, *args)``, its
params and coupled groups (from :func:`rmda_jax.discover_groups`), and
returns ``small_fn(small_params, *args)`` computing the same outputs with every
removable unit cut from every array it spans: a hidden unit from both kernels
and the bias, a head from q, k, v, their biases and the output projection, a
channel from the conv, its bias, its BatchNorm parameters *and statistics*,
and the consumer.

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
constant) is free, provided the example had more than one along it. Wrap it in
``jax.jit`` for speed.

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
import math
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

from rmda_jax.compaction.removal import removable_units
from rmda_jax.core.groups import Groups
from rmda_jax.structure.discovery import control_flow
from rmda_jax.structure.discovery.tracing import trace


@dataclasses.dataclass
class CompactFunction:
  """A smaller function and its params.

  Attributes:
    fn: ``fn(params, *args)`` (or ``fn(params, extras, *args)`` when extras
      were given): the original outputs from the small arrays.
    params, extras: the sliced arrays (same tree structures as given).
    kept: per family name, the indices of the units kept.
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
  keep_at_least: int = 1,
) -> CompactFunction:
  """The smaller function computing ``fn(params, *args)``; see the module doc.

  Args:
    fn: the forward pass, ``fn(params, *args)``, or ``fn(params, extras,
      *args)`` when ``extras`` (e.g. BatchNorm statistics) is given.
    params: the trained params (e.g. RMDA's structured point).
    groups: the coupled groups of ``fn`` (:func:`rmda_jax.discover_groups`).
    *example_args: example inputs, as for discovery.
    extras: arrays read besides the params; their units are cut too.
    keep_at_least: units kept per family even when all are removable (>= 0).
  """
  if keep_at_least < 0:
    raise ValueError(f"keep_at_least must be >= 0, got {keep_at_least}.")
  traced = trace(fn, params, *example_args, extras=extras)
  param_leaves, param_def = jax.tree_util.tree_flatten(params)
  extra_leaves, extra_def = jax.tree_util.tree_flatten(extras) if extras is not None else ([], None)
  arrays = {p: x for p, x in zip(traced.paths, param_leaves + extra_leaves)}
  cut, kept = {}, {}
  for family in groups.families:
    classes = {traced.class_of(m) for m in family.members}
    if len(classes) != 1:
      raise ValueError(
        f"family {family.name!r}: its members are not one dimension of this computation."
      )
    cls = next(iter(classes))
    producers = ()
    if traced.silent_when_produced_zero(cls):
      producers = tuple(
        m
        for i, m in traced.class_slices(cls)
        if i < traced.n_params and m.path not in family.consumers
      )
    removable = removable_units(family, arrays, producers)
    keep = np.flatnonzero(~removable)
    if len(keep) < keep_at_least:
      norms = sum(_group_norms(arrays[m.path], m) for m in family.members)
      keep = np.sort(np.argsort(-norms, kind="stable")[:keep_at_least])
    kept[family.name] = keep
    if len(keep) < family.size:
      cut[cls] = keep
  reducer = _Reducer(traced, cut)
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


def _group_norms(x, member) -> np.ndarray:
  x = np.asarray(x, np.float64).reshape(member.expanded_shape(np.shape(x)))
  axis = member.group_axis()
  return np.sqrt(np.sum(np.square(x), axis=tuple(a for a in range(x.ndim) if a != axis)))


class _Reducer:
  """Evaluates a traced jaxpr with the cut dimensions made smaller."""

  def __init__(self, traced, cut: dict):
    self.traced = traced
    self.graph = traced.graph
    self.atoms = traced.atoms
    self.cut = cut

  # ---- sizes
  def atom_size(self, atom: int, overrides: dict) -> int:
    cls = self.atoms.find(atom)
    if cls in self.cut:
      return len(self.cut[cls])
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
    x = np.asarray(x) if not isinstance(x, jax.Array) else x
    for axis, atoms in enumerate(axis_atoms):
      hits = [k for k, a in enumerate(atoms) if self.atoms.find(a) in self.cut]
      if not hits:
        continue
      sizes = [self.atoms.sizes[a] for a in atoms]
      shape = tuple(np.shape(x))
      view = x.reshape(shape[:axis] + tuple(sizes) + shape[axis + 1 :])
      for k in hits:
        view = view.take(self.cut[self.atoms.find(atoms[k])], axis=axis + k)
      x = view.reshape(
        shape[:axis] + (math.prod(view.shape[axis : axis + len(sizes)]),) + shape[axis + 1 :]
      )
    return x

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
      inner = control_flow.inner_jaxpr(eqn) if eqn.primitive.name in control_flow.CALLS else None
      if inner is not None:
        closed = inner if isinstance(inner, jcore.ClosedJaxpr) else None
        body = closed.jaxpr if closed is not None else inner
        self.graph.scope = self.graph.scope + (id(eqn),)
        inner_consts = (
          []
          if closed is None
          else [
            self.slice(c, [self.atoms.leaves(a) for a in self.graph.axes(v)])
            for v, c in zip(body.constvars, closed.consts)
          ]
        )
        outvals = self.run(body, inner_consts, invals, overrides)
        self.graph.scope = self.graph.scope[:-1]
      else:
        out_shapes = [self.shape(v, overrides) for v in eqn.outvars]
        params = self._params(eqn, [np.shape(x) for x in invals], out_shapes)
        outvals = eqn.primitive.bind(*invals, **params)
        if not eqn.primitive.multiple_results:
          outvals = [outvals]
      for v, value in zip(eqn.outvars, outvals):
        if not isinstance(v, jcore.DropVar):
          env[v] = value
    return [read(v) for v in jaxpr.outvars]

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
