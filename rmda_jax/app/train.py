"""The main job: train a Flax model with any optimizer of the library, report structure.

Programmatic use::

    from rmda_jax.app import train
    result = train.run(train.TrainConfig(model="mlp", dataset="digits", epochs=20))

Command line: ``rmda-jax train --help`` (or ``python -m rmda_jax train --help``).

Per epoch it logs loss, train/validation accuracy and the structure metrics
(of the model's params, and for RMDA/RAMDA of the structured point ``z``) to
``OUT/log.json`` and draws ``OUT/curves.png`` (accuracy and sparsity vs epoch)
and ``OUT/groups.png`` (which groups survived); checkpoints, resuming,
signals and non-finite steps are described in :mod:`rmda_jax.app.loop`.

This module is the job's public face; the work is split by responsibility:
:mod:`~rmda_jax.app.config` (options and checks), :mod:`~rmda_jax.app.builders`
(model, regularizer, optimizer, mesh), :mod:`~rmda_jax.app.loop` (the loop),
:mod:`~rmda_jax.app.reporting` (metrics and printing) and
:mod:`~rmda_jax.app.runs` (run directories and checkpoints).
"""

from __future__ import annotations

from rmda_jax.app import data as datasets
from rmda_jax.app.builders import (
  build_mesh,
  build_model,
  build_optimizer,
  build_regularizer,
  training_optimizer,
)
from rmda_jax.app.config import (
  DEFAULT_LR,
  DEFAULT_MOMENTUM,
  EPOCHS,
  GROUPINGS,
  LM_EPOCHS,
  LM_MILESTONES,
  MILESTONES,
  MODELS,
  OPTIMIZERS,
  POSITIONS,
  REGULARIZERS,
  ConfigError,
  TrainConfig,
)
from rmda_jax.app.loop import Diverged, Interrupted, RunFault, TrainResult, run
from rmda_jax.app.reporting import structure_metrics
from rmda_jax.app.rundir import RunDirError
from rmda_jax.app.runs import KEEP_CHECKPOINTS, SAVE_PAUSE_ENV, existing_run, load_run
from rmda_jax.app.signals import DEFAULT_STOP_TIMEOUT

__all__ = [
  "ConfigError",
  "DEFAULT_LR",
  "DEFAULT_MOMENTUM",
  "DEFAULT_STOP_TIMEOUT",
  "Diverged",
  "EPOCHS",
  "LM_EPOCHS",
  "LM_MILESTONES",
  "MILESTONES",
  "GROUPINGS",
  "Interrupted",
  "KEEP_CHECKPOINTS",
  "MODELS",
  "OPTIMIZERS",
  "POSITIONS",
  "REGULARIZERS",
  "RunDirError",
  "RunFault",
  "SAVE_PAUSE_ENV",
  "TrainConfig",
  "TrainResult",
  "build_mesh",
  "build_model",
  "build_optimizer",
  "build_regularizer",
  "datasets",
  "existing_run",
  "load_run",
  "run",
  "structure_metrics",
  "training_optimizer",
]
