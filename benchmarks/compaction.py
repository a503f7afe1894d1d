"""Compact vs original model: parameters, FLOPs and inference latency, side by side.

Trains LeNet5 on the offline MNIST subset and a VGG-style CNN on digits with
RMDA + group-LASSO (``rmda_jax.train``, the code of ``rmda-jax train``),
compacts the structured point ``z`` (``rmda_jax.compaction.compact``), checks
that both models give the same predictions, and times one jitted forward pass
of each, interleaved, at several batch sizes.

    python benchmarks/compaction.py                       # ~10 min on 2 CPU cores
    python benchmarks/compaction.py --epochs 60 --strength 2e-3   # one lambda for both
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import _harness
from rmda_jax import compaction
from rmda_jax import data as datasets
from rmda_jax import train
from rmda_jax.dual_averaging import structured_params

SETTINGS = {"lenet5": ("mnist_subset", 1e-3), "vgg": ("digits", 3e-3)}  # dataset, group-LASSO lambda


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument("--strength", type=float, default=None,
                      help="lambda for every model (default: 1e-3 for lenet5, 3e-3 for vgg)")
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--work", default="/tmp/rmda_jax_compaction")
  args = parser.parse_args()

  rows = []
  for model_name in args.models:
    dataset_name, default_strength = SETTINGS[model_name]
    strength = default_strength if args.strength is None else args.strength
    config = train.TrainConfig(
        model=model_name, dataset=dataset_name, optimizer="rmda", regularizer="group_lasso",
        strength=strength, epochs=args.epochs,
        milestones=(args.epochs // 2, 3 * args.epochs // 4), progress=False, plots=False,
        checkpoint_every=10**9, out=os.path.join(args.work, model_name))
    result = train.run(config, log=lambda line: None)
    dataset = datasets.load(config.dataset)
    model = train.build_model(config, dataset)
    params = structured_params(result.opt_state)
    small = compaction.compact(model, params)
    x_all = dataset.x_test
    original_pred = np.argmax(np.asarray(model.apply({"params": params}, x_all)), -1)
    compact_pred = np.argmax(np.asarray(small.apply(x_all)), -1)
    same = float(np.mean(original_pred == compact_pred))
    accuracy = float(np.mean(original_pred == dataset.y_test))
    widths = ", ".join(f"{k} {len(v)}" for k, v in small.kept.items())
    print(f"{model_name}: val acc {accuracy:.4f}, group sparsity {result.history[-1]['group_sparsity']:.3f}; "
          f"compact widths {widths}; identical predictions on {same:.2%} of the validation set", flush=True)
    n0, n1 = compaction.num_params(params), compaction.num_params(small.params)
    f0 = compaction.flops(model, params, x_all[:1])
    f1 = compaction.flops(small.model, small.params, x_all[:1])
    for batch in args.batch_sizes:
      x = np.resize(x_all, (batch,) + x_all.shape[1:])
      t = compaction.latencies({"original": (model, params), "compact": (small.model, small.params)},
                               x, rounds=args.rounds)
      rows.append({
          "model": model_name, "lambda": strength, "batch": batch, "val_acc": accuracy, "same_predictions": same,
          "params": n0, "params_compact": n1, "params_ratio": n1 / n0,
          "flops": f0, "flops_compact": f1, "flops_ratio": f1 / f0,
          "ms": 1e3 * t["original"], "ms_compact": 1e3 * t["compact"],
          "latency_ratio": t["compact"] / t["original"], "compact_widths": widths,
      })
  _harness.print_table(rows, ["model", "lambda", "batch", "val_acc", "params", "params_compact", "params_ratio",
                              "flops_ratio", "ms", "ms_compact", "latency_ratio"],
                       f"compact vs original after {args.epochs} epochs of RMDA + group-LASSO; "
                       f"latency: median of {args.rounds} interleaved rounds")
  _harness.write_json("compaction", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
  main()
