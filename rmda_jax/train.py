"""The main job: train a Flax model with any optimizer of the library, report structure.

Programmatic use::

    from rmda_jax import train
    result = train.run(train.TrainConfig(model="mlp", dataset="digits", epochs=20))

Command line: ``rmda-jax train --help`` (or ``python -m rmda_jax.train``).

Per epoch it logs loss, train/validation accuracy and the structure metrics
(of the model's params, and for RMDA/RAMDA of the structured point ``z``) to
``OUT/log.json``; it keeps an orbax checkpoint of params and optimizer state in
``OUT/checkpoint`` (``resume=True`` continues from it) and draws
``OUT/curves.png`` (accuracy and sparsity vs epoch) and ``OUT/groups.png``
(which groups survived).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmda_jax import checkpoint as ckpt
from rmda_jax import data as datasets
from rmda_jax import discrete
from rmda_jax import metrics
from rmda_jax import models
from rmda_jax import regularizers as regs
from rmda_jax import solvers
from rmda_jax.dual_averaging import ramda, rmda, structured_params
from rmda_jax.proximal import prox_adamw, prox_sgd, prox_ssi
from rmda_jax.pruning import rigl
from rmda_jax.schedules import Stagewise

MODELS = ("mlp", "lenet5", "vgg", "logreg")
OPTIMIZERS = ("rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi", "sgd", "rigl")
REGULARIZERS = ("group_lasso", "l1", "nuclear", "elastic_net", "binary", "ternary", "none")
DEFAULT_LR = {"rmda": 0.1, "ramda": 1e-2, "prox_sgd": 0.1, "prox_adamw": 1e-3, "prox_ssi": 1e-3, "sgd": 0.1,
              "rigl": 0.1}
DEFAULT_MOMENTUM = {"rmda": 0.1, "ramda": 0.1, "prox_sgd": 0.1, "sgd": 0.9, "rigl": 0.9}
HEAVY_BALL = ("sgd", "rigl")  # optax.sgd's beta, not the papers' c
# the weights allowed by --regularizer binary/ternary, times 1/sqrt(fan_in) per layer
DISCRETE_VALUES = {"binary": (-1.0, 1.0), "ternary": (-1.0, 0.0, 1.0)}


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

  def validate(self) -> None:
    def check(ok, message):
      if not ok:
        raise ConfigError(message)

    check(self.model in MODELS, f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
    check(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
    check(self.regularizer in REGULARIZERS,
          f"--regularizer must be one of {', '.join(REGULARIZERS)}, got {self.regularizer!r}")
    check(self.dataset in datasets.NAMES, f"--dataset must be one of {', '.join(datasets.NAMES)}, got {self.dataset!r}")
    check(math.isfinite(self.strength) and self.strength >= 0, f"--strength must be >= 0, got {self.strength}")
    check(self.learning_rate is None or (math.isfinite(self.learning_rate) and self.learning_rate > 0),
          f"--lr must be > 0, got {self.learning_rate}")
    if self.momentum is not None:
      if self.optimizer in HEAVY_BALL:
        check(0 <= self.momentum < 1,
              f"--momentum for {self.optimizer} is the heavy-ball beta in [0, 1), got {self.momentum}")
      else:
        check(0 < self.momentum <= 1, f"--momentum must be in (0, 1] (1 = no momentum), got {self.momentum}")
      check(self.optimizer not in ("prox_adamw", "prox_ssi"),
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
  if config.model == "mlp":
    return models.MLP(hidden=tuple(config.hidden), num_classes=n)
  if config.model == "lenet5":
    return models.LeNet5(num_classes=n)
  if config.model == "vgg":
    return models.VGG(num_classes=n)
  return models.LogisticRegression(num_classes=n)


def build_regularizer(config: TrainConfig) -> Optional[regs.Regularizer]:
  if config.regularizer == "none" or config.optimizer in HEAVY_BALL:
    return None
  if config.regularizer in DISCRETE_VALUES:
    return discrete.discrete_set(DISCRETE_VALUES[config.regularizer], scale="fan_in")
  return {
      "group_lasso": regs.group_lasso,
      "l1": regs.l1,
      "nuclear": regs.nuclear_norm,
      "elastic_net": regs.elastic_net,
  }[config.regularizer](config.strength)


def build_optimizer(config: TrainConfig, regularizer, steps_per_epoch: int):
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
  if config.optimizer == "rigl":
    # RigL's protocol: mask updates until 75% of training
    end_step = max(int(0.75 * config.epochs * steps_per_epoch), 1)
    return rigl(optax.sgd(schedule, momentum=c or None), config.sparsity, end_step=end_step,
                update_every=config.rigl_update_every)
  return optax.sgd(schedule, momentum=c or None)


def _batched(fn, params, x, y, batch):
  total = 0.0
  for start in range(0, len(x), batch):
    total += float(fn(params, x[start:start + batch], y[start:start + batch]))
  return total / len(x)


def structure_metrics(params, regularizer) -> dict:
  counted = regularizer if isinstance(regularizer, (regs.GroupLasso, regs.ElasticNet, regs.NuclearNorm)) \
      else regs.group_lasso(0.0)
  out = {k: float(v) for k, v in metrics.summary(params, counted).items()}
  # zeros among the weights the default rules penalize (kernels): what RigL and L1 control
  out["weight_sparsity"] = float(metrics.weighted_group_sparsity(params, regs.l1(0.0)))
  if isinstance(regularizer, regs.NuclearNorm):
    out["low_rank_level"] = float(metrics.low_rank_level(params, regularizer))
  if isinstance(regularizer, discrete.DiscreteSet):
    out["on_set_fraction"] = float(discrete.on_set_fraction(params, regularizer))
  return out


@dataclasses.dataclass
class TrainResult:
  config: TrainConfig
  history: list
  params: Any
  opt_state: Any
  regularizer: Any
  out: str


def _checkpoint_tree(params, opt_state, epoch, step):
  return {"params": params, "opt_state": opt_state,
          "epoch": jnp.asarray(epoch, jnp.int32), "step": jnp.asarray(step, jnp.int32)}


def load_run(run_dir: str):
  """A finished (or interrupted) run: ``(config, dataset, model, params, opt_state)``.

  ``run_dir`` is a run's output directory (with ``config.json`` and
  ``checkpoint/``) or its ``checkpoint`` directory.
  """
  run_dir = os.path.abspath(run_dir)
  if os.path.basename(run_dir.rstrip(os.sep)) == "checkpoint":
    run_dir = os.path.dirname(run_dir)
  config_path, checkpoint_dir = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "checkpoint")
  if not (os.path.isfile(config_path) and os.path.isdir(checkpoint_dir)):
    raise ConfigError(f"{run_dir} is not a training run: it needs config.json and checkpoint/ "
                      "(written by rmda-jax train --out DIR)")
  with open(config_path) as f:
    fields = json.load(f)
  known = {f.name for f in dataclasses.fields(TrainConfig)}
  config = TrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known})
  config.validate()
  dataset = datasets.load(config.dataset, config.data_dir, download=False)
  model = build_model(config, dataset)
  tx = build_optimizer(config, build_regularizer(config),
                       datasets.steps_per_epoch(len(dataset.x_train), config.batch_size))
  params = model.init(jax.random.PRNGKey(config.seed), dataset.x_train[:1])["params"]
  restored = ckpt.restore(checkpoint_dir, _checkpoint_tree(params, tx.init(params), 0, 0))
  return config, dataset, model, restored["params"], restored["opt_state"]


def run(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
  """Train as configured; see the module doc for what is written to ``config.out``."""
  config.validate()
  dataset = datasets.load(config.dataset, config.data_dir, config.download)
  model = build_model(config, dataset)
  regularizer = build_regularizer(config)
  steps_per_epoch = datasets.steps_per_epoch(len(dataset.x_train), config.batch_size)
  tx = build_optimizer(config, regularizer, steps_per_epoch)
  params = model.init(jax.random.PRNGKey(config.seed), dataset.x_train[:1])["params"]
  opt_state = tx.init(params)
  os.makedirs(config.out, exist_ok=True)
  checkpoint_dir = os.path.join(config.out, "checkpoint")
  log_path = os.path.join(config.out, "log.json")

  history, start_epoch, step = [], 0, 0
  if config.resume:
    if not os.path.isdir(checkpoint_dir):
      raise ConfigError(f"--resume: no checkpoint in {checkpoint_dir}")
    restored = ckpt.restore(checkpoint_dir, _checkpoint_tree(params, opt_state, 0, 0))
    params, opt_state = restored["params"], restored["opt_state"]
    start_epoch, step = int(restored["epoch"]), int(restored["step"])
    if os.path.exists(log_path):
      with open(log_path) as f:
        history = [h for h in json.load(f)["epochs"] if h["epoch"] <= start_epoch]
    log(f"resumed from {checkpoint_dir} at epoch {start_epoch} (step {step})")
  with open(os.path.join(config.out, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)

  def loss_fn(p, x, y):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def train_step(p, s, x, y):
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  @jax.jit
  def correct(p, x, y):
    return jnp.sum(jnp.argmax(model.apply({"params": p}, x), -1) == y)

  @jax.jit
  def summed_loss(p, x, y):
    return loss_fn(p, x, y) * x.shape[0]

  dual_averaging = config.optimizer in ("rmda", "ramda")
  header = (f"{config.optimizer} on {config.model}/{dataset.name}: {models.num_params(params):,} params, "
            f"{len(dataset.x_train)} train / {len(dataset.x_test)} validation examples, "
            f"{steps_per_epoch} steps per epoch, regularizer {config.regularizer} ({config.strength:g})")
  log(header)
  progress = _progress_factory(config.progress)
  epoch = start_epoch
  stopped = False
  for epoch in range(start_epoch + 1, config.epochs + 1):
    rng = np.random.default_rng([config.seed, epoch])
    started = time.perf_counter()
    losses = []
    bar = progress(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}")
    for xb, yb in datasets.batches(dataset.x_train, dataset.y_train, config.batch_size, rng):
      params, opt_state, loss = train_step(params, opt_state, xb, yb)
      losses.append(loss)
      step += 1
      bar.update(1)
      if config.max_steps is not None and step >= config.max_steps:
        stopped = True
        break
    bar.close()
    record = {
        "epoch": epoch, "step": step, "seconds": time.perf_counter() - started,
        "train_loss": float(np.mean([float(l) for l in losses])) if losses else float("nan"),
        "train_accuracy": _batched(correct, params, dataset.x_train, dataset.y_train, config.eval_batch_size),
        "val_loss": _batched(summed_loss, params, dataset.x_test, dataset.y_test, config.eval_batch_size),
        "val_accuracy": _batched(correct, params, dataset.x_test, dataset.y_test, config.eval_batch_size),
        **structure_metrics(params, regularizer),
    }
    if regularizer is not None and not isinstance(regularizer, discrete.DiscreteSet):
      # (an indicator's value is +inf off the set: on_set_fraction reports feasibility instead)
      record["objective"] = record["train_loss"] + float(regularizer.value(params))
    if dual_averaging:
      z = structured_params(opt_state)
      record["structured_group_sparsity"] = structure_metrics(z, regularizer)["group_sparsity"]
      record["structured_val_accuracy"] = _batched(correct, z, dataset.x_test, dataset.y_test, config.eval_batch_size)
    history.append(record)
    log(_epoch_line(record))
    if stopped or epoch == config.epochs or epoch % config.checkpoint_every == 0:
      ckpt.save(checkpoint_dir, _checkpoint_tree(params, opt_state, epoch, step))
    with open(log_path, "w") as f:
      json.dump({"config": dataclasses.asdict(config), "epochs": history}, f, indent=2)
    if stopped:
      break

  if config.plots:
    from rmda_jax import plots

    plots.curves(history, os.path.join(config.out, "curves.png"), title=header.split(":")[0])
    plots.surviving_groups(params, regularizer, dataset.input_shape, os.path.join(config.out, "groups.png"))
  log(_summary(history, config))
  return TrainResult(config, history, params, opt_state, regularizer, config.out)


def _epoch_line(r: dict) -> str:
  line = (f"epoch {r['epoch']:4d}  loss {r['train_loss']:.4f}  train acc {r['train_accuracy']:.4f}  "
          f"val acc {r['val_accuracy']:.4f}  sparsity {r['unstructured_sparsity']:.3f}  "
          f"group {r['group_sparsity']:.3f}  weighted group {r['weighted_group_sparsity']:.3f}")
  if "low_rank_level" in r:
    line += f"  low rank {r['low_rank_level']:.3f}"
  if "on_set_fraction" in r:
    line += f"  on set {r['on_set_fraction']:.3f}"
  if "structured_group_sparsity" in r:
    line += f"  | z: group {r['structured_group_sparsity']:.3f} val acc {r['structured_val_accuracy']:.4f}"
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
  rows.append(("epochs / steps", f"{last['epoch']} / {last['step']}"))
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

  return cli.main(["train", *(argv if argv is not None else __import__("sys").argv[1:])])


if __name__ == "__main__":
  raise SystemExit(main())
