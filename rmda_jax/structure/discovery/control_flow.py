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

Loops and branches (:data:`CONTROL`) have rules of their own in both passes:
a ``scan`` body is entered once for all iterations, its carry tied across
them, and :class:`Loop` records where its body lives and its iteration axis;
a ``while`` loop's body and condition read the carry the same way (pass 2
iterates the carry's zero sets to a fixed point); every branch of a ``cond``
reads the operands and gives the results.
"""

from __future__ import annotations

import dataclasses
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


#: Loops and branches, whose bodies both passes follow with their own rules.
CONTROL = frozenset({"scan", "while", "cond"})


@dataclasses.dataclass(frozen=True)
class ScanParts:
  """A ``scan`` equation taken apart.

  ``body`` reads ``consts, carry, xs slices`` and returns ``carry, ys
  slices``; the equation reads ``consts, carry init, xs`` (stacked along axis
  0, ``length`` long) and returns ``carry final, ys`` (stacked).
  """

  body: jcore.Jaxpr
  consts: list[Any]
  carry: list[Any]
  xs: list[Any]
  length: int

  @property
  def body_consts(self) -> list[Any]:
    """The body's variables bound to the consts."""
    return self.body.invars[: len(self.consts)]

  @property
  def body_carry(self) -> list[Any]:
    """The body's variables bound to the carry."""
    return self.body.invars[len(self.consts) : len(self.consts) + len(self.carry)]

  @property
  def body_xs(self) -> list[Any]:
    """The body's variables bound to one slice of each ``xs``."""
    return self.body.invars[len(self.consts) + len(self.carry) :]


def scan_parts(eqn: Any) -> ScanParts:
  """The parts of a ``scan`` equation."""
  p = eqn.params
  n_consts, n_carry = p["num_consts"], p["num_carry"]
  ins = list(eqn.invars)
  return ScanParts(
    p["jaxpr"].jaxpr,
    ins[:n_consts],
    ins[n_consts : n_consts + n_carry],
    ins[n_consts + n_carry :],
    int(p["length"]),
  )


@dataclasses.dataclass(frozen=True)
class WhileParts:
  """A ``while`` equation taken apart: ``cond`` and ``body`` over the carry, with their consts."""

  cond: jcore.Jaxpr
  body: jcore.Jaxpr
  cond_consts: list[Any]
  body_consts: list[Any]
  carry: list[Any]


def while_parts(eqn: Any) -> WhileParts:
  """The parts of a ``while`` equation (``fori_loop`` with traced bounds is one)."""
  p = eqn.params
  n_cond, n_body = p["cond_nconsts"], p["body_nconsts"]
  ins = list(eqn.invars)
  return WhileParts(
    p["cond_jaxpr"].jaxpr,
    p["body_jaxpr"].jaxpr,
    ins[:n_cond],
    ins[n_cond : n_cond + n_body],
    ins[n_cond + n_body :],
  )


def cond_branches(eqn: Any) -> list[jcore.Jaxpr]:
  """The branches of a ``cond`` equation (``lax.cond``, ``lax.switch``).

  Each reads the operands after the branch index.
  """
  return [branch.jaxpr for branch in eqn.params["branches"]]


@dataclasses.dataclass(frozen=True)
class Loop:
  """A scan that pass 1 went through: where its body lives and what its iterations are.

  Attributes:
    scope: the scope of its body.
    iteration: the atom of its iteration axis (axis 0 of every ``xs`` and
      ``ys``), or None for a scan of length 1.
    length: its number of iterations.
  """

  scope: tuple[Any, ...]
  iteration: int | None
  length: int
