r"""The training step, written once: the command, the identification study and the notebooks use it.

.. math::

   (\ell, g) = (L(x_t; B_t), \nabla L(x_t; B_t)),\quad
   (u_t, s_{t+1}) = \mathrm{tx.update}(g, s_t, x_t),\quad
   x_{t+1} = x_t + u_t

:func:`make_step` returns the step as a pure function of
``(params, opt_state, *batch)``: jit it for a Python loop, or use it as the
body of a ``jax.lax.scan`` (:func:`rmda_jax.app.identification.track_supports`).
The optimizer's ``update`` gets the params (RMDA, RAMDA and the proximal
methods need them).

Example:
  >>> import jax, jax.numpy as jnp, rmda_jax
  >>> from rmda_jax.app import steps
  >>> loss = steps.softmax_cross_entropy(lambda p, x: x @ p["kernel"])
  >>> tx = rmda_jax.rmda(0.1, momentum=1.0, regularizer=rmda_jax.group_lasso(1e-3))
  >>> step = jax.jit(steps.make_step(loss, tx))
  >>> params = {"kernel": jnp.zeros((4, 3))}
  >>> params, state, value = step(params, tx.init(params), jnp.ones((2, 4)), jnp.array([0, 2]))
  >>> round(float(value), 4)   # log 3: the zero model's loss
  1.0986
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import optax


def softmax_cross_entropy(apply_fn: Callable) -> Callable:
  """``loss(params, x, y)``: mean cross-entropy of ``apply_fn(params, x)``'s logits.

  The labels ``y`` are integers (classes, or next tokens of a language model).
  """

  def loss(params, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply_fn(params, x), y).mean()

  return loss


def make_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
  """``step(params, opt_state, *batch) -> (params, opt_state, loss)`` (pure, not jitted)."""

  def step(params, opt_state, *batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return step
