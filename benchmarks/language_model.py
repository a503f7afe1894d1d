"""Structured Transformer language models: validation perplexity against weighted group sparsity.

Trains the byte-level Transformer LM of ``rmda-jax train --model transformer``
on the offline ``pydoc`` text with RMDA, RAMDA, ProxSGD, ProxGen (ProxAdamW)
and dense AdamW; group-LASSO on the discovered groups (whole attention heads
and MLP hidden units); a strength sweep for the regularized methods, several
seeds, the stage-wise schedule from 8 epochs on (learning rate x 0.1 at 50%
and 75% of the epochs; RMDA/RAMDA restart there and ramp their momentum to
1). Reports, per
(method, strength), the final validation perplexity and weighted group
sparsity of the structured point (z for RMDA/RAMDA, the params otherwise),
heads and units kept, and the time per
epoch; draws perplexity vs weighted group sparsity; prints the RAMDA paper's
Transformer-XL / WikiText-103 table beside it.

    python benchmarks/language_model.py                    # ~15 min on 2 CPU cores
    # stages, closer to the paper:
    python benchmarks/language_model.py --epochs 20 --seeds 3 --layers 4 --width 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import _harness
import numpy as np

from rmda_jax.app import train

METHODS = {  # optimizer, default strengths (log-spaced)
  "rmda": ("rmda", (1e-3, 3e-3, 1e-2)),
  "ramda": ("ramda", (1e-4, 3e-4, 1e-3)),
  "prox_sgd": ("prox_sgd", (1e-4, 3e-4, 1e-3)),
  "proxgen": ("prox_adamw", (1e-4, 3e-4, 1e-3)),
  "adamw": ("adamw", (0.0,)),
}
PAPER = [  # RAMDA paper (NeurIPS 2024), Transformer-XL on WikiText-103
  ("ramda", 26.97, 0.362),
  ("rmda", 27.10, 0.360),
  ("prox_sgd", 27.42, 0.331),
  ("proxgen", 27.49, 0.305),
]


def run_one(method, strength, seed, args):
  optimizer, _ = METHODS[method]
  config = train.TrainConfig(
    model="transformer",
    dataset="pydoc",
    optimizer=optimizer,
    regularizer="group_lasso" if strength > 0 else "none",
    strength=strength,
    epochs=args.epochs,
    # the papers' stages; short runs have none (a restart every epoch or two leaves z
    # with too little accumulated to be a good model)
    milestones=(args.epochs // 2, 3 * args.epochs // 4) if args.epochs >= 8 else (),
    batch_size=args.batch_size,
    seed=seed,
    context=args.context,
    layers=args.layers,
    width=args.width,
    heads=args.heads,
    progress=False,
    plots=False,
    checkpoint_every=10**9,
    overwrite=True,
    out=os.path.join(args.work, f"{method}-{strength:g}-{seed}"),
  )
  result = train.run(config, log=lambda line: None)
  last = result.history[-1]
  return {
    "val_perplexity": last.get("structured_val_perplexity", last["val_perplexity"]),
    "weighted_group_sparsity": last.get(
      "structured_weighted_group_sparsity", last["weighted_group_sparsity"]
    ),
    "heads_kept": float(np.mean(list(last["heads_kept"].values()))),
    "units_kept": float(np.mean(list(last["units_kept"].values()))),
    "epoch_seconds": statistics.median(r["seconds"] for r in result.history[1:] or result.history),
    "unigram_perplexity": last["unigram_perplexity"],
  }


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
  parser.add_argument("--seeds", type=int, default=2)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--context", type=int, default=64)
  parser.add_argument("--layers", type=int, default=2)
  parser.add_argument("--width", type=int, default=64)
  parser.add_argument("--heads", type=int, default=4)
  parser.add_argument(
    "--strengths",
    type=float,
    nargs="+",
    default=None,
    help="one sweep for every regularized method (default: per method)",
  )
  parser.add_argument(
    "--method-strengths",
    nargs="+",
    default=(),
    metavar="METHOD=S1,S2",
    help="per-method sweeps, e.g. ramda=1e-4,3e-4 rmda=3e-3 (others keep their defaults)",
  )
  parser.add_argument("--work", default="/tmp/rmda_jax_lm")
  parser.add_argument(
    "--name",
    default="language_model",
    help="results/<name>.json and .png (e.g. language_model_stages for a staged run)",
  )
  args = parser.parse_args()

  rows = []
  for method in args.methods:
    chosen = dict(item.split("=", 1) for item in args.method_strengths)
    strengths = (
      METHODS[method][1] if args.strengths is None or method == "adamw" else args.strengths
    )
    if method in chosen and method != "adamw":
      strengths = tuple(float(v) for v in chosen[method].split(","))
    for strength in strengths:
      runs = [run_one(method, strength, seed, args) for seed in range(args.seeds)]
      row = {"method": method, "strength": strength, "seeds": len(runs)}
      for key in runs[0]:
        values = [r[key] for r in runs]
        row[key] = float(np.mean(values))
        if key in ("val_perplexity", "weighted_group_sparsity"):
          row[key + "_std"] = float(np.std(values))
      rows.append(row)
      print(
        f"{method} {strength:g}: ppl {row['val_perplexity']:.3f} "
        f"+- {row['val_perplexity_std']:.3f}, "
        f"weighted group sparsity {row['weighted_group_sparsity']:.3f}, "
        f"heads kept {row['heads_kept']:.2f}, "
        f"units kept {row['units_kept']:.2f}, {row['epoch_seconds']:.1f} s/epoch",
        flush=True,
      )
      partial = os.path.join(args.work, f"{args.name}.partial.json")  # rows so far, for a long run
      os.makedirs(args.work, exist_ok=True)
      with open(partial, "w") as f:
        json.dump(rows, f, indent=1)
  rmda_time = [r["epoch_seconds"] for r in rows if r["method"] == "rmda"]
  for r in rows:
    r["epoch_time_vs_rmda"] = (
      r["epoch_seconds"] / statistics.median(rmda_time) if rmda_time else None
    )
  _harness.print_table(
    rows,
    [
      "method",
      "strength",
      "val_perplexity",
      "val_perplexity_std",
      "weighted_group_sparsity",
      "heads_kept",
      "units_kept",
      "epoch_seconds",
      "epoch_time_vs_rmda",
    ],
    f"byte-level LM on pydoc ({args.layers} x {args.width}, {args.heads} heads, context "
    f"{args.context}), {args.epochs} epochs, {args.seeds} seeds; unigram perplexity "
    f"{rows[0]['unigram_perplexity']:.2f}",
  )
  print(
    "\nRAMDA paper, Transformer-XL on WikiText-103: "
    + "; ".join(f"{m} {p:.2f} ppl at {s:.1%} weighted group sparsity" for m, p, s in PAPER)
    + " (RAMDA's epoch time 1.12x RMDA's)"
  )
  try:
    from rmda_jax.app import plots

    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in args.methods:
      pts = [r for r in rows if r["method"] == method]
      ax.errorbar(
        [r["weighted_group_sparsity"] for r in pts],
        [r["val_perplexity"] for r in pts],
        xerr=[r["weighted_group_sparsity_std"] for r in pts],
        yerr=[r["val_perplexity_std"] for r in pts],
        marker="o",
        label=method,
        capsize=2,
      )
    ax.set_xlabel("weighted group sparsity (heads and MLP units)")
    ax.set_ylabel("validation perplexity")
    ax.legend()
    ax.grid(alpha=0.3)
    path = os.path.join(_harness.RESULTS, f"{args.name}.png")
    os.makedirs(_harness.RESULTS, exist_ok=True)
    plots._finish(plt, fig, path)
    print(f"wrote {path}")
  except ImportError:
    pass
  _harness.write_json(args.name, {"args": vars(args), "rows": rows, "paper": PAPER})


if __name__ == "__main__":
  main()
