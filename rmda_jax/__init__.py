"""rmda_jax: training structured neural networks with RMDA and RAMDA in JAX/Optax.

Regularized dual averaging with momentum (RMDA) and its adaptive version
(RAMDA) identify the optimal structure (zero channels, zero entries, low rank)
of a regularized training problem after finitely many steps. This package
provides them as Optax transformations, together with pytree-aware
regularizers, the diagonally preconditioned subproblem solvers, the proximal
baselines, stage-wise schedules and structure metrics; coupled groups
discovered from a model's computation, and compaction of the trained model.

The application built on the library -- the ``rmda-jax`` command line, its
configuration, model zoo, datasets, training loop, plots and checkpoints --
is the subpackage :mod:`rmda_jax.app`, which the library never imports.

Example:
  >>> import jax.numpy as jnp, optax, rmda_jax
  >>> reg = rmda_jax.group_lasso(strength=1e-3)
  >>> tx = rmda_jax.rmda(learning_rate=0.1, momentum=0.1, regularizer=reg)
  >>> params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  >>> state = tx.init(params)
"""

from rmda_jax import blocks
from rmda_jax import compaction
from rmda_jax import compile_options
from rmda_jax import cpu_memory
from rmda_jax import discovery
from rmda_jax import discrete
from rmda_jax import groups
from rmda_jax import metrics
from rmda_jax import regularizers
from rmda_jax import schedules
from rmda_jax import sharding
from rmda_jax import testing
from rmda_jax import timing
from rmda_jax import solvers
from rmda_jax import structure
from rmda_jax import pruning
from rmda_jax import rebuild
from rmda_jax import reduction
from rmda_jax.compile_options import cpu_compiler_options
from rmda_jax.cpu_memory import keep_freed_memory
from rmda_jax.discovery import discover_groups
from rmda_jax.discovery import discover_linen
from rmda_jax.discovery import discover_nnx
from rmda_jax.discrete import discrete_penalty
from rmda_jax.discrete import discrete_set
from rmda_jax.dual_averaging import DualAveragingState
from rmda_jax.dual_averaging import RAMDAState
from rmda_jax.dual_averaging import RMDAState
from rmda_jax.dual_averaging import ramda
from rmda_jax.dual_averaging import rmda
from rmda_jax.dual_averaging import structured_params
from rmda_jax.pruning import RigLState
from rmda_jax.pruning import rigl
from rmda_jax.proximal import ProxAdamState
from rmda_jax.proximal import ProxSGDState
from rmda_jax.proximal import prox_adamw
from rmda_jax.proximal import prox_sgd
from rmda_jax.proximal import prox_ssi
from rmda_jax.regularizers import Regularizer
from rmda_jax.regularizers import elastic_net
from rmda_jax.regularizers import group_lasso
from rmda_jax.regularizers import l1
from rmda_jax.regularizers import nuclear_norm
from rmda_jax.schedules import Stagewise
from rmda_jax.schedules import stagewise
from rmda_jax.structure import Family
from rmda_jax.structure import Groups
from rmda_jax.structure import Slice

__version__ = "0.1.0"

__all__ = [
    "blocks", "compaction", "compile_options", "cpu_memory", "discovery", "discrete", "groups", "metrics",
    "regularizers", "schedules", "pruning", "rebuild", "reduction", "sharding", "solvers", "structure", "testing",
    "timing",
    "cpu_compiler_options", "keep_freed_memory",
    "discover_groups", "discover_linen", "discover_nnx", "Groups", "Family", "Slice",
    "Regularizer", "l1", "elastic_net", "group_lasso", "nuclear_norm",
    "discrete_set", "discrete_penalty", "rigl", "RigLState",
    "rmda", "ramda", "DualAveragingState", "RMDAState", "RAMDAState", "structured_params",
    "prox_sgd", "prox_adamw", "prox_ssi", "ProxSGDState", "ProxAdamState",
    "Stagewise", "stagewise",
]
