"""Compaction of any model from its discovered groups: same outputs, the widths the
zeroed slices imply (computed here from the zero patterns the tests set)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rmda_jax
from rmda_jax import compaction
from rmda_jax.app import models

X_KEY, CHECK_KEY = jax.random.PRNGKey(1), jax.random.PRNGKey(2)


def assert_close(got, want):
  scale = float(np.max(np.abs(np.asarray(want)))) + 1e-6
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=3e-5 * scale, rtol=1e-4)


def set_rows(tree, path, index, value=0.0):
  """``tree[path][index] = value`` on a nested dict of arrays (a copy)."""
  tree = jax.tree_util.tree_map(lambda x: x, tree)
  node = tree
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = jnp.asarray(node[path[-1]]).at[index].set(value)
  return tree


# --------------------------------------------------------------------------- linen, any function
class UserMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(10, name="a")(x))
    x = nn.relu(nn.Dense(8, name="b")(x))
    x = nn.relu(nn.Dense(6, name="c")(x))
    return nn.Dense(3, name="d")(x)


class ConvBN(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(
      nn.BatchNorm(use_running_average=True, name="bn0")(nn.Conv(8, (3, 3), name="conv0")(x))
    )
    x = nn.relu(
      nn.BatchNorm(use_running_average=True, name="bn1")(nn.Conv(6, (3, 3), name="conv1")(x))
    )
    return nn.Dense(3, name="head")(jnp.mean(x, axis=(1, 2)))


class Residual(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.relu(
      nn.BatchNorm(use_running_average=True, name="bn0")(
        nn.Conv(6, (3, 3), use_bias=False, name="conv0")(x)
      )
    )
    h = nn.BatchNorm(use_running_average=True, name="bn1")(
      nn.Conv(4, (3, 3), use_bias=False, name="conv1")(h)
    )
    return nn.relu(x + h)


class PreLN(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, name="attn")(h, h)
    h = nn.gelu(nn.Dense(32, name="fc1")(nn.LayerNorm()(x)))
    return x + nn.Dense(16, name="fc2")(h)


class FusedQKV(nn.Module):
  heads: int = 4
  head_dim: int = 4

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    h = nn.LayerNorm()(x)
    qkv = nn.Dense(3 * self.heads * self.head_dim, name="qkv")(h).reshape(
      b, t, 3, self.heads, self.head_dim
    )
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    weights = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(self.head_dim), axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.heads * self.head_dim)
    return x + nn.Dense(d, name="proj")(out)


def _linen(model, shape, mutate, use_extras=False):
  x = jax.random.normal(X_KEY, shape)
  variables = model.init(jax.random.PRNGKey(0), x)
  params = mutate(dict(variables["params"]))
  extras = {k: v for k, v in variables.items() if k != "params"}
  if use_extras:
    extras = jax.tree_util.tree_map(
      lambda v: v + jax.random.uniform(CHECK_KEY, v.shape), extras
    )  # not trivial stats

    def apply(p, e, x):
      return model.apply({"params": p, **e}, x)

    groups = rmda_jax.discover_groups(lambda p, x: apply(p, extras, x), params, x)
    small = compaction.compact_function(apply, params, groups, x, extras=extras)

    def want(x):
      return apply(params, extras, x)

  else:

    def apply(p, x):
      return model.apply({"params": p}, x)

    groups = rmda_jax.discover_groups(apply, params, x)
    small = compaction.compact_function(apply, params, groups, x)

    def want(x):
      return apply(params, x)

  other = jax.random.normal(CHECK_KEY, (shape[0] + 3,) + tuple(shape[1:]))  # another batch size
  assert_close(
    jax.jit(small.fn)(small.params, *([small.extras] if use_extras else []), other), want(other)
  )
  assert_close(small(x), want(x))
  return small


def test_user_mlp_keeps_one_all_and_every_other_unit():
  def mutate(p):
    p = set_rows(p, ("b", "kernel"), slice(1, None))  # layer a keeps one unit (consumer rows)
    p = set_rows(p, ("d", "kernel"), slice(0, None, 2))  # layer c loses every other unit
    return p  # layer b keeps all

  small = _linen(UserMLP(), (4, 5), mutate)
  shapes = {k: v["kernel"].shape for k, v in small.params.items()}
  assert shapes == {"a": (5, 1), "b": (1, 8), "c": (8, 3), "d": (3, 3)}
  np.testing.assert_array_equal(small.kept["c"], [1, 3, 5])


def test_conv_batchnorm_block_cuts_statistics_too():
  def mutate(p):
    p = set_rows(
      p, ("conv1", "kernel"), (slice(None), slice(None), np.array([0, 3, 4]))
    )  # consumer rows
    # channel 5 of conv0 silenced at its producers: conv, bias, and the norm's scale and shift
    for path in (("conv0", "kernel"), ("conv0", "bias"), ("bn0", "scale"), ("bn0", "bias")):
      p = set_rows(p, path, (..., 5))
    return p

  small = _linen(ConvBN(), (2, 6, 6, 3), mutate, use_extras=True)
  assert small.params["conv0"]["kernel"].shape == (3, 3, 3, 4)
  assert small.params["bn0"]["scale"].shape == (4,)
  assert small.extras["batch_stats"]["bn0"]["mean"].shape == (4,)
  assert small.params["conv1"]["kernel"].shape == (3, 3, 4, 6)
  np.testing.assert_array_equal(small.kept["conv0"], [1, 2, 6, 7])


def test_residual_block_cuts_the_internal_channels_only():
  def mutate(p):
    return set_rows(p, ("conv1", "kernel"), (slice(None), slice(None), np.array([1, 2, 4])))

  small = _linen(Residual(), (2, 5, 5, 4), mutate, use_extras=True)
  assert small.params["conv0"]["kernel"].shape == (3, 3, 4, 3)
  assert small.params["conv1"]["kernel"].shape == (3, 3, 3, 4)  # the stream keeps its 4 channels
  assert small.extras["batch_stats"]["bn0"]["var"].shape == (3,)


def test_pre_ln_transformer_loses_heads_and_hidden_units():
  def mutate(p):
    p = set_rows(p, ("attn", "out", "kernel"), np.array([0, 2]))  # heads 0 and 2 reach nothing
    return set_rows(p, ("fc2", "kernel"), slice(0, 32, 2))  # every other hidden unit

  small = _linen(PreLN(), (3, 5, 16), mutate)
  attn = small.params["attn"]
  assert attn["query"]["kernel"].shape == (16, 2, 4) and attn["query"]["bias"].shape == (2, 4)
  assert attn["out"]["kernel"].shape == (2, 4, 16)
  assert small.params["fc1"]["kernel"].shape == (16, 16) and small.params["fc2"][
    "kernel"
  ].shape == (16, 16)
  np.testing.assert_array_equal(small.kept["attn"], [1, 3])


def test_fused_qkv_block_loses_heads():
  def mutate(p):
    kernel = np.array(p["proj"]["kernel"]).reshape(4, 4, 16)  # (heads, head_dim, out)
    kernel[[1, 2]] = 0
    p["proj"] = dict(p["proj"], kernel=jnp.asarray(kernel.reshape(16, 16)))
    return p

  small = _linen(FusedQKV(), (2, 5, 16), mutate)
  assert small.params["qkv"]["kernel"].shape == (16, 3 * 2 * 4)
  assert small.params["proj"]["kernel"].shape == (8, 16)


# ----------------------------------------------------------------------- the library's linen models
def test_library_transformer_block_is_rebuilt_smaller(tmp_path):
  model = models.TransformerBlock(dim=16, heads=4, mlp_ratio=2)
  x = jax.random.normal(X_KEY, (2, 5, 16))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  params = set_rows(params, ("MultiHeadDotProductAttention_0", "out", "kernel"), np.array([3]))
  params = set_rows(params, ("Dense_1", "kernel"), np.arange(0, 32, 4))
  small = compaction.compact(model, params)
  assert (small.model.heads, small.model.qkv_features, small.model.mlp_features) == (3, 12, 24)
  other = jax.random.normal(CHECK_KEY, (3, 7, 16))
  assert_close(small.apply(other), model.apply({"params": params}, other))
  # written to disk, it loads without the original
  compaction.save(str(tmp_path / "small"), small)
  loaded = compaction.load(str(tmp_path / "small"), classes=models.ZOO)
  assert loaded.model == small.model
  assert_close(loaded.apply(other), model.apply({"params": params}, other))
  with pytest.raises(ValueError, match="no compact model"):
    compaction.load(str(tmp_path))


def test_a_user_linen_module_points_to_the_generic_path():
  with pytest.raises(TypeError, match=r"UserMLP.*compact_linen.*compact_function"):
    compaction.compact(UserMLP(), {})


# -------------------------------------------------------------------- linen modules rebuilt smaller
class FieldMLP(nn.Module):
  hidden: tuple = (10, 8, 6)

  @nn.compact
  def __call__(self, x):
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(3)(x)


class FieldConvBN(nn.Module):
  channels: int = 8

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(self.channels, (3, 3))(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(3)(jnp.mean(nn.Conv(5, (3, 3))(x), axis=(1, 2)))


class FieldResidual(nn.Module):
  inner: int = 6

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.Conv(self.inner, (3, 3), use_bias=False)(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
    h = nn.BatchNorm(use_running_average=not train)(nn.Conv(x.shape[-1], (3, 3), use_bias=False)(h))
    return nn.relu(x + h)


class FieldPreLN(nn.Module):
  heads: int = 4
  qkv: int = 16
  mlp: int = 32

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(
      num_heads=self.heads, qkv_features=self.qkv, name="attn"
    )(h, h)
    h = nn.gelu(nn.Dense(self.mlp, name="fc1")(nn.LayerNorm()(x)))
    return x + nn.Dense(x.shape[-1], name="fc2")(h)


def _rebuilt(model, shape, mutate, **kwargs):
  """compact_linen on a mutated init; the outputs checked on another batch size."""
  x = jax.random.normal(X_KEY, shape)
  variables = dict(model.init(jax.random.PRNGKey(0), x, **kwargs))
  variables["params"] = mutate(dict(variables["params"]))
  if "batch_stats" in variables:  # statistics that are not the trivial 0 / 1
    variables["batch_stats"] = jax.tree_util.tree_map(
      lambda v: v + jax.random.uniform(CHECK_KEY, v.shape), variables["batch_stats"]
    )
  small = compaction.compact_linen(model, variables, x, **kwargs)
  other = jax.random.normal(CHECK_KEY, (shape[0] + 2,) + tuple(shape[1:]))
  assert_close(small.apply(other, **kwargs), model.apply(variables, other, **kwargs))
  fresh = jax.eval_shape(
    lambda: small.model.init(jax.random.PRNGKey(0), x, **kwargs)
  )  # the module itself fits
  assert jax.tree_util.tree_map(np.shape, fresh) == jax.tree_util.tree_map(
    np.shape, {"params": small.params, **small.collections}
  )
  return small


def test_linen_mlp_with_a_tuple_field_keeps_one_all_and_every_other_unit():
  def mutate(p):
    p = set_rows(p, ("Dense_1", "kernel"), slice(1, None))  # layer 0 keeps one unit
    return set_rows(
      p, ("Dense_3", "kernel"), slice(0, None, 2)
    )  # layer 2 loses every other; layer 1 keeps all

  small = _rebuilt(FieldMLP(), (4, 5), mutate)
  assert small.model.hidden == (1, 8, 3)
  np.testing.assert_array_equal(small.kept["Dense_2"], [1, 3, 5])


def test_linen_conv_batchnorm_module_is_rebuilt_with_its_statistics(tmp_path):
  def mutate(p):
    return set_rows(p, ("Conv_1", "kernel"), (slice(None), slice(None), np.array([0, 2, 3, 7])))

  small = _rebuilt(FieldConvBN(), (2, 6, 6, 3), mutate, train=False)
  assert small.model.channels == 4
  assert small.collections["batch_stats"]["BatchNorm_0"]["mean"].shape == (4,)
  compaction.save(str(tmp_path / "small"), small)  # loads without the original, statistics included
  loaded = compaction.load(str(tmp_path / "small"), classes=(FieldConvBN,))
  x = jax.random.normal(CHECK_KEY, (3, 6, 6, 3))
  assert loaded.model == small.model
  assert_close(loaded.apply(x, train=False), small.apply(x, train=False))
  with pytest.raises(ValueError, match="classes="):
    compaction.load(str(tmp_path / "small"), classes=models.ZOO)


def test_linen_residual_module_keeps_the_stream_and_cuts_the_inner_channels():
  def mutate(p):
    return set_rows(p, ("Conv_1", "kernel"), (slice(None), slice(None), np.array([1, 4])))

  small = _rebuilt(FieldResidual(), (2, 5, 5, 4), mutate, train=False)
  assert small.model.inner == 4 and small.params["Conv_1"]["kernel"].shape == (3, 3, 4, 4)


def test_linen_attention_module_loses_heads_with_its_qkv_width_and_hidden_units():
  def mutate(p):
    p = set_rows(p, ("attn", "out", "kernel"), np.array([0, 2, 3]))  # one head of four left
    return set_rows(p, ("fc2", "kernel"), slice(0, 32, 4))

  small = _rebuilt(FieldPreLN(), (3, 5, 16), mutate)
  assert (small.model.heads, small.model.qkv, small.model.mlp) == (1, 4, 24)


def test_fused_qkv_module_is_rebuilt_with_fewer_heads():
  def mutate(p):
    kernel = np.array(p["proj"]["kernel"]).reshape(4, 4, 16)
    kernel[[0, 3]] = 0
    return dict(p, proj=dict(p["proj"], kernel=jnp.asarray(kernel.reshape(16, 16))))

  small = _rebuilt(FusedQKV(), (2, 5, 16), mutate)
  assert (small.model.heads, small.model.head_dim) == (2, 4)


def test_a_width_written_in_the_code_is_an_error_naming_the_attribute():
  x = jax.random.normal(X_KEY, (4, 5))
  params = set_rows(
    UserMLP().init(jax.random.PRNGKey(0), x)["params"], ("b", "kernel"), slice(2, None)
  )
  with pytest.raises(ValueError, match=r"a\.features \(10\) is set inside UserMLP's code"):
    compaction.compact_linen(UserMLP(), params, x)


# --------------------------------------------------------------------------- NNX
class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.l1, self.l2, self.l3 = (
      nnx.Linear(5, 12, rngs=rngs),
      nnx.Linear(12, 7, rngs=rngs),
      nnx.Linear(7, 3, rngs=rngs),
    )

  def __call__(self, x):
    return self.l3(nnx.relu(self.l2(nnx.relu(self.l1(x)))))


class NnxBlock(nnx.Module):
  def __init__(self, rngs, d=16, heads=4):
    self.ln1, self.ln2 = nnx.LayerNorm(d, rngs=rngs), nnx.LayerNorm(d, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=heads, in_features=d, qkv_features=d, decode=False, rngs=rngs
    )
    self.fc1, self.fc2 = nnx.Linear(d, 32, rngs=rngs), nnx.Linear(32, d, rngs=rngs)

  def __call__(self, x):
    h = self.ln1(x)
    x = x + self.attn(h, h)
    return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class NnxResidual(nnx.Module):
  def __init__(self, rngs):
    self.conv0 = nnx.Conv(4, 6, (3, 3), use_bias=False, rngs=rngs)
    self.bn0 = nnx.BatchNorm(6, use_running_average=True, rngs=rngs)
    self.conv1 = nnx.Conv(6, 4, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(4, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(x + self.bn1(self.conv1(nnx.relu(self.bn0(self.conv0(x))))))


def _zero(variable, index):
  variable[...] = variable[...].at[index].set(0)


@pytest.mark.parametrize("name", ["mlp", "block", "residual"])
def test_nnx_modules_are_compacted_and_keep_training(name):
  if name == "mlp":
    model, x = NnxMLP(nnx.Rngs(0)), jax.random.normal(X_KEY, (4, 5))
    _zero(model.l2.kernel, slice(0, 12, 2))  # l1 loses every other unit
    _zero(model.l3.kernel, slice(1, None))  # l2 keeps one
    want = {"l1": (5, 6), "l2": (6, 1), "l3": (1, 3)}
  elif name == "block":
    model, x = NnxBlock(nnx.Rngs(0)), jax.random.normal(X_KEY, (2, 5, 16))
    _zero(model.attn.out.kernel, np.array([1]))
    _zero(model.fc2.kernel, slice(0, 10))
    want = {"fc1": (16, 22), "fc2": (22, 16)}
  else:
    model, x = NnxResidual(nnx.Rngs(0)), jax.random.normal(X_KEY, (2, 5, 5, 4))
    model.bn0.mean[...] = jax.random.uniform(CHECK_KEY, (6,))
    _zero(model.conv1.kernel, (slice(None), slice(None), np.array([0, 5])))
    want = {"conv0": (3, 3, 4, 4), "conv1": (3, 3, 4, 4)}
  groups = rmda_jax.discover_nnx(model, x)
  small, kept = compaction.compact_nnx(model, groups, x)
  for layer, shape in want.items():
    assert getattr(small, layer).kernel[...].shape == shape
  if name == "block":
    assert (small.attn.num_heads, small.attn.qkv_features) == (3, 12)
    assert small.attn.query.kernel[...].shape == (16, 3, 4) and small.attn.out.kernel[
      ...
    ].shape == (3, 4, 16)
  if name == "residual":
    assert small.bn0.num_features == 4 and small.bn0.mean[...].shape == (4,)
  other = jax.random.normal(CHECK_KEY, (x.shape[0] + 1,) + x.shape[1:])
  assert_close(nnx.jit(lambda m, x: m(x))(small, other), model(other))
  # the original is untouched, and the small model trains
  assert model(x).shape == small(x).shape
  optimizer = nnx.Optimizer(
    small, rmda_jax.rmda(0.1, regularizer=rmda_jax.group_lasso(1e-3)), wrt=nnx.Param
  )

  def loss(m):
    return jnp.mean(m(x) ** 2)

  before = float(loss(small))
  for _ in range(3):
    optimizer.update(small, nnx.grad(loss)(small))
  assert np.isfinite(float(loss(small))) and float(loss(small)) != before


class TwoLayers(nn.Module):
  """Two causal attention layers: JAX traces the masking helper once and calls it twice."""

  @nn.compact
  def __call__(self, x):
    mask = nn.make_causal_mask(x[..., 0])
    for i in range(2):
      h = nn.LayerNorm(name=f"ln{i}")(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16, name=f"attn{i}")(
        h, h, mask=mask
      )
    return x


def test_layers_sharing_a_nested_jaxpr_lose_different_heads():
  def mutate(p):
    p = set_rows(p, ("attn0", "out", "kernel"), np.array([0]))
    return set_rows(p, ("attn1", "out", "kernel"), np.array([0, 1, 3]))

  small = _linen(TwoLayers(), (2, 5, 16), mutate)
  assert small.params["attn0"]["query"]["kernel"].shape == (16, 3, 4)
  assert small.params["attn1"]["query"]["kernel"].shape == (16, 1, 4)


@pytest.mark.parametrize("positions,tied", [("learned", True), ("rotary", False)])
def test_transformer_lm_is_rebuilt_with_per_layer_heads_and_units(positions, tied, tmp_path):
  model = models.TransformerLM(
    context=12, dim=16, heads=4, layers=2, mlp=24, positions=positions, tied=tied
  )
  tokens = jax.random.randint(X_KEY, (3, 12), 0, 256)
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  params = set_rows(params, ("attn_0", "out", "kernel"), np.array([1, 2]))
  params = set_rows(params, ("mlp_out_1", "kernel"), slice(0, 24, 3))
  small = compaction.compact(model, params)
  assert small.model.heads == (2, 4) and small.model.mlp == (24, 16) and small.model.head_dim == 4
  other = jax.random.randint(CHECK_KEY, (5, 12), 0, 256)
  assert_close(
    jax.nn.softmax(small.apply(other)), jax.nn.softmax(model.apply({"params": params}, other))
  )
  compaction.save(str(tmp_path / "lm"), small)
  assert compaction.load(str(tmp_path / "lm"), classes=models.ZOO).model == small.model


def test_transformer_lm_with_a_dead_attention_layer_keeps_one_head_of_full_width():
  # every head of layer 1 zero in q, k, v and out: one head is kept (a layer never loses all),
  # head_dim stays
  model = models.TransformerLM(context=8, dim=16, heads=4, layers=2, mlp=16)
  tokens = jax.random.randint(X_KEY, (3, 8), 0, 256)
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  for name in ("query", "key", "value"):
    params = set_rows(params, ("attn_1", name, "kernel"), (slice(None),))
    params = set_rows(params, ("attn_1", name, "bias"), (slice(None),))
  params = set_rows(params, ("attn_1", "out", "kernel"), (slice(None),))
  small = compaction.compact(model, params)
  assert small.model.heads == (4, 1) and small.model.head_dim == 4
  other = jax.random.randint(CHECK_KEY, (2, 8), 0, 256)
  assert_close(
    jax.nn.softmax(small.apply(other)), jax.nn.softmax(model.apply({"params": params}, other))
  )


def test_transformer_lm_is_causal():
  model = models.TransformerLM(context=10, dim=16, heads=2, layers=2, positions="rotary")
  tokens = jax.random.randint(X_KEY, (2, 10), 0, 256)
  params = model.init(jax.random.PRNGKey(0), tokens)["params"]
  changed = tokens.at[:, 6].set((tokens[:, 6] + 1) % 256)
  before, after = model.apply({"params": params}, tokens), model.apply({"params": params}, changed)
  np.testing.assert_array_equal(
    np.asarray(before[:, :6]), np.asarray(after[:, :6])
  )  # the future is not seen
  assert not np.allclose(np.asarray(before[:, 6:]), np.asarray(after[:, 6:]))
