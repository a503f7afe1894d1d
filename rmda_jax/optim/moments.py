r"""Gradient moments for the proximal baselines: ProxSGD's dampened momentum and Adam's moments.

.. math::

   m_t = (1 - c) m_{t-1} + c g_t \quad\text{(ProxSGD)},\qquad
   m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t,\ v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2
   \quad\text{(ProxGen, ProxSSI)},

kept in float32 whatever the params' dtype.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.optim import dampened_momentum
  >>> tx = dampened_momentum(0.5)
  >>> m, state = tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.zeros(1)}))
  >>> m, state = tx.update({"w": jnp.ones(1)}, state)
  >>> m["w"].tolist()   # 0.5 * 0.5 + 0.5
  [0.75]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, trees
from rmda_jax.optim import chain
from rmda_jax.optim.schedules import value_at


class AdamMoments(NamedTuple):
  """Adam's moments after this step (output of :func:`adam_moments`).

  Attributes:
    count: int32, the step count of this update (before it is applied); the
      bias corrections use ``t = count + 1``.
    mu: first-moment EMA ``m_t``.
    nu: second-moment EMA ``v_t``.
  """

  count: jax.Array
  mu: optax.Params
  nu: optax.Params


class DampenedMomentumState(NamedTuple):
  """State of :func:`dampened_momentum`.

  Attributes:
    count: int32, updates applied so far.
    momentum: the dampened gradient average ``m`` (float32).
  """

  count: jax.Array
  momentum: optax.Params


def dampened_momentum(
  momentum: optax.ScalarOrSchedule = 0.1,
) -> optax.GradientTransformationExtraArgs:
  r"""ProxSGD's dampened momentum ``m_t = (1 - c) m_{t-1} + c g_t`` (``m_0 = 0``).

  Args:
    momentum: ``c`` in (0, 1]; 1 passes the gradient through. A number, a
      scalar array or a schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping gradients to ``m_t``
    (float32 at least); its state is a :class:`DampenedMomentumState`.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.optim.dampened_momentum(0.5)
    >>> m, state = tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.zeros(1)}))
    >>> m["w"].tolist()
    [0.5]
  """
  checks.check_momentum(momentum)

  def init_fn(params: optax.Params) -> Any:
    return DampenedMomentumState(chain.zero_count(), trees.zeros_float32(params))

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del params, extra_args
    c = value_at(momentum, state.count, checks.MOMENTUM)
    m = jax.tree_util.tree_map(
      lambda m, g: (1 - c) * m + c * g.astype(m.dtype), state.momentum, updates
    )
    return m, DampenedMomentumState(chain.next_count(state.count), m)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adam_moments(
  b1: jax.typing.ArrayLike = 0.9, b2: jax.typing.ArrayLike = 0.999
) -> optax.GradientTransformationExtraArgs:
  r"""Adam's moments, kept in float32, passed on without bias correction.

  .. math::

     m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t,\qquad
     v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 .

  The moments are those of ``optax.scale_by_adam`` (its state type,
  ``optax.ScaleByAdamState``, is reused), but the blocks after this one apply
  the bias corrections where their methods do (ProxGen and ProxSSI differ), so
  the output is the raw :class:`AdamMoments` rather than Adam's direction.

  Args:
    b1: the first-moment decay rate in [0, 1), a number or a scalar array.
    b2: the second-moment decay rate in [0, 1), a number or a scalar array.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping gradients to
    :class:`AdamMoments`; its state is an ``optax.ScaleByAdamState``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.optim.adam_moments(b1=0.5, b2=0.75)
    >>> out, state = tx.update({"w": jnp.full(1, 2.0)}, tx.init({"w": jnp.zeros(1)}))
    >>> out.mu["w"].tolist(), out.nu["w"].tolist(), int(state.count)
    ([1.0], [1.0], 1)
  """
  checks.check_in_range(b1, "b1", 0.0, 1.0)
  checks.check_in_range(b2, "b2", 0.0, 1.0)

  def init_fn(params: optax.Params) -> Any:
    return optax.ScaleByAdamState(
      chain.zero_count(), trees.zeros_float32(params), trees.zeros_float32(params)
    )

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del params, extra_args
    mu = jax.tree_util.tree_map(
      lambda m, g: b1 * m + (1 - b1) * g.astype(m.dtype), state.mu, updates
    )
    nu = jax.tree_util.tree_map(
      lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(v.dtype)), state.nu, updates
    )
    return AdamMoments(state.count, mu, nu), optax.ScaleByAdamState(
      chain.next_count(state.count), mu, nu
    )

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
