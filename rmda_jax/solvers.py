"""The diagonally preconditioned proximal subproblem, shared by every adaptive method.

RAMDA, ProxGen (``prox_adamw``) and ProxSSI all need, at every step,

.. math::

   z^\\star = \\arg\\min_z\\; \\theta(z) = \\tfrac12 z^\\top D z - b^\\top z
             + t\\,\\lambda\\,\\psi(z),

with ``D > 0`` diagonal (a pytree like the params). This is the same as
``<v, z - x0> + 1/2 <z - x0, D (z - x0)> + t lambda psi(z)`` with
``b = D x0 - v``; writing it with ``b`` avoids dividing by ``D``.

Three ways to solve it, chosen by the ``solver`` argument of the optimizers:

* closed forms (no regularizer: ``z = b / D``; L1 / elastic net: a
  coordinate-wise soft threshold) — used by :class:`Exact`;
* group-LASSO: exact per-group root finding of the secular equation in the
  group norm (:func:`group_lasso_secular`), vectorised over the groups of
  each leaf (or family of coupled groups) in a ``lax.while_loop`` — used by
  :class:`Exact`;
* :class:`ProximalGradient`, the inexact solver for any regularizer with a
  plain prox (nuclear norm, user-defined penalties): ONE ``lax.while_loop``
  over the whole pytree, step ``1/max(D_g)`` per block, warm start, screening
  of groups that are provably zero, and a stopping rule on a computable
  subgradient of ``theta``.

Both report a :class:`SolverInfo` (iterations used, final residual) that the
optimizers keep in their state.

The inexact solver's residual is the norm of ``xi = (1/eta - D) (z - z+)``, an
element of ``d theta(z+)`` at the returned point
``z+ = prox_{eta t psi}(z - eta grad q(z))`` (Huang & Lee 2024, the measurable
inexactness condition). ``Exact(certify=True)`` applies one such step to its
answer and reports the same certificate.

References:
  Huang & Lee, "Regularized Adaptive Momentum Dual Averaging with an Efficient
  Inexact Subproblem Solver for Training Structured Neural Networks",
  NeurIPS 2024, arXiv:2403.14398.
  Deleu & Bengio, "Structured Sparsity Inducing Adaptive Optimizers for Deep
  Learning", 2021, arXiv:2102.03869 (the secular equation, ProxSSI).
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from rmda_jax import _common
from rmda_jax import groups
from rmda_jax import numerics
from rmda_jax import structure

Array = jax.Array
ScalarOrSchedule = Union[float, Callable[[Array], Array]]


class SolverInfo(NamedTuple):
  """What the last subproblem solve did.

  Attributes:
    iterations: int32, inner iterations used (Newton iterations for the exact
      group-LASSO solver, 0 for closed forms, proximal-gradient iterations for
      the inexact solver).
    residual: float32. :class:`ProximalGradient` (and :class:`Exact` with
      ``certify=True``): ``||xi||_2`` with ``xi`` in the subdifferential of
      the subproblem objective at the returned point (0 means optimal).
      :class:`Exact`: the secular equation's ``max_g |f(r_g) - 1|`` at the
      last Newton evaluation; the returned root is one Newton step further,
      and its misfit is no larger (see :func:`group_lasso_secular_blocks`).
  """

  iterations: Array
  residual: Array


def empty_info() -> SolverInfo:
  return SolverInfo(jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32))


@dataclasses.dataclass(frozen=True)
class Exact:
  """Closed forms, and exact secular-equation root finding for group-LASSO.

  Attributes:
    max_iters: cap on the Newton iterations (> 0).
    rtol: stop a group when the Newton step is below ``rtol * r``; None means
      ``sqrt(machine epsilon)`` of the compute dtype (quadratic convergence
      leaves an error at the epsilon level).
    certify: apply one proximal-gradient step to the solution and report its
      subgradient certificate as the residual (costs about one more prox);
      otherwise the residual is the secular equation's ``max_g |f(r_g) - 1|``
      at the last Newton evaluation (a bound on the returned root's).
  """

  max_iters: int = 50
  rtol: Optional[float] = None
  certify: bool = False

  def __post_init__(self):
    _common.check_int(self.max_iters, "Exact.max_iters")
    if self.rtol is not None:
      _check_positive(self.rtol, "Exact.rtol")


@dataclasses.dataclass(frozen=True)
class ProximalGradient:
  """The inexact proximal-gradient subproblem solver.

  Iterates ``z <- prox_{eta_g t psi}(z - eta_g (D z - b))`` with per-block
  step ``eta_g = 1/max_{i in g} D_i`` from a warm start, after fixing the
  groups that screening proves zero, until ``||xi|| <= tol`` or ``max_iters``.

  Attributes:
    max_iters: cap on the iterations (> 0); the reference uses 100.
    tol: tolerance on the subgradient norm ``||xi||_2``; a float > 0 or an
      optax-style schedule of the optimizer's step count (e.g. decaying to 0
      as the theory asks).
    min_iters: iterations always run (>= 1); 2 reproduces the reference.
  """

  max_iters: int = 100
  tol: ScalarOrSchedule = 1e-5
  min_iters: int = 1

  def __post_init__(self):
    _common.check_int(self.max_iters, "ProximalGradient.max_iters")
    _common.check_int(self.min_iters, "ProximalGradient.min_iters")
    if not callable(self.tol):
      _check_positive(self.tol, "ProximalGradient.tol")

  def tolerance(self, count) -> Array:
    return jnp.asarray(self.tol(count) if callable(self.tol) else self.tol, jnp.float32)


Solver = Union[Exact, ProximalGradient]


def _check_positive(value, argname):
  if isinstance(value, numbers.Real) and not value > 0:
    raise ValueError(f"{argname} must be > 0, got {value!r}.")


def make_solver(spec: Union[str, Solver], regularizer) -> Optional[Solver]:
  """Turn ``"auto" | "exact" | "pgd" | Exact(...) | ProximalGradient(...)`` into a solver.

  ``"auto"`` is :class:`Exact` where the regularizer has an exact
  diagonal-metric prox (L1, elastic net, group-LASSO) and
  :class:`ProximalGradient` otherwise (nuclear norm, custom penalties).
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
        f"solver must be 'auto', 'exact', 'pgd', rmda_jax.solvers.Exact(...) or "
        f"rmda_jax.solvers.ProximalGradient(...), got {spec!r}."
    )
  if isinstance(solver, Exact) and regularizer is not None and not regularizer.has_exact_diag_prox:
    raise ValueError(
        f"solver: {type(regularizer).__name__} has no exact diagonal-metric prox; "
        "use solver='pgd' (or 'auto')."
    )
  return solver


# --------------------------------------------------------------------------- group lasso
def group_lasso_secular(bs, diags, thresholds, axes_list, max_iters: int = 50, rtol=None, inits=None):
  """Exact ``argmin_z 1/2 z^T D z - b^T z + tau_g ||z_g||`` for every group of every leaf.

  The per-leaf form of :func:`group_lasso_secular_blocks`: ``axes_list`` gives
  each leaf's reduce axes (its groups), ``thresholds`` its ``tau``.
  """
  blocks = [structure.Block.of_rule(b.shape, groups.GroupRule(tuple(axes)), 1.0) for b, axes in zip(bs, axes_list)]
  zs, iterations, residual = group_lasso_secular_blocks(
      [[b] for b in bs], [[d] for d in diags], thresholds, blocks, max_iters, rtol,
      None if inits is None else [None if i is None else [i] for i in inits])
  return [z[0] for z in zs], iterations, residual


def group_lasso_secular_blocks(bs, diags, thresholds, blocks, max_iters: int = 50, rtol=None, inits=None):
  """Exact ``argmin_z 1/2 z^T D z - b^T z + tau_g ||z_g||`` for every group of every block.

  A block (:class:`~rmda_jax.structure.Block`) is a leaf under a per-leaf rule
  or a family of coupled groups spanning several leaves; a group's norm and
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
  bracket ``[(||b|| - tau)/max D, (||b|| - tau)/min D]``. Each block has its
  own ``lax.while_loop``, which stops when every group of the block has a
  step below ``rtol * r`` or ``f(r)`` within 8 ulps of 1 (where an
  ill-conditioned group's step is rounding noise), or after ``max_iters``.
  A group with a non-finite entry
  of ``b`` comes back NaN (it is not taken for a zero group).

  Args:
    bs, diags: per block, the list of its members' arrays; ``D >= 0``.
    thresholds: per block, ``tau`` (a scalar or an array of the block's
      group shape).
    blocks: the :class:`~rmda_jax.structure.Block` of each entry.
    max_iters: cap on the Newton iterations.
    rtol: relative step below which a group has converged; None means
      ``sqrt(eps)`` of the dtype (convergence is quadratic, so the error left
      is at the ``eps`` level).
    inits: optional warm starts (like ``bs``, or None per block).

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
  # the iterate, are one variadic reduction per pass (Block.reduce_many) that
  # XLA fuses with the expressions feeding it, so the terms are never stored.
  prepared, starts = [], []
  for b, d, tau, block, init in zip(bs, diags, thresholds, blocks, inits):
    stats = [block.sum([jnp.square(x) for x in b]), block.max(d), block.min(d)]
    if init is not None:
      stats.append(block.sum([jnp.square(x.astype(dtype)) for x in init]))
    b_norm, d_max, d_min = jnp.sqrt(stats[0]), stats[1], stats[2]
    tau = jnp.broadcast_to(jnp.asarray(tau, dtype), b_norm.shape)
    active = (b_norm > tau) & (tau > 0) & (d_max > 0)
    excess = jnp.where(active, b_norm - tau, 0)
    r_lo = numerics.safe_divide(excess, d_max)
    r_hi = jnp.where(d_min > 0, numerics.safe_divide(excess, d_min), jnp.inf)
    spread = lambda g, block=block, members=len(b): [block.spread(g, m) for m in range(members)]
    prepared.append((b, d, tau, block, active, r_lo, r_hi, spread, ~jnp.isfinite(b_norm)))
    start = r_lo if init is None else jnp.clip(jnp.sqrt(stats[3]), r_lo, r_hi)
    starts.append(jnp.where(active, start, 0))

  def secular_sums(r, b, d, tau, block, active, spread):
    """``f(r)^2 = sum b^2 inv^2`` and ``sum b^2 D inv^3``, ``inv = 1/(D r + tau)``, in one pass."""
    r_m, tau_m, act_m = spread(jnp.where(active, r, 0)), spread(jnp.where(active, tau, 1)), spread(active)
    invs = [1 / jnp.where(a, dm * rm + tm, 1) for dm, rm, tm, a in zip(d, r_m, tau_m, act_m)]
    terms = [jnp.square(x * inv) for x, inv in zip(b, invs)]
    return block.reduce_many(["sum", "sum"], [terms, [t * dm * inv for t, dm, inv in zip(terms, d, invs)]])

  def newton(r, prep):
    # The Newton step on 1/f - 1 is f^2 (f - 1) / sum(b^2 D inv^3).
    b, d, tau, block, active, r_lo, r_hi, spread, _ = prep
    f2, slope = secular_sums(r, b, d, tau, block, active, spread)
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

  # One loop per block, each stopping when its own groups have converged, so
  # a block that converges early takes no more passes over its entries.
  rs, iterations, residual = [], jnp.zeros((), jnp.int32), jnp.zeros((), dtype)
  for start, prep in zip(starts, prepared):
    def body(carry, prep=prep):
      r, it, _, _ = carry
      r, done, misfit = newton(r, prep)
      return r, it + 1, done, misfit

    r, its, _, misfit = jax.lax.while_loop(
        cond, body, (start, jnp.zeros((), jnp.int32), jnp.zeros((), bool), jnp.zeros((), dtype)))
    rs.append(r)
    iterations = jnp.maximum(iterations, its)
    residual = jnp.maximum(residual, misfit)

  zs = []
  for r, (b, d, tau, block, active, _, _, spread, nonfinite) in zip(rs, prepared):
    # tau = 0 (unregularized group): z = b / D, the same formula with any r > 0
    free = tau <= 0
    r = jnp.where(free, 1, r)
    keep, r_m, tau_m, bad = spread(active | free), spread(r), spread(jnp.where(free, 0, tau)), spread(nonfinite)
    z = [_scaled_entries(x, dm * rm + tm, rm, k, bad_m) for x, dm, k, rm, tm, bad_m in zip(b, d, keep, r_m, tau_m, bad)]
    zs.append(z)
  return zs, iterations, residual


def _scaled_entries(b, denominator, r, keep, bad):
  """``z = r b / denominator`` where ``keep`` (0 elsewhere, and where the denominator is 0), NaN where ``bad``.

  Written as ONE final division so that XLA, which does not duplicate a
  division into several consumers, stores ``z`` itself (the kept point, read
  again by the momentum average) rather than ``1 / denominator`` in a
  temporary buffer beside it.
  """
  keep = keep & (denominator != 0)
  numerator = jnp.where(bad, jnp.nan, jnp.where(keep, r * b, 0))
  return numerator / jnp.where(keep, denominator, 1)


# --------------------------------------------------------------------------- solving a tree
@dataclasses.dataclass(frozen=True)
class _Problem:
  """The subproblem laid out by units (a leaf, or a family of coupled groups).

  ``bs``, ``diags``, ``thresholds`` and ``rules`` (the leaf's own rule, None
  in a family of coupled groups) are per regularized leaf (``index`` their
  positions in the tree); ``units`` lists, per unit, the positions of its
  leaves in those lists and the unit's rule.
  """

  resolved: Any
  index: list  # positions of the regularized leaves
  bs: list
  diags: list
  thresholds: list
  rules: list
  units: list  # (positions into the lists above, rule)

  def gather(self, values, unit) -> list:
    return [values[k] for k in unit[0]]


def unregularized_solution(b, diag, anchor=None):
  """``b / D``; where ``D == 0`` (then ``b == 0`` in a bounded problem) any point
  is optimal and ``anchor`` (default 0) is returned."""
  if anchor is None:
    return numerics.safe_divide(b, diag)
  return jnp.where(diag > 0, numerics.safe_divide(b, diag), anchor)


def _layout(regularizer, b, diag, scale, anchor=None) -> tuple[_Problem, list]:
  resolved = regularizer.resolve(b)
  diag_leaves = resolved.treedef.flatten_up_to(diag)
  anchors = [None] * len(diag_leaves) if anchor is None else resolved.treedef.flatten_up_to(anchor)
  scales = regularizer.leaf_scales(scale, resolved)
  out = [unregularized_solution(*args) for args in zip(resolved.leaves, diag_leaves, anchors)]
  index, rules, thresholds, units = [], [], [], []
  for unit in resolved.units:
    tau = jnp.asarray(scales[unit.index[0]], resolved.leaves[unit.index[0]].dtype) * regularizer.strength
    units.append((list(range(len(index), len(index) + len(unit.index))), unit.rule))
    for i in unit.index:
      index.append(i)
      rules.append(resolved.rules[i])
      thresholds.append(tau)
  problem = _Problem(
      resolved=resolved,
      index=index,
      bs=[resolved.leaves[i] for i in index],
      diags=[diag_leaves[i] for i in index],
      thresholds=thresholds,
      rules=rules,
      units=units,
  )
  return problem, out


def _prox_gradient_step(regularizer, problem: _Problem, zs, etas, d_maxs, masks):
  """One step ``z+ = prox(z - eta (D z - b))`` and its certificate ``||xi||^2``."""
  new_zs, sq = list(zs), jnp.zeros((), jnp.float32)
  for (positions, rule), (eta_group, member_etas) in zip(problem.units, etas):
    ys = [zs[k] - eta * (problem.diags[k] * zs[k] - problem.bs[k]) for k, eta in zip(positions, member_etas)]
    tau = problem.thresholds[positions[0]]
    z_plus = regularizer.unit_prox(ys, eta_group * tau, rule)
    for k, zp in zip(positions, z_plus):
      if masks[k] is not None:
        zp = jnp.where(masks[k], zp, 0)
      xi = (d_maxs[k] - problem.diags[k]) * (zs[k] - zp)
      sq = sq + jnp.sum(jnp.square(xi)).astype(jnp.float32)
      new_zs[k] = zp
  return new_zs, jnp.sqrt(sq)


def _steps(regularizer, problem: _Problem):
  """Per unit: ``(eta per group, [eta per member])``, and per leaf ``max D`` of its block."""
  etas, d_maxs = [], [None] * len(problem.bs)
  for positions, rule in problem.units:
    group_max, maxes = regularizer.unit_block_max(problem.gather(problem.diags, (positions, rule)), rule)
    member_etas = [numerics.safe_divide(jnp.ones_like(m), m) for m in maxes]
    for k, m in zip(positions, maxes):
      d_maxs[k] = m
    etas.append((numerics.safe_divide(jnp.ones_like(group_max), group_max), member_etas))
  return etas, d_maxs


def _masks(regularizer, problem: _Problem):
  masks = [None] * len(problem.bs)
  for positions, rule in problem.units:
    unit_masks = regularizer.unit_screen(problem.gather(problem.bs, (positions, rule)),
                                         problem.thresholds[positions[0]], rule)
    if unit_masks is not None:
      for k, m in zip(positions, unit_masks):
        masks[k] = m
  return masks


def solve_exact(regularizer, b, diag, scale, max_iters: int = 50, rtol=None, anchor=None,
                certify: bool = False, init=None):
  """Exact solve: closed forms, or the secular equation for group-LASSO.

  Returns ``(z, SolverInfo)`` with ``z`` a pytree like ``b``. The residual is
  the secular equation's (0 for closed forms); with ``certify`` one
  proximal-gradient step is applied to the solution and the residual is that
  step's subgradient certificate, as for :class:`ProximalGradient`.
  ``init`` (e.g. the previous solution) warm-starts iterative solutions.
  """
  problem, out = _layout(regularizer, b, diag, scale, anchor)
  if not problem.index:
    return problem.resolved.unflatten(out), empty_info()
  inits = None
  if init is not None:
    init_leaves = problem.resolved.treedef.flatten_up_to(init)
    inits = [[jnp.asarray(init_leaves[problem.index[k]]) for k in positions] for positions, _ in problem.units]
  unit_zs, iterations, residual = regularizer.units_prox_diag(
      [problem.gather(problem.bs, u) for u in problem.units],
      [problem.gather(problem.diags, u) for u in problem.units],
      [problem.thresholds[u[0][0]] for u in problem.units],
      [u[1] for u in problem.units], max_iters=max_iters, rtol=rtol, inits=inits,
  )
  zs = list(problem.bs)
  for (positions, _), z_unit in zip(problem.units, unit_zs):
    for k, z in zip(positions, z_unit):
      zs[k] = z
  if certify:
    etas, d_maxs = _steps(regularizer, problem)
    zs, residual = _prox_gradient_step(regularizer, problem, zs, etas, d_maxs, _masks(regularizer, problem))
  for i, z in zip(problem.index, zs):
    out[i] = z
  return problem.resolved.unflatten(out), SolverInfo(iterations, residual.astype(jnp.float32))


def solve_proximal_gradient(regularizer, b, diag, scale, init, solver: ProximalGradient, count=None,
                            anchor=None):
  """The inexact solver: ONE ``lax.while_loop`` over every regularized leaf.

  Returns ``(z, SolverInfo)``; ``z`` satisfies ``dist(0, d theta(z)) <=
  SolverInfo.residual``, which is ``<= tol`` unless ``max_iters`` was hit.
  """
  problem, out = _layout(regularizer, b, diag, scale, anchor)
  if not problem.index:
    return problem.resolved.unflatten(out), empty_info()
  init_leaves = problem.resolved.treedef.flatten_up_to(init)
  etas, d_maxs = _steps(regularizer, problem)
  masks = _masks(regularizer, problem)
  zs0 = []
  for i, mask in zip(problem.index, masks):
    z0 = jnp.asarray(init_leaves[i], problem.resolved.leaves[i].dtype)
    zs0.append(z0 if mask is None else jnp.where(mask, z0, 0))
  tol = solver.tolerance(jnp.zeros((), jnp.int32) if count is None else count)

  def cond(carry):
    _, it, residual = carry
    return (it < solver.max_iters) & ((it < solver.min_iters) | (residual > tol))

  def body(carry):
    zs, it, _ = carry
    zs, residual = _prox_gradient_step(regularizer, problem, zs, etas, d_maxs, masks)
    return zs, it + 1, residual

  carry = (zs0, jnp.zeros((), jnp.int32), jnp.full((), jnp.inf, jnp.float32))
  zs, iterations, residual = jax.lax.while_loop(cond, body, carry)
  for i, z in zip(problem.index, zs):
    out[i] = z
  return problem.resolved.unflatten(out), SolverInfo(iterations, residual)


def solve(regularizer, b, diag, scale, init=None, solver: Optional[Solver] = None, count=None,
          anchor=None):
  """Solve ``min_z 1/2 z^T D z - b^T z + scale * lambda * psi(z)`` over a pytree.

  Args:
    regularizer: a rmda_jax regularizer, or None (then ``z = b / D``).
    b, diag: pytrees like the params; ``diag >= 0``.
    scale: scalar or per-leaf pytree multiplying the regularizer's strength.
    init: warm start (e.g. the previous solution) for the inexact solver and
      the group-LASSO root finder.
    solver: :class:`Exact` or :class:`ProximalGradient`; None picks as
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
    >>> z, info = rmda_jax.solvers.solve(reg, b, d, scale=1.0)
    >>> [float(v) for v in z["w"][0]]   # soft(b, 1) / D
    [1.0, 0.0]
  """
  if regularizer is None:
    if anchor is None:
      return jax.tree_util.tree_map(unregularized_solution, b, diag), empty_info()
    return jax.tree_util.tree_map(unregularized_solution, b, diag, anchor), empty_info()
  solver = make_solver("auto", regularizer) if solver is None else solver
  if isinstance(solver, Exact):
    return solve_exact(regularizer, b, diag, scale, solver.max_iters, solver.rtol, anchor, solver.certify,
                       init)
  if init is None:
    init = jax.tree_util.tree_map(numerics.safe_divide, b, diag)
  return solve_proximal_gradient(regularizer, b, diag, scale, init, solver, count, anchor)
