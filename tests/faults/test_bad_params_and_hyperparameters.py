"""Params the optimizers cannot update, and hyperparameters that go wrong only inside the step.

Integer and complex params are refused at ``init`` naming the leaf. A learning rate, momentum or
strength that is NaN or out of range only under ``jax.jit`` (a traced value, a schedule) makes the
update NaN, never a finite structure made up by a bad threshold; in checked mode the step reports
it as a ``checkify`` error naming the argument, the value and the step.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.experimental import checkify

import rmda_jax
from rmda_jax.core import checks

REG = rmda_jax.group_lasso(0.01)
OPTIMIZERS = {
  "rmda": lambda lr=0.1, strength=None, momentum=0.1: rmda_jax.rmda(
    lr, momentum, regularizer=REG, strength=strength
  ),
  "ramda": lambda lr=0.01, strength=None, momentum=0.1: rmda_jax.ramda(
    lr, momentum, regularizer=REG, strength=strength
  ),
  "prox_sgd": lambda lr=0.1, strength=None, momentum=0.1: rmda_jax.prox_sgd(
    lr, momentum, regularizer=REG, strength=strength
  ),
  "prox_adamw": lambda lr=1e-3, strength=None, momentum=None: rmda_jax.prox_adamw(
    lr, regularizer=REG, strength=strength
  ),
  "prox_ssi": lambda lr=1e-3, strength=None, momentum=None: rmda_jax.prox_ssi(
    lr, regularizer=REG, strength=strength
  ),
}
PARAMS = {"w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)}
GRADS = {"w": jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)), jnp.float32)}


@pytest.mark.parametrize("name", [*OPTIMIZERS, "rigl"])
@pytest.mark.parametrize(
  "dtype, fragment", [(jnp.int32, "truncated"), (jnp.complex64, "real numbers"), (jnp.bool_, "")]
)
def test_non_floating_and_complex_params_are_refused_at_init_naming_the_leaf(name, dtype, fragment):
  if name == "rigl":
    tx = rmda_jax.rigl(optax.sgd(0.1), 0.5, end_step=10, update_every=2)
  else:
    tx = OPTIMIZERS[name]()
  params = {"dense": {"kernel": jnp.ones((3, 2)), "step": jnp.zeros((2, 2), dtype)}}
  with pytest.raises(TypeError, match=f"{name}.init: params leaf 'dense/step' has dtype") as err:
    tx.init(params)
  assert fragment in str(err.value)
  for ok in (jnp.float32, jnp.bfloat16, jnp.float16):
    tx.init({"w": jnp.ones((3, 2), ok)})


def _first_update(make, lr, strength):
  @jax.jit
  def step(lr, strength):
    tx = make(lr, strength)
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    return optax.apply_updates(PARAMS, updates)["w"]

  return step(jnp.float32(lr), jnp.float32(strength))


@pytest.mark.parametrize("name", OPTIMIZERS)
@pytest.mark.parametrize(
  "lr, strength", [(np.nan, 0.01), (-0.1, 0.01), (None, np.nan), (None, -1.0), (None, np.inf)]
)
def test_a_traced_bad_hyperparameter_makes_the_update_nan_not_a_fake_structure(name, lr, strength):
  make = OPTIMIZERS[name]
  good_lr = {"rmda": 0.1, "ramda": 0.01, "prox_sgd": 0.1}.get(name, 1e-3)
  out = _first_update(lambda lr_, s_: make(lr_, s_), good_lr if lr is None else lr, strength)
  assert bool(jnp.all(jnp.isnan(out))), out
  # the same traced path with valid values is finite and keeps the params' scale
  fine = _first_update(lambda lr_, s_: make(lr_, s_), good_lr, 0.01)
  assert bool(jnp.all(jnp.isfinite(fine))) and float(jnp.abs(fine).sum()) > 0


def test_a_schedule_that_turns_negative_is_nan_from_that_step_and_checked_mode_names_it():
  schedule = optax.linear_schedule(0.1, -0.1, 10)  # 0.1 - 0.02 t: negative from step 6
  tx = rmda_jax.rmda(schedule, regularizer=REG)

  def step(params, state):
    updates, state = tx.update(GRADS, state, params)
    return optax.apply_updates(params, updates), state

  params, state = PARAMS, tx.init(PARAMS)
  jitted = jax.jit(step)
  for t in range(8):
    params, state = jitted(params, state)
    # steps 0-5 use lr >= 0 (finite); from step 6 the learning rate is -0.02 and the point NaN
    assert bool(jnp.all(jnp.isfinite(params["w"]))) == (0.1 - 0.02 * t >= 0), t
  checks.set_checked_mode(True)
  try:
    checked = jax.jit(checkify.checkify(step))
    params, state = PARAMS, tx.init(PARAMS)
    errors = []
    for _ in range(8):
      err, (params, state) = checked(params, state)
      errors.append(err.get())
  finally:
    checks.set_checked_mode(False)
  assert errors[:6] == [None] * 6
  assert errors[6].startswith("learning_rate must be a finite number >= 0, got -0.02")
  assert "at step 6" in errors[6]
  with pytest.raises(checkify.JaxRuntimeError, match="learning_rate must be"):
    err.throw()


@pytest.mark.parametrize(
  "hyperparameters, message",
  [
    ({"strength": lambda count: -0.01 * (count + 1)}, "strength must be a finite number >= 0"),
    ({"momentum": lambda count: 1.5 + 0.0 * count}, r"momentum must be in \(0, 1\]"),
  ],
)
def test_checked_mode_catches_strength_and_momentum_schedules(hyperparameters, message):
  checks.set_checked_mode(True)
  try:
    tx = OPTIMIZERS["rmda"](**hyperparameters)

    @jax.jit
    @checkify.checkify
    def step(params, state):
      updates, state = tx.update(GRADS, state, params)
      return optax.apply_updates(params, updates), state

    err, _ = step(PARAMS, tx.init(PARAMS))
  finally:
    checks.set_checked_mode(False)
  with pytest.raises(checkify.JaxRuntimeError, match=message):
    err.throw()


def test_rigl_refuses_a_schedule_without_mask_updates_unless_the_masks_are_static():
  with pytest.raises(ValueError, match="none would be"):
    rmda_jax.rigl(optax.sgd(0.1), 0.5, end_step=50, update_every=100)
  tx = rmda_jax.rigl(optax.sgd(0.1), 0.5, end_step=50, update_every=100, drop_fraction=0.0)
  state = tx.init({"w": jnp.ones((8, 8))})
  assert int(jnp.sum(state.masks["w"])) == 32


@pytest.mark.parametrize("name", ["rmda", "prox_adamw"])
def test_a_regularizer_built_in_the_step_with_a_bad_traced_strength_gives_nan(name):
  make = {"rmda": rmda_jax.rmda, "prox_adamw": rmda_jax.prox_adamw}[name]

  @jax.jit
  def step(strength):
    tx = make(1e-2, regularizer=rmda_jax.group_lasso(strength))
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    return optax.apply_updates(PARAMS, updates)["w"]

  assert bool(jnp.all(jnp.isnan(step(jnp.float32(-1.0)))))
  assert bool(jnp.all(jnp.isnan(step(jnp.float32(np.nan)))))
  assert bool(jnp.all(jnp.isfinite(step(jnp.float32(0.01)))))
