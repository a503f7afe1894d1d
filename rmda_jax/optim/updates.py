r"""From the new point to optax updates: the papers' momentum average, or the point itself.

.. math::

   x_k = (1 - c_k)\, x_{k-1} + c_k z_k,\qquad \text{updates} = x_k - x_{k-1},

in float32, returned in the params' dtypes so that ``optax.apply_updates``
lands on ``x_k`` (exactly on every zero of ``z_k`` when ``c_k = 1``).

Example:
  >>> import jax.numpy as jnp, optax
  >>> from rmda_jax.optim import to_updates
  >>> tx = to_updates()
  >>> params = {"w": jnp.array([0.3, 2.0])}
  >>> updates, _ = tx.update({"w": jnp.array([0.0, 1.0])}, tx.init(params), params)
  >>> optax.apply_updates(params, updates)["w"].tolist()
  [0.0, 1.0]
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from rmda_jax.core import checks, trees
from rmda_jax.optim import chain
from rmda_jax.optim.schedules import Stagewise, check_stages, value_at


def _average(params, z, c):
  """``(1 - c) x + c z`` in float32 (exactly ``z`` when ``c == 1``)."""
  return jax.tree_util.tree_map(lambda x, zz: (1 - c) * x.astype(zz.dtype) + c * zz, params, z)


def momentum_average(
  momentum: optax.ScalarOrSchedule = 0.1, stages: Stagewise | None = None
) -> optax.GradientTransformationExtraArgs:
  r"""The papers' momentum: move the params towards the new point ``z``.

  .. math::

     x_k = (1 - c_k)\, x_{k-1} + c_k z_k,\qquad \text{updates} = x_k - x_{k-1},

  computed in float32 and returned in the params' dtypes, so that
  ``optax.apply_updates`` lands on ``x_k`` (exactly on ``z_k`` when
  ``c_k = 1``). Under a :class:`~rmda_jax.optim.schedules.Stagewise` with a
  momentum ramp, ``c_k`` ramps to 1 after the last milestone.

  Args:
    momentum: ``c`` in (0, 1], the weight of the new point (1 = no
      averaging). A number, a scalar array or a schedule.
    stages: optional :class:`~rmda_jax.optim.schedules.Stagewise` (the ramp).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping ``z`` to updates;
    its state is a :class:`CountState`; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.optim.momentum_average(0.25)
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> updates["w"].tolist()
    [0.25, 0.25]
  """
  checks.check_momentum(momentum)
  check_stages(stages)

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    params = chain.require_params(params, "momentum_average")
    c = value_at(momentum, state.steps, checks.MOMENTUM)
    if stages is not None:
      c = stages.momentum(c, state.steps)
    new = trees.updates_to(_average(params, updates, c), params)
    return new, chain.CountState(chain.next_count(state.steps))

  return optax.GradientTransformationExtraArgs(
    lambda params: chain.CountState(chain.zero_count()), update_fn
  )


def to_updates() -> optax.GradientTransformationExtraArgs:
  """Replace the params by the new point: ``updates = z - params`` in the params' dtypes.

  Stateless; ``update`` needs ``params``. ``optax.apply_updates`` then lands
  exactly on every zero of ``z``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = rmda_jax.optim.to_updates()
    >>> params = {"w": jnp.array([0.3, 2.0])}
    >>> updates, _ = tx.update({"w": jnp.array([0.0, 1.0])}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"].tolist()
    [0.0, 1.0]
  """

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    params = chain.require_params(params, "to_updates")
    return trees.updates_to(updates, params), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
