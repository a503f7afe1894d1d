"""RMDA and RAMDA: regularized (adaptive) dual averaging with momentum.

Both keep, per stage, the anchor ``x0`` (the params at the start of the
stage), weighted gradient sums and ``alpha_k``; the point ``z`` they compute
from these is where the structure is exact (Huang & Lee prove it identifies
the optimal structure after finitely many steps), and the model's params move
towards it with the papers' momentum ``x <- (1 - c) x + c z``.

**Momentum convention.** ``momentum`` is the weight ``c`` in (0, 1] of the
*new* point; ``c = 1`` means no averaging. This is the opposite of the usual
``beta = 0.9``: ``momentum=0.1`` here averages about as much as ``beta = 0.9``.
With ``c < 1`` the params are only near the structure; use
:func:`structured_params` for the exactly structured point, or a
:class:`~rmda_jax.optim.schedules.Stagewise` schedule whose momentum ramp drives
``c`` to 1 so the params themselves end up exactly structured.

Each is a short chain of the building blocks of :mod:`rmda_jax.optim`
(``dual_averaging_center -> sqrt_k_metric`` or ``accumulate_dual_averaging ->
cube_root_metric``, then ``proximal_step -> momentum_average``) with one
state type for both, :class:`DualAveragingState`; other variants are other
chains of the blocks.

The transformations return *updates* ``x_new - params`` so they compose with
``optax.apply_updates``; ``update`` needs ``params``. Place them last in an
``optax.chain`` (transformations before them, e.g. gradient clipping, see the
gradients; anything after them would rescale the step away from ``z``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

from rmda_jax.core import checks
from rmda_jax.optim import chain
from rmda_jax.optim.accumulators import (
  DualAveragingCenterState,
  DualAveragingSumsState,
  accumulate_dual_averaging,
  dual_averaging_center,
)
from rmda_jax.optim.preconditioners import cube_root_metric, sqrt_k_metric
from rmda_jax.optim.proximal import ProximalStepState, proximal_step
from rmda_jax.optim.schedules import Stagewise
from rmda_jax.optim.updates import momentum_average
from rmda_jax.prox.regularizer import Regularizer, check_regularizer
from rmda_jax.prox.solvers import Solver


class DualAveragingState(NamedTuple):
  """State of :func:`rmda` and :func:`ramda`: the states of their blocks.

  The fields are the states of the four building blocks of :mod:`rmda_jax.optim` that the
  optimizers chain; the properties read the arrays inside them.

  Attributes:
    sums: RMDA's :class:`~rmda_jax.optim.accumulators.DualAveragingCenterState` of
      :func:`~rmda_jax.optim.accumulators.dual_averaging_center`, RAMDA's
      :class:`~rmda_jax.optim.accumulators.DualAveragingSumsState` of
      :func:`~rmda_jax.optim.accumulators.accumulate_dual_averaging`.
    metric: the metric block's state (``optax.EmptyState()`` for
      :func:`~rmda_jax.optim.preconditioners.sqrt_k_metric` and
      :func:`~rmda_jax.optim.preconditioners.cube_root_metric`).
    step: :class:`~rmda_jax.optim.proximal.ProximalStepState` of
      :func:`~rmda_jax.optim.proximal.proximal_step`.
    average: :class:`~rmda_jax.optim.chain.CountState` of
      :func:`~rmda_jax.optim.updates.momentum_average`.
    count: int32, updates applied so far (drives schedules and milestones).
    stage_count: int32, ``k``, updates inside the current stage.
    alpha: float32, ``alpha_k = sum_{i<=k} lr_i sqrt(i)``.
    anchor: ``x0``, the params at the start of the stage (float32).
    grad_sum: ``V_k = sum_{i<=k} lr_i sqrt(i) g_i`` (float32; RMDA's is
      derived from its center).
    center: RMDA's prox center ``y_k = x0 - V_k / sqrt(k)`` (float32), kept by
      RMDA. A RAMDA state gives the same formula of its sums, which is not
      the center of RAMDA's subproblem (that is ``x0 - V_k / P_k``).
    sq_grad_sum: RAMDA's ``U_k = sum_{i<=k} lr_i sqrt(i) g_i^2`` (float32);
      ``optax.EmptyState()`` for RMDA.
    structured: ``z_k``, the exactly structured point (params' dtype).
    solver_info: RAMDA's iterations and final residual of the last
      subproblem solve; ``optax.EmptyState()`` for RMDA (closed-form prox).
  """

  sums: DualAveragingCenterState | DualAveragingSumsState
  metric: Any
  step: ProximalStepState
  average: chain.CountState

  @property
  def count(self) -> jax.Array:
    return self.sums.count

  @property
  def stage_count(self) -> jax.Array:
    return self.sums.stage_count

  @property
  def alpha(self) -> jax.Array:
    return self.sums.alpha

  @property
  def anchor(self) -> optax.Params:
    return self.sums.anchor

  @property
  def grad_sum(self) -> optax.Params:
    return self.sums.grad_sum

  @property
  def sq_grad_sum(self) -> Any:
    return self.sums.sq_grad_sum

  @property
  def center(self) -> optax.Params:
    return self.sums.center

  @property
  def structured(self) -> optax.Params:
    return self.step.structured

  @property
  def solver_info(self) -> Any:
    return self.step.solver_info


def _check_common(learning_rate, momentum, regularizer, stages, skip_nonfinite):
  """Validate the shared arguments; returns ``max_consecutive_errors`` (None: no skipping)."""
  for value, argname in ((learning_rate, "learning_rate"), (momentum, "momentum")):
    if isinstance(value, Regularizer):
      raise TypeError(
        f"{argname} must be a number, a scalar array or an optax schedule, got a "
        f"regularizer ({type(value).__name__}): pass it as regularizer=..."
      )
  checks.check_learning_rate(learning_rate)
  checks.check_momentum(momentum)
  check_regularizer(regularizer)
  if stages is not None and not isinstance(stages, Stagewise):
    raise TypeError(
      "stages must be a rmda_jax.Stagewise (see rmda_jax.stagewise) or None, "
      f"got {type(stages).__name__}."
    )
  return checks.check_skip_nonfinite(skip_nonfinite)


def _checker(name):
  def check(grads, state, params):
    chain.check_update_args(grads, state.anchor, params, name)

  return check


def rmda(
  learning_rate: optax.ScalarOrSchedule,
  momentum: optax.ScalarOrSchedule = 0.1,
  regularizer: Regularizer | None = None,
  stages: Stagewise | None = None,
  skip_nonfinite: bool | int = False,
  strength: optax.ScalarOrSchedule | None = None,
  keep_point: bool = True,
) -> optax.GradientTransformation:
  r"""Regularized Modernized Dual Averaging (RMDA).

  Per step, with ``k`` the step inside the current stage and ``x0`` the stage
  anchor:

  .. math::

     s_k = \eta_k \sqrt{k},\quad \alpha_k = \sum_{i\le k} s_i,\quad
     V_k = \sum_{i\le k} s_i g_i,\\
     z_k = \mathrm{prox}_{(\alpha_k/\sqrt{k})\lambda\psi}\big(x_0 - V_k/\sqrt{k}\big),\quad
     x_k = (1 - c_k)\, x_{k-1} + c_k z_k .

  ``z_k`` is the minimizer of ``<V_k, z> + sqrt(k)/2 ||z - x0||^2 +
  alpha_k lambda psi(z)``, so it is exactly structured; it is kept in the state
  (:func:`structured_params`). The state keeps the prox center
  ``y_k = x0 - V_k/sqrt(k)`` in place of ``V_k``, updated as
  ``y_k = y_{k-1} + (1 - sqrt((k-1)/k)) (x0 - y_{k-1}) - eta_k g_k``
  (:func:`~rmda_jax.optim.accumulators.dual_averaging_center`): the prox, the kept point and
  the momentum average all read it from its buffer (``state.grad_sum`` is
  derived from it).

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or an optax
      schedule of the step count (the papers use 0.1).
    momentum: ``c`` in (0, 1], the weight of the new point (1 = no momentum;
      the papers use 0.1 or 0.01). A number, a scalar array or a schedule.
    regularizer: a rmda_jax regularizer (``group_lasso``, ``l1``,
      ``nuclear_norm``, ...) or None for plain momentum dual averaging.
    stages: optional :class:`~rmda_jax.optim.schedules.Stagewise`: learning-rate
      drops with restarts at milestones and the momentum ramp to 1.
    skip_nonfinite: skip a step whose gradient has a NaN or an infinite
      entry: the update is zero and the state is left as it was (the
      transformation is wrapped in ``optax.apply_if_finite``, whose
      ``ApplyIfFiniteState`` holds this optimizer's state and counts the
      skipped steps; :func:`structured_params` finds the state inside it).
      ``True`` skips every such step; an integer ``n >= 1`` gives up after
      ``n`` consecutive ones and applies the step (``max_consecutive_errors``).
    strength: ``lambda >= 0`` in place of ``regularizer.strength``: a number,
      a scalar array or a schedule of the step count (e.g. a penalty
      warm-up), injectable with ``optax.inject_hyperparams``; None keeps the
      regularizer's.
    keep_point: keep ``z_k`` in the state (True, the default). False saves
      a params-sized buffer (4 bytes per parameter, a third of the state)
      and its write at every step (a large share of a memory-bound step,
      ``benchmarks/README.md``); ``z_k`` is then
      recomputed (to float32 rounding) by
      ``structured_params(state, regularizer=...)``.

  Raises:
    TypeError / ValueError: an argument of the wrong type or out of range
      (a traced hyperparameter, e.g. under ``optax.inject_hyperparams``, is
      not checked); in ``update``, grads or a state whose tree structure or
      shapes differ from the params'.

  Returns:
    An ``optax.GradientTransformation`` (with extra arguments); ``update`` requires
    ``params``. Its state is a :class:`DualAveragingState` (inside an
    ``optax.ApplyIfFiniteState`` with ``skip_nonfinite``), with empty
    ``sq_grad_sum`` and ``solver_info``.

  Example:
    >>> import jax, jax.numpy as jnp, optax, rmda_jax
    >>> params = {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}
    >>> tx = rmda_jax.rmda(0.1, momentum=1.0, regularizer=rmda_jax.group_lasso(10.0))
    >>> state = tx.init(params)
    >>> grads = jax.tree_util.tree_map(jnp.ones_like, params)
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> float(jnp.abs(params["kernel"]).sum())   # every row's group is zeroed
    0.0

  References:
    Huang & Lee, "Training Structured Neural Networks Through Manifold
    Identification and Variance Reduction", ICLR 2022. arXiv:2112.02612
  """
  max_errors = _check_common(learning_rate, momentum, regularizer, stages, skip_nonfinite)
  tx = chain.named_chain(
    DualAveragingState,
    dual_averaging_center(learning_rate, stages),
    sqrt_k_metric(),
    proximal_step(regularizer, solver=None, keep_point=keep_point, strength=strength),
    momentum_average(momentum, stages),
    check=_checker("rmda"),
    name="rmda",
  )
  return chain.skipping_nonfinite(tx, max_errors)


def ramda(
  learning_rate: optax.ScalarOrSchedule,
  momentum: optax.ScalarOrSchedule = 0.1,
  regularizer: Regularizer | None = None,
  eps: float = 1e-6,
  solver: str | Solver = "auto",
  stages: Stagewise | None = None,
  skip_nonfinite: bool | int = False,
  strength: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
  r"""Regularized Adaptive Momentum Dual Averaging (RAMDA).

  RMDA with a diagonal preconditioner from the weighted sum of squared
  gradients; per step (``k`` inside the stage, ``x0`` the anchor):

  .. math::

     s_k = \eta_k\sqrt{k},\ \alpha_k = \sum s_i,\ V_k = \sum s_i g_i,\
     U_k = \sum s_i g_i^2,\ P_k = \sqrt[3]{U_k} + \epsilon,\\
     z_k \approx \arg\min_z \langle V_k, z - x_0\rangle
       + \tfrac12\langle z - x_0, P_k (z - x_0)\rangle + \alpha_k\lambda\psi(z),\quad
     x_k = (1 - c_k) x_{k-1} + c_k z_k.

  The subproblem is solved by :mod:`rmda_jax.prox.solvers`: exactly for no
  regularizer (``z = x0 - V/P``), L1 / elastic net (closed form) and
  group-LASSO (secular equation), inexactly by proximal gradient (warm
  started at the previous ``z``) for the nuclear norm and other penalties.
  Iterations and the final residual are in ``state.solver_info``.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule
      (the papers use 1e-2).
    momentum: ``c`` in (0, 1], the weight of the new point (1 = none; the
      papers use 0.1 or 0.01). A number, a scalar array or a schedule.
    regularizer: a rmda_jax regularizer or None.
    eps: ``epsilon >= 0`` added to the cube root (decays with the learning
      rate under a stage-wise schedule); a number or a scalar array.
    solver: ``"auto"``, ``"exact"``, ``"pgd"``, or a
      :class:`~rmda_jax.prox.Exact` / :class:`~rmda_jax.prox.ProximalGradient`.
    stages: optional :class:`~rmda_jax.optim.schedules.Stagewise`.
    skip_nonfinite: as for :func:`rmda` (``optax.apply_if_finite``).
    strength: as for :func:`rmda` (``lambda`` in place of the regularizer's).

  Raises:
    TypeError / ValueError: as for :func:`rmda`.

  Returns:
    An ``optax.GradientTransformation`` (with extra arguments); ``update`` requires
    ``params``. Its state is a :class:`DualAveragingState` (inside an
    ``optax.ApplyIfFiniteState`` with ``skip_nonfinite``).

  Example:
    >>> import jax, jax.numpy as jnp, optax, rmda_jax
    >>> params = {"kernel": jnp.ones((3, 2))}
    >>> tx = rmda_jax.ramda(1e-2, regularizer=rmda_jax.nuclear_norm(1e-3))
    >>> state = tx.init(params)
    >>> grads = {"kernel": jnp.full((3, 2), 0.5)}
    >>> updates, state = tx.update(grads, state, params)
    >>> int(state.solver_info.iterations) >= 1
    True

  References:
    Huang & Lee, "Regularized Adaptive Momentum Dual Averaging with an
    Efficient Inexact Subproblem Solver for Training Structured Neural
    Networks", NeurIPS 2024. arXiv:2403.14398
  """
  max_errors = _check_common(learning_rate, momentum, regularizer, stages, skip_nonfinite)
  tx = chain.named_chain(
    DualAveragingState,
    accumulate_dual_averaging(learning_rate, stages, sq_grads=True),
    cube_root_metric(eps, stages),
    proximal_step(regularizer, solver, strength=strength),
    momentum_average(momentum, stages),
    check=_checker("ramda"),
    name="ramda",
  )
  return chain.skipping_nonfinite(tx, max_errors)
