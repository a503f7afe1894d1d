"""rmda_jax: training structured neural networks with RMDA and RAMDA in JAX/Optax.

Regularized dual averaging with momentum (RMDA) and its adaptive version
(RAMDA) identify the optimal structure (zero channels, zero entries, low rank)
of a regularized training problem after finitely many steps. This package
provides them as Optax transformations, together with pytree-aware
regularizers, the diagonally preconditioned subproblem solvers, the proximal
baselines, stage-wise schedules and structure metrics; coupled groups
discovered from a model's computation, and compaction of the trained model.

The package is layered, each subpackage importing only those below it:

* :mod:`rmda_jax.compaction`: a trained model made smaller with the same outputs;
* :mod:`rmda_jax.structure`: coupled groups discovered from the computation, metrics;
* :mod:`rmda_jax.optim`: the optimizers and the optax building blocks they are chained from;
* :mod:`rmda_jax.prox`: regularizers and the proximal subproblem solvers;
* :mod:`rmda_jax.core`: numerics, argument checks, trees, and what a group is;
* :mod:`rmda_jax.cpu`: compiler options, host memory and timing for a CPU.

The application built on the library -- the ``rmda-jax`` command line, its
configuration, model zoo, datasets, training loop, plots and checkpoints --
is the subpackage :mod:`rmda_jax.app`, which the library never imports. This
module re-exports the public surface; everything else is reachable from its
subpackage.

Example:
  >>> import jax, jax.numpy as jnp, rmda_jax
  >>> reg = rmda_jax.group_lasso(strength=1e-3)
  >>> tx = rmda_jax.rmda(learning_rate=0.1, momentum=0.1, regularizer=reg)
  >>> params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  >>> state = tx.init(params)
  >>> updates, state = tx.update(jax.tree_util.tree_map(jnp.ones_like, params), state, params)
  >>> float(rmda_jax.metrics.group_sparsity(rmda_jax.structured_params(state), reg))
  0.0
"""

from rmda_jax import compaction, core, cpu, optim, prox, structure, testing
from rmda_jax.compaction import compact, compact_function, compact_linen, compact_nnx
from rmda_jax.core import Family, GroupRule, Groups, Slice, by_path, layer_axes_of, per_layer
from rmda_jax.optim import (
  DualAveragingState,
  ProxAdamState,
  ProxSGDState,
  RigLState,
  Stagewise,
  prox_adamw,
  prox_sgd,
  prox_ssi,
  ramda,
  rigl,
  rmda,
  stagewise,
  structured_params,
)
from rmda_jax.prox import (
  LeafRegularizer,
  Regularizer,
  discrete_penalty,
  discrete_set,
  elastic_net,
  group_lasso,
  l1,
  nuclear_norm,
)
from rmda_jax.structure import discover_groups, discover_linen, discover_nnx, metrics

__version__ = "0.1.0"

__all__ = [
  # optimizers and their states
  "rmda",
  "ramda",
  "prox_sgd",
  "prox_adamw",
  "prox_ssi",
  "rigl",
  "DualAveragingState",
  "ProxSGDState",
  "ProxAdamState",
  "RigLState",
  "structured_params",
  # schedules
  "Stagewise",
  "stagewise",
  # regularizers
  "Regularizer",
  "LeafRegularizer",
  "group_lasso",
  "l1",
  "elastic_net",
  "nuclear_norm",
  "discrete_set",
  "discrete_penalty",
  # groups
  "Groups",
  "Family",
  "Slice",
  "GroupRule",
  "by_path",
  "per_layer",
  "layer_axes_of",
  "discover_groups",
  "discover_linen",
  "discover_nnx",
  # compaction
  "compact",
  "compact_function",
  "compact_linen",
  "compact_nnx",
  # metrics and the subpackages
  "metrics",
  "compaction",
  "core",
  "cpu",
  "optim",
  "prox",
  "structure",
  "testing",
]
