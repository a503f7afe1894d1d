"""Run by tests/optim/test_sharding.py in a process with 8 simulated CPU devices.

Prints one JSON line: for every optimizer and layout, the largest difference
between 20 sharded steps on a 2x4 mesh and the same steps on one device,
whether the zero patterns agree, whether the state kept the params'
shardings, and any host transfers found in the compiled step.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rmda_jax
from rmda_jax.testing import host_transfers

STEPS = 20


def make_params():
  rng = np.random.default_rng(0)
  return {
    "Conv_0": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 8, 16)) * 0.2, jnp.float32)},
    "Dense_0": {
      "kernel": jnp.asarray(rng.normal(size=(32, 16)) * 0.3, jnp.float32),
      "bias": jnp.zeros(16, jnp.float32),
    },
    "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(16, 8)) * 0.3, jnp.float32)},
  }


def loss_fn(params, x, y):
  h = jax.nn.relu(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
  logits = h @ params["Dense_1"]["kernel"]
  conv = params["Conv_0"]["kernel"]
  target = jnp.linspace(-0.3, 0.3, conv.size).reshape(conv.shape)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean() + jnp.mean(
    (conv - target) ** 2
  )


LAYOUTS = {
  # replicated params, batch split over all 8 devices
  "data_parallel": {
    "Conv_0": {"kernel": P()},
    "Dense_0": {"kernel": P(), "bias": P()},
    "Dense_1": {"kernel": P()},
  },
  # kernels split along a reduced (non-group) axis: every group spans devices
  "split_within_groups": {
    "Conv_0": {"kernel": P(None, None, None, "model")},
    "Dense_0": {"kernel": P("data", "model"), "bias": P("model")},
    "Dense_1": {"kernel": P(None, "model")},
  },
  # kernels split along the group axis: whole groups per device
  "split_across_groups": {
    "Conv_0": {"kernel": P(None, None, "model", None)},
    "Dense_0": {"kernel": P("model", None), "bias": P()},
    "Dense_1": {"kernel": P("model", "data")},
  },
}


def optimizers():
  gl, strong, nuc = (
    rmda_jax.group_lasso(0.05),
    rmda_jax.group_lasso(0.5),
    rmda_jax.nuclear_norm(0.05),
  )
  stages = rmda_jax.stagewise([10], gamma=0.5)
  return {
    "rmda": rmda_jax.rmda(0.1, momentum=0.5, regularizer=strong, stages=stages),
    "ramda": rmda_jax.ramda(0.05, momentum=0.5, regularizer=gl, stages=stages),
    "prox_sgd": rmda_jax.prox_sgd(0.1, regularizer=strong),
    "prox_adamw": rmda_jax.prox_adamw(0.01, regularizer=gl),
    "prox_ssi": rmda_jax.prox_ssi(0.01, regularizer=gl),
    "rmda_nuclear": rmda_jax.rmda(0.1, momentum=0.3, regularizer=nuc),
    "ramda_nuclear": rmda_jax.ramda(
      0.05,
      momentum=0.3,
      regularizer=nuc,
      solver=rmda_jax.prox.ProximalGradient(max_iters=20, tol=1e-6),
    ),
  }


def run(tx, params, batches, mesh=None, specs=None):
  def step(p, s, x, y):
    g = jax.grad(loss_fn)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  if mesh is None:
    state = tx.init(params)
    jitted = jax.jit(step)
  else:
    shard = jax.tree_util.tree_map(
      lambda sp: NamedSharding(mesh, sp), specs, is_leaf=lambda v: isinstance(v, P)
    )
    params = jax.device_put(params, shard)
    state = rmda_jax.optim.sharding.init(tx, params)
    state_shard = rmda_jax.optim.sharding.state_shardings(tx, params)
    batch_shard = NamedSharding(mesh, P(("data", "model")))
    batches = [(jax.device_put(x, batch_shard), jax.device_put(y, batch_shard)) for x, y in batches]
    jitted = jax.jit(
      step,
      in_shardings=(shard, state_shard, batch_shard, batch_shard),
      out_shardings=(shard, state_shard),
    )
  transfers = host_transfers(jitted.lower(params, state, *batches[0]).compile().as_text())
  for x, y in batches:
    params, state = jitted(params, state, x, y)
  return params, state, transfers


def main():
  assert jax.device_count() == 8, jax.devices()
  # GSPMD's automatic partitioning (the mode of jax.jit with in/out shardings)
  mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
  rng = np.random.default_rng(1)
  batches = [
    (jnp.asarray(rng.normal(size=(16, 32)), jnp.float32), jnp.asarray(rng.integers(0, 8, size=16)))
    for _ in range(STEPS)
  ]
  results = []
  for name, tx in optimizers().items():
    ref_params, ref_state, ref_transfers = run(tx, make_params(), batches)
    for layout, specs in LAYOUTS.items():
      params, state, transfers = run(tx, make_params(), batches, mesh, specs)
      diffs = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params))
      ]
      zeros_equal = all(
        np.array_equal(np.asarray(a) == 0, np.asarray(b) == 0)
        for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(ref_params))
      )
      z = rmda_jax.structured_params(state, params)
      z_ref = rmda_jax.structured_params(ref_state, ref_params)
      zeros_equal &= all(
        np.array_equal(np.asarray(a) == 0, np.asarray(b) == 0)
        for a, b in zip(jax.tree_util.tree_leaves(z), jax.tree_util.tree_leaves(z_ref))
      )
      p_specs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda v: str(v.sharding.spec), params)
      )
      first_state_tree = (
        state.anchor
        if name.startswith(("rmda", "ramda"))
        else state.momentum
        if name == "prox_sgd"
        else state.mu
      )
      s_specs = jax.tree_util.tree_leaves(
        jax.tree_util.tree_map(lambda v: str(v.sharding.spec), first_state_tree)
      )
      results.append(
        {
          "optimizer": name,
          "layout": layout,
          "max_diff": max(diffs),
          "zeros_equal": zeros_equal,
          "zeros": int(
            sum(int(np.sum(np.asarray(a) == 0)) for a in jax.tree_util.tree_leaves(params))
          ),
          "state_follows_params": p_specs == s_specs,
          "host_transfers": transfers + ref_transfers,
        }
      )
  print(json.dumps(results))


if __name__ == "__main__":
  sys.exit(main())
