"""In-place steps: donated params and state, no freshly allocated outputs; the fused reductions."""

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax import optim
from rmda_jax.core import GroupLayout
from rmda_jax.core import rules as leaf_rules

REG = rmda_jax.group_lasso(1e-2)
OPTIMIZERS = {
  "rmda": lambda: rmda_jax.rmda(0.1, momentum=0.5, regularizer=REG),
  "ramda": lambda: rmda_jax.ramda(0.1, momentum=0.5, regularizer=REG),
  "prox_sgd": lambda: rmda_jax.prox_sgd(0.1, regularizer=REG),
  "prox_adamw": lambda: rmda_jax.prox_adamw(1e-2, regularizer=REG),
  "prox_ssi": lambda: rmda_jax.prox_ssi(1e-2, regularizer=REG),
  "rmda_nuclear": lambda: rmda_jax.rmda(0.1, regularizer=rmda_jax.nuclear_norm(1e-2)),
  "ramda_skip_nonfinite": lambda: rmda_jax.ramda(0.1, regularizer=REG, skip_nonfinite=True),
}


def _params():
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  return {
    "Dense_0": {"kernel": jax.random.normal(keys[0], (16, 64)), "bias": jnp.zeros(64)},
    "Dense_1": {"kernel": jax.random.normal(keys[1], (64, 64)), "bias": jnp.zeros(64)},
  }


def _step(tx):
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_with_params_and_state_donated_matches_the_plain_step(name):
  tx = OPTIMIZERS[name]()
  params = _params()
  grads = jax.tree_util.tree_map(
    lambda p: 0.1 * jnp.cos(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params
  )
  plain = jax.jit(_step(tx))
  donated = jax.jit(_step(tx), donate_argnums=(0, 1))
  p_ref, s_ref = params, tx.init(params)
  p, s = jax.tree_util.tree_map(jnp.copy, params), None
  s = tx.init(p)  # built from the params: the state must not share their buffers
  for _ in range(3):
    p_ref, s_ref = plain(p_ref, s_ref, grads)
    p, s = donated(p, s, grads)
  for a, b in zip(jax.tree_util.tree_leaves((p, s)), jax.tree_util.tree_leaves((p_ref, s_ref))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_array_output_of_a_donated_step_lives_in_a_donated_buffer(name):
  # An output without a donated buffer is allocated afresh at every call (on
  # CPU: page-faulted), e.g. the kept point of rmda when jit prunes the old one.
  tx = OPTIMIZERS[name]()
  params = _params()
  state = tx.init(params)
  memory = (
    jax.jit(_step(tx), donate_argnums=(0, 1))
    .lower(params, state, params)
    .compile()
    .memory_analysis()
  )
  if memory is None:
    pytest.skip("this backend reports no memory analysis")
  smallest = min(x.nbytes for x in jax.tree_util.tree_leaves(params))
  assert memory.output_size_in_bytes - memory.alias_size_in_bytes < smallest


def test_state_built_from_params_holds_its_own_buffers():
  params = {"w": jnp.ones((4, 4), jnp.float32)}
  state = rmda_jax.rmda(0.1, regularizer=REG).init(params)
  pointers = {x.unsafe_buffer_pointer() for x in jax.tree_util.tree_leaves(state) if x.size}
  assert params["w"].unsafe_buffer_pointer() not in pointers


def test_cube_root_is_accurate_to_float32_rounding():
  rng = np.random.default_rng(1)
  u = (rng.uniform(1, 10, 50000) * 10.0 ** rng.integers(-37, 38, 50000)).astype(np.float32)
  u = np.concatenate([u, np.float32([0.0, np.inf, 27.0, np.finfo(np.float32).max])])
  got = np.asarray(optim.preconditioners.cube_root(jnp.asarray(u)), np.float64)
  want = np.cbrt(u.astype(np.float64))
  finite = np.isfinite(u) & (u > 0)
  assert np.max(np.abs(got[finite] - want[finite]) / want[finite]) < 1e-6
  assert got[-4] == 0.0 and got[-3] == np.inf and got[-2] == 3.0


def test_reduce_many_matches_numpy_per_leaf_rule_and_coupled_family():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 5)).astype(np.float32)
  y = rng.normal(size=(3, 4, 5)).astype(np.float32)
  block = GroupLayout.of_rule(x.shape, leaf_rules.GroupRule((0, 2)), 1.0)
  s, mx, mn = block.reduce_many(
    ["sum", "max", "min"], [[jnp.asarray(x * y)], [jnp.asarray(x)], [jnp.asarray(y)]]
  )
  np.testing.assert_allclose(np.asarray(s), (x * y).sum(axis=(0, 2), keepdims=True), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(mx), x.max(axis=(0, 2), keepdims=True))
  np.testing.assert_array_equal(np.asarray(mn), y.min(axis=(0, 2), keepdims=True))
  # a family: unit j is column j of a (6, 4) kernel and row j of a (4, 3) kernel
  a, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
  family = rmda_jax.Family("h", "units", 4, (rmda_jax.Slice("a", 1), rmda_jax.Slice("b", 0)))
  coupled = GroupLayout.of_family(family, [a.shape, b.shape])
  sq, top = coupled.reduce_many(
    ["sum", "max"], [[jnp.asarray(a) ** 2, jnp.asarray(b) ** 2], [jnp.asarray(a), jnp.asarray(b)]]
  )
  np.testing.assert_allclose(np.asarray(sq), (a**2).sum(0) + (b**2).sum(1), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(top), np.maximum(a.max(0), b.max(1)))


def test_group_lasso_prox_reads_its_norms_from_the_statistics_tree():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(5, 3)).astype(np.float32)
  stats = 2.0 * x
  reg = rmda_jax.group_lasso(0.4, rules={"w": leaf_rules.GroupRule((1,))})
  z = np.asarray(reg.prox({"w": jnp.asarray(x)}, 1.0, statistics={"w": jnp.asarray(stats)})["w"])
  tau = 0.4 * np.sqrt(3)
  norms = np.linalg.norm(stats, axis=1, keepdims=True)
  np.testing.assert_allclose(z, x * np.maximum(0, 1 - tau / norms), rtol=1e-5, atol=1e-7)
  same = np.asarray(reg.prox({"w": jnp.asarray(x)}, 1.0, statistics={"w": jnp.asarray(x)})["w"])
  np.testing.assert_allclose(
    same,
    x * np.maximum(0, 1 - tau / np.linalg.norm(x, axis=1, keepdims=True)),
    rtol=1e-5,
    atol=1e-7,
  )


def test_rmda_without_its_point_recomputes_it():
  params = _params()
  grads = jax.tree_util.tree_map(
    lambda p: 0.3 * jnp.sin(jnp.arange(p.size, dtype=p.dtype).reshape(p.shape)), params
  )
  reg = rmda_jax.group_lasso(0.5)
  kept, lean = (
    rmda_jax.rmda(0.1, momentum=0.5, regularizer=reg),
    rmda_jax.rmda(0.1, momentum=0.5, regularizer=reg, keep_point=False),
  )
  p1, s1, p2, s2 = params, kept.init(params), params, lean.init(params)

  def state_bytes(s):
    return sum(x.nbytes for x in jax.tree_util.tree_leaves(s))

  assert state_bytes(s1) - state_bytes(s2) == sum(
    x.nbytes for x in jax.tree_util.tree_leaves(params)
  )
  with pytest.raises(ValueError, match="keep_point=False"):
    rmda_jax.structured_params(s2)
  np.testing.assert_array_equal(
    np.asarray(rmda_jax.structured_params(s2, regularizer=reg)["Dense_0"]["kernel"]),
    np.asarray(params["Dense_0"]["kernel"]),
  )  # before any step: the anchor
  step1, step2 = jax.jit(_step(kept)), jax.jit(_step(lean))
  for _ in range(3):
    p1, s1 = step1(p1, s1, grads)
    p2, s2 = step2(p2, s2, grads)
  for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  z = rmda_jax.structured_params(s2, params=p2, regularizer=reg)
  for a, b in zip(
    jax.tree_util.tree_leaves(rmda_jax.structured_params(s1)), jax.tree_util.tree_leaves(z)
  ):
    # the same arithmetic, fused differently by XLA: equal to float32 rounding, zeros exactly
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(a) == 0, np.asarray(b) == 0)
  # and against the formula: z = prox of x0 - V / sqrt(3) at alpha / sqrt(3), input groups (rows)
  x0, v = np.asarray(params["Dense_1"]["kernel"]), 0.1 * np.asarray(grads["Dense_1"]["kernel"])
  alpha = 0.1 * (1 + np.sqrt(2) + np.sqrt(3))
  y = x0 - alpha * v / 0.1 / np.sqrt(3)
  tau = alpha / np.sqrt(3) * 0.5 * np.sqrt(64)
  want = y * np.maximum(0, 1 - tau / np.linalg.norm(y, axis=1, keepdims=True))
  np.testing.assert_allclose(np.asarray(z["Dense_1"]["kernel"]), want, rtol=1e-4, atol=1e-6)


def _temp_bytes(tx, params):
  shapes = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), params)
  state = jax.eval_shape(tx.init, params)
  memory = (
    jax.jit(_step(tx), donate_argnums=(0, 1))
    .lower(shapes, state, shapes)
    .compile()
    .memory_analysis()
  )
  if memory is None:
    pytest.skip("this backend reports no memory analysis")
  return memory.temp_size_in_bytes


def _gradient_sum_rmda(keep_point):
  """RMDA as the chain of blocks that keeps V_k and computes the prox center from it."""
  return optax.chain(
    optim.accumulate_dual_averaging(0.1),
    optim.sqrt_k_metric(),
    optim.proximal_step(REG, solver=None, keep_point=keep_point),
    optim.momentum_average(0.5),
  )


def test_a_center_computed_from_the_sums_is_stored_only_under_the_twin_threshold():
  # Below optim.proximal.TWIN_MIN_ENTRIES XLA may store the prox center in a
  # temporary (read by the norms, the kept point and the momentum average);
  # from it on, the norms read a twin and nothing leaf-sized is stored, so no
  # temporary outgrows glibc's mmap threshold (page-faulted at every call).
  for rows in (optim.proximal.TWIN_MIN_ENTRIES // 256, optim.proximal.TWIN_MIN_ENTRIES // 1024):
    params = {"kernel": jnp.zeros((rows, 256)), "bias": jnp.zeros(256)}
    leaf = rows * 256 * 4
    limit = leaf / 4 if rows * 256 >= optim.proximal.TWIN_MIN_ENTRIES else 2 * leaf + (1 << 16)
    assert _temp_bytes(_gradient_sum_rmda(True), params) < limit, rows


# jaxlib 0.10.0's XLA:CPU stores the squared center (a leaf-sized temporary) for
# the group norms of a step without the kept point, where 0.10.2's YNNPACK
# reduction squares it as it reads; measured on the floors of .ci/lowest.
_JAXLIB = tuple(int(p) for p in jaxlib.__version__.split(".")[:3] if p.isdigit())
_SQUARE_STORED = pytest.mark.xfail(
  _JAXLIB < (0, 10, 2),
  strict=False,
  reason="jaxlib < 0.10.2 stores the squared center for the norms",
)


@pytest.mark.parametrize("keep_point", [True, pytest.param(False, marks=_SQUARE_STORED)])
def test_rmda_keeps_its_prox_center_in_the_state_and_no_leaf_sized_temporary(keep_point):
  # rmda's accumulator updates the center in its own buffer, which the norms,
  # the point and the momentum average read (on CPU the V_k chain stores a
  # center below the threshold, or every leaf's without the kept point).
  tx = rmda_jax.rmda(0.1, momentum=0.5, regularizer=REG, keep_point=keep_point)
  for rows in (optim.proximal.TWIN_MIN_ENTRIES // 256, optim.proximal.TWIN_MIN_ENTRIES // 1024):
    params = {"kernel": jnp.zeros((rows, 256)), "bias": jnp.zeros(256)}
    leaf = rows * 256 * 4
    assert _temp_bytes(tx, params) < leaf / 4, rows
