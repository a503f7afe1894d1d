"""Accuracy and structure of every method at a scale a CPU can run (the papers' comparison).

Trains with ``rmda_jax.app.train`` (the same code as ``rmda-jax train``): the MLP
on digits (``--mnist-subset``: also on the offline MNIST subset; ``--lenet5``:
LeNet5 there too; ``--full``: full MNIST / Fashion-MNIST when cached), several
seeds, each
method with its papers' learning rate and the stage-wise protocol
(milestones at 50% and 83% of the epochs, gamma 0.1; RMDA/RAMDA restart and
ramp their momentum to 1). Rows: group-LASSO for rmda, ramda, prox_sgd,
prox_adamw, prox_ssi and dense sgd; L1 and nuclear norm for rmda, ramda and
prox_sgd. All methods share one strength per regularizer, as in the papers'
MNIST configs. Reports validation accuracy, group sparsity and weighted group
sparsity (mean +- std over seeds), unstructured sparsity, low-rank level,
and draws group sparsity vs epoch for all methods in one figure per setting.

    python benchmarks/quality.py                     # MLP/digits, 100 epochs, 2 seeds:
                                                     # ~20 min, 2 CPU cores
    python benchmarks/quality.py --seeds 3 --epochs 60 --mnist-subset --lenet5 --full
"""

from __future__ import annotations

import argparse
import os

import _harness
import numpy as np

from rmda_jax.app import data as datasets
from rmda_jax.app import plots, train

GROUP_METHODS = ("rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi", "sgd")
OTHER_METHODS = ("rmda", "ramda", "prox_sgd")


def settings(args):
  out = [("mlp", "digits")]
  if args.mnist_subset:
    out.append(("mlp", "mnist_subset"))
  if args.lenet5:
    out.append(("lenet5", "mnist_subset"))
  if args.full:
    for name in ("mnist", "fashion_mnist"):
      try:
        datasets.fetch(name, download=False)
      except datasets.DataError:
        print(f"skipping {name}: not cached")
        continue
      out.append(("mlp", name))
      if args.lenet5:
        out.append(("lenet5", name))
  return out


def run_one(model, dataset, optimizer, regularizer, strength, seed, args):
  milestones = tuple(sorted({max(args.epochs // 2, 1), max((5 * args.epochs) // 6, 1)}))
  config = train.TrainConfig(
    model=model,
    dataset=dataset,
    optimizer=optimizer,
    regularizer=regularizer,
    strength=strength,
    epochs=args.epochs,
    batch_size=args.batch_size,
    milestones=milestones,
    seed=seed,
    out=os.path.join(args.work, f"{model}-{dataset}-{optimizer}-{regularizer}-{seed}"),
    hidden=(256, 128),
    progress=False,
    plots=False,
    checkpoint_every=10**9,
    overwrite=True,
    solver_max_iters=args.solver_max_iters,
    solver_tol=1e-3,
  )
  return train.run(config, log=lambda line: None).history


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=100)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--group-strength", type=float, default=2e-3)
  parser.add_argument("--l1-strength", type=float, default=2e-4)
  parser.add_argument("--nuclear-strength", type=float, default=2e-3)
  parser.add_argument(
    "--mnist-subset", action="store_true", help="also the MLP on the offline MNIST subset"
  )
  parser.add_argument(
    "--lenet5", action="store_true", help="also LeNet5 on the MNIST subset (slow on CPU)"
  )
  parser.add_argument(
    "--full", action="store_true", help="also full MNIST / Fashion-MNIST when cached"
  )
  parser.add_argument(
    "--solver-max-iters",
    type=int,
    default=5,
    help="inexact solver cap for the nuclear rows (the RAMDA paper's MLP config: 5)",
  )
  parser.add_argument("--work", default="/tmp/rmda_jax_quality")
  args = parser.parse_args()

  rows, curves = [], {}
  for model, dataset in settings(args):
    plan = [(m, "group_lasso", args.group_strength) for m in GROUP_METHODS]
    plan += [(m, "l1", args.l1_strength) for m in OTHER_METHODS]
    plan += [(m, "nuclear", args.nuclear_strength) for m in OTHER_METHODS]
    for optimizer, regularizer, strength in plan:
      finals, histories = [], []
      for seed in range(args.seeds):
        history = run_one(model, dataset, optimizer, regularizer, strength, seed, args)
        finals.append(history[-1])
        histories.append(history)

      def stat(key, finals=finals):
        values = [f[key] for f in finals if key in f]
        return f"{100 * np.mean(values):.2f} +- {100 * np.std(values):.2f}" if values else "-"

      row = {
        "setting": f"{model}/{dataset}",
        "method": optimizer if optimizer != "sgd" else "dense sgd",
        "regularizer": regularizer if optimizer != "sgd" else "none",
        "strength": strength,
        "val_acc %": stat("val_accuracy"),
        "group_sparsity %": stat("group_sparsity"),
        "weighted_group %": stat("weighted_group_sparsity"),
        "unstructured %": stat("unstructured_sparsity"),
        "low_rank %": stat("low_rank_level"),
      }
      rows.append(row)
      print(" | ".join(str(v) for v in row.values()), flush=True)
      if regularizer == "group_lasso":
        # RMDA/RAMDA: the structured point z, where their structure lives before the momentum ramp
        key = (
          "structured_group_sparsity"
          if "structured_group_sparsity" in histories[0][0]
          else "group_sparsity"
        )
        label = row["method"] + (" (z)" if key.startswith("structured") else "")
        mean_curve = [
          dict(epoch=e["epoch"], group_sparsity=float(np.mean([h[i][key] for h in histories])))
          for i, e in enumerate(histories[0])
        ]
        curves.setdefault(f"{model}-{dataset}", {})[label] = mean_curve
  _harness.print_table(
    rows, list(rows[0]), f"quality after {args.epochs} epochs, {args.seeds} seeds (mean +- std)"
  )
  for name, per_method in curves.items():
    path = os.path.join(_harness.RESULTS, f"quality_group_sparsity_{name}.png")
    plots.comparison(per_method, "group_sparsity", path, "group sparsity", f"group-LASSO, {name}")
    print(f"wrote {path}")
  _harness.write_json(
    "quality", {"args": vars(args), "rows": rows, "group_sparsity_curves": curves}
  )


if __name__ == "__main__":
  main()
