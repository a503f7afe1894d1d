"""Control flow in discovery: the primitives that run a nested jaxpr, and how to find it.

A call primitive (``pjit``, ``custom_jvp_call`` / ``custom_vjp_call`` such as
``gelu``, ``remat`` / ``checkpoint``, ``closed_call``) runs a nested jaxpr
once. Both passes enter it the same way (:meth:`DimensionGraph.call
<rmda_jax.structure.discovery.graph.DimensionGraph.call>`,
:meth:`Exits.call <rmda_jax.structure.discovery.exits.Exits.call>`): its
inputs are bound to the operands' dimensions, zero sets and parameter views,
and its outputs to the nested results'. Each call gets its own scope, so a
jaxpr called twice (two layers sharing one function) has two sets of
dimensions. A call primitive whose nested jaxpr does not match its operands
is treated as unknown.
"""

from __future__ import annotations

from typing import Any

from jax.extend import core as jcore

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
