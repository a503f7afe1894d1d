"""Pass 2 of discovery: where each dimension leaves the computation, and whether exactly.

:class:`Exits` follows *zero sets* (the dimensions a value vanishes along when
their parameters are zeroed) and *parameter views* (values that are a
parameter leaf cast, reshaped or transposed) through the jaxpr. At every
contraction over a dimension it records whether an operand vanishes along it
-- a parameter view (then that leaf is a *consumer*: zeroing its slices
removes the dimension exactly) or an activation that vanishes only once every
parameter slice producing it is zero -- and which dimensions are attention
heads (the batch dimensions of a contraction between two activations).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from jax.extend import core as jcore

from rmda_jax.structure.discovery import control_flow
from rmda_jax.structure.discovery.control_flow import CALLS
from rmda_jax.structure.discovery.graph import DimensionGraph
from rmda_jax.structure.discovery.primitives import (
  ADDITIVE,
  ALL,
  CUMULATIVE,
  LAYOUT,
  MULTIPLICATIVE,
  REDUCTIONS,
  ZERO_PRESERVING_UNARY,
)


class Exits:
  """Pass 2 over a jaxpr: zero sets, parameter views, the exits of each dimension, and kinds.

  A zero set holds the dimensions a value vanishes along when their
  parameters are zeroed (see the module doc).
  """

  def __init__(self, graph: DimensionGraph, param_vars: dict[Any, int]) -> None:
    self.g = graph
    self.atoms = graph.atoms
    self.zero: dict = {}  # (scope, var) -> classes it vanishes along
    self.view: dict = {
      ((), v): i for v, i in param_vars.items()
    }  # (scope, var) -> param index (pure views)
    self.consumers = collections.defaultdict(set)  # class -> param indices contracted against it
    self.needs_all: set = set()  # classes whose zeroing operand is not a plain parameter view
    self.exits = collections.Counter()
    self.silent_exits = (
      collections.Counter()
    )  # exits where an activation operand vanishes with its producers
    self.first_seen: dict = {}
    self.heads: set = set()
    self.counter = 0
    for v, _ in param_vars.items():
      self.zero[((), v)] = set(self.classes(v))

  def classes(self, v: Any) -> list[int]:
    if isinstance(v, jcore.Literal):
      return []
    return [self.atoms.find(a) for a in self.atoms.leaves(self.g.all_atoms(v))]

  def axis_classes(self, v: Any, i: int) -> list[int]:
    return [self.atoms.find(a) for a in self.atoms.leaves(self.g.axes(v)[i])]

  def zset(self, v: Any) -> Any:
    if isinstance(v, jcore.Literal):
      return ALL if np.all(np.asarray(v.val) == 0) else set()
    return self.zero.get((self.g.scope, v), set())

  def set_zero(self, v: Any, zs: Any) -> None:
    if isinstance(v, jcore.DropVar):
      return
    present = set(self.classes(v))
    self.zero[(self.g.scope, v)] = present if zs is ALL else (set(zs) & present)

  def view_of(self, v: Any) -> int | None:
    """The parameter index ``v`` is a plain view of (cast, reshape, transpose...), or None."""
    if isinstance(v, jcore.Literal):
      return None
    return self.view.get((self.g.scope, v))

  def set_view(self, v: Any, index: int | None) -> None:
    if index is not None and not isinstance(v, jcore.DropVar):
      self.view[(self.g.scope, v)] = index

  def run(self, jaxpr: jcore.Jaxpr) -> None:
    for eqn in jaxpr.eqns:
      self.equation(eqn)

  def equation(self, eqn: Any) -> None:
    self.counter += 1
    for v in eqn.outvars:
      if not isinstance(v, jcore.DropVar):
        for c in self.classes(v):
          self.first_seen.setdefault(c, self.counter)
    name = eqn.primitive.name
    ins, outs = eqn.invars, eqn.outvars
    if name in CALLS:
      return self.call(eqn)
    if name in LAYOUT and len(ins) >= 1:
      self.set_view(outs[0], self.view_of(ins[0]))
    if (
      name in LAYOUT
      or name in ZERO_PRESERVING_UNARY
      or name == "integer_pow"
      and eqn.params["y"] > 0
    ):
      return self.set_zero(outs[0], self.zset(ins[0]))
    if name in MULTIPLICATIVE or name in ("dot_general", "conv_general_dilated"):
      zs = set()
      for v in ins:
        z = self.zset(v)
        if z is ALL:
          zs = ALL
          break
        zs |= z
      if name == "dot_general":
        self.contraction(eqn)
      if name == "conv_general_dilated":
        self.conv_contraction(eqn)
      return self.set_zero(outs[0], zs)
    if name in ADDITIVE or name == "select_n":
      operands = ins[1:] if name == "select_n" else ins
      zs: Any = ALL
      for v in operands:
        z = self.zset(v)
        if z is ALL:
          continue
        zs = set(z) if zs is ALL else zs & z
      return self.set_zero(outs[0], zs)
    if name == "div":
      return self.set_zero(outs[0], self.zset(ins[0]))
    if name in REDUCTIONS or name in CUMULATIVE:
      if name in CUMULATIVE:
        dims = [eqn.params["axis"]]
      else:
        dims = eqn.params["axes"]
      for d in dims:
        cls = self.axis_classes(ins[0], d % len(ins[0].aval.shape))
        self.atoms_mark_classes(
          cls, f"reduced by {name}" if name in REDUCTIONS else f"accumulated by {name}"
        )
      return self.set_zero(
        outs[0], self.zset(ins[0]) if name not in ("argmax", "argmin") else set()
      )
    if name.startswith("reduce_window") or name in (
      "slice",
      "split",
      "pad",
      "dynamic_slice",
      "squeeze",
      "gather",
      "concatenate",
      "dynamic_update_slice",
    ):
      base = self.zset(ins[0])
      if name == "concatenate":
        base: Any = ALL
        for v in ins:
          z = self.zset(v)
          base = z if base is ALL else (base if z is ALL else base & z)
      for v in outs:
        self.set_zero(v, base)
      return
    for v in outs:
      self.set_zero(v, set())

  def call(self, eqn: Any) -> None:
    """Carry zero sets and parameter views into a call's nested jaxpr and back."""
    jaxpr = control_flow.nested(eqn)
    ins, outs = eqn.invars, eqn.outvars
    if jaxpr is None:  # unknown to pass 1: its results carry fresh dimensions, zero nowhere
      for v in outs:
        self.set_zero(v, set())
      return
    outer_zero = [self.zset(v) for v in ins]
    outer_views = [self.view_of(v) for v in ins]
    self.g.scope = self.g.scope + (id(eqn),)
    for var, zeros, view in zip(jaxpr.invars, outer_zero, outer_views):
      self.zero[(self.g.scope, var)] = zeros
      self.set_view(var, view)
    self.run(jaxpr)
    inner_zero = [self.zset(v) for v in jaxpr.outvars]
    inner_views = [self.view_of(v) for v in jaxpr.outvars]
    self.g.scope = self.g.scope[:-1]
    for outer, zeros, view in zip(outs, inner_zero, inner_views):
      self.set_zero(outer, zeros)
      self.set_view(outer, view)

  def atoms_mark_classes(self, classes: Iterable[int], reason: str) -> None:
    for c in classes:
      self.atoms.reasons[c].add(reason)

  def _exit(self, cls: int, operands: Sequence[Any]) -> None:
    """A contraction over class ``cls``: exact if an operand vanishes along it."""
    self.exits[cls] += 1
    vanishing = [v for v in operands if self.zset(v) is ALL or cls in self.zset(v)]
    views = [self.view_of(v) for v in vanishing if self.view_of(v) is not None]
    if len(views) < len(vanishing):
      self.silent_exits[cls] += 1
    if views:
      # zeroing the parameter it is contracted against removes the dimension
      self.consumers[cls].update(views)
    elif vanishing:
      # it vanishes only once every parameter slice that produces it is zero
      self.needs_all.add(cls)
    else:
      self.atoms.reasons[cls].add("contracted between activations")

  def contraction(self, eqn: Any) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    for i in lc:
      for cls in self.axis_classes(lhs, i):
        self._exit(cls, (lhs, rhs))
    if self.view_of(lhs) is None and self.view_of(rhs) is None:
      for i in lb:
        self.heads.update(self.axis_classes(lhs, i))

  def conv_contraction(self, eqn: Any) -> None:
    p = eqn.params
    if p.get("feature_group_count", 1) != 1 or p.get("batch_group_count", 1) != 1:
      return
    lhs, rhs = eqn.invars
    for cls in self.axis_classes(lhs, p["dimension_numbers"].lhs_spec[1]):
      self._exit(cls, (lhs, rhs))
