"""rmda_jax.cpu.compiler_options: accepted by XLA, IEEE where it matters, same answers."""

import glob
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from problems import GROUPS, SHAPES, from_tree, make_problem, numpy_grad, per_leaf_secular, run_jax

import rmda_jax
from rmda_jax.cpu import options as compile_options

OPTIONS = rmda_jax.cpu.compiler_options("cpu")


def test_options_per_backend_and_validation():
  assert OPTIONS["xla_cpu_enable_fast_math"] is True
  for honored in ("nans", "infs", "division", "functions"):
    assert OPTIONS[f"xla_cpu_fast_math_honor_{honored}"] is True
  assert OPTIONS["xla_cpu_enable_fast_min_max"] is False
  assert rmda_jax.cpu.compiler_options("gpu") == {} and rmda_jax.cpu.compiler_options("tpu") == {}
  assert rmda_jax.cpu.compiler_options() == (OPTIONS if jax.default_backend() == "cpu" else {})
  rmda_jax.cpu.compiler_options("cpu")["xla_cpu_enable_fast_math"] = False  # a copy each call
  assert rmda_jax.cpu.compiler_options("cpu")["xla_cpu_enable_fast_math"] is True
  with pytest.raises(TypeError, match="backend"):
    rmda_jax.cpu.compiler_options(jax.devices()[0])


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
  b = (
    rng.normal(size=(64, 48)) * np.where(np.arange(64) % 3 == 0, 0.2, 1.0)[:, None]
  )  # some groups screened
  P = np.exp(rng.uniform(np.log(1e-2), np.log(1e2), size=b.shape))
  thr = 0.3
  want = ref.diag_prox_group_bisect(b, P, thr, (1,))
  b_bad = b.copy()
  b_bad[5, 3] = np.nan

  def secular(b, P):
    return per_leaf_secular([b], [P], [thr * np.sqrt(48)], [(1,)])[0][0]

  solve = jax.jit(secular, compiler_options=OPTIONS)
  z = np.asarray(solve(jnp.asarray(b, jnp.float32), jnp.asarray(P, jnp.float32)))
  err = np.linalg.norm(z - want, axis=1)
  assert np.all(err <= 1e-4 * (np.linalg.norm(want, axis=1) + 1e-6)), err.max()
  np.testing.assert_array_equal(np.linalg.norm(z, axis=1) == 0, np.linalg.norm(want, axis=1) == 0)
  assert (np.linalg.norm(want, axis=1) == 0).any() and (np.linalg.norm(want, axis=1) > 0).any()
  # a NaN entry makes its own group NaN and leaves the others as they were
  z_bad = np.asarray(solve(jnp.asarray(b_bad, jnp.float32), jnp.asarray(P, jnp.float32)))
  assert np.isnan(z_bad[5]).all() and np.isfinite(np.delete(z_bad, 5, axis=0)).all()
  np.testing.assert_allclose(
    np.delete(z_bad, 5, axis=0), np.delete(z, 5, axis=0), rtol=1e-5, atol=1e-7
  )


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


def _numpy_conv_same(x, w):
  """Float64 'SAME' cross-correlation, NHWC x HWIO, stride 1 (an independent reference)."""
  kh, kw = w.shape[:2]
  xp = np.pad(x, ((0, 0), (kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)))
  out = np.zeros(x.shape[:3] + (w.shape[3],))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum("nhwc,co->nhwo", xp[:, i : i + x.shape[1], j : j + x.shape[2]], w[i, j])
  return out


def _conv(x, w):
  return jax.lax.conv_general_dilated(
    x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
  )


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_convolution_and_its_gradients_under_the_options_match_numpy():
  rng = np.random.default_rng(1)
  x, w = rng.normal(size=(16, 12, 12, 20)), rng.normal(size=(5, 5, 20, 24)) / 10
  r = rng.normal(size=(16, 12, 12, 24))  # cotangent: d/dx and d/dw of <conv(x, w), r>
  out, grads = jax.jit(
    lambda x, w: jax.value_and_grad(lambda x, w: jnp.sum(_conv(x, w) * r), (0, 1))(x, w),
    compiler_options=OPTIONS,
  )(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32))
  np.testing.assert_allclose(float(out), np.sum(_numpy_conv_same(x, w) * r), rtol=1e-4)
  xp = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  want_dw = np.stack(
    [
      np.stack([np.einsum("nhwc,nhwo->co", xp[:, i : i + 12, j : j + 12], r) for j in range(5)])
      for i in range(5)
    ]
  )
  want_dx = _numpy_conv_same(
    r, np.flip(w, (0, 1)).transpose(0, 1, 3, 2)
  )  # the adjoint: flipped, in/out swapped
  for got, want in ((grads[1], want_dw), (grads[0], want_dx)):
    np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=2e-5 * np.abs(want).max())


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU options")
def test_convolutions_leave_ynnpack_where_this_xla_accepts_the_setting(tmp_path):
  if compile_options.YNN_FUSION_TYPE not in OPTIONS:
    pytest.skip("this jaxlib does not accept the YNNPACK fusion-type setting, or XLA_FLAGS sets it")
  x, w = jnp.ones((32, 14, 14, 20)), jnp.ones((5, 5, 20, 50))
  conv = jax.jit(_conv, compiler_options=OPTIONS)
  conv(x, w).block_until_ready()
  with jax.profiler.trace(str(tmp_path)):
    conv(x, w).block_until_ready()
  events = json.load(
    gzip.open(glob.glob(str(tmp_path / "**" / "*.trace.json.gz"), recursive=True)[0])
  )
  events = events["traceEvents"] if isinstance(events, dict) else events
  ops = {
    e["args"]["hlo_op"] for e in events if e.get("ph") == "X" and "hlo_op" in e.get("args", {})
  }
  assert any(op.startswith("conv") for op in ops) and not any("ynn" in op for op in ops), ops


def test_the_convolution_setting_is_left_out_where_rejected_or_set_by_the_user(monkeypatch):
  monkeypatch.setattr(
    compile_options,
    "_CONVOLUTIONS_BY_XLA",
    {compile_options.YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_NOT_A_TYPE"},
  )
  rejected = rmda_jax.cpu.compiler_options("cpu")
  assert (
    compile_options.YNN_FUSION_TYPE not in rejected and rejected["xla_cpu_enable_fast_math"] is True
  )
  monkeypatch.undo()
  monkeypatch.setenv(
    "XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_thunk_runtime=true"
  )
  assert compile_options.YNN_FUSION_TYPE not in rmda_jax.cpu.compiler_options("cpu")
  monkeypatch.delenv("XLA_FLAGS")
  assert (
    compile_options.YNN_FUSION_TYPE in rmda_jax.cpu.compiler_options("cpu")
  ) == compile_options._xla_accepts(tuple(compile_options._CONVOLUTIONS_BY_XLA.items()))
