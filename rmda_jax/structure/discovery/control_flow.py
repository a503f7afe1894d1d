"""Control flow in discovery: how both passes enter nested jaxprs.

A call primitive (``pjit``, ``custom_jvp_call`` / ``custom_vjp_call`` such as
``gelu``, ``remat`` / ``checkpoint``, ``closed_call``) runs a nested jaxpr
once: its inputs are bound to the operands' dimensions, zero sets and
parameter views, and its outputs to the nested results'. Each call gets its
own scope, so a jaxpr called twice (two layers sharing one function) has two
sets of dimensions. A call primitive whose nested jaxpr does not match its
operands is treated as unknown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jax.extend import core as jcore

if TYPE_CHECKING:
  from rmda_jax.structure.discovery.exits import Exits
  from rmda_jax.structure.discovery.graph import DimensionGraph


CALLS = frozenset(
  {
    "pjit",
    "jit",
    "closed_call",
    "core_call",
    "custom_jvp_call",
    "custom_vjp_call",
    "custom_vjp_call_jaxpr",
    "remat",
    "checkpoint",
    "remat2",
    "custom_lin",
    "named_call",
  }
)


def inner_jaxpr(eqn: Any) -> jcore.Jaxpr | jcore.ClosedJaxpr | None:
  """The nested jaxpr of a call equation, or None when it has none that fits its operands."""
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    inner = eqn.params.get(key)
    if isinstance(inner, (jcore.Jaxpr, jcore.ClosedJaxpr)):
      jaxpr = inner.jaxpr if isinstance(inner, jcore.ClosedJaxpr) else inner
      if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
        return inner
  return None


def nested(eqn: Any) -> jcore.Jaxpr | None:
  """The open jaxpr a call equation runs, or None where it has none that fits."""
  inner = inner_jaxpr(eqn)
  if inner is None:
    return None
  return inner.jaxpr if isinstance(inner, jcore.ClosedJaxpr) else inner


def link_call(graph: DimensionGraph, eqn: Any) -> None:
  """Pass 1: link a call's operands and results to its nested jaxpr's, inside a scope of its own."""
  jaxpr = nested(eqn)
  if jaxpr is None:
    return graph.unknown_primitive(eqn)
  ins, outs = eqn.invars, eqn.outvars
  outer_axes = [None if isinstance(v, jcore.Literal) else graph.axes(v) for v in ins]
  graph.scope = graph.scope + (id(eqn),)
  for axes, var in zip(outer_axes, jaxpr.invars):
    graph.define(var, axes if axes is not None else graph.fresh(var.aval))
  for var in jaxpr.constvars:
    graph.axes(var)
  graph.run(jaxpr)
  inner_axes = [
    graph.fresh(v.aval) if isinstance(v, jcore.Literal) else graph.axes(v) for v in jaxpr.outvars
  ]
  graph.scope = graph.scope[:-1]
  for outer, axes in zip(outs, inner_axes):
    graph.define(outer, axes)


def follow_call(exits: Exits, eqn: Any) -> None:
  """Pass 2: carry zero sets and parameter views into a call's nested jaxpr and back."""
  jaxpr = nested(eqn)
  ins, outs = eqn.invars, eqn.outvars
  if jaxpr is None:  # unknown to pass 1: its results carry fresh dimensions, zero nowhere
    for v in outs:
      exits.set_zero(v, set())
    return
  outer_zero = [exits.zset(v) for v in ins]
  outer_views = [exits.view_of(v) for v in ins]
  exits.g.scope = exits.g.scope + (id(eqn),)
  for var, zeros, view in zip(jaxpr.invars, outer_zero, outer_views):
    exits.zero[(exits.g.scope, var)] = zeros
    exits.set_view(var, view)
  exits.run(jaxpr)
  inner_zero = [exits.zset(v) for v in jaxpr.outvars]
  inner_views = [exits.view_of(v) for v in jaxpr.outvars]
  exits.g.scope = exits.g.scope[:-1]
  for outer, zeros, view in zip(outs, inner_zero, inner_views):
    exits.set_zero(outer, zeros)
    exits.set_view(outer, view)
