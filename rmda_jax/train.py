"""The main job: train a Flax model with any optimizer of the library, report structure.

Programmatic use::

    from rmda_jax import train
    result = train.run(train.TrainConfig(model="mlp", dataset="digits", epochs=20))

Command line: ``rmda-jax train --help`` (or ``python -m rmda_jax.train``).

Per epoch it logs loss, train/validation accuracy and the structure metrics
(of the model's params, and for RMDA/RAMDA of the structured point ``z``) to
``OUT/log.json`` and draws ``OUT/curves.png`` (accuracy and sparsity vs epoch)
and ``OUT/groups.png`` (which groups survived).

Checkpoints: ``OUT/checkpoint/<step>/`` holds params, optimizer state and the
epoch records so far, written under a temporary name and renamed when complete
(the newest :data:`KEEP_CHECKPOINTS` are kept), with the SHA-256 of every
array. ``log.json`` and ``config.json`` are rewritten atomically after each
checkpoint. ``resume=True`` continues from the newest intact step (falling
back to an older one when the newest is damaged) and refuses a changed
setting; a run resumed any number of times, also in the middle of an epoch
(``max_steps``), ends with the same numbers as one that was never stopped.
SIGINT / SIGTERM stop the run between steps, or after the save they arrive in
(:class:`Interrupted`). Steps whose gradient is not finite are skipped
(``optax.apply_if_finite``) and counted (``skipped_steps``); more than
``skip_nonfinite`` in a row, or non-finite params or loss, stop the run with
:class:`Diverged` before anything of that state is saved.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmda_jax import checkpoint as ckpt
from rmda_jax import data as datasets
from rmda_jax import discovery
from rmda_jax import discrete
from rmda_jax import metrics
from rmda_jax import models
from rmda_jax import regularizers as regs
from rmda_jax import solvers
from rmda_jax.dual_averaging import ramda, rmda, structured_params
from rmda_jax.proximal import prox_adamw, prox_sgd, prox_ssi
from rmda_jax.pruning import rigl
from rmda_jax.schedules import Stagewise

MODELS = ("mlp", "lenet5", "vgg", "logreg", "transformer")
OPTIMIZERS = ("rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi", "sgd", "rigl", "adamw")
DENSE = ("sgd", "rigl", "adamw")  # no regularizer
GROUPINGS = ("auto", "per-leaf", "discovered")
POSITIONS = ("learned", "rotary")
REGULARIZERS = ("group_lasso", "l1", "nuclear", "elastic_net", "binary", "ternary", "none")
DEFAULT_LR = {"rmda": 0.1, "ramda": 1e-2, "prox_sgd": 0.1, "prox_adamw": 1e-3, "prox_ssi": 1e-3, "sgd": 0.1,
              "adamw": 1e-3,
              "rigl": 0.1}
DEFAULT_MOMENTUM = {"rmda": 0.1, "ramda": 0.1, "prox_sgd": 0.1, "sgd": 0.9, "rigl": 0.9}
HEAVY_BALL = ("sgd", "rigl")  # optax.sgd's beta, not the papers' c
# the weights allowed by --regularizer binary/ternary, times 1/sqrt(fan_in) per layer
DISCRETE_VALUES = {"binary": (-1.0, 1.0), "ternary": (-1.0, 0.0, 1.0)}
KEEP_CHECKPOINTS = 2  # newest checkpoint steps kept in OUT/checkpoint
CHECKPOINT_FORMAT = 2
# what a resumed run may change; every other field must equal the stored run's
RESUMABLE_CHANGES = ("epochs", "max_steps", "resume", "overwrite", "progress", "plots", "checkpoint_every", "out",
                     "data_dir", "download", "skip_nonfinite")
# the files of a run in OUT (what --overwrite deletes)
RUN_FILES = ("config.json", "log.json", "checkpoint", "checkpoint-damaged", "curves.png", "groups.png",
             "heads.png")
# test hook: seconds to pause inside every checkpoint save window (exercises interrupts during saves)
_SAVE_PAUSE_ENV = "RMDA_JAX_TEST_SAVE_PAUSE"


class ConfigError(ValueError):
  """An option has a value the training command cannot use."""


class Diverged(RuntimeError):
  """The loss or the params became non-finite (or too many steps in a row had a non-finite gradient)."""


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped the run.

  ``signum`` is the signal; ``abandoned_save`` says that a second signal cut
  a checkpoint save short; ``where`` describes the position reached and the
  last checkpoint, in words; ``restart_flag`` is what to add to the same
  command to go on: ``"--resume"`` (a checkpoint of this run is on disk),
  ``"--overwrite"`` (start again, replacing what this run wrote) or None
  (start again as it was).
  """

  def __init__(self, signum: int, abandoned_save: bool = False):
    super().__init__(signal.Signals(signum).name)
    self.signum = signum
    self.abandoned_save = abandoned_save
    self.where = ""
    self.restart_flag = None

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


@dataclasses.dataclass
class TrainConfig:
  """Everything a run depends on (saved as ``OUT/config.json``).

  ``learning_rate`` / ``momentum`` None take the method's default (the
  papers' settings: RMDA 0.1 with c = 0.1, RAMDA 1e-2, ProxSGD 0.1,
  ProxAdamW / ProxSSI 1e-3, dense SGD 0.1 with heavy-ball 0.9). Milestones
  are epochs; at each the learning rate drops by ``gamma`` (RMDA/RAMDA also
  restart, and ramp their momentum to 1 after the last one).

  ``resume`` continues the run in ``out``; ``overwrite`` deletes it first
  (without either, an existing run in ``out`` is an error). Up to
  ``skip_nonfinite`` consecutive steps with a non-finite gradient are skipped.
  """

  model: str = "mlp"
  dataset: str = "digits"
  optimizer: str = "rmda"
  regularizer: str = "group_lasso"
  strength: float = 2e-3
  learning_rate: Optional[float] = None
  momentum: Optional[float] = None
  epochs: int = 100
  batch_size: int = 64
  milestones: Sequence[int] = (50, 75)
  gamma: float = 0.1
  seed: int = 0
  out: str = "runs/default"
  resume: bool = False
  max_steps: Optional[int] = None
  hidden: Sequence[int] = (128, 128)
  data_dir: Optional[str] = None
  download: bool = True
  progress: bool = True
  plots: bool = True
  eval_batch_size: int = 1024
  checkpoint_every: int = 1
  solver_max_iters: int = 100
  solver_tol: float = 1e-5
  sparsity: float = 0.9
  rigl_update_every: int = 100
  overwrite: bool = False
  skip_nonfinite: int = 10
  # the Transformer language model (--model transformer, text datasets)
  context: int = 128
  layers: int = 2
  width: int = 128
  heads: int = 4
  mlp: Optional[int] = None
  positions: str = "learned"
  tied: bool = True
  groups: str = "auto"
  mesh: Optional[str] = None

  def validate(self) -> None:
    def check(ok, message):
      if not ok:
        raise ConfigError(message)

    check(self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
    check(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
    check(self.regularizer in REGULARIZERS,
          f"--regularizer must be one of {', '.join(REGULARIZERS)}, got {self.regularizer!r}")
    check(self.dataset in datasets.NAMES or datasets.is_text(self.dataset),
          f"--dataset must be one of {', '.join(datasets.NAMES)} or text:PATH, got {self.dataset!r}")
    text = datasets.is_text(self.dataset)
    check(text == (self.model == "transformer"),
          "--model transformer trains on text (--dataset pydoc or text:PATH)" if text or self.model == "transformer"
          else "")
    check(self.context >= 1 and self.layers >= 1 and self.width >= 1 and self.heads >= 1,
          f"--context, --layers, --width and --heads must be >= 1, got {self.context}, {self.layers}, "
          f"{self.width}, {self.heads}")
    check(self.width % self.heads == 0, f"--width ({self.width}) must be a multiple of --heads ({self.heads})")
    check(self.mlp is None or self.mlp >= 1, f"--mlp must be >= 1, got {self.mlp}")
    check(self.positions in POSITIONS, f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}")
    check(self.groups in GROUPINGS, f"--groups must be one of {', '.join(GROUPINGS)}, got {self.groups!r}")
    if self.mesh is not None:
      parse_mesh(self.mesh)
    check(math.isfinite(self.strength) and self.strength >= 0, f"--strength must be >= 0, got {self.strength}")
    check(self.learning_rate is None or (math.isfinite(self.learning_rate) and self.learning_rate > 0),
          f"--lr must be > 0, got {self.learning_rate}")
    if self.momentum is not None:
      if self.optimizer in HEAVY_BALL:
        check(0 <= self.momentum < 1,
              f"--momentum for {self.optimizer} is the heavy-ball beta in [0, 1), got {self.momentum}")
      else:
        check(0 < self.momentum <= 1, f"--momentum must be in (0, 1] (1 = no momentum), got {self.momentum}")
      check(self.optimizer not in ("prox_adamw", "prox_ssi", "adamw"),
            f"--momentum does not apply to {self.optimizer} (it uses Adam's b1)")
    check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
    check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
    check(0 < self.gamma <= 1, f"--gamma must be in (0, 1], got {self.gamma}")
    check(all(m >= 1 for m in self.milestones) and list(self.milestones) == sorted(set(self.milestones)),
          f"--milestones must be increasing epochs >= 1, got {list(self.milestones)}")
    check(self.max_steps is None or self.max_steps >= 1, f"--max-steps must be >= 1, got {self.max_steps}")
    check(self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
    check(self.solver_max_iters >= 1, f"--solver-max-iters must be >= 1, got {self.solver_max_iters}")
    check(self.solver_tol > 0, f"--solver-tol must be > 0, got {self.solver_tol}")
    check(all(h >= 1 for h in self.hidden), f"--hidden widths must be >= 1, got {list(self.hidden)}")
    check(0 <= self.sparsity < 1, f"--sparsity must be in [0, 1), got {self.sparsity}")
    check(self.rigl_update_every >= 1, f"--rigl-update-every must be >= 1, got {self.rigl_update_every}")
    check(self.skip_nonfinite >= 0, f"--skip-nonfinite must be >= 0, got {self.skip_nonfinite}")
    check(not (self.resume and self.overwrite),
          "--resume and --overwrite exclude each other (continue the run in --out, or replace it)")

  @property
  def lr(self) -> float:
    return DEFAULT_LR[self.optimizer] if self.learning_rate is None else self.learning_rate

  @property
  def momentum_value(self) -> Optional[float]:
    if self.momentum is not None:
      return self.momentum
    return DEFAULT_MOMENTUM.get(self.optimizer)


def build_model(config: TrainConfig, dataset: datasets.Dataset):
  shape = dataset.input_shape
  if config.model == "lenet5" and (len(shape) != 3 or shape[0] < 16 or shape[1] < 16):
    raise ConfigError(f"lenet5 needs images of at least 16x16 (28x28 as in the papers); {dataset.name} has {shape}. "
                      "Use --dataset mnist_subset, mnist or fashion_mnist.")
  n = dataset.num_classes
  if config.model == "transformer":
    return models.TransformerLM(vocab=n, context=config.context, dim=config.width, heads=config.heads,
                                mlp=config.mlp, layers=config.layers, positions=config.positions, tied=config.tied)
  if config.model == "mlp":
    return models.MLP(hidden=tuple(config.hidden), num_classes=n)
  if config.model == "lenet5":
    return models.LeNet5(num_classes=n)
  if config.model == "vgg":
    return models.VGG(num_classes=n)
  return models.LogisticRegression(num_classes=n)


MESH_AXES = ("data", "model")


def parse_mesh(spec: str) -> dict:
  """``"data=N[,model=M]"`` -> ``{"data": N, "model": M}`` (ConfigError naming --mesh otherwise)."""
  sizes = {"data": 1, "model": 1}
  for part in spec.replace(" ", "").split(","):
    name, _, value = part.partition("=")
    if name not in MESH_AXES or not value.isdigit() or int(value) < 1:
      raise ConfigError(f"--mesh must look like data=N or data=N,model=M with N, M >= 1, got {spec!r}")
    sizes[name] = int(value)
  return sizes


def build_mesh(spec: Optional[str], batch_size: int):
  """The device mesh of a run: ``spec`` (``data=N[,model=M]``), or all local
  devices on ``data``; None on a single device."""
  devices = jax.local_devices()
  sizes = parse_mesh(spec) if spec is not None else {"data": len(devices), "model": 1}
  count = sizes["data"] * sizes["model"]
  if count > len(devices):
    raise ConfigError(f"--mesh {spec} needs {count} devices, this process has {len(devices)}")
  if spec is None and count == 1:
    return None
  if batch_size % sizes["data"]:
    raise ConfigError(f"--batch-size {batch_size} must be a multiple of the mesh's data axis ({sizes['data']})")
  auto = (jax.sharding.AxisType.Auto,) * 2  # XLA propagates the shardings (no explicit-sharding types)
  return jax.make_mesh((sizes["data"], sizes["model"]), MESH_AXES, devices=devices[:count], axis_types=auto)


def param_shardings(mesh, params):
  """Replicated over ``data``; over ``model`` (fully sharded, FSDP-style) each
  leaf's largest axis that the ``model`` size divides, else replicated."""
  from jax.sharding import NamedSharding, PartitionSpec

  model = mesh.shape["model"]

  def rule(x):
    shape = np.shape(x)
    axes = [a for a in sorted(range(len(shape)), key=lambda a: -shape[a]) if model > 1 and shape[a] % model == 0]
    spec = [None] * len(shape)
    if axes:
      spec[axes[0]] = "model"
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map(rule, params)


def _global_batch(batch_sharding, local):
  """The global batch as one array sharded over ``data``. Every process draws
  the same global batch (the same seeded order) and contributes its share
  (one process: the whole batch)."""
  if jax.process_count() == 1:
    return jax.device_put(local, batch_sharding)
  share = len(local) // jax.process_count()
  mine = local[jax.process_index() * share:(jax.process_index() + 1) * share]
  return jax.make_array_from_process_local_data(batch_sharding, mine, local.shape)


def discovered(config: TrainConfig) -> bool:
  """Whether group-LASSO uses the coupled groups found from the model's computation."""
  if config.groups == "auto":
    return config.model == "transformer"
  return config.groups == "discovered"


def build_regularizer(config: TrainConfig, model=None, params=None, example=None) -> Optional[regs.Regularizer]:
  """The regularizer of a run; group-LASSO on discovered groups (whole heads and
  hidden units) needs the model, its params and an example input."""
  if config.regularizer == "none" or config.optimizer in DENSE:
    return None
  if config.regularizer in DISCRETE_VALUES:
    return discrete.discrete_set(DISCRETE_VALUES[config.regularizer], scale="fan_in")
  if config.regularizer == "group_lasso" and discovered(config):
    found = discovery.discover_linen(model, params, example)
    return regs.group_lasso(config.strength, groups=found)
  return {
      "group_lasso": regs.group_lasso,
      "l1": regs.l1,
      "nuclear": regs.nuclear_norm,
      "elastic_net": regs.elastic_net,
  }[config.regularizer](config.strength)


def rigl_groups(config: TrainConfig, model, params, example):
  """The coupled groups of structured RigL (``--optimizer rigl --groups discovered``), else None."""
  if config.optimizer == "rigl" and discovered(config):
    return discovery.discover_linen(model, params, example)
  return None


def build_optimizer(config: TrainConfig, regularizer, steps_per_epoch: int, groups=None):
  """The optimizer of a run; ``groups`` (:func:`rigl_groups`) makes RigL's masks keep whole groups."""
  stages = Stagewise.from_epochs(tuple(config.milestones), steps_per_epoch, gamma=config.gamma)
  lr, c = config.lr, config.momentum_value
  solver = "auto"
  if regularizer is not None and not regularizer.has_exact_diag_prox:
    solver = solvers.ProximalGradient(max_iters=config.solver_max_iters, tol=config.solver_tol)
  if config.optimizer == "rmda":
    return rmda(lr, momentum=c, regularizer=regularizer, stages=stages)
  if config.optimizer == "ramda":
    return ramda(lr, momentum=c, regularizer=regularizer, stages=stages, solver=solver)
  schedule = stages.learning_rate(lr)
  if config.optimizer == "prox_sgd":
    return prox_sgd(schedule, momentum=c, regularizer=regularizer)
  if config.optimizer == "prox_adamw":
    return prox_adamw(schedule, regularizer=regularizer, solver=solver)
  if config.optimizer == "prox_ssi":
    return prox_ssi(schedule, regularizer=regularizer, solver=solver)
  if config.optimizer == "adamw":
    return optax.adamw(schedule)
  if config.optimizer == "rigl":
    # RigL's protocol: mask updates until 75% of training
    end_step = max(int(0.75 * config.epochs * steps_per_epoch), 1)
    return rigl(optax.sgd(schedule, momentum=c or None), config.sparsity, end_step=end_step,
                update_every=config.rigl_update_every, groups=groups)
  return optax.sgd(schedule, momentum=c or None)


def _batched(fn, params, x, y, batch, between=None):
  total = 0.0
  for start in range(0, len(x), batch):
    total += float(fn(params, x[start:start + batch], y[start:start + batch]))
    if between is not None:
      between()
  return total / len(x)


def model_groups(regularizer, model, params, example):
  """The coupled groups a language model's structure is reported on: the
  regularizer's, or (other regularizers, dense methods) discovered once."""
  if isinstance(regularizer, regs.GroupLasso) and regularizer.groups is not None:
    return regularizer.groups
  return discovery.discover_linen(model, params, example)


def language_metrics(record: dict, structured, found, unigram: float) -> dict:
  """Perplexity (and the unigram baseline's), and the heads and hidden units
  kept per layer of ``found`` (of the structured point ``z`` for RMDA/RAMDA,
  of the params otherwise)."""
  out = {"val_perplexity": float(np.exp(record["val_loss"])), "unigram_perplexity": unigram}
  kept = metrics.family_kept(structured, found)
  kinds = {f.name: f.kind for f in found.families}
  out["heads_kept"] = {name: k / n for name, (k, n) in kept.items() if kinds[name] == "heads"}
  out["units_kept"] = {name: k / n for name, (k, n) in kept.items() if kinds[name] == "units"}
  return out


def structure_metrics(params, regularizer, groups=None) -> dict:
  """:func:`rmda_jax.metrics.summary` as floats (over ``groups`` when given)."""
  return {k: float(v) for k, v in metrics.summary(params, regularizer, groups).items()}


@dataclasses.dataclass
class TrainResult:
  config: TrainConfig
  history: list
  params: Any
  opt_state: Any
  regularizer: Any
  out: str


def training_optimizer(config: TrainConfig, regularizer, steps_per_epoch: int, groups=None):
  """:func:`build_optimizer` wrapped to skip steps whose gradient is not finite (state untouched)."""
  return optax.apply_if_finite(build_optimizer(config, regularizer, steps_per_epoch, groups),
                               max_consecutive_errors=config.skip_nonfinite)


def existing_run(out: str) -> Optional[str]:
  """What marks ``out`` as holding a training run (``config.json``, ``log.json``, a checkpoint), or None."""
  for name in ("config.json", "log.json"):
    if os.path.lexists(os.path.join(out, name)):
      return name
  checkpoint_dir = os.path.join(out, "checkpoint")
  if os.path.isdir(checkpoint_dir):
    if any(ckpt.TMP_MARKER not in name for name in os.listdir(checkpoint_dir)):
      return "checkpoint/"
  elif os.path.lexists(checkpoint_dir):
    return "checkpoint"
  return None


def _config_from_fields(fields: dict) -> TrainConfig:
  known = {f.name for f in dataclasses.fields(TrainConfig)}
  return TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known})


def _flag(field: str) -> str:
  return {"learning_rate": "--lr"}.get(field, "--" + field.replace("_", "-"))


def _shown(value) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value) if value else "none"
  return "the default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _check_same_run(stored: dict, config: TrainConfig, out: str) -> None:
  """Refuse to resume with settings that change the numbers (naming each flag, its old and new value)."""
  try:
    old = _config_from_fields(stored)
  except TypeError:
    raise ckpt.CheckpointError("its stored configuration is not readable") from None
  resolved = {"learning_rate": (old.lr, config.lr), "momentum": (old.momentum_value, config.momentum_value)}
  changed = []
  for field in dataclasses.fields(TrainConfig):
    if field.name in RESUMABLE_CHANGES:
      continue
    before, now = resolved.get(field.name, (getattr(old, field.name), getattr(config, field.name)))
    if isinstance(before, (list, tuple)):
      before, now = list(before), list(now)
    if before != now:
      changed.append(f"{_flag(field.name)} {_shown(before)} -> {_shown(now)}")
  if changed:
    raise ConfigError(f"--resume: this command changes settings of the run in {out}: {', '.join(changed)}; "
                      "resume with the run's values, or train into another --out (or replace the run with "
                      "--overwrite)")


def _check_record(record: dict) -> None:
  keys = ("config", "epoch", "step", "epoch_step", "epoch_losses", "epoch_skipped", "epoch_seconds", "history")
  if record.get("format") != CHECKPOINT_FORMAT or any(k not in record for k in keys):
    raise ckpt.CheckpointError("its record is not a training checkpoint of this rmda-jax version")


@jax.jit
def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _no_checkpoint_message(checkpoint_dir: str) -> str:
  if os.path.isfile(os.path.join(checkpoint_dir, "_CHECKPOINT_METADATA")):
    return (f"{checkpoint_dir} was written by an older rmda-jax (one unnumbered checkpoint), which cannot be "
            "resumed; train again with --overwrite")
  return f"no complete checkpoint in {checkpoint_dir}"


def _restore_newest(steps: ckpt.Steps, template_for: Callable, check_config: Callable = lambda fields: None,
                    prefix: str = ""):
  """``(step, tree, record, damaged)`` of the newest step that restores and verifies.

  ``template_for(config)`` gives the tree to restore into for a stored config;
  ``damaged`` lists ``(step, reason)`` of the newer steps that failed. Raises
  ConfigError (its message starting with ``prefix``) when no step is usable.
  """
  available = steps.steps()
  if not available:
    raise ConfigError(prefix + _no_checkpoint_message(steps.path))
  damaged = []
  for step in available:
    try:
      record = steps.read_record(step)
      _check_record(record)
      check_config(record["config"])
      tree, record = steps.restore(step, template_for(_config_from_fields(record["config"])))
      if not bool(_all_finite(tree["params"])):
        raise ckpt.CheckpointError("its params are not finite")
    except ckpt.CheckpointError as err:
      damaged.append((step, str(err)))
      continue
    return step, tree, record, damaged
  raise ConfigError(f"{prefix}no usable checkpoint in {steps.path}: "
                    + "; ".join(f"step {step} is damaged ({why})" for step, why in damaged))


def _fallback_note(damaged, step, record, moved_to=None) -> str:
  newest, why = damaged[0]
  more = f" (and {len(damaged) - 1} more damaged step(s))" if len(damaged) > 1 else ""
  note = (f"checkpoint step {newest} is damaged ({why}){more}; using step {step} "
          f"(epoch {record['epoch']}{', mid-epoch' if record['epoch_step'] else ''})")
  if moved_to:
    note += f"; the damaged step was moved to {moved_to}"
  return note


def load_run(run_dir: str, log: Optional[Callable[[str], None]] = None):
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
    raise ConfigError(f"{run_dir} is not a training run: it needs checkpoint/ "
                      "(written by rmda-jax train --out DIR)")
  built = {}

  def template_for(config):
    try:
      config.validate()
    except ConfigError as err:
      raise ckpt.CheckpointError(f"its stored configuration is invalid ({err})") from None
    dataset = datasets.load(config.dataset, config.data_dir, download=False, context=config.context)
    model = build_model(config, dataset)
    params = model.init(jax.random.PRNGKey(config.seed), dataset.x_train[:1])["params"]
    tx = training_optimizer(config, build_regularizer(config, model, params, dataset.x_train[:1]),
                            datasets.steps_per_epoch(len(dataset.x_train), config.batch_size),
                            rigl_groups(config, model, params, dataset.x_train[:1]))
    built["config"], built["dataset"], built["model"] = config, dataset, model
    return {"params": params, "opt_state": tx.init(params)}

  with ckpt.Steps(checkpoint_dir, read_only=True) as steps:
    step, tree, record, damaged = _restore_newest(steps, template_for, prefix=f"{run_dir}: ")
  if damaged:
    (log or (lambda line: print(line, file=sys.stderr)))(_fallback_note(damaged, step, record))
  config = _config_from_fields(record["config"])
  if built.get("config") != config:
    template_for(config)
  return config, built["dataset"], built["model"], tree["params"], tree["opt_state"]


class _Signals:
  """SIGINT / SIGTERM during a training job: noted, and acted on at the next safe point.

  :meth:`check` raises :class:`Interrupted` for a noted signal; the job calls
  it between steps, between evaluation batches and after a checkpoint and its
  logs are written, so a save under way always completes. Inside
  :meth:`immediate` (loading data, which may download) a signal stops the job
  at once. A second signal before the first is acted on also stops it at
  once, abandoning a save under way (orbax renames a step into place only
  once it is complete, so an abandoned save leaves no trace).
  """

  def __init__(self):
    self.pending = None
    self.saving = False
    self._immediate = 0
    self._previous = {}

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc):
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    return False

  def _handle(self, signum, frame):
    if self.pending is None and not self._immediate:
      self.pending = signum
      return
    raise Interrupted(signum, abandoned_save=self.saving)

  def check(self) -> None:
    if self.pending is not None:
      raise Interrupted(self.pending)

  @contextlib.contextmanager
  def immediate(self):
    self.check()
    self._immediate += 1
    try:
      yield
    finally:
      self._immediate -= 1


def _write_json(path: str, content) -> None:
  """Write ``content`` to ``path`` atomically (temporary file, fsync, rename)."""
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(content, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def _prepare_out(config: TrainConfig) -> None:
  """Check ``--out`` / ``--data-dir`` and refuse to replace an existing run silently."""
  out = config.out
  if os.path.lexists(out) and not os.path.isdir(out):
    raise ConfigError(f"--out {out} is a file, not a directory")
  if config.data_dir is not None and os.path.lexists(config.data_dir) and not os.path.isdir(config.data_dir):
    raise ConfigError(f"--data-dir {config.data_dir} is a file, not a directory")
  if config.resume and not os.path.isdir(os.path.join(out, "checkpoint")):
    raise ConfigError(f"--resume: no checkpoint in {os.path.join(out, 'checkpoint')} (nothing to resume; "
                      "train without --resume)")
  if not (config.resume or config.overwrite):
    found = existing_run(out)
    if found is not None:
      raise ConfigError(f"--out {out} already holds a training run ({found}); add --resume to continue it "
                        "or --overwrite to replace it")
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as err:
    raise ConfigError(f"--out {out}: cannot create the directory ({err.strerror or err})") from None


def _load_dataset(config: TrainConfig) -> datasets.Dataset:
  try:
    dataset = datasets.load(config.dataset, config.data_dir, config.download, context=config.context)
  except OSError as err:
    cache = config.data_dir or datasets.default_cache_dir()
    raise ConfigError(f"--data-dir {cache}: cannot use the dataset cache ({err.strerror or err}"
                      f"{': ' + str(err.filename) if err.filename else ''})") from None
  n = len(dataset.x_train)
  if config.batch_size > n:
    raise ConfigError(f"--batch-size {config.batch_size} is larger than the training set ({n} examples of "
                      f"{dataset.name}); use --batch-size {n} or less")
  return dataset


def _save_pause() -> float:
  try:
    return max(float(os.environ.get(_SAVE_PAUSE_ENV, "0")), 0.0)
  except ValueError:
    return 0.0


class _Position:
  """Where the run is, for the message of an interrupt."""

  def __init__(self):
    self.epoch, self.step = 0, 0
    self.checkpoint = None  # (step, epoch, mid_epoch) of the newest checkpoint of this run on disk
    self.owns_out = False  # whether --out holds this run (or nothing yet); before that, start again

  def describe(self) -> str:
    where = f"at step {self.step} (epoch {self.epoch})" if self.step else "before the first step"
    if self.checkpoint is None:
      return f"{where}, before the first checkpoint"
    step, epoch, mid = self.checkpoint
    return f"{where}; the last checkpoint is step {step} ({'in' if mid else 'end of'} epoch {epoch})"


def run(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
  """Train as configured; see the module doc for what is written to ``config.out``.

  Raises:
    ConfigError: a setting or an input (``out``, ``data_dir``, the checkpoint
      to resume) cannot be used.
    Diverged: the loss or the params became non-finite.
    Interrupted: SIGINT or SIGTERM (a KeyboardInterrupt).
  """
  config.validate()
  position = _Position()
  with _Signals() as signals:
    try:
      return _Job(config, log, signals, position).run()
    except Interrupted as err:
      checkpoint_dir = os.path.join(config.out, "checkpoint")
      if config.resume or (position.owns_out and _has_steps(checkpoint_dir)):
        err.restart_flag = "--resume"
      elif (config.overwrite or position.owns_out) and existing_run(config.out) is not None:
        err.restart_flag = "--overwrite"  # what is there is this run's (or one the command replaces)
      err.where = position.describe()
      raise


def _precheck_resume(config: TrainConfig, checkpoint_dir: str) -> None:
  """The settings check of ``--resume``, on the newest readable record, before any data is loaded."""
  with ckpt.Steps(checkpoint_dir, read_only=True) as steps:
    for step in steps.steps():
      try:
        record = steps.read_record(step)
        _check_record(record)
      except ckpt.CheckpointError:
        continue
      _check_same_run(record["config"], config, config.out)
      return


def _has_steps(checkpoint_dir: str) -> bool:
  try:
    return any(name.isdigit() for name in os.listdir(checkpoint_dir))
  except OSError:
    return False


class _Job:
  """One invocation of the training job: setup, resume, the epoch loop, checkpoints."""

  def __init__(self, config: TrainConfig, log, signals: _Signals, position: _Position):
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
    _prepare_out(config)
    if config.resume:
      _precheck_resume(config, self.checkpoint_dir)
    with self.signals.immediate():
      self.dataset = _load_dataset(config)
    self.model = build_model(config, self.dataset)
    self.params = self.model.init(jax.random.PRNGKey(config.seed), self.dataset.x_train[:1])["params"]
    self.regularizer = build_regularizer(config, self.model, self.params, self.dataset.x_train[:1])
    if config.model == "transformer":  # per-epoch reports of the LM, fixed for the run
      self.lm_groups = model_groups(self.regularizer, self.model, self.params, self.dataset.x_train[:1])
      self.unigram = datasets.unigram_perplexity(self.dataset)
    self.steps_per_epoch = datasets.steps_per_epoch(len(self.dataset.x_train), config.batch_size)
    self.batches_per_epoch = len(self.dataset.x_train) // config.batch_size
    self.rigl_groups = rigl_groups(config, self.model, self.params, self.dataset.x_train[:1])
    self.tx = training_optimizer(config, self.regularizer, self.steps_per_epoch, self.rigl_groups)
    self.mesh = build_mesh(config.mesh, config.batch_size)
    self.opt_state = self.tx.init(self.params)
    self._place()
    self.signals.check()
    if config.overwrite:
      for name in RUN_FILES:
        _remove(os.path.join(config.out, name))
    self.position.owns_out = not config.resume
    for name in os.listdir(config.out):  # what an interrupted atomic JSON write left
      if ".json.tmp-" in name:
        _remove(os.path.join(config.out, name))
    self.steps = ckpt.Steps(self.checkpoint_dir, max_to_keep=KEEP_CHECKPOINTS)
    try:
      if config.resume:
        self._resume()
      return self._train()
    finally:
      self.steps.close()

  def _place(self) -> None:
    """Lay params and optimizer state on the mesh (see :func:`param_shardings`)."""
    if self.mesh is None:
      return
    from jax.sharding import NamedSharding, PartitionSpec

    from rmda_jax import sharding

    shardings = param_shardings(self.mesh, self.params)
    self.params = jax.device_put(self.params, shardings)
    self.opt_state = jax.device_put(self.opt_state, sharding.state_shardings(self.tx, self.params, shardings))
    self.batch_sharding = NamedSharding(self.mesh, PartitionSpec("data"))

  def _resume(self) -> None:
    config, template = self.config, {"params": self.params, "opt_state": self.opt_state}
    step, tree, record, damaged = _restore_newest(
        self.steps, lambda stored: template, lambda fields: _check_same_run(fields, config, config.out),
        prefix="--resume: ")
    self.position.owns_out = True
    self.params, self.opt_state = tree["params"], tree["opt_state"]
    self._place()
    self.epoch_done, self.step, self.epoch_pos = record["epoch"], record["step"], record["epoch_step"]
    self.epoch_losses, self.epoch_skipped = list(record["epoch_losses"]), record["epoch_skipped"]
    self.epoch_seconds = record["epoch_seconds"]
    self.history, self.partial = list(record["history"]), record.get("partial")
    self._mark_checkpoint()
    if damaged:
      moved = []
      for bad, _ in damaged:
        moved.append(_unique(os.path.join(config.out, "checkpoint-damaged", str(bad))))
        self.steps.set_aside(bad, moved[-1])
      self.log(_fallback_note(damaged, step, record, os.path.dirname(moved[0])))
    self._write_log()  # log.json follows the checkpoint (also when it was lost or damaged)
    self.signals.check()
    within = (f" + {self.epoch_pos} of {self.batches_per_epoch} steps of epoch {self.epoch_done + 1}"
              if self.epoch_pos else "")
    self.log(f"resumed from {self.checkpoint_dir} at step {self.step} (epoch {self.epoch_done}{within})")

  def _mark_checkpoint(self) -> None:
    mid = bool(self.epoch_pos)
    self.position.checkpoint = (self.step, self.epoch_done + (1 if mid else 0), mid)
    self.position.epoch, self.position.step = self.epoch_done + (1 if mid else 0), self.step

  def _records(self) -> list:
    return self.history + ([self.partial] if self.partial else [])

  def _write_log(self) -> None:
    _write_json(self.log_path, {"config": dataclasses.asdict(self.config), "epochs": self._records()})

  def _save(self) -> None:
    """Checkpoint the current state, then config.json and log.json (a signal waits until all are written)."""
    tree = {"params": self.params, "opt_state": self.opt_state}
    record = {
        "format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(self.config),
        "epoch": self.epoch_done, "step": self.step, "epoch_step": self.epoch_pos,
        "epoch_losses": self.epoch_losses, "epoch_skipped": self.epoch_skipped,
        "epoch_seconds": self.epoch_seconds, "history": self.history, "partial": self.partial,
    }
    pause = _save_pause()
    self.signals.saving = True
    try:
      if pause:
        print(f"checkpoint save window: step {self.step}", file=sys.stderr, flush=True)
        time.sleep(pause)
        print(f"checkpoint write: step {self.step}", file=sys.stderr, flush=True)
      self.steps.save(self.step, tree, record)
      self._mark_checkpoint()
      if pause:
        time.sleep(pause)
      if not self.config_written:
        _write_json(os.path.join(self.config.out, "config.json"), dataclasses.asdict(self.config))
        self.config_written = True
      self._write_log()
    finally:
      self.signals.saving = False
    self.signals.check()

  def _compile(self):
    model, tx = self.model, self.tx

    def loss_fn(p, x, y):
      logits = model.apply({"params": p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def train_step(p, s, x, y):
      loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
      updates, s = tx.update(grads, s, p)
      # s.notfinite_count: 0 after a step with a finite gradient, else how many in a row were not
      return optax.apply_updates(p, updates), s, loss, s.notfinite_count

    @jax.jit
    def correct(p, x, y):
      # per example: the fraction of its tokens predicted (1 or 0 for classification)
      return jnp.sum(jnp.argmax(model.apply({"params": p}, x), -1) == y) * (y.shape[0] / y.size)

    @jax.jit
    def summed_loss(p, x, y):
      return loss_fn(p, x, y) * x.shape[0]

    return train_step, correct, summed_loss

  def _diverged(self, what: str, step: int, epoch: int) -> Diverged:
    last = self.position.checkpoint
    kept = f"the last checkpoint is step {last[0]}" if last else "no checkpoint was written"
    return Diverged(f"training diverged at step {step} (epoch {epoch}): {what}; nothing of this state was saved "
                    f"({kept}); try a smaller --lr (now {self.config.lr:g})")

  def _check_step(self, step: int, epoch: int, loss, nonfinite_run) -> bool:
    """Whether the step was skipped; Diverged when too many in a row were, or its loss is not finite."""
    run_length = int(nonfinite_run)
    if run_length > self.config.skip_nonfinite:
      raise self._diverged(f"{run_length} step{'s' if run_length > 1 else ''} in a row had a non-finite gradient "
                           f"(more than --skip-nonfinite {self.config.skip_nonfinite})", step, epoch)
    if run_length == 0 and not math.isfinite(float(loss)):
      raise self._diverged("the loss became non-finite", step, epoch)
    return run_length > 0

  def _train(self) -> TrainResult:
    config, dataset = self.config, self.dataset
    train_step, correct, summed_loss = self._compile()
    dual_averaging = config.optimizer in ("rmda", "ramda")
    header = (f"{config.optimizer} on {config.model}/{dataset.name}: {models.num_params(self.params):,} params, "
              f"{len(dataset.x_train)} train / {len(dataset.x_test)} validation examples, "
              f"{self.steps_per_epoch} steps per epoch, regularizer {config.regularizer} ({config.strength:g})")
    self.log(header)
    progress = _progress_factory(config.progress)

    def batched(fn, p, x, y):
      return _batched(fn, p, x, y, config.eval_batch_size, self.signals.check)

    def at_limit():
      return config.max_steps is not None and self.step >= config.max_steps

    if self.epoch_done >= config.epochs or at_limit():
      self.log(f"nothing to do: the run is at step {self.step} (epoch {self.epoch_done}), "
               f"--epochs {config.epochs}" + (f", --max-steps {config.max_steps}" if config.max_steps else ""))
    for epoch in range(self.epoch_done + 1, config.epochs + 1):
      if at_limit():
        break
      batches = datasets.batches(dataset.x_train, dataset.y_train, config.batch_size,
                                 np.random.default_rng([config.seed, epoch]))
      if self.epoch_pos:  # resuming inside this epoch: the same order, without the steps already done
        batches = itertools.islice(batches, self.epoch_pos, None)
      else:
        self.epoch_losses, self.epoch_skipped, self.epoch_seconds = [], 0, 0.0
      self.position.epoch = epoch
      started = time.perf_counter()
      bar = progress(total=self.batches_per_epoch, initial=self.epoch_pos, desc=f"epoch {epoch}/{config.epochs}")
      pending = []
      for xb, yb in batches:
        if self.mesh is not None:
          xb, yb = _global_batch(self.batch_sharding, xb), _global_batch(self.batch_sharding, yb)
        self.params, self.opt_state, loss, nonfinite_run = train_step(self.params, self.opt_state, xb, yb)
        self.step += 1
        self.epoch_pos += 1
        self.position.step = self.step
        pending.append((self.step, loss, nonfinite_run))
        bar.update(1)
        self.signals.check()
        if len(pending) > 1:  # the previous step's flag: reading it leaves this step running
          previous, previous_loss, previous_run = pending[-2]
          self._check_step(previous, epoch, previous_loss, previous_run)
        if at_limit():
          break
      bar.close()
      self.epoch_seconds += time.perf_counter() - started
      for step, loss, nonfinite_run in pending:
        if self._check_step(step, epoch, loss, nonfinite_run):
          self.epoch_skipped += 1
        else:
          self.epoch_losses.append(float(loss))
      complete = self.epoch_pos == self.batches_per_epoch
      if not bool(_all_finite(self.params)):
        raise self._diverged("the params became non-finite", self.step, epoch)
      if complete and not self.epoch_losses:
        raise self._diverged("every step of the epoch had a non-finite gradient", self.step, epoch)
      params = self.params
      record = {
          "epoch": epoch, "step": self.step, "seconds": self.epoch_seconds,
          "train_loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
          "train_accuracy": batched(correct, params, dataset.x_train, dataset.y_train),
          "val_loss": batched(summed_loss, params, dataset.x_test, dataset.y_test),
          "val_accuracy": batched(correct, params, dataset.x_test, dataset.y_test),
          "skipped_steps": self.epoch_skipped,
          **structure_metrics(params, self.regularizer, self.rigl_groups),
      }
      if self.regularizer is not None and not isinstance(self.regularizer, discrete.DiscreteSet):
        # (an indicator's value is +inf off the set: on_set_fraction reports feasibility instead)
        record["objective"] = record["train_loss"] + float(self.regularizer.value(params))
      if dual_averaging:
        z = structured_params(self.opt_state)
        z_structure = structure_metrics(z, self.regularizer)
        record["structured_group_sparsity"] = z_structure["group_sparsity"]
        record["structured_weighted_group_sparsity"] = z_structure["weighted_group_sparsity"]
        if config.model == "transformer":
          record["structured_val_perplexity"] = float(np.exp(batched(summed_loss, z, dataset.x_test, dataset.y_test)))
        record["structured_val_accuracy"] = batched(correct, z, dataset.x_test, dataset.y_test)
      if config.model == "transformer":
        record.update(language_metrics(record, z if dual_averaging else params, self.lm_groups, self.unigram))
      if complete:
        self.history.append(record)
        self.partial, self.epoch_done, self.epoch_pos = None, epoch, 0
        self.epoch_losses, self.epoch_skipped, self.epoch_seconds = [], 0, 0.0
      else:
        record["partial"] = True
        self.partial = record
      self.log(_epoch_line(record, self.batches_per_epoch))
      if not complete or epoch == config.epochs or epoch % config.checkpoint_every == 0:
        self._save()
      else:
        self._write_log()
        self.signals.check()
    records = self._records()
    self.signals.check()
    if config.plots and records:
      from rmda_jax import plots

      plots.curves(records, os.path.join(config.out, "curves.png"), title=header.split(":")[0])
      plots.surviving_groups(self.params, self.regularizer, dataset.input_shape,
                             os.path.join(config.out, "groups.png"))
      if config.model == "transformer":
        plots.kept_heatmap(records, "heads_kept", os.path.join(config.out, "heads.png"),
                           title="attention heads kept (structured point)")
    self.log(_summary(records, config))
    return TrainResult(config, records, self.params, self.opt_state, self.regularizer, config.out)


def _unique(path: str) -> str:
  candidate, n = path, 1
  while os.path.lexists(candidate):
    n += 1
    candidate = f"{path}-{n}"
  return candidate


def _epoch_line(r: dict, batches_per_epoch: Optional[int] = None) -> str:
  line = (f"epoch {r['epoch']:4d}  loss {r['train_loss']:.4f}  train acc {r['train_accuracy']:.4f}  "
          f"val acc {r['val_accuracy']:.4f}  sparsity {r['unstructured_sparsity']:.3f}  "
          f"group {r['group_sparsity']:.3f}  weighted group {r['weighted_group_sparsity']:.3f}")
  if r.get("skipped_steps"):
    line += f"  skipped {r['skipped_steps']} non-finite"
  if "low_rank_level" in r:
    line += f"  low rank {r['low_rank_level']:.3f}"
  if "on_set_fraction" in r:
    line += f"  on set {r['on_set_fraction']:.3f}"
  if "structured_group_sparsity" in r:
    line += f"  | z: group {r['structured_group_sparsity']:.3f} val acc {r['structured_val_accuracy']:.4f}"
  if "val_perplexity" in r:
    heads = ",".join(f"{v:.2f}" for v in r["heads_kept"].values())
    units = ",".join(f"{v:.2f}" for v in r["units_kept"].values())
    line += f"  | val ppl {r['val_perplexity']:.2f}  heads kept {heads}  units kept {units}"
  if r.get("partial"):
    line += " (partial epoch" + (f", {r['step'] % batches_per_epoch} of {batches_per_epoch} steps)"
                                 if batches_per_epoch else ")")
  return line


def _summary(history: list, config: TrainConfig) -> str:
  if not history:
    return "no epoch ran"
  last = history[-1]
  best = max(history, key=lambda r: r["val_accuracy"])
  rows = [("final validation accuracy", f"{last['val_accuracy']:.4f}"),
          ("best validation accuracy", f"{best['val_accuracy']:.4f} (epoch {best['epoch']})"),
          ("unstructured sparsity", f"{last['unstructured_sparsity']:.4f}"),
          ("group sparsity", f"{last['group_sparsity']:.4f}"),
          ("weighted group sparsity", f"{last['weighted_group_sparsity']:.4f}"),
          ("weight sparsity (kernels)", f"{last['weight_sparsity']:.4f}")]
  if "on_set_fraction" in last:
    rows.append(("weights on the discrete set", f"{last['on_set_fraction']:.4f}"))
  if "low_rank_level" in last:
    rows.append(("low-rank level", f"{last['low_rank_level']:.4f}"))
  rows.append(("epochs / steps", f"{last['epoch']}{' (partial)' if last.get('partial') else ''} / {last['step']}"))
  skipped = sum(r.get("skipped_steps", 0) for r in history)
  if skipped:
    rows.append(("skipped steps (non-finite)", f"{skipped}"))
  rows.append(("outputs", config.out))
  width = max(len(k) for k, _ in rows)
  lines = ["", "summary", "-" * (width + 30)] + [f"{k.ljust(width)}  {v}" for k, v in rows]
  return "\n".join(lines)


class _NoBar:
  def update(self, n):
    pass

  def close(self):
    pass


def _progress_factory(enabled: bool):
  if not enabled:
    return lambda **kw: _NoBar()
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return lambda **kw: _NoBar()
  return lambda **kw: tqdm(leave=False, **kw)


def main(argv=None) -> int:
  from rmda_jax import cli

  return cli.main(["train", *(argv if argv is not None else sys.argv[1:])], process=argv is None)


if __name__ == "__main__":
  raise SystemExit(main())
