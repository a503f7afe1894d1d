"""Unstructured sparsity: RMDA + L1 against RigL at matched sparsity, and a ternary network.

The RMDA paper's second claim: L1-regularized training by RMDA reaches higher
accuracy than RigL (Evci et al. 2020) at the same high sparsity. For each
model (MLP 784-256-128-10 and LeNet5 on the offline MNIST subset):

1. a small sweep of the L1 strength for RMDA on seed 0 (a geometric grid,
   then log-linear interpolation towards each target), to find the lambda whose final
   sparsity of the kernel weights is nearest to each target (90/95/98%);
2. at each chosen lambda, RMDA on every seed, and RigL (ERK, SGD with
   momentum 0.9, drop fraction 0.3 every 100 steps until 75% of training) at
   exactly the sparsity RMDA reached;
3. dense SGD (momentum 0.9) and RMDA with the ternary constraint
   (weights in {-a, 0, a}, a = 1/sqrt(fan_in)) on every seed.

All runs share the epochs and the stage-wise protocol (learning rate x 0.1 at
50% and 75% of the epochs; RMDA restarts and ramps its momentum to 1).
Sparsity is the fraction of zero kernel weights (the leaves both L1 and RigL
act on; biases are dense in both). Finished runs are kept in ``--work`` and
reused by a later invocation with the same settings (e.g. another
``--sgd-lr`` reruns only dense SGD and RigL).

    python benchmarks/pruning.py                  # MLP and LeNet5, 2 seeds, 40 epochs:
                                                  # ~25 min on 2 CPU cores
    python benchmarks/pruning.py --models mlp     # ~4 min
    python benchmarks/pruning.py --seeds 3 --epochs 100
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os

import _harness
import numpy as np

from rmda_jax.app import data as datasets
from rmda_jax.app import train


def run(args, model, optimizer, seed, regularizer="none", strength=0.0, sparsity=0.9):
  """One training run; a finished run with the same config in ``--work`` is reused."""
  heavy_ball = optimizer in ("sgd", "rigl")
  milestones = tuple(sorted({max(args.epochs // 2, 1), max(3 * args.epochs // 4, 1)}))
  config = train.TrainConfig(
    model=model,
    dataset=args.dataset,
    optimizer=optimizer,
    regularizer=regularizer,
    strength=strength,
    epochs=args.epochs,
    batch_size=args.batch_size,
    milestones=milestones,
    learning_rate=args.sgd_lr if heavy_ball else None,
    seed=seed,
    hidden=(256, 128),
    sparsity=sparsity,
    progress=False,
    plots=False,
    checkpoint_every=10**9,
    overwrite=True,
    out=os.path.join(
      args.work,
      f"{model}-{optimizer}-{regularizer}-{strength:g}-{sparsity:.4f}-{seed}"
      + (f"-lr{args.sgd_lr:g}" if heavy_ball else ""),
    ),
  )
  last = _finished(config)
  if last is None:
    last = train.run(config, log=lambda line: None).history[-1]
  print(
    f"  {model} {optimizer} {regularizer} lambda={strength:g} seed={seed}: "
    f"acc {last['val_accuracy']:.4f} sparsity {last['weight_sparsity']:.4f}",
    flush=True,
  )
  return last


def _finished(config):
  try:
    with open(os.path.join(config.out, "log.json")) as f:
      log = json.load(f)
  except (OSError, ValueError):
    return None
  same = json.loads(json.dumps(dataclasses.asdict(config))) == log["config"]
  return (
    log["epochs"][-1]
    if same and log["epochs"] and log["epochs"][-1]["epoch"] == config.epochs
    else None
  )


def sweep(args, model):
  """RMDA + L1 on seed 0 over the grid, then up to ``--refine`` log-linear
  interpolation steps per target (until within 0.5% of it)."""
  results = {lam: run(args, model, "rmda", 0, "l1", lam) for lam in args.grid}
  for target in args.targets:
    for _ in range(args.refine):
      points = sorted((lam, r["weight_sparsity"]) for lam, r in results.items())
      if min(abs(s - target) for _, s in points) <= 0.005:
        break
      below = [(strength, s) for strength, s in points if s < target]
      above = [(strength, s) for strength, s in points if s >= target]
      if not (below and above):
        break
      (l0, s0), (l1, s1) = max(below), min(above)
      lam = math.exp(math.log(l0) + (target - s0) / (s1 - s0) * (math.log(l1) - math.log(l0)))
      lam = float(f"{lam:.3g}")
      if lam in results:
        break
      results[lam] = run(args, model, "rmda", 0, "l1", lam)
  return results


def stats(values):
  return float(np.mean(values)), float(np.std(values))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=["mlp", "lenet5"], choices=["mlp", "lenet5"])
  parser.add_argument("--dataset", default="mnist_subset", choices=list(datasets.NAMES))
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=40)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--targets", type=float, nargs="+", default=[0.90, 0.95, 0.98])
  parser.add_argument("--grid", type=float, nargs="+", default=[3e-4, 1e-3, 3e-3, 1e-2])
  parser.add_argument(
    "--sgd-lr", type=float, default=0.02, help="learning rate of dense SGD and RigL (momentum 0.9)"
  )
  parser.add_argument("--refine", type=int, default=3, help="interpolation steps per target")
  parser.add_argument("--work", default="/tmp/rmda_jax_pruning")
  args = parser.parse_args()

  rows, runs = [], []
  for model in args.models:
    print(f"{model}: L1 strength sweep for RMDA (seed 0)", flush=True)
    swept = sweep(args, model)
    runs += [
      {"model": model, "method": "rmda+l1 sweep", "strength": lam, **r} for lam, r in swept.items()
    ]
    dense = [run(args, model, "sgd", seed) for seed in range(args.seeds)]
    ternary = [run(args, model, "rmda", seed, "ternary") for seed in range(args.seeds)]

    def row(target, method, lam, results, model=model):
      acc = stats([r["val_accuracy"] for r in results])
      on_set = [r["on_set_fraction"] for r in results if "on_set_fraction" in r]
      return {
        "model": model,
        "target": target,
        "method": method,
        "lambda": lam,
        "sparsity %": f"{100 * np.mean([r['weight_sparsity'] for r in results]):.2f}",
        "val acc %": f"{100 * acc[0]:.2f} +- {100 * acc[1]:.2f}",
        "on {-a,0,a} %": f"{100 * np.mean(on_set):.1f}" if on_set else "-",
      }

    for target in args.targets:
      lam = min(swept, key=lambda strength: abs(swept[strength]["weight_sparsity"] - target))
      rmda_runs = [swept[lam]] + [
        run(args, model, "rmda", seed, "l1", lam) for seed in range(1, args.seeds)
      ]
      reached = float(np.mean([r["weight_sparsity"] for r in rmda_runs]))
      rigl_runs = [run(args, model, "rigl", seed, sparsity=reached) for seed in range(args.seeds)]
      rows += [
        row(f"{target:.0%}", "rmda + l1", lam, rmda_runs),
        row(f"{target:.0%}", "rigl", "-", rigl_runs),
      ]
      runs += [
        {"model": model, "method": "rmda+l1", "target": target, "strength": lam, **r}
        for r in rmda_runs
      ]
      runs += [{"model": model, "method": "rigl", "target": target, **r} for r in rigl_runs]
    rows += [row("-", "dense sgd", "-", dense), row("ternary", "rmda", "-", ternary)]
    runs += [{"model": model, "method": "rmda ternary", **r} for r in ternary]
    runs += [{"model": model, "method": "dense sgd", **r} for r in dense]
  _harness.print_table(
    rows,
    list(rows[0]),
    f"RMDA + L1 vs RigL at matched sparsity on {args.dataset}, "
    f"{args.epochs} epochs, {args.seeds} seeds (mean +- std)",
  )
  _harness.write_json("pruning", {"args": vars(args), "rows": rows, "runs": runs})


if __name__ == "__main__":
  main()
