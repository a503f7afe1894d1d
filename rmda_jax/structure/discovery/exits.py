"""Pass 2 of discovery: where each dimension leaves the computation, and whether exactly.

:class:`Exits` follows *zero sets* (the dimensions a value vanishes along when
their parameters are zeroed) and *parameter views* (values that are a
parameter leaf cast, reshaped or transposed) through the jaxpr. At every
contraction over a dimension it records whether an operand vanishes along it
-- a parameter view (then that leaf is a *consumer*: zeroing its slices
removes the dimension exactly) or an activation that vanishes only once every
parameter slice producing it is zero -- and which dimensions are attention
heads: the batch dimensions of a contraction between two activations, and the
other output dimensions of a projection whose head dimension is contracted
between activations (a query projection whose keys have one head).

Loops follow their carry to a fixed point: a dimension vanishes in the carry
only if it vanishes in the initial carry and the body keeps it vanished. The
body is run without recording until the zero sets are stable, then once more
recording its exits, so each exit is counted once, at the fixed point.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterable, Iterator, Sequence
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
    # (scope, var) -> the parameter views concatenated into it (an LSTM's gate kernels)
    self.pieces: dict = {}
    self.needs_all: set = set()  # classes whose zeroing operand is not a plain parameter view
    self.exits = collections.Counter()
    self.silent_exits = (
      collections.Counter()
    )  # exits where an activation operand vanishes with its producers
    self.first_seen: dict = {}
    self.heads: set = set()
    self.counter = 0
    # class -> atoms of the parameter axes contracted against it (which axis of a leaf consumes)
    self.consumed_atoms = collections.defaultdict(set)
    self.between_activations: set = set()  # classes contracted between two activations
    self.activation_contractions: set = set()  # classes contracted with no parameter operand
    self.projections: list = []  # per projection, the classes of its output dimensions
    for v, _ in param_vars.items():
      self.zero[((), v)] = set(self.classes(v))

  _RECORDS = (
    "consumers",
    "needs_all",
    "exits",
    "silent_exits",
    "first_seen",
    "heads",
    "counter",
    "consumed_atoms",
    "between_activations",
    "activation_contractions",
    "projections",
  )

  @contextlib.contextmanager
  def unrecorded(self) -> Iterator[None]:
    """Run a body for its zero sets alone: what it records is thrown away."""
    saved = {name: getattr(self, name) for name in self._RECORDS}
    reasons = {root: set(r) for root, r in self.atoms.reasons.items()}
    for name, value in saved.items():
      setattr(self, name, type(value)() if not isinstance(value, int) else value)
    self.consumers = collections.defaultdict(set)
    self.consumed_atoms = collections.defaultdict(set)
    try:
      yield
    finally:
      for name, value in saved.items():
        setattr(self, name, value)
      self.atoms.reasons.clear()
      self.atoms.reasons.update(reasons)

  @staticmethod
  def meet(a: Any, b: Any) -> Any:
    """The classes two zero sets share (:data:`ALL` is every class)."""
    if a is ALL:
      return b
    if b is ALL:
      return a
    return set(a) & set(b)

  def enter(self, variables: list[Any], zeros: list[Any], views: list[int | None]) -> None:
    """Bind a nested jaxpr's ``variables`` (current scope) to zero sets and views."""
    for var, z, view in zip(variables, zeros, views):
      self.set_zero(var, z)
      self.set_view(var, view)

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
    if name == "scan":
      return self.scan(eqn)
    if name == "while":
      return self.while_loop(eqn)
    if name == "cond":
      return self.cond(eqn)
    if name in LAYOUT and len(ins) >= 1:
      self.set_view(outs[0], self.view_of(ins[0]))
    if name == "concatenate" and all(self.view_of(v) is not None for v in ins):
      self.pieces[(self.g.scope, outs[0])] = list(ins)
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

  def scan(self, eqn: Any) -> None:
    """A scan body at the fixed point of its carry's zero sets; an ``xs`` slice is still a view."""
    parts = control_flow.scan_parts(eqn)
    consts = [self.zset(v) for v in parts.consts]
    carry = [self.zset(v) for v in parts.carry]
    xs = [self.zset(v) for v in parts.xs]
    views = [self.view_of(v) for v in parts.consts + parts.carry + parts.xs]
    n = len(parts.carry)
    self.g.scope = self.g.scope + (id(eqn),)

    def body(carry: list[Any]) -> list[Any]:
      self.enter(parts.body.invars, consts + carry + xs, views)
      self.run(parts.body)
      return [self.zset(v) for v in parts.body.outvars]

    carry = self.fixed_point(body, carry, n)
    out = body(carry)
    carry_out = [self.zset(v) for v in parts.body_carry]
    self.g.scope = self.g.scope[:-1]
    for outer, z in zip(eqn.outvars, carry_out + out[n:]):
      self.set_zero(outer, z)

  def fixed_point(self, body: Any, carry: list[Any], n: int) -> list[Any]:
    """The zero sets of a loop's carry: the initial ones, kept where ``body`` keeps them."""
    with self.unrecorded():
      for _ in range(len(self.atoms.parent) + 1):
        new = [self.meet(c, z) for c, z in zip(carry, body(carry)[:n])]
        if new == carry:
          break
        carry = new
    return carry

  def while_loop(self, eqn: Any) -> None:
    """A while loop's body and condition at the fixed point of the carry's zero sets."""
    parts = control_flow.while_parts(eqn)
    body_consts = [self.zset(v) for v in parts.body_consts]
    cond_consts = [self.zset(v) for v in parts.cond_consts]
    body_views = [self.view_of(v) for v in parts.body_consts + parts.carry]
    cond_views = [self.view_of(v) for v in parts.cond_consts + parts.carry]
    carry = [self.zset(v) for v in parts.carry]
    n = len(carry)

    def body(carry: list[Any]) -> list[Any]:
      self.g.scope = self.g.scope + (id(eqn), "body")
      self.enter(parts.body.invars, body_consts + carry, body_views)
      self.run(parts.body)
      out = [self.zset(v) for v in parts.body.outvars]
      self.g.scope = self.g.scope[:-2]
      return out

    carry = self.fixed_point(body, carry, n)
    body(carry)
    self.g.scope = self.g.scope + (id(eqn), "cond")
    self.enter(parts.cond.invars, cond_consts + carry, cond_views)
    self.run(parts.cond)
    self.g.scope = self.g.scope[:-2]
    for outer, z in zip(eqn.outvars, carry):
      self.set_zero(outer, z)

  def cond(self, eqn: Any) -> None:
    """Every branch of a cond: a result vanishes where it vanishes in all of them."""
    operands = eqn.invars[1:]
    zeros = [self.zset(v) for v in operands]
    views = [self.view_of(v) for v in operands]
    out: list[Any] | None = None
    for b, branch in enumerate(control_flow.cond_branches(eqn)):
      self.g.scope = self.g.scope + (id(eqn), b)
      self.enter(branch.invars, zeros, views)
      self.run(branch)
      result = [self.zset(v) for v in branch.outvars]
      self.g.scope = self.g.scope[:-2]
      out = result if out is None else [self.meet(a, r) for a, r in zip(out, result)]
    for outer, z in zip(eqn.outvars, out or []):
      self.set_zero(outer, z)

  def atoms_mark_classes(self, classes: Iterable[int], reason: str) -> None:
    for c in classes:
      self.atoms.reasons[c].add(reason)

  def _exit(self, cls: int, operands: Sequence[tuple[Any, int]]) -> None:
    """A contraction over class ``cls`` (``(operand, its contracted axis)`` pairs).

    Exact if an operand vanishes along it.
    """
    self.exits[cls] += 1
    vanishing = [(v, a) for v, a in operands if self.zset(v) is ALL or cls in self.zset(v)]
    # a concatenation of parameters (along another axis) is contracted piece by piece
    parts = [
      (p, a)
      for v, a in vanishing
      for p in self.pieces.get((self.g.scope, v), [v])
      if self.view_of(p) is not None
    ]
    viewed = [
      v for v, _ in vanishing if self.view_of(v) is not None or (self.g.scope, v) in self.pieces
    ]
    views = [self.view_of(p) for p, _ in parts]
    if len(viewed) < len(vanishing):
      self.silent_exits[cls] += 1
    if views:
      # zeroing the parameter it is contracted against removes the dimension
      self.consumers[cls].update(views)
      for p, axis in parts:
        self.consumed_atoms[cls].update(self.atoms.leaves(self.g.axes(p)[axis]))
    elif vanishing:
      # it vanishes only once every parameter slice that produces it is zero
      self.needs_all.add(cls)
    else:
      self.atoms.reasons[cls].add("contracted between activations")
      self.between_activations.add(cls)

  def contraction(self, eqn: Any) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    for i, j in zip(lc, rc):
      for cls in self.axis_classes(lhs, i):
        self._exit(cls, ((lhs, i), (rhs, j)))
    lhs_view, rhs_view = self.view_of(lhs) is not None, self.view_of(rhs) is not None
    if not lhs_view and not rhs_view:
      for i in lb:
        self.heads.update(self.axis_classes(lhs, i))
      for i in lc:
        self.activation_contractions.update(self.axis_classes(lhs, i))
    elif lhs_view != rhs_view:
      param, contracted, batch = (lhs, lc, lb) if lhs_view else (rhs, rc, rb)
      free = [i for i in range(len(param.aval.shape)) if i not in contracted and i not in batch]
      self.projections.append({c for i in free for c in self.axis_classes(param, i)})

  def finish(self) -> None:
    """What needs the whole pass: the heads of projections whose head dimension is contracted.

    A projection to ``(heads, head_dim)`` whose ``head_dim`` is contracted
    with another activation (queries against keys) projects heads, also when
    the keys have no head axis (one key-value head shared by all, MQA).
    """
    for outputs in self.projections:
      if outputs & self.activation_contractions:
        self.heads.update(outputs - self.activation_contractions)

  def conv_contraction(self, eqn: Any) -> None:
    p = eqn.params
    if p.get("feature_group_count", 1) != 1 or p.get("batch_group_count", 1) != 1:
      return
    lhs, rhs = eqn.invars
    spec = p["dimension_numbers"]
    for cls in self.axis_classes(lhs, spec.lhs_spec[1]):
      self._exit(cls, ((lhs, spec.lhs_spec[1]), (rhs, spec.rhs_spec[1])))
