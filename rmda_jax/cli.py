"""``rmda-jax``: the command line. ``rmda-jax train --help`` lists the options."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
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


def _dataset_name(text: str) -> str:
  if text in datasets.NAMES or datasets.is_text(text):
    return text
  raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(datasets.NAMES)}, or text:PATH)")


def _add_train(sub) -> None:
  d = training.TrainConfig()
  p = sub.add_parser(
      "train", help="train a Flax model and report its structure",
      description="Train a Flax model with RMDA, RAMDA or a baseline and report accuracy and structure "
       "per epoch. Defaults run offline on scikit-learn's digits in about a minute.")
  options = []

  def add(*flags, **kwargs):
    options.append(p.add_argument(*flags, **kwargs))

  add("--model", choices=training.MODELS, default=d.model,
      help="mlp (Dense stack), lenet5 (conv 20-50, fc 500; 28x28 inputs), vgg (small VGG-style), logreg, "
           "transformer (a decoder-only language model over bytes; text datasets)")
  add("--dataset", type=_dataset_name, default=d.dataset,
      help="digits, mnist_subset and pydoc (text) are offline; mnist, fashion_mnist, cifar10 download once; "
           "text:PATH reads a text file")
  add("--optimizer", choices=training.OPTIMIZERS, default=d.optimizer)
  add("--regularizer", choices=training.REGULARIZERS, default=d.regularizer,
      help="binary / ternary: weights constrained to {-a, a} / {-a, 0, a} with a = 1/sqrt(fan_in) "
           "(--strength is not used); sgd and rigl take none")
  add("--strength", type=float, default=d.strength, help="lambda >= 0 (default %(default)s)")
  add("--lr", type=float, default=None,
      help="learning rate (default per optimizer: " +
      ", ".join(f"{k} {v:g}" for k, v in training.DEFAULT_LR.items()) + ")")
  add("--momentum", type=float, default=None,
      help="the papers' c in (0, 1] (1 = none) for rmda/ramda/prox_sgd, default 0.1; "
           "heavy-ball beta for sgd and rigl, default 0.9")
  add("--epochs", type=int, default=d.epochs)
  add("--batch-size", type=int, default=d.batch_size)
  add("--milestones", type=_int_list, default=list(d.milestones),
      help="epochs at which the lr drops by gamma (rmda/ramda also restart); e.g. 50,75 or none")
  add("--gamma", type=float, default=d.gamma)
  add("--hidden", type=_int_list, default=list(d.hidden), help="MLP widths, e.g. 128,128")
  add("--seed", type=int, default=d.seed)
  add("--out", default=d.out, help="output directory (log.json, curves.png, groups.png, checkpoint/)")
  add("--resume", action="store_true",
      help="continue the run in OUT from its newest intact checkpoint (the settings must be the same; "
           "--epochs, --max-steps, --checkpoint-every and output options may change)")
  add("--overwrite", action="store_true",
      help="delete the run in OUT first (without --resume or --overwrite an existing run is an error)")
  add("--max-steps", type=int, default=None, help="stop after this many steps in total")
  add("--data-dir", default=None, help="dataset cache (default $RMDA_JAX_DATA or ~/.cache/rmda_jax)")
  add("--no-download", action="store_true", help="fail instead of downloading a dataset")
  add("--no-progress", action="store_true", help="no progress bars")
  add("--no-plots", action="store_true", help="skip the PNG figures")
  add("--solver-max-iters", type=int, default=d.solver_max_iters,
      help="inexact subproblem solver (nuclear norm with ramda/prox_adamw/prox_ssi): iteration cap")
  add("--solver-tol", type=float, default=d.solver_tol,
      help="inexact subproblem solver: tolerance on the subgradient norm")
  add("--sparsity", type=float, default=d.sparsity,
      help="rigl: fraction of zero kernel weights, in [0, 1) (default %(default)s)")
  add("--rigl-update-every", type=int, default=d.rigl_update_every,
      help="rigl: steps between drop/grow updates (until 75%% of training)")
  add("--checkpoint-every", type=int, default=d.checkpoint_every,
      help="save OUT/checkpoint every N epochs (and always at the end); the newest "
           f"{training.KEEP_CHECKPOINTS} are kept")
  add("--context", type=int, default=d.context, help="transformer: tokens per sequence (default %(default)s)")
  add("--layers", type=int, default=d.layers, help="transformer: blocks (default %(default)s)")
  add("--width", type=int, default=d.width, help="transformer: residual width (default %(default)s)")
  add("--heads", type=int, default=d.heads, help="transformer: attention heads (default %(default)s)")
  add("--mlp", type=int, default=d.mlp, help="transformer: MLP hidden width (default 4 x width)")
  add("--positions", choices=training.POSITIONS, default=d.positions, help="transformer: position encoding")
  add("--untied", action="store_true", help="transformer: an output layer of its own (default: tied embedding)")
  add("--groups", choices=training.GROUPINGS, default=d.groups,
      help="group-LASSO groups: per-leaf rules, or discovered coupled groups (whole heads, hidden units, "
           "channels; for rigl: masks of whole groups); auto = discovered for the transformer, per-leaf otherwise")
  add("--mesh", default=d.mesh,
      help="device mesh: data=N[,model=M]: batches sharded over data, params and optimizer state fully "
           "sharded over model (FSDP-style); default: every local device on data. Several hosts: run the same "
           "command on each after jax.distributed.initialize (see README)")
  add("--skip-nonfinite", type=int, default=d.skip_nonfinite,
      help="skip steps whose gradient is not finite, up to N in a row; more stop the run "
           "(default %(default)s; 0: stop at the first)")
  p.set_defaults(train_options=tuple(options))


def _train(args) -> int:
  config = training.TrainConfig(
      model=args.model, dataset=args.dataset, optimizer=args.optimizer, regularizer=args.regularizer,
      strength=args.strength, learning_rate=args.lr, momentum=args.momentum, epochs=args.epochs,
      batch_size=args.batch_size, milestones=tuple(args.milestones), gamma=args.gamma, seed=args.seed,
      out=args.out, resume=args.resume, max_steps=args.max_steps, hidden=tuple(args.hidden),
      data_dir=args.data_dir, download=not args.no_download, progress=not args.no_progress,
      plots=not args.no_plots, checkpoint_every=args.checkpoint_every,
      solver_max_iters=args.solver_max_iters, solver_tol=args.solver_tol, sparsity=args.sparsity,
      rigl_update_every=args.rigl_update_every, overwrite=args.overwrite, skip_nonfinite=args.skip_nonfinite,
      context=args.context, layers=args.layers, width=args.width, heads=args.heads, mlp=args.mlp,
      positions=args.positions, tied=not args.untied, groups=args.groups, mesh=args.mesh)
  try:
    training.run(config)
  except training.Interrupted as err:
    what = "resume with" if err.restart_flag == "--resume" else "start again with"
    again = _train_command(args, err.restart_flag)
    cut = " during a checkpoint save (abandoned)" if err.abandoned_save else ""
    print(f"rmda-jax train: interrupted by {err}{cut} {err.where}; {what}: {again}", file=sys.stderr)
    if err.abandoned_save and args.process:
      # orbax's writer threads of the abandoned save would report errors while the interpreter shuts
      # down; the step they were writing is unfinished (a temporary directory, removed on the next run)
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(err.exit_code)
    return err.exit_code
  return 0


def _train_command(args, flag: Optional[str]) -> str:
  """The ``rmda-jax train`` command of ``args`` (its non-default options) with ``flag`` (--resume / --overwrite)."""
  words = ["rmda-jax", "train"]
  for action in args.train_options:
    if action.dest in ("resume", "overwrite"):
      continue
    value = getattr(args, action.dest)
    if value == action.default:
      continue
    option = max(action.option_strings, key=len)
    if action.nargs == 0:  # a switch
      words.append(option)
    else:
      words += [option, (",".join(str(v) for v in value) or "none") if isinstance(value, list) else str(value)]
  if flag:
    words.append(flag)
  return shlex.join(words)


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
  import os

  import jax
  import jax.numpy as jnp
  import numpy as np

  from rmda_jax import compaction
  from rmda_jax.dual_averaging import structured_params

  if args.batch_size < 1:
    raise training.ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.out and os.path.lexists(args.out) and not os.path.isdir(args.out):
    raise training.ConfigError(f"--out {args.out} is a file, not a directory")
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
  if config.model == "transformer":
    probs = [jax.nn.softmax(m.apply({"params": p}, x)) for m, p in ((model, params), (small.model, small.params))]
    print(f"largest difference of next-token probabilities: {float(jnp.max(jnp.abs(probs[0] - probs[1]))):.2e}")
    speeds = [_tokens_per_second(m, p, dataset) for m, p in ((model, params), (small.model, small.params))]
    print(f"{'greedy generation, tokens/s':24s}{speeds[0]:>16.1f}{speeds[1]:>16.1f}{speeds[1] / speeds[0]:8.3f}")
  if args.out:
    compaction.save(args.out, small)
    print(f"wrote {args.out}/params and {args.out}/model.json (rmda_jax.compaction.load reads them)")
  return 0


def _tokens_per_second(model, params, dataset, tokens: int = 64) -> float:
  import time

  from rmda_jax import models

  prompt = dataset.x_test[0][:8]
  models.generate(model, params, prompt, 2)  # compile
  start = time.perf_counter()
  models.generate(model, params, prompt, tokens)
  return tokens / (time.perf_counter() - start)


def _add_generate(sub) -> None:
  p = sub.add_parser("generate", help="continue a prompt with a trained language model",
                     description="Load a run of rmda-jax train --model transformer (or a compact model written by "
                                 "rmda-jax compact --out) and print a continuation of the prompt.")
  p.add_argument("run", help="the --out directory of a training run, or of rmda-jax compact --out")
  p.add_argument("--prompt", default="The ", help="text to continue (default %(default)r)")
  p.add_argument("--tokens", type=int, default=200, help="bytes to generate (default %(default)s)")
  p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampling")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--params", choices=("structured", "final"), default="structured",
                 help="structured (default): RMDA/RAMDA's point z; final: the last params")


def _generate(args) -> int:
  import os

  import numpy as np

  from rmda_jax import compaction, models
  from rmda_jax.dual_averaging import structured_params

  if args.tokens < 0 or args.temperature < 0:
    raise training.ConfigError(f"--tokens and --temperature must be >= 0, got {args.tokens} and {args.temperature}")
  if os.path.isfile(os.path.join(args.run, "model.json")):
    compact = compaction.load(args.run)
    model, params = compact.model, compact.params
  else:
    config, _, model, params, opt_state = training.load_run(args.run)
    if args.params == "structured" and config.optimizer in ("rmda", "ramda"):
      params = structured_params(opt_state)
  if not isinstance(model, models.TransformerLM):
    raise training.ConfigError(f"{args.run} holds a {type(model).__name__}, not a language model "
                               "(train one with --model transformer)")
  prompt = np.frombuffer(args.prompt.encode("utf-8"), np.uint8)
  out = models.generate(model, params, prompt, args.tokens, args.temperature, args.seed)
  print(bytes(np.asarray(out, np.uint8)).decode("utf-8", errors="replace"))
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = _Parser(prog="rmda-jax", description="Structured neural networks with RMDA / RAMDA.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  _add_train(sub)
  _add_compact(sub)
  _add_generate(sub)
  return parser


def main(argv: Optional[Sequence[str]] = None, process: Optional[bool] = None) -> int:
  """Run a command; ``process`` (default: ``argv`` is None) says that the command is the whole process.

  Then ``train`` ignores SIGINT and SIGTERM outside the training job (which
  handles them): a signal that arrives while the process exits after its
  work is done does not turn it into a failure or a traceback.
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  args.process = process if process is not None else argv is None
  if args.command == "train" and args.process:
    _ignore_exit_signals()
  commands = {"train": _train, "compact": _compact, "generate": _generate}
  try:
    return commands[args.command](args)
  except (training.ConfigError, datasets.DataError) as err:
    print(f"rmda-jax {args.command}: error: {err}", file=sys.stderr)
    return 2
  except training.Diverged as err:
    print(f"rmda-jax {args.command}: error: {err}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"rmda-jax {args.command}: interrupted", file=sys.stderr)
    return 130


def _ignore_exit_signals() -> None:
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
  raise SystemExit(main())
