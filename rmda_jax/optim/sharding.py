"""Sharded params and optimizer state (JAX SPMD: ``jax.jit`` with ``NamedSharding``).

Every optimizer of the library is plain ``jax.numpy`` over the params tree, so
under ``jax.jit`` with sharded inputs XLA partitions it: group norms and the
solvers' stopping tests are global reductions (a group split over devices is
summed across them), the ``while_loop`` conditions are global too, and the
nuclear norm's SVD gathers its (2-D) leaf onto each device that needs it (the
cost of an all-gather of that leaf per step; keep nuclear-norm leaves small or
replicated).

The optimizer state has arrays shaped like the params (accumulators, anchor,
structured point) and scalars (counters). :func:`state_shardings` gives each
params-shaped state leaf its param's sharding and replicates the rest, for
``jax.jit(..., out_shardings=...)``; :func:`init` builds the state directly
with those shardings.

Example:
  >>> import jax, jax.numpy as jnp, rmda_jax
  >>> from jax.sharding import NamedSharding, PartitionSpec as P
  >>> mesh = jax.make_mesh((1,), ("model",))
  >>> params = jax.device_put({"w": jnp.ones((4, 2))}, NamedSharding(mesh, P("model")))
  >>> tx = rmda_jax.rmda(0.1, regularizer=rmda_jax.group_lasso(1e-3))
  >>> state = rmda_jax.optim.sharding.init(tx, params)
  >>> state.center["w"].sharding.spec == P("model")
  True
"""

from __future__ import annotations

from typing import Any

import jax
import optax
from jax.sharding import NamedSharding, PartitionSpec


def _replicated_like(shardings: Any) -> Any:
  for sharding in jax.tree_util.tree_leaves(shardings):
    if isinstance(sharding, NamedSharding):
      return NamedSharding(sharding.mesh, PartitionSpec())
  return jax.tree_util.tree_leaves(shardings)[0]


def state_shardings(
  tx: optax.GradientTransformation, params: optax.Params, param_shardings: Any = None
) -> Any:
  """Shardings of ``tx.init(params)``: params-shaped leaves follow their param.

  Args:
    tx: the optimizer (any optax transformation, chains included).
    params: the params (arrays or ``jax.ShapeDtypeStruct``).
    param_shardings: the params' shardings; default: read from ``params``.
  """
  if param_shardings is None:
    param_shardings = jax.tree_util.tree_map(lambda x: x.sharding, params)
  replicated = _replicated_like(param_shardings)
  abstract = jax.eval_shape(tx.init, params)
  return optax.tree_map_params(
    tx,
    lambda _, sharding: sharding,
    abstract,
    param_shardings,
    transform_non_params=lambda _: replicated,
  )


def init(
  tx: optax.GradientTransformation, params: optax.Params, param_shardings: Any = None
) -> optax.OptState:
  """``tx.init(params)`` with each state leaf placed as :func:`state_shardings` says."""
  shardings = state_shardings(tx, params, param_shardings)
  return jax.jit(tx.init, out_shardings=shardings)(params)
