"""The diagonal-metric subproblem solvers: exactness, certificates, screening, warm starts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from problems import per_leaf_secular

import rmda_jax
from rmda_jax import prox
from rmda_jax.core import rules as leaf_rules


def _random_problem(seed, shape=(7, 5), axis=1, p_range=(1e-2, 1e2), zero_frac=0.4, thr=0.3):
  rng = np.random.default_rng(seed)
  b = rng.normal(size=shape)
  P = np.exp(rng.uniform(np.log(p_range[0]), np.log(p_range[1]), size=shape))
  # shrink some groups below the screening threshold so they are zero at the optimum
  w = np.sqrt(shape[axis])
  bn = np.linalg.norm(b, axis=axis, keepdims=True)
  small = rng.uniform(size=bn.shape) < zero_frac
  b = np.where(small, b / bn * thr * w * rng.uniform(0.1, 0.9, size=bn.shape), b)
  return b, P


def _group_dist_to_optimality(z, b, P, thr, axis):
  """min-norm element of d theta(z), theta = 1/2 z'Pz - b'z + thr w sum ||z_g||."""
  w = np.sqrt(z.shape[axis])
  g = P * z - b
  zn = np.linalg.norm(z, axis=axis, keepdims=True)
  with np.errstate(invalid="ignore", divide="ignore"):
    nonzero = np.linalg.norm(g + thr * w * z / zn, axis=axis)
  zero = np.maximum(np.linalg.norm(g, axis=axis) - thr * w, 0)
  return np.sqrt(np.sum(np.where(zn.squeeze(axis) > 0, nonzero, zero) ** 2))


def _nuclear_dist_to_optimality(z, b, P, thr):
  g = P * z - b
  u, s, vt = np.linalg.svd(z, full_matrices=False)
  r = int(np.sum(s > 1e-5 * max(s.max(), 1e-30)))
  u, vt = u[:, :r], vt[:r]
  a = g + thr * u @ vt
  a_perp = (np.eye(z.shape[0]) - u @ u.T) @ a @ (np.eye(z.shape[1]) - vt.T @ vt)
  sp = np.linalg.svd(a_perp, compute_uv=False)
  return np.sqrt(np.linalg.norm(a - a_perp) ** 2 + np.sum(np.maximum(sp - thr, 0) ** 2))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("p_range", [(1e-2, 1e2), (1e-6, 1e-4), (1e3, 1e6), (1e-6, 1e6)])
def test_exact_group_lasso_root_finder_matches_bisection(seed, p_range):
  thr = 0.3
  b, P = _random_problem(seed, p_range=p_range, thr=thr)
  if p_range == (1e-6, 1e-4):
    P[0, :2] = 0.0  # eps = 0 with coordinates that never saw a gradient
    b[0, :2] = 0.0
  want = ref.diag_prox_group_bisect(b, P, thr, (1,))
  reg = rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((1,))})
  z = np.asarray(
    reg.prox_diag({"w": jnp.asarray(b, jnp.float32)}, {"w": jnp.asarray(P, jnp.float32)}, thr)["w"]
  )
  assert np.all(np.isfinite(z))
  np.testing.assert_array_equal(np.linalg.norm(z, axis=1) == 0, np.linalg.norm(want, axis=1) == 0)
  err = np.linalg.norm(z - want, axis=1)
  assert np.all(err <= 1e-4 * (np.linalg.norm(want, axis=1) + 1e-12)), (
    err,
    np.linalg.norm(want, axis=1),
  )


def test_exact_root_finder_in_float64_is_exact():
  b, P = _random_problem(0, p_range=(1e-3, 1e3))
  want = ref.diag_prox_group_bisect(b, P, 0.3, (1,))
  with jax.enable_x64(True):
    zs, iterations, _ = per_leaf_secular(
      [jnp.asarray(b)], [jnp.asarray(P)], [0.3 * np.sqrt(5)], [(1,)]
    )
    z = np.asarray(zs[0])
  np.testing.assert_allclose(z, want, atol=1e-12, rtol=1e-10)
  assert int(iterations) < 50


def test_root_finder_is_one_newton_step_for_constant_metric():
  b = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
  P = np.full_like(b, 2.5)
  zs, iterations, residual = per_leaf_secular([jnp.asarray(b)], [jnp.asarray(P)], [0.5], [(1,)])
  # isotropic metric: z = prox of b/P with threshold 0.5/P
  np.testing.assert_allclose(
    np.asarray(zs[0]), ref.prox_group_lasso(b / 2.5, 0.5 / 2.5 / 2.0, (1,)), atol=1e-6
  )
  assert int(iterations) <= 2


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_iters", [2, 10, 200])
def test_inexact_residual_bounds_the_subgradient_distance_group_lasso(seed, max_iters):
  thr = 0.3
  b, P = _random_problem(seed, p_range=(0.1, 10.0), thr=thr)
  reg = rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((1,))})
  solver = prox.ProximalGradient(max_iters=max_iters, tol=1e-30)
  z, info = prox.solve(
    reg,
    {"w": jnp.asarray(b, jnp.float32)},
    {"w": jnp.asarray(P, jnp.float32)},
    thr,
    init={"w": jnp.zeros(b.shape)},
    solver=solver,
  )
  z = np.asarray(z["w"], np.float64)
  dist = _group_dist_to_optimality(z, b, P, thr, 1)
  residual = float(info.residual)
  assert int(info.iterations) == max_iters
  assert dist <= residual * (1 + 1e-3) + 1e-5, (dist, residual)


@pytest.mark.parametrize("max_iters", [3, 30])
def test_inexact_residual_bounds_the_subgradient_distance_nuclear(max_iters):
  rng = np.random.default_rng(1)
  b = rng.normal(size=(6, 4)) * 2
  P = rng.uniform(0.5, 2.0, size=(6, 4))
  thr = 1.0
  solver = prox.ProximalGradient(max_iters=max_iters, tol=1e-30)
  z, info = prox.solve(
    rmda_jax.nuclear_norm(1.0),
    {"w": jnp.asarray(b, jnp.float32)},
    {"w": jnp.asarray(P, jnp.float32)},
    thr,
    init={"w": jnp.zeros((6, 4))},
    solver=solver,
  )
  dist = _nuclear_dist_to_optimality(np.asarray(z["w"], np.float64), b, P, thr)
  assert dist <= float(info.residual) * (1 + 1e-3) + 1e-4, (dist, float(info.residual))


@pytest.mark.parametrize("seed", range(5))
def test_screening_never_zeroes_a_group_that_is_nonzero_at_the_optimum(seed):
  thr = 0.3
  b, P = _random_problem(seed, shape=(12, 3), p_range=(0.05, 20.0), zero_frac=0.5, thr=thr)
  want = ref.diag_prox_group_bisect(b, P, thr, (1,))
  reg = rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((1,))})
  jb, jP = {"w": jnp.asarray(b, jnp.float32)}, {"w": jnp.asarray(P, jnp.float32)}
  placement = reg.place(jb)
  term = placement.terms[0]
  mask = np.asarray(
    reg.term_screen(placement.gather(placement.leaves, term), jnp.float32(thr), term.rule)[0]
  ).ravel()
  optimal_nonzero = np.linalg.norm(want, axis=1) > 0
  assert np.all(mask[optimal_nonzero])  # never drops a needed group
  assert not np.all(mask)  # and does screen something here
  z, info = prox.solve(
    reg,
    jb,
    jP,
    thr,
    init={"w": jnp.ones(b.shape)},
    solver=prox.ProximalGradient(max_iters=5000, tol=1e-6),
  )
  np.testing.assert_array_equal(np.linalg.norm(np.asarray(z["w"]), axis=1) > 0, optimal_nonzero)
  np.testing.assert_allclose(np.asarray(z["w"]), want, atol=1e-4)


@pytest.mark.parametrize(
  "reg",
  [
    rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((1,))}),
    rmda_jax.l1(1.0),
    rmda_jax.nuclear_norm(1.0),
  ],
)
def test_inexact_solver_stops_early_when_warm_started_at_the_solution(reg):
  rng = np.random.default_rng(2)
  b = rng.normal(size=(6, 4)).astype(np.float32)
  P = rng.uniform(0.5, 2.0, size=(6, 4)).astype(np.float32)
  jb, jP = {"w": jnp.asarray(b)}, {"w": jnp.asarray(P)}
  tight = prox.ProximalGradient(max_iters=20000, tol=1e-6)
  sol, info = prox.solve(reg, jb, jP, 0.4, init={"w": jnp.zeros((6, 4))}, solver=tight)
  if not isinstance(reg, rmda_jax.prox.ElasticNet):  # L1 is solved by one exact step
    assert int(info.iterations) > 5
  loose = prox.ProximalGradient(max_iters=100, tol=1e-4)
  again, info2 = prox.solve(reg, jb, jP, 0.4, init=sol, solver=loose)
  assert int(info2.iterations) == 1 and float(info2.residual) <= 1e-4


def test_tolerance_schedule_and_exact_solver_residual():
  reg = rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((1,))})
  b, P = _random_problem(0)
  jb, jP = {"w": jnp.asarray(b, jnp.float32)}, {"w": jnp.asarray(P, jnp.float32)}
  solver = prox.ProximalGradient(max_iters=10000, tol=lambda count: 1e-2 / (1.0 + count))
  _, early = prox.solve(reg, jb, jP, 0.3, init={"w": jnp.zeros(b.shape)}, solver=solver, count=0)
  _, late = prox.solve(reg, jb, jP, 0.3, init={"w": jnp.zeros(b.shape)}, solver=solver, count=1000)
  assert float(early.residual) <= 1e-2 and float(late.residual) <= 1e-5
  assert int(late.iterations) > int(early.iterations)
  z, exact = prox.solve(reg, jb, jP, 0.3, solver=prox.Exact(certify=True))
  assert float(exact.residual) <= 1e-4 * np.abs(b).max()
  assert (
    _group_dist_to_optimality(np.asarray(z["w"], np.float64), b, P, 0.3, 1)
    <= float(exact.residual) + 1e-5
  )
  z, secular = prox.solve(reg, jb, jP, 0.3, solver=prox.Exact())
  assert 0 <= float(secular.residual) <= 1e-4 and int(secular.iterations) >= 1


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("max_iters", [1, 50])
def test_exact_solver_residual_bounds_the_misfit_at_the_returned_point(seed, max_iters):
  # The reported residual is |f(r) - 1| at the last Newton evaluation; the
  # returned root is one Newton step further, so its own misfit, recomputed
  # here in float64 from z alone, is no larger (one iteration from the cold
  # start leaves it far from 0, so an underestimate cannot pass).
  b, P = _random_problem(seed, shape=(40, 5), p_range=(1e-3, 1e3))
  tau = 0.3 * np.sqrt(5)
  zs, iterations, residual = per_leaf_secular(
    [jnp.asarray(b, jnp.float32)], [jnp.asarray(P, jnp.float32)], [tau], [(1,)], max_iters=max_iters
  )
  z = np.asarray(zs[0], np.float64)
  r = np.linalg.norm(z, axis=1, keepdims=True)
  active = r[:, 0] > 0
  assert active.any() and not active.all()
  f = np.linalg.norm(b / (P * r + tau), axis=1)[active]
  misfit = np.abs(f - 1).max()
  assert misfit <= float(residual) + 4e-7, (misfit, float(residual))
  if max_iters == 1:
    assert int(iterations) == 1 and misfit > 1e-3
  else:
    assert float(residual) <= 1e-4


def test_solver_argument_validation():
  with pytest.raises(ValueError, match="no exact"):
    rmda_jax.ramda(1e-2, regularizer=rmda_jax.nuclear_norm(1e-3), solver="exact")
  with pytest.raises(ValueError, match="solver must be"):
    rmda_jax.ramda(1e-2, solver="newton")
  with pytest.raises(ValueError, match="max_iters"):
    prox.ProximalGradient(max_iters=0)
  with pytest.raises(ValueError, match="tol"):
    prox.ProximalGradient(tol=-1.0)


def test_ramda_reports_solver_info_in_state():
  tx = rmda_jax.ramda(
    1e-2,
    regularizer=rmda_jax.nuclear_norm(1e-2),
    solver=prox.ProximalGradient(max_iters=7, tol=1e-30),
  )
  params = {"kernel": jnp.ones((4, 3))}
  state = tx.init(params)
  grads = {"kernel": jnp.arange(12.0).reshape(4, 3) / 10}  # a non-constant metric
  _, state = jax.jit(tx.update)(grads, state, params)
  assert int(state.solver_info.iterations) == 7
  assert float(state.solver_info.residual) > 0


@pytest.mark.parametrize("seed", range(3))
def test_newton_stops_when_the_secular_equation_is_solved_to_rounding(seed):
  # rtol far below float32's resolution: the relative-step rule can never hold,
  # so only the rounding-level rule |f(r) - 1| <= 8 eps stops the loop
  b, P = _random_problem(seed, shape=(40, 64), p_range=(1e-3, 1e3))
  want = ref.diag_prox_group_bisect(b, P, 0.3, (1,))
  zs, iterations, residual = per_leaf_secular(
    [jnp.asarray(b, jnp.float32)],
    [jnp.asarray(P, jnp.float32)],
    [0.3 * np.sqrt(64)],
    [(1,)],
    max_iters=200,
    rtol=1e-12,
  )
  assert int(iterations) < 50
  assert float(residual) <= 1e-5
  np.testing.assert_allclose(np.asarray(zs[0]), want, atol=1e-5 * np.abs(want).max(), rtol=1e-4)
