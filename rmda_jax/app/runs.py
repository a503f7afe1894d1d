"""Run directories: checkpoints, logs and resuming.

``OUT/checkpoint/<step>/`` holds params, optimizer state and the epoch
records so far, written under a temporary name and renamed when complete
(the newest :data:`KEEP_CHECKPOINTS` are kept), with the SHA-256 of every
array; ``log.json`` and ``config.json`` are rewritten atomically.
:func:`restore_newest` picks the newest intact step and falls back to an
older one; :func:`load_run` reads a finished or interrupted run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from rmda_jax.app import checkpoint as ckpt
from rmda_jax.app import data as datasets
from rmda_jax.app import rundir
from rmda_jax.app.builders import build_model, build_regularizer, rigl_groups, training_optimizer
from rmda_jax.app.config import ConfigError, TrainConfig, check_same_run, config_from_fields

KEEP_CHECKPOINTS = 2  # newest checkpoint steps kept in OUT/checkpoint


# how many times a reader lists the steps again when the writer rotated one away under it
ROTATION_RETRIES = 20


CHECKPOINT_FORMAT = 2


# the files of a run in OUT (what --overwrite deletes), with a compact model written into it
RUN_FILES = (
  "config.json",
  "log.json",
  "checkpoint",
  "checkpoint-damaged",
  "curves.png",
  "groups.png",
  "heads.png",
  "model.json",
  "params",
  "collections",
)


# test hook: seconds to pause inside every checkpoint save window (exercises interrupts during
# saves)
SAVE_PAUSE_ENV = "RMDA_JAX_TEST_SAVE_PAUSE"


def existing_run(out: str) -> str | None:
  """What marks ``out`` as holding a training run, or None.

  The mark is ``config.json``, ``log.json`` or a checkpoint directory.
  """
  for name in ("config.json", "log.json"):
    if os.path.lexists(os.path.join(out, name)):
      return name
  checkpoint_dir = os.path.join(out, "checkpoint")
  if os.path.isdir(checkpoint_dir):
    if has_steps(checkpoint_dir):
      return "checkpoint/"
  elif os.path.lexists(checkpoint_dir):
    return "checkpoint"
  return None


def _check_record(record: dict[str, Any]) -> None:
  keys = (
    "config",
    "epoch",
    "step",
    "epoch_step",
    "epoch_losses",
    "epoch_skipped",
    "epoch_seconds",
    "history",
  )
  if record.get("format") != CHECKPOINT_FORMAT or any(k not in record for k in keys):
    raise ckpt.CheckpointError("its record is not a training checkpoint of this rmda-jax version")


@jax.jit
def all_finite(tree: optax.Params) -> jax.Array:
  """Whether every floating-point entry of ``tree`` is finite (a scalar bool array)."""
  leaves = [
    jnp.all(jnp.isfinite(x))
    for x in jax.tree_util.tree_leaves(tree)
    if jnp.issubdtype(x.dtype, jnp.inexact)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def restore_newest(
  steps: ckpt.Steps,
  template_for: Callable[[TrainConfig], Any],
  check_config: Callable[[dict[str, Any]], None] = lambda fields: None,
  prefix: str = "",
) -> tuple[int, Any, dict[str, Any], list[tuple[int, str]]]:
  """``(step, tree, record, damaged)`` of the newest step that restores and verifies.

  ``template_for(config)`` gives the tree to restore into for a stored config;
  ``damaged`` lists ``(step, reason)`` of the newer steps that failed. A step
  that a training run writing the directory rotates away while it is read is
  not damaged: the listing is read again and the newest step tried anew.
  Raises ConfigError (its message starting with ``prefix``) when no step is
  usable.
  """
  damaged: dict[int, str] = {}
  for _ in range(ROTATION_RETRIES):
    available = steps.steps()
    if not available:
      raise ConfigError(f"{prefix}no complete checkpoint in {steps.path}")
    rotated = False
    for step in available:
      if step in damaged:
        continue
      try:
        record = steps.read_record(step)
        _check_record(record)
        check_config(record["config"])
        tree, record = steps.restore(step, template_for(config_from_fields(record["config"])))
        if not bool(all_finite(tree["params"])):
          raise ckpt.CheckpointError("its params are not finite")
      except ckpt.CheckpointError as err:
        if not os.path.isdir(steps.step_dir(step)):  # rotated away by the writer, not damaged
          rotated = True
          break
        damaged[step] = str(err)
        continue
      return step, tree, record, sorted(damaged.items(), reverse=True)
    if not rotated:
      break
  raise ConfigError(
    f"{prefix}no usable checkpoint in {steps.path}: "
    + "; ".join(
      f"step {step} is damaged ({why})" for step, why in sorted(damaged.items(), reverse=True)
    )
  )


def fallback_note(
  damaged: list[tuple[int, str]], step: int, record: dict[str, Any], moved_to: str | None = None
) -> str:
  """The line saying that the newest step is damaged and the older ``step`` is used instead."""
  newest, why = damaged[0]
  more = f" (and {len(damaged) - 1} more damaged step(s))" if len(damaged) > 1 else ""
  note = (
    f"checkpoint step {newest} is damaged ({why}){more}; using step {step} "
    f"(epoch {record['epoch']}{', mid-epoch' if record['epoch_step'] else ''})"
  )
  if moved_to:
    note += f"; the damaged step was moved to {moved_to}"
  return note


def load_run(
  run_dir: str, log: Callable[[str], None] | None = None
) -> tuple[TrainConfig, datasets.Dataset, nn.Module, optax.Params, optax.OptState]:
  """A finished (or interrupted) run: ``(config, dataset, model, params, opt_state)``.

  ``run_dir`` is a run's output directory (with ``checkpoint/``) or its
  ``checkpoint`` directory. The newest intact checkpoint step is used; when a
  newer one is damaged, ``log`` (default: standard error) says so. Raises
  ConfigError (one line) when the directory is no run or no step is usable.
  """
  run_dir = os.path.abspath(run_dir)
  if os.path.basename(run_dir.rstrip(os.sep)) == "checkpoint":
    run_dir = os.path.dirname(run_dir)
  checkpoint_dir = os.path.join(run_dir, "checkpoint")
  if not os.path.isdir(checkpoint_dir):
    raise ConfigError(
      f"{run_dir} is not a training run: it needs checkpoint/ (written by rmda-jax train --out DIR)"
    )
  built: dict[str, Any] = {}

  def template_for(config: TrainConfig) -> dict[str, Any]:
    try:
      config.validate()
    except ConfigError as err:
      raise ckpt.CheckpointError(f"its stored configuration is invalid ({err})") from None
    dataset = datasets.load(config.dataset, config.data_dir, download=False, context=config.context)
    model = build_model(config, dataset)
    params = model.init(jax.random.PRNGKey(config.seed), dataset.x_train[:1])["params"]
    tx = training_optimizer(
      config,
      build_regularizer(config, model, params, dataset.x_train[:1]),
      datasets.steps_per_epoch(len(dataset.x_train), config.batch_size),
      rigl_groups(config, model, params, dataset.x_train[:1]),
    )
    built["config"], built["dataset"], built["model"] = config, dataset, model
    return {"params": params, "opt_state": tx.init(params)}

  with ckpt.Steps(checkpoint_dir, read_only=True) as steps:
    step, tree, record, damaged = restore_newest(steps, template_for, prefix=f"{run_dir}: ")
  if damaged:
    (log or (lambda line: print(line, file=sys.stderr)))(fallback_note(damaged, step, record))
  config = config_from_fields(record["config"])
  if built.get("config") != config:
    template_for(config)
  return config, built["dataset"], built["model"], tree["params"], tree["opt_state"]


def prepare_out(config: TrainConfig) -> rundir.RunLock:
  """Check ``--out`` / ``--data-dir``, take the run directory's lock, refuse to replace a run.

  Returns the held :class:`~rmda_jax.app.rundir.RunLock` (the caller releases
  it). Raises ConfigError for a bad path or an existing run without
  ``--resume`` / ``--overwrite``; :class:`~rmda_jax.app.rundir.RunDirError`
  when another process holds the directory or it cannot be written.
  """
  out = config.out
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ConfigError(f"--out {out} is a file, not a directory")
  if (
    config.data_dir is not None
    and os.path.lexists(config.data_dir)
    and not os.path.isdir(config.data_dir)
  ):
    raise ConfigError(f"--data-dir {config.data_dir} is a file, not a directory")
  if config.resume and not os.path.isdir(os.path.join(out, "checkpoint")):
    raise ConfigError(
      f"--resume: no checkpoint in {os.path.join(out, 'checkpoint')} (nothing to resume; "
      "train without --resume)"
    )
  _refuse_existing_run(config)  # a usage error first, even where nothing can be written
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as err:
    raise rundir.RunDirError(f"--out {out}: {rundir.describe_os_error(err, out)}") from None
  lock = rundir.RunLock(out, "--out").acquire()
  try:
    _refuse_existing_run(config)  # again under the lock: another run may have begun meanwhile
  except ConfigError:
    lock.release()
    raise
  return lock


def _refuse_existing_run(config: TrainConfig) -> None:
  found = None if config.resume or config.overwrite else existing_run(config.out)
  if found is not None:
    raise ConfigError(
      f"--out {config.out} already holds a training run ({found}); add --resume to continue it "
      "or --overwrite to replace it"
    )


def save_pause() -> float:
  """Seconds to pause in each checkpoint save (test hook ``SAVE_PAUSE_ENV``; 0 if unset or bad)."""
  try:
    return max(float(os.environ.get(SAVE_PAUSE_ENV, "0")), 0.0)
  except ValueError:
    return 0.0


def precheck_resume(config: TrainConfig, checkpoint_dir: str) -> None:
  """The settings check of ``--resume`` on the newest readable record, before data is loaded."""
  with ckpt.Steps(checkpoint_dir, read_only=True) as steps:
    for step in steps.steps():
      try:
        record = steps.read_record(step)
        _check_record(record)
      except ckpt.CheckpointError:
        continue
      check_same_run(record["config"], config, config.out)
      return


def has_steps(checkpoint_dir: str) -> bool:
  """Whether ``checkpoint_dir`` holds a step (a directory named by its number)."""
  try:
    return any(name.isdigit() for name in os.listdir(checkpoint_dir))
  except OSError:
    return False


def unique_path(path: str) -> str:
  """``path``, or ``path-2``, ``path-3``, ...: the first that does not exist."""
  candidate, n = path, 1
  while os.path.lexists(candidate):
    n += 1
    candidate = f"{path}-{n}"
  return candidate
