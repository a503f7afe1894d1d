"""Builders: the model, the regularizer, the optimizer and the device mesh of a run.

Each maps a :class:`~rmda_jax.app.config.TrainConfig` to the library's
objects: a model of :mod:`rmda_jax.app.models`, a regularizer (group-LASSO
on per-leaf rules or on the coupled groups discovered from the model's
computation), an optimizer with the stage-wise schedule, and the
``data`` / ``model`` mesh with its param shardings.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import numpy as np
import optax

from rmda_jax import prox as regs
from rmda_jax import prox as solvers
from rmda_jax.app import data as datasets
from rmda_jax.app import models
from rmda_jax.app.config import (
  DENSE,
  DISCRETE_VALUES,
  MESH_AXES,
  ConfigError,
  TrainConfig,
  parse_mesh,
)
from rmda_jax.core.groups import Groups
from rmda_jax.optim import Stagewise, prox_adamw, prox_sgd, prox_ssi, ramda, rigl, rmda
from rmda_jax.prox import discrete
from rmda_jax.structure import discovery


def build_model(config: TrainConfig, dataset: datasets.Dataset) -> nn.Module:
  """The model of ``--model``, sized for ``dataset`` (ConfigError when lenet5 cannot take it)."""
  shape = dataset.input_shape
  if config.model == "lenet5" and (len(shape) != 3 or shape[0] < 16 or shape[1] < 16):
    raise ConfigError(
      "lenet5 needs images of at least 16x16 (28x28 as in the papers); "
      f"{dataset.name} has {shape}. "
      "Use --dataset mnist_subset, mnist or fashion_mnist."
    )
  n = dataset.num_classes
  if config.model == "transformer":
    return models.TransformerLM(
      vocab=n,
      context=config.context,
      dim=config.width,
      heads=config.heads,
      mlp=config.mlp,
      layers=config.layers,
      positions=config.positions,
      tied=config.tied,
    )
  if config.model == "mlp":
    return models.MLP(hidden=tuple(config.hidden), num_classes=n)
  if config.model == "lenet5":
    return models.LeNet5(num_classes=n)
  if config.model == "vgg":
    return models.VGG(num_classes=n)
  return models.LogisticRegression(num_classes=n)


def build_mesh(spec: str | None, batch_size: int) -> jax.sharding.Mesh | None:
  """The device mesh of a run, None on a single device.

  The mesh is ``spec`` (``data=N[,model=M]``), or every device on ``data``.
  With several processes it spans the devices of all (``jax.devices()``) and
  must use every one; the hosts are laid along ``data``, so that a ``model``
  axis that fits in one host keeps its traffic inside the host
  (``mesh_utils.create_hybrid_device_mesh``, one granule per process).
  """
  devices = jax.devices()
  processes = jax.process_count()
  sizes = parse_mesh(spec) if spec is not None else {"data": len(devices), "model": 1}
  count = sizes["data"] * sizes["model"]
  if count > len(devices):
    where = f"the {processes} processes have" if processes > 1 else "this process has"
    raise ConfigError(f"--mesh {spec} needs {count} devices, {where} {len(devices)}")
  if processes > 1 and count != len(devices):
    raise ConfigError(
      f"--mesh {spec} uses {count} of the {len(devices)} devices of the {processes} processes; "
      f"a multi-process run needs a mesh over all of them (data x model = {len(devices)})"
    )
  if spec is None and count == 1:
    return None
  if batch_size % sizes["data"]:
    raise ConfigError(
      f"--batch-size {batch_size} must be a multiple of the mesh's data axis ({sizes['data']})"
    )
  auto = (
    jax.sharding.AxisType.Auto,
  ) * 2  # XLA propagates the shardings (no explicit-sharding types)
  shape = (sizes["data"], sizes["model"])
  if processes > 1 and sizes["data"] % processes == 0:
    from jax.experimental import mesh_utils

    grid = mesh_utils.create_hybrid_device_mesh(
      (sizes["data"] // processes, sizes["model"]),
      (processes, 1),
      devices,
      process_is_granule=True,
    )
    return jax.sharding.Mesh(grid, MESH_AXES, axis_types=auto)
  if processes > 1:  # the model axis spans hosts: processes in order, each one's devices together
    ordered = sorted(devices, key=lambda d: (d.process_index, d.id))
    return jax.sharding.Mesh(np.array(ordered).reshape(shape), MESH_AXES, axis_types=auto)
  return jax.make_mesh(shape, MESH_AXES, devices=devices[:count], axis_types=auto)


def param_shardings(mesh: jax.sharding.Mesh, params: optax.Params) -> Any:
  """The sharding of each leaf of ``params`` (a tree of ``NamedSharding``).

  Replicated over ``data``; over ``model`` (fully sharded, FSDP-style) each
  leaf's largest axis that the ``model`` size divides, else replicated.
  """
  from jax.sharding import NamedSharding, PartitionSpec

  model = mesh.shape["model"]

  def rule(x):
    shape = np.shape(x)
    axes = [
      a
      for a in sorted(range(len(shape)), key=lambda a: -shape[a])
      if model > 1 and shape[a] % model == 0
    ]
    spec: list[str | None] = [None] * len(shape)
    if axes:
      spec[axes[0]] = "model"
    return NamedSharding(mesh, PartitionSpec(*spec))

  return jax.tree_util.tree_map(rule, params)


def process_rows(batch_sharding: jax.sharding.Sharding, rows: int) -> slice:
  """The rows of a global batch of ``rows`` that this process's devices hold.

  A contiguous block when the hosts lie along ``data`` (:func:`build_mesh`);
  ValueError otherwise.
  """
  held = set()
  for index in batch_sharding.addressable_devices_indices_map((rows,)).values():
    held.update(range(rows)[index[0]] if index else range(rows))
  block = range(min(held), max(held) + 1)
  if len(block) != len(held):
    raise ValueError(f"this process's rows of the batch are not contiguous: {sorted(held)}")
  return slice(block.start, block.stop)


def global_batch(batch_sharding: jax.sharding.Sharding, batch: np.ndarray) -> jax.Array:
  """The global ``batch`` as one array sharded over ``data``.

  Every process draws the same global batch (the same seeded order) and
  feeds only the rows its devices hold (one process: the whole batch).
  """
  if jax.process_count() == 1:
    return jax.device_put(batch, batch_sharding)
  mine = batch[process_rows(batch_sharding, len(batch))]
  return jax.make_array_from_process_local_data(batch_sharding, mine, batch.shape)


def discovered(config: TrainConfig) -> bool:
  """Whether group-LASSO uses the coupled groups found from the model's computation."""
  if config.groups == "auto":
    return config.model == "transformer"
  return config.groups == "discovered"


def build_regularizer(
  config: TrainConfig,
  model: nn.Module | None = None,
  params: optax.Params | None = None,
  example: jax.typing.ArrayLike | None = None,
) -> regs.Regularizer | None:
  """The regularizer of a run (None for ``--regularizer none`` and the dense methods).

  Group-LASSO on discovered groups (whole heads and hidden units) needs the
  model, its params and an example input.
  """
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


def rigl_groups(
  config: TrainConfig, model: nn.Module, params: optax.Params, example: jax.typing.ArrayLike
) -> Groups | None:
  """The coupled groups of structured RigL (``--optimizer rigl --groups discovered``) or None."""
  if config.optimizer == "rigl" and discovered(config):
    return discovery.discover_linen(model, params, example)
  return None


def build_optimizer(
  config: TrainConfig,
  regularizer: regs.Regularizer | None,
  steps_per_epoch: int,
  groups: Groups | None = None,
) -> optax.GradientTransformation:
  """The optimizer of a run.

  ``groups`` (:func:`rigl_groups`) makes RigL's masks keep whole groups.
  """
  assert config.milestones is not None  # set by TrainConfig.__post_init__
  stages = Stagewise.from_epochs(tuple(config.milestones), steps_per_epoch, gamma=config.gamma)
  lr, c = config.lr, config.momentum_value
  solver: str | solvers.ProximalGradient = "auto"
  if regularizer is not None and not regularizer.has_exact_diag_prox:
    solver = solvers.ProximalGradient(max_iters=config.solver_max_iters, tol=config.solver_tol)
  # DEFAULT_MOMENTUM gives rmda, ramda and prox_sgd their c: momentum_value is never None there
  if config.optimizer == "rmda":
    assert c is not None
    return rmda(lr, momentum=c, regularizer=regularizer, stages=stages)
  if config.optimizer == "ramda":
    assert c is not None
    return ramda(lr, momentum=c, regularizer=regularizer, stages=stages, solver=solver)
  schedule = stages.learning_rate(lr)
  if config.optimizer == "prox_sgd":
    assert c is not None
    return prox_sgd(schedule, momentum=c, regularizer=regularizer)
  if config.optimizer == "prox_adamw":
    return prox_adamw(schedule, regularizer=regularizer, solver=solver)
  if config.optimizer == "prox_ssi":
    return prox_ssi(schedule, regularizer=regularizer, solver=solver)
  if config.optimizer == "adamw":
    return optax.adamw(schedule)
  if config.optimizer == "rigl":
    # RigL's protocol: mask updates until 75% of training
    assert config.epochs is not None  # set by TrainConfig.__post_init__
    end_step = max(int(0.75 * config.epochs * steps_per_epoch), 1)
    if config.rigl_update_every >= end_step:
      raise ConfigError(
        f"--rigl-update-every {config.rigl_update_every} leaves RigL no mask update: they stop "
        f"at 75% of training (step {end_step} of {config.epochs} epochs x {steps_per_epoch} "
        f"steps); use --rigl-update-every below {end_step}, or more --epochs"
      )
    return rigl(
      optax.sgd(schedule, momentum=c or None),
      config.sparsity,
      end_step=end_step,
      update_every=config.rigl_update_every,
      groups=groups,
    )
  return optax.sgd(schedule, momentum=c or None)


def model_groups(
  regularizer: regs.Regularizer | None,
  model: nn.Module,
  params: optax.Params,
  example: jax.typing.ArrayLike,
) -> Groups:
  """The coupled groups a language model's structure is reported on.

  The regularizer's groups, or (other regularizers, dense methods) groups
  discovered once from the model.
  """
  if isinstance(regularizer, regs.GroupLasso) and regularizer.groups is not None:
    return regularizer.groups
  return discovery.discover_linen(model, params, example)


def training_optimizer(
  config: TrainConfig,
  regularizer: regs.Regularizer | None,
  steps_per_epoch: int,
  groups: Groups | None = None,
) -> optax.GradientTransformation:
  """:func:`build_optimizer`, skipping steps whose gradient is not finite (state untouched)."""
  return optax.apply_if_finite(
    build_optimizer(config, regularizer, steps_per_epoch, groups),
    max_consecutive_errors=config.skip_nonfinite,
  )
