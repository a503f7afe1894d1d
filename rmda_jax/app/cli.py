"""``rmda-jax``: the command line. ``rmda-jax train --help`` lists the options."""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn, cast

from rmda_jax.app import commands, multihost
from rmda_jax.app import data as datasets
from rmda_jax.app import train as training
from rmda_jax.app.rundir import describe_os_error
from rmda_jax.app.signals import end_within


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are one line (no usage dump), exit status 2."""

  def error(self, message: str) -> NoReturn:
    self.exit(2, f"{self.prog}: error: {message}\n")


def _int_list(text: str) -> list[int]:
  if text.strip() in ("", "none"):
    return []
  try:
    return [int(v) for v in text.replace(",", " ").split()]
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _dataset_name(text: str) -> str:
  if text in datasets.NAMES or datasets.is_text(text):
    return text
  raise argparse.ArgumentTypeError(
    f"invalid choice: {text!r} (choose from {', '.join(datasets.NAMES)}, or text:PATH)"
  )


def _add_train(sub: argparse._SubParsersAction) -> None:
  d = training.TrainConfig()
  p = sub.add_parser(
    "train",
    help="train a Flax model and report its structure",
    description="Train a Flax model with RMDA, RAMDA or a baseline and report accuracy and "
    "structure per epoch. Defaults run offline on scikit-learn's digits in about a minute.",
  )
  options = []

  def add(*flags, **kwargs):
    options.append(p.add_argument(*flags, **kwargs))

  add(
    "--model",
    choices=training.MODELS,
    default=d.model,
    help="mlp (Dense stack), lenet5 (conv 20-50, fc 500; 28x28 inputs), vgg (small VGG-style), "
    "logreg, transformer (a decoder-only language model over bytes; text datasets)",
  )
  add(
    "--dataset",
    type=_dataset_name,
    default=d.dataset,
    help="digits, mnist_subset and pydoc (text) are offline; mnist, fashion_mnist, cifar10 "
    "download once; text:PATH reads a text file",
  )
  add("--optimizer", choices=training.OPTIMIZERS, default=d.optimizer)
  add(
    "--regularizer",
    choices=training.REGULARIZERS,
    default=d.regularizer,
    help="binary / ternary: weights constrained to {-a, a} / {-a, 0, a} with a = 1/sqrt(fan_in) "
    "(--strength is not used); sgd and rigl take none",
  )
  add("--strength", type=float, default=d.strength, help="lambda >= 0 (default %(default)s)")
  add(
    "--lr",
    type=float,
    default=None,
    help="learning rate (default per optimizer: "
    + ", ".join(f"{k} {v:g}" for k, v in training.DEFAULT_LR.items())
    + ")",
  )
  add(
    "--momentum",
    type=float,
    default=None,
    help="the papers' c in (0, 1] (1 = none) for rmda/ramda/prox_sgd, default 0.1; "
    "heavy-ball beta for sgd and rigl, default 0.9",
  )
  add(
    "--epochs",
    type=int,
    default=None,
    help=f"default {training.EPOCHS} ({training.LM_EPOCHS} for --model transformer)",
  )
  add("--batch-size", type=int, default=d.batch_size)
  add(
    "--milestones",
    type=_int_list,
    default=None,
    help="epochs at which the lr drops by gamma (rmda/ramda also restart); e.g. 50,75 or none "
    f"(default {','.join(map(str, training.MILESTONES))}; "
    f"{','.join(map(str, training.LM_MILESTONES))} for --model transformer)",
  )
  add("--gamma", type=float, default=d.gamma)
  add("--hidden", type=_int_list, default=list(d.hidden), help="MLP widths, e.g. 128,128")
  add("--seed", type=int, default=d.seed)
  add(
    "--out", default=d.out, help="output directory (log.json, curves.png, groups.png, checkpoint/)"
  )
  add(
    "--resume",
    action="store_true",
    help="continue the run in OUT from its newest intact checkpoint (the settings must be the "
    "same; --epochs, --max-steps, --checkpoint-every and output options may change)",
  )
  add(
    "--overwrite",
    action="store_true",
    help="delete the run in OUT first "
    "(without --resume or --overwrite an existing run is an error)",
  )
  add("--max-steps", type=int, default=None, help="stop after this many steps in total")
  add(
    "--data-dir", default=None, help="dataset cache (default $RMDA_JAX_DATA or ~/.cache/rmda_jax)"
  )
  add("--no-download", action="store_true", help="fail instead of downloading a dataset")
  add("--no-progress", action="store_true", help="no progress bars")
  add("--no-plots", action="store_true", help="skip the PNG figures")
  add(
    "--solver-max-iters",
    type=int,
    default=d.solver_max_iters,
    help="inexact subproblem solver (nuclear norm with ramda/prox_adamw/prox_ssi): iteration cap",
  )
  add(
    "--solver-tol",
    type=float,
    default=d.solver_tol,
    help="inexact subproblem solver: tolerance on the subgradient norm",
  )
  add(
    "--sparsity",
    type=float,
    default=d.sparsity,
    help="rigl: fraction of zero kernel weights, in [0, 1) (default %(default)s)",
  )
  add(
    "--rigl-update-every",
    type=int,
    default=d.rigl_update_every,
    help="rigl: steps between drop/grow updates (until 75%% of training)",
  )
  add(
    "--checkpoint-every",
    type=int,
    default=d.checkpoint_every,
    help="save OUT/checkpoint every N epochs (and always at the end); the newest "
    f"{training.KEEP_CHECKPOINTS} are kept",
  )
  add(
    "--context",
    type=int,
    default=d.context,
    help="transformer: tokens per sequence (default %(default)s)",
  )
  add("--layers", type=int, default=d.layers, help="transformer: blocks (default %(default)s)")
  add(
    "--width", type=int, default=d.width, help="transformer: residual width (default %(default)s)"
  )
  add(
    "--heads", type=int, default=d.heads, help="transformer: attention heads (default %(default)s)"
  )
  add("--mlp", type=int, default=d.mlp, help="transformer: MLP hidden width (default 4 x width)")
  add(
    "--positions",
    choices=training.POSITIONS,
    default=d.positions,
    help="transformer: position encoding",
  )
  add(
    "--untied",
    action="store_true",
    help="transformer: an output layer of its own (default: tied embedding)",
  )
  add(
    "--groups",
    choices=training.GROUPINGS,
    default=d.groups,
    help="group-LASSO groups: per-leaf rules, or discovered coupled groups (whole heads, "
    "hidden units, channels; for rigl: masks of whole groups); auto = discovered for the "
    "transformer, per-leaf otherwise",
  )
  add(
    "--mesh",
    default=d.mesh,
    help="device mesh: data=N[,model=M]: batches sharded over data, params and optimizer state "
    "fully sharded over model (FSDP-style); default: every device on data. With several "
    "processes the mesh spans all their devices, hosts along data",
  )
  add(
    "--distributed",
    choices=multihost.MODES,
    default="auto",
    help="join a multi-process run (one process per host or GPU, the same command on each): "
    "auto = when the options below, $JAX_COORDINATOR_ADDRESS / $JAX_NUM_PROCESSES / "
    "$JAX_PROCESS_ID, an srun step or Open MPI name several processes; on = always (JAX detects "
    "SLURM, Open MPI, Cloud TPU pod slices); off = never",
  )
  add("--coordinator", default=None, help="HOST:PORT of process 0, for --distributed")
  add("--num-processes", type=int, default=None, help="how many processes, for --distributed")
  add("--process-id", type=int, default=None, help="this process's index, from 0")
  add(
    "--peer-timeout",
    type=int,
    default=multihost.DEFAULT_PEER_TIMEOUT,
    help="seconds without a heartbeat after which a process counts as dead and every other "
    "process stops (default %(default)s)",
  )
  add(
    "--stop-timeout",
    type=int,
    default=training.DEFAULT_STOP_TIMEOUT,
    help="multi-process: seconds after SIGINT/SIGTERM within which the processes stop "
    "together; one still running then ends itself (default %(default)s)",
  )
  add(
    "--allow-data-change",
    action="store_true",
    help="with --resume: continue although the data's fingerprint differs from the run's "
    "(a changed text:PATH file, another dataset cache)",
  )
  add(
    "--skip-nonfinite",
    type=int,
    default=d.skip_nonfinite,
    help="skip steps whose gradient is not finite, up to N in a row; more stop the run "
    "(default %(default)s; 0: stop at the first)",
  )
  p.set_defaults(train_options=tuple(options))


def _train(args: argparse.Namespace) -> int:
  config = training.TrainConfig(
    model=args.model,
    dataset=args.dataset,
    optimizer=args.optimizer,
    regularizer=args.regularizer,
    strength=args.strength,
    learning_rate=args.lr,
    momentum=args.momentum,
    epochs=args.epochs,
    batch_size=args.batch_size,
    milestones=None if args.milestones is None else tuple(args.milestones),
    gamma=args.gamma,
    seed=args.seed,
    out=args.out,
    resume=args.resume,
    max_steps=args.max_steps,
    hidden=tuple(args.hidden),
    data_dir=args.data_dir,
    download=not args.no_download,
    progress=not args.no_progress,
    plots=not args.no_plots,
    checkpoint_every=args.checkpoint_every,
    solver_max_iters=args.solver_max_iters,
    solver_tol=args.solver_tol,
    sparsity=args.sparsity,
    rigl_update_every=args.rigl_update_every,
    overwrite=args.overwrite,
    skip_nonfinite=args.skip_nonfinite,
    context=args.context,
    layers=args.layers,
    width=args.width,
    heads=args.heads,
    mlp=args.mlp,
    positions=args.positions,
    tied=not args.untied,
    groups=args.groups,
    mesh=args.mesh,
    allow_data_change=args.allow_data_change,
  )
  status = 1
  try:
    status = _train_job(args, config)
  finally:
    if status and args.process and multihost.describe_process():
      # the others may be gone or stuck: JAX's shutdown at exit would wait for them forever
      end_within(max(args.stop_timeout, 1))
  return status


def _train_job(args: argparse.Namespace, config: training.TrainConfig) -> int:
  """Run the job of ``config``; its exit status, with the line of an interrupt or a fault."""
  try:
    multihost.initialize(
      args.distributed, args.coordinator, args.num_processes, args.process_id, args.peer_timeout
    )
    if args.stop_timeout < 1:
      raise training.ConfigError(f"--stop-timeout must be at least 1, not {args.stop_timeout}")
    training.run(config, stop_timeout=args.stop_timeout)
  except training.RunFault as err:
    if err.stdout_closed and args.process:
      _drop_stdout()
    what = "resume with" if err.restart_flag == "--resume" else "start again with"
    again = _train_command(args, err.restart_flag)
    print(f"{_who(args)}: error: {err}; stopped {err.where}; {what}: {again}", file=sys.stderr)
    return 1
  except training.Interrupted as err:
    what = "resume with" if err.restart_flag == "--resume" else "start again with"
    again = _train_command(args, err.restart_flag)
    cut = " during a checkpoint save (abandoned)" if err.abandoned_save else ""
    print(f"{_who(args)}: interrupted by {err}{cut} {err.where}; {what}: {again}", file=sys.stderr)
    if err.abandoned_save and args.process:
      # orbax's writer threads of the abandoned save would report errors while the interpreter
      # shuts down; the step they were writing is unfinished (a temporary directory, removed on
      # the next run)
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(err.exit_code)
    return err.exit_code
  return 0


def _train_command(args: argparse.Namespace, flag: str | None) -> str:
  """The ``rmda-jax train`` command of ``args`` (its non-default options) and ``flag``.

  ``flag`` is ``--resume``, ``--overwrite`` or None.
  """
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
      words += [
        option,
        (",".join(str(v) for v in value) or "none") if isinstance(value, list) else str(value),
      ]
  if flag:
    words.append(flag)
  return shlex.join(words)


def build_parser() -> argparse.ArgumentParser:
  """The ``rmda-jax`` parser with its ``train``, ``compact`` and ``generate`` commands."""
  parser = _Parser(prog="rmda-jax", description="Structured neural networks with RMDA / RAMDA.")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
  _add_train(sub)
  commands.add_compact(sub)
  commands.add_generate(sub)
  return parser


def main(argv: Sequence[str] | None = None, process: bool | None = None) -> int:
  """Run a command and return its exit status.

  ``process`` (default: ``argv`` is None) says that the command is the whole process.

  Then ``train`` ignores SIGINT and SIGTERM outside the training job (which
  handles them): a signal that arrives while the process exits after its
  work is done does not turn it into a failure or a traceback.
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  args.process = process if process is not None else argv is None
  if args.command == "train" and args.process:
    _ignore_exit_signals()
    _keep_freed_memory()
  handlers = {"train": _train, "compact": commands.compact, "generate": commands.generate}
  try:
    return handlers[args.command](args)
  except (training.ConfigError, datasets.DataError) as err:
    print(f"{_who(args)}: error: {err}", file=sys.stderr)
    return 2
  except (training.Diverged, training.RunDirError, multihost.MultihostError) as err:
    print(f"{_who(args)}: error: {err}", file=sys.stderr)
    return 1
  except BrokenPipeError:
    if args.process:
      _drop_stdout()
    print(
      f"{_who(args)}: error: standard output was closed before the output was "
      "complete (broken pipe: the program reading it ended first)",
      file=sys.stderr,
    )
    return 1
  except OSError as err:
    print(f"{_who(args)}: error: {describe_os_error(err)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{_who(args)}: interrupted", file=sys.stderr)
    return 130


def _who(args: argparse.Namespace) -> str:
  """The name an error line starts with: ``rmda-jax train``, ``... (process 1/4)`` for several."""
  return f"rmda-jax {args.command}{multihost.describe_process()}"


def _drop_stdout() -> None:
  # what is still buffered for a closed pipe would raise again when the interpreter flushes it
  # at exit; standard output goes to the null device from here on
  try:
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
  except (OSError, ValueError):
    pass


def _keep_freed_memory() -> None:
  # the whole process is this command's, so its allocator may be tuned: on CPU,
  # the step's temporaries are then reused instead of page-faulted at every step.
  # Before JAX starts its threads, whose arenas the setting must cover, so the
  # backend is not asked for: only platforms named without "cpu" (JAX_PLATFORMS)
  # skip it, where host memory has nothing to gain.
  import jax

  from rmda_jax.cpu import memory

  platforms = cast(Any, jax.config).jax_platforms  # a flag pyright does not see on Config
  if not platforms or "cpu" in platforms.lower().split(","):
    memory.keep_freed_memory()


def _ignore_exit_signals() -> None:
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGINT, signal.SIGTERM):
      signal.signal(signum, signal.SIG_IGN)


if __name__ == "__main__":
  raise SystemExit(main())
