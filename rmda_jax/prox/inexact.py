r"""The inexact proximal-gradient solver of the subproblem, for any regularizer with a prox.

.. math::

   z \leftarrow \mathrm{prox}_{\eta_g t \psi}\big(z - \eta_g (D z - b)\big),
   \qquad \eta_g = 1 / \max_{i \in g} D_i,

as ONE ``lax.while_loop`` over every term of the tree: warm started, with
the groups that screening proves zero fixed at zero first, until the
certificate ``||xi|| <= tol`` or ``max_iters``. ``xi = (1/eta - D)(z - z+)``
is an element of ``d theta(z+)`` at the returned point
``z+ = prox_{eta t psi}(z - eta grad q(z))`` (Huang & Lee 2024, the measurable
inexactness condition), so ``dist(0, d theta(z+)) <= ||xi||``.

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> from rmda_jax.prox.inexact import ProximalGradient, solve_proximal_gradient
  >>> b, d = {"w": jnp.diag(jnp.array([3.0, 0.5]))}, {"w": jnp.ones((2, 2))}
  >>> reg = rmda_jax.nuclear_norm(1.0)
  >>> z, info = solve_proximal_gradient(reg, b, d, 1.0, b, ProximalGradient())
  >>> [round(float(v), 4) for v in jnp.diag(z["w"])], float(info.residual) <= 1e-5
  ([2.0, 0.0], True)

References:
  Huang & Lee, "Regularized Adaptive Momentum Dual Averaging with an Efficient
  Inexact Subproblem Solver for Training Structured Neural Networks",
  NeurIPS 2024, arXiv:2403.14398.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, numerics
from rmda_jax.prox.regularizer import Placement, Regularizer
from rmda_jax.prox.subproblem import SolverInfo, empty_info

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ProximalGradient:
  """The inexact proximal-gradient subproblem solver.

  Iterates ``z <- prox_{eta_g t psi}(z - eta_g (D z - b))`` with per-block
  step ``eta_g = 1/max_{i in g} D_i`` from a warm start, after fixing the
  groups that screening proves zero, until ``||xi|| <= tol`` or ``max_iters``.

  Attributes:
    max_iters: cap on the iterations (an integer >= 1); the reference uses 100.
    tol: tolerance on the subgradient norm ``||xi||_2``: a float > 0 or an
      optax schedule of the optimizer's step count (e.g. decaying to 0 as
      the theory asks).
    min_iters: iterations always run (an integer >= 1); 2 reproduces the reference.
  """

  max_iters: int = 100
  tol: optax.ScalarOrSchedule = 1e-5
  min_iters: int = 1

  def __post_init__(self) -> None:
    checks.check_integer(self.max_iters, "ProximalGradient.max_iters")
    checks.check_integer(self.min_iters, "ProximalGradient.min_iters")
    if not callable(self.tol):
      checks.check_scalar(self.tol, "ProximalGradient.tol", low=0.0, low_open=True)

  def tolerance(self, count: chex.Numeric) -> Array:
    """The tolerance at step ``count``, float32."""
    return jnp.asarray(self.tol(count) if callable(self.tol) else self.tol, jnp.float32)


def step_sizes(
  regularizer: Regularizer, placement: Placement, diags: list[Any]
) -> tuple[list[tuple[Array, list[Array]]], dict[int, Array]]:
  """Per term ``(eta per group, [eta per member])``; per leaf its blocks' ``max D``."""
  etas, d_maxs = [], {}
  for term in placement.terms:
    group_max, maxes = regularizer.term_block_max(placement.gather(diags, term), term.rule)
    member_etas = [numerics.safe_divide(jnp.ones_like(m), m) for m in maxes]
    for i, m in zip(term.leaves, maxes):
      d_maxs[i] = m
    etas.append((numerics.safe_divide(jnp.ones_like(group_max), group_max), member_etas))
  return etas, d_maxs


def screening_masks(
  regularizer: Regularizer, placement: Placement, thresholds: list[Array]
) -> dict[int, Array | None]:
  """Per regularized leaf, a mask of the entries that may be nonzero at the optimum (or None)."""
  masks: dict[int, Array | None] = {i: None for t in placement.terms for i in t.leaves}
  for term, tau in zip(placement.terms, thresholds):
    term_masks = regularizer.term_screen(placement.gather(placement.leaves, term), tau, term.rule)
    if term_masks is not None:
      for i, m in zip(term.leaves, term_masks):
        masks[i] = m
  return masks


def prox_gradient_step(
  regularizer: Regularizer,
  placement: Placement,
  diags: list[Any],
  thresholds: list[Array],
  zs: dict[int, Array],
  etas: list[tuple[Array, list[Array]]],
  d_maxs: dict[int, Array],
  masks: dict[int, Array | None],
) -> tuple[dict[int, Array], Array]:
  """One step ``z+ = prox(z - eta (D z - b))`` on every term, and its certificate ``||xi||``."""
  new_zs, sq = dict(zs), jnp.zeros((), jnp.float32)
  bs = placement.leaves
  for term, tau, (eta_group, member_etas) in zip(placement.terms, thresholds, etas):
    ys = [zs[i] - eta * (diags[i] * zs[i] - bs[i]) for i, eta in zip(term.leaves, member_etas)]
    z_plus = regularizer.term_prox(ys, eta_group * tau, term.rule)
    for i, zp in zip(term.leaves, z_plus):
      mask = masks[i]
      if mask is not None:
        zp = jnp.where(mask, zp, 0)
      xi = (d_maxs[i] - diags[i]) * (zs[i] - zp)
      sq = sq + jnp.sum(jnp.square(xi)).astype(jnp.float32)
      new_zs[i] = zp
  return new_zs, jnp.sqrt(sq)


def solve_proximal_gradient(
  regularizer: Regularizer,
  b: optax.Params,
  diag: optax.Params,
  scale: Any,
  init: optax.Params,
  solver: ProximalGradient,
  count: Array | None = None,
  anchor: optax.Params | None = None,
) -> tuple[optax.Params, SolverInfo]:
  """The inexact solver: ONE ``lax.while_loop`` over every regularized leaf.

  Args:
    regularizer: any rmda_jax regularizer.
    b: the linear term, a pytree like the params.
    diag: the diagonal metric ``D >= 0``, a pytree like ``b``.
    scale: scalar or per-leaf pytree multiplying the regularizer's strength.
    init: the warm start, a pytree like ``b``.
    solver: the :class:`ProximalGradient` settings.
    count: the optimizer's step count, for a tolerance schedule.
    anchor: for unregularized leaves, the value where ``D == 0``; default 0.

  Returns:
    ``(z, SolverInfo)``; ``z`` satisfies ``dist(0, d theta(z)) <=
    SolverInfo.residual``, which is ``<= tol`` unless ``max_iters`` was hit.
  """
  placement, diags, thresholds, out = regularizer.lay_out(b, diag, scale, anchor)
  if not placement.terms:
    return placement.unflatten(out), empty_info()
  init_leaves = placement.flatten(init)
  etas, d_maxs = step_sizes(regularizer, placement, diags)
  masks = screening_masks(regularizer, placement, thresholds)
  zs0 = {}
  for i, mask in masks.items():
    z0 = jnp.asarray(init_leaves[i], placement.leaves[i].dtype)
    zs0[i] = z0 if mask is None else jnp.where(mask, z0, 0)
  tol = solver.tolerance(jnp.zeros((), jnp.int32) if count is None else count)

  def cond(carry: tuple[dict[int, Array], Array, Array]) -> Array:
    _, it, residual = carry
    return (it < solver.max_iters) & ((it < solver.min_iters) | (residual > tol))

  def body(carry: tuple[dict[int, Array], Array, Array]) -> tuple[dict[int, Array], Array, Array]:
    zs, it, _ = carry
    zs, residual = prox_gradient_step(
      regularizer, placement, diags, thresholds, zs, etas, d_maxs, masks
    )
    return zs, it + 1, residual

  carry = (zs0, jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, jnp.float32))
  zs, iterations, residual = jax.lax.while_loop(cond, body, carry)
  for i, z in zs.items():
    out[i] = z
  return placement.unflatten(out), SolverInfo(iterations, residual)
