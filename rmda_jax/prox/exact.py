r"""The exact diagonal-metric prox: closed forms, and the secular equation for group-LASSO.

.. math::

   z^\star = \arg\min_z \tfrac12 z^\top D z - b^\top z + t\lambda\psi(z)

in closed form where one exists (no regularizer: ``z = b / D``; L1 / elastic
net: a coordinate-wise soft threshold; discrete sets: the nearest allowed
value) and by exact per-group root finding for group-LASSO
(:func:`rmda_jax.prox.secular.group_lasso_secular`).

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> from rmda_jax.prox.exact import solve_exact
  >>> b, d = {"w": jnp.array([[3.0, 0.5]])}, {"w": jnp.array([[2.0, 1.0]])}
  >>> z, info = solve_exact(rmda_jax.l1(1.0), b, d, 1.0)
  >>> z["w"].tolist(), int(info.iterations)   # soft(b, 1) / D
  ([[1.0, 0.0]], 0)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from rmda_jax.core import checks
from rmda_jax.prox import inexact
from rmda_jax.prox.regularizer import Regularizer
from rmda_jax.prox.subproblem import SolverInfo, empty_info


@dataclasses.dataclass(frozen=True)
class Exact:
  """Closed forms, and exact secular-equation root finding for group-LASSO.

  Attributes:
    max_iters: cap on the Newton iterations (an integer >= 1).
    rtol: stop a group when the Newton step is below ``rtol * r``; None means
      ``sqrt(machine epsilon)`` of the compute dtype (quadratic convergence
      leaves an error at the epsilon level).
    certify: apply one proximal-gradient step to the solution and report its
      subgradient certificate as the residual (costs about one more prox);
      otherwise the residual is the secular equation's ``max_g |f(r_g) - 1|``
      at the last Newton evaluation (a bound on the returned root's).
  """

  max_iters: int = 50
  rtol: float | None = None
  certify: bool = False

  def __post_init__(self) -> None:
    checks.check_integer(self.max_iters, "Exact.max_iters")
    if self.rtol is not None:
      checks.check_scalar(self.rtol, "Exact.rtol", low=0.0, low_open=True)


def solve_exact(
  regularizer: Regularizer,
  b: optax.Params,
  diag: optax.Params,
  scale: Any,
  max_iters: int = 50,
  rtol: float | None = None,
  anchor: optax.Params | None = None,
  certify: bool = False,
  init: optax.Params | None = None,
) -> tuple[optax.Params, SolverInfo]:
  """Exact solve: closed forms, or the secular equation for group-LASSO.

  Args:
    regularizer: a regularizer with an exact diagonal-metric prox.
    b: the linear term, a pytree like the params.
    diag: the diagonal metric ``D >= 0``, a pytree like ``b``.
    scale: scalar or per-leaf pytree multiplying the regularizer's strength.
    max_iters: the cap on the Newton iterations.
    rtol: their relative tolerance (None: ``sqrt(eps)`` of the dtype).
    anchor: for unregularized leaves, the value where ``D == 0``; default 0.
    certify: report one proximal-gradient step's subgradient certificate as
      the residual (as :class:`~rmda_jax.prox.inexact.ProximalGradient` does).
    init: warm start of iterative solutions (e.g. the previous solution).

  Returns:
    ``(z, SolverInfo)`` with ``z`` a pytree like ``b``. The residual is the
    secular equation's (0 for closed forms), or the certificate.
  """
  placement, diags, thresholds, out = regularizer.lay_out(b, diag, scale, anchor)
  if not placement.terms:
    return placement.unflatten(out), empty_info()
  inits = None
  if init is not None:
    init_leaves = placement.flatten(init)
    inits = [[jnp.asarray(init_leaves[i]) for i in term.leaves] for term in placement.terms]
  term_zs, iterations, residual = regularizer.terms_prox_diag(
    [placement.gather(placement.leaves, t) for t in placement.terms],
    [placement.gather(diags, t) for t in placement.terms],
    thresholds,
    [t.rule for t in placement.terms],
    max_iters=max_iters,
    rtol=rtol,
    inits=inits,
  )
  zs = {i: z for term, z_term in zip(placement.terms, term_zs) for i, z in zip(term.leaves, z_term)}
  if certify:
    etas, d_maxs = inexact.step_sizes(regularizer, placement, diags)
    masks = inexact.screening_masks(regularizer, placement, thresholds)
    zs, residual = inexact.prox_gradient_step(
      regularizer, placement, diags, thresholds, zs, etas, d_maxs, masks
    )
  for i, z in zs.items():
    out[i] = z
  return placement.unflatten(out), SolverInfo(iterations, residual.astype(jnp.float32))
