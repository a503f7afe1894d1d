"""Flax NNX and linen alike: paths, default rules, metrics and updates on an
``nnx.State`` equal those on the same weights as a plain dict; every optimizer
under ``nnx.Optimizer``; coupled groups discovered on an NNX model."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import rmda_jax
from rmda_jax import metrics
from rmda_jax.core import rules as leaf_rules
from rmda_jax.core import trees


class TinyLM(nnx.Module):
  """Embedding, one pre-LN attention block with an MLP, untied head."""

  def __init__(self, rngs, vocab=11, d=8, heads=2):
    self.emb = nnx.Embed(vocab, d, rngs=rngs)
    self.ln1 = nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=heads, in_features=d, qkv_features=d, decode=False, rngs=rngs
    )
    self.ln2 = nnx.LayerNorm(d, rngs=rngs)
    self.l1 = nnx.Linear(d, 16, rngs=rngs)
    self.l2 = nnx.Linear(16, d, rngs=rngs)
    self.head = nnx.Linear(d, vocab, rngs=rngs)

  def __call__(self, tokens):
    x = self.emb(tokens)
    h = self.ln1(x)
    x = x + self.attn(h, h)
    x = x + self.l2(nnx.gelu(self.l1(self.ln2(x))))
    return self.head(x)


TOKENS = jnp.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])


def _model():
  return TinyLM(nnx.Rngs(0))


def _state_and_dict():
  state = nnx.state(_model(), nnx.Param)
  return state, nnx.to_pure_dict(state)


def test_paths_have_no_value_component():
  state, plain = _state_and_dict()
  state_paths = [trees.path_to_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
  dict_paths = [trees.path_to_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(plain)[0]]
  assert state_paths == dict_paths
  assert "emb/embedding" in state_paths and "attn/query/kernel" in state_paths


def _default_rules(tree):
  resolved = rmda_jax.group_lasso(1.0).place(tree)
  return dict(zip(resolved.paths, resolved.rules))


def test_default_rules_skip_biases_scales_embeddings_and_give_heads():
  state, _ = _state_and_dict()
  rules = _default_rules(state)
  for path in (
    "emb/embedding",
    "attn/query/bias",
    "attn/key/bias",
    "attn/value/bias",
    "attn/out/bias",
    "ln1/scale",
    "ln1/bias",
    "l1/bias",
  ):
    assert rules[path] is None, path
  # (in, heads, head_dim): one group per head; out (heads, head_dim, out) too
  for name in ("query", "key", "value"):
    assert rules[f"attn/{name}/kernel"] == leaf_rules.GroupRule((0, 2))
  assert rules["attn/out/kernel"] == leaf_rules.GroupRule((1, 2))
  assert rules["l1/kernel"] == leaf_rules.GroupRule((1,))


@pytest.mark.parametrize(
  "reg",
  [
    rmda_jax.group_lasso(0.1),
    rmda_jax.l1(0.1),
    rmda_jax.nuclear_norm(0.1),
    rmda_jax.group_lasso(
      0.1, rules=leaf_rules.by_path({"l2/kernel": None}, leaf_rules.default_group_rule())
    ),
  ],
  ids=["group_lasso", "l1", "nuclear", "by_path"],
)
def test_value_prox_and_metrics_equal_on_state_and_dict(reg):
  state, plain = _state_and_dict()
  assert float(reg.value(state)) == pytest.approx(float(reg.value(plain)), rel=1e-6)
  assert float(metrics.group_sparsity(reg.prox(state, 3.0), reg)) == pytest.approx(
    float(metrics.group_sparsity(reg.prox(plain, 3.0), reg))
  )
  prox_state = (
    nnx.to_pure_dict(reg.prox(state, 3.0))
    if isinstance(reg.prox(state, 3.0), nnx.State)
    else reg.prox(state, 3.0)
  )
  jax.tree_util.tree_map(np.testing.assert_array_equal, prox_state, reg.prox(plain, 3.0))


def test_by_path_exclusion_applies_and_a_typo_is_an_error():
  state, plain = _state_and_dict()
  excluded = rmda_jax.group_lasso(
    1.0, rules=leaf_rules.by_path({"l2/kernel": None}, leaf_rules.default_group_rule())
  )
  assert dict(zip(excluded.place(state).paths, excluded.place(state).rules))["l2/kernel"] is None
  assert float(excluded.value(state)) < float(rmda_jax.group_lasso(1.0).value(state))
  typo = rmda_jax.group_lasso(
    1.0, rules=leaf_rules.by_path({"l3/kernel": None}, leaf_rules.default_group_rule())
  )
  with pytest.raises(ValueError, match=r"l3/kernel.*match no leaf"):
    typo.value(plain)
  with pytest.raises(ValueError, match="match no leaf"):
    rmda_jax.rmda(0.1, regularizer=typo).init(state)


def test_a_tree_of_rules_fits_a_state_and_a_dict():
  state, plain = _state_and_dict()
  rule_tree = jax.tree_util.tree_map(
    lambda x: leaf_rules.GroupRule((x.ndim - 1,)) if x.ndim == 2 else None, plain
  )
  reg = rmda_jax.group_lasso(0.5, rules=rule_tree)
  assert float(reg.value(state)) == pytest.approx(float(reg.value(plain)), rel=1e-6)
  tx = rmda_jax.rmda(0.1, regularizer=reg)
  grads = jax.tree_util.tree_map(jnp.ones_like, state)
  updates, _ = jax.jit(tx.update)(grads, tx.init(state), state)
  assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree_util.tree_leaves(updates))
  with pytest.raises(ValueError, match="no rule for"):
    rmda_jax.group_lasso(0.5, rules={"l1": {"kernel": leaf_rules.GroupRule((1,))}}).value(state)


OPTIMIZERS = {
  "rmda": lambda reg: rmda_jax.rmda(0.1, regularizer=reg),
  "ramda": lambda reg: rmda_jax.ramda(1e-2, regularizer=reg),
  "prox_sgd": lambda reg: rmda_jax.prox_sgd(0.1, regularizer=reg),
  "prox_adamw": lambda reg: rmda_jax.prox_adamw(1e-3, regularizer=reg),
  "prox_ssi": lambda reg: rmda_jax.prox_ssi(1e-3, regularizer=reg),
  "rigl": lambda reg: rmda_jax.rigl(optax.sgd(0.1), 0.8, end_step=10, update_every=1),
}


def _loss(model, tokens):
  logits = model(tokens)
  return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens[:, 1:]).mean()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_under_nnx_optimizer_equals_the_plain_dict_run(name):
  reg = rmda_jax.group_lasso(1e-2)
  model = _model()
  optimizer = nnx.Optimizer(model, OPTIMIZERS[name](reg), wrt=nnx.Param)

  @nnx.jit
  def nnx_step(model, optimizer):
    grads = nnx.grad(_loss)(model, TOKENS)
    optimizer.update(model, grads)

  graphdef, params, rest = nnx.split(_model(), nnx.Param, ...)
  plain = nnx.to_pure_dict(params)
  tx = OPTIMIZERS[name](reg)
  opt_state = tx.init(plain)

  @jax.jit
  def dict_step(p, s):
    def loss(p):
      state = nnx.clone(params)
      nnx.replace_by_pure_dict(state, p)
      return _loss(nnx.merge(graphdef, state, rest), TOKENS)

    updates, s = tx.update(jax.grad(loss)(p), s, p)
    return optax.apply_updates(p, updates), s

  for _ in range(3):
    nnx_step(model, optimizer)
    plain, opt_state = dict_step(plain, opt_state)
  got = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  jax.tree_util.tree_map(
    lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), got, plain
  )
  if name == "rigl":  # the embedding is not a sparse leaf (as in linen)
    assert np.count_nonzero(np.asarray(got["emb"]["embedding"])) == got["emb"]["embedding"].size
    paths, masks = _paths_and_leaves(rmda_jax.optim.pruning.masks_of(opt_state))
    kernels = [np.asarray(m) for p, m in zip(paths, masks) if p.endswith("kernel")]
    assert sum(int(k.sum()) for k in kernels) / sum(k.size for k in kernels) == pytest.approx(
      0.2, abs=0.01
    )
    assert all(np.asarray(m).all() for p, m in zip(paths, masks) if not p.endswith("kernel"))


def _paths_and_leaves(tree):
  keyed = jax.tree_util.tree_flatten_with_path(tree)[0]
  return [trees.path_to_str(kp) for kp, _ in keyed], [x for _, x in keyed]


def test_discovered_groups_train_under_nnx_optimizer():
  model = _model()
  found = rmda_jax.discover_nnx(model, TOKENS)
  assert sorted((f.kind, f.size) for f in found.families) == [("heads", 2), ("units", 16)]
  reg = rmda_jax.group_lasso(0.05, groups=found)
  optimizer = nnx.Optimizer(model, rmda_jax.rmda(0.5, momentum=1.0, regularizer=reg), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(_loss)(model, TOKENS))

  for _ in range(30):
    step(model, optimizer)
  state = nnx.state(model, nnx.Param)
  assert float(metrics.group_sparsity(state, reg)) > 0
  assert float(metrics.group_sparsity(state, reg)) == pytest.approx(
    float(metrics.group_sparsity(nnx.to_pure_dict(state), reg))
  )


def test_structured_rigl_under_nnx_optimizer_drops_whole_heads_and_units():
  model = _model()
  found = rmda_jax.discover_nnx(model, TOKENS)
  tx = rmda_jax.rigl(
    optax.sgd(0.1), sparsity=0.5, end_step=8, update_every=2, groups=found, distribution="uniform"
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    optimizer.update(model, nnx.grad(_loss)(model, TOKENS))

  for _ in range(10):
    step(model, optimizer)
  p = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  attn = p["attn"]
  heads = [
    [np.asarray(attn[n]["kernel"])[:, h] for n in ("query", "key", "value")]
    + [np.asarray(attn[n]["bias"])[h] for n in ("query", "key", "value")]
    + [np.asarray(attn["out"]["kernel"])[h]]
    for h in range(2)
  ]
  units = [
    [
      np.asarray(p["l1"]["kernel"])[:, j],
      np.asarray(p["l1"]["bias"])[j : j + 1],
      np.asarray(p["l2"]["kernel"])[j],
    ]
    for j in range(16)
  ]
  for slices, expected in ((heads, 1), (units, 8)):
    zero = [all(not s.any() for s in group) for group in slices]
    assert sum(zero) == expected
    assert all(
      all(s.all() for s in group) for group, z in zip(slices, zero) if not z
    )  # kept = dense
