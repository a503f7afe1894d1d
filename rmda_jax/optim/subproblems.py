r"""The proximal baselines' subproblems: ProxSGD's, ProxGen's and ProxSSI's.

Each block maps a direction (ProxSGD's momentum, or Adam's moments from
:mod:`rmda_jax.optim.moments`) to the
:class:`~rmda_jax.optim.proximal.Subproblem` its method solves:

* :func:`proximal_gradient_subproblem`: ``z = prox_{eta lambda psi}(x - eta m)``;
* :func:`proxgen_subproblem`: the AdamW-preconditioned subproblem of ProxGen;
* :func:`prox_ssi_subproblem`: an Adam step, then the prox in Adam's metric.

References:
  Yang, Yuan, et al., "ProxSGD: Training Structured Neural Networks under
  Regularization and Constraints", ICLR 2020.

  Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured
  Neural Networks" (ProxGen), NeurIPS 2021.

  Deleu & Bengio, "Structured Sparsity Inducing Adaptive Optimizers for Deep
  Learning" (ProxSSI), 2021. arXiv:2102.03869
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, numerics
from rmda_jax.optim import chain
from rmda_jax.optim.proximal import Subproblem, twin_of
from rmda_jax.optim.schedules import value_at


def _check_adam_step(learning_rate, b1, b2, eps, weight_decay):
  checks.check_learning_rate(learning_rate)
  checks.check_in_range(b1, "b1", 0.0, 1.0)
  checks.check_in_range(b2, "b2", 0.0, 1.0)
  checks.check_nonnegative(eps, "eps")
  checks.check_nonnegative(weight_decay, "weight_decay")


def proximal_gradient_subproblem(
  learning_rate: optax.ScalarOrSchedule,
) -> optax.GradientTransformationExtraArgs:
  r"""A direction ``m`` to ProxSGD's subproblem ``z = prox_{eta lambda psi}(x - eta m)``.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping ``m`` to a
    :class:`Subproblem` with ``metric=None``; its state is a
    :class:`CountState`; ``update`` needs ``params``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> tx = rmda_jax.optim.proximal_gradient_subproblem(0.5)
    >>> params = {"w": jnp.ones(1)}
    >>> problem, _ = tx.update({"w": jnp.ones(1)}, tx.init(params), params)
    >>> problem.b["w"].tolist(), float(problem.scale)
    ([0.5], 0.5)
  """
  checks.check_learning_rate(learning_rate)

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    params = chain.require_params(params, "proximal_gradient_subproblem")
    lr = value_at(learning_rate, state.steps, checks.LEARNING_RATE)

    def center(params: optax.Params, direction: optax.Updates) -> optax.Params:
      return jax.tree_util.tree_map(lambda x, m: x.astype(m.dtype) - lr * m, params, direction)

    y = center(params, updates)
    twin = twin_of(center, params, updates)
    return (
      Subproblem(y, None, lr, None, None, state.steps, twin),
      chain.CountState(chain.next_count(state.steps)),
    )

  return optax.GradientTransformationExtraArgs(
    lambda params: chain.CountState(chain.zero_count()), update_fn
  )


def proxgen_subproblem(
  learning_rate: optax.ScalarOrSchedule,
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
    b1: :func:`~rmda_jax.optim.moments.adam_moments`' first decay rate in [0, 1)
      (for the bias correction).
    b2: its second decay rate in [0, 1) (for the bias correction).
    eps: ``epsilon >= 0``.
    weight_decay: decoupled decay ``w >= 0``.

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import optim
    >>> tx = optax.chain(optim.adam_moments(), optim.proxgen_subproblem(0.1, eps=0.0))
    >>> params = {"w": jnp.zeros(1)}
    >>> problem, _ = tx.update({"w": jnp.full(1, 3.0)}, tx.init(params), params)
    >>> round(float(problem.b["w"][0] / problem.metric["w"][0]), 4)   # Adam's step 1: -lr sign(g)
    -0.1
  """
  _check_adam_step(learning_rate, b1, b2, eps, weight_decay)

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    params = chain.require_params(params, "proxgen_subproblem")
    lr = value_at(learning_rate, updates.count, checks.LEARNING_RATE)
    tf = chain.next_count(updates.count).astype(jnp.float32)
    x = jax.tree_util.tree_map(
      lambda p, m: (1 - lr * weight_decay) * p.astype(m.dtype), params, updates.mu
    )
    bias2 = jnp.sqrt(1 - b2**tf)
    a = lr / (1 - b1**tf)
    # sqrt(v) / bias2 + eps ending in the division: XLA does not duplicate a
    # division into its consumers, so D is stored once (the solver reads it
    # anyway) instead of sqrt(v) and D both
    diag = jax.tree_util.tree_map(lambda v: (jnp.sqrt(v) + eps * bias2) / bias2, updates.nu)
    b = jax.tree_util.tree_map(lambda d, xx, m: d * xx - a * m, diag, x, updates.mu)
    return Subproblem(b, diag, lr, x, x, updates.count), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def prox_ssi_subproblem(
  learning_rate: optax.ScalarOrSchedule,
  b1: jax.typing.ArrayLike = 0.9,
  b2: jax.typing.ArrayLike = 0.999,
  eps: jax.typing.ArrayLike = 1e-6,
  weight_decay: jax.typing.ArrayLike = 0.0,
  bias_correction: bool = False,
) -> optax.GradientTransformationExtraArgs:
  r"""ProxSSI's subproblem: an Adam step, then the prox in Adam's metric.

  .. math::

     D = \sqrt{v_t} + \epsilon,\quad
     y = x - \eta \frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m_t}{D}
         \ (\text{then } y \leftarrow (1 - \eta w) y),\\
     z = \arg\min_z \tfrac12 (z - y)^\top D (z - y) + \eta\lambda\psi(z)
     \quad (b = D y,\ \text{warm start } x).

  ``D`` has no bias correction while the Adam step has one, as in the
  original. With ``bias_correction`` (a variant) the moments are corrected
  inside the metric too, ``D = sqrt(v_t / (1 - beta_2^t)) + eps`` and
  ``y = x - eta m_t / ((1 - beta_1^t) D)``, so the Adam step and the prox
  share the metric.

  Args:
    learning_rate: ``eta >= 0``, a number, a scalar array or a schedule.
    b1: :func:`~rmda_jax.optim.moments.adam_moments`' first decay rate in [0, 1).
    b2: its second decay rate in [0, 1).
    eps: ``epsilon >= 0``.
    weight_decay: ``w >= 0``, applied to the Adam step.
    bias_correction: False (the original's metric) or True (see above).

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``; ``update`` needs
    ``params``.

  Example:
    >>> import jax.numpy as jnp, optax
    >>> from rmda_jax import optim
    >>> tx = optax.chain(optim.adam_moments(), optim.prox_ssi_subproblem(0.1, eps=0.0))
    >>> params = {"w": jnp.zeros(1)}
    >>> problem, _ = tx.update({"w": jnp.full(1, 3.0)}, tx.init(params), params)
    >>> round(float(problem.anchor["w"][0]), 4)   # the Adam step y: -lr sign(g)
    -0.1
  """
  _check_adam_step(learning_rate, b1, b2, eps, weight_decay)
  if not isinstance(bias_correction, bool):
    raise TypeError(f"bias_correction must be True or False, got {bias_correction!r}.")

  def update_fn(
    updates: Any,
    state: Any,
    params: optax.Params | None = None,
    **extra_args: Any,
  ) -> tuple[Any, Any]:
    del extra_args
    params = chain.require_params(params, "prox_ssi_subproblem")
    lr = value_at(learning_rate, updates.count, checks.LEARNING_RATE)
    tf = chain.next_count(updates.count).astype(jnp.float32)
    if bias_correction:
      bias1, bias2 = 1 - b1**tf, 1 - b2**tf
      diag = jax.tree_util.tree_map(lambda v: jnp.sqrt(v / bias2) + eps, updates.nu)

      def step(m: jax.Array, d: jax.Array) -> jax.Array:
        return lr * numerics.safe_divide(m / bias1, d)

    else:
      diag = jax.tree_util.tree_map(lambda v: jnp.sqrt(v) + eps, updates.nu)
      scale = lr * jnp.sqrt(1 - b2**tf) / (1 - b1**tf)

      def step(m: jax.Array, d: jax.Array) -> jax.Array:
        return scale * numerics.safe_divide(m, d)

    y = jax.tree_util.tree_map(
      lambda p, m, d: p.astype(d.dtype) - step(m, d), params, updates.mu, diag
    )
    y = jax.tree_util.tree_map(lambda yy: yy - lr * weight_decay * yy, y)
    b = jax.tree_util.tree_map(lambda d, yy: d * yy, diag, y)
    return Subproblem(b, diag, lr, params, y, updates.count), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
