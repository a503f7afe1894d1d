"""The training loop: epochs of jitted steps, checkpoints, signals, reports.

:func:`run` trains a :class:`~rmda_jax.app.config.TrainConfig`: the model
and the optimizer from :mod:`rmda_jax.app.builders`, batches sharded over the
``data`` axis of the mesh, a checkpoint every ``checkpoint_every`` steps and
at each epoch's end (:mod:`rmda_jax.app.runs`), the reports of
:mod:`rmda_jax.app.reporting`. SIGINT / SIGTERM stop the run between steps,
or after the save they arrive in (:class:`Interrupted`). Steps whose
gradient is not finite are skipped (``optax.apply_if_finite``) and counted;
more than ``skip_nonfinite`` in a row, or non-finite params or loss, stop the
run with :class:`Diverged` before anything of that state is saved. A run
resumed any number of times, also in the middle of an epoch, ends with the
same numbers as one that was never stopped.

The run holds the lock of ``out`` (:mod:`rmda_jax.app.rundir`) from before
it reads what is there until it ends. A write that fails (a full disk, a
read-only file system, standard output closed, ``out`` deleted under it)
stops the run with :class:`RunFault`, whose message is one line; the
checkpoints written before are left intact. The data's fingerprint
(:func:`rmda_jax.app.data.fingerprint`) is stored with the run, and a resume
on other data is refused unless ``allow_data_change``.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmda_jax import prox as regs
from rmda_jax.app import checkpoint as ckpt
from rmda_jax.app import data as datasets
from rmda_jax.app import models, multihost, steps
from rmda_jax.app.builders import (
  build_mesh,
  build_model,
  build_regularizer,
  global_batch,
  model_groups,
  param_shardings,
  rigl_groups,
  training_optimizer,
)
from rmda_jax.app.config import (
  ConfigError,
  TrainConfig,
  check_processes_agree,
  check_same_run,
)
from rmda_jax.app.reporting import (
  batched_mean,
  epoch_line,
  language_metrics,
  progress_factory,
  structure_metrics,
  summary_table,
  throughput,
)
from rmda_jax.app.rundir import RunDirError, check_shared, describe_os_error
from rmda_jax.app.runs import (
  CHECKPOINT_FORMAT,
  KEEP_CHECKPOINTS,
  RUN_FILES,
  all_finite,
  existing_run,
  fallback_note,
  has_steps,
  precheck_resume,
  prepare_out,
  restore_newest,
  save_pause,
  unique_path,
)
from rmda_jax.app.signals import DEFAULT_STOP_TIMEOUT, Interrupted, Signals
from rmda_jax.core import files
from rmda_jax.core.files import write_json
from rmda_jax.cpu import compiler_options as cpu_compiler_options
from rmda_jax.optim import structured_params
from rmda_jax.prox import discrete


class Diverged(RuntimeError):
  """Non-finite loss or params, or more than ``skip_nonfinite`` non-finite gradients in a row."""


class RunFault(RuntimeError):
  """A write failed or ``out`` was lost: the run stopped; the message is one line.

  ``where`` and ``restart_flag`` are set as for :class:`Interrupted`;
  ``stdout_closed`` says that the fault was standard output's (a broken pipe).
  """

  def __init__(self, message: str, stdout_closed: bool = False):
    super().__init__(message)
    self.where = ""
    self.restart_flag: str | None = None
    self.stdout_closed = stdout_closed


@dataclasses.dataclass
class TrainResult:
  """What a run ends with: its epoch records, final params and optimizer state, and ``out``."""

  config: TrainConfig
  history: list[dict[str, Any]]
  params: optax.Params
  opt_state: optax.OptState
  regularizer: regs.Regularizer | None
  out: str


def _load_dataset(config: TrainConfig) -> datasets.Dataset:
  try:
    dataset = datasets.load(
      config.dataset, config.data_dir, config.download, context=config.context
    )
  except OSError as err:
    cache = config.data_dir or datasets.default_cache_dir()
    raise ConfigError(
      f"--data-dir {cache}: cannot use the dataset cache ({err.strerror or err}"
      f"{': ' + str(err.filename) if err.filename else ''})"
    ) from None
  n = len(dataset.x_train)
  if config.batch_size > n:
    raise ConfigError(
      f"--batch-size {config.batch_size} is larger than the training set ({n} examples of "
      f"{dataset.name}); use --batch-size {n} or less"
    )
  return dataset


class _Position:
  """Where the run is, for the message of an interrupt."""

  def __init__(self):
    self.epoch, self.step = 0, 0
    # (step, epoch, mid_epoch) of the newest checkpoint of this run on disk
    self.checkpoint: tuple[int, int, bool] | None = None
    self.owns_out = False  # whether --out holds this run (or nothing yet); before that, start again
    self.lost_out = False  # --out was deleted or replaced during the run

  def describe(self) -> str:
    where = f"at step {self.step} (epoch {self.epoch})" if self.step else "before the first step"
    if self.checkpoint is None:
      return f"{where}, before the first checkpoint"
    step, epoch, mid = self.checkpoint
    return (
      f"{where}; the last checkpoint is step {step} ({'in' if mid else 'end of'} epoch {epoch})"
    )


def run(
  config: TrainConfig,
  log: Callable[[str], None] = print,
  stop_timeout: float = DEFAULT_STOP_TIMEOUT,
) -> TrainResult:
  """Train as configured; see the module doc for what is written to ``config.out``.

  In a multi-process run (:mod:`rmda_jax.app.multihost`) every process calls
  this with the same ``config``; process 0 alone logs and writes the run's
  files, and a process still running ``stop_timeout`` seconds after a signal
  ends itself (:mod:`rmda_jax.app.signals`).

  Raises:
    ConfigError: a setting or an input (``out``, ``data_dir``, the checkpoint
      to resume) cannot be used.
    Diverged: the loss or the params became non-finite.
    Interrupted: SIGINT or SIGTERM (a KeyboardInterrupt).
  """
  config.validate()
  position = _Position()
  if not multihost.is_primary():
    log = _unlogged
  with Signals(collective=multihost.count() > 1, stop_timeout=stop_timeout) as signals:
    try:
      return _Job(config, log, signals, position).run()
    except (Interrupted, RunFault) as err:
      _locate(err, config, position)
      raise
    except OSError as err:
      fault = RunFault(_os_fault_text(err), stdout_closed=isinstance(err, BrokenPipeError))
      _locate(fault, config, position)
      raise fault from None


def _unlogged(line: str) -> None:
  """The log of a process other than process 0 (whose lines are the run's)."""


def _os_fault_text(err: OSError) -> str:
  if isinstance(err, BrokenPipeError):
    return "standard output was closed (broken pipe: the program reading it ended first)"
  return describe_os_error(err)


def _locate(err: Interrupted | RunFault, config: TrainConfig, position: _Position) -> None:
  """Set ``err.where`` and ``err.restart_flag`` from the position the run reached."""
  checkpoint_dir = os.path.join(config.out, "checkpoint")
  if position.lost_out:
    err.restart_flag = None
  elif config.resume or (position.owns_out and has_steps(checkpoint_dir)):
    err.restart_flag = "--resume"
  elif (config.overwrite or position.owns_out) and existing_run(config.out) is not None:
    err.restart_flag = "--overwrite"  # what is there is this run's (or one the command replaces)
  err.where = position.describe()


# what the setup of a run raises on one process and every process stops with
_SETUP_ERRORS = (ConfigError, datasets.DataError, RunDirError, ckpt.CheckpointError)


class _Job:
  """One invocation of the training job: setup, resume, the epoch loop, checkpoints."""

  def __init__(
    self,
    config: TrainConfig,
    log: Callable[[str], None],
    signals: Signals,
    position: _Position,
  ):
    self.config, self.log, self.signals, self.position = config, log, signals, position
    self.checkpoint_dir = os.path.join(config.out, "checkpoint")
    self.log_path = os.path.join(config.out, "log.json")
    self.config_written = False
    # the state a checkpoint holds: completed epochs' records, and the position in the current epoch
    self.history, self.partial = [], None
    self.epoch_done, self.step, self.epoch_pos = 0, 0, 0
    self.epoch_losses, self.epoch_skipped, self.epoch_seconds = [], 0, 0.0

  def run(self) -> TrainResult:
    config = self.config
    # a multi-process run: the same settings everywhere, process 0 holds the lock of --out for
    # all, and every process must see the --out process 0 writes
    check_processes_agree(multihost.exchange(dataclasses.asdict(config)))
    self.lock = multihost.on_primary(lambda: prepare_out(config), (ConfigError, RunDirError))
    try:
      check_shared(config.out, "--out")
      return self._run_locked()
    finally:
      if self.lock is not None:
        self.lock.release()

  def _run_locked(self) -> TrainResult:
    config = self.config
    if config.resume:
      multihost.on_every(lambda: precheck_resume(config, self.checkpoint_dir), _SETUP_ERRORS)
    with self.signals.immediate():
      # process 0 first: a dataset cache the hosts share is filled (downloaded) once
      first = multihost.on_primary(lambda: _load_dataset(config), _SETUP_ERRORS)
      self.dataset = multihost.on_every(
        lambda: first if first is not None else _load_dataset(config), _SETUP_ERRORS
      )
    self.data_fingerprint = datasets.fingerprint(self.dataset)
    fingerprints = multihost.exchange(self.data_fingerprint)
    multihost.check_agree(fingerprints, "data (the dataset's files differ between the hosts)")
    self.model = build_model(config, self.dataset)
    self.params = self.model.init(jax.random.PRNGKey(config.seed), self.dataset.x_train[:1])[
      "params"
    ]
    self.regularizer = build_regularizer(config, self.model, self.params, self.dataset.x_train[:1])
    if config.model == "transformer":  # per-epoch reports of the LM, fixed for the run
      self.lm_groups = model_groups(
        self.regularizer, self.model, self.params, self.dataset.x_train[:1]
      )
      self.unigram = datasets.unigram_perplexity(self.dataset)
    self.steps_per_epoch = datasets.steps_per_epoch(len(self.dataset.x_train), config.batch_size)
    self.batches_per_epoch = len(self.dataset.x_train) // config.batch_size
    self.rigl_groups = rigl_groups(config, self.model, self.params, self.dataset.x_train[:1])
    self.tx = training_optimizer(config, self.regularizer, self.steps_per_epoch, self.rigl_groups)
    self.mesh = build_mesh(config.mesh, config.batch_size)
    self.opt_state = self.tx.init(self.params)
    self._place()
    self.signals.agree()
    multihost.on_primary(self._clear_out)
    self.position.owns_out = not config.resume
    self.steps = ckpt.Steps(self.checkpoint_dir, max_to_keep=KEEP_CHECKPOINTS)
    try:
      if config.resume:
        self._resume()
      return self._train()
    finally:
      self.steps.close()

  def _clear_out(self) -> None:
    """Delete the run replaced by ``--overwrite``, and what an interrupted JSON write left."""
    if self.config.overwrite:
      for name in RUN_FILES:
        files.remove(os.path.join(self.config.out, name))
    for name in os.listdir(self.config.out):
      if ".json.tmp-" in name:
        files.remove(os.path.join(self.config.out, name))

  def _check_same_data(self, record: dict[str, Any]) -> None:
    stored = record.get("data_fingerprint")
    if stored is None or stored == self.data_fingerprint or self.config.allow_data_change:
      return

    def shown(fp: dict[str, Any]) -> str:
      return (
        f"{fp.get('name')} {fp.get('train')}/{fp.get('validation')} examples, "
        f"sha256 {str(fp.get('sha256'))[:12]}"
        + (f", file sha256 {fp['file_sha256'][:12]}" if "file_sha256" in fp else "")
      )

    raise ConfigError(
      f"--resume: the data differ from the run's in {self.config.out} (stored: "
      f"{shown(stored)}; now: {shown(self.data_fingerprint)}); resume on the same data, or add "
      "--allow-data-change to continue on these"
    )

  def _place(self) -> None:
    """Lay params and optimizer state on the mesh (see :func:`param_shardings`)."""
    if self.mesh is None:
      return
    from jax.sharding import NamedSharding, PartitionSpec

    from rmda_jax.optim import sharding

    shardings = param_shardings(self.mesh, self.params)
    self.params = jax.device_put(self.params, shardings)
    self.opt_state = jax.device_put(
      self.opt_state, sharding.state_shardings(self.tx, self.params, shardings)
    )
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))

  def _resume(self) -> None:
    config, template = self.config, {"params": self.params, "opt_state": self.opt_state}
    step, tree, record, damaged = restore_newest(
      self.steps,
      lambda stored: template,
      lambda fields: check_same_run(fields, config, config.out),
      prefix="--resume: ",
    )
    chosen = multihost.exchange([step, [bad for bad, _ in damaged]])
    multihost.check_agree(chosen, "checkpoint steps to resume from (--out differs between hosts?)")
    self._check_same_data(record)
    self.position.owns_out = True
    self.params, self.opt_state = tree["params"], tree["opt_state"]
    self._place()
    self.epoch_done, self.step, self.epoch_pos = (
      record["epoch"],
      record["step"],
      record["epoch_step"],
    )
    self.epoch_losses, self.epoch_skipped = list(record["epoch_losses"]), record["epoch_skipped"]
    self.epoch_seconds = record["epoch_seconds"]
    self.history, self.partial = list(record["history"]), record.get("partial")
    self._mark_checkpoint()
    if damaged:
      moved = []
      for bad, _ in damaged:
        moved.append(unique_path(os.path.join(config.out, "checkpoint-damaged", str(bad))))
        self.steps.set_aside(bad, moved[-1])
      self.log(fallback_note(damaged, step, record, os.path.dirname(moved[0])))
    self._write_log()  # log.json follows the checkpoint (also when it was lost or damaged)
    self.signals.agree()
    within = (
      f" + {self.epoch_pos} of {self.batches_per_epoch} steps of epoch {self.epoch_done + 1}"
      if self.epoch_pos
      else ""
    )
    self.log(
      f"resumed from {self.checkpoint_dir} at step {self.step} (epoch {self.epoch_done}{within})"
    )

  def _mark_checkpoint(self) -> None:
    mid = bool(self.epoch_pos)
    self.position.checkpoint = (self.step, self.epoch_done + (1 if mid else 0), mid)
    self.position.epoch, self.position.step = self.epoch_done + (1 if mid else 0), self.step

  def _records(self) -> list:
    return self.history + ([self.partial] if self.partial else [])

  def _write_log(self) -> None:
    """Rewrite ``log.json`` (process 0; a collective in a multi-process run)."""
    records = {"config": dataclasses.asdict(self.config), "epochs": self._records()}
    multihost.on_primary(lambda: write_json(self.log_path, records))

  def _save(self) -> None:
    """Checkpoint the current state, then config.json and log.json.

    A signal waits until all are written.
    """
    tree = {"params": self.params, "opt_state": self.opt_state}
    record = {
      "format": CHECKPOINT_FORMAT,
      "config": dataclasses.asdict(self.config),
      "epoch": self.epoch_done,
      "step": self.step,
      "epoch_step": self.epoch_pos,
      "epoch_losses": self.epoch_losses,
      "epoch_skipped": self.epoch_skipped,
      "epoch_seconds": self.epoch_seconds,
      "history": self.history,
      "partial": self.partial,
      "data_fingerprint": self.data_fingerprint,
    }
    # process 0's answer (the others hold no lock), for every process
    if not multihost.exchange(self.lock is not None and self.lock.still_held())[0]:
      self.position.lost_out = True
      raise RunFault(
        f"--out {self.config.out} was deleted or replaced while the run was writing it; nothing "
        "more is written there"
      )
    pause = save_pause()
    self.signals.saving = True
    try:
      if pause:
        print(f"checkpoint save window: step {self.step}", file=sys.stderr, flush=True)
        time.sleep(pause)
        print(f"checkpoint write: step {self.step}", file=sys.stderr, flush=True)
      try:
        self.steps.save(self.step, tree, record)
      except ckpt.CheckpointWriteError as err:
        if multihost.count() == 1:
          raise
        raise RunFault(
          f"{describe_os_error(err)}; in a run of {multihost.count()} processes this is also "
          "what a process that died or stopped during the save leaves: see the other processes' "
          "logs"
        ) from None
      self._mark_checkpoint()
      if pause:
        time.sleep(pause)
      if not self.config_written:
        fields = {**dataclasses.asdict(self.config), "data_fingerprint": self.data_fingerprint}
        path = os.path.join(self.config.out, "config.json")
        multihost.on_primary(lambda: write_json(path, fields))
        self.config_written = True
      self._write_log()
    finally:
      self.signals.saving = False
    self.signals.agree()

  def _compile(self) -> tuple[Callable[..., Any], Callable[..., Any], Callable[..., Any]]:
    model, tx = self.model, self.tx

    loss_fn = steps.softmax_cross_entropy(lambda p, x: model.apply({"params": p}, x))
    step = steps.make_step(loss_fn, tx)

    # params and optimizer state are donated: updated in place, no second copy of
    # either (signals are only acted on between steps, and checkpoints are
    # written synchronously, so nothing reads a donated buffer afterwards). On
    # CPU the step's sums may be reassociated, which lets XLA vectorize them
    # (RAMDA's and ProxGen's exact solves; IEEE NaN/inf otherwise kept).
    @functools.partial(jax.jit, donate_argnums=(0, 1), compiler_options=cpu_compiler_options())
    def train_step(p, s, x, y, stop):
      p, s, loss = step(p, s, x, y)
      # stop: each device's process's noted signal (multi-process runs; else None); every process
      # learns the largest and where it is, and all stop after the same step
      noted = None if stop is None else (jnp.max(stop), jnp.argmax(stop))
      # s.notfinite_count: 0 after a step with a finite gradient, else how many in a row were not
      return p, s, loss, s.notfinite_count, noted

    @jax.jit
    def correct(p, x, y):
      # per example: the fraction of its tokens predicted (1 or 0 for classification)
      # without mutable collections, apply returns the logits alone
      logits = cast(jax.Array, model.apply({"params": p}, x))
      return jnp.sum(jnp.argmax(logits, -1) == y) * (y.shape[0] / y.size)

    @jax.jit
    def summed_loss(p, x, y):
      return loss_fn(p, x, y) * x.shape[0]

    return train_step, correct, summed_loss

  def _draw(self, records: list[dict[str, Any]], params: optax.Params, title: str) -> None:
    """Draw the run's figures into ``out``."""
    from rmda_jax.app import plots

    out = self.config.out
    plots.curves(records, os.path.join(out, "curves.png"), title=title)
    drawn = (
      self.regularizer
      if self.rigl_groups is None
      else regs.group_lasso(0.0, groups=self.rigl_groups)
    )
    plots.surviving_groups(params, drawn, self.dataset.input_shape, os.path.join(out, "groups.png"))
    if self.config.model == "transformer":
      plots.kept_heatmap(
        records,
        "heads_kept",
        os.path.join(out, "heads.png"),
        title="attention heads kept (structured point)",
      )

  def _stop_flags(self) -> jax.Array | None:
    """This process's noted signal on each of its devices, for the step (None: one process)."""
    if not self.signals.collective or self.mesh is None:
      return None
    from jax.sharding import NamedSharding, PartitionSpec

    n, flag = self.mesh.devices.size, self.signals.flag()
    sharding = NamedSharding(self.mesh, PartitionSpec(("data", "model")))
    return jax.make_array_from_callback(
      (n,),
      sharding,
      lambda index: np.full(len(range(n)[index[0] if index else slice(None)]), flag, np.int32),
    )

  def _stop_if_noted(self, noted: tuple[jax.Array, jax.Array] | None) -> None:
    """Stop every process after the step whose flags (``noted``) show a signal somewhere."""
    if noted is not None and self.mesh is not None:
      signum, device = int(noted[0]), int(noted[1])
      self.signals.stop_for(signum, self.mesh.devices.flat[device].process_index)

  def _diverged(self, what: str, step: int, epoch: int) -> Diverged:
    last = self.position.checkpoint
    kept = f"the last checkpoint is step {last[0]}" if last else "no checkpoint was written"
    return Diverged(
      f"training diverged at step {step} (epoch {epoch}): {what}; nothing of this state was saved "
      f"({kept}); try a smaller --lr (now {self.config.lr:g})"
    )

  def _check_step(self, step: int, epoch: int, loss: jax.Array, nonfinite_run: jax.Array) -> bool:
    """Whether the step was skipped.

    Raises Diverged when too many steps in a row were, or its loss is not finite.
    """
    run_length = int(nonfinite_run)
    if run_length > self.config.skip_nonfinite:
      raise self._diverged(
        f"{run_length} step{'s' if run_length > 1 else ''} in a row had a non-finite gradient "
        f"(more than --skip-nonfinite {self.config.skip_nonfinite})",
        step,
        epoch,
      )
    if run_length == 0 and not math.isfinite(float(loss)):
      raise self._diverged("the loss became non-finite", step, epoch)
    return run_length > 0

  def _train(self) -> TrainResult:
    config, dataset = self.config, self.dataset
    assert config.epochs is not None  # set by TrainConfig.__post_init__
    train_step, correct, summed_loss = self._compile()
    dual_averaging = config.optimizer in ("rmda", "ramda")
    header = (
      f"{config.optimizer} on {config.model}/{dataset.name}: "
      f"{models.num_params(self.params):,} params, "
      f"{len(dataset.x_train)} train / {len(dataset.x_test)} validation examples, "
      f"{self.steps_per_epoch} steps per epoch, "
      f"regularizer {config.regularizer} ({config.strength:g})"
    )
    self.log(header)
    progress = progress_factory(config.progress and multihost.is_primary())

    def batched(fn, p, x, y):
      return batched_mean(fn, p, x, y, config.eval_batch_size, self.signals.check)

    def at_limit():
      return config.max_steps is not None and self.step >= config.max_steps

    if self.epoch_done >= config.epochs or at_limit():
      self.log(
        f"nothing to do: the run is at step {self.step} (epoch {self.epoch_done}), "
        f"--epochs {config.epochs}"
        + (f", --max-steps {config.max_steps}" if config.max_steps else "")
      )
    for epoch in range(self.epoch_done + 1, config.epochs + 1):
      if at_limit():
        break
      batches = datasets.batches(
        dataset.x_train,
        dataset.y_train,
        config.batch_size,
        np.random.default_rng([config.seed, epoch]),
      )
      if (
        self.epoch_pos
      ):  # resuming inside this epoch: the same order, without the steps already done
        batches = itertools.islice(batches, self.epoch_pos, None)
      else:
        self.epoch_losses, self.epoch_skipped, self.epoch_seconds = [], 0, 0.0
      self.position.epoch = epoch
      started = time.perf_counter()
      bar = progress(
        total=self.batches_per_epoch, initial=self.epoch_pos, desc=f"epoch {epoch}/{config.epochs}"
      )
      pending = []
      for xb, yb in batches:
        if self.mesh is not None:
          xb, yb = global_batch(self.batch_sharding, xb), global_batch(self.batch_sharding, yb)
        self.params, self.opt_state, loss, nonfinite_run, noted = train_step(
          self.params, self.opt_state, xb, yb, self._stop_flags()
        )
        self.step += 1
        self.epoch_pos += 1
        self.position.step = self.step
        pending.append((self.step, loss, nonfinite_run, noted))
        bar.update(1)
        self.signals.check()
        if len(pending) > 1:  # the previous step's flags: reading them leaves this step running
          previous, previous_loss, previous_run, previous_noted = pending[-2]
          self._check_step(previous, epoch, previous_loss, previous_run)
          self._stop_if_noted(previous_noted)
        if at_limit():
          break
      bar.close()
      self.epoch_seconds += time.perf_counter() - started
      if pending:
        self._stop_if_noted(pending[-1][3])
      for step, loss, nonfinite_run, _ in pending:
        if self._check_step(step, epoch, loss, nonfinite_run):
          self.epoch_skipped += 1
        else:
          self.epoch_losses.append(float(loss))
      complete = self.epoch_pos == self.batches_per_epoch
      if not bool(all_finite(self.params)):
        raise self._diverged("the params became non-finite", self.step, epoch)
      if complete and not self.epoch_losses:
        raise self._diverged("every step of the epoch had a non-finite gradient", self.step, epoch)
      params = self.params
      # the metrics are eager jnp operations: with several processes on this process's copy
      # (global arrays would make each one a computation over all hosts, run in step by none)
      on_host = multihost.host_tree if multihost.count() > 1 else (lambda tree: tree)
      params_here = on_host(params)
      record = {
        "epoch": epoch,
        "step": self.step,
        "seconds": self.epoch_seconds,
        **throughput(self.epoch_pos * config.batch_size, self.epoch_seconds, multihost.count()),
        "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
        "train_accuracy": batched(correct, params, dataset.x_train, dataset.y_train),
        "val_loss": batched(summed_loss, params, dataset.x_test, dataset.y_test),
        "val_accuracy": batched(correct, params, dataset.x_test, dataset.y_test),
        "skipped_steps": self.epoch_skipped,
        **structure_metrics(params_here, self.regularizer, self.rigl_groups),
      }
      if self.regularizer is not None and not isinstance(self.regularizer, discrete.DiscreteSet):
        # (an indicator's value is +inf off the set: on_set_fraction reports feasibility instead)
        record["objective"] = record["train_loss"] + float(self.regularizer.value(params_here))
      if dual_averaging:
        z = structured_params(self.opt_state)
        z_here = on_host(z)
        z_structure = structure_metrics(z_here, self.regularizer)
        record["structured_group_sparsity"] = z_structure["group_sparsity"]
        record["structured_weighted_group_sparsity"] = z_structure["weighted_group_sparsity"]
        if config.model == "transformer":
          record["structured_val_perplexity"] = float(
            np.exp(batched(summed_loss, z, dataset.x_test, dataset.y_test))
          )
        record["structured_val_accuracy"] = batched(correct, z, dataset.x_test, dataset.y_test)
      if config.model == "transformer":
        record.update(
          language_metrics(
            record, z_here if dual_averaging else params_here, self.lm_groups, self.unigram
          )
        )
      if complete:
        self.history.append(record)
        self.partial, self.epoch_done, self.epoch_pos = None, epoch, 0
        self.epoch_losses, self.epoch_skipped, self.epoch_seconds = [], 0, 0.0
      else:
        record["partial"] = True
        self.partial = record
      self.log(epoch_line(record, self.batches_per_epoch))
      if not complete or epoch == config.epochs or epoch % config.checkpoint_every == 0:
        self._save()
      else:
        self._write_log()
        self.signals.agree()
    records = self._records()
    self.signals.agree()
    if config.plots and records:
      params = multihost.host_tree(self.params) if multihost.count() > 1 else self.params
      multihost.on_primary(lambda: self._draw(records, params, header.split(":")[0]))
    self.log(summary_table(records, config))
    return TrainResult(config, records, self.params, self.opt_state, self.regularizer, config.out)
