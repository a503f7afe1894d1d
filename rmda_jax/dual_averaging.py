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
:class:`~rmda_jax.schedules.Stagewise` schedule whose momentum ramp drives
``c`` to 1 so the params themselves end up exactly structured.

Each is a short chain of the :mod:`rmda_jax.blocks`
(``dual_averaging_center -> sqrt_k_metric`` or ``accumulate_dual_averaging ->
cube_root_metric``, then ``proximal_step -> momentum_average``) with one
state type for both,
:class:`DualAveragingState` (``RMDAState`` and ``RAMDAState`` are its names
of old); other variants are other chains of the blocks.

The transformations return *updates* ``x_new - params`` so they compose with
``optax.apply_updates``; ``update`` needs ``params``. Place them last in an
``optax.chain`` (transformations before them, e.g. gradient clipping, see the
gradients; anything after them would rescale the step away from ``z``).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import optax

from rmda_jax import _common
from rmda_jax import blocks
from rmda_jax import regularizers as regs
from rmda_jax import solvers
from rmda_jax.blocks import cube_root  # noqa: F401  (moved there; kept importable)
from rmda_jax.blocks import cube_root_preconditioner  # noqa: F401
from rmda_jax.schedules import Stagewise

Params = Any


class DualAveragingState(NamedTuple):
  """State of :func:`rmda` and :func:`ramda`: the states of their blocks.

  The fields are the states of the four :mod:`rmda_jax.blocks` that the
  optimizers chain; the properties read the arrays inside them.

  Attributes:
    sums: RMDA's :class:`~rmda_jax.blocks.DualAveragingCenterState` of
      :func:`~rmda_jax.blocks.dual_averaging_center`, RAMDA's
      :class:`~rmda_jax.blocks.DualAveragingSumsState` of
      :func:`~rmda_jax.blocks.accumulate_dual_averaging`.
    metric: the metric block's state (``optax.EmptyState()`` for
      :func:`~rmda_jax.blocks.sqrt_k_metric` and
      :func:`~rmda_jax.blocks.cube_root_metric`).
    step: :class:`~rmda_jax.blocks.ProximalStepState` of
      :func:`~rmda_jax.blocks.proximal_step`.
    average: :class:`~rmda_jax.blocks.CountState` of
      :func:`~rmda_jax.blocks.momentum_average`.
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

  sums: Union[blocks.DualAveragingCenterState, blocks.DualAveragingSumsState]
  metric: Any
  step: blocks.ProximalStepState
  average: blocks.CountState

  count = property(lambda self: self.sums.count)
  stage_count = property(lambda self: self.sums.stage_count)
  alpha = property(lambda self: self.sums.alpha)
  anchor = property(lambda self: self.sums.anchor)
  grad_sum = property(lambda self: self.sums.grad_sum)
  sq_grad_sum = property(lambda self: self.sums.sq_grad_sum)
  center = property(lambda self: self.sums.center)
  structured = property(lambda self: self.step.structured)
  solver_info = property(lambda self: self.step.solver_info)


# The state types of the two methods before they shared one.
RMDAState = DualAveragingState
RAMDAState = DualAveragingState


def _check_common(learning_rate, momentum, regularizer, stages, skip_nonfinite):
  """Validate the shared arguments; returns ``max_consecutive_errors`` (None: no skipping)."""
  for value, argname in ((learning_rate, "learning_rate"), (momentum, "momentum")):
    if isinstance(value, regs.Regularizer):
      raise TypeError(f"{argname} must be a number, a scalar array or an optax schedule, got a "
                      f"regularizer ({type(value).__name__}): pass it as regularizer=...")
  _common.check_learning_rate(learning_rate)
  _common.check_momentum(momentum)
  regs.check_regularizer(regularizer)
  if stages is not None and not isinstance(stages, Stagewise):
    raise TypeError(f"stages must be a rmda_jax.Stagewise (see rmda_jax.stagewise) or None, got {type(stages).__name__}.")
  return _common.check_skip_nonfinite(skip_nonfinite)


def _checker(name):
  def check(grads, state, params):
    _common.check_update_args(grads, state.anchor, params, name)

  return check


def rmda(
    learning_rate: _common.ScalarOrSchedule,
    momentum: _common.ScalarOrSchedule = 0.1,
    regularizer: Optional[regs.Regularizer] = None,
    stages: Optional[Stagewise] = None,
    skip_nonfinite: Union[bool, int] = False,
    strength: Optional[_common.ScalarOrSchedule] = None,
    keep_point: bool = True,
) -> optax.GradientTransformationExtraArgs:
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
  (:func:`~rmda_jax.blocks.dual_averaging_center`): the prox, the kept point and
  the momentum average all read it from its buffer (``state.grad_sum`` is
  derived from it).

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or an optax
      schedule of the step count (the papers use 0.1).
    momentum: ``c`` in (0, 1], the weight of the new point (1 = no momentum;
      the papers use 0.1 or 0.01). A number, a scalar array or a schedule.
    regularizer: a rmda_jax regularizer (``group_lasso``, ``l1``,
      ``nuclear_norm``, ...) or None for plain momentum dual averaging.
    stages: optional :class:`~rmda_jax.schedules.Stagewise`: learning-rate
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
      and its write at every step (about a quarter of a memory-bound step:
      VGG-16, 15M params, in place on CPU with
      :func:`~rmda_jax.cpu_compiler_options`: 14.3 -> 10.3 ms); ``z_k`` is then
      recomputed (to float32 rounding) by
      ``structured_params(state, regularizer=...)``.

  Raises:
    TypeError / ValueError: an argument of the wrong type or out of range
      (a traced hyperparameter, e.g. under ``optax.inject_hyperparams``, is
      not checked); in ``update``, grads or a state whose tree structure or
      shapes differ from the params'.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires
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
  tx = blocks.named_chain(
      DualAveragingState,
      blocks.dual_averaging_center(learning_rate, stages),
      blocks.sqrt_k_metric(),
      blocks.proximal_step(regularizer, solver=None, keep_point=keep_point, strength=strength),
      blocks.momentum_average(momentum, stages),
      check=_checker("rmda"),
  )
  return _common.skip_nonfinite(tx, max_errors)


def ramda(
    learning_rate: _common.ScalarOrSchedule,
    momentum: _common.ScalarOrSchedule = 0.1,
    regularizer: Optional[regs.Regularizer] = None,
    eps: float = 1e-6,
    solver: Union[str, solvers.Solver] = "auto",
    stages: Optional[Stagewise] = None,
    skip_nonfinite: Union[bool, int] = False,
    strength: Optional[_common.ScalarOrSchedule] = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Regularized Adaptive Momentum Dual Averaging (RAMDA).

  RMDA with a diagonal preconditioner from the weighted sum of squared
  gradients; per step (``k`` inside the stage, ``x0`` the anchor):

  .. math::

     s_k = \eta_k\sqrt{k},\ \alpha_k = \sum s_i,\ V_k = \sum s_i g_i,\
     U_k = \sum s_i g_i^2,\ P_k = \sqrt[3]{U_k} + \epsilon,\\
     z_k \approx \arg\min_z \langle V_k, z - x_0\rangle
       + \tfrac12\langle z - x_0, P_k (z - x_0)\rangle + \alpha_k\lambda\psi(z),\quad
     x_k = (1 - c_k) x_{k-1} + c_k z_k.

  The subproblem is solved by :mod:`rmda_jax.solvers`: exactly for no
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
      :class:`~rmda_jax.solvers.Exact` / :class:`~rmda_jax.solvers.ProximalGradient`.
    stages: optional :class:`~rmda_jax.schedules.Stagewise`.
    skip_nonfinite: as for :func:`rmda` (``optax.apply_if_finite``).
    strength: as for :func:`rmda` (``lambda`` in place of the regularizer's).

  Raises:
    TypeError / ValueError: as for :func:`rmda`.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; ``update`` requires
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
  tx = blocks.named_chain(
      DualAveragingState,
      blocks.accumulate_dual_averaging(learning_rate, stages, sq_grads=True),
      blocks.cube_root_metric(eps, stages),
      blocks.proximal_step(regularizer, solver, strength=strength),
      blocks.momentum_average(momentum, stages),
      check=_checker("ramda"),
  )
  return _common.skip_nonfinite(tx, max_errors)


def _find_states(state, types) -> list:
  found = []

  def visit(node):
    if isinstance(node, types):
      found.append(node)
    elif isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)

  visit(state)
  return found


def recompute_point(sums: Union[blocks.DualAveragingCenterState, blocks.DualAveragingSumsState],
                    regularizer) -> Params:
  """RMDA's ``z_k = prox_{(alpha_k/sqrt(k)) lambda psi}(x0 - V_k/sqrt(k))`` from its sums (float32).

  The point :func:`rmda` computes at step ``k`` (the anchor before the first
  step); from sums that keep ``V_k`` instead of the center, to float32
  rounding. ``regularizer`` must be the one the optimizer used, at the
  strength of that step.
  """
  k = sums.stage_count
  sqrt_k = jnp.sqrt(jnp.maximum(k, 1).astype(jnp.float32))
  y = sums.center
  z = y if regularizer is None else regularizer.prox(y, sums.alpha / sqrt_k)
  return jax.tree_util.tree_map(lambda zz, x0: jnp.where(k > 0, zz, x0), z, sums.anchor)


def _is_center_state(node) -> bool:
  return isinstance(node, blocks.DualAveragingCenterState)


def gradient_sum_template(tree):
  """A template to restore into: ``tree`` with RMDA's accumulator states in the layout that held ``V_k``.

  Until RMDA kept its prox center ``y_k`` (:func:`~rmda_jax.blocks.dual_averaging_center`),
  its state held the gradient sum ``V_k`` in a
  :class:`~rmda_jax.blocks.DualAveragingSumsState`. This maps every
  :class:`~rmda_jax.blocks.DualAveragingCenterState` in ``tree`` (an
  optimizer state, or a checkpoint template holding one) to that layout, the
  center's arrays standing in for ``V_k`` (the same shapes and dtypes; the
  values are placeholders, not a conversion): the template to restore such a
  checkpoint into, whose result :func:`prox_center_layout` converts.
  Everything else is left as it is.
  """
  def legacy(node):
    return blocks.DualAveragingSumsState(node.count, node.stage_count, node.alpha, node.anchor, node.center,
                                         optax.EmptyState())

  return jax.tree_util.tree_map(lambda n: legacy(n) if _is_center_state(n) else n, tree,
                                is_leaf=_is_center_state)


def prox_center_layout(restored, template):
  """RMDA states restored into :func:`gradient_sum_template` (with ``V_k``), converted to the center.

  Where ``template`` has a :class:`~rmda_jax.blocks.DualAveragingCenterState`,
  ``restored`` (a tree restored into ``gradient_sum_template(template)``) has a
  :class:`~rmda_jax.blocks.DualAveragingSumsState`; it becomes the center
  state with ``y_k = x0 - V_k/sqrt(k)`` (the anchor before the first step),
  the center the earlier layout computed at every step. A run resumed from it
  goes on to float32 rounding as it would have.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> from rmda_jax import dual_averaging
    >>> params = {"w": jnp.ones(2)}
    >>> tx = rmda_jax.rmda(0.5)
    >>> state = tx.init(params)
    >>> saved = dual_averaging.gradient_sum_template(state)   # as an earlier version saved it
    >>> saved = saved._replace(sums=saved.sums._replace(stage_count=jnp.int32(4),
    ...                                                 grad_sum={"w": jnp.full(2, 2.0)}))
    >>> dual_averaging.prox_center_layout(saved, state).center["w"].tolist()   # 1 - 2 / sqrt(4)
    [0.0, 0.0]
  """
  def convert(node, old):
    if not _is_center_state(node):
      return old
    if not isinstance(old, blocks.DualAveragingSumsState):
      raise ValueError(f"expected the earlier RMDA accumulator state here, got {type(old).__name__}.")
    return blocks.DualAveragingCenterState(old.count, old.stage_count, old.alpha, old.anchor, old.center)

  return jax.tree_util.tree_map(convert, template, restored, is_leaf=_is_center_state)


def structured_params(state, params=None, regularizer=None):
  """The exactly structured point ``z`` kept by :func:`rmda` / :func:`ramda`.

  Walks a possibly nested optimizer state (``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.apply_if_finite`` as made by
  ``skip_nonfinite``, ...) to the one dual-averaging state in it, or to the
  one :func:`rmda_jax.blocks.proximal_step` that keeps its point (a chain of
  :mod:`rmda_jax.blocks`).
  For the proximal baselines (``prox_sgd``, ``prox_adamw``, ``prox_ssi``),
  whose iterate is the prox output itself, pass ``params`` and get them back.
  For ``rmda(..., keep_point=False)``, pass the ``regularizer`` it uses and
  ``z`` is recomputed from the state (:func:`recompute_point`).

  Args:
    state: an optimizer state.
    params: the current params, returned for the proximal baselines (and
      giving the recomputed point their dtypes).
    regularizer: for an RMDA state without its point.

  Raises:
    ValueError: no (or more than one) dual-averaging state is found and the
      state is not a proximal baseline's; an RMDA state without its point
      and no ``regularizer``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), rmda_jax.rmda(0.1))
    >>> state = tx.init({"w": jnp.ones((2, 2))})
    >>> rmda_jax.structured_params(state)["w"].shape
    (2, 2)
  """
  from rmda_jax import proximal

  candidates = _find_states(state, (DualAveragingState, blocks.ProximalStepState))
  found = [s for s in candidates if not isinstance(s.structured, optax.EmptyState)]
  if len(found) == 1:
    return found[0].structured
  if len(found) > 1:
    raise ValueError(f"the state holds {len(found)} rmda/ramda states; pass the one you mean.")
  pointless = [s for s in candidates if isinstance(s, DualAveragingState)
               and isinstance(s.sq_grad_sum, optax.EmptyState)]
  if len(pointless) == 1:
    if regularizer is None:
      raise ValueError("this rmda state does not keep its point (keep_point=False): pass the regularizer "
                       "it uses, structured_params(state, regularizer=...), to recompute it.")
    z = recompute_point(pointless[0].sums, regularizer)
    return z if params is None else _common.cast_like(z, params)
  if params is not None and _find_states(state, (proximal.ProxSGDState, proximal.ProxAdamState)):
    return params
  raise ValueError(
      "no rmda/ramda state found in this optimizer state (for prox_sgd / prox_adamw / "
      "prox_ssi, the params themselves are structured: pass params=...)."
  )
