"""Discrete-weight regularizers: projection onto the set, the penalty's prox
against a brute-force 1-D minimization, and training onto the set."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rmda_jax
from rmda_jax import metrics

value_sets = st.lists(
  st.floats(-3, 3, allow_nan=False, width=32), min_size=1, max_size=4, unique=True
).filter(lambda v: min(np.diff(sorted(v)), default=1) > 1e-2)
points = st.lists(st.floats(-5, 5, allow_nan=False, width=32), min_size=1, max_size=12)


def brute_force_prox(x, t, values, diag=1.0):
  """argmin_z diag/2 z^2 - diag x z + t min_k |z - v_k| on a fine grid, refined."""
  grid = np.linspace(-8, 8, 160001)

  def objective(z):
    return diag / 2 * (z - x) ** 2 + t * np.min(np.abs(z[:, None] - values), axis=1)

  z0 = grid[np.argmin(objective(grid))]
  fine = np.linspace(z0 - 2e-4, z0 + 2e-4, 4001)
  candidates = np.concatenate([fine, np.asarray(values, float)])  # kinks exactly
  return candidates[np.argmin(objective(candidates))], objective


@settings(max_examples=60, deadline=None)
@given(values=value_sets, xs=points)
def test_projection_lands_exactly_on_the_nearest_value(values, xs):
  reg = rmda_jax.discrete_set(values)
  x = jnp.asarray([xs], jnp.float32)
  z = np.asarray(reg.prox({"w": x}, 1.0)["w"])[0]
  allowed = np.asarray(sorted(values), np.float32)
  assert np.all(np.isin(z, allowed))
  distance = np.abs(np.asarray(xs, np.float32)[:, None] - allowed).min(axis=1)
  np.testing.assert_allclose(np.abs(np.asarray(xs, np.float32) - z), distance, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(values=value_sets, xs=points, t=st.floats(0.0, 2.0))
def test_penalty_prox_matches_brute_force(values, xs, t):
  reg = rmda_jax.discrete_penalty(1.0, values)
  z = np.asarray(reg.prox({"w": jnp.asarray([xs], jnp.float32)}, t)["w"])[0]
  allowed = np.asarray(values, float)
  for x, zi in zip(np.asarray(xs, np.float32).astype(float), z):
    best, objective = brute_force_prox(x, t, allowed)
    # objective values agree (the minimizer can be non-unique at a midpoint)
    assert objective(np.array([float(zi)]))[0] <= objective(np.array([best]))[0] + 1e-5


def test_diagonal_metric_prox_matches_brute_force():
  rng = np.random.default_rng(0)
  values = (-1.0, 0.0, 0.5)
  b = rng.normal(size=(3, 5)).astype(np.float32) * 2
  d = rng.uniform(0.2, 3.0, size=(3, 5)).astype(np.float32)
  t = 0.3
  pen = rmda_jax.discrete_penalty(1.0, values)
  z = np.asarray(pen.prox_diag({"w": jnp.asarray(b)}, {"w": jnp.asarray(d)}, t)["w"])
  for bi, di, zi in zip(b.ravel(), d.ravel(), z.ravel()):
    best, objective = brute_force_prox(float(bi / di), t, np.asarray(values), diag=float(di))
    assert objective(np.array([float(zi)]))[0] <= objective(np.array([best]))[0] + 1e-5
  proj = np.asarray(
    rmda_jax.discrete_set(values).prox_diag({"w": jnp.asarray(b)}, {"w": jnp.asarray(d)})["w"]
  )
  nearest = np.asarray(values)[np.abs((b / d)[..., None] - np.asarray(values)).argmin(-1)]
  np.testing.assert_array_equal(proj, nearest.astype(np.float32))


def test_values_value_and_metric():
  reg = rmda_jax.discrete_set((-1, 0, 1), scale="fan_in")
  params = {"Dense_0": {"kernel": jnp.full((16, 3), 0.3), "bias": jnp.ones(3)}}
  z = reg.prox(params)
  np.testing.assert_array_equal(np.asarray(z["Dense_0"]["kernel"]), 0.25)  # 1/sqrt(16)
  np.testing.assert_array_equal(np.asarray(z["Dense_0"]["bias"]), 1.0)  # unregularized
  assert float(reg.value(z)) == 0.0 and np.isinf(float(reg.value(params)))
  assert float(metrics.on_set_fraction(z, reg)) == 1.0
  assert float(metrics.on_set_fraction(params, reg)) == 0.0
  pen = rmda_jax.discrete_penalty(2.0, (-1.0, 1.0))
  np.testing.assert_allclose(
    float(pen.value({"w": jnp.array([[0.5, -2.0, 1.0]])})), 2.0 * (0.5 + 1.0)
  )


def test_rmda_trains_onto_the_set_with_the_momentum_ramp():
  rng = np.random.default_rng(0)
  target = jnp.asarray(rng.normal(size=(8, 4)) * 0.8, jnp.float32)
  reg = rmda_jax.discrete_set((-1.0, 0.0, 1.0))

  def loss(w):
    return 0.5 * float(jnp.sum((w - target) ** 2))

  for name, tx in {
    "rmda": rmda_jax.rmda(0.1, momentum=0.1, regularizer=reg, stages=rmda_jax.stagewise([60])),
    "ramda": rmda_jax.ramda(0.05, momentum=0.1, regularizer=reg, stages=rmda_jax.stagewise([60])),
  }.items():

    def body(carry, _, tx=tx):
      params, state = carry
      updates, state = tx.update({"w": params["w"] - target}, state, params)
      return (optax.apply_updates(params, updates), state), None

    params = {"w": jnp.zeros((8, 4))}
    (params, state), _ = jax.lax.scan(body, (params, tx.init(params)), None, length=200)
    w = np.asarray(params["w"])
    assert np.all(np.isin(w, [-1.0, 0.0, 1.0])), name  # the params themselves are discrete
    np.testing.assert_array_equal(w, np.asarray(rmda_jax.structured_params(state)["w"]))
    assert (w != 0).any() and loss(w) < 0.6 * loss(jnp.zeros_like(target)), name


@pytest.mark.parametrize(
  "make",
  [
    lambda: rmda_jax.discrete_set(()),
    lambda: rmda_jax.discrete_set((1, 1)),
    lambda: rmda_jax.discrete_set((0, float("inf"))),
    lambda: rmda_jax.discrete_set((0, 1), scale="fan_out"),
    lambda: rmda_jax.discrete_penalty(-1.0, (0, 1)),
  ],
)
def test_bad_arguments(make):
  with pytest.raises(ValueError, match="values|scale|strength"):
    make()
