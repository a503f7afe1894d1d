"""Sharded training on a 2x4 mesh of simulated CPU devices equals the single-device run;
bf16 params keep exact zeros; compiled steps hold no host callbacks or transfers."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax.testing import assert_no_host_transfers, host_transfers


@pytest.fixture(scope="module")
def sharded_results():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [sys.executable, os.path.join(os.path.dirname(__file__), "..", "support", "sharded_run.py")],
    capture_output=True,
    text=True,
    env=env,
    timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sharded_runs_equal_single_device(sharded_results):
  assert len(sharded_results) == 7 * 3
  for r in sharded_results:
    where = f"{r['optimizer']} / {r['layout']}"
    assert r["max_diff"] <= 1e-6, where
    assert r["zeros_equal"], where
    assert r["state_follows_params"], where
    assert r["host_transfers"] == [], where
  # the comparison covers real structure: exact zeros appear in every group-LASSO run
  for r in sharded_results:
    if not r["optimizer"].endswith("nuclear"):
      assert r["zeros"] > 0, r


def test_host_transfer_detector_sees_callbacks():
  def with_callback(x):
    jax.debug.callback(lambda v: None, x)
    return x + 1

  found = host_transfers(jax.jit(with_callback).lower(jnp.ones(3)).compile().as_text())
  assert found
  with pytest.raises(AssertionError, match="host"):
    assert_no_host_transfers(jax.jit(with_callback), jnp.ones(3))


OPTIMIZERS = {
  "rmda": lambda r: rmda_jax.rmda(0.1, momentum=1.0, regularizer=r),
  "ramda": lambda r: rmda_jax.ramda(0.05, momentum=1.0, regularizer=r),
  "prox_sgd": lambda r: rmda_jax.prox_sgd(0.1, regularizer=r),
  "prox_adamw": lambda r: rmda_jax.prox_adamw(0.02, regularizer=r),
  "prox_ssi": lambda r: rmda_jax.prox_ssi(0.02, regularizer=r),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_params(name, dtype):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 12)).astype(np.float32)
  x[:, 6:] *= 0.05  # weak features whose groups the penalty removes
  w_true = np.zeros((12, 3), np.float32)
  w_true[:6] = rng.normal(size=(6, 3))
  y = np.argmax(x @ w_true, 1)
  params = {"kernel": jnp.zeros((12, 3), dtype), "bias": jnp.zeros(3, dtype)}
  reg = rmda_jax.group_lasso(0.02)
  tx = OPTIMIZERS[name](reg)
  state = tx.init(params)
  for leaf in jax.tree_util.tree_leaves(state):
    if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.floating) and leaf.ndim > 0:
      assert leaf.dtype in (
        jnp.float32,
        dtype,
      )  # accumulators float32; only z keeps the params' dtype

  def loss(p):
    logits = jnp.asarray(x, dtype) @ p["kernel"] + p["bias"]
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()

  @jax.jit
  def step(p, s):
    value, g = jax.value_and_grad(loss)(p)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s, value

  losses = []
  for _ in range(150):
    params, state, value = step(params, state)
    losses.append(float(value))
  kernel = np.asarray(params["kernel"], np.float32)
  assert (
    params["kernel"].dtype == dtype and np.all(np.isfinite(kernel)) and np.all(np.isfinite(losses))
  )
  assert losses[-1] < 0.8 * losses[0]
  z = np.asarray(rmda_jax.structured_params(state, params)["kernel"], np.float32)
  zero_rows = np.linalg.norm(z, axis=1) == 0
  assert zero_rows.any(), "the penalty should remove some weak features"
  np.testing.assert_array_equal(z[zero_rows], 0.0)
  np.testing.assert_array_equal(kernel[zero_rows], 0.0)  # momentum 1 or proximal: params are z
