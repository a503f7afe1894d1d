r"""The dual-averaging accumulators of RMDA and RAMDA, with stage-wise restarts.

Per step, with ``k`` the step inside the current stage:

.. math::

   s_k = \eta_k \sqrt{k},\quad \alpha_k = \sum_{i\le k} s_i,\quad
   V_k = \sum_{i\le k} s_i g_i,\quad U_k = \sum_{i\le k} s_i g_i^2 .

:func:`accumulate_dual_averaging` keeps ``V_k`` (and ``U_k`` for RAMDA's
metric); :func:`dual_averaging_center` keeps RMDA's prox center
``y_k = x0 - V_k / sqrt(k)`` in its place. Both pass a :class:`DualAverage`
to the metric block after them (:mod:`rmda_jax.optim.preconditioners`).

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.optim import accumulate_dual_averaging
  >>> tx = accumulate_dual_averaging(0.5)
  >>> params = {"w": jnp.zeros(2)}
  >>> state = tx.init(params)
  >>> for _ in range(2):
  ...   out, state = tx.update({"w": jnp.ones(2)}, state, params)
  >>> out.grad_sum["w"].tolist()   # 0.5 (1 + sqrt(2))
  [1.2071068286895752, 1.2071068286895752]

References:
  Huang & Lee, "Training Structured Neural Networks Through Manifold
  Identification and Variance Reduction", ICLR 2022. arXiv:2112.02612
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, trees
from rmda_jax.optim import chain
from rmda_jax.optim.schedules import Stagewise, check_stages, decay, value_at


class DualAverage(NamedTuple):
  """The dual-averaging sums after this step (output of :func:`accumulate_dual_averaging`).

  Attributes:
    count: int32, the global step count of this update (before it is applied).
    stage_count: int32, ``k >= 1``, this update's index inside the stage.
    alpha: ``alpha_k = sum_{i<=k} s_i`` with ``s_i = eta_i sqrt(i)``.
    anchor: ``x0``, the params at the start of the stage.
    grad_sum: ``V_k = sum_{i<=k} s_i g_i``.
    sq_grad_sum: ``U_k = sum_{i<=k} s_i g_i^2``, or ``optax.EmptyState()``
      when not accumulated.
    grads: this step's gradient ``g_k``, or None when not passed on.
    center: ``y_k = x0 - V_k / sqrt(k)``, RMDA's prox center, when the
      accumulator keeps it instead of ``V_k`` (:func:`dual_averaging_center`;
      ``grad_sum`` is then None); None otherwise.
  """

  count: jax.Array
  stage_count: jax.Array
  alpha: jax.Array
  anchor: optax.Params
  grad_sum: optax.Params | None
  sq_grad_sum: optax.Params
  grads: optax.Params | None
  center: optax.Params | None = None


class DualAveragingSumsState(NamedTuple):
  """State of :func:`accumulate_dual_averaging`.

  Attributes:
    count: int32, updates applied so far (drives schedules and milestones).
    stage_count: int32, ``k``, updates inside the current stage.
    alpha: float32, ``alpha_k``.
    anchor: ``x0``, the params at the start of the stage (float32).
    grad_sum: ``V_k`` (float32).
    sq_grad_sum: ``U_k`` (float32), or ``optax.EmptyState()``.
  """

  count: jax.Array
  stage_count: jax.Array
  alpha: jax.Array
  anchor: optax.Params
  grad_sum: optax.Params
  sq_grad_sum: optax.Params

  @property
  def center(self) -> optax.Params:
    """RMDA's prox center ``y_k = x0 - V_k / sqrt(k)`` (the anchor before the first step)."""
    inv_sqrt_k = 1 / jnp.sqrt(jnp.maximum(self.stage_count, 1).astype(jnp.float32))
    return jax.tree_util.tree_map(lambda x0, v: x0 - v * inv_sqrt_k, self.anchor, self.grad_sum)


class DualAveragingCenterState(NamedTuple):
  """State of :func:`dual_averaging_center`: the sums' state with ``y_k`` in place of ``V_k``.

  Attributes:
    count, stage_count, alpha, anchor: as in :class:`DualAveragingSumsState`.
    center: ``y_k = x0 - V_k / sqrt(k)``, the prox center (float32; the
      anchor before the first step of a stage).
  """

  count: jax.Array
  stage_count: jax.Array
  alpha: jax.Array
  anchor: optax.Params
  center: optax.Params

  @property
  def grad_sum(self) -> optax.Params:
    """``V_k = sqrt(k) (x0 - y_k)``, derived (to the rounding of ``x0 - y_k``)."""
    sqrt_k = jnp.sqrt(self.stage_count.astype(jnp.float32))
    return jax.tree_util.tree_map(lambda x0, y: sqrt_k * (x0 - y), self.anchor, self.center)

  @property
  def sq_grad_sum(self) -> optax.EmptyState:
    """Not accumulated (RMDA's metric does not need it)."""
    return optax.EmptyState()


def _new_stage_state(state_type, params, **accumulators):
  """A dual-averaging state at the start: counters 0, the params as the anchor."""
  return state_type(
    count=chain.zero_count(),
    stage_count=chain.zero_count(),
    alpha=jnp.zeros((), jnp.float32),
    anchor=trees.fresh_copy(params, accumulator=True),
    **accumulators,
  )


def _restart(state, params, **accumulators):
  """The state at a restart: ``k`` and ``alpha`` 0, the current params as the anchor."""
  return state._replace(
    stage_count=jnp.zeros_like(state.stage_count),
    alpha=jnp.zeros_like(state.alpha),
    anchor=trees.to_float32(params),
    **accumulators,
  )


def _begin_step(learning_rate, stages, reset, updates, state, params, name):
  """Checks, the restart at a milestone; returns ``(state, eta_k, k)`` for this step."""
  chain.check_update_args(updates, state.anchor, params, name)
  if stages is not None and bool(stages.milestones) and stages.restart:
    state = jax.lax.cond(
      stages.is_restart(state.count), lambda s: reset(s, params), lambda s: s, state
    )
  lr = value_at(learning_rate, state.count, checks.LEARNING_RATE) * decay(stages, state.count)
  return state, lr, state.stage_count + 1


def accumulate_dual_averaging(
  learning_rate: optax.ScalarOrSchedule,
  stages: Stagewise | None = None,
  sq_grads: bool = False,
  grads: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""The dual-averaging accumulator with stage-wise restarts.

  Per step, with ``k`` the step inside the current stage:

  .. math::

     s_k = \eta_k \sqrt{k},\quad \alpha_k = \sum_{i\le k} s_i,\quad
     V_k = \sum_{i\le k} s_i g_i,\quad U_k = \sum_{i\le k} s_i g_i^2 .

  At a milestone of ``stages`` (when it restarts) the anchor becomes the
  current params, ``x0 <- x``, and ``k``, ``alpha``, ``V``, ``U`` go to 0
  before the step; the learning rate is multiplied by ``stages.decay``.
  Accumulators are float32 at least, whatever the params' dtype.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.
    stages: optional :class:`~rmda_jax.optim.schedules.Stagewise` (restarts and
      learning-rate drops).
    sq_grads: also accumulate ``U_k`` (RAMDA's
      :func:`~rmda_jax.optim.preconditioners.cube_root_metric`
      needs it).
    grads: pass this step's gradient on in :attr:`DualAverage.grads` (for
      a metric that keeps its own statistics, e.g.
      :func:`~rmda_jax.optim.preconditioners.adam_metric`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping the gradients to a
    :class:`DualAverage`; its state is a :class:`DualAveragingSumsState`;
    ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.optim.accumulate_dual_averaging(0.5)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   out, state = tx.update({"w": jnp.ones(2)}, state, params)
    >>> round(float(out.alpha), 5), int(out.stage_count)   # 0.5 (1 + sqrt(2))
    (1.20711, 2)
  """
  checks.check_learning_rate(learning_rate)
  check_stages(stages)

  def init_fn(params: optax.Params) -> Any:
    return _new_stage_state(
      DualAveragingSumsState,
      params,
      grad_sum=trees.zeros_float32(params),
      sq_grad_sum=trees.zeros_float32(params) if sq_grads else optax.EmptyState(),
    )

  def reset(state: Any, params: optax.Params) -> Any:
    zeros = trees.zeros_float32(params)
    return _restart(
      state, params, grad_sum=zeros, sq_grad_sum=zeros if sq_grads else state.sq_grad_sum
    )

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    state, lr, k = _begin_step(
      learning_rate, stages, reset, updates, state, params, "accumulate_dual_averaging"
    )
    s = lr * jnp.sqrt(k.astype(jnp.float32))
    grad_sum = jax.tree_util.tree_map(
      lambda v, g: v + s * g.astype(v.dtype), state.grad_sum, updates
    )
    sq_grad_sum = state.sq_grad_sum
    if sq_grads:
      sq_grad_sum = jax.tree_util.tree_map(
        lambda u, g: u + s * jnp.square(g.astype(u.dtype)), sq_grad_sum, updates
      )
    alpha = state.alpha + s
    out = DualAverage(
      state.count, k, alpha, state.anchor, grad_sum, sq_grad_sum, updates if grads else None
    )
    new_state = DualAveragingSumsState(
      chain.next_count(state.count), k, alpha, state.anchor, grad_sum, sq_grad_sum
    )
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dual_averaging_center(
  learning_rate: optax.ScalarOrSchedule,
  stages: Stagewise | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""RMDA's accumulator kept as its prox center ``y_k = x0 - V_k / sqrt(k)``.

  The sums of :func:`accumulate_dual_averaging` without ``U_k``, with ``V_k``
  replaced in the state by the point RMDA's prox is taken at:

  .. math::

     s_k = \eta_k \sqrt{k},\quad \alpha_k = \alpha_{k-1} + s_k,\quad
     y_k = y_{k-1} + w_k (x_0 - y_{k-1}) - \eta_k g_k \;=\; x_0 - V_k/\sqrt{k},\quad
     w_k = 1 - \sqrt{(k-1)/k} = \frac{1/k}{1 + \sqrt{(k-1)/k}}.

  ``w_k`` is computed in the second form, which does not cancel, and the
  step is added to ``y`` as one increment: one rounding at the scale of
  ``y`` per step, the error of any float32 accumulator of the params (about
  ``ulp(y) sqrt(k)`` at most). Float32 sums ``V_k`` round at the scale of
  ``x0 - y`` instead, so they are closer where the center stays near the
  anchor, and as close where it moves away.

  Same numbers as ``accumulate_dual_averaging`` then ``sqrt_k_metric`` (to
  float32 rounding), but the center is updated in its own buffer: the prox's
  group norms, the new point and the momentum average read it there, where
  a center computed from ``V_k`` must be stored in a temporary or computed
  again by each reader, so the step makes fewer passes over each leaf and
  allocates no temporary of a leaf's size. Restarts of ``stages`` set
  ``x0`` and ``y`` to the current params, and ``k``, ``alpha`` to 0.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.
    stages: optional :class:`~rmda_jax.optim.schedules.Stagewise` (restarts and
      learning-rate drops).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping the gradients to a
    :class:`DualAverage` whose ``center`` is ``y_k`` (and ``grad_sum`` None),
    for :func:`~rmda_jax.optim.preconditioners.sqrt_k_metric`; its state is a
    :class:`DualAveragingCenterState`; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import optim
    >>> tx = optim.dual_averaging_center(0.5)
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   out, state = tx.update({"w": jnp.ones(2)}, state, params)
    >>> [round(y, 6) for y in out.center["w"].tolist()]   # 1 - 0.5 (1 + sqrt(2)) / sqrt(2)
    [0.146447, 0.146447]
  """
  checks.check_learning_rate(learning_rate)
  check_stages(stages)

  def init_fn(params: optax.Params) -> Any:
    return _new_stage_state(
      DualAveragingCenterState, params, center=trees.fresh_copy(params, accumulator=True)
    )

  def reset(state: Any, params: optax.Params) -> Any:
    return _restart(state, params, center=trees.to_float32(params))

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    state, lr, k = _begin_step(
      learning_rate, stages, reset, updates, state, params, "dual_averaging_center"
    )
    k_float = k.astype(jnp.float32)
    sqrt_k = jnp.sqrt(k_float)
    # w_k: 1 at the first step of a stage, where y_0 = x0
    pull = (1 / k_float) / (1 + jnp.sqrt(state.stage_count.astype(jnp.float32)) / sqrt_k)
    center = jax.tree_util.tree_map(
      lambda x0, y, g: y + (pull * (x0 - y) - lr * g.astype(y.dtype)),
      state.anchor,
      state.center,
      updates,
    )
    alpha = state.alpha + lr * sqrt_k
    out = DualAverage(state.count, k, alpha, state.anchor, None, optax.EmptyState(), None, center)
    new_state = DualAveragingCenterState(
      chain.next_count(state.count), k, alpha, state.anchor, center
    )
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
