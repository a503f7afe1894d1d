r"""Choosing and running the subproblem solver of the adaptive methods.

RAMDA, ProxGen (``prox_adamw``) and ProxSSI solve, at every step, the
subproblem of :mod:`rmda_jax.prox.subproblem`; the ``solver`` argument of
those optimizers picks how:

* ``"exact"`` / :class:`~rmda_jax.prox.exact.Exact`: closed forms (no
  regularizer, L1 / elastic net, discrete sets) and exact secular-equation
  root finding for group-LASSO (:mod:`rmda_jax.prox.exact`);
* ``"pgd"`` / :class:`~rmda_jax.prox.inexact.ProximalGradient`: the inexact
  proximal-gradient solver for any regularizer with a plain prox (nuclear
  norm, user-defined penalties; :mod:`rmda_jax.prox.inexact`);
* ``"auto"``: the exact solver where the regularizer has one, else the
  inexact one.

Both report a :class:`~rmda_jax.prox.subproblem.SolverInfo` (iterations
used, final residual) that the optimizers keep in their state.

References:
  Huang & Lee, "Regularized Adaptive Momentum Dual Averaging with an Efficient
  Inexact Subproblem Solver for Training Structured Neural Networks",
  NeurIPS 2024, arXiv:2403.14398.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from rmda_jax.core import numerics
from rmda_jax.prox.exact import Exact, solve_exact
from rmda_jax.prox.inexact import ProximalGradient, solve_proximal_gradient
from rmda_jax.prox.regularizer import Regularizer
from rmda_jax.prox.subproblem import SolverInfo, empty_info, unregularized_solution

Solver = Exact | ProximalGradient
SOLVER_NAMES = ("auto", "exact", "pgd")


def make_solver(spec: str | Solver, regularizer: Regularizer | None) -> Solver:
  """Turn ``"auto" | "exact" | "pgd" | Exact(...) | ProximalGradient(...)`` into a solver.

  ``"auto"`` is :class:`~rmda_jax.prox.exact.Exact` where the regularizer has
  an exact diagonal-metric prox (L1, elastic net, group-LASSO, discrete sets)
  and :class:`~rmda_jax.prox.inexact.ProximalGradient` otherwise (nuclear
  norm, custom penalties).

  Raises:
    ValueError: an unknown solver, or the exact one for a regularizer that has none.
  """
  if isinstance(spec, (Exact, ProximalGradient)):
    solver = spec
  elif spec == "auto":
    if regularizer is None or regularizer.has_exact_diag_prox:
      solver = Exact()
    else:
      solver = ProximalGradient()
  elif spec == "exact":
    solver = Exact()
  elif spec == "pgd":
    solver = ProximalGradient()
  else:
    raise ValueError(
      f"solver must be 'auto', 'exact', 'pgd', rmda_jax.prox.Exact(...) or "
      f"rmda_jax.prox.ProximalGradient(...), got {spec!r}."
    )
  if isinstance(solver, Exact) and regularizer is not None and not regularizer.has_exact_diag_prox:
    raise ValueError(
      f"solver: {type(regularizer).__name__} has no exact diagonal-metric prox; "
      "use solver='pgd' (or 'auto')."
    )
  return solver


def solve(
  regularizer: Regularizer | None,
  b: optax.Params,
  diag: optax.Params,
  scale: Any,
  init: optax.Params | None = None,
  solver: Solver | None = None,
  count: jax.Array | None = None,
  anchor: optax.Params | None = None,
) -> tuple[optax.Params, SolverInfo]:
  """Solve ``min_z 1/2 z^T D z - b^T z + scale * lambda * psi(z)`` over a pytree.

  Args:
    regularizer: a rmda_jax regularizer, or None (then ``z = b / D``).
    b: the linear term, a pytree like the params.
    diag: the diagonal metric ``D >= 0``, a pytree like ``b``.
    scale: scalar or per-leaf pytree multiplying the regularizer's strength.
    init: warm start (e.g. the previous solution) for the inexact solver and
      the group-LASSO root finder.
    solver: :class:`~rmda_jax.prox.exact.Exact` or
      :class:`~rmda_jax.prox.inexact.ProximalGradient`; None picks as
      :func:`make_solver` with ``"auto"``.
    count: the optimizer's step count, for a tolerance schedule.
    anchor: for unregularized leaves, the value where ``D == 0`` (the
      problem does not depend on those coordinates); default 0.

  Returns:
    ``(z, SolverInfo)``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> reg = rmda_jax.l1(1.0)
    >>> b = {"w": jnp.array([[3.0, 0.5]])}; d = {"w": jnp.array([[2.0, 1.0]])}
    >>> z, info = rmda_jax.prox.solve(reg, b, d, scale=1.0)
    >>> [float(v) for v in z["w"][0]]   # soft(b, 1) / D
    [1.0, 0.0]
  """
  if regularizer is None:
    if anchor is None:
      return jax.tree_util.tree_map(unregularized_solution, b, diag), empty_info()
    return jax.tree_util.tree_map(unregularized_solution, b, diag, anchor), empty_info()
  solver = make_solver("auto", regularizer) if solver is None else solver
  if isinstance(solver, Exact):
    return solve_exact(
      regularizer, b, diag, scale, solver.max_iters, solver.rtol, anchor, solver.certify, init
    )
  start = jax.tree_util.tree_map(numerics.safe_divide, b, diag) if init is None else init
  return solve_proximal_gradient(regularizer, b, diag, scale, start, solver, count, anchor)
