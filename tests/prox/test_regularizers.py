"""Prox operators against their optimality conditions and NumPy closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rmda_jax
from rmda_jax.core import rules as leaf_rules

FLOATS = st.floats(-10, 10, allow_nan=False, width=32)
SHAPES = st.tuples(st.integers(1, 5), st.integers(1, 6))
SETTINGS = settings(max_examples=60, deadline=None)


@SETTINGS
@given(
  x=hnp.arrays(np.float32, SHAPES, elements=FLOATS),
  thr=st.floats(0, 5),
  axis=st.sampled_from([0, 1]),
)
def test_group_lasso_prox_optimality(x, thr, axis):
  rule = leaf_rules.GroupRule((axis,))
  reg = rmda_jax.group_lasso(1.0, rules={"w": rule})
  z = np.asarray(reg.prox({"w": jnp.asarray(x)}, thr)["w"], np.float64)
  x = x.astype(np.float64)
  w = np.sqrt(x.shape[axis])
  xn = np.linalg.norm(x, axis=axis, keepdims=True)
  zn = np.linalg.norm(z, axis=axis, keepdims=True)
  zero = (zn == 0).ravel()
  # zero groups: 0 in z - x + thr w d||0||, i.e. ||x_g|| <= thr w
  assert np.all(xn.ravel()[zero] <= thr * w * (1 + 1e-5) + 1e-6)
  # nonzero groups: z - x + thr w z/||z|| = 0
  with np.errstate(invalid="ignore", divide="ignore"):
    stationarity = z - x + thr * w * z / zn
  resid = np.linalg.norm(np.where(zn > 0, stationarity, 0), axis=axis)
  assert np.all(resid <= 1e-5 * (1 + np.linalg.norm(x, axis=axis)))


@SETTINGS
@given(x=hnp.arrays(np.float32, SHAPES, elements=FLOATS), thr=st.floats(0, 5))
def test_l1_prox_optimality(x, thr):
  z = np.asarray(rmda_jax.l1(2.0).prox({"w": jnp.asarray(x)}, thr / 2)["w"], np.float64)
  x = x.astype(np.float64)
  nz = z != 0
  assert np.all(np.abs(x[~nz]) <= thr * (1 + 1e-6) + 1e-6)
  np.testing.assert_allclose(z[nz] - x[nz] + thr * np.sign(z[nz]), 0, atol=2e-5)


@SETTINGS
@given(
  x=hnp.arrays(np.float32, SHAPES, elements=FLOATS), thr=st.floats(0, 3), ratio=st.floats(0, 1)
)
def test_elastic_net_prox_optimality(x, thr, ratio):
  z = np.asarray(
    rmda_jax.elastic_net(1.0, l1_ratio=ratio).prox({"w": jnp.asarray(x)}, thr)["w"], np.float64
  )
  x = x.astype(np.float64)
  nz = z != 0
  assert np.all(np.abs(x[~nz]) <= thr * ratio * (1 + 1e-6) + 1e-6)
  grad = z - x + thr * ratio * np.sign(z) + thr * (1 - ratio) * z
  np.testing.assert_allclose(grad[nz], 0, atol=5e-5)


@SETTINGS
@given(
  x=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=FLOATS),
  thr=st.floats(0, 5),
)
def test_nuclear_prox_matches_numpy_svd(x, thr):
  z = np.asarray(rmda_jax.nuclear_norm(1.0).prox({"w": jnp.asarray(x)}, thr)["w"])
  np.testing.assert_allclose(
    z, ref.prox_nuclear(x.astype(np.float64), thr), atol=1e-4 * (1 + np.abs(x).max())
  )


def test_nuclear_prox_on_conv_kernel_is_reshaped_matrix():
  x = np.random.default_rng(0).normal(size=(3, 3, 2, 4)).astype(np.float32)
  z = np.asarray(rmda_jax.nuclear_norm(1.0).prox({"kernel": jnp.asarray(x)}, 0.7)["kernel"])
  np.testing.assert_allclose(z, ref.prox_nuclear(x.astype(np.float64), 0.7), atol=1e-5)


def test_zero_group_with_zero_threshold_stays_zero_no_nan():
  reg = rmda_jax.group_lasso(1.0)
  x = {"kernel": jnp.zeros((4, 3)), "bias": jnp.zeros(3)}
  z = reg.prox(x, 0.0)
  assert np.all(np.asarray(z["kernel"]) == 0)
  grads = jax.grad(reg.value)(x)
  assert np.all(np.isfinite(np.asarray(grads["kernel"])))
  # lr = 0 in an optimizer gives a zero threshold too
  z = rmda_jax.group_lasso(0.0).prox({"kernel": jnp.array([[0.0, 0.0], [1.0, 2.0]])}, 1.0)
  np.testing.assert_array_equal(np.asarray(z["kernel"]), [[0, 0], [1, 2]])


def test_value_matches_numpy():
  rng = np.random.default_rng(1)
  params = {
    "Conv_0": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
    "Dense_0": {"kernel": rng.normal(size=(6, 5)), "bias": rng.normal(size=5)},
  }
  jparams = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
  conv, dense = params["Conv_0"]["kernel"], params["Dense_0"]["kernel"]
  expected = 0.3 * (
    np.sqrt(36) * np.linalg.norm(conv.transpose(2, 0, 1, 3).reshape(2, -1), axis=1).sum()
    + np.sqrt(5) * np.linalg.norm(dense, axis=1).sum()
  )
  np.testing.assert_allclose(float(rmda_jax.group_lasso(0.3).value(jparams)), expected, rtol=1e-5)
  expected_l1 = 0.3 * (np.abs(conv).sum() + np.abs(dense).sum())
  np.testing.assert_allclose(float(rmda_jax.l1(0.3).value(jparams)), expected_l1, rtol=1e-5)
  expected_nuc = 0.3 * (
    np.linalg.svd(conv.reshape(-1, 4), compute_uv=False).sum()
    + np.linalg.svd(dense, compute_uv=False).sum()
  )
  np.testing.assert_allclose(
    float(rmda_jax.nuclear_norm(0.3).value(jparams)), expected_nuc, rtol=1e-5
  )


def test_default_flax_rules():
  params = {
    "Conv_0": {"kernel": jnp.ones((3, 3, 4, 8)), "bias": jnp.ones(8)},
    "Dense_0": {"kernel": jnp.ones((5, 7)), "bias": jnp.ones(7)},
    "LayerNorm_0": {"scale": jnp.ones(7)},
    "Embed_0": {"embedding": jnp.ones((10, 4))},
  }
  resolved = rmda_jax.group_lasso(1.0).place(params)
  rules = dict(zip(resolved.paths, resolved.rules))
  assert rules["Conv_0/kernel"] == leaf_rules.GroupRule((0, 1, 3))
  assert rules["Dense_0/kernel"] == leaf_rules.GroupRule((1,))
  assert rules["Conv_0/bias"] is None and rules["LayerNorm_0/scale"] is None
  assert rules["Embed_0/embedding"] is None
  out = rmda_jax.group_lasso(1.0, grouping="output").place(params)
  assert dict(zip(out.paths, out.rules))["Conv_0/kernel"] == leaf_rules.GroupRule((0, 1, 2))
  assert leaf_rules.group_weight((3, 3, 4, 8), leaf_rules.GroupRule((0, 1, 3))) == pytest.approx(
    np.sqrt(72)
  )


def test_per_leaf_override_and_scale():
  params = {"a": {"kernel": jnp.full((2, 3), 1.0)}, "b": {"kernel": jnp.full((2, 3), 1.0)}}
  rule = leaf_rules.by_path({"b/*": None}, default=leaf_rules.default_group_rule())
  reg = rmda_jax.group_lasso(1.0, rules=rule)
  z = reg.prox(params, 10.0)
  assert np.all(np.asarray(z["a"]["kernel"]) == 0)
  np.testing.assert_array_equal(np.asarray(z["b"]["kernel"]), 1.0)
  # per-leaf scales: a small scale keeps "a" nonzero, a large one zeroes it
  reg2 = rmda_jax.group_lasso(1.0)
  z = reg2.prox(params, {"a": {"kernel": 0.01}, "b": {"kernel": 10.0}})
  assert np.all(np.asarray(z["a"]["kernel"]) != 0) and np.all(np.asarray(z["b"]["kernel"]) == 0)


def test_rule_tree():
  params = {"w": jnp.ones((2, 3)), "v": jnp.ones((4,))}
  reg = rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((0,), weight=2.0), "v": None})
  expected = 2.0 * np.linalg.norm(np.ones((2, 3)), axis=0).sum()
  np.testing.assert_allclose(float(reg.value(params)), expected, rtol=1e-6)


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: rmda_jax.group_lasso(-1.0), "strength"),
    (lambda: rmda_jax.l1(float("nan")), "strength"),
    (lambda: rmda_jax.elastic_net(1.0, l1_ratio=1.5), "l1_ratio"),
    (lambda: rmda_jax.group_lasso(1.0, grouping="rows"), "grouping"),
  ],
)
def test_bad_regularizer_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_rules_raise_at_check():
  params = {"w": jnp.ones((2, 3)), "v": jnp.ones((4,))}
  with pytest.raises(ValueError, match="reduce axis 2"):
    rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((2,)), "v": None}).check(params)
  with pytest.raises(ValueError, match="does not match the params"):
    rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((0,))}).check(params)
  with pytest.raises(ValueError, match="takes GroupRule"):
    rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.Matrix(), "v": None}).check(params)
  with pytest.raises(ValueError, match="ndim >= 2"):
    rmda_jax.nuclear_norm(1.0, rules={"w": None, "v": leaf_rules.Matrix()}).check(params)
  with pytest.raises(ValueError, match="repeated"):
    rmda_jax.group_lasso(1.0, rules={"w": leaf_rules.GroupRule((0, -2)), "v": None}).check(params)
