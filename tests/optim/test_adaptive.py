"""RAMDA and the proximal baselines against float64 NumPy re-implementations."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from problems import GROUPS, SHAPES, from_tree, make_problem, numpy_grad, run_jax, single_trace_step

import rmda_jax

REGS = {
  "group_lasso": rmda_jax.group_lasso,
  "l1": rmda_jax.l1,
  "nuclear": rmda_jax.nuclear_norm,
}
TIGHT = rmda_jax.prox.ProximalGradient(max_iters=3000, tol=1e-7)


def _reg(kind, lam):
  return None if kind is None else REGS[kind](lam)


def _check(got, want, atol, zeros=True):
  for n in SHAPES:
    np.testing.assert_allclose(got[n], want[n], atol=atol, rtol=0, err_msg=n)
    if zeros:
      np.testing.assert_array_equal(got[n] == 0, want[n] == 0, err_msg=n)


@pytest.mark.parametrize(
  "kind,lam,solver",
  [
    ("group_lasso", 0.05, "auto"),
    ("group_lasso", 0.05, TIGHT),
    ("l1", 0.02, "auto"),
    ("nuclear", 0.02, TIGHT),
    (None, 0.0, "auto"),
  ],
)
def test_ramda_matches_numpy_reference(kind, lam, solver):
  steps, lr, c, eps = 20, 0.05, 0.5, 1e-6
  x, target, scale, noise = make_problem(steps=steps)
  x_np, z_np = ref.ramda_run(
    x, numpy_grad(target, scale, noise), steps, lr, c, lam, kind, GROUPS, eps
  )
  tx = rmda_jax.ramda(lr, momentum=c, regularizer=_reg(kind, lam), eps=eps, solver=solver)
  params, state = run_jax(tx, x, target, scale, noise, steps)
  _check(from_tree(params), x_np, 1e-4, zeros=False)
  # exact zeros are compared only where the solver is exact (an inexact nuclear solve has no zeros)
  _check(from_tree(state.structured), z_np, 1e-4, zeros=kind in ("group_lasso", "l1"))
  if kind in ("group_lasso", "l1"):
    assert (z_np["dense"] == 0).any(), "the problem should produce zeros"
  assert np.isfinite(float(state.solver_info.residual))


@pytest.mark.parametrize(
  "kind,lam", [("group_lasso", 0.3), ("l1", 0.1), ("nuclear", 0.5), (None, 0.0)]
)
def test_prox_sgd_matches_numpy(kind, lam):
  steps, lr, c = 25, 0.05, 0.1
  x, target, scale, noise = make_problem(steps=steps)
  want = ref.prox_sgd_run(x, numpy_grad(target, scale, noise), steps, lr, c, lam, kind, GROUPS)
  params, _ = run_jax(
    rmda_jax.prox_sgd(lr, momentum=c, regularizer=_reg(kind, lam)), x, target, scale, noise, steps
  )
  _check(from_tree(params), want, 1e-5, zeros=kind != "nuclear")


@pytest.mark.parametrize(
  "kind,lam,wd",
  [("group_lasso", 0.3, 0.0), ("l1", 0.2, 0.0), (None, 0.0, 0.1), ("nuclear", 0.3, 0.0)],
)
def test_prox_adamw_matches_numpy(kind, lam, wd):
  steps, lr = 25, 0.01
  x, target, scale, noise = make_problem(steps=steps)
  want = ref.prox_adamw_run(
    x, numpy_grad(target, scale, noise), steps, lr, lam, kind, GROUPS, wd=wd
  )
  solver = TIGHT if kind == "nuclear" else "auto"
  params, _ = run_jax(
    rmda_jax.prox_adamw(lr, weight_decay=wd, regularizer=_reg(kind, lam), solver=solver),
    x,
    target,
    scale,
    noise,
    steps,
  )
  _check(from_tree(params), want, 1e-4, zeros=kind in ("group_lasso", "l1"))
  if kind in ("group_lasso", "l1"):
    assert (want["dense"] == 0).any()


def test_prox_adamw_without_regularizer_is_optax_adamw():
  steps = 15
  x, target, scale, noise = make_problem(steps=steps)
  ours, _ = run_jax(rmda_jax.prox_adamw(1e-2, weight_decay=0.1), x, target, scale, noise, steps)
  theirs, _ = run_jax(optax.adamw(1e-2, weight_decay=0.1), x, target, scale, noise, steps)
  chex.assert_trees_all_close(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("kind,lam", [("group_lasso", 0.3), ("l1", 0.2)])
def test_prox_ssi_matches_numpy(kind, lam):
  steps, lr = 25, 0.01
  x, target, scale, noise = make_problem(steps=steps)
  want = ref.prox_ssi_run(x, numpy_grad(target, scale, noise), steps, lr, lam, kind, GROUPS)
  params, _ = run_jax(
    rmda_jax.prox_ssi(lr, regularizer=_reg(kind, lam)), x, target, scale, noise, steps
  )
  _check(from_tree(params), want, 1e-4)
  assert (want["dense"] == 0).any()


@pytest.mark.parametrize(
  "make",
  [
    lambda r: rmda_jax.ramda(1e-2, regularizer=r),
    lambda r: rmda_jax.prox_adamw(1e-3, regularizer=r),
    lambda r: rmda_jax.prox_ssi(1e-3, regularizer=r),
    lambda r: rmda_jax.prox_sgd(1e-1, regularizer=r),
    lambda r: rmda_jax.rmda(1e-1, regularizer=r),
  ],
)
@pytest.mark.parametrize(
  "reg", [rmda_jax.group_lasso(1e-2), rmda_jax.nuclear_norm(1e-2), rmda_jax.l1(1e-2)]
)
def test_jit_static_shapes_single_trace(make, reg):
  tx = make(reg)
  params = {
    "Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)},
    "Conv_0": {"kernel": jnp.ones((2, 2, 3, 2))},
  }
  state = tx.init(params)

  step = single_trace_step(tx)

  for i in range(3):
    grads = jax.tree_util.tree_map(lambda p, i=i: jnp.full_like(p, 0.3 * (i + 1)), params)
    params, state = step(params, state, grads)
  for leaf in jax.tree_util.tree_leaves(params):
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_cube_root_accuracy_over_the_float32_range():
  from rmda_jax.optim.preconditioners import cube_root

  rng = np.random.default_rng(0)
  u = (np.abs(rng.normal(size=20000)) * 10.0 ** rng.uniform(-37, 37, size=20000)).astype(np.float32)
  u = np.concatenate([u, np.float32([0.0, 1.0, 8.0, 1e-30, 3e38, 1e-44])])
  got = np.asarray(cube_root(jnp.asarray(u)), np.float64)
  want = np.cbrt(u.astype(np.float64))
  positive = u >= np.finfo(np.float32).tiny  # XLA flushes subnormals to zero
  assert np.all(np.abs(got[positive] - want[positive]) <= 5e-6 * want[positive])
  assert got[u == 0].tolist() == [0.0] and got[-4] == 2.0
