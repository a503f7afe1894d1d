"""Sharded optimizer steps: time per step on a device mesh, against the single-device step.

On a CPU-only machine the mesh is 8 simulated CPU devices (XLA's host
platform split; the numbers show partitioning overhead, not speed-up, since
the "devices" share the same cores). With a GPU, the GPU's devices form the
mesh. The model is LeNet5's parameter tree (--tree vgg16 for 15M params); the layouts are data
parallel (replicated params) and fully sharded (kernels split along their
output axis, which group norms reduce over). The step is update + apply of
each optimizer with group-LASSO, several steps per call in a jitted lax.scan.

    python benchmarks/sharded_step.py
    python benchmarks/sharded_step.py --tree vgg16 --rounds 10
"""

from __future__ import annotations

import os
import sys

if "--gpu" not in sys.argv:
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )

import argparse

import _harness
import jax
import jax.numpy as jnp
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P
from step_speed import TREES, make_runner, optimizers


def layout_specs(params, layout, mesh):
  def spec(x):
    if layout == "data_parallel" or x.ndim < 2:
      return NamedSharding(mesh, P())
    axes = [None] * x.ndim
    axes[-1] = "model" if x.shape[-1] % mesh.shape["model"] == 0 else None
    return NamedSharding(mesh, P(*axes))

  return jax.tree_util.tree_map(spec, params)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tree", default="lenet5", choices=list(TREES))
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument(
    "--gpu", action="store_true", help="use the accelerator's devices (no simulated CPUs)"
  )
  args = parser.parse_args()

  devices = jax.devices()
  n = len(devices)
  model_axis = 4 if n % 4 == 0 else n
  mesh = jax.make_mesh(
    (n // model_axis, model_axis), ("data", "model"), axis_types=(AxisType.Auto,) * 2
  )
  make, shape = TREES[args.tree]
  params = make().init(jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
  rows = []
  for layout in ("single_device", "data_parallel", "fully_sharded"):
    if layout == "single_device":
      placed = jax.device_put(params, devices[0])
    else:
      placed = jax.device_put(params, layout_specs(params, layout, mesh))
    grads = jax.tree_util.tree_map(lambda p: 1e-2 * jnp.ones_like(p), placed)
    runners = {}
    for name, (tx, _) in optimizers().items():
      runners[name], _ = make_runner(tx, placed, grads, args.steps)
    medians = _harness.interleaved_medians(runners, args.rounds, args.steps)
    for name, seconds in medians.items():
      rows.append(
        {
          "layout": layout,
          "devices": 1 if layout == "single_device" else n,
          "optimizer": name,
          "ms_per_step": 1e3 * seconds,
        }
      )
  _harness.print_table(
    rows,
    ["layout", "devices", "optimizer", "ms_per_step"],
    f"{args.tree} on {jax.default_backend()} ({n} devices, mesh {dict(mesh.shape)})",
  )
  _harness.write_json("sharded_step", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
  main()
