"""Proximal baselines: ProxSGD, ProxGen with an AdamW base (``prox_adamw``), ProxSSI.

They share the regularizers and the subproblem solvers of RAMDA; their
iterate *is* the prox output, so the params are exactly structured after
every step (but the structure keeps changing with the gradient noise, which
is what RMDA/RAMDA fix). The dense baseline is plain ``optax.sgd(lr,
momentum=0.9)``. Learning-rate drops: pass an optax schedule, e.g.
``rmda_jax.stagewise([...]).learning_rate(0.1)``; their moments are not
reset at milestones, as in the papers.

Each is a short chain of the building blocks of :mod:`rmda_jax.optim`:
``dampened_momentum -> proximal_gradient_subproblem -> proximal_step ->
to_updates`` for ProxSGD, ``adam_moments -> proxgen_subproblem |
prox_ssi_subproblem -> proximal_step -> to_updates`` for ProxGen / ProxSSI
(one Adam-moments block: the two methods bias-correct differently, so the
moments are passed on raw rather than as ``optax.scale_by_adam``'s direction).
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import optax

from rmda_jax.core import checks
from rmda_jax.optim import chain
from rmda_jax.optim.moments import DampenedMomentumState, adam_moments, dampened_momentum
from rmda_jax.optim.proximal import ProximalStepState, proximal_step
from rmda_jax.optim.subproblems import (
  prox_ssi_subproblem,
  proxgen_subproblem,
  proximal_gradient_subproblem,
)
from rmda_jax.optim.updates import to_updates
from rmda_jax.prox.regularizer import Regularizer, check_regularizer
from rmda_jax.prox.solvers import Solver


class ProxSGDState(NamedTuple):
  """State of :func:`prox_sgd`: the states of its blocks.

  Attributes:
    momentum_state: :class:`~rmda_jax.optim.moments.DampenedMomentumState` of
      :func:`~rmda_jax.optim.moments.dampened_momentum`.
    subproblem: :class:`~rmda_jax.optim.chain.CountState` of
      :func:`~rmda_jax.optim.subproblems.proximal_gradient_subproblem`.
    step: :class:`~rmda_jax.optim.proximal.ProximalStepState` of
      :func:`~rmda_jax.optim.proximal.proximal_step` (both fields empty).
    updates: ``optax.EmptyState()`` of :func:`~rmda_jax.optim.updates.to_updates`.
    count: int32, updates applied so far.
    momentum: the dampened gradient average ``m`` (float32).
  """

  momentum_state: DampenedMomentumState
  subproblem: chain.CountState
  step: ProximalStepState
  updates: optax.EmptyState

  @property
  def count(self) -> jax.Array:
    return self.momentum_state.count

  @property
  def momentum(self) -> optax.Params:
    return self.momentum_state.momentum


class ProxAdamState(NamedTuple):
  """State of :func:`prox_adamw` and :func:`prox_ssi`: the states of their blocks.

  Attributes:
    moments: ``optax.ScaleByAdamState`` of :func:`~rmda_jax.optim.moments.adam_moments`.
    subproblem: ``optax.EmptyState()`` of the subproblem block.
    step: :class:`~rmda_jax.optim.proximal.ProximalStepState` of
      :func:`~rmda_jax.optim.proximal.proximal_step` (the solver info only).
    updates: ``optax.EmptyState()`` of :func:`~rmda_jax.optim.updates.to_updates`.
    count: int32, updates applied so far.
    mu: first-moment EMA (float32).
    nu: second-moment EMA (float32).
    solver_info: iterations and residual of the last subproblem solve.
  """

  moments: optax.ScaleByAdamState
  subproblem: optax.EmptyState
  step: ProximalStepState
  updates: optax.EmptyState

  @property
  def count(self) -> jax.Array:
    return cast(jax.Array, self.moments.count)

  @property
  def mu(self) -> optax.Params:
    return self.moments.mu

  @property
  def nu(self) -> optax.Params:
    return self.moments.nu

  @property
  def solver_info(self) -> Any:
    return self.step.solver_info


def _check(learning_rate, regularizer, skip_nonfinite):
  """Validate the shared arguments; returns ``max_consecutive_errors`` (None: no skipping)."""
  if isinstance(learning_rate, Regularizer):
    raise TypeError(
      f"learning_rate must be a number, a scalar array or an optax schedule, got a "
      f"regularizer ({type(learning_rate).__name__}): pass it as regularizer=..."
    )
  checks.check_learning_rate(learning_rate)
  check_regularizer(regularizer)
  return checks.check_skip_nonfinite(skip_nonfinite)


def prox_sgd(
  learning_rate: optax.ScalarOrSchedule,
  momentum: optax.ScalarOrSchedule = 0.1,
  regularizer: Regularizer | None = None,
  skip_nonfinite: bool | int = False,
  strength: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
  r"""Proximal SGD with the reference's dampened momentum (ProxSGD).

  .. math::

     m_t = (1 - c) m_{t-1} + c\, g_t\ (m_0 = 0),\qquad
     x_t = \mathrm{prox}_{\eta\lambda\psi}(x_{t-1} - \eta\, m_t).

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule
      (the papers use 0.1).
    momentum: ``c`` in (0, 1]; 1 is plain proximal SGD, the default 0.1 is
      heavy ball with ``beta = 0.9`` and dampening 0.1 (the papers' setting).
      A number, a scalar array or a schedule.
    regularizer: a rmda_jax regularizer or None.
    skip_nonfinite: skip a step whose gradient has a NaN or an infinite
      entry: the update is zero and the state is left as it was (the
      transformation is wrapped in ``optax.apply_if_finite``, whose
      ``ApplyIfFiniteState`` holds this optimizer's state and counts the
      skipped steps). ``True`` skips every such step; an integer ``n >= 1``
      gives up after ``n`` consecutive ones and applies the step.
    strength: ``lambda >= 0`` in place of ``regularizer.strength``: a number,
      a scalar array or a schedule of the step count, injectable with
      ``optax.inject_hyperparams``; None keeps the regularizer's.

  Raises:
    TypeError / ValueError: an argument of the wrong type or out of range
      (traced hyperparameters are not checked); in ``update``, grads or a
      state whose tree structure or shapes differ from the params'.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = rmda_jax.prox_sgd(1.0, momentum=1.0, regularizer=rmda_jax.l1(0.5))
    >>> params = {"w": jnp.array([[2.0, 0.3]])}
    >>> updates, state = tx.update({"w": jnp.array([[0.5, -0.1]])}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"].tolist()   # soft(x - lr g, lr lambda)
    [[1.0, 0.0]]

  References:
    Yang, Yuan, et al., "ProxSGD: Training Structured Neural Networks under
    Regularization and Constraints", ICLR 2020.
  """
  max_errors = _check(learning_rate, regularizer, skip_nonfinite)
  checks.check_momentum(momentum)
  tx = chain.named_chain(
    ProxSGDState,
    dampened_momentum(momentum),
    proximal_gradient_subproblem(learning_rate),
    proximal_step(regularizer, solver=None, keep_point=False, strength=strength),
    to_updates(),
    check=_checker("prox_sgd", lambda state: state.momentum),
    name="prox_sgd",
  )
  return chain.skipping_nonfinite(tx, max_errors)


def _checker(name, state_tree):
  def check(grads, state, params):
    chain.check_update_args(grads, state_tree(state), params, name)

  return check


def _prox_adam(name, subproblem, b1, b2, regularizer, solver, max_errors, strength=None):
  """``adam_moments -> subproblem -> proximal_step -> to_updates`` with a :class:`ProxAdamState`."""
  tx = chain.named_chain(
    ProxAdamState,
    adam_moments(b1, b2),
    subproblem,
    proximal_step(regularizer, solver, keep_point=False, strength=strength),
    to_updates(),
    check=_checker(name, lambda state: state.mu),
    name=name,
  )
  return chain.skipping_nonfinite(tx, max_errors)


def prox_adamw(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  regularizer: Regularizer | None = None,
  solver: str | Solver = "auto",
  skip_nonfinite: bool | int = False,
  strength: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
  r"""ProxGen with an AdamW base: a preconditioned proximal step.

  .. math::

     x \leftarrow (1 - \eta w) x,\ m_t, v_t \text{ as Adam},\
     D = \sqrt{v_t}/\sqrt{1 - \beta_2^t} + \epsilon,\ a = \eta/(1 - \beta_1^t),\\
     x_t = \arg\min_z \langle a m_t, z - x\rangle + \tfrac12\langle z - x, D (z - x)\rangle
           + \eta\lambda\psi(z).

  Without a regularizer this is AdamW. The subproblem uses the shared solver
  (exact for L1 / group-LASSO, proximal gradient warm-started at ``x``
  otherwise); see ``state.solver_info``.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule
      (the papers use 1e-3).
    b1: Adam's first-moment decay rate, in [0, 1).
    b2: Adam's second-moment decay rate, in [0, 1).
    eps: ``epsilon >= 0`` added to the bias-corrected ``sqrt(v)``.
    weight_decay: decoupled decay ``w >= 0`` applied first.
    regularizer: a rmda_jax regularizer or None.
    solver: as in :func:`rmda_jax.ramda`.
    skip_nonfinite: as in :func:`prox_sgd`: skip (``True``, or at most ``n``
      consecutive) steps with a non-finite gradient, leaving the state as it
      was (``optax.apply_if_finite``).
    strength: as in :func:`prox_sgd` (``lambda`` in place of the regularizer's).

  ``b1``, ``b2``, ``eps`` and ``weight_decay`` are numbers or scalar arrays.

  Raises:
    TypeError / ValueError: as in :func:`prox_sgd`.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = rmda_jax.prox_adamw(0.1, regularizer=rmda_jax.l1(1.0))
    >>> params = {"w": jnp.array([[1.0, 0.05]])}
    >>> updates, state = tx.update({"w": jnp.array([[0.2, 0.2]])}, tx.init(params), params)
    >>> w = optax.apply_updates(params, updates)["w"]
    >>> round(float(w[0, 0]), 4), float(w[0, 1])   # soft(x - lr, lr lambda / D), D = |g| at t = 1
    (0.4, 0.0)

  References:
    Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured
    Neural Networks", NeurIPS 2021.
  """
  max_errors = _check(learning_rate, regularizer, skip_nonfinite)
  subproblem = proxgen_subproblem(learning_rate, b1, b2, eps, weight_decay)
  return _prox_adam("prox_adamw", subproblem, b1, b2, regularizer, solver, max_errors, strength)


def prox_ssi(
  learning_rate: optax.ScalarOrSchedule,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-6,
  weight_decay: float = 0.0,
  regularizer: Regularizer | None = None,
  solver: str | Solver = "auto",
  skip_nonfinite: bool | int = False,
  bias_correction: bool = False,
  strength: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformation:
  r"""ProxSSI: an Adam step, then the prox in Adam's metric (Deleu & Bengio).

  .. math::

     D = \sqrt{v_t} + \epsilon,\quad
     y = x - \eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m_t}{D}
         \ (\text{then } y \leftarrow (1 - \eta w) y),\\
     x_t = \arg\min_z \tfrac12 (z - y)^\top D (z - y) + \eta\lambda\psi(z).

  ``D`` has no bias correction inside the prox while the Adam step has one,
  faithful to the original (the two metrics agree as ``t`` grows). For
  group-LASSO the prox is the exact secular-equation solve; for L1 a closed
  form.

  ``bias_correction=True`` (a variant, not the original) corrects Adam's
  moments inside the metric too, so the Adam step and the prox share it:

  .. math::

     \hat m_t = \frac{m_t}{1-\beta_1^t},\quad \hat v_t = \frac{v_t}{1-\beta_2^t},\quad
     \hat D = \sqrt{\hat v_t} + \epsilon,\quad
     y = x - \eta\, \hat m_t / \hat D\ (\text{then } y \leftarrow (1 - \eta w) y),\\
     x_t = \arg\min_z \tfrac12 (z - y)^\top \hat D (z - y) + \eta\lambda\psi(z).

  In the faithful metric the first steps see ``D = sqrt(v_t) ~ sqrt(1 -
  beta_2^t) |g|`` (about ``0.03 |g|`` at ``t = 1``), so the per-coordinate
  threshold ``eta lambda / D`` is up to ``1/sqrt(1 - beta_2) ~ 32`` times
  larger than in the corrected one until ``t`` is a few thousand steps;
  a strength that suits ProxGen then zeroes every group in the first steps
  (``benchmarks/pareto.py``). With the correction the subproblem is
  ProxGen's: ``<a m_t, z - x> + 1/2 (z - x)^T D (z - x)`` with ``a = eta /
  (1 - beta_1^t)`` equals ``1/2 (z - y)^T D (z - y)`` up to a constant, so
  ``prox_ssi(..., bias_correction=True)`` is :func:`prox_adamw` (without
  decay, or with decay applied to ``y`` instead of ``x``) up to ``eps``
  (``1e-6`` here, ``1e-8`` there): the faithful ProxSSI differs from ProxGen
  by its uncorrected metric alone.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule
      (the papers use 1e-3).
    b1: the first-moment decay rate, in [0, 1).
    b2: the second-moment decay rate, in [0, 1).
    eps: ``epsilon >= 0`` (1e-6 as in the reference).
    weight_decay: ``w >= 0``, applied to the Adam step.
    regularizer: a rmda_jax regularizer or None.
    solver: as in :func:`rmda_jax.ramda`.
    skip_nonfinite: as in :func:`prox_adamw` (and the types of ``b1``, ``b2``,
      ``eps`` and ``weight_decay``).
    bias_correction: False (default) is the original's metric ``sqrt(v_t) +
      eps``; True uses ``sqrt(v_t / (1 - beta_2^t)) + eps`` in both the Adam
      step and the prox (see above).
    strength: as in :func:`prox_sgd`.

  Raises:
    TypeError / ValueError: as in :func:`prox_sgd`.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = rmda_jax.prox_ssi(0.1, regularizer=rmda_jax.group_lasso(10.0))
    >>> params = {"w": jnp.ones((2, 2))}
    >>> updates, state = tx.update({"w": jnp.full((2, 2), 0.1)}, tx.init(params), params)
    >>> optax.apply_updates(params, updates)["w"].tolist()   # every input group below the threshold
    [[0.0, 0.0], [0.0, 0.0]]

  References:
    Deleu & Bengio, "Structured Sparsity Inducing Adaptive Optimizers for Deep
    Learning", 2021. arXiv:2102.03869
  """
  max_errors = _check(learning_rate, regularizer, skip_nonfinite)
  subproblem = prox_ssi_subproblem(learning_rate, b1, b2, eps, weight_decay, bias_correction)
  return _prox_adam("prox_ssi", subproblem, b1, b2, regularizer, solver, max_errors, strength)
