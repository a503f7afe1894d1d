"""``rmda-jax``: the command line. ``rmda-jax train --help`` lists the options."""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from rmda_jax import data as datasets
from rmda_jax import train as training


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line (no usage dump), exit status 2."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _int_list(text: str) -> list:
  if text.strip() in ("", "none"):
    return []
  try:
    return [int(v) for v in text.replace(",", " ").split()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _add_train(sub) -> None:
  d = training.TrainConfig()
  p = sub.add_parser(
      "train", help="train a Flax model and report its structure",
      description="Train a Flax model with RMDA, RAMDA or a baseline and report accuracy and structure "
                  "per epoch. Defaults run offline on scikit-learn's digits in about a minute.")
  p.add_argument("--model", choices=training.MODELS, default=d.model,
                 help="mlp (Dense stack), lenet5 (conv 20-50, fc 500; 28x28 inputs), vgg (small VGG-style), logreg")
  p.add_argument("--dataset", choices=datasets.NAMES, default=d.dataset,
                 help="digits and mnist_subset are offline; mnist, fashion_mnist, cifar10 download once")
  p.add_argument("--optimizer", choices=training.OPTIMIZERS, default=d.optimizer)
  p.add_argument("--regularizer", choices=training.REGULARIZERS, default=d.regularizer,
                 help="binary / ternary: weights constrained to {-a, a} / {-a, 0, a} with a = 1/sqrt(fan_in) "
                      "(--strength is not used); sgd and rigl take none")
  p.add_argument("--strength", type=float, default=d.strength, help="lambda >= 0 (default %(default)s)")
  p.add_argument("--lr", type=float, default=None,
                 help="learning rate (default per optimizer: " +
                 ", ".join(f"{k} {v:g}" for k, v in training.DEFAULT_LR.items()) + ")")
  p.add_argument("--momentum", type=float, default=None,
                 help="the papers' c in (0, 1] (1 = none) for rmda/ramda/prox_sgd, default 0.1; "
                      "heavy-ball beta for sgd and rigl, default 0.9")
  p.add_argument("--epochs", type=int, default=d.epochs)
  p.add_argument("--batch-size", type=int, default=d.batch_size)
  p.add_argument("--milestones", type=_int_list, default=list(d.milestones),
                 help="epochs at which the lr drops by gamma (rmda/ramda also restart); e.g. 50,75 or none")
  p.add_argument("--gamma", type=float, default=d.gamma)
  p.add_argument("--hidden", type=_int_list, default=list(d.hidden), help="MLP widths, e.g. 128,128")
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--out", default=d.out, help="output directory (log.json, curves.png, groups.png, checkpoint/)")
  p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
  p.add_argument("--max-steps", type=int, default=None, help="stop after this many steps in total")
  p.add_argument("--data-dir", default=None, help="dataset cache (default $RMDA_JAX_DATA or ~/.cache/rmda_jax)")
  p.add_argument("--no-download", action="store_true", help="fail instead of downloading a dataset")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
  p.add_argument("--solver-max-iters", type=int, default=d.solver_max_iters,
                 help="inexact subproblem solver (nuclear norm with ramda/prox_adamw/prox_ssi): iteration cap")
  p.add_argument("--solver-tol", type=float, default=d.solver_tol,
                 help="inexact subproblem solver: tolerance on the subgradient norm")
  p.add_argument("--sparsity", type=float, default=d.sparsity,
                 help="rigl: fraction of zero kernel weights, in [0, 1) (default %(default)s)")
  p.add_argument("--rigl-update-every", type=int, default=d.rigl_update_every,
                 help="rigl: steps between drop/grow updates (until 75%% of training)")
  p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every,
                 help="save OUT/checkpoint every N epochs (and always at the end)")


def _train(args) -> int:
  config = training.TrainConfig(
      model=args.model, dataset=args.dataset, optimizer=args.optimizer, regularizer=args.regularizer,
      strength=args.strength, learning_rate=args.lr, momentum=args.momentum, epochs=args.epochs,
      batch_size=args.batch_size, milestones=tuple(args.milestones), gamma=args.gamma, seed=args.seed,
      out=args.out, resume=args.resume, max_steps=args.max_steps, hidden=tuple(args.hidden),
      data_dir=args.data_dir, download=not args.no_download, progress=not args.no_progress,
      plots=not args.no_plots, checkpoint_every=args.checkpoint_every,
      solver_max_iters=args.solver_max_iters, solver_tol=args.solver_tol, sparsity=args.sparsity,
      rigl_update_every=args.rigl_update_every)
  training.run(config)
  return 0


def _add_compact(sub) -> None:
  p = sub.add_parser(
      "compact", help="turn a trained structured model into a smaller one with the same outputs",
      description="Remove the channels / neurons whose groups are exactly zero (and, with --low-rank, "
                  "factorize low-rank kernels) from a run of rmda-jax train; print parameters, FLOPs, "
                  "inference time and validation accuracy before and after.")
  p.add_argument("run", help="the --out directory of a training run (or its checkpoint/ directory)")
  p.add_argument("--low-rank", action="store_true", help="also factorize kernels of low numerical rank")
  p.add_argument("--params", choices=("structured", "final"), default="structured",
                 help="structured (default): RMDA/RAMDA's point z, whose zeros are exact (the final params "
                      "for other optimizers); final: the last params")
  p.add_argument("--batch-size", type=int, default=256, help="batch for the timing (default %(default)s)")
  p.add_argument("--out", default=None, help="write the compact params (orbax) and model.json here")


def _compact(args) -> int:
  import json
  import os

  import numpy as np

  from rmda_jax import checkpoint, compaction
  from rmda_jax.dual_averaging import structured_params

  if args.batch_size < 1:
    raise training.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
  config, dataset, model, params, opt_state = training.load_run(args.run)
  source = "final params"
  if args.params == "structured" and config.optimizer in ("rmda", "ramda"):
    params, source = structured_params(opt_state), "structured point z"
  small = compaction.compact(model, params, low_rank=args.low_rank)
  x = dataset.x_test[: args.batch_size]
  times = compaction.latencies({"original": (model, params), "compact": (small.model, small.params)}, x)

  def accuracy(m, p):
    return float(np.mean(np.argmax(np.asarray(m.apply({"params": p}, dataset.x_test)), -1) == dataset.y_test))

  rows = [
      ("parameters", compaction.num_params(params), compaction.num_params(small.params), "{:,}"),
      ("FLOPs per example", compaction.flops(model, params, x[:1]), compaction.flops(small.model, small.params, x[:1]),
       "{:,.0f}"),
      (f"ms per batch of {len(x)}", 1e3 * times["original"], 1e3 * times["compact"], "{:.3f}"),
      ("validation accuracy", accuracy(model, params), accuracy(small.model, small.params), "{:.4f}"),
  ]
  print(f"{config.model} from {args.run} ({source}); compact widths: "
        + ", ".join(f"{k} {len(v)}" for k, v in small.kept.items())
        + ("; ranks: " + ", ".join(f"{k} {r}" for k, r in small.ranks.items()) if small.ranks else ""))
  print(f"{'':24s}{'original':>16s}{'compact':>16s}{'ratio':>8s}")
  for name, before, after, fmt in rows:
    ratio = after / before if before else float("nan")
    print(f"{name:24s}{fmt.format(before):>16s}{fmt.format(after):>16s}{ratio:8.3f}")
  if args.out:
    os.makedirs(args.out, exist_ok=True)
    checkpoint.save(os.path.join(os.path.abspath(args.out), "params"), small.params)
    fields = {k: v for k, v in vars(small.model).items() if k not in ("parent", "name") and not k.startswith("_")}
    with open(os.path.join(args.out, "model.json"), "w") as f:
      json.dump({"class": type(small.model).__name__, "fields": fields}, f, indent=2)
    print(f"wrote {args.out}/params and {args.out}/model.json")
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="rmda-jax", description="Structured neural networks with RMDA / RAMDA.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  _add_train(sub)
  _add_compact(sub)
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = build_parser()
  args = parser.parse_args(argv)
  commands = {"train": _train, "compact": _compact}
  try:
    return commands[args.command](args)
  except (training.ConfigError, datasets.DataError) as err:
    print(f"rmda-jax {args.command}: error: {err}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print(f"rmda-jax {args.command}: interrupted", file=sys.stderr)
    return 130


if __name__ == "__main__":
  raise SystemExit(main())
