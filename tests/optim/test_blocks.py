"""The building blocks (rmda_jax.optim): composition, their own math, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax import optim


def _params():
  rng = np.random.default_rng(0)
  return {
    "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=3), jnp.float32),
  }


def _grads(t):
  rng = np.random.default_rng(100 + t)
  return {
    "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
    "b": jnp.asarray(rng.normal(size=3), jnp.float32),
  }


def test_one_state_type_for_both_methods():
  params = _params()
  s_rmda = rmda_jax.rmda(0.1).init(params)
  s_ramda = rmda_jax.ramda(0.1).init(params)
  assert type(s_rmda) is type(s_ramda) is rmda_jax.DualAveragingState
  assert s_rmda._fields == s_ramda._fields
  assert isinstance(s_rmda.sq_grad_sum, optax.EmptyState) and isinstance(
    s_rmda.solver_info, optax.EmptyState
  )
  assert s_ramda.sq_grad_sum["w"].dtype == jnp.float32 and int(s_ramda.solver_info.iterations) == 0
  # the same params-shaped leaves in the same places, besides U
  assert len(jax.tree_util.tree_leaves(s_ramda)) == len(jax.tree_util.tree_leaves(s_rmda)) + 2 + 2


def test_adam_moments_match_optax_scale_by_adam():
  params = _params()
  ours, theirs = optim.adam_moments(0.8, 0.95), optax.scale_by_adam(0.8, 0.95)
  s1, s2 = ours.init(params), theirs.init(params)
  for t in range(5):
    out, s1 = ours.update(_grads(t), s1, params)
    _, s2 = theirs.update(_grads(t), s2, params)
    assert int(out.count) == t
    for a, b in zip(
      jax.tree_util.tree_leaves((s1.mu, s1.nu)), jax.tree_util.tree_leaves((s2.mu, s2.nu))
    ):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert int(s1.count) == int(s2.count) == 5


def test_adam_metric_variant_against_numpy():
  """Dual averaging with Adam's second moment: z = x0 - V / P,
  P = sqrt(k) (sqrt(v / (1 - b2^t)) + eps)."""
  params = _params()
  b2, eps, lr = 0.9, 1e-3, 0.05
  tx = optax.chain(
    optim.accumulate_dual_averaging(lr, grads=True),
    optim.adam_metric(b2, eps),
    optim.proximal_step(None),
    optim.momentum_average(1.0),
  )
  state = tx.init(params)
  x0 = {n: np.asarray(p, np.float64) for n, p in params.items()}
  v_sum = {n: np.zeros_like(p) for n, p in x0.items()}
  nu = {n: np.zeros_like(p) for n, p in x0.items()}
  x = params
  for k in range(1, 6):
    g = _grads(k)
    updates, state = tx.update(g, state, x)
    x = optax.apply_updates(x, updates)
    for n in x0:
      gn = np.asarray(g[n], np.float64)
      v_sum[n] += lr * np.sqrt(k) * gn
      nu[n] = b2 * nu[n] + (1 - b2) * gn**2
      metric = np.sqrt(k) * (np.sqrt(nu[n] / (1 - b2**k)) + eps)
      np.testing.assert_allclose(np.asarray(x[n]), x0[n] - v_sum[n] / metric, rtol=2e-5, atol=1e-6)
  np.testing.assert_array_equal(
    np.asarray(rmda_jax.structured_params(state)["w"]), np.asarray(x["w"])
  )


def test_a_chain_of_blocks_under_apply_if_finite_and_inject_hyperparams():
  params = _params()
  reg = rmda_jax.group_lasso(0.5)

  def make(learning_rate, momentum):
    return optax.chain(
      optim.accumulate_dual_averaging(learning_rate, sq_grads=True),
      optim.cube_root_metric(1e-6),
      optim.proximal_step(reg),
      optim.momentum_average(momentum),
    )

  tx = optax.apply_if_finite(optax.inject_hyperparams(make)(learning_rate=0.1, momentum=0.5), 3)
  ref = rmda_jax.ramda(0.1, momentum=0.5, regularizer=reg)
  state, ref_state, x, ref_x = tx.init(params), ref.init(params), params, params
  step = jax.jit(tx.update)
  for t in range(4):
    updates, state = step(_grads(t), state, x)
    x = optax.apply_updates(x, updates)
    ref_updates, ref_state = ref.update(_grads(t), ref_state, ref_x)
    ref_x = optax.apply_updates(ref_x, ref_updates)
  for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(ref_x)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  z = rmda_jax.structured_params(state)
  assert np.any(np.all(np.asarray(z["w"]) == 0, axis=0)) or np.any(
    np.all(np.asarray(z["w"]) == 0, axis=1)
  )
  shardings = rmda_jax.optim.sharding.state_shardings(tx, params)
  assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(state)


def test_misassembled_chains_say_what_is_missing():
  params = _params()
  with pytest.raises(ValueError, match="sq_grads=True"):
    tx = optax.chain(optim.accumulate_dual_averaging(0.1), optim.cube_root_metric())
    tx.update(_grads(0), tx.init(params), params)
  with pytest.raises(ValueError, match="grads=True"):
    tx = optax.chain(optim.accumulate_dual_averaging(0.1), optim.adam_metric())
    tx.update(_grads(0), tx.init(params), params)
  with pytest.raises(ValueError, match="metric=None"):
    tx = optax.chain(
      optim.accumulate_dual_averaging(0.1, sq_grads=True),
      optim.cube_root_metric(),
      optim.proximal_step(None, solver=None),
    )
    tx.update(_grads(0), tx.init(params), params)
  with pytest.raises(ValueError, match="needs the current params"):
    optim.momentum_average(0.5).update(params, optim.momentum_average(0.5).init(params))
  with pytest.raises(ValueError, match="momentum"):
    optim.momentum_average(1.5)
  with pytest.raises(ValueError, match="eps"):
    optim.cube_root_metric(-1.0)
  with pytest.raises(TypeError, match="stages"):
    optim.accumulate_dual_averaging(0.1, stages=[10])


def test_dual_averaging_center_against_numpy_sums():
  """y_k = x0 - V_k / sqrt(k), V_k = sum_i eta_i sqrt(i) g_i, alpha_k = sum_i eta_i sqrt(i)
  (float64)."""
  params = _params()

  def schedule(count):
    return 0.3 / (1.0 + count)

  tx = optim.dual_averaging_center(schedule)
  state = tx.init(params)
  x0 = {n: np.asarray(p, np.float64) for n, p in params.items()}
  v_sum = {n: np.zeros_like(p) for n, p in x0.items()}
  alpha = 0.0
  for k in range(1, 40):
    out, state = tx.update(_grads(k), state, params)
    s = schedule(k - 1) * np.sqrt(k)
    alpha += s
    for n in x0:
      v_sum[n] += s * np.asarray(_grads(k)[n], np.float64)
      np.testing.assert_allclose(
        np.asarray(out.center[n]), x0[n] - v_sum[n] / np.sqrt(k), rtol=0, atol=2e-6
      )
      np.testing.assert_allclose(
        np.asarray(state.grad_sum[n]), v_sum[n], rtol=0, atol=2e-5 * np.sqrt(k)
      )
    assert out.grad_sum is None and int(out.stage_count) == k
    np.testing.assert_allclose(float(out.alpha), alpha, rtol=1e-6)
  assert state.center["w"].dtype == jnp.float32 and isinstance(state.sq_grad_sum, optax.EmptyState)


def test_the_center_only_accumulator_refuses_a_diagonal_metric():
  params = _params()
  for metric, message in (
    (optim.cube_root_metric(), "squared-gradient sum"),
    (optim.adam_metric(), "needs the gradients"),
  ):
    tx = optax.chain(optim.dual_averaging_center(0.1), metric)
    with pytest.raises(ValueError, match=message):
      tx.update(_grads(0), tx.init(params), params)


def test_rmda_state_reads_the_center_of_both_accumulators():
  """The V_k chain's derived center equals the one dual_averaging_center keeps (float32
  rounding)."""
  params = _params()
  kept = optim.dual_averaging_center(0.2)
  sums = optim.accumulate_dual_averaging(0.2)
  s1, s2 = kept.init(params), sums.init(params)
  for n in params:
    np.testing.assert_array_equal(
      np.asarray(s1.center[n]), np.asarray(s2.center[n])
    )  # the anchor at k = 0
  for t in range(5):
    _, s1 = kept.update(_grads(t), s1, params)
    _, s2 = sums.update(_grads(t), s2, params)
  for n in params:
    np.testing.assert_allclose(
      np.asarray(s1.center[n]), np.asarray(s2.center[n]), rtol=0, atol=1e-6
    )


@pytest.mark.parametrize("lr, mean", [(0.1, 0.01), (0.01, 0.0)])
def test_dual_averaging_center_rounds_once_per_step_over_a_long_stage(lr, mean):
  """20000 steps against float64: the error of a float32 accumulator rounded once a step,
  ulp(y) sqrt(k).

  The first case moves the center far from the anchor (|x0 - y| ~ 13), the
  second keeps it near (|x0 - y| ~ 0.2, |y| ~ 4).
  """
  n, steps = 2048, 20000
  rng = np.random.default_rng(0)
  x0 = rng.normal(size=n).astype(np.float32)
  grads = (rng.normal(size=(steps, n)) * 0.05 + mean).astype(np.float32)
  params = {"w": jnp.asarray(x0)}
  tx = optim.dual_averaging_center(lr)

  def body(state, g):
    _, state = tx.update({"w": g}, state, params)
    return state, None

  state, _ = jax.jit(lambda s: jax.lax.scan(body, s, jnp.asarray(grads)))(tx.init(params))
  weights = lr * np.sqrt(np.arange(1, steps + 1))
  want = x0.astype(np.float64) - (weights @ grads.astype(np.float64)) / np.sqrt(steps)
  err = np.abs(np.asarray(state.center["w"], np.float64) - want).max()
  bound = np.spacing(np.float32(np.abs(want).max())) * np.sqrt(steps)
  assert err <= bound, (err, bound)


@pytest.mark.parametrize("name", ["rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_tree_get_count_finds_the_one_step_counter(name, wrapped):
  params = {"w": jnp.ones((3, 2))}
  tx = getattr(rmda_jax, name)(0.1)
  if wrapped:
    tx = rmda_jax.rigl(tx, 0.5, end_step=10, update_every=2)
  state = tx.init(params)
  update = jax.jit(tx.update)
  for _ in range(3):
    updates, state = update(params, state, params)
  assert int(optax.tree_utils.tree_get(state, "count")) == 3
