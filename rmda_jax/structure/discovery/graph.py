"""Pass 1 of discovery: link every axis of every value to the dimensions it carries.

:class:`DimensionGraph` walks a jaxpr and, primitive by primitive, links the
axes of operands and results that carry the same dimension (contractions,
elementwise ops with broadcasting, reshapes that split or merge dimensions,
slices, concatenation, convolutions, pooling, gathers), marking with a reason
the dimensions it cannot follow exactly.

Control flow (:mod:`~rmda_jax.structure.discovery.control_flow`): a call's
nested jaxpr runs once in a scope of its own. A ``scan`` body runs once for all
iterations, symbolically: its consts and carry are the outer values' dimensions,
each ``xs`` slice the outer axes but the first, which is the scan's iteration
axis (shared by every ``xs`` and ``ys``); the carry it returns is linked to the
carry it reads, so a dimension that flows through the carry is the same in
every iteration. A ``while`` loop's body and condition read the carry the same
way. The branches of a ``cond`` all read the operands and all give the
results, so their links are the union of the branches'.

A value computed from constants alone (literals, closed-over arrays, ``iota``)
carries no dimension of its own. Combined elementwise with other values, its
axis is linked (by :meth:`DimensionGraph.finish`, after the pass) only if it
met one dimension: a causal mask broadcast over the batch follows the batch;
a mask indexed per layer (a head mask of shape ``(layers, heads)``) that
meets the heads of every layer does not couple them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from jax.extend import core as jcore

from rmda_jax.structure.discovery import control_flow
from rmda_jax.structure.discovery.atoms import Atoms
from rmda_jax.structure.discovery.control_flow import CALLS, CONTROL, Loop
from rmda_jax.structure.discovery.primitives import (
  ADDITIVE,
  CUMULATIVE,
  LAYOUT,
  MULTIPLICATIVE,
  OTHER_BINARY,
  OTHER_UNARY,
  REDUCTIONS,
  SOURCES,
  ZERO_PRESERVING_UNARY,
)


class DimensionGraph:
  """Pass 1 links dimensions; pass 2 finds exits, zero sets and kinds."""

  def __init__(self, atoms: Atoms) -> None:
    self.atoms = atoms
    self.env: dict = {}  # (scope, var) -> [list of atoms per axis]
    self.scope: tuple = ()  # the call equations we are inside: a jaxpr called twice has two scopes
    self.unknown: list = []
    # atoms that are batch dimensions of a contraction between two activations
    self.batch_classes: list = []
    self.constants: set = set()  # (scope, var) of values computed from constants alone
    self.loops: list[Loop] = []  # every scan, in the order met
    # (constant axis, result axis) of elementwise ops between a constant and a non-constant
    self.constant_links: list[tuple[list[int], list[int]]] = []

  # ---- helpers
  def fresh(self, aval: Any) -> list[list[int]]:
    return [[self.atoms.new(s)] if s > 1 else [] for s in getattr(aval, "shape", ())]

  def axes(self, v: Any) -> list[list[int]]:
    if isinstance(v, jcore.Literal):
      return [[] for _ in np.shape(v.val)]
    key = (self.scope, v)
    if key not in self.env:
      self.env[key] = self.fresh(v.aval)
    return self.env[key]

  def define(self, v: Any, axes: list[list[int]]) -> None:
    if not isinstance(v, jcore.DropVar):
      self.env[(self.scope, v)] = axes

  def link(self, a: list, b: list, context: str) -> None:
    if not self.atoms.align(a, b):
      self.atoms.mark(a + b, f"{context} interleaves this dimension with others")

  def all_atoms(self, v: Any) -> list[int]:
    return [a for axis in self.axes(v) for a in axis]

  def unknown_primitive(self, eqn: Any) -> None:
    name = eqn.primitive.name
    if name not in self.unknown:
      self.unknown.append(name)
    outs = []
    for v in eqn.outvars:
      axes = self.fresh(v.aval)
      self.define(v, axes)
      outs.extend(a for axis in axes for a in axis)
    ins = [a for v in eqn.invars for a in self.all_atoms(v)]
    self.atoms.mark(ins + outs, f"used by {name}, which discovery does not know")

  def is_constant(self, v: Any) -> bool:
    """Whether ``v`` is a literal or computed from constants alone (in this scope)."""
    return isinstance(v, jcore.Literal) or (self.scope, v) in self.constants

  def bind(
    self, variables: list[Any], outer: list[Any], constant: list[bool] | None = None
  ) -> None:
    """Give ``variables`` the axes ``outer`` (fresh ones for None), in the current scope.

    ``constant`` says which of them are constants.
    """
    for k, (var, value) in enumerate(zip(variables, outer)):
      self.define(var, value if isinstance(value, list) else self.fresh(var.aval))
      if constant is not None and constant[k] and not isinstance(var, jcore.DropVar):
        self.constants.add((self.scope, var))

  def outer_axes(self, values: list[Any]) -> list[Any]:
    """The axes of operands, None for a literal (bound to fresh axes)."""
    return [None if isinstance(v, jcore.Literal) else self.axes(v) for v in values]

  def results(self, jaxpr: jcore.Jaxpr) -> list[list[list[int]]]:
    """The axes of a jaxpr's results (fresh ones for a literal result)."""
    return [
      self.fresh(v.aval) if isinstance(v, jcore.Literal) else self.axes(v) for v in jaxpr.outvars
    ]

  def finish(self) -> None:
    """Link each constant's dimension to the one dimension it met, if only one (module doc)."""
    keys = [tuple(self.atoms.find(a) for a in constant) for constant, _ in self.constant_links]
    met: dict[tuple[int, ...], set[tuple[int, ...]]] = {}
    for key, (_, result) in zip(keys, self.constant_links):
      met.setdefault(key, set()).add(tuple(self.atoms.find(a) for a in result))
    for key, (constant, result) in zip(keys, self.constant_links):
      if len(met[key]) == 1:
        self.link(constant, result, "a constant")

  # ---- pass 1
  def run(self, jaxpr: jcore.Jaxpr) -> None:
    for var in jaxpr.constvars:
      self.constants.add((self.scope, var))
    for eqn in jaxpr.eqns:
      self.equation(eqn)
      name = eqn.primitive.name
      if name not in CALLS and name not in CONTROL and all(self.is_constant(v) for v in eqn.invars):
        self.constants.update((self.scope, v) for v in eqn.outvars)

  def equation(self, eqn: Any) -> None:
    name = eqn.primitive.name
    ins, outs = eqn.invars, eqn.outvars
    params = eqn.params
    if name in CALLS:
      return self.call(eqn)
    if name == "scan":
      return self.scan(eqn)
    if name == "while":
      return self.while_loop(eqn)
    if name == "cond":
      return self.cond(eqn)
    if (
      name in LAYOUT
      or name in ZERO_PRESERVING_UNARY
      or name in OTHER_UNARY
      or name in MULTIPLICATIVE
      or name in ADDITIVE
      or name in OTHER_BINARY
      or name in ("select_n", "clamp")
    ):
      if name == "reshape":
        out = self.fresh(outs[0].aval)
        self.link(
          [a for axis in self.axes(ins[0]) for a in axis],
          [a for axis in out for a in axis],
          "a reshape",
        )
        return self.define(outs[0], out)
      if name == "transpose":
        axes = self.axes(ins[0])
        return self.define(outs[0], [axes[p] for p in params["permutation"]])
      if name == "squeeze":
        axes = self.axes(ins[0])
        dims = {d % len(axes) for d in params["dimensions"]}
        return self.define(outs[0], [a for i, a in enumerate(axes) if i not in dims])
      if name == "broadcast_in_dim":
        out = self.fresh(outs[0].aval)
        in_shape = ins[0].aval.shape
        for i, d in enumerate(params["broadcast_dimensions"]):
          if in_shape[i] == outs[0].aval.shape[d]:
            self.link(self.axes(ins[0])[i], out[d], "a broadcast")
        return self.define(outs[0], out)
      return self.elementwise(eqn)
    if name in REDUCTIONS:
      axes = self.axes(ins[0])
      dims = {d % max(len(axes), 1) for d in params["axes"]}
      return self.define(outs[0], [a for i, a in enumerate(axes) if i not in dims])
    if name in CUMULATIVE:
      return self.define(outs[0], self.axes(ins[0]))
    if name == "dot_general":
      return self.dot_general(eqn)
    if name == "conv_general_dilated":
      return self.convolution(eqn)
    if name.startswith("reduce_window"):
      return self.window(eqn)
    if name == "split":
      return self.split(eqn)
    if name == "slice":
      return self.slice(eqn)
    if name == "concatenate":
      return self.concatenate(eqn)
    if name == "pad":
      return self.pad(eqn)
    if name == "gather":
      return self.gather(eqn)
    if name == "dynamic_slice":
      return self.dynamic_slice(eqn)
    if name == "dynamic_update_slice":
      axes = self.axes(ins[0])
      for i, (a, b) in enumerate(zip(axes, self.axes(ins[1]))):
        if ins[0].aval.shape[i] == ins[1].aval.shape[i]:
          self.link(a, b, "dynamic_update_slice")
        else:
          self.atoms.mark(a + b, "updated in part (dynamic_update_slice)")
      return self.define(outs[0], axes)
    if name in SOURCES:
      for v in outs:
        self.define(v, self.fresh(v.aval))
      return
    return self.unknown_primitive(eqn)

  def call(self, eqn: Any) -> None:
    """Link a call's operands and results to its nested jaxpr's, inside a scope of its own."""
    jaxpr = control_flow.nested(eqn)
    if jaxpr is None:
      return self.unknown_primitive(eqn)
    operands = self.outer_axes(eqn.invars)
    constant = [self.is_constant(v) for v in eqn.invars]
    self.scope = self.scope + (id(eqn),)
    self.bind(jaxpr.invars, operands, constant)
    for var in jaxpr.constvars:
      self.axes(var)
    self.run(jaxpr)
    out = self.results(jaxpr)
    constant = [self.is_constant(v) for v in jaxpr.outvars]
    self.scope = self.scope[:-1]
    self.bind(eqn.outvars, out, constant)

  def scan(self, eqn: Any) -> None:
    """A scan body, once for every iteration: the carry tied across iterations (module doc)."""
    parts = control_flow.scan_parts(eqn)
    iteration = [self.atoms.new(parts.length)] if parts.length > 1 else []
    consts, carry = self.outer_axes(parts.consts), self.outer_axes(parts.carry)
    xs = []
    for v in parts.xs:
      axes = self.axes(v) if not isinstance(v, jcore.Literal) else self.fresh(v.aval)
      self.link(axes[0], iteration, "a scan's iterations")
      xs.append(axes[1:])
    self.scope = self.scope + (id(eqn),)
    self.loops.append(Loop(self.scope, iteration[0] if iteration else None, parts.length))
    self.bind(parts.body_consts, consts)
    self.bind(parts.body_carry, carry)
    self.bind(parts.body_xs, xs)
    self.run(parts.body)
    out = self.results(parts.body)
    carry_in = [self.axes(v) for v in parts.body_carry]
    for old, new in zip(carry_in, out):
      for a, b in zip(old, new):
        self.link(a, b, "a scan's carry")
    self.scope = self.scope[:-1]
    n = len(parts.carry)
    for outer, axes in zip(eqn.outvars[:n], carry_in):
      self.define(outer, axes)
    for outer, axes in zip(eqn.outvars[n:], out[n:]):
      self.define(outer, [list(iteration)] + axes)

  def while_loop(self, eqn: Any) -> None:
    """A while loop's body and condition over the carry, tied across iterations."""
    parts = control_flow.while_parts(eqn)
    carry = [
      self.fresh(v.aval) if isinstance(v, jcore.Literal) else self.axes(v) for v in parts.carry
    ]
    for part, jaxpr, consts in (
      ("body", parts.body, self.outer_axes(parts.body_consts)),
      ("cond", parts.cond, self.outer_axes(parts.cond_consts)),
    ):
      self.scope = self.scope + (id(eqn), part)
      self.bind(jaxpr.invars[: len(consts)], consts)
      self.bind(jaxpr.invars[len(consts) :], carry)
      self.run(jaxpr)
      if part == "body":
        for old, new in zip(carry, self.results(jaxpr)):
          for a, b in zip(old, new):
            self.link(a, b, "a while loop's carry")
      self.scope = self.scope[:-2]
    for outer, axes in zip(eqn.outvars, carry):
      self.define(outer, axes)

  def cond(self, eqn: Any) -> None:
    """Every branch of a cond on the same operands and results: the union of their links."""
    operands = self.outer_axes(eqn.invars[1:])
    out = [self.fresh(v.aval) for v in eqn.outvars]
    for b, branch in enumerate(control_flow.cond_branches(eqn)):
      self.scope = self.scope + (id(eqn), b)
      self.bind(branch.invars, operands)
      self.run(branch)
      for axes, result in zip(out, self.results(branch)):
        for a, r in zip(axes, result):
          self.link(a, r, "a cond's branches")
      self.scope = self.scope[:-2]
    for outer, axes in zip(eqn.outvars, out):
      self.define(outer, axes)

  def elementwise(self, eqn: Any) -> None:
    out_aval = eqn.outvars[0].aval
    out = self.fresh(out_aval)
    mixed = not all(self.is_constant(v) for v in eqn.invars)
    for v in eqn.invars:
      shape = np.shape(v.val) if isinstance(v, jcore.Literal) else v.aval.shape
      if len(shape) != len(out_aval.shape):
        continue
      deferred = mixed and self.is_constant(v) and not isinstance(v, jcore.Literal)
      for i, axis in enumerate(self.axes(v)):
        if shape[i] == out_aval.shape[i]:
          if deferred:
            self.constant_links.append((axis, out[i]))
          else:
            self.link(axis, out[i], eqn.primitive.name)
    for v in eqn.outvars:
      self.define(v, out)

  def dot_general(self, eqn: Any) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    la, ra = self.axes(lhs), self.axes(rhs)
    for i, j in zip(lc, rc):
      self.link(la[i], ra[j], "a contraction")
    for i, j in zip(lb, rb):
      self.link(la[i], ra[j], "a batched contraction")
    lfree = [i for i in range(len(la)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(ra)) if i not in rc and i not in rb]
    self.define(
      eqn.outvars[0], [la[i] for i in lb] + [la[i] for i in lfree] + [ra[i] for i in rfree]
    )

  def convolution(self, eqn: Any) -> None:
    p = eqn.params
    lhs, rhs = eqn.invars
    out_v = eqn.outvars[0]
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    la, ra = self.axes(lhs), self.axes(rhs)
    out = self.fresh(out_v.aval)
    self.define(out_v, out)
    if p.get("batch_group_count", 1) != 1:
      self.atoms.mark([a for ax in la + ra + out for a in ax], "a batch-grouped convolution")
      return
    self.link(la[lhs_spec[0]], out[out_spec[0]], "a convolution's batch")
    groups_count = p.get("feature_group_count", 1)
    in_features = lhs.aval.shape[lhs_spec[1]]
    out_features = rhs.aval.shape[rhs_spec[0]]
    if groups_count == 1:
      self.link(la[lhs_spec[1]], ra[rhs_spec[1]], "a convolution")
      self.link(ra[rhs_spec[0]], out[out_spec[1]], "a convolution")
    elif groups_count == in_features == out_features:
      self.link(la[lhs_spec[1]], ra[rhs_spec[0]], "a depthwise convolution")
      self.link(ra[rhs_spec[0]], out[out_spec[1]], "a depthwise convolution")
    else:
      self.atoms.mark(
        la[lhs_spec[1]] + ra[rhs_spec[0]] + out[out_spec[1]] + ra[rhs_spec[1]],
        "a grouped convolution",
      )
    spatial = (
      [la[d] for d in lhs_spec[2:]] + [ra[d] for d in rhs_spec[2:]] + [out[d] for d in out_spec[2:]]
    )
    self.atoms.mark([a for ax in spatial for a in ax], "a convolution window")

  def window(self, eqn: Any) -> None:
    p = eqn.params
    n = len(eqn.invars) // 2 if eqn.primitive.name == "reduce_window" else 1
    outs = [self.fresh(v.aval) for v in eqn.outvars]
    dims = p["window_dimensions"]
    strides = p["window_strides"]
    padding = p["padding"]
    base = p.get("base_dilation", (1,) * len(dims))
    dil = p.get("window_dilation", (1,) * len(dims))
    for operand, out in zip(eqn.invars[:n], outs):
      for i, (a, b) in enumerate(zip(self.axes(operand), out)):
        if (
          dims[i] == 1
          and strides[i] == 1
          and tuple(padding[i]) == (0, 0)
          and base[i] == 1
          and dil[i] == 1
        ):
          self.link(a, b, "a pooling")
        else:
          self.atoms.mark(a + b, "a pooling window")
    for v, out in zip(eqn.outvars, outs):
      self.define(v, out)

  def _piece(
    self, in_axis: list, size_in: int, size_out: int, start: int, out_axis: list, what: str
  ) -> None:
    """Out axis = one contiguous block ``[start, start + size_out)`` of the in axis."""
    if size_out == 0:
      return  # an empty piece reads nothing
    if size_out == size_in:
      self.link(in_axis, out_axis, what)
    elif size_in % size_out == 0 and start % size_out == 0:
      parts = self.atoms.new(size_in // size_out)
      self.atoms.mark([parts], f"cut into parts ({what})")
      self.link(in_axis, [parts] + out_axis, what)
    else:
      self.atoms.mark(in_axis + out_axis, f"sliced ({what})")

  def split(self, eqn: Any) -> None:
    axis = eqn.params["axis"]
    operand = eqn.invars[0]
    axes = self.axes(operand)
    size_in = operand.aval.shape[axis]
    start = 0
    for v, size in zip(eqn.outvars, eqn.params["sizes"]):
      out = [list(a) for a in axes]
      out[axis] = [self.atoms.new(size)] if size > 1 else []
      self._piece(axes[axis], size_in, int(size), start, out[axis], "split")
      start += int(size)
      self.define(v, out)

  def slice(self, eqn: Any) -> None:
    p = eqn.params
    operand, out_v = eqn.invars[0], eqn.outvars[0]
    axes = self.axes(operand)
    out = self.fresh(out_v.aval)
    strides = p["strides"] or (1,) * len(axes)
    for i, (a, b) in enumerate(zip(axes, out)):
      size_in, size_out = operand.aval.shape[i], out_v.aval.shape[i]
      if strides[i] != 1 and size_out != size_in:
        self.atoms.mark(a + b, "strided slice")
      else:
        self._piece(a, size_in, size_out, p["start_indices"][i], b, "slice")
    self.define(out_v, out)

  def dynamic_slice(self, eqn: Any) -> None:
    operand, out_v = eqn.invars[0], eqn.outvars[0]
    out = self.fresh(out_v.aval)
    for i, (a, b) in enumerate(zip(self.axes(operand), out)):
      if operand.aval.shape[i] == out_v.aval.shape[i]:
        self.link(a, b, "dynamic_slice")
      else:
        self.atoms.mark(a + b, "sliced at a dynamic position")
    self.define(out_v, out)

  def concatenate(self, eqn: Any) -> None:
    """Pieces of one size are stacked: the result axis is ``(pieces, size)``, as a split reads it.

    So the gates of an LSTM, concatenated into one kernel and split again,
    carry one dimension; pieces of different sizes are not followed.
    """
    dim = eqn.params["dimension"]
    out_v = eqn.outvars[0]
    out = self.fresh(out_v.aval)
    sizes = {v.aval.shape[dim] for v in eqn.invars}
    equal = len(sizes) == 1 and len(eqn.invars) > 1 and min(sizes) > 1
    if equal:
      parts = self.atoms.new(len(eqn.invars))
      self.atoms.mark([parts], "cut into parts (concatenate)")
      piece = [self.atoms.new(min(sizes))]
      self.link(out[dim], [parts] + piece, "concatenate")
    for v in eqn.invars:
      for i, (a, b) in enumerate(zip(self.axes(v), out)):
        if i != dim:
          self.link(a, b, "concatenate")
        elif equal:
          self.link(a, piece, "concatenate")
        else:
          self.atoms.mark(a + b, "concatenated")
    self.define(out_v, out)

  def pad(self, eqn: Any) -> None:
    operand, out_v = eqn.invars[0], eqn.outvars[0]
    out = self.fresh(out_v.aval)
    for (lo, hi, interior), a, b in zip(eqn.params["padding_config"], self.axes(operand), out):
      if (lo, hi, interior) == (0, 0, 0):
        self.link(a, b, "pad")
      else:
        self.atoms.mark(a + b, "padded")
    self.define(out_v, out)

  def gather(self, eqn: Any) -> None:
    p = eqn.params
    operand, indices = eqn.invars
    out_v = eqn.outvars[0]
    dn = p["dimension_numbers"]
    out = self.fresh(out_v.aval)
    oa, ia = self.axes(operand), self.axes(indices)
    if getattr(dn, "operand_batching_dims", ()):
      self.atoms.mark([a for ax in oa + ia + out for a in ax], "a batched gather")
      return self.define(out_v, out)
    kept = [i for i in range(len(oa)) if i not in dn.collapsed_slice_dims]
    for i, d in zip(kept, dn.offset_dims):
      if p["slice_sizes"][i] == operand.aval.shape[i] and i not in dn.start_index_map:
        self.link(oa[i], out[d], "gather")
      else:
        self.atoms.mark(oa[i] + out[d], "indexed (gather)")
    for i in dn.start_index_map:
      self.atoms.mark(oa[i], "indexed (gather)")
    batch_out = [d for d in range(len(out)) if d not in dn.offset_dims]
    for d, a in zip(batch_out, ia[:-1]):
      self.link(a, out[d], "gather")
    return self.define(out_v, out)
