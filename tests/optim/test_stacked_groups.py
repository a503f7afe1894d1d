"""Per-layer groups on stacked leaves behave as the same groups on separate layers.

A block of ``L`` layers is held two ways: stacked (``(L, ...)`` leaves and one
family with ``layers=L``, as discovery gives a ``scan`` over layers) and
unstacked (``L`` separate layer trees and ``L`` families). The loss is the
same function of the weights. Every optimizer, with the exact and the
inexact subproblem solvers, the metrics and RigL must take the same steps on
both: the stacked run is a single pass over the stacked leaves, the
unstacked one is the reference.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax import Family, Groups, Slice
from rmda_jax.structure import metrics

L, D, H = 3, 4, 5


def stacked_params(seed=0):
  rng = np.random.default_rng(seed)
  p = {
    "up": rng.normal(size=(L, D, H)),
    "up_bias": rng.normal(size=(L, H)) * 0.1,
    "down": rng.normal(size=(L, H, D)),
  }
  p["down"][1, 2] *= 1e-3  # a weak unit in one layer only
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), p)


def unstack(p):
  return {f"layer_{i}": jax.tree_util.tree_map(lambda a, i=i: a[i], p) for i in range(L)}


STACKED_GROUPS = Groups(
  (
    Family(
      "block",
      "units",
      H,
      (
        Slice("up", 2, layer_axis=0),
        Slice("up_bias", 1, layer_axis=0),
        Slice("down", 1, layer_axis=0),
      ),
      consumers=("down",),
      layers=L,
    ),
  )
)
UNSTACKED_GROUPS = Groups(
  tuple(
    Family(
      f"layer_{i}",
      "units",
      H,
      (Slice(f"layer_{i}/up", 1), Slice(f"layer_{i}/up_bias", 0), Slice(f"layer_{i}/down", 0)),
      consumers=(f"layer_{i}/down",),
    )
    for i in range(L)
  )
)
X = jnp.asarray(np.random.default_rng(1).normal(size=(6, D)), jnp.float32)


def block(x, up, bias, down):
  return x + jnp.tanh(x @ up + bias) @ down


def loss_stacked(p):
  x = X
  for i in range(L):
    x = block(x, p["up"][i], p["up_bias"][i], p["down"][i])
  return jnp.mean(jnp.square(x - 1.0))


def loss_unstacked(p):
  x = X
  for i in range(L):
    q = p[f"layer_{i}"]
    x = block(x, q["up"], q["up_bias"], q["down"])
  return jnp.mean(jnp.square(x - 1.0))


def run(tx, params, loss, steps=12):
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  for _ in range(steps):
    params, state = step(params, state)
  return params, state


def regularizer(groups, strength=0.05):
  return rmda_jax.group_lasso(strength, groups=groups)


OPTIMIZERS = {
  "rmda": lambda groups: rmda_jax.rmda(0.1, regularizer=regularizer(groups)),
  "ramda": lambda groups: rmda_jax.ramda(0.1, regularizer=regularizer(groups)),
  "ramda_pgd": lambda groups: rmda_jax.ramda(0.1, regularizer=regularizer(groups), solver="pgd"),
  "prox_sgd": lambda groups: rmda_jax.prox_sgd(0.1, regularizer=regularizer(groups)),
  "prox_adamw": lambda groups: rmda_jax.prox_adamw(0.01, regularizer=regularizer(groups)),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_stacked_groups_step_like_separate_layers(name):
  stacked, _ = run(OPTIMIZERS[name](STACKED_GROUPS), stacked_params(), loss_stacked)
  reference, _ = run(OPTIMIZERS[name](UNSTACKED_GROUPS), unstack(stacked_params()), loss_unstacked)
  for i in range(L):
    for leaf in ("up", "up_bias", "down"):
      np.testing.assert_allclose(
        stacked[leaf][i], reference[f"layer_{i}"][leaf], rtol=2e-5, atol=2e-6, err_msg=leaf
      )


def test_stacked_groups_reach_zero_per_layer_and_the_metrics_count_them():
  tx = rmda_jax.rmda(0.1, regularizer=regularizer(STACKED_GROUPS, 0.2))
  _, state = run(tx, stacked_params(), loss_stacked, steps=30)
  params = rmda_jax.structured_params(state)
  norms = np.sqrt(
    np.sum(np.square(params["up"]), axis=1)
    + np.square(params["up_bias"])
    + np.sum(np.square(params["down"]), axis=2)
  )  # (layers, units)
  zero = norms == 0
  assert zero.any() and not zero.all()
  kept, total = metrics.family_kept(params, STACKED_GROUPS)["block"]
  assert (kept, total) == (int(np.sum(~zero)), L * H)
  assert float(metrics.group_sparsity(params, regularizer(STACKED_GROUPS))) == pytest.approx(
    np.mean(zero)
  )


def test_ramda_screening_on_stacked_groups_matches_separate_layers():
  def make(groups):  # strong enough that screening fixes groups at zero
    return rmda_jax.ramda(0.1, regularizer=regularizer(groups, 0.2), solver="pgd")

  stacked, _ = run(make(STACKED_GROUPS), stacked_params(), loss_stacked)
  reference, _ = run(make(UNSTACKED_GROUPS), unstack(stacked_params()), loss_unstacked)
  for i in range(L):
    np.testing.assert_allclose(
      stacked["down"][i], reference[f"layer_{i}"]["down"], rtol=2e-5, atol=2e-6
    )


def test_rigl_keeps_whole_groups_per_layer_as_separate_layers_would():
  def make(groups):
    return rmda_jax.rigl(optax.sgd(0.1), 0.4, end_step=10, update_every=3, groups=groups)

  stacked, state = run(make(STACKED_GROUPS), stacked_params(), loss_stacked, steps=9)
  reference, _ = run(make(UNSTACKED_GROUPS), unstack(stacked_params()), loss_unstacked, steps=9)
  masks = rmda_jax.optim.pruning.masks_of(state)
  for i in range(L):
    # whole groups: a unit's column of up, its bias and its row of down are kept together
    kept = np.asarray(masks["up_bias"][i])
    np.testing.assert_array_equal(np.asarray(masks["up"][i]), np.broadcast_to(kept, (D, H)))
    np.testing.assert_array_equal(
      np.asarray(masks["down"][i]), np.broadcast_to(kept[:, None], (H, D))
    )
    # each layer keeps the count a separate layer keeps (the swaps move, not add, groups)
    assert kept.sum() == np.sum(np.asarray(reference[f"layer_{i}"]["up_bias"]) != 0)
    assert np.sum(np.asarray(stacked["up_bias"][i]) != 0) == kept.sum()
  assert int(optax.tree_utils.tree_get(state, "steps")) == 9
