"""Input validation (types and ranges of hyperparameters, rules, trees), zero-size
leaves, and skipping steps with a non-finite gradient."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax.core import rules as leaf_rules
from rmda_jax.optim import pruning
from rmda_jax.testing import assert_no_host_transfers

OPTIMIZERS = {
  "rmda": lambda reg, **kw: rmda_jax.rmda(0.1, momentum=0.5, regularizer=reg, **kw),
  "ramda": lambda reg, **kw: rmda_jax.ramda(0.05, momentum=0.5, regularizer=reg, **kw),
  "prox_sgd": lambda reg, **kw: rmda_jax.prox_sgd(0.1, regularizer=reg, **kw),
  "prox_adamw": lambda reg, **kw: rmda_jax.prox_adamw(
    0.02, weight_decay=0.1, regularizer=reg, **kw
  ),
  "prox_ssi": lambda reg, **kw: rmda_jax.prox_ssi(0.02, regularizer=reg, **kw),
  "rigl": lambda reg, **kw: rmda_jax.rigl(
    rmda_jax.prox_sgd(0.1, regularizer=reg), sparsity=0.5, end_step=10, update_every=1, **kw
  ),
}
REGULARIZERS = {
  "group_lasso": lambda: rmda_jax.group_lasso(0.05),
  "l1": lambda: rmda_jax.l1(0.01),
  "nuclear_norm": lambda: rmda_jax.nuclear_norm(0.05),
}


def _params():
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  return {
    "Dense_0": {"kernel": jax.random.normal(k1, (4, 3)), "bias": jnp.zeros(3)},
    "Dense_1": {"kernel": jax.random.normal(k2, (3, 2))},
    "empty": {"kernel": jnp.ones((5, 0))},
  }


def _grads(params, seed):
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
    treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
  )


def _run(tx, params, grads_list, state=None):
  update = jax.jit(tx.update)
  state = tx.init(params) if state is None else state
  updates = None
  for grads in grads_list:
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
  return params, state, updates


# --------------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize(
  "make, error, match",
  [
    # wrong types: a TypeError naming the argument and what it accepts
    (
      lambda: rmda_jax.rmda("0.1"),
      TypeError,
      "learning_rate must be a number, a scalar array or an optax schedule",
    ),
    (lambda: rmda_jax.rmda(None), TypeError, "learning_rate must be a number"),
    (lambda: rmda_jax.rmda([0.1]), TypeError, "learning_rate .*got list"),
    (lambda: rmda_jax.rmda({"lr": 0.1}), TypeError, "learning_rate .*got dict"),
    (lambda: rmda_jax.rmda(True), TypeError, "learning_rate .*got bool"),
    (lambda: rmda_jax.rmda(jnp.array(True)), TypeError, "learning_rate .*dtype bool"),
    (lambda: rmda_jax.rmda(rmda_jax.l1(0.1)), TypeError, "learning_rate .*regularizer="),
    (lambda: rmda_jax.rmda(0.1, momentum=None), TypeError, "momentum must be a number"),
    (lambda: rmda_jax.ramda(0.1, eps="1e-6"), TypeError, "eps must be a number or a scalar array"),
    (lambda: rmda_jax.prox_sgd(0.1, momentum=[0.9]), TypeError, "momentum"),
    (lambda: rmda_jax.prox_sgd(rmda_jax.l1(0.1)), TypeError, "learning_rate .*regularizer="),
    (lambda: rmda_jax.prox_adamw(0.1, b1="0.9"), TypeError, "b1 must be a number"),
    (lambda: rmda_jax.prox_adamw(0.1, eps=None), TypeError, "eps must be a number"),
    (
      lambda: rmda_jax.prox_ssi(0.1, weight_decay=[0.1]),
      TypeError,
      "weight_decay must be a number",
    ),
    (lambda: rmda_jax.group_lasso("1"), TypeError, "strength must be a number or a scalar array"),
    (lambda: rmda_jax.l1(None), TypeError, "strength must be a number"),
    (lambda: rmda_jax.nuclear_norm([1.0]), TypeError, "strength"),
    (lambda: rmda_jax.discrete_penalty({}, (0.0, 1.0)), TypeError, "strength"),
    # concrete arrays are checked like numbers: a ValueError naming the argument and the range
    (
      lambda: rmda_jax.rmda(jnp.array(-0.1)),
      ValueError,
      "learning_rate must be a finite number >= 0",
    ),
    (
      lambda: rmda_jax.rmda(jnp.array(jnp.nan)),
      ValueError,
      "learning_rate must be a finite number >= 0",
    ),
    (
      lambda: rmda_jax.rmda(jnp.array([0.1])),
      ValueError,
      r"learning_rate must be a scalar.*shape \(1,\)",
    ),
    (
      lambda: rmda_jax.rmda(0.1, momentum=jnp.array(0.0)),
      ValueError,
      r"momentum must be in \(0, 1\]",
    ),
    (
      lambda: rmda_jax.ramda(0.1, momentum=np.float32(1.5)),
      ValueError,
      r"momentum must be in \(0, 1\]",
    ),
    (
      lambda: rmda_jax.ramda(0.1, eps=jnp.array(-1.0)),
      ValueError,
      "eps must be a finite number >= 0",
    ),
    (
      lambda: rmda_jax.prox_sgd(np.array(-1.0)),
      ValueError,
      "learning_rate must be a finite number >= 0",
    ),
    (lambda: rmda_jax.prox_adamw(0.1, b1=jnp.array(1.0)), ValueError, r"b1 must be in \[0, 1\)"),
    (lambda: rmda_jax.prox_ssi(0.1, b2=jnp.array(-0.5)), ValueError, r"b2 must be in \[0, 1\)"),
    (
      lambda: rmda_jax.prox_adamw(0.1, weight_decay=jnp.array(-1.0)),
      ValueError,
      "weight_decay must be a finite",
    ),
    (
      lambda: rmda_jax.group_lasso(jnp.array(-1.0)),
      ValueError,
      "strength must be a finite number >= 0",
    ),
    (lambda: rmda_jax.l1(jnp.array(jnp.inf)), ValueError, "strength must be a finite number >= 0"),
    (
      lambda: rmda_jax.nuclear_norm(jnp.ones(2)),
      ValueError,
      r"strength must be a scalar.*shape \(2,\)",
    ),
    (
      lambda: rmda_jax.discrete_penalty(jnp.array(-1.0), (0.0, 1.0)),
      ValueError,
      "strength must be a finite",
    ),
    # group rules
    (lambda: leaf_rules.GroupRule((0.5,)), TypeError, r"GroupRule.reduce_axes must hold integers"),
    (lambda: leaf_rules.GroupRule((True,)), TypeError, r"GroupRule.reduce_axes must hold integers"),
    (
      lambda: leaf_rules.GroupRule((0, np.float64(1.0))),
      TypeError,
      r"GroupRule.reduce_axes must hold integers",
    ),
    (
      lambda: leaf_rules.GroupRule(0),
      TypeError,
      r"GroupRule.reduce_axes must be a tuple of integer axes",
    ),
    (lambda: leaf_rules.GroupRule("01"), TypeError, r"GroupRule.reduce_axes must be a tuple"),
    (
      lambda: leaf_rules.GroupRule((0,), weight="2"),
      TypeError,
      r"GroupRule.weight must be a number",
    ),
    (
      lambda: leaf_rules.GroupRule((0,), weight=jnp.array(-2.0)),
      ValueError,
      r"GroupRule.weight must be a finite",
    ),
    # skip_nonfinite
    (
      lambda: rmda_jax.rmda(0.1, skip_nonfinite=-1),
      ValueError,
      "skip_nonfinite must be a bool or an integer >= 0",
    ),
    (
      lambda: rmda_jax.ramda(0.1, skip_nonfinite=0.5),
      TypeError,
      "skip_nonfinite must be a bool or an integer",
    ),
    (lambda: rmda_jax.prox_sgd(0.1, skip_nonfinite="yes"), TypeError, "skip_nonfinite"),
    (lambda: rmda_jax.prox_adamw(0.1, skip_nonfinite=jnp.array(3)), TypeError, "static_args"),
    # rigl and discrete
    (lambda: rmda_jax.rigl(optax.sgd(0.1), "0.9", 10), TypeError, "sparsity must be a number"),
    (
      lambda: rmda_jax.rigl(optax.sgd(0.1), jnp.array(1.0), 10),
      ValueError,
      r"sparsity must be in \[0, 1\)",
    ),
    (lambda: rmda_jax.rigl(optax.sgd(0.1), 0.9, "10"), TypeError, "end_step must be an integer"),
    (lambda: rmda_jax.rigl(optax.sgd(0.1), 0.9, 10.5), TypeError, "end_step must be an integer"),
    (lambda: rmda_jax.rigl(optax.sgd(0.1), 0.9, 10, update_every=None), TypeError, "update_every"),
    (
      lambda: rmda_jax.rigl(optax.sgd(0.1), 0.9, 10, skip_nonfinite=-2),
      ValueError,
      "skip_nonfinite",
    ),
    (lambda: rmda_jax.discrete_set("01"), TypeError, "values must be a sequence of numbers"),
    (lambda: rmda_jax.discrete_set((0.0, "1")), TypeError, "values must be a sequence of numbers"),
  ],
)
def test_bad_arguments_name_the_argument(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("name", ["rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi"])
def test_array_hyperparameters_equal_floats(name):
  params = _params()
  grads = [_grads(params, s) for s in range(3)]

  def make(wrap):
    reg = rmda_jax.group_lasso(wrap(0.05))
    if name in ("rmda", "ramda"):
      extra = {"eps": wrap(1e-6)} if name == "ramda" else {}
      return getattr(rmda_jax, name)(wrap(0.05), momentum=wrap(0.5), regularizer=reg, **extra)
    if name == "prox_sgd":
      return rmda_jax.prox_sgd(wrap(0.1), momentum=wrap(0.5), regularizer=reg)
    return getattr(rmda_jax, name)(
      wrap(0.02),
      b1=wrap(0.8),
      b2=wrap(0.99),
      eps=wrap(1e-6),
      weight_decay=wrap(0.1),
      regularizer=reg,
    )

  expected = _run(make(float), params, grads)
  for wrap in (jnp.asarray, np.asarray):
    got = _run(make(wrap), params, grads)
    chex.assert_trees_all_close(got[0], expected[0], rtol=1e-6, atol=1e-7)
    chex.assert_trees_all_close(
      got[1], expected[1], rtol=1e-5, atol=1e-6
    )  # solver residuals: round-off


def test_array_strength_equals_float():
  params = _params()
  for make in (rmda_jax.group_lasso, rmda_jax.l1, rmda_jax.nuclear_norm):
    chex.assert_trees_all_close(
      make(jnp.array(0.3)).prox(params, 0.5), make(0.3).prox(params, 0.5), rtol=1e-6
    )
    np.testing.assert_allclose(
      float(make(jnp.array(0.3)).value(params)), float(make(0.3).value(params)), rtol=1e-6
    )


def test_traced_hyperparameters_are_not_checked():
  params = _params()
  grads = [_grads(params, s) for s in range(3)]
  reg = rmda_jax.group_lasso(0.05)
  # learning rate and momentum become traced arrays inside the jitted update
  injected = optax.inject_hyperparams(rmda_jax.rmda, static_args=("regularizer",))(0.1, 0.5, reg)
  got = _run(injected, params, grads)
  expected = _run(rmda_jax.rmda(0.1, 0.5, reg), params, grads)
  chex.assert_trees_all_close(got[0], expected[0], rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(
    rmda_jax.structured_params(got[1]),
    rmda_jax.structured_params(expected[1]),
    rtol=1e-6,
    atol=1e-7,
  )

  # the strength itself as an injected (traced) hyperparameter
  def factory(learning_rate, strength):
    return rmda_jax.rmda(learning_rate, momentum=1.0, regularizer=rmda_jax.group_lasso(strength))

  injected = optax.inject_hyperparams(factory)(learning_rate=0.1, strength=0.05)
  got = _run(injected, params, grads)
  expected = _run(factory(0.1, 0.05), params, grads)
  chex.assert_trees_all_close(got[0], expected[0], rtol=1e-6, atol=1e-7)
  state = injected.init(params)
  state.hyperparams["strength"] = jnp.asarray(100.0)  # changed between steps: every group is zeroed
  new_params, _, _ = _run(injected, params, grads[:1], state)
  assert float(jnp.abs(new_params["Dense_0"]["kernel"]).sum()) == 0.0
  # Adam's betas, eps and weight decay (TypeError before: "b1 must be a number")
  injected = optax.inject_hyperparams(rmda_jax.prox_adamw, static_args=("regularizer",))(
    0.02, b1=0.8, weight_decay=0.1, regularizer=reg
  )
  got = _run(injected, params, grads)
  expected = _run(
    rmda_jax.prox_adamw(0.02, b1=0.8, weight_decay=0.1, regularizer=reg), params, grads
  )
  chex.assert_trees_all_close(got[0], expected[0], rtol=1e-5, atol=1e-6)
  # a regularizer built inside jit from a traced strength
  prox = jax.jit(lambda s, x: rmda_jax.group_lasso(s).prox(x))(jnp.asarray(0.3), params)
  chex.assert_trees_all_close(prox, rmda_jax.group_lasso(0.3).prox(params), rtol=1e-6)


# --------------------------------------------------------------------------- zero-size leaves
@pytest.mark.parametrize("reg_name", sorted(REGULARIZERS))
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_zero_size_leaves(name, reg_name):
  params = _params()
  tx = OPTIMIZERS[name](REGULARIZERS[reg_name]())
  new_params, state, updates = _run(tx, params, [_grads(params, 0), _grads(params, 1)])
  assert new_params["empty"]["kernel"].shape == (5, 0) and updates["empty"]["kernel"].shape == (
    5,
    0,
  )
  for leaf in jax.tree_util.tree_leaves((new_params, state)):
    if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
      assert bool(jnp.all(jnp.isfinite(leaf))), (name, reg_name)
  assert not bool(jnp.all(new_params["Dense_1"]["kernel"] == params["Dense_1"]["kernel"]))


def test_zero_size_leaf_is_unregularized():
  params = _params()
  rules = {
    "Dense_0": {"kernel": leaf_rules.GroupRule((1,)), "bias": None},
    "Dense_1": {"kernel": None},
    "empty": {"kernel": leaf_rules.GroupRule((1,))},
  }
  reg = rmda_jax.group_lasso(0.1, rules=rules)
  resolved = reg.place(params)
  assert resolved.rules[resolved.paths.index("empty/kernel")] is None
  assert len(reg.support(params)) == 1
  assert reg.prox(params)["empty"]["kernel"].shape == (5, 0)
  for make in (rmda_jax.l1, rmda_jax.nuclear_norm, rmda_jax.group_lasso):
    assert bool(jnp.isfinite(make(0.1).value(params)))
  # a rule that does not fit the leaf is still an error
  rules["empty"]["kernel"] = leaf_rules.GroupRule((2,))
  with pytest.raises(ValueError, match="reduce axis 2"):
    rmda_jax.group_lasso(0.1, rules=rules).check(params)
  assert pruning.active_counts([(4, 3)], 0.5) == [6]
  masks = rmda_jax.rigl(optax.sgd(0.1), 0.5, 10, update_every=2).init(params).masks
  assert masks["empty"]["kernel"].shape == (5, 0)


# --------------------------------------------------------------------------- tree mismatches
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_grads_tree_must_match_params(name):
  params = _params()
  tx = OPTIMIZERS[name](rmda_jax.group_lasso(0.05))
  state = tx.init(params)
  grads = _grads(params, 0)
  missing = {k: v for k, v in grads.items() if k != "Dense_1"}
  with pytest.raises(
    ValueError,
    match=r"(?s)grads must have the params' tree structure.*only in params: "
    r"\['Dense_1'\]\['kernel'\].*grads: PyTreeDef.*params: PyTreeDef",
  ):
    tx.update(missing, state, params)
  extra = dict(grads, extra=jnp.ones(2))
  with pytest.raises(ValueError, match=r"(?s)grads must have.*only in grads: \['extra'\]"):
    jax.jit(tx.update)(extra, state, params)
  with pytest.raises(ValueError, match="grads must have the params' tree structure"):
    tx.update(jax.tree_util.tree_leaves(grads), state, params)
  wrong_shape = jax.tree_util.tree_map(lambda g: g, grads)
  wrong_shape["Dense_1"]["kernel"] = jnp.ones((3, 1))
  with pytest.raises(
    ValueError,
    match=r"grads must have the params' shapes: leaf \['Dense_1'\]\['kernel'\] "
    r"has shape \(3, 1\), the param \(3, 2\)",
  ):
    jax.jit(tx.update)(wrong_shape, state, params)
  other = {k: v for k, v in params.items() if k != "Dense_1"}
  with pytest.raises(ValueError, match=rf"the {name} state must have the params' tree structure"):
    tx.update(grads, tx.init(other), params)


def test_tree_checks_add_nothing_to_the_compiled_step():
  params = _params()
  tx = rmda_jax.ramda(0.05, regularizer=rmda_jax.group_lasso(0.05), skip_nonfinite=True)
  assert_no_host_transfers(jax.jit(tx.update), _grads(params, 0), tx.init(params), params)


# --------------------------------------------------------------------------- skip non-finite steps
def _inner(state):
  return state.inner_state


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_skip_nonfinite(name):
  params = _params()
  reg = rmda_jax.group_lasso(0.05)
  tx = OPTIMIZERS[name](reg, skip_nonfinite=True)
  plain = OPTIMIZERS[name](reg)
  g1, g2 = _grads(params, 1), _grads(params, 2)
  bad = jax.tree_util.tree_map(lambda g: g, g1)
  bad["Dense_0"]["kernel"] = bad["Dense_0"]["kernel"].at[1, 2].set(jnp.nan)
  update = jax.jit(tx.update)

  state0 = tx.init(params)
  assert isinstance(state0, optax.ApplyIfFiniteState)
  chex.assert_trees_all_equal(_inner(state0), plain.init(params))
  u1, s1 = update(g1, state0, params)
  p1 = optax.apply_updates(params, u1)
  # one NaN entry: a zero update, the inner state untouched, the counters up
  u_bad, s_bad = update(bad, s1, p1)
  for u in jax.tree_util.tree_leaves(u_bad):
    assert bool(jnp.all(u == 0))
  chex.assert_trees_all_equal(_inner(s_bad), _inner(s1), strict=True)
  assert (
    int(s_bad.notfinite_count) == 1
    and int(s_bad.total_notfinite) == 1
    and not bool(s_bad.last_finite)
  )
  assert int(s1.notfinite_count) == 0 and int(s1.total_notfinite) == 0 and bool(s1.last_finite)
  # a second one in a row is skipped too (True never gives up)
  _, s_bad2 = update(bad, s_bad, p1)
  assert int(s_bad2.notfinite_count) == 2 and int(s_bad2.total_notfinite) == 2
  chex.assert_trees_all_equal(_inner(s_bad2), _inner(s1), strict=True)
  # the next finite step is the step of a run that never saw the NaN
  u2, s2 = update(g2, s_bad2, p1)
  plain_update = jax.jit(plain.update)
  v1, t1 = plain_update(g1, plain.init(params), params)
  v2, t2 = plain_update(g2, t1, optax.apply_updates(params, v1))
  chex.assert_trees_all_close(u2, v2, rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(_inner(s2), t2, rtol=1e-6, atol=1e-7)
  assert int(s2.notfinite_count) == 0 and int(s2.total_notfinite) == 2 and bool(s2.last_finite)
  # the accessors see through the wrapper
  if name in ("rmda", "ramda"):
    chex.assert_trees_all_equal(rmda_jax.structured_params(s2), rmda_jax.structured_params(t2))
  elif name == "rigl":
    chex.assert_trees_all_equal(pruning.masks_of(s2), t2.masks)
  else:
    assert rmda_jax.structured_params(s2, p1) is p1


def test_skip_nonfinite_gives_up_after_max_consecutive_errors():
  params = {"w": jnp.ones((3, 2))}
  tx = rmda_jax.rmda(0.1, regularizer=rmda_jax.group_lasso(0.01), skip_nonfinite=2)
  bad = {"w": jnp.full((3, 2), jnp.inf)}
  state = tx.init(params)
  for expected_finite in (True, True, False):
    updates, state = tx.update(bad, state, params)
    assert bool(jnp.all(jnp.isfinite(updates["w"]))) == expected_finite
  assert rmda_jax.rmda(0.1, skip_nonfinite=0).init(params).__class__ is rmda_jax.DualAveragingState
  assert (
    rmda_jax.rmda(0.1, skip_nonfinite=False).init(params).__class__ is rmda_jax.DualAveragingState
  )


def test_skip_nonfinite_state_is_a_plain_pytree():
  params = {"w": jnp.ones((4, 2)), "b": jnp.zeros(2)}
  tx = rmda_jax.ramda(0.05, regularizer=rmda_jax.group_lasso(0.01), skip_nonfinite=True)
  state = rmda_jax.optim.sharding.init(tx, params)
  assert isinstance(state, optax.ApplyIfFiniteState) and isinstance(
    state.inner_state, rmda_jax.DualAveragingState
  )
  shardings = rmda_jax.optim.sharding.state_shardings(tx, params)
  assert jax.tree_util.tree_structure(shardings) == jax.tree_util.tree_structure(state)
  for leaf in jax.tree_util.tree_leaves(state):
    assert isinstance(leaf, jax.Array)
  # a wrapped optimizer with injected hyperparameters (skip_nonfinite stays a static bool)
  injected = optax.inject_hyperparams(rmda_jax.rmda, static_args=("regularizer",))(
    0.1, 0.5, rmda_jax.group_lasso(0.01), skip_nonfinite=True
  )
  state = injected.init(params)
  _, state = jax.jit(injected.update)(
    {"w": jnp.full((4, 2), jnp.nan), "b": jnp.ones(2)}, state, params
  )
  assert int(state.inner_state.total_notfinite) == 1
  chex.assert_trees_all_equal(rmda_jax.structured_params(state), params)


def test_skip_nonfinite_checkpoint_roundtrip(tmp_path):
  pytest.importorskip("orbax.checkpoint")
  from rmda_jax.app import checkpoint

  params = {"w": jnp.ones((3, 2))}
  tx = rmda_jax.rmda(0.1, regularizer=rmda_jax.group_lasso(0.01), skip_nonfinite=True)
  state = tx.init(params)
  _, state = tx.update({"w": jnp.full((3, 2), jnp.nan)}, state, params)
  path = str(tmp_path / "ckpt")
  checkpoint.save(path, {"opt_state": state})
  restored = checkpoint.restore(path, {"opt_state": tx.init(params)})["opt_state"]
  assert isinstance(restored, optax.ApplyIfFiniteState)
  chex.assert_trees_all_equal(restored, state)
