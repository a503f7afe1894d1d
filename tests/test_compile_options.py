"""rmda_jax.cpu_compiler_options: accepted by XLA, IEEE where it matters, same answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmda_jax
import reference as ref
from problems import GROUPS, SHAPES, from_tree, make_problem, numpy_grad, run_jax
from rmda_jax import solvers

OPTIONS = rmda_jax.cpu_compiler_options("cpu")


def test_options_per_backend_and_validation():
  assert OPTIONS["xla_cpu_enable_fast_math"] is True
  for honored in ("nans", "infs", "division", "functions"):
    assert OPTIONS[f"xla_cpu_fast_math_honor_{honored}"] is True
  assert OPTIONS["xla_cpu_enable_fast_min_max"] is False
  assert rmda_jax.cpu_compiler_options("gpu") == {} and rmda_jax.cpu_compiler_options("tpu") == {}
  assert rmda_jax.cpu_compiler_options() == (OPTIONS if jax.default_backend() == "cpu" else {})
  rmda_jax.cpu_compiler_options("cpu")["xla_cpu_enable_fast_math"] = False  # a copy each call
  assert rmda_jax.cpu_compiler_options("cpu")["xla_cpu_enable_fast_math"] is True
  with pytest.raises(TypeError, match="backend"):
    rmda_jax.cpu_compiler_options(jax.devices()[0])


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_nan_inf_and_min_max_stay_ieee_under_the_options():
  def fn(x):
    return jnp.sum(x * x), jnp.max(x), jnp.minimum(x, 1.0), jnp.isfinite(x), x / 0.0

  x = jnp.array([1.0, jnp.nan, 2.0, -jnp.inf, 0.0, 3.0, -1.0, 0.5, 2.0])
  total, top, low, finite, divided = jax.jit(fn, compiler_options=OPTIONS)(x)
  assert np.isnan(total) and np.isnan(top)
  np.testing.assert_array_equal(np.isnan(low), np.isnan(np.asarray(x)))
  np.testing.assert_array_equal(finite, np.isfinite(np.asarray(x)))
  with np.errstate(divide="ignore", invalid="ignore"):
    np.testing.assert_array_equal(np.asarray(divided), np.asarray(x) / 0.0)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_exact_group_lasso_solve_under_the_options_matches_bisection():
  rng = np.random.default_rng(0)
  b = rng.normal(size=(64, 48)) * np.where(np.arange(64) % 3 == 0, 0.2, 1.0)[:, None]  # some groups screened
  P = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), size=b.shape))
  thr = 0.3
  want = ref.diag_prox_group_bisect(b, P, thr, (1,))
  b_bad = b.copy()
  b_bad[5, 3] = np.nan

  def secular(b, P):
    return solvers.group_lasso_secular([b], [P], [thr * np.sqrt(48)], [(1,)])[0][0]

  solve = jax.jit(secular, compiler_options=OPTIONS)
  z = np.asarray(solve(jnp.asarray(b, jnp.float32), jnp.asarray(P, jnp.float32)))
  err = np.linalg.norm(z - want, axis=1)
  assert np.all(err <= 1e-4 * (np.linalg.norm(want, axis=1) + 1e-6)), err.max()
  np.testing.assert_array_equal(np.linalg.norm(z, axis=1) == 0, np.linalg.norm(want, axis=1) == 0)
  assert (np.linalg.norm(want, axis=1) == 0).any() and (np.linalg.norm(want, axis=1) > 0).any()
  # a NaN entry makes its own group NaN and leaves the others as they were
  z_bad = np.asarray(solve(jnp.asarray(b_bad, jnp.float32), jnp.asarray(P, jnp.float32)))
  assert np.isnan(z_bad[5]).all() and np.isfinite(np.delete(z_bad, 5, axis=0)).all()
  np.testing.assert_allclose(np.delete(z_bad, 5, axis=0), np.delete(z, 5, axis=0), rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
@pytest.mark.parametrize("method", ["ramda", "prox_adamw"])
def test_adaptive_methods_under_the_options_match_numpy(method):
  steps, lam = 20, 0.05
  x, target, scale, noise = make_problem(steps=steps)
  grad = numpy_grad(target, scale, noise)
  if method == "ramda":
    lr, c, eps = 0.05, 0.5, 1e-6
    want, _ = ref.ramda_run(x, grad, steps, lr, c, lam, "group_lasso", GROUPS, eps)
    tx = rmda_jax.ramda(lr, momentum=c, regularizer=rmda_jax.group_lasso(lam), eps=eps)
  else:
    want = ref.prox_adamw_run(x, grad, steps, 0.01, lam, "group_lasso", GROUPS)
    tx = rmda_jax.prox_adamw(0.01, regularizer=rmda_jax.group_lasso(lam))
  params, _ = run_jax(tx, x, target, scale, noise, steps, compiler_options=OPTIONS)
  got = from_tree(params)
  for name in SHAPES:
    np.testing.assert_allclose(got[name], want[name], atol=1e-4, rtol=0, err_msg=name)
