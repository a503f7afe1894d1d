r"""The diagonally preconditioned proximal subproblem, shared by every adaptive method.

RAMDA, ProxGen (``prox_adamw``) and ProxSSI all need, at every step,

.. math::

   z^\star = \arg\min_z\; \theta(z) = \tfrac12 z^\top D z - b^\top z
             + t\,\lambda\,\psi(z),

with ``D >= 0`` diagonal (a pytree like the params). This is the same as
``<v, z - x0> + 1/2 <z - x0, D (z - x0)> + t lambda psi(z)`` with
``b = D x0 - v``; writing it with ``b`` avoids dividing by ``D``.
:func:`lay_out` places it on the regularizer's terms; the solvers
(:mod:`rmda_jax.prox.exact`, :mod:`rmda_jax.prox.inexact`) report a
:class:`SolverInfo`.

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> from rmda_jax.prox import subproblem
  >>> b = {"w": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  >>> d = {"w": jnp.ones((2, 2)), "bias": jnp.full(2, 2.0)}
  >>> placement, diags, thresholds, unregularized = subproblem.lay_out(rmda_jax.l1(0.5), b, d, 1.0)
  >>> [float(t) for t in thresholds], unregularized[0].tolist()   # bias: b / D
  ([0.5], [0.5, 0.5])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import numerics

if TYPE_CHECKING:
  from rmda_jax.prox.regularizer import Placement, Regularizer

Array = jax.Array


class SolverInfo(NamedTuple):
  """What the last subproblem solve did.

  Attributes:
    iterations: int32, inner iterations used (Newton iterations for the exact
      group-LASSO solver, 0 for closed forms, proximal-gradient iterations for
      the inexact solver).
    residual: float32. The inexact solver (and the exact one with
      ``certify=True``): ``||xi||_2`` with ``xi`` in the subdifferential of
      the subproblem objective at the returned point (0 means optimal).
      The exact solver: the secular equation's ``max_g |f(r_g) - 1|`` at the
      last Newton evaluation; the returned root is one Newton step further,
      and its misfit is no larger (see :func:`rmda_jax.prox.secular.group_lasso_secular`).
  """

  iterations: Array
  residual: Array


def empty_info() -> SolverInfo:
  """A :class:`SolverInfo` of no solve (0 iterations, residual 0)."""
  return SolverInfo(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))


def unregularized_solution(b: Array, diag: Array, anchor: Array | None = None) -> Array:
  """``b / D``; where ``D == 0`` (then ``b == 0`` in a bounded problem) any point is optimal.

  ``anchor`` (default 0) is returned there.
  """
  if anchor is None:
    return numerics.safe_divide(b, diag)
  return jnp.where(diag > 0, numerics.safe_divide(b, diag), anchor)


def lay_out(
  regularizer: Regularizer,
  b: optax.Params,
  diag: optax.Params,
  scale: Any,
  anchor: optax.Params | None = None,
) -> tuple[Placement, list[Any], list[Array], list[Array]]:
  """The subproblem on the regularizer's terms.

  Returns:
    ``(placement, diags, thresholds, solution)``: the terms laid on ``b``,
    the leaves of ``diag``, per term its ``tau = scale * lambda`` (the scale
    of its first leaf, in that leaf's dtype), and per leaf the unregularized
    solution ``b / D`` (the answer on every leaf no term reads).
  """
  placement = regularizer.place(b)
  diags = placement.flatten(diag)
  anchors = [None] * len(diags) if anchor is None else placement.flatten(anchor)
  scales = regularizer.leaf_scales(scale, placement)
  solution = [unregularized_solution(*args) for args in zip(placement.leaves, diags, anchors)]
  thresholds = [
    jnp.asarray(scales[t.leaves[0]], placement.leaves[t.leaves[0]].dtype) * regularizer.strength
    for t in placement.terms
  ]
  return placement, diags, thresholds, solution
