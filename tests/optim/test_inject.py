"""Every optimizer under ``optax.inject_hyperparams`` with a regularizer passed as is
(not mistaken for a schedule) and every numeric hyperparameter injected; the
steps equal the plain optimizer's, and a hyperparameter changed in the state
takes effect."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax

PARAMS = {
  "w": jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32),
  "b": jnp.zeros(3),
}
GRADS = [
  jax.tree_util.tree_map(
    lambda x, k=k: jnp.asarray(np.random.default_rng(k).normal(size=x.shape), jnp.float32), PARAMS
  )
  for k in range(3)
]
CASES = {
  "rmda": dict(learning_rate=0.1, momentum=0.5),
  "ramda": dict(learning_rate=1e-2, momentum=0.5, eps=1e-6),
  "prox_sgd": dict(learning_rate=0.1, momentum=0.5),
  "prox_adamw": dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-8, weight_decay=1e-3),
  "prox_ssi": dict(learning_rate=1e-2, b1=0.8, b2=0.99, eps=1e-6, weight_decay=1e-3),
}


def _run(tx, steps=3):
  params, state = PARAMS, tx.init(PARAMS)
  update = jax.jit(tx.update)
  for g in GRADS[:steps]:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("name", list(CASES))
def test_injected_equals_plain_with_a_regularizer(name):
  factory = getattr(rmda_jax, name)
  reg = rmda_jax.group_lasso(0.05)
  injected = optax.inject_hyperparams(factory)(regularizer=reg, **CASES[name])
  got, state = _run(injected)
  want, _ = _run(factory(regularizer=reg, **CASES[name]))
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
    got,
    want,
  )
  assert set(state.hyperparams) == set(
    CASES[name]
  )  # every numeric one injected, the regularizer not


@pytest.mark.parametrize("name", list(CASES))
def test_an_injected_learning_rate_can_be_changed_in_the_state(name):
  factory = getattr(rmda_jax, name)
  injected = optax.inject_hyperparams(factory)(regularizer=rmda_jax.l1(1e-3), **CASES[name])
  state = injected.init(PARAMS)
  state.hyperparams["learning_rate"] = jnp.asarray(0.0)
  updates, _ = injected.update(GRADS[0], state, PARAMS)
  # a zero step: the params stay where they are (up to the round-off of the metric prox)
  assert all(float(jnp.abs(u).max()) <= 1e-6 for u in jax.tree_util.tree_leaves(updates))


def test_a_regularizer_is_not_callable():
  assert not callable(rmda_jax.group_lasso(1e-3))


def test_python_dash_m_runs_the_command_line():
  import subprocess
  import sys

  proc = subprocess.run(
    [sys.executable, "-m", "rmda_jax", "--help"], capture_output=True, text=True
  )
  assert proc.returncode == 0 and "train" in proc.stdout and "compact" in proc.stdout


def test_a_missing_optional_dependency_names_the_extra(monkeypatch):
  import builtins

  from rmda_jax.app import data

  real_import = builtins.__import__

  def no_sklearn(name, *args, **kwargs):
    if name.startswith("sklearn"):
      raise ImportError("No module named 'sklearn'")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_sklearn)
  with pytest.raises(data.DataError, match=r'pip install "rmda-jax\[examples\]"'):
    data._sklearn()


def test_the_package_is_typed_and_licensed():
  import importlib.resources
  import os

  assert importlib.resources.files("rmda_jax").joinpath("py.typed").is_file()
  assert os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "..", "LICENSE"))


STRENGTH = list(CASES)


@pytest.mark.parametrize("name", STRENGTH)
def test_the_strength_is_a_hyperparameter_injected_and_scheduled(name):
  factory = getattr(rmda_jax, name)
  injected = optax.inject_hyperparams(factory)(
    regularizer=rmda_jax.group_lasso(123.0), strength=0.3, **CASES[name]
  )
  got, state = _run(injected)
  want, _ = _run(factory(regularizer=rmda_jax.group_lasso(0.3), **CASES[name]))
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7),
    got,
    want,
  )
  assert "strength" in state.hyperparams
  # a schedule: lambda_t = 0.3 at every step equals the constant
  scheduled, _ = _run(
    factory(regularizer=rmda_jax.group_lasso(123.0), strength=lambda t: 0.3 + 0 * t, **CASES[name])
  )
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6),
    scheduled,
    want,
  )
  # raised in the state, it zeroes every group (lambda far above the gradients' scale)
  state = injected.init(PARAMS)
  state.hyperparams["strength"] = jnp.asarray(1e6)
  updates, state = injected.update(GRADS[0], state, PARAMS)
  z = rmda_jax.structured_params(state, optax.apply_updates(PARAMS, updates))
  assert float(jnp.abs(z["w"]).max()) == 0.0


@pytest.mark.parametrize("name", STRENGTH)
def test_a_strength_without_regularizer_or_negative_is_an_error(name):
  factory = getattr(rmda_jax, name)
  with pytest.raises(ValueError, match="no regularizer"):
    factory(learning_rate=0.1, strength=1e-3)
  with pytest.raises(ValueError, match="strength must be"):
    factory(learning_rate=0.1, regularizer=rmda_jax.l1(1.0), strength=-1.0)
