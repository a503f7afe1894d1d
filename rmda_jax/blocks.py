r"""Optax-shaped building blocks of RMDA, RAMDA and the proximal baselines.

Every optimizer of :mod:`rmda_jax.dual_averaging` and :mod:`rmda_jax.proximal`
is a short ``optax.chain`` of the blocks below, each an
``optax.GradientTransformationExtraArgs`` whose state is a NamedTuple of
arrays (``optax.EmptyState`` when it has none) and whose hyperparameters are
numbers, scalar arrays or schedules of the step count.

Between the blocks of a chain flows either a params-shaped tree (gradients,
a momentum, the new point) or one of the small NamedTuples below, which
carry what the next block needs (all trees in them are float32 at least):

* :class:`DualAverage` -- the dual-averaging sums (from
  :func:`accumulate_dual_averaging`), or RMDA's prox center kept in their
  place (from :func:`dual_averaging_center`);
* :class:`Subproblem` -- a proximal subproblem
  ``min_z 1/2 <z, P z> - <b, z> + scale * lambda psi(z)`` (from a metric block:
  :func:`sqrt_k_metric`, :func:`cube_root_metric`, :func:`adam_metric`, or from
  the baselines' :func:`proximal_gradient_subproblem`,
  :func:`proxgen_subproblem`, :func:`prox_ssi_subproblem`);
* :class:`AdamMoments` -- Adam's moments (from :func:`adam_moments`).

The chain ends with the step that solves the subproblem
(:func:`proximal_step`) and a block that turns the new point into updates
(:func:`momentum_average` for the dual-averaging methods, :func:`to_updates`
for the baselines). So

* ``rmda  = dual_averaging_center     -> sqrt_k_metric    -> proximal_step -> momentum_average``
* ``ramda = accumulate_dual_averaging -> cube_root_metric -> proximal_step -> momentum_average``
* ``prox_sgd   = dampened_momentum -> proximal_gradient_subproblem -> proximal_step -> to_updates``
* ``prox_adamw = adam_moments -> proxgen_subproblem  -> proximal_step -> to_updates``
* ``prox_ssi   = adam_moments -> prox_ssi_subproblem -> proximal_step -> to_updates``

and a new variant is a new chain. Blocks that need the params
(:func:`accumulate_dual_averaging`, :func:`proximal_step` with ``keep_point``,
:func:`momentum_average`, ...) must be called with them:
``tx.update(grads, state, params)``.

Example: dual averaging whose metric is Adam's second moment,
``P_k = sqrt(k) (sqrt(v_k / (1 - beta_2^k)) + eps)``, instead of RAMDA's
cube root of the weighted sum of squared gradients:

  >>> import jax, jax.numpy as jnp, optax, rmda_jax
  >>> from rmda_jax import blocks
  >>> reg = rmda_jax.group_lasso(1.0)
  >>> tx = optax.chain(
  ...     blocks.accumulate_dual_averaging(0.1, grads=True),
  ...     blocks.adam_metric(b2=0.999),
  ...     blocks.proximal_step(reg),
  ...     blocks.momentum_average(1.0))
  >>> params = {"w": jnp.array([[1.0, 1.0], [1.0, 1.0]])}
  >>> state = tx.init(params)
  >>> grads = {"w": jnp.array([[0.1, 0.1], [5.0, -5.0]])}
  >>> updates, state = tx.update(grads, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> bool((params["w"][0] == 0).all()), bool((params["w"][1] != 0).all())   # group 0 removed
  (True, True)
  >>> rmda_jax.structured_params(state)["w"].shape
  (2, 2)

References:
  Huang & Lee, "Training Structured Neural Networks Through Manifold
  Identification and Variance Reduction", ICLR 2022. arXiv:2112.02612

  Huang & Lee, "Regularized Adaptive Momentum Dual Averaging with an Efficient
  Inexact Subproblem Solver for Training Structured Neural Networks",
  NeurIPS 2024. arXiv:2403.14398

  Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured
  Neural Networks" (ProxGen), NeurIPS 2021.

  Deleu & Bengio, "Structured Sparsity Inducing Adaptive Optimizers for Deep
  Learning" (ProxSSI), 2021. arXiv:2102.03869
"""

from __future__ import annotations

import dataclasses

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from rmda_jax import _common
from rmda_jax import regularizers as regs
from rmda_jax import solvers
from rmda_jax.schedules import Stagewise

Params = Any


# --------------------------------------------------------------------------- what flows between blocks
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
  anchor: Params
  grad_sum: Optional[Params]
  sq_grad_sum: Params
  grads: Optional[Params]
  center: Optional[Params] = None


class Subproblem(NamedTuple):
  r"""A proximal subproblem for :func:`proximal_step`.

  With a diagonal ``metric`` ``P``: ``min_z 1/2 <z, P z> - <b, z> + scale *
  lambda psi(z)``; with ``metric=None`` (a scalar metric folded into ``b`` and
  ``scale``): ``z = prox_{scale * lambda psi}(b)``.

  Attributes:
    b: the linear term (the prox center when ``metric`` is None).
    metric: ``P >= 0`` shaped like the params, or None.
    scale: scalar multiplying the regularizer's strength.
    init: warm start of an iterative solve; None uses the previous point kept
      by :func:`proximal_step` (``keep_point=True``).
    anchor: the value of the coordinates where ``P == 0`` (unregularized);
      None means 0.
    count: int32, the step count (tolerance schedules of the solver).
    twin: optional, ``b`` computed a second time from the same inputs
      passed through ``jax.lax.optimization_barrier`` (see :func:`twin_of`);
      the closed-form prox reads its group norms from it (``metric=None``),
      except on the leaves of fewer than :data:`TWIN_MIN_ENTRIES` entries of
      a step that keeps its point (see :func:`proximal_step`).
  """

  b: Params
  metric: Optional[Params]
  scale: jax.Array
  init: Optional[Params]
  anchor: Optional[Params]
  count: jax.Array
  twin: Optional[Params] = None


class AdamMoments(NamedTuple):
  """Adam's moments after this step (output of :func:`adam_moments`).

  Attributes:
    count: int32, the step count of this update (before it is applied); the
      bias corrections use ``t = count + 1``.
    mu: first-moment EMA ``m_t``.
    nu: second-moment EMA ``v_t``.
  """

  count: jax.Array
  mu: Params
  nu: Params


#: A step that keeps its point reads the group norms of a leaf with at least
#: this many entries from ``Subproblem.twin``, of a smaller leaf from ``b``
#: itself (see :func:`proximal_step`): 4M float32 entries, 16 MB, so that
#: the prox centers XLA then stores stay under glibc's 32 MB mmap threshold
#: even two at a time.
TWIN_MIN_ENTRIES = 1 << 22


def twin_of(fn, *trees):
  """``fn(*trees)`` on the trees passed through ``jax.lax.optimization_barrier``.

  The result holds the same values as ``fn(*trees)`` but XLA cannot merge
  the two computations, so each is fused into its own consumer. A prox
  whose group norms and scaling both read ``b = fn(*trees)`` would otherwise
  make XLA store ``b`` in a temporary buffer (its norm is a reduction that
  cannot share a fusion with the scaling), and on CPU every temporary is
  freshly allocated and page-faulted at every call: for a 15M-parameter
  ``prox_sgd`` step in place, that was half of its time. With the twin,
  the norms read the trees once more and nothing is stored.

  Example:
    >>> import jax.numpy as jnp
    >>> from rmda_jax import blocks
    >>> blocks.twin_of(lambda x, m: x - 0.5 * m, jnp.ones(2), jnp.ones(2)).tolist()
    [0.5, 0.5]
  """
  return fn(*jax.lax.optimization_barrier(trees))


# --------------------------------------------------------------------------- states
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
  anchor: Params
  grad_sum: Params
  sq_grad_sum: Params

  @property
  def center(self) -> Params:
    """RMDA's prox center ``y_k = x0 - V_k / sqrt(k)`` (the anchor before the first step)."""
    inv_sqrt_k = 1 / jnp.sqrt(jnp.maximum(self.stage_count, 1).astype(jnp.float32))
    return jax.tree_util.tree_map(lambda x0, v: x0 - v * inv_sqrt_k, self.anchor, self.grad_sum)


class DualAveragingCenterState(NamedTuple):
  """State of :func:`dual_averaging_center`: that of :func:`accumulate_dual_averaging` with ``y_k`` for ``V_k``.

  Attributes:
    count, stage_count, alpha, anchor: as in :class:`DualAveragingSumsState`.
    center: ``y_k = x0 - V_k / sqrt(k)``, the prox center (float32; the
      anchor before the first step of a stage).
  """

  count: jax.Array
  stage_count: jax.Array
  alpha: jax.Array
  anchor: Params
  center: Params

  @property
  def grad_sum(self) -> Params:
    """``V_k = sqrt(k) (x0 - y_k)``, derived (to the rounding of ``x0 - y_k``)."""
    sqrt_k = jnp.sqrt(self.stage_count.astype(jnp.float32))
    return jax.tree_util.tree_map(lambda x0, y: sqrt_k * (x0 - y), self.anchor, self.center)

  @property
  def sq_grad_sum(self) -> optax.EmptyState:
    """Not accumulated (RMDA's metric does not need it)."""
    return optax.EmptyState()


class ProximalStepState(NamedTuple):
  """State of :func:`proximal_step`.

  Attributes:
    structured: the last solution ``z`` in the params' dtypes (the exactly
      structured point), or ``optax.EmptyState()`` (``keep_point=False``).
    solver_info: iterations and final residual of the last solve, or
      ``optax.EmptyState()`` (``solver=None``).
  """

  structured: Params
  solver_info: Any


class CountState(NamedTuple):
  """State of the blocks that only need the step count.

  Attributes:
    count: int32, updates applied so far.
  """

  count: jax.Array


class DampenedMomentumState(NamedTuple):
  """State of :func:`dampened_momentum`.

  Attributes:
    count: int32, updates applied so far.
    momentum: the dampened gradient average ``m`` (float32).
  """

  count: jax.Array
  momentum: Params


class AdamMetricState(NamedTuple):
  """State of :func:`adam_metric`.

  Attributes:
    count: int32, updates applied so far.
    nu: second-moment EMA of the gradients (float32).
  """

  count: jax.Array
  nu: Params


def _zero_count() -> jax.Array:
  return jnp.zeros((), jnp.int32)


def _check_stages(stages) -> None:
  if stages is not None and not isinstance(stages, Stagewise):
    raise TypeError(f"stages must be a rmda_jax.Stagewise (see rmda_jax.stagewise) or None, got {type(stages).__name__}.")


def _decay(stages, count) -> jax.Array:
  """``gamma ** stage(count)``, 1 without stages."""
  return jnp.ones((), jnp.float32) if stages is None else stages.decay(count)


def _new_stage_state(state_type, params, **accumulators):
  """A dual-averaging state at the start: counters 0, the params as the anchor."""
  return state_type(count=_zero_count(), stage_count=_zero_count(), alpha=jnp.zeros((), jnp.float32),
                    anchor=_common.fresh_copy(params, accumulator=True), **accumulators)


def _restart(state, params, **accumulators):
  """The state at a restart: ``k`` and ``alpha`` 0, the current params as the anchor."""
  return state._replace(stage_count=jnp.zeros_like(state.stage_count), alpha=jnp.zeros_like(state.alpha),
                        anchor=_common.to_float32(params), **accumulators)


def _begin_step(learning_rate, stages, reset, updates, state, params, name):
  """Checks, the restart at a milestone; returns ``(state, eta_k, k)`` for this step."""
  _common.check_update_args(updates, state.anchor, params, name)
  if stages is not None and bool(stages.milestones) and stages.restart:
    state = jax.lax.cond(stages.is_restart(state.count), lambda s: reset(s, params), lambda s: s, state)
  lr = _common.evaluate(learning_rate, state.count) * _decay(stages, state.count)
  return state, lr, state.stage_count + 1


# --------------------------------------------------------------------------- dual averaging
def accumulate_dual_averaging(
    learning_rate: _common.ScalarOrSchedule,
    stages: Optional[Stagewise] = None,
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
    stages: optional :class:`~rmda_jax.schedules.Stagewise` (restarts and
      learning-rate drops).
    sq_grads: also accumulate ``U_k`` (RAMDA's :func:`cube_root_metric`
      needs it).
    grads: pass this step's gradient on in :attr:`DualAverage.grads` (for
      a metric that keeps its own statistics, e.g. :func:`adam_metric`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping the gradients to a
    :class:`DualAverage`; its state is a :class:`DualAveragingSumsState`;
    ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.blocks.accumulate_dual_averaging(0.5)
    >>> params = {"w": jnp.zeros(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   out, state = tx.update({"w": jnp.ones(2)}, state, params)
    >>> round(float(out.alpha), 5), int(out.stage_count)   # 0.5 (1 + sqrt(2))
    (1.20711, 2)
  """
  _common.check_learning_rate(learning_rate)
  _check_stages(stages)

  def init_fn(params):
    return _new_stage_state(DualAveragingSumsState, params, grad_sum=_common.zeros_float32(params),
                            sq_grad_sum=_common.zeros_float32(params) if sq_grads else optax.EmptyState())

  def reset(state, params):
    zeros = _common.zeros_float32(params)
    return _restart(state, params, grad_sum=zeros, sq_grad_sum=zeros if sq_grads else state.sq_grad_sum)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    state, lr, k = _begin_step(learning_rate, stages, reset, updates, state, params, "accumulate_dual_averaging")
    s = lr * jnp.sqrt(k.astype(jnp.float32))
    grad_sum = jax.tree_util.tree_map(lambda v, g: v + s * g.astype(v.dtype), state.grad_sum, updates)
    sq_grad_sum = state.sq_grad_sum
    if sq_grads:
      sq_grad_sum = jax.tree_util.tree_map(
          lambda u, g: u + s * jnp.square(g.astype(u.dtype)), sq_grad_sum, updates
      )
    alpha = state.alpha + s
    out = DualAverage(state.count, k, alpha, state.anchor, grad_sum, sq_grad_sum, updates if grads else None)
    new_state = DualAveragingSumsState(
        optax.safe_int32_increment(state.count), k, alpha, state.anchor, grad_sum, sq_grad_sum
    )
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def dual_averaging_center(
    learning_rate: _common.ScalarOrSchedule,
    stages: Optional[Stagewise] = None,
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
  ``ulp(y) sqrt(k)`` at most; ``x0 + sqrt((k-1)/k) (y - x0) - eta g`` drifted
  to 13 times that in 20000 steps). Float32 sums ``V_k`` round at the scale
  of ``x0 - y`` instead, so they are closer where the center stays near the
  anchor (20000 steps, ``|x0 - y|`` about 0.2, ``|y|`` about 4: 1.9e-5
  against 6.5e-7), and as close where it moves away.

  Same numbers as ``accumulate_dual_averaging`` then ``sqrt_k_metric`` (to
  float32 rounding), but the center is updated in its own buffer: the prox's
  group norms, the new point and the momentum average read it there, where
  a center computed from ``V_k`` must be stored in a temporary or computed
  again by each reader. On CPU, RMDA's step makes 10 passes over a leaf
  instead of 12 and allocates no temporary (VGG-16, 15M params, in place:
  2.1x ``optax.sgd``'s time instead of 2.7x). Restarts of ``stages`` set
  ``x0`` and ``y`` to the current params, and ``k``, ``alpha`` to 0.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.
    stages: optional :class:`~rmda_jax.schedules.Stagewise` (restarts and
      learning-rate drops).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping the gradients to a
    :class:`DualAverage` whose ``center`` is ``y_k`` (and ``grad_sum`` None),
    for :func:`sqrt_k_metric`; its state is a
    :class:`DualAveragingCenterState`; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import blocks
    >>> tx = blocks.dual_averaging_center(0.5)
    >>> params = {"w": jnp.ones(2)}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   out, state = tx.update({"w": jnp.ones(2)}, state, params)
    >>> [round(y, 6) for y in out.center["w"].tolist()]   # 1 - 0.5 (1 + sqrt(2)) / sqrt(2)
    [0.146447, 0.146447]
  """
  _common.check_learning_rate(learning_rate)
  _check_stages(stages)

  def init_fn(params):
    return _new_stage_state(DualAveragingCenterState, params, center=_common.fresh_copy(params, accumulator=True))

  def reset(state, params):
    return _restart(state, params, center=_common.to_float32(params))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    state, lr, k = _begin_step(learning_rate, stages, reset, updates, state, params, "dual_averaging_center")
    k_float = k.astype(jnp.float32)
    sqrt_k = jnp.sqrt(k_float)
    # w_k: 1 at the first step of a stage, where y_0 = x0
    pull = (1 / k_float) / (1 + jnp.sqrt(state.stage_count.astype(jnp.float32)) / sqrt_k)
    center = jax.tree_util.tree_map(
        lambda x0, y, g: y + (pull * (x0 - y) - lr * g.astype(y.dtype)), state.anchor, state.center, updates)
    alpha = state.alpha + lr * sqrt_k
    out = DualAverage(state.count, k, alpha, state.anchor, None, optax.EmptyState(), None, center)
    new_state = DualAveragingCenterState(optax.safe_int32_increment(state.count), k, alpha, state.anchor, center)
    return out, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sqrt_k_metric() -> optax.GradientTransformationExtraArgs:
  r"""RMDA's metric ``sqrt(k) I``: a :class:`DualAverage` to its prox :class:`Subproblem`.

  .. math::

     z_k = \arg\min_z \langle V_k, z\rangle + \tfrac{\sqrt k}{2}\|z - x_0\|^2
           + \alpha_k\lambda\psi(z)
         = \mathrm{prox}_{(\alpha_k/\sqrt{k})\lambda\psi}\big(x_0 - V_k/\sqrt{k}\big).

  The prox center is computed from ``x0`` and ``V_k``, or taken as it is
  from a :class:`DualAverage` that carries it (:func:`dual_averaging_center`).
  Stateless. Returns an ``optax.GradientTransformationExtraArgs`` whose
  output is a :class:`Subproblem` with ``metric=None``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import blocks
    >>> tx = optax.chain(blocks.accumulate_dual_averaging(1.0), blocks.sqrt_k_metric())
    >>> params = {"w": jnp.ones(2)}
    >>> out, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> out.b["w"].tolist(), float(out.scale)   # x0 - V/1, alpha/1
    ([0.0, 0.0], 1.0)
  """

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    sqrt_k = jnp.sqrt(updates.stage_count.astype(jnp.float32))
    if updates.center is not None:
      # kept by the accumulator, in a buffer of the state that every reader shares
      return Subproblem(updates.center, None, updates.alpha / sqrt_k, None, updates.anchor, updates.count), state
    # a product, not a division, per entry: XLA recomputes cheap elementwise
    # expressions in each consumer but stores an "expensive" division's result
    inv_sqrt_k = 1 / sqrt_k
    center = lambda anchor, grad_sum: jax.tree_util.tree_map(lambda x0, v: x0 - v * inv_sqrt_k, anchor, grad_sum)
    y = center(updates.anchor, updates.grad_sum)
    twin = twin_of(center, updates.anchor, updates.grad_sum)
    return Subproblem(y, None, updates.alpha / sqrt_k, None, updates.anchor, updates.count, twin), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def cube_root(u: jax.Array) -> jax.Array:
  """``u ** (1/3)`` for ``u >= 0`` (0 at 0), by Newton's method on ``u ** (-1/3)``.

  In float32, ``y = u ** (-1/3)`` starts from the exponent-thirding bit trick
  (within about 10%) and takes three division-free Newton steps
  ``y <- y (4 - u y^3) / 3``; the cube root is ``u y^2``. The relative error
  is below 5e-7 over the normal float32 range (subnormals count as 0, as XLA
  flushes them), and the cost is a dozen multiplies per entry: on CPU about
  1.8x faster than ``exp(log(u) / 3)`` and 10x faster than XLA's ``cbrt``.
  Other dtypes use ``jnp.cbrt``. ``+inf`` stays ``+inf``.

  Example:
    >>> import jax.numpy as jnp
    >>> from rmda_jax.blocks import cube_root
    >>> [round(float(v), 5) for v in cube_root(jnp.array([0.0, 1.0, 8.0, 1e-3]))]
    [0.0, 1.0, 2.0, 0.1]
  """
  u = jnp.asarray(u)
  positive = u > 0
  safe = jnp.where(positive, u, 1)
  if u.dtype != jnp.float32:
    return jnp.where(positive, jnp.cbrt(safe), 0)
  # A third of the bit pattern, taken in float32 (an integer division is an
  # "expensive" op that XLA would store instead of fusing); the rounding
  # is far below the start's own error, which Newton removes.
  bits = jax.lax.bitcast_convert_type(safe, jnp.int32).astype(jnp.float32)
  y = jax.lax.bitcast_convert_type(jnp.int32(0x54A2FA8C) - (bits * (1 / 3)).astype(jnp.int32), jnp.float32)
  for _ in range(3):
    y = y * (4 - safe * y * y * y) * (1 / 3)
  root = jnp.where(jnp.isinf(safe), safe, safe * y * y)
  return jnp.where(positive, root, 0)


def cube_root_preconditioner(sq_grad_sum, eps) -> Params:
  """RAMDA's diagonal metric ``P = cbrt(U) + eps`` (``U >= 0``)."""
  return jax.tree_util.tree_map(lambda u: cube_root(u) + eps, sq_grad_sum)


def _diagonal_subproblem(dual: DualAverage, metric) -> Subproblem:
  """``min_z <V, z - x0> + 1/2 <z - x0, P (z - x0)> + alpha lambda psi(z)``, i.e. ``b = P x0 - V``."""
  b = jax.tree_util.tree_map(lambda p, x0, v: p * x0 - v, metric, dual.anchor, dual.grad_sum)
  return Subproblem(b, metric, dual.alpha, None, dual.anchor, dual.count)


def cube_root_metric(eps: jax.typing.ArrayLike = 1e-6,
                     stages: Optional[Stagewise] = None) -> optax.GradientTransformationExtraArgs:
  r"""RAMDA's metric: a :class:`DualAverage` (with ``U_k``) to its :class:`Subproblem`.

  .. math::

     P_k = \sqrt[3]{U_k} + \epsilon_k,\quad
     z_k = \arg\min_z \langle V_k, z - x_0\rangle
       + \tfrac12\langle z - x_0, P_k (z - x_0)\rangle + \alpha_k\lambda\psi(z),

  with ``epsilon_k = eps * stages.decay`` (``eps`` decays with the learning
  rate under a stage-wise schedule). The previous point is the warm start.

  Args:
    eps: ``epsilon >= 0``, a number or a scalar array.
    stages: the :class:`~rmda_jax.schedules.Stagewise` of the accumulator,
      or None.

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``; the accumulator
    before it needs ``sq_grads=True``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import blocks
    >>> tx = optax.chain(blocks.accumulate_dual_averaging(1.0, sq_grads=True),
    ...                  blocks.cube_root_metric(eps=0.0))
    >>> params = {"w": jnp.zeros(1)}
    >>> out, _ = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(out.metric["w"][0]), 4)   # cbrt(1 * 2^2)
    1.5874
  """
  regs.check_nonnegative(eps, "eps")
  _check_stages(stages)

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if isinstance(updates.sq_grad_sum, optax.EmptyState):
      raise ValueError("cube_root_metric needs the squared-gradient sum: "
                       "use accumulate_dual_averaging(..., sq_grads=True).")
    precond = cube_root_preconditioner(updates.sq_grad_sum, eps * _decay(stages, updates.count))
    return _diagonal_subproblem(updates, precond), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def adam_metric(b2: jax.typing.ArrayLike = 0.999,
                eps: jax.typing.ArrayLike = 1e-8) -> optax.GradientTransformationExtraArgs:
  r"""Adam's second moment as a dual-averaging metric (a variant, not in the papers).

  .. math::

     v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2,\quad
     P_k = \sqrt{k}\,\big(\sqrt{v_t / (1 - \beta_2^t)} + \epsilon\big),

  and the subproblem of :func:`cube_root_metric` with this ``P``. The factor
  ``sqrt(k)`` keeps RMDA's growth of the metric; ``v`` is not reset at
  restarts (``t`` counts all updates).

  Args:
    b2: ``beta_2`` in [0, 1), a number or a scalar array.
    eps: ``epsilon >= 0``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with an
    :class:`AdamMetricState`; the accumulator before it needs ``grads=True``.
    See the module's example.
  """
  _common.check_in_range(b2, "b2", 0.0, 1.0)
  regs.check_nonnegative(eps, "eps")

  def init_fn(params):
    return AdamMetricState(_zero_count(), _common.zeros_float32(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    if updates.grads is None:
      raise ValueError("adam_metric needs the gradients: use accumulate_dual_averaging(..., grads=True).")
    nu = jax.tree_util.tree_map(
        lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(v.dtype)), state.nu, updates.grads
    )
    t = optax.safe_int32_increment(state.count)
    bias = 1 - b2 ** t.astype(jnp.float32)
    sqrt_k = jnp.sqrt(updates.stage_count.astype(jnp.float32))
    metric = jax.tree_util.tree_map(lambda v: sqrt_k * (jnp.sqrt(v / bias) + eps), nu)
    return _diagonal_subproblem(updates, metric), AdamMetricState(t, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


# --------------------------------------------------------------------------- the subproblem and the new point
def proximal_step(
    regularizer: Optional[regs.Regularizer] = None,
    solver: Union[None, str, solvers.Solver] = "auto",
    keep_point: bool = True,
    strength: Optional[_common.ScalarOrSchedule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Solve a :class:`Subproblem`: the prox step, exact where it can be.

  .. math::

     z = \arg\min_z \tfrac12\langle z, P z\rangle - \langle b, z\rangle
         + \mathrm{scale}\,\lambda\psi(z)
     \quad\big(z = \mathrm{prox}_{\mathrm{scale}\,\lambda\psi}(b)\ \text{when } P \text{ is None}\big).

  A diagonal ``P`` is solved by :func:`rmda_jax.solvers.solve`: exactly for
  no regularizer, L1 / elastic net and group-LASSO, by proximal gradient for
  the nuclear norm and other penalties (warm started at ``Subproblem.init``,
  or at the previous solution when that is None).

  Args:
    regularizer: a rmda_jax regularizer or None (then ``z`` is the
      unregularized minimizer).
    solver: ``"auto"``, ``"exact"``, ``"pgd"``, a
      :class:`~rmda_jax.solvers.Exact` / :class:`~rmda_jax.solvers.ProximalGradient`,
      or None for subproblems with ``metric=None`` only (the closed-form prox;
      no ``solver_info`` in the state).
    keep_point: keep the solution, in the params' dtypes, as
      ``state.structured`` (the exactly structured point that
      :func:`rmda_jax.structured_params` returns; also the default warm start).
    strength: ``lambda >= 0`` in place of ``regularizer.strength``: a number,
      a scalar array or a schedule of ``Subproblem.count`` (a penalty
      warm-up; injectable with ``optax.inject_hyperparams``); None keeps the
      regularizer's.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping a :class:`Subproblem`
    to ``z`` (float32 at least); its state is a :class:`ProximalStepState`;
    ``update`` needs ``params`` with ``keep_point``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> from rmda_jax.blocks import Subproblem, proximal_step
    >>> tx = proximal_step(rmda_jax.l1(1.0), keep_point=False)
    >>> problem = Subproblem({"w": jnp.array([[3.0, 0.5]])}, {"w": jnp.array([[2.0, 1.0]])},
    ...                      jnp.float32(1.0), None, None, jnp.int32(0))
    >>> z, state = tx.update(problem, tx.init({"w": jnp.zeros((1, 2))}))
    >>> z["w"].tolist()   # soft(b, 1) / P
    [[1.0, 0.0]]
  """
  regs.check_regularizer(regularizer)
  check_strength(strength, regularizer)
  if solver is not None:
    solver = solvers.make_solver(solver, regularizer)

  def regularizer_at(count):
    if strength is None:
      return regularizer
    return dataclasses.replace(regularizer, strength=_common.evaluate(strength, count))

  def init_fn(params):
    if regularizer is not None:
      regularizer.check(params)
    return ProximalStepState(
        structured=_common.fresh_copy(params) if keep_point else optax.EmptyState(),
        solver_info=optax.EmptyState() if solver is None else solvers.empty_info(),
    )

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    problem = updates
    reg = regularizer_at(problem.count)
    if problem.metric is None:
      statistics = problem.twin
      if keep_point and statistics is not None:
        # With the point kept, XLA stores b once (one small temporary or the
        # point's own buffer) and the norms, the point and what follows read
        # it: on CPU 12 passes over a leaf instead of 14 for the V_k chain,
        # whose twin reads x0, V and a written broadcast of 1/sqrt(k). Without it,
        # XLA stores every leaf's b at once (59 MB for VGG-16), a temporary
        # page-faulted at every call, and a leaf of TWIN_MIN_ENTRIES or more
        # would make one as well: those keep reading the twin.
        statistics = jax.tree_util.tree_map(
            lambda b, twin: b if b.size < TWIN_MIN_ENTRIES else twin, problem.b, statistics)
      z = problem.b if reg is None else reg.prox(problem.b, problem.scale, statistics=statistics)
      info = state.solver_info if solver is None else solvers.empty_info()
    else:
      if solver is None:
        raise ValueError("proximal_step(solver=None) solves only subproblems with metric=None.")
      init = problem.init
      if init is None and keep_point:
        init = _common.to_float32(state.structured)
      z, info = solvers.solve(reg, problem.b, problem.metric, problem.scale, init=init,
                              solver=solver, count=problem.count, anchor=problem.anchor)
    structured = state.structured
    if keep_point:
      _common.require_params(params, "proximal_step")
      structured = _common.cast_like(z, params)
      # The closed-form prox never reads the previous point, nor does any
      # solve read it on unregularized leaves: tie it to the new one so that
      # jit does not prune it as an unused argument, which would leave its
      # donated buffer unused and the new point in freshly allocated (on CPU:
      # page-faulted) memory at every call.
      structured, _ = jax.lax.optimization_barrier((structured, state.structured))
    return z, ProximalStepState(structured, info)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def check_strength(strength, regularizer) -> None:
  """A strength override needs a regularizer and is ``>= 0`` (where concrete)."""
  if strength is None:
    return
  if regularizer is None:
    raise ValueError("strength is given but there is no regularizer to scale: pass regularizer=... too.")
  _common.check_scalar(strength, "strength", low=0.0, schedule=True)


def _average(params, z, c):
  """``(1 - c) x + c z`` in float32 (exactly ``z`` when ``c == 1``)."""
  return jax.tree_util.tree_map(lambda x, zz: (1 - c) * x.astype(zz.dtype) + c * zz, params, z)


def momentum_average(momentum: _common.ScalarOrSchedule = 0.1,
                     stages: Optional[Stagewise] = None) -> optax.GradientTransformationExtraArgs:
  r"""The papers' momentum: move the params towards the new point ``z``.

  .. math::

     x_k = (1 - c_k)\, x_{k-1} + c_k z_k,\qquad \text{updates} = x_k - x_{k-1},

  computed in float32 and returned in the params' dtypes, so that
  ``optax.apply_updates`` lands on ``x_k`` (exactly on ``z_k`` when
  ``c_k = 1``). Under a :class:`~rmda_jax.schedules.Stagewise` with a
  momentum ramp, ``c_k`` ramps to 1 after the last milestone.

  Args:
    momentum: ``c`` in (0, 1], the weight of the new point (1 = no
      averaging). A number, a scalar array or a schedule.
    stages: optional :class:`~rmda_jax.schedules.Stagewise` (the ramp).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping ``z`` to updates;
    its state is a :class:`CountState`; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.blocks.momentum_average(0.25)
    >>> params = {"w": jnp.zeros(2)}
    >>> updates, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> updates["w"].tolist()
    [0.25, 0.25]
  """
  _common.check_momentum(momentum)
  _check_stages(stages)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "momentum_average")
    c = _common.evaluate(momentum, state.count)
    if stages is not None:
      c = stages.momentum(c, state.count)
    new = _common.updates_to(_average(params, updates, c), params)
    return new, CountState(optax.safe_int32_increment(state.count))

  return optax.GradientTransformationExtraArgs(lambda params: CountState(_zero_count()), update_fn)


def to_updates() -> optax.GradientTransformationExtraArgs:
  """Replace the params by the new point: ``updates = z - params`` in the params' dtypes.

  Stateless; ``update`` needs ``params``. ``optax.apply_updates`` then lands
  exactly on every zero of ``z``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = rmda_jax.blocks.to_updates()
    >>> params = {"w": jnp.array([0.3, 2.0])}
    >>> updates, _ = tx.update({"w": jnp.array([0.0, 1.0])}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"].tolist()
    [0.0, 1.0]
  """

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "to_updates")
    return _common.updates_to(updates, params), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


# --------------------------------------------------------------------------- proximal baselines
def dampened_momentum(momentum: _common.ScalarOrSchedule = 0.1) -> optax.GradientTransformationExtraArgs:
  r"""ProxSGD's dampened momentum ``m_t = (1 - c) m_{t-1} + c g_t`` (``m_0 = 0``).

  Args:
    momentum: ``c`` in (0, 1]; 1 passes the gradient through. A number, a
      scalar array or a schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping gradients to ``m_t``
    (float32 at least); its state is a :class:`DampenedMomentumState`.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.blocks.dampened_momentum(0.5)
    >>> m, state = tx.update({"w": jnp.ones(1)}, tx.init({"w": jnp.zeros(1)}))
    >>> m["w"].tolist()
    [0.5]
  """
  _common.check_momentum(momentum)

  def init_fn(params):
    return DampenedMomentumState(_zero_count(), _common.zeros_float32(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    c = _common.evaluate(momentum, state.count)
    m = jax.tree_util.tree_map(lambda m, g: (1 - c) * m + c * g.astype(m.dtype), state.momentum, updates)
    return m, DampenedMomentumState(optax.safe_int32_increment(state.count), m)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def proximal_gradient_subproblem(learning_rate: _common.ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
  r"""A direction ``m`` to the proximal-gradient subproblem ``z = prox_{eta lambda psi}(x - eta m)``.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping ``m`` to a
    :class:`Subproblem` with ``metric=None``; its state is a
    :class:`CountState`; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.blocks.proximal_gradient_subproblem(0.5)
    >>> params = {"w": jnp.ones(1)}
    >>> problem, _ = tx.update({"w": jnp.ones(1)}, tx.init(params), params)
    >>> problem.b["w"].tolist(), float(problem.scale)
    ([0.5], 0.5)
  """
  _common.check_learning_rate(learning_rate)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "proximal_gradient_subproblem")
    lr = _common.evaluate(learning_rate, state.count)
    center = lambda params, m: jax.tree_util.tree_map(lambda x, m: x.astype(m.dtype) - lr * m, params, m)
    y = center(params, updates)
    twin = twin_of(center, params, updates)
    return (Subproblem(y, None, lr, None, None, state.count, twin),
            CountState(optax.safe_int32_increment(state.count)))

  return optax.GradientTransformationExtraArgs(lambda params: CountState(_zero_count()), update_fn)


def adam_moments(b1: jax.typing.ArrayLike = 0.9,
                 b2: jax.typing.ArrayLike = 0.999) -> optax.GradientTransformationExtraArgs:
  r"""Adam's moments, kept in float32, passed on without bias correction.

  .. math::

     m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t,\qquad
     v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 .

  The moments are those of ``optax.scale_by_adam`` (its state type,
  ``optax.ScaleByAdamState``, is reused), but the blocks after this one apply
  the bias corrections where their methods do (ProxGen and ProxSSI differ), so
  the output is the raw :class:`AdamMoments` rather than Adam's direction.

  Args:
    b1, b2: decay rates in [0, 1), numbers or scalar arrays.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping gradients to
    :class:`AdamMoments`; its state is an ``optax.ScaleByAdamState``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.blocks.adam_moments(b1=0.5, b2=0.75)
    >>> out, state = tx.update({"w": jnp.full(1, 2.0)}, tx.init({"w": jnp.zeros(1)}))
    >>> out.mu["w"].tolist(), out.nu["w"].tolist(), int(state.count)
    ([1.0], [1.0], 1)
  """
  _common.check_in_range(b1, "b1", 0.0, 1.0)
  _common.check_in_range(b2, "b2", 0.0, 1.0)

  def init_fn(params):
    return optax.ScaleByAdamState(_zero_count(), _common.zeros_float32(params), _common.zeros_float32(params))

  def update_fn(updates, state, params=None, **extra_args):
    del params, extra_args
    mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g.astype(m.dtype), state.mu, updates)
    nu = jax.tree_util.tree_map(
        lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(v.dtype)), state.nu, updates
    )
    return AdamMoments(state.count, mu, nu), optax.ScaleByAdamState(optax.safe_int32_increment(state.count), mu, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _check_adam_step(learning_rate, b1, b2, eps, weight_decay):
  _common.check_learning_rate(learning_rate)
  _common.check_in_range(b1, "b1", 0.0, 1.0)
  _common.check_in_range(b2, "b2", 0.0, 1.0)
  regs.check_nonnegative(eps, "eps")
  regs.check_nonnegative(weight_decay, "weight_decay")


def proxgen_subproblem(
    learning_rate: _common.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-8,
    weight_decay: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""ProxGen's AdamW subproblem from :class:`AdamMoments`.

  .. math::

     x \leftarrow (1 - \eta w) x,\
     D = \sqrt{v_t}/\sqrt{1 - \beta_2^t} + \epsilon,\ a = \eta/(1 - \beta_1^t),\\
     z = \arg\min_z \langle a m_t, z - x\rangle + \tfrac12\langle z - x, D (z - x)\rangle
         + \eta\lambda\psi(z)\quad (b = D x - a m_t,\ \text{warm start } x).

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.
    b1, b2: the :func:`adam_moments` decay rates in [0, 1) (for the bias
      corrections).
    eps: ``epsilon >= 0``.
    weight_decay: decoupled decay ``w >= 0``.

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import blocks
    >>> tx = optax.chain(blocks.adam_moments(), blocks.proxgen_subproblem(0.1, eps=0.0))
    >>> params = {"w": jnp.zeros(1)}
    >>> problem, _ = tx.update({"w": jnp.full(1, 3.0)}, tx.init(params), params)
    >>> round(float(problem.b["w"][0] / problem.metric["w"][0]), 4)   # Adam's first step: -lr sign(g)
    -0.1
  """
  _check_adam_step(learning_rate, b1, b2, eps, weight_decay)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "proxgen_subproblem")
    lr = _common.evaluate(learning_rate, updates.count)
    tf = optax.safe_int32_increment(updates.count).astype(jnp.float32)
    x = jax.tree_util.tree_map(lambda p, m: (1 - lr * weight_decay) * p.astype(m.dtype), params, updates.mu)
    bias2 = jnp.sqrt(1 - b2**tf)
    a = lr / (1 - b1**tf)
    # sqrt(v) / bias2 + eps ending in the division: XLA does not duplicate a
    # division into its consumers, so D is stored once (the solver reads it
    # anyway) instead of sqrt(v) and D both (on VGG-16, 118 -> 87 ms a step)
    diag = jax.tree_util.tree_map(lambda v: (jnp.sqrt(v) + eps * bias2) / bias2, updates.nu)
    b = jax.tree_util.tree_map(lambda d, xx, m: d * xx - a * m, diag, x, updates.mu)
    return Subproblem(b, diag, lr, x, x, updates.count), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def prox_ssi_subproblem(
    learning_rate: _common.ScalarOrSchedule,
    b1: jax.typing.ArrayLike = 0.9,
    b2: jax.typing.ArrayLike = 0.999,
    eps: jax.typing.ArrayLike = 1e-6,
    weight_decay: jax.typing.ArrayLike = 0.0,
) -> optax.GradientTransformationExtraArgs:
  r"""ProxSSI's subproblem: an Adam step, then the prox in Adam's metric.

  .. math::

     D = \sqrt{v_t} + \epsilon,\quad
     y = x - \eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m_t}{D}
         \ (\text{then } y \leftarrow (1 - \eta w) y),\\
     z = \arg\min_z \tfrac12 (z - y)^\top D (z - y) + \eta\lambda\psi(z)
     \quad (b = D y,\ \text{warm start } x).

  ``D`` has no bias correction while the Adam step has one, as in the
  original.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.
    b1, b2: the :func:`adam_moments` decay rates in [0, 1).
    eps: ``epsilon >= 0``.
    weight_decay: ``w >= 0``, applied to the Adam step.

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import blocks
    >>> tx = optax.chain(blocks.adam_moments(), blocks.prox_ssi_subproblem(0.1, eps=0.0))
    >>> params = {"w": jnp.zeros(1)}
    >>> problem, _ = tx.update({"w": jnp.full(1, 3.0)}, tx.init(params), params)
    >>> round(float(problem.anchor["w"][0]), 4)   # the Adam step y: -lr sign(g)
    -0.1
  """
  _check_adam_step(learning_rate, b1, b2, eps, weight_decay)

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    _common.require_params(params, "prox_ssi_subproblem")
    lr = _common.evaluate(learning_rate, updates.count)
    tf = optax.safe_int32_increment(updates.count).astype(jnp.float32)
    diag = jax.tree_util.tree_map(lambda v: jnp.sqrt(v) + eps, updates.nu)
    step = lr * jnp.sqrt(1 - b2**tf) / (1 - b1**tf)
    y = jax.tree_util.tree_map(
        lambda p, m, d: p.astype(d.dtype) - step * regs.safe_divide(m, d), params, updates.mu, diag
    )
    y = jax.tree_util.tree_map(lambda yy: yy - lr * weight_decay * yy, y)
    b = jax.tree_util.tree_map(lambda d, yy: d * yy, diag, y)
    return Subproblem(b, diag, lr, params, y, updates.count), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


# --------------------------------------------------------------------------- composing with a named state
def named_chain(state_type: type, *transforms: optax.GradientTransformation,
                check=None) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*transforms)`` whose state is ``state_type(*states)`` instead of a tuple.

  ``state_type`` is a NamedTuple with one field per transformation (it may
  add properties that read into them, as :class:`rmda_jax.DualAveragingState`
  does). ``check(grads, state, params)``, if given, runs first in ``update``.
  """
  chained = optax.chain(*transforms)

  def init_fn(params):
    return state_type(*chained.init(params))

  def update_fn(updates, state, params=None, **extra_args):
    if check is not None:
      check(updates, state, params)
    updates, new_state = chained.update(updates, tuple(state), params, **extra_args)
    return updates, state_type(*new_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
