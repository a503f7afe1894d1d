r"""The diagonally preconditioned proximal subproblem, shared by every adaptive method.

RAMDA, ProxGen (``prox_adamw``) and ProxSSI all need, at every step,

.. math::

   z^\star = \arg\min_z\; \theta(z) = \tfrac12 z^\top D z - b^\top z
             + t\,\lambda\,\psi(z),

with ``D >= 0`` diagonal (a pytree like the params). This is the same as
``<v, z - x0> + 1/2 <z - x0, D (z - x0)> + t lambda psi(z)`` with
``b = D x0 - v``; writing it with ``b`` avoids dividing by ``D``.
:meth:`Regularizer.lay_out <rmda_jax.prox.Regularizer.lay_out>` places it
on the regularizer's terms; the solvers (:mod:`rmda_jax.prox.exact`,
:mod:`rmda_jax.prox.inexact`) report a :class:`SolverInfo`.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.prox.subproblem import unregularized_solution
  >>> b, d = jnp.array([1.0, 0.0]), jnp.array([2.0, 0.0])
  >>> unregularized_solution(b, d).tolist()   # b / D, and 0 where D = 0
  [0.5, 0.0]
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from rmda_jax.core import numerics

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
