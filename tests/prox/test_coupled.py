"""Group-LASSO on coupled groups: value, prox, the exact and inexact diagonal-metric
solvers, metrics, non-finite groups, and training a Transformer block on
discovered groups, each against an independent NumPy computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference as ref

import rmda_jax
from rmda_jax import Family, Groups, Slice, metrics, prox

# A family spanning a plain axis, a fused (3, 4, 2) axis (factor 1: the group)
# and a (4, 5) axis where the group is the major factor; and a per-leaf-like
# family on one leaf.
SHAPES = {"a": (3, 4), "b": (24,), "c": (20, 2), "d": (6, 5)}
FAMILIES = (
  Family(
    "mixed", "units", 4, (Slice("a", 1), Slice("b", 0, (3, 4, 2), 1), Slice("c", 0, (4, 5), 0))
  ),
  Family("single", "units", 5, (Slice("d", 1),)),
)
GROUPS = Groups(FAMILIES)


def group_index(shape, member):
  """For every entry of a leaf, the group it belongs to (NumPy, from the Slice's definition)."""
  split = member.split or (shape[member.axis],)
  expanded = shape[: member.axis] + tuple(split) + shape[member.axis + 1 :]
  return np.indices(expanded)[member.axis + member.position].reshape(shape)


def numpy_groups(arrays, family):
  """``(n, group size)`` matrix: row j holds group j's entries of every member, in a fixed order."""
  rows = [[] for _ in range(family.size)]
  for m in family.members:
    idx = group_index(arrays[m.path].shape, m)
    for j in range(family.size):
      rows[j].append(arrays[m.path][idx == j])
  return np.stack([np.concatenate(r) for r in rows])


def numpy_scatter(matrix, arrays, family):
  """Inverse of :func:`numpy_groups`."""
  out = {}
  for m in family.members:
    out[m.path] = np.zeros_like(arrays[m.path])
  for j in range(family.size):
    offset = 0
    for m in family.members:
      idx = group_index(arrays[m.path].shape, m)
      count = int(np.sum(idx == j))
      out[m.path][idx == j] = matrix[j, offset : offset + count]
      offset += count
  return out


def random_tree(seed, zero_groups=()):
  rng = np.random.default_rng(seed)
  arrays = {k: rng.normal(size=s) for k, s in SHAPES.items()}
  for path, member, j in zero_groups:
    arrays[path][group_index(SHAPES[path], member) == j] = 0
  return arrays


def as_jax(arrays, dtype=jnp.float32):
  return {k: jnp.asarray(v, dtype) for k, v in arrays.items()}


def test_value_and_prox_against_numpy():
  arrays = random_tree(0)
  reg = rmda_jax.group_lasso(0.7, groups=GROUPS)
  want_value, want = 0.0, {}
  for family in FAMILIES:
    g = numpy_groups(arrays, family)
    norms = np.linalg.norm(g, axis=1)
    w = np.sqrt(g.shape[1])
    want_value += 0.7 * w * norms.sum()
    thr = 1.3 * 0.7 * w
    factor = np.where(norms > thr, 1 - thr / np.maximum(norms, 1e-300), 0)
    want.update(numpy_scatter(factor[:, None] * g, arrays, family))
  np.testing.assert_allclose(float(reg.value(as_jax(arrays))), want_value, rtol=1e-5)
  got = reg.prox(as_jax(arrays), 1.3)
  for k in SHAPES:
    np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=1e-5, atol=1e-6)
  # some groups were cut to exactly zero in every leaf they span, some kept
  support = np.concatenate([np.asarray(s).ravel() for s in reg.support(got)])
  assert support.any() and not support.all()
  zero = numpy_groups({k: np.asarray(v) for k, v in got.items()}, FAMILIES[0])
  assert np.all(
    (np.abs(zero).sum(1) == 0)
    == (
      np.linalg.norm(numpy_groups(arrays, FAMILIES[0]), axis=1)
      <= 1.3 * 0.7 * np.sqrt(zero.shape[1])
    )
  )


@pytest.mark.parametrize("seed", range(3))
def test_exact_diagonal_solver_solves_the_joint_subproblem(seed):
  rng = np.random.default_rng(seed)
  b = random_tree(seed)
  diag = {k: rng.uniform(0.1, 5.0, size=s) for k, s in SHAPES.items()}
  thr = 0.4
  reg = rmda_jax.group_lasso(1.0, groups=GROUPS)
  z, info = prox.solve(reg, as_jax(b), as_jax(diag), thr)
  for family in FAMILIES:
    B, P = numpy_groups(b, family), numpy_groups(diag, family)
    Z = numpy_groups({k: np.asarray(v, np.float64) for k, v in z.items()}, family)
    want = ref.diag_prox_group_bisect(B, P, thr, (1,))
    np.testing.assert_allclose(Z, want, rtol=2e-4, atol=2e-5)
    # optimality of the joint subproblem: 0 in P z - b + tau d||z_g||
    tau = thr * np.sqrt(B.shape[1])
    for j in range(family.size):
      norm = np.linalg.norm(Z[j])
      if norm == 0:
        assert np.linalg.norm(B[j]) <= tau * (1 + 1e-5)
      else:
        np.testing.assert_allclose(P[j] * Z[j] - B[j] + tau * Z[j] / norm, 0, atol=2e-4)
  assert float(info.residual) < 1e-4


def test_inexact_solver_and_screening_on_coupled_groups():
  rng = np.random.default_rng(5)
  b = random_tree(5)
  diag = {k: rng.uniform(0.5, 2.0, size=s) for k, s in SHAPES.items()}
  reg = rmda_jax.group_lasso(1.0, groups=GROUPS)
  exact, _ = prox.solve(reg, as_jax(b), as_jax(diag), 0.5)
  approx, info = prox.solve(
    reg,
    as_jax(b),
    as_jax(diag),
    0.5,
    init=as_jax(b),
    solver=prox.ProximalGradient(max_iters=3000, tol=1e-6),
  )
  for k in SHAPES:
    np.testing.assert_allclose(np.asarray(approx[k]), np.asarray(exact[k]), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(approx[k]) == 0, np.asarray(exact[k]) == 0)
  assert float(info.residual) <= 1e-6 or int(info.iterations) == 3000


def test_metrics_count_coupled_groups():
  arrays = random_tree(
    1,
    zero_groups=[(m.path, m, 2) for m in FAMILIES[0].members] + [("a", FAMILIES[0].members[0], 0)],
  )
  reg = rmda_jax.group_lasso(1.0, groups=GROUPS)
  # group 2 of "mixed" is zero in every leaf; group 0 only in "a": a partial group is not a zero
  # group
  assert float(metrics.group_sparsity(as_jax(arrays), reg)) == pytest.approx(1 / 9)
  sizes = [numpy_groups(arrays, f).shape[1] for f in FAMILIES]
  assert float(metrics.weighted_group_sparsity(as_jax(arrays), reg)) == pytest.approx(
    sizes[0] / (4 * sizes[0] + 5 * sizes[1])
  )
  tracker = metrics.StructureTracker(reg)
  state = tracker.update(tracker.init(as_jax(random_tree(1))), as_jax(arrays))
  assert int(state.last_change) == 1


def test_groups_that_do_not_fit_the_params_are_errors():
  params = as_jax(random_tree(0))
  with pytest.raises(ValueError, match="not a leaf"):
    rmda_jax.group_lasso(1.0, groups=Groups((Family("x", "units", 4, (Slice("nope", 0),)),))).value(
      params
    )
  with pytest.raises(ValueError, match="does not fit leaf 'b'"):
    rmda_jax.group_lasso(
      1.0, groups=Groups((Family("x", "units", 4, (Slice("b", 0, (5, 5), 0),)),))
    ).value(params)
  with pytest.raises(ValueError, match="holds 3 groups"):
    rmda_jax.group_lasso(1.0, groups=Groups((Family("x", "units", 4, (Slice("a", 0),)),))).value(
      params
    )
  with pytest.raises(ValueError, match="not both"):
    rmda_jax.group_lasso(1.0, rules=lambda p, x: None, groups=GROUPS)
  with pytest.raises(ValueError, match="two families"):
    Groups((FAMILIES[1], Family("again", "units", 6, (Slice("d", 0),))))
  with pytest.raises(TypeError, match="rmda_jax.Groups"):
    rmda_jax.group_lasso(1.0, groups=[FAMILIES[0]])
  tx = rmda_jax.rmda(
    0.1,
    regularizer=rmda_jax.group_lasso(
      1.0, groups=Groups((Family("x", "units", 4, (Slice("a", 0),)),))
    ),
  )
  with pytest.raises(ValueError, match="holds 3 groups"):
    tx.init(params)


@pytest.mark.parametrize(
  "reg",
  [rmda_jax.group_lasso(0.3), rmda_jax.group_lasso(0.3, groups=GROUPS)],
  ids=["per-leaf", "coupled"],
)
def test_a_nan_group_stays_nan_and_counts_as_nonzero(reg):
  arrays = random_tree(2)
  arrays["a"][0, 1] = np.nan  # group 1 of "mixed" (and row 0 of "a" for per-leaf groups)
  x = as_jax(arrays)
  z = reg.prox(x, 1.0)
  assert np.isnan(np.asarray(z["a"][0, 1]))
  diag = {k: jnp.ones(s) for k, s in SHAPES.items()}
  z_diag, _ = prox.solve(reg, x, diag, 1.0)
  assert np.isnan(np.asarray(z_diag["a"][0, 1]))
  # the other groups are untouched by the NaN
  clean = dict(arrays)
  clean["a"] = np.where(np.isnan(arrays["a"]), 0.0, arrays["a"])
  z_clean, _ = prox.solve(reg, as_jax(clean), diag, 1.0)
  finite = np.isfinite(np.asarray(z_diag["d"]))
  np.testing.assert_allclose(
    np.asarray(z_diag["d"])[finite], np.asarray(z_clean["d"])[finite], rtol=1e-5
  )
  nan_kernel = {k: jnp.full(s, jnp.nan) for k, s in SHAPES.items()}
  assert float(metrics.group_sparsity(nan_kernel, reg)) == 0.0
  assert float(metrics.weighted_group_sparsity(nan_kernel, reg)) == 0.0


# --------------------------------------------------------------------------- training
class Block(nn.Module):
  """A pre-LN Transformer block written for this test: 4 heads of 4, MLP 32."""

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, name="attn")(h, h)
    h = nn.gelu(nn.Dense(32, name="fc1")(nn.LayerNorm()(x)))
    return x + nn.Dense(16, name="fc2")(h)


def _head_slices(params, h):
  attn = params["attn"]
  return (
    [np.asarray(attn[n]["kernel"])[:, h, :] for n in ("query", "key", "value")]
    + [np.asarray(attn[n]["bias"])[h, :] for n in ("query", "key", "value")]
    + [np.asarray(attn["out"]["kernel"])[h, :, :]]
  )


def _unit_slices(params, j):
  return [
    np.asarray(params["fc1"]["kernel"])[:, j],
    np.asarray(params["fc1"]["bias"])[j],
    np.asarray(params["fc2"]["kernel"])[j, :],
  ]


@pytest.mark.parametrize("method", ["rmda", "ramda"])
def test_training_a_transformer_block_removes_whole_heads_and_units(method):
  model = Block()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 16))
  target = jax.random.normal(jax.random.PRNGKey(2), (8, 6, 16))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  groups = rmda_jax.discover_linen(model, params, x)
  assert sorted((f.kind, f.size) for f in groups.families) == [("heads", 4), ("units", 32)]
  if method == "rmda":
    reg = rmda_jax.group_lasso(1e-2, groups=groups)
    tx = rmda_jax.rmda(0.3, momentum=1.0, regularizer=reg)
  else:
    reg = rmda_jax.group_lasso(5.5e-3, groups=groups)
    tx = rmda_jax.ramda(1e-2, momentum=1.0, regularizer=reg)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2))(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(300):
    params, state = step(params, state)
  z = jax.tree_util.tree_map(np.asarray, rmda_jax.structured_params(state))
  head_zero = [all(np.all(s == 0) for s in _head_slices(z, h)) for h in range(4)]
  head_touched = [
    any(np.any(s == 0) and not np.all(s == 0) for s in _head_slices(z, h)) for h in range(4)
  ]
  unit_zero = [all(np.all(s == 0) for s in _unit_slices(z, j)) for j in range(32)]
  unit_any_zero = [any(np.all(s == 0) for s in _unit_slices(z, j)) for j in range(32)]
  assert 0 < sum(head_zero) < 4, head_zero
  assert 0 < sum(unit_zero) < 32, unit_zero
  assert not any(head_touched)  # no partial head: a head is zero everywhere or nowhere
  assert unit_zero == unit_any_zero  # a unit's slices are zero together
  assert float(metrics.weighted_group_sparsity(z, reg)) > 0


# --------------------------------------------------------------------------- structured RigL
def _numpy_event(weights, grads, kept, fraction, family):
  """One structured drop/grow event of a family, from RigL's definition, in NumPy."""
  w_norm = np.sum(numpy_groups(weights, family) ** 2, axis=1)
  g_norm = np.sum(numpy_groups(grads, family) ** 2, axis=1)
  active = int(kept.sum())
  swap = int(np.round(np.float32(fraction) * active))
  order = sorted(np.flatnonzero(kept), key=lambda j: (-w_norm[j], j))
  keep = set(order[: active - swap])
  grow_order = sorted(
    [j for j in range(family.size) if j not in keep], key=lambda j: (-g_norm[j], j)
  )
  grown = set(grow_order[:swap])
  return np.array([j in keep or j in grown for j in range(family.size)]), grown


def test_structured_rigl_keeps_and_drops_whole_groups():
  arrays = random_tree(3)
  params = as_jax(arrays)
  tx = rmda_jax.rigl(
    optax.sgd(0.0),
    sparsity=0.5,
    end_step=10,
    update_every=1,
    distribution="uniform",
    drop_fraction=0.5,
    groups=GROUPS,
  )
  state = tx.init(params)
  masks = {k: np.asarray(v) for k, v in state.masks.items()}
  for family in FAMILIES:
    rows = numpy_groups({k: m.astype(float) for k, m in masks.items()}, family)
    assert np.all((rows == 0) | (rows == 1)) and np.all(rows.min(1) == rows.max(1))  # whole groups
    assert int(rows[:, 0].sum()) == round(0.5 * family.size)
  # an event at step 1 (lr 0: the weights are the masked initial ones)
  grads = random_tree(4)
  _, state0 = tx.update(as_jax(grads), state, params)  # step 0: no event, masks the params
  masked = {k: np.where(masks[k], arrays[k], 0).astype(np.float32) for k in arrays}
  _, state1 = tx.update(as_jax(grads), state0, params)
  fraction = 0.5 / 2 * (1 + np.cos(np.pi * np.float32(1) / 10))
  for family in FAMILIES:
    kept = numpy_groups({k: m.astype(float) for k, m in masks.items()}, family)[:, 0] > 0
    expected, _ = _numpy_event(masked, grads, kept, fraction, family)
    got = numpy_groups({k: np.asarray(m).astype(float) for k, m in state1.masks.items()}, family)
    np.testing.assert_array_equal(got[:, 0] > 0, expected)
    assert np.all(got.min(1) == got.max(1))


def test_structured_rigl_trains_a_transformer_block_to_compactable_heads_and_units():
  model = Block()
  x = jax.random.normal(jax.random.PRNGKey(1), (8, 6, 16))
  target = jax.random.normal(jax.random.PRNGKey(2), (8, 6, 16))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  groups = rmda_jax.discover_linen(model, params, x)
  tx = rmda_jax.rigl(
    optax.adam(1e-2),
    sparsity=0.5,
    end_step=40,
    update_every=5,
    groups=groups,
    distribution="uniform",
  )
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    grads = jax.grad(lambda p: jnp.mean((model.apply({"params": p}, x) - target) ** 2))(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(60):
    params, state = step(params, state)
  p = jax.tree_util.tree_map(np.asarray, params)
  head_zero = [all(np.all(s == 0) for s in _head_slices(p, h)) for h in range(4)]
  unit_zero = [all(np.all(s == 0) for s in _unit_slices(p, j)) for j in range(32)]
  assert sum(head_zero) == 2 and sum(unit_zero) == 16, (head_zero, unit_zero)
  assert not any(
    any(np.any(s == 0) and not np.all(s == 0) for s in _head_slices(p, h))
    for h in range(4)
    if not head_zero[h]
  )
  small = rmda_jax.compact_function(lambda q, x: model.apply({"params": q}, x), params, groups, x)
  assert sorted(len(k) for k in small.kept.values()) == [2, 16]
  np.testing.assert_allclose(
    small.fn(small.params, x), model.apply({"params": params}, x), atol=1e-5
  )
