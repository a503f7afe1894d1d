r"""The metrics of dual averaging: from the accumulated sums to the prox subproblem.

Each block maps the accumulator's output, a
:class:`~rmda_jax.optim.accumulators.DualAverage`, to the
:class:`~rmda_jax.optim.proximal.Subproblem` its method solves:

* RMDA's :func:`sqrt_k_metric`, ``P_k = sqrt(k) I``: a plain prox at the
  center ``x0 - V_k / sqrt(k)``;
* RAMDA's :func:`cube_root_metric`, ``P_k = cbrt(U_k) + eps``;
* :func:`adam_metric`, ``P_k = sqrt(k) (sqrt(v_k / (1 - beta_2^k)) + eps)``
  (a variant, not in the papers).

Example:
  >>> import jax.numpy as jnp, optax
  >>> from rmda_jax import optim
  >>> sums = optim.accumulate_dual_averaging(1.0, sq_grads=True)
  >>> tx = optax.chain(sums, optim.cube_root_metric(eps=0.0))
  >>> params = {"w": jnp.zeros(1)}
  >>> problem, _ = tx.update({"w": jnp.array([8.0])}, tx.init(params), params)
  >>> float(problem.metric["w"][0])   # cbrt(1 * 8^2)
  4.0

References:
  Huang & Lee, "Regularized Adaptive Momentum Dual Averaging with an Efficient
  Inexact Subproblem Solver for Training Structured Neural Networks",
  NeurIPS 2024. arXiv:2403.14398
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, trees
from rmda_jax.optim import chain
from rmda_jax.optim.accumulators import DualAverage
from rmda_jax.optim.proximal import Subproblem, twin_of
from rmda_jax.optim.schedules import Stagewise, check_stages, decay


class AdamMetricState(NamedTuple):
  """State of :func:`adam_metric`.

  Attributes:
    count: int32, updates applied so far.
    nu: second-moment EMA of the gradients (float32).
  """

  count: jax.Array
  nu: optax.Params


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
    >>> from rmda_jax import optim
    >>> tx = optax.chain(optim.accumulate_dual_averaging(1.0), optim.sqrt_k_metric())
    >>> params = {"w": jnp.ones(2)}
    >>> out, _ = tx.update({"w": jnp.ones(2)}, tx.init(params), params)
    >>> out.b["w"].tolist(), float(out.scale)   # x0 - V/1, alpha/1
    ([0.0, 0.0], 1.0)
  """

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del params, extra_args
    sqrt_k = jnp.sqrt(updates.stage_count.astype(jnp.float32))
    if updates.center is not None:
      # kept by the accumulator, in a buffer of the state that every reader shares
      return Subproblem(
        updates.center, None, updates.alpha / sqrt_k, None, updates.anchor, updates.count
      ), state
    # a product, not a division, per entry: XLA recomputes cheap elementwise
    # expressions in each consumer but stores an "expensive" division's result
    inv_sqrt_k = 1 / sqrt_k

    def center(anchor: optax.Params, grad_sum: optax.Params) -> optax.Params:
      return jax.tree_util.tree_map(lambda x0, v: x0 - v * inv_sqrt_k, anchor, grad_sum)

    y = center(updates.anchor, updates.grad_sum)
    twin = twin_of(center, updates.anchor, updates.grad_sum)
    return Subproblem(
      y, None, updates.alpha / sqrt_k, None, updates.anchor, updates.count, twin
    ), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def cube_root(u: jax.Array) -> jax.Array:
  """``u ** (1/3)`` for ``u >= 0`` (0 at 0), by Newton's method on ``u ** (-1/3)``.

  In float32, ``y = u ** (-1/3)`` starts from the exponent-thirding bit trick
  (within about 10%) and takes three division-free Newton steps
  ``y <- y (4 - u y^3) / 3``; the cube root is ``u y^2``. The relative error
  is below 5e-7 over the normal float32 range (subnormals count as 0, as XLA
  flushes them), and the cost is a dozen multiplies per entry, with no
  division, logarithm or exponential (``benchmarks/README.md`` compares it
  with ``exp(log(u) / 3)`` and XLA's ``cbrt``). Other dtypes use
  ``jnp.cbrt``. ``+inf`` stays ``+inf``.

  Example:
    >>> import jax.numpy as jnp
    >>> from rmda_jax.optim.preconditioners import cube_root
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
  y = jax.lax.bitcast_convert_type(
    jnp.int32(0x54A2FA8C) - (bits * (1 / 3)).astype(jnp.int32), jnp.float32
  )
  for _ in range(3):
    y = y * (4 - safe * y * y * y) * (1 / 3)
  root = jnp.where(jnp.isinf(safe), safe, safe * y * y)
  return jnp.where(positive, root, 0)


def cube_root_preconditioner(sq_grad_sum: optax.Params, eps: jax.typing.ArrayLike) -> optax.Params:
  """RAMDA's diagonal metric ``P = cbrt(U) + eps`` (``U >= 0``)."""
  return jax.tree_util.tree_map(lambda u: cube_root(u) + eps, sq_grad_sum)


def _diagonal_subproblem(dual: DualAverage, metric) -> Subproblem:
  """``min_z <V, z - x0> + 1/2 <z - x0, P (z - x0)> + alpha lambda psi(z)``: ``b = P x0 - V``."""
  b = jax.tree_util.tree_map(lambda p, x0, v: p * x0 - v, metric, dual.anchor, dual.grad_sum)
  return Subproblem(b, metric, dual.alpha, None, dual.anchor, dual.count)


def cube_root_metric(
  eps: jax.typing.ArrayLike = 1e-6, stages: Stagewise | None = None
) -> optax.GradientTransformationExtraArgs:
  r"""RAMDA's metric: a :class:`DualAverage` (with ``U_k``) to its :class:`Subproblem`.

  .. math::

     P_k = \sqrt[3]{U_k} + \epsilon_k,\quad
     z_k = \arg\min_z \langle V_k, z - x_0\rangle
       + \tfrac12\langle z - x_0, P_k (z - x_0)\rangle + \alpha_k\lambda\psi(z),

  with ``epsilon_k = eps * stages.decay`` (``eps`` decays with the learning
  rate under a stage-wise schedule). The previous point is the warm start.

  Args:
    eps: ``epsilon >= 0``, a number or a scalar array.
    stages: the :class:`~rmda_jax.optim.schedules.Stagewise` of the accumulator,
      or None.

  Returns:
    A stateless ``optax.GradientTransformationExtraArgs``; the accumulator
    before it needs ``sq_grads=True``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> from rmda_jax import optim
    >>> tx = optax.chain(optim.accumulate_dual_averaging(1.0, sq_grads=True),
    ...                  optim.cube_root_metric(eps=0.0))
    >>> params = {"w": jnp.zeros(1)}
    >>> out, _ = tx.update({"w": jnp.array([2.0])}, tx.init(params), params)
    >>> round(float(out.metric["w"][0]), 4)   # cbrt(1 * 2^2)
    1.5874
  """
  checks.check_nonnegative(eps, "eps")
  check_stages(stages)

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del params, extra_args
    if isinstance(updates.sq_grad_sum, optax.EmptyState):
      raise ValueError(
        "cube_root_metric needs the squared-gradient sum: "
        "use accumulate_dual_averaging(..., sq_grads=True)."
      )
    precond = cube_root_preconditioner(updates.sq_grad_sum, eps * decay(stages, updates.count))
    return _diagonal_subproblem(updates, precond), state

  return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def adam_metric(
  b2: jax.typing.ArrayLike = 0.999, eps: jax.typing.ArrayLike = 1e-8
) -> optax.GradientTransformationExtraArgs:
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
  checks.check_in_range(b2, "b2", 0.0, 1.0)
  checks.check_nonnegative(eps, "eps")

  def init_fn(params: optax.Params) -> Any:
    return AdamMetricState(chain.zero_count(), trees.zeros_float32(params))

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del params, extra_args
    if updates.grads is None:
      raise ValueError(
        "adam_metric needs the gradients: use accumulate_dual_averaging(..., grads=True)."
      )
    nu = jax.tree_util.tree_map(
      lambda v, g: b2 * v + (1 - b2) * jnp.square(g.astype(v.dtype)), state.nu, updates.grads
    )
    t = chain.next_count(state.count)
    bias = 1 - b2 ** t.astype(jnp.float32)
    sqrt_k = jnp.sqrt(updates.stage_count.astype(jnp.float32))
    metric = jax.tree_util.tree_map(lambda v: sqrt_k * (jnp.sqrt(v / bias) + eps), nu)
    return _diagonal_subproblem(updates, metric), AdamMetricState(t, nu)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
