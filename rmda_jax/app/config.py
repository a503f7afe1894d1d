"""Configuration of a training run: the options, their defaults and checks.

:class:`TrainConfig` holds every option of ``rmda-jax train`` (one field per
flag); ``validate`` raises :class:`ConfigError` naming the flag and the
accepted values. :func:`check_same_run` compares a stored configuration with
a resumed one.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from collections.abc import Sequence
from typing import Any

from rmda_jax.app import checkpoint as ckpt
from rmda_jax.app import data as datasets

MODELS = ("mlp", "lenet5", "vgg", "logreg", "transformer")


OPTIMIZERS = ("rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi", "sgd", "rigl", "adamw")


DENSE = ("sgd", "rigl", "adamw")  # no regularizer


GROUPINGS = ("auto", "per-leaf", "discovered")


POSITIONS = ("learned", "rotary")


REGULARIZERS = ("group_lasso", "l1", "nuclear", "elastic_net", "binary", "ternary", "none")


DEFAULT_LR = {
  "rmda": 0.1,
  "ramda": 1e-2,
  "prox_sgd": 0.1,
  "prox_adamw": 1e-3,
  "prox_ssi": 1e-3,
  "sgd": 0.1,
  "adamw": 1e-3,
  "rigl": 0.1,
}


DEFAULT_MOMENTUM = {"rmda": 0.1, "ramda": 0.1, "prox_sgd": 0.1, "sgd": 0.9, "rigl": 0.9}


HEAVY_BALL = ("sgd", "rigl")  # optax.sgd's beta, not the papers' c


# the weights allowed by --regularizer binary/ternary, times 1/sqrt(fan_in) per layer
DISCRETE_VALUES = {"binary": (-1.0, 1.0), "ternary": (-1.0, 0.0, 1.0)}


# what a resumed run may change; every other field must equal the stored run's
EPOCHS, MILESTONES = 100, (50, 75)
LM_EPOCHS, LM_MILESTONES = 10, (5, 8)
RESUMABLE_CHANGES = (
  "epochs",
  "max_steps",
  "resume",
  "overwrite",
  "progress",
  "plots",
  "checkpoint_every",
  "out",
  "data_dir",
  "download",
  "skip_nonfinite",
  "allow_data_change",
)


class ConfigError(ValueError):
  """An option has a value the training command cannot use."""


@dataclasses.dataclass
class TrainConfig:
  """Everything a run depends on (saved as ``OUT/config.json``).

  ``learning_rate`` / ``momentum`` None take the method's default (the
  papers' settings: RMDA 0.1 with c = 0.1, RAMDA 1e-2, ProxSGD 0.1,
  ProxAdamW / ProxSSI 1e-3, dense SGD 0.1 with heavy-ball 0.9). Milestones
  are epochs; at each the learning rate drops by ``gamma`` (RMDA/RAMDA also
  restart, and ramp their momentum to 1 after the last one).

  ``resume`` continues the run in ``out``; ``overwrite`` deletes it first
  (without either, an existing run in ``out`` is an error). A resume on data
  whose fingerprint differs from the run's is refused unless
  ``allow_data_change``. Up to ``skip_nonfinite`` consecutive steps with a
  non-finite gradient are skipped.
  """

  model: str = "mlp"
  dataset: str = "digits"
  optimizer: str = "rmda"
  regularizer: str = "group_lasso"
  strength: float = 2e-3
  learning_rate: float | None = None
  momentum: float | None = None
  epochs: int | None = None  # None: 100 (10 for the transformer)
  batch_size: int = 64
  milestones: Sequence[int] | None = None  # None: (50, 75) ((5, 8) for the transformer)
  gamma: float = 0.1
  seed: int = 0
  out: str = "runs/default"
  resume: bool = False
  max_steps: int | None = None
  hidden: Sequence[int] = (128, 128)
  data_dir: str | None = None
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
  context: int = 64
  layers: int = 2
  width: int = 64
  heads: int = 4
  mlp: int | None = None
  positions: str = "learned"
  tied: bool = True
  groups: str = "auto"
  mesh: str | None = None
  allow_data_change: bool = False

  def __post_init__(self) -> None:
    # a language model's epoch is many steps: its defaults train in a few minutes on a CPU
    language_model = self.model == "transformer"
    if self.epochs is None:
      self.epochs = LM_EPOCHS if language_model else EPOCHS
    if self.milestones is None:
      self.milestones = LM_MILESTONES if language_model else MILESTONES
    self.milestones = tuple(self.milestones)

  def validate(self) -> None:
    """Raise :class:`ConfigError` naming the first option whose value cannot be used."""

    def check(ok: bool, message: str) -> None:
      if not ok:
        raise ConfigError(message)

    # the optional dependencies the run will need: one line naming the extra, before any work
    needed = [("orbax.checkpoint", "checkpoints")] + (
      [("matplotlib", "plots (or --no-plots)")] if self.plots else []
    )
    for module, purpose in needed:
      if importlib.util.find_spec(module.split(".")[0]) is None:
        raise ConfigError(
          f"{purpose} need {module.split('.')[0].replace('_', '-')}: "
          'pip install "rmda-jax[examples]"'
        )

    check(self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
    check(
      self.optimizer in OPTIMIZERS,
      f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
    )
    check(
      self.regularizer in REGULARIZERS,
      f"--regularizer must be one of {', '.join(REGULARIZERS)}, got {self.regularizer!r}",
    )
    check(
      self.dataset in datasets.NAMES or datasets.is_text(self.dataset),
      f"--dataset must be one of {', '.join(datasets.NAMES)} or text:PATH, got {self.dataset!r}",
    )
    text = datasets.is_text(self.dataset)
    check(
      text == (self.model == "transformer"),
      "--model transformer trains on text (--dataset pydoc or text:PATH)"
      if text or self.model == "transformer"
      else "",
    )
    check(
      self.context >= 1 and self.layers >= 1 and self.width >= 1 and self.heads >= 1,
      f"--context, --layers, --width and --heads must be >= 1, got {self.context}, {self.layers}, "
      f"{self.width}, {self.heads}",
    )
    check(
      self.width % self.heads == 0,
      f"--width ({self.width}) must be a multiple of --heads ({self.heads})",
    )
    check(self.mlp is None or self.mlp >= 1, f"--mlp must be >= 1, got {self.mlp}")
    check(
      self.positions in POSITIONS,
      f"--positions must be one of {', '.join(POSITIONS)}, got {self.positions!r}",
    )
    check(
      self.groups in GROUPINGS,
      f"--groups must be one of {', '.join(GROUPINGS)}, got {self.groups!r}",
    )
    if self.mesh is not None:
      parse_mesh(self.mesh)
    check(
      math.isfinite(self.strength) and self.strength >= 0,
      f"--strength must be >= 0, got {self.strength}",
    )
    check(
      self.learning_rate is None or (math.isfinite(self.learning_rate) and self.learning_rate > 0),
      f"--lr must be > 0, got {self.learning_rate}",
    )
    if self.momentum is not None:
      if self.optimizer in HEAVY_BALL:
        check(
          0 <= self.momentum < 1,
          f"--momentum for {self.optimizer} is the heavy-ball beta in [0, 1), got {self.momentum}",
        )
      else:
        check(
          0 < self.momentum <= 1,
          f"--momentum must be in (0, 1] (1 = no momentum), got {self.momentum}",
        )
      check(
        self.optimizer not in ("prox_adamw", "prox_ssi", "adamw"),
        f"--momentum does not apply to {self.optimizer} (it uses Adam's b1)",
      )
    assert self.epochs is not None and self.milestones is not None  # set by __post_init__
    check(self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}")
    check(self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}")
    check(0 < self.gamma <= 1, f"--gamma must be in (0, 1], got {self.gamma}")
    check(
      all(m >= 1 for m in self.milestones)
      and list(self.milestones) == sorted(set(self.milestones)),
      f"--milestones must be increasing epochs >= 1, got {list(self.milestones)}",
    )
    check(
      self.max_steps is None or self.max_steps >= 1,
      f"--max-steps must be >= 1, got {self.max_steps}",
    )
    check(
      self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}"
    )
    check(
      self.solver_max_iters >= 1, f"--solver-max-iters must be >= 1, got {self.solver_max_iters}"
    )
    check(self.solver_tol > 0, f"--solver-tol must be > 0, got {self.solver_tol}")
    check(
      all(h >= 1 for h in self.hidden), f"--hidden widths must be >= 1, got {list(self.hidden)}"
    )
    check(0 <= self.sparsity < 1, f"--sparsity must be in [0, 1), got {self.sparsity}")
    check(
      self.rigl_update_every >= 1, f"--rigl-update-every must be >= 1, got {self.rigl_update_every}"
    )
    check(self.skip_nonfinite >= 0, f"--skip-nonfinite must be >= 0, got {self.skip_nonfinite}")
    check(
      not (self.resume and self.overwrite),
      "--resume and --overwrite exclude each other (continue the run in --out, or replace it)",
    )

  @property
  def lr(self) -> float:
    """The learning rate: ``learning_rate``, or the optimizer's default."""
    return DEFAULT_LR[self.optimizer] if self.learning_rate is None else self.learning_rate

  @property
  def momentum_value(self) -> float | None:
    """The momentum: ``momentum``, or the optimizer's default (None: the method has none)."""
    if self.momentum is not None:
      return self.momentum
    return DEFAULT_MOMENTUM.get(self.optimizer)


MESH_AXES = ("data", "model")


def parse_mesh(spec: str) -> dict[str, int]:
  """``"data=N[,model=M]"`` -> ``{"data": N, "model": M}`` (else ConfigError naming --mesh)."""
  sizes = {"data": 1, "model": 1}
  for part in spec.replace(" ", "").split(","):
    name, _, value = part.partition("=")
    if name not in MESH_AXES or not value.isdigit() or int(value) < 1:
      raise ConfigError(
        f"--mesh must look like data=N or data=N,model=M with N, M >= 1, got {spec!r}"
      )
    sizes[name] = int(value)
  return sizes


def config_from_fields(fields: dict[str, Any]) -> TrainConfig:
  """The configuration stored as ``fields`` (JSON lists become tuples; unknown keys are ignored)."""
  known = {f.name for f in dataclasses.fields(TrainConfig)}
  values: dict[str, Any] = {
    k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known
  }
  return TrainConfig(**values)


def _flag(field: str) -> str:
  return {"learning_rate": "--lr"}.get(field, "--" + field.replace("_", "-"))


def _shown(value: Any) -> str:
  if isinstance(value, (list, tuple)):
    return ",".join(str(v) for v in value) if value else "none"
  return (
    "the default" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
  )


# what may differ between the processes of one multi-process run: paths as each host mounts them
PER_PROCESS = ("out", "data_dir", "progress")


def check_processes_agree(settings: list[dict[str, Any]]) -> None:
  """Refuse a multi-process run whose processes were given different settings.

  ``settings`` holds each process's ``dataclasses.asdict(config)``, in
  process order; only :data:`PER_PROCESS` may differ. The ConfigError names
  the first process that differs from process 0 and each differing flag.
  """
  first = settings[0]
  for index, fields in enumerate(settings[1:], start=1):
    changed = [
      f"{_flag(name)} {_shown(fields.get(name))} (process 0: {_shown(value)})"
      for name, value in first.items()
      if name not in PER_PROCESS and fields.get(name) != value
    ]
    if changed:
      raise ConfigError(
        f"process {index} was started with other settings than process 0: {', '.join(changed)}; "
        "start every process of a run with the same command"
      )


def check_same_run(stored: dict[str, Any], config: TrainConfig, out: str) -> None:
  """Refuse to resume with settings that change the numbers.

  The ConfigError names each changed flag with its stored and new value.
  """
  try:
    old = config_from_fields(stored)
  except TypeError:
    raise ckpt.CheckpointError("its stored configuration is not readable") from None
  resolved = {
    "learning_rate": (old.lr, config.lr),
    "momentum": (old.momentum_value, config.momentum_value),
  }
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
    raise ConfigError(
      f"--resume: this command changes settings of the run in {out}: {', '.join(changed)}; "
      "resume with the run's values, or train into another --out (or replace the run with "
      "--overwrite)"
    )
