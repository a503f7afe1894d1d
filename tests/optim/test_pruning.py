"""RigL against a NumPy re-implementation of the paper's drop/grow rule."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax.optim import pruning

SHAPES = {"conv": (3, 3, 4, 6), "dense": (24, 10), "bias": (10,)}
LR, BETA, STEPS, EVERY, END, FRACTION = 0.05, 0.9, 40, 5, 30, 0.4


def make_tree(arrays):
  return {
    "conv": {"kernel": jnp.asarray(arrays["conv"])},
    "dense": {"kernel": jnp.asarray(arrays["dense"])},
    "bias": jnp.asarray(arrays["bias"]),
  }


def flat(tree):
  return {
    "conv": np.asarray(tree["conv"]["kernel"]),
    "dense": np.asarray(tree["dense"]["kernel"]),
    "bias": np.asarray(tree["bias"]),
  }


def numpy_rigl(w0, masks0, target, noise):
  """The RigL step written from the paper, on dicts of NumPy arrays."""
  w = {k: v * masks0[k] for k, v in w0.items()}
  masks = {k: v.copy() for k, v in masks0.items()}
  mom = {k: np.zeros_like(v) for k, v in w0.items()}
  history = []
  for t in range(STEPS):
    g = {k: w[k] - target[k] + noise[t][k] for k in w}
    new_w = {}
    for k in w:
      mom[k] = g[k] * masks[k] + BETA * mom[k]
      new_w[k] = (w[k] - LR * mom[k]) * masks[k]
    if 0 < t < END and t % EVERY == 0:
      fraction = FRACTION / 2 * (1 + math.cos(math.pi * t / END))
      for k in ("conv", "dense"):
        m = masks[k].reshape(-1).astype(bool)
        active = int(m.sum())
        n = int(np.round(fraction * active))
        keep_scores = np.where(m, np.abs(new_w[k].reshape(-1)), -np.inf)
        keep_order = np.argsort(-keep_scores, kind="stable")[: active - n]
        kept = np.zeros_like(m)
        kept[keep_order] = True
        grow_scores = np.where(kept, -np.inf, np.abs(g[k].reshape(-1)))
        grown = np.zeros_like(m)
        grown[np.argsort(-grow_scores, kind="stable")[:n]] = True
        new_mask = (kept | grown).reshape(masks[k].shape)
        new_w[k] = np.where((grown & ~kept).reshape(new_mask.shape) | ~new_mask, 0.0, new_w[k])
        mom[k] = mom[k] * new_mask
        masks[k] = new_mask
    w = new_w
    history.append(({k: v.copy() for k, v in w.items()}, {k: v.copy() for k, v in masks.items()}))
  return history


@pytest.fixture(scope="module")
def problem():
  rng = np.random.default_rng(0)
  w0 = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  target = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
  noise = [
    {k: (rng.normal(size=s) * 0.5).astype(np.float32) for k, s in SHAPES.items()}
    for _ in range(STEPS)
  ]
  return w0, target, noise


def run_jax(tx, w0, target, noise):
  params = make_tree(w0)
  state = tx.init(params)
  masks0 = flat(state.masks)
  target_t = make_tree(target)
  noise_t = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[make_tree(n) for n in noise])

  @jax.jit
  def run(params, state):
    def body(carry, noise_step):
      p, s = carry
      g = jax.tree_util.tree_map(lambda a, b, c: a - b + c, p, target_t, noise_step)
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
      momentum = s.inner_state[0].trace
      return (p, s), (p, s.masks, momentum)

    return jax.lax.scan(body, (params, state), noise_t)[1]

  return masks0, run(params, state)


def test_rigl_matches_numpy_reference(problem):
  w0, target, noise = problem
  tx = rmda_jax.rigl(
    optax.sgd(LR, momentum=BETA),
    sparsity=0.8,
    end_step=END,
    update_every=EVERY,
    drop_fraction=FRACTION,
    distribution="erk",
  )
  masks0, (ps, ms, moms) = run_jax(tx, w0, target, noise)
  reference = numpy_rigl(w0, {k: masks0[k].astype(np.float32) for k in masks0}, target, noise)
  changed_events = 0
  for t, (w_ref, m_ref) in enumerate(reference):
    p_t = flat(jax.tree_util.tree_map(lambda x, t=t: x[t], ps))
    m_t = flat(jax.tree_util.tree_map(lambda x, t=t: x[t], ms))
    mom_t = flat(jax.tree_util.tree_map(lambda x, t=t: x[t], moms))
    for k in SHAPES:
      np.testing.assert_array_equal(m_t[k], m_ref[k].astype(bool), err_msg=f"mask {k} step {t}")
      np.testing.assert_allclose(p_t[k], w_ref[k], atol=1e-5, err_msg=f"weights {k} step {t}")
      assert np.all(p_t[k][~m_t[k]] == 0), "a masked weight is not exactly zero"
      assert np.all(mom_t[k][~m_t[k]] == 0), "a masked weight kept its momentum"
    if t > 0:
      prev = flat(jax.tree_util.tree_map(lambda x, t=t: x[t - 1], ms))
      changed_events += any(np.any(prev[k] != m_t[k]) for k in SHAPES)
  assert changed_events >= 3  # the masks did move


def test_active_counts_constant_and_on_target(problem):
  w0, target, noise = problem
  sparse_shapes = [SHAPES["conv"], SHAPES["dense"]]
  for distribution in ("erk", "uniform"):
    tx = rmda_jax.rigl(
      optax.sgd(LR, momentum=BETA),
      sparsity=0.8,
      end_step=END,
      update_every=EVERY,
      drop_fraction=FRACTION,
      distribution=distribution,
    )
    masks0, (_, ms, _) = run_jax(tx, w0, target, noise)
    expected = pruning.active_counts(sparse_shapes, 0.8, distribution)
    counts = np.stack(
      [
        np.asarray(ms["conv"]["kernel"]).reshape(STEPS, -1).sum(1),
        np.asarray(ms["dense"]["kernel"]).reshape(STEPS, -1).sum(1),
      ],
      1,
    )
    assert (counts == np.asarray(expected)).all()
    assert np.asarray(ms["bias"]).all()  # unregularized leaves stay dense
    assert [int(masks0["conv"].sum()), int(masks0["dense"].sum())] == expected
  uniform = pruning.active_counts(sparse_shapes, 0.8, "uniform")
  assert uniform == [round(0.2 * 216), round(0.2 * 240)]


def test_erk_densities_follow_the_rule():
  shapes = [(5, 5, 1, 20), (5, 5, 20, 50), (800, 500), (500, 10)]
  sizes = np.array([math.prod(s) for s in shapes], float)
  for sparsity in (0.5, 0.9, 0.98):
    d = np.array(pruning.erk_densities(shapes, sparsity))
    assert np.isclose((d * sizes).sum(), (1 - sparsity) * sizes.sum())
    assert (d <= 1 + 1e-12).all() and (d > 0).all()
    raw = np.array([sum(s) / math.prod(s) for s in shapes])
    free = d < 1
    ratios = d[free] / raw[free]  # proportional to (sum of dims / size) on the non-dense leaves
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-12)
    if (~free).any():
      assert raw[~free].min() >= raw[free].max()


def test_drop_fraction_cosine():
  np.testing.assert_allclose(float(pruning.drop_fraction_at(0, 0.3, 100)), 0.3, rtol=1e-6)
  np.testing.assert_allclose(float(pruning.drop_fraction_at(50, 0.3, 100)), 0.15, rtol=1e-6)
  assert float(pruning.drop_fraction_at(100, 0.3, 100)) == pytest.approx(0.0, abs=1e-8)
  assert float(pruning.drop_fraction_at(500, 0.3, 100)) == pytest.approx(0.0, abs=1e-8)


def test_rigl_with_adam_masks_its_moments(problem):
  w0, target, noise = problem
  tx = rmda_jax.rigl(optax.adam(1e-2), sparsity=0.9, end_step=END, update_every=EVERY)
  params = make_tree(w0)
  state = tx.init(params)

  @jax.jit
  def step(params, state, noise_t):
    g = jax.tree_util.tree_map(lambda a, b, c: a - b + c, params, make_tree(target), noise_t)
    u, state = tx.update(g, state, params)
    return optax.apply_updates(params, u), state

  for t in range(12):
    params, state = step(params, state, make_tree(noise[t]))
  adam = state.inner_state[0]
  for moment in (adam.mu, adam.nu):
    for m, x in zip(jax.tree_util.tree_leaves(state.masks), jax.tree_util.tree_leaves(moment)):
      assert np.all(np.asarray(x)[~np.asarray(m)] == 0)
  for m, x in zip(jax.tree_util.tree_leaves(state.masks), jax.tree_util.tree_leaves(params)):
    assert np.all(np.asarray(x)[~np.asarray(m)] == 0)
  assert pruning.masks_of(optax.chain(optax.identity(), tx).init(params)) is not None


@pytest.mark.parametrize(
  "kwargs, match",
  [
    ({"sparsity": 1.0}, "sparsity"),
    ({"sparsity": -0.1}, "sparsity"),
    ({"end_step": 0}, "end_step"),
    ({"update_every": 0}, "update_every"),
    ({"drop_fraction": 1.5}, "drop_fraction"),
    ({"distribution": "er"}, "distribution"),
    # mask updates happen at multiples of update_every below end_step: none here
    ({"update_every": 100}, r"end_step \(100\) must be > update_every \(100\)"),
    ({"end_step": 5, "update_every": 8}, "none would be"),
  ],
)
def test_rigl_rejects_bad_arguments(kwargs, match):
  args = dict(sparsity=0.9, end_step=100, update_every=10)
  args.update(kwargs)
  with pytest.raises(ValueError, match=match):
    rmda_jax.rigl(optax.sgd(0.1), **args)
  with pytest.raises(TypeError, match="optimizer"):
    rmda_jax.rigl("sgd", sparsity=0.9, end_step=10)
