"""RMDA against an independent NumPy re-implementation, structure identification, composition."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref
from problems import GROUPS, SHAPES, from_tree, make_problem, numpy_grad, run_jax, single_trace_step

import rmda_jax

REGS = {
  "group_lasso": lambda lam: rmda_jax.group_lasso(lam),
  "l1": lambda lam: rmda_jax.l1(lam),
  None: None,
}


@pytest.mark.parametrize("kind,lam", [("group_lasso", 0.15), ("l1", 0.05), (None, 0.0)])
@pytest.mark.parametrize("c", [1.0, 0.3])
def test_rmda_matches_numpy_reference(kind, lam, c):
  steps, lr = 35, 0.05
  x, target, scale, noise = make_problem(steps=steps)
  x_np, zs_np = ref.rmda_run(x, numpy_grad(target, scale, noise), steps, lr, c, lam, kind, GROUPS)
  reg = None if kind is None else REGS[kind](lam)
  params, state = run_jax(
    rmda_jax.rmda(lr, momentum=c, regularizer=reg), x, target, scale, noise, steps
  )
  got = from_tree(params)
  z = from_tree(rmda_jax.structured_params(state))
  for n in SHAPES:
    np.testing.assert_allclose(got[n], x_np[n], atol=1e-5, rtol=0)
    np.testing.assert_allclose(z[n], zs_np[-1][n], atol=1e-5, rtol=0)
    # the same exact zeros in the structured point
    np.testing.assert_array_equal(z[n] == 0, zs_np[-1][n] == 0)
  if kind is not None:
    assert (zs_np[-1]["dense"] == 0).any() and (zs_np[-1]["conv"] == 0).any(), "no zeros to compare"


def _logistic_data(n=600, informative=6, noise_features=6, classes=3, seed=0):
  rng = np.random.default_rng(seed)
  d = informative + noise_features
  w_true = np.zeros((d, classes))
  rows = rng.normal(size=(informative, classes))
  w_true[:informative] = 2.0 * rows / np.linalg.norm(rows, axis=1, keepdims=True)
  X = rng.normal(size=(n, d))
  logits = X @ w_true
  y = np.array(
    [
      rng.choice(classes, p=np.exp(row - row.max()) / np.exp(row - row.max()).sum())
      for row in logits
    ]
  )
  return X, y


def _optimal_support_numpy(X, y, lam, classes, iters=20000):
  """Full-batch FISTA in float64 for mean CE + lam * sum_j sqrt(C) ||W_j||."""
  n, d = X.shape
  Y = np.eye(classes)[y]
  W = np.zeros((d, classes))
  V = W.copy()
  t = 1.0
  L = np.linalg.norm(X, 2) ** 2 / n
  for _ in range(iters):
    logits = X @ V
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    G = X.T @ (p - Y) / n
    W_new = ref.prox_group_lasso(V - G / L, lam / L, (1,))
    t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
    V = W_new + (t - 1) / t_new * (W_new - W)
    W, t = W_new, t_new
  return np.linalg.norm(W, axis=1) > 0


def test_rmda_identifies_the_optimal_group_support():
  classes, lam = 3, 0.03
  X, y = _logistic_data()
  support = _optimal_support_numpy(X, y, lam, classes)
  assert support[:6].all() and not support[6:].any(), support

  Xj, yj = jnp.asarray(X, jnp.float32), jnp.asarray(y)
  reg = rmda_jax.group_lasso(lam)

  def loss(params, xb, yb):
    logits = xb @ params["kernel"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

  def run(tx, steps=1500, batch=32, seed=0):
    params = {"kernel": jnp.zeros((X.shape[1], classes))}
    state = tx.init(params)
    idx = np.random.default_rng(seed).integers(0, len(X), size=(steps, batch))

    @jax.jit
    def step(params, state, i):
      g = jax.grad(loss)(params, Xj[i], yj[i])
      updates, state = tx.update(g, state, params)
      return optax.apply_updates(params, updates), state

    supports = []
    for s in range(steps):
      params, state = step(params, state, idx[s])
      supports.append(
        np.linalg.norm(np.asarray(rmda_jax.structured_params(state, params)["kernel"]), axis=1) > 0
      )
    return np.array(supports)

  rmda_supports = run(rmda_jax.rmda(0.1, momentum=0.1, regularizer=reg))
  # the structured point has exactly the optimal support over the last 200 steps
  assert (rmda_supports[-200:] == support).all()


def test_jit_compiles_once_and_composes_with_chain():
  params = {"Dense_0": {"kernel": jnp.ones((4, 3)), "bias": jnp.zeros(3)}}
  tx = optax.chain(
    optax.clip_by_global_norm(1.0),
    rmda_jax.rmda(
      optax.linear_schedule(0.1, 0.01, 10), momentum=0.5, regularizer=rmda_jax.group_lasso(1e-2)
    ),
  )
  state = tx.init(params)

  step = single_trace_step(tx)

  grads = jax.tree_util.tree_map(lambda p: jnp.full_like(p, 5.0), params)
  for _ in range(5):
    params, state = step(params, state, grads)
  # the clip ran before rmda: the accumulated sum uses the clipped gradient
  da = state[1]
  clipped = 5.0 / np.sqrt(15 * 25.0)
  assert np.isclose(
    float(da.grad_sum["Dense_0"]["bias"][0]),
    clipped
    * sum(lr * np.sqrt(k) for k, lr in zip(range(1, 6), [0.1 - 0.009 * i for i in range(5)])),
    rtol=1e-5,
  )
  assert int(da.count) == 5


def test_state_dtypes_for_low_precision_params():
  params = {"kernel": jnp.ones((4, 3), jnp.bfloat16)}
  tx = rmda_jax.rmda(0.1, momentum=1.0, regularizer=rmda_jax.group_lasso(10.0))
  state = tx.init(params)
  assert state.center["kernel"].dtype == jnp.float32 and state.anchor["kernel"].dtype == jnp.float32
  updates, state = tx.update({"kernel": jnp.ones((4, 3), jnp.bfloat16)}, state, params)
  new = optax.apply_updates(params, updates)
  assert new["kernel"].dtype == jnp.bfloat16
  assert np.all(np.asarray(new["kernel"], np.float32) == 0)


@pytest.mark.parametrize(
  "make, match",
  [
    (lambda: rmda_jax.rmda(-0.1), "learning_rate"),
    (lambda: rmda_jax.rmda(0.1, momentum=0.0), "momentum"),
    (lambda: rmda_jax.rmda(0.1, momentum=1.5), "momentum"),
    (lambda: rmda_jax.ramda(0.1, eps=-1.0), "eps"),
    (lambda: rmda_jax.prox_sgd(0.1, momentum=2.0), "momentum"),
    (lambda: rmda_jax.prox_adamw(0.1, b1=1.0), "b1"),
  ],
)
def test_bad_optimizer_arguments(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_regularizer_type_and_missing_params():
  with pytest.raises(TypeError, match="regularizer"):
    rmda_jax.rmda(0.1, regularizer="group_lasso")
  tx = rmda_jax.rmda(0.1)
  state = tx.init({"w": jnp.ones(2)})
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones(2)}, state)
  tx = rmda_jax.rmda(
    0.1, regularizer=rmda_jax.group_lasso(1.0, rules={"w": rmda_jax.core.rules.GroupRule((3,))})
  )
  with pytest.raises(ValueError, match="reduce axis 3"):
    tx.init({"w": jnp.ones((2, 2))})


def test_structured_params_accessor():
  params = {"w": jnp.ones((2, 2))}
  sgd_state = rmda_jax.prox_sgd(0.1).init(params)
  assert rmda_jax.structured_params(sgd_state, params) is params
  with pytest.raises(ValueError, match="no rmda/ramda state"):
    rmda_jax.structured_params(optax.adam(1e-3).init(params))
  inj = optax.inject_hyperparams(rmda_jax.rmda)(learning_rate=0.1, momentum=0.5)
  state = inj.init(params)
  chex.assert_trees_all_equal(rmda_jax.structured_params(state), params)


@pytest.mark.parametrize(
  "make",
  [
    lambda r: rmda_jax.rmda(0.1, momentum=1.0, regularizer=r),
    lambda r: rmda_jax.ramda(0.05, momentum=1.0, regularizer=r),
  ],
)
def test_drops_into_nnx_optimizer_and_train_state(make):
  import flax.linen as nn
  from flax import nnx
  from flax.training import train_state

  class Model(nnx.Module):
    def __init__(self, rngs):
      self.l1 = nnx.Linear(6, 4, rngs=rngs)
      self.l2 = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
      return self.l2(jax.nn.relu(self.l1(x)))

  reg = rmda_jax.group_lasso(0.5)
  model = Model(nnx.Rngs(0))
  opt = nnx.Optimizer(model, make(reg), wrt=nnx.Param)
  x, y = jnp.ones((8, 6)), jnp.zeros((8, 2))

  @nnx.jit
  def step(model, opt):
    loss, grads = nnx.value_and_grad(lambda m: ((m(x) - y) ** 2).mean())(model)
    opt.update(model, grads)
    return loss

  losses = [float(step(model, opt)) for _ in range(10)]
  assert losses[-1] < losses[0]
  params = nnx.state(model, nnx.Param)
  z = rmda_jax.structured_params(opt.opt_state)
  assert jax.tree_util.tree_structure(nnx.to_pure_dict(z)) == jax.tree_util.tree_structure(
    nnx.to_pure_dict(params)
  )
  # input-wise groups of both Linear kernels are counted (6 + 4)
  sizes = [
    r.reduce_axes for r in rmda_jax.metrics.counted_groups(params, reg).rules if r is not None
  ]
  assert sizes == [(1,), (1,)]

  dense = nn.Dense(3)
  p = dense.init(jax.random.PRNGKey(0), jnp.ones((1, 4)))
  ts = train_state.TrainState.create(apply_fn=dense.apply, params=p, tx=make(reg))
  ts = ts.apply_gradients(grads=jax.tree_util.tree_map(jnp.ones_like, p))
  assert int(ts.step) == 1
