r"""The exact diagonal-metric prox of group-LASSO: one secular equation per group.

For every group ``g`` of a :class:`~rmda_jax.core.layout.GroupLayout`,

.. math::

   z_g = \arg\min_z \tfrac12 z^\top D z - b^\top z + \tau_g \|z\|_2

is zero iff ``||b_g|| <= tau_g``; otherwise ``z_i = r b_i / (D_i r + tau)``
with ``r = ||z_g||`` the root of ``f(r) = ||b_g / (D_g r + tau)|| = 1``, found
by a safeguarded Newton iteration, vectorised over all groups of a layout.
RAMDA, ProxGen and ProxSSI use it for group-LASSO through
:func:`rmda_jax.prox.exact.solve_exact`.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.core import GroupLayout, GroupRule
  >>> from rmda_jax.prox.secular import group_lasso_secular
  >>> b, d = jnp.array([[3.0, 4.0], [0.1, 0.1]]), jnp.ones((2, 2))
  >>> layout = GroupLayout.of_rule(b.shape, GroupRule((1,)), 1.0)
  >>> zs, iterations, residual = group_lasso_secular([[b]], [[d]], [jnp.float32(1.0)], [layout])
  >>> z = zs[0][0]
  >>> [round(v, 4) for v in z[0].tolist()], z[1].tolist()   # shrunk by 1 - 1/5; below tau
  ([2.4, 3.2], [0.0, 0.0])

References:
  Deleu & Bengio, "Structured Sparsity Inducing Adaptive Optimizers for Deep
  Learning", 2021, arXiv:2102.03869 (the secular equation).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmda_jax.core import numerics
from rmda_jax.core.layout import GroupLayout

Array = jax.Array


def group_lasso_secular(
  bs: list[list[Array]],
  diags: list[list[Array]],
  thresholds: list[Any],
  layouts: list[GroupLayout],
  max_iters: int = 50,
  rtol: float | None = None,
  inits: list[Any] | None = None,
) -> tuple[list[list[Array]], Array, Array]:
  """Exact ``argmin_z 1/2 z^T D z - b^T z + tau_g ||z_g||`` for every group of every layout.

  A layout (:class:`~rmda_jax.core.layout.GroupLayout`) is a leaf under a
  per-leaf rule or a family of coupled groups spanning several leaves; a group's norm and
  the sums below run over all of its slices. Per group, ``z = 0`` iff
  ``||b_g|| <= tau_g`` (screening). Otherwise ``z_i = r b_i / (D_i r + tau)``
  where ``r = ||z_g|| > 0`` is the unique root of
  ``f(r) = ||b_g / (D_g r + tau)|| = 1``. Newton runs on ``h(r) = 1/f(r) - 1``,
  which is increasing and concave, so from ``r0 = (||b|| - tau)/max D`` (where
  ``h <= 0``) the iterates increase monotonically to the root; it is exact in
  one step when ``D`` is constant on the group. Since a Newton step of a
  concave function from *any* point lands left of the root, a warm start (the
  group norms of the previous solution, ``inits``) is just as safe and
  usually one or two steps from the answer. Iterates are clamped to the
  bracket ``[(||b|| - tau)/max D, (||b|| - tau)/min D]``. Each layout has its
  own ``lax.while_loop``, which stops when every group of the layout has a
  step below ``rtol * r`` or ``f(r)`` within 8 ulps of 1 (where an
  ill-conditioned group's step is rounding noise), or after ``max_iters``.
  A group with a non-finite entry
  of ``b`` comes back NaN (it is not taken for a zero group).

  Args:
    bs: per layout, the list of its members' arrays ``b``.
    diags: per layout, the list of its members' metrics ``D >= 0``.
    thresholds: per layout, ``tau`` (a scalar or an array of the layout's
      group shape).
    layouts: the :class:`~rmda_jax.core.layout.GroupLayout` of each entry.
    max_iters: cap on the Newton iterations.
    rtol: relative step below which a group has converged; None means
      ``sqrt(eps)`` of the dtype (convergence is quadratic, so the error left
      is at the ``eps`` level).
    inits: optional warm starts (like ``bs``, or None per layout).

  Returns:
    ``(zs, iterations, residual)``: the solutions (like ``bs``), the Newton
    iterations used, and ``max_g |f(r_g) - 1|`` at the last Newton
    evaluation (the relative residual of the secular equation; 0 when every
    group is screened or unregularized). The returned root is one Newton step
    further. After the first step the iterates increase monotonically to the
    root and ``f`` decreases to 1 along them, so the returned root's misfit
    ``| ||z_g|| / r_g - 1 |`` is no larger than the one reported (in practice
    about its square); when the loop stops at its first evaluation, a warm
    start right of the root, the returned root's misfit is second order in
    the reported one. Evaluating it exactly would cost one more pass over the
    entries, as much as an iteration.
  """
  if not bs:
    return [], jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)
  dtype = bs[0][0].dtype
  tol = float(np.sqrt(np.finfo(dtype).eps)) if rtol is None else rtol
  f_noise = 8 * float(np.finfo(dtype).eps)
  inits = [None] * len(bs) if inits is None else inits

  # The bracket statistics are separate reductions of stored arrays (XLA:CPU
  # runs those as vectorized kernels); the Newton sums, whose terms depend on
  # the iterate, are one variadic reduction per pass (GroupLayout.reduce_many) that
  # XLA fuses with the expressions feeding it, so the terms are never stored.
  prepared, starts = [], []
  for b, d, tau, layout, init in zip(bs, diags, thresholds, layouts, inits):
    stats = [layout.sum([jnp.square(x) for x in b]), layout.max(d), layout.min(d)]
    if init is not None:
      stats.append(layout.sum([jnp.square(x.astype(dtype)) for x in init]))
    b_norm, d_max, d_min = jnp.sqrt(stats[0]), stats[1], stats[2]
    tau = jnp.broadcast_to(jnp.asarray(tau, dtype), b_norm.shape)
    active = (b_norm > tau) & (tau > 0) & (d_max > 0)
    excess = jnp.where(active, b_norm - tau, 0)
    r_lo = numerics.safe_divide(excess, d_max)
    r_hi = jnp.where(d_min > 0, numerics.safe_divide(excess, d_min), jnp.inf)
    spread = functools.partial(_spread, layout)
    prepared.append((b, d, tau, layout, active, r_lo, r_hi, spread, ~jnp.isfinite(b_norm)))
    start = r_lo if init is None else jnp.clip(jnp.sqrt(stats[3]), r_lo, r_hi)
    starts.append(jnp.where(active, start, 0))

  def secular_sums(r, b, d, tau, layout, active, spread):
    """``f(r)^2 = sum b^2 inv^2`` and ``sum b^2 D inv^3``, ``inv = 1/(D r + tau)``, in one pass."""
    r_m, tau_m, act_m = (
      spread(jnp.where(active, r, 0)),
      spread(jnp.where(active, tau, 1)),
      spread(active),
    )
    invs = [1 / jnp.where(a, dm * rm + tm, 1) for dm, rm, tm, a in zip(d, r_m, tau_m, act_m)]
    terms = [jnp.square(x * inv) for x, inv in zip(b, invs)]
    return layout.reduce_many(
      ["sum", "sum"], [terms, [t * dm * inv for t, dm, inv in zip(terms, d, invs)]]
    )

  def newton(r, prep):
    # The Newton step on 1/f - 1 is f^2 (f - 1) / sum(b^2 D inv^3).
    b, d, tau, layout, active, r_lo, r_hi, spread, _ = prep
    f2, slope = secular_sums(r, b, d, tau, layout, active, spread)
    f = jnp.sqrt(f2)
    step = numerics.safe_divide(f2 * (f - 1), slope)
    r_new = jnp.where(active, jnp.clip(r + step, r_lo, r_hi), 0)
    gap = jnp.abs(f - 1)
    # f within a few ulps of 1 is solved as far as the dtype can tell: in an
    # ill-conditioned group the step is then rounding noise, larger than
    # tol * r, and would alternate in sign forever
    done = jnp.all((jnp.abs(r_new - r) <= tol * r_new) | (gap <= f_noise))
    return r_new, done, jnp.max(jnp.where(active, gap, 0), initial=0)

  def cond(carry):
    _, it, done, _ = carry
    return (it < max_iters) & ~done

  # One loop per layout, each stopping when its own groups have converged, so
  # a layout that converges early takes no more passes over its entries.
  rs, iterations, residual = [], jnp.zeros((), jnp.int32), jnp.zeros((), dtype)
  for start, prep in zip(starts, prepared):

    def body(carry, prep=prep):
      r, it, _, _ = carry
      r, done, misfit = newton(r, prep)
      return r, it + 1, done, misfit

    r, its, _, misfit = jax.lax.while_loop(
      cond, body, (start, jnp.zeros((), jnp.int32), jnp.zeros((), bool), jnp.zeros((), dtype))
    )
    rs.append(r)
    iterations = jnp.maximum(iterations, its)
    residual = jnp.maximum(residual, misfit)

  zs = []
  for r, (b, d, tau, _, active, _, _, spread, nonfinite) in zip(rs, prepared):
    # tau = 0 (unregularized group): z = b / D, the same formula with any r > 0
    free = tau <= 0
    r = jnp.where(free, 1, r)
    keep, r_m, tau_m, bad = (
      spread(active | free),
      spread(r),
      spread(jnp.where(free, 0, tau)),
      spread(nonfinite),
    )
    z = [
      _scaled_entries(x, dm * rm + tm, rm, k, bad_m)
      for x, dm, k, rm, tm, bad_m in zip(b, d, keep, r_m, tau_m, bad)
    ]
    zs.append(z)
  return zs, iterations, residual


def _spread(layout: GroupLayout, per_group: Array) -> list[Array]:
  """A per-group array spread over every member of ``layout``."""
  return [layout.spread(per_group, m) for m in range(len(layout.shapes))]


def _scaled_entries(b: Array, denominator: Array, r: Array, keep: Array, bad: Array) -> Array:
  """``z = r b / denominator`` where ``keep`` and the denominator is not 0, else 0; NaN at ``bad``.

  Written as ONE final division so that XLA, which does not duplicate a
  division into several consumers, stores ``z`` itself (the kept point, read
  again by the momentum average) rather than ``1 / denominator`` in a
  temporary buffer beside it.
  """
  keep = keep & (denominator != 0)
  numerator = jnp.where(bad, jnp.nan, jnp.where(keep, r * b, 0))
  return numerator / jnp.where(keep, denominator, 1)
