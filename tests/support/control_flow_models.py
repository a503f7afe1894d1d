"""Models with control flow, in the shapes public model code gives them.

Each builder returns a :class:`Model`: ``apply(params, *args)`` (or
``apply(params, extras, *args)``), its params and extras, example inputs of
two batch (and sequence) sizes, and the families a reader of the model
expects, by kind, layers, size and member leaves.

* ``scanned_decoder``: a pre-LN decoder layer (causal self-attention and a
  GELU MLP) applied with ``nn.scan(nn.remat(...))`` over stacked params, the
  layer axis named ``"layers"`` as MaxText names it.
* ``scanned_nnx``: blocks created by ``nnx.vmap`` and applied with
  ``nnx.scan`` (the Flax "scan over layers" example), with attention and a
  Linear-BatchNorm-ReLU-Linear MLP.
* ``lstm_tagger``: ``nn.RNN(nn.OptimizedLSTMCell)`` over time and a Dense
  head, as sequence taggers are written.
* ``gru_tagger``: the same with ``nn.GRUCell``.
* ``bottleneck_resnet``: two bottleneck blocks whose convolutions and norms
  are unnamed, as in the Flax ImageNet example.
* ``cond_model``: a user's function choosing one of two Dense heads with
  ``lax.cond`` on the input.
* ``while_recurrence``: a recurrence ``h <- tanh(W h + U x)`` run by
  ``lax.while_loop`` for a number of steps read from the input.
* ``head_mask_encoder``: two unrolled attention layers whose probabilities
  are multiplied by a constant per-layer head mask, as Hugging Face Flax BERT
  does with ``head_mask = jnp.ones((layers, heads))``.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

LAYERS = 3


@dataclasses.dataclass
class Model:
  """A model under test (see the module doc)."""

  apply: Callable
  params: Any
  args: tuple
  other_args: tuple  # another batch (and sequence) size
  expected: list  # (kind, layers, size, member paths)
  extras: Any = None
  module: Any = None  # the linen / NNX module, where there is one
  # how a loss of the params is differentiated (a while loop has forward mode only)
  gradient: Callable = jax.grad

  def __call__(self, params, *args):
    if self.extras is None:
      return self.apply(params, *args)
    return self.apply(params, self.extras, *args)


# ----------------------------------------------------------------------------
# linen: a scanned, rematerialized decoder


class DecoderLayer(nn.Module):
  """Pre-LN causal self-attention and a GELU MLP; the carry is the residual stream."""

  heads: int = 2
  head_dim: int = 4
  mlp_dim: int = 12

  @nn.compact
  def __call__(self, x, mask):
    kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    h = nn.LayerNorm(name="pre_attention_norm")(x)
    x = x + nn.MultiHeadDotProductAttention(
      num_heads=self.heads, qkv_features=self.heads * self.head_dim, name="attention"
    )(h, h, mask=mask)
    h = nn.LayerNorm(name="pre_mlp_norm")(x)
    h = nn.gelu(nn.Dense(self.mlp_dim, kernel_init=kernel, name="wi")(h))
    return x + nn.Dense(x.shape[-1], name="wo")(h), None


class Decoder(nn.Module):
  vocab: int = 11
  embed: int = 8
  layers: int = LAYERS
  heads: int = 2
  head_dim: int = 4
  mlp_dim: int = 12

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.embed, name="token_embedder")(tokens)
    mask = nn.make_causal_mask(tokens)
    stack = nn.scan(
      nn.remat(DecoderLayer),
      variable_axes={"params": 0},
      split_rngs={"params": True},
      in_axes=(nn.broadcast,),
      length=self.layers,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, _ = stack(self.heads, self.head_dim, self.mlp_dim, name="decoder")(x, mask)
    return nn.Dense(self.vocab, name="logits")(nn.LayerNorm(name="final_norm")(x))


def scanned_decoder(seed=0) -> Model:
  module = Decoder()
  tokens = jax.random.randint(jax.random.PRNGKey(seed), (2, 5), 0, module.vocab)
  boxed = module.init(jax.random.PRNGKey(seed + 1), tokens)["params"]
  params = nn.unbox(boxed)
  other = jax.random.randint(jax.random.PRNGKey(seed + 2), (3, 7), 0, module.vocab)
  attention = "decoder/attention/"
  expected = [
    (
      "heads",
      LAYERS,
      module.heads,
      {attention + f"{n}/{k}" for n in ("query", "key", "value") for k in ("kernel", "bias")}
      | {attention + "out/kernel"},
    ),
    (
      "units",
      LAYERS,
      module.mlp_dim,
      {"decoder/wi/kernel", "decoder/wi/bias", "decoder/wo/kernel"},
    ),
  ]
  model = Model(lambda p, t: module.apply({"params": p}, t), params, (tokens,), (other,), expected)
  model.module = module
  model.boxed = boxed
  return model


# ----------------------------------------------------------------------------
# NNX: blocks made by nnx.vmap, applied by nnx.scan


class NNXBlock(nnx.Module):
  def __init__(self, dim: int, hidden: int, *, rngs: nnx.Rngs):
    self.norm = nnx.LayerNorm(dim, rngs=rngs)
    self.attention = nnx.MultiHeadAttention(
      num_heads=2, in_features=dim, qkv_features=8, decode=False, rngs=rngs
    )
    self.up = nnx.Linear(dim, hidden, rngs=rngs)
    self.bn = nnx.BatchNorm(hidden, rngs=rngs)
    self.down = nnx.Linear(hidden, dim, rngs=rngs)

  def __call__(self, x):
    h = self.norm(x)
    x = x + self.attention(h, h)
    return x + self.down(nnx.relu(self.bn(self.up(x))))


class NNXStack(nnx.Module):
  """Blocks made by ``nnx.vmap``, run by ``nnx.scan`` (each block under ``nnx.remat`` if asked)."""

  def __init__(
    self,
    dim: int = 8,
    hidden: int = 12,
    *,
    layers: int = LAYERS,
    remat: bool = False,
    rngs: nnx.Rngs,
  ):
    @nnx.split_rngs(splits=layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=layers)
    def create(rngs):
      return NNXBlock(dim, hidden, rngs=rngs)

    self.embed = nnx.Linear(5, dim, rngs=rngs)
    self.blocks = create(rngs)
    self.head = nnx.Linear(dim, 3, rngs=rngs)
    self.remat = remat

  def __call__(self, x):
    def apply(block, x):
      return block(x)

    run = nnx.remat(apply) if self.remat else apply

    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
    def forward(x, block):
      return run(block, x)

    return self.head(forward(self.embed(x), self.blocks))


def nnx_stack(seed=0, remat=False) -> NNXStack:
  return NNXStack(remat=remat, rngs=nnx.Rngs(seed))


SCANNED_NNX_EXPECTED = [
  (
    "heads",
    LAYERS,
    2,
    {f"blocks/attention/{n}/{k}" for n in ("query", "key", "value") for k in ("kernel", "bias")}
    | {"blocks/attention/out/kernel"},
  ),
  (
    "units",
    LAYERS,
    12,
    {
      "blocks/up/kernel",
      "blocks/up/bias",
      "blocks/bn/scale",
      "blocks/bn/bias",
      "blocks/down/kernel",
    },
  ),
]


# ----------------------------------------------------------------------------
# linen: an LSTM tagger


class Tagger(nn.Module):
  hidden: int = 6

  @nn.compact
  def __call__(self, x):
    h = nn.RNN(nn.OptimizedLSTMCell(self.hidden), name="rnn")(x)
    return nn.Dense(3, name="head")(h)


def lstm_tagger(seed=0) -> Model:
  module = Tagger()
  x = jax.random.normal(jax.random.PRNGKey(seed), (2, 5, 4))
  params = module.init(jax.random.PRNGKey(seed + 1), x)["params"]
  other = jax.random.normal(jax.random.PRNGKey(seed + 2), (3, 8, 4))
  cell = "OptimizedLSTMCell_0/"  # the cell's params live beside the RNN, as Flax places them
  members = {cell + f"h{g}/kernel" for g in "ifgo"} | {cell + f"h{g}/bias" for g in "ifgo"}
  members |= {cell + f"i{g}/kernel" for g in "ifgo"} | {"head/kernel"}
  model = Model(
    lambda p, x: module.apply({"params": p}, x),
    params,
    (x,),
    (other,),
    [("units", None, module.hidden, members)],
  )
  model.module = module
  model.cell = cell
  return model


class GRUTagger(nn.Module):
  hidden: int = 6

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3, name="head")(nn.RNN(nn.GRUCell(self.hidden), name="rnn")(x))


def gru_tagger(seed=0) -> Model:
  module = GRUTagger()
  x = jax.random.normal(jax.random.PRNGKey(seed), (2, 5, 4))
  params = module.init(jax.random.PRNGKey(seed + 1), x)["params"]
  other = jax.random.normal(jax.random.PRNGKey(seed + 2), (3, 8, 4))
  cell = "GRUCell_0/"
  members = {cell + f"h{g}/kernel" for g in "rzn"} | {cell + f"i{g}/kernel" for g in "rzn"}
  members |= {cell + f"i{g}/bias" for g in "rzn"} | {cell + "hn/bias", "head/kernel"}
  model = Model(
    lambda p, x: module.apply({"params": p}, x),
    params,
    (x,),
    (other,),
    [("units", None, module.hidden, members)],
  )
  model.module = module
  return model


# ----------------------------------------------------------------------------
# linen: bottleneck blocks with unnamed layers


class BottleneckBlock(nn.Module):
  filters: int
  strides: tuple = (1, 1)

  @nn.compact
  def __call__(self, x):
    norm = lambda **kw: nn.BatchNorm(use_running_average=True, **kw)  # noqa: E731
    residual = x
    y = nn.relu(norm()(nn.Conv(self.filters, (1, 1), use_bias=False)(x)))
    y = nn.relu(norm()(nn.Conv(self.filters, (3, 3), self.strides, use_bias=False)(y)))
    y = norm()(nn.Conv(self.filters * 4, (1, 1), use_bias=False)(y))
    if residual.shape != y.shape:
      residual = norm(name="norm_proj")(
        nn.Conv(self.filters * 4, (1, 1), self.strides, use_bias=False, name="conv_proj")(residual)
      )
    return nn.relu(residual + y)


class BottleneckNet(nn.Module):
  filters: int = 4

  @nn.compact
  def __call__(self, x):
    x = BottleneckBlock(self.filters)(x)
    x = BottleneckBlock(self.filters)(x)
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


def bottleneck_resnet(seed=0) -> Model:
  module = BottleneckNet()
  x = jax.random.normal(jax.random.PRNGKey(seed), (2, 6, 6, 3))
  variables = module.init(jax.random.PRNGKey(seed + 1), x)
  stats = jax.tree_util.tree_map(
    lambda v: v + jax.random.uniform(jax.random.PRNGKey(seed + 3), v.shape),
    variables["batch_stats"],
  )
  other = jax.random.normal(jax.random.PRNGKey(seed + 2), (3, 6, 6, 3))
  b0, b1 = "BottleneckBlock_0/", "BottleneckBlock_1/"

  def inner(block, norm, consumer, producer=()):
    return (
      "units",
      None,
      4,
      {block + norm + "/scale", block + norm + "/bias", block + consumer}
      | {block + p for p in producer},
    )

  # the residual stream is a family too: the projection and the last norms
  # produce it, the second block's first conv and the classifier contract it
  # (so the second block's first conv is the stream's, not its own channels')
  stream = {b + n for b in (b0, b1) for n in ("BatchNorm_2/scale", "BatchNorm_2/bias")}
  stream |= {b0 + "conv_proj/kernel", b0 + "norm_proj/scale", b0 + "norm_proj/bias"}
  stream |= {b1 + "Conv_0/kernel", "Dense_0/kernel"}
  expected = [
    inner(b0, "BatchNorm_0", "Conv_1/kernel", ("Conv_0/kernel",)),
    inner(b0, "BatchNorm_1", "Conv_2/kernel"),
    inner(b1, "BatchNorm_0", "Conv_1/kernel"),
    inner(b1, "BatchNorm_1", "Conv_2/kernel"),
    ("units", None, 16, stream),
  ]
  model = Model(
    lambda p, e, x: module.apply({"params": p, "batch_stats": e}, x),
    variables["params"],
    (x,),
    (other,),
    expected,
    extras=stats,
  )
  model.module = module
  return model


# ----------------------------------------------------------------------------
# plain JAX: lax.cond and lax.while_loop


def cond_model(seed=0) -> Model:
  rng = np.random.default_rng(seed)
  params = {
    "encoder": {"kernel": rng.normal(size=(4, 6)), "bias": rng.normal(size=6) * 0.1},
    "head_a": {"kernel": rng.normal(size=(6, 3))},
    "head_b": {"kernel": rng.normal(size=(6, 3)), "bias": rng.normal(size=3) * 0.1},
  }
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)

  def apply(p, x):
    h = jax.nn.relu(x @ p["encoder"]["kernel"] + p["encoder"]["bias"])

    def head_a(h):
      return h @ p["head_a"]["kernel"]

    def head_b(h):
      return jnp.tanh(h @ p["head_b"]["kernel"] + p["head_b"]["bias"])

    return jax.lax.cond(jnp.mean(x) > 0, head_a, head_b, h)

  x = jnp.asarray(rng.normal(size=(2, 4)) + 0.5, jnp.float32)
  other = jnp.asarray(rng.normal(size=(3, 4)) - 0.5, jnp.float32)
  members = {"encoder/kernel", "encoder/bias", "head_a/kernel", "head_b/kernel"}
  return Model(apply, params, (x,), (other,), [("units", None, 6, members)])


def while_recurrence(seed=0) -> Model:
  rng = np.random.default_rng(seed)
  params = {
    "input": {"kernel": rng.normal(size=(4, 6)) * 0.5},
    "recurrent": {"kernel": rng.normal(size=(6, 6)) * 0.3, "bias": rng.normal(size=6) * 0.1},
    "readout": {"kernel": rng.normal(size=(6, 2))},
  }
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)

  def apply(p, x, steps):
    drive = x @ p["input"]["kernel"]

    def body(state):
      i, h = state
      return i + 1, jnp.tanh(h @ p["recurrent"]["kernel"] + p["recurrent"]["bias"] + drive)

    _, h = jax.lax.while_loop(lambda s: s[0] < steps, body, (0, jnp.zeros_like(drive)))
    return h @ p["readout"]["kernel"]

  x = jnp.asarray(rng.normal(size=(2, 4)), jnp.float32)
  other = jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)
  members = {"input/kernel", "recurrent/kernel", "recurrent/bias", "readout/kernel"}
  return Model(
    apply,
    params,
    (x, jnp.int32(3)),
    (other, jnp.int32(5)),
    [("units", None, 6, members)],
    gradient=jax.jacfwd,
  )


# ----------------------------------------------------------------------------
# plain JAX: a per-layer head mask


def head_mask_encoder(seed=0, heads=2, head_dim=3, dim=6) -> Model:
  rng = np.random.default_rng(seed)

  def layer_params():
    return {
      "query": {"kernel": rng.normal(size=(dim, heads * head_dim)) * 0.5},
      "key": {"kernel": rng.normal(size=(dim, heads * head_dim)) * 0.5},
      "value": {"kernel": rng.normal(size=(dim, heads * head_dim)) * 0.5},
      "output": {"kernel": rng.normal(size=(heads * head_dim, dim)) * 0.5},
    }

  params = {f"layer_{i}": layer_params() for i in range(2)}
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)
  head_mask = jnp.ones((2, heads))  # a constant, as the model's default

  def attention(p, x, mask):
    b, t, _ = x.shape
    split = lambda y: y.reshape(b, t, heads, head_dim)  # noqa: E731
    q, k, v = (split(x @ p[n]["kernel"]) for n in ("query", "key", "value"))
    probs = jax.nn.softmax(jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim), axis=-1)
    probs = probs * mask[None, :, None, None]
    out = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, heads * head_dim)
    return x + out @ p["output"]["kernel"]

  def apply(p, x):
    for i in range(2):
      x = attention(p[f"layer_{i}"], x, head_mask[i])
    return x

  x = jnp.asarray(rng.normal(size=(2, 4, dim)), jnp.float32)
  other = jnp.asarray(rng.normal(size=(3, 5, dim)), jnp.float32)
  expected = [
    ("heads", None, heads, {f"layer_{i}/{n}/kernel" for n in ("query", "key", "value", "output")})
    for i in range(2)
  ]
  return Model(apply, params, (x,), (other,), expected)


def mqa_attention(seed=0, heads=3, head_dim=4, dim=6) -> Model:
  """Multi-query attention: every query head reads one shared key and value head."""
  rng = np.random.default_rng(seed)
  params = {
    "query": {"kernel": rng.normal(size=(dim, heads, head_dim)) * 0.5},
    "key": {"kernel": rng.normal(size=(dim, head_dim)) * 0.5},
    "value": {"kernel": rng.normal(size=(dim, head_dim)) * 0.5},
    "out": {"kernel": rng.normal(size=(heads, head_dim, dim)) * 0.5},
  }
  params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), params)

  def apply(p, x):
    q = jnp.einsum("btd,dhk->bthk", x, p["query"]["kernel"])
    k, v = x @ p["key"]["kernel"], x @ p["value"]["kernel"]
    weights = jax.nn.softmax(jnp.einsum("bthk,bsk->bhts", q, k) / np.sqrt(head_dim), axis=-1)
    out = jnp.einsum("bhts,bsk->bthk", weights, v)
    return x + jnp.einsum("bthk,hkd->btd", out, p["out"]["kernel"])

  x = jnp.asarray(rng.normal(size=(2, 4, dim)), jnp.float32)
  other = jnp.asarray(rng.normal(size=(3, 6, dim)), jnp.float32)
  return Model(
    apply, params, (x,), (other,), [("heads", None, heads, {"query/kernel", "out/kernel"})]
  )


# ----------------------------------------------------------------------------
# linen: widths held by one field for several layers


@flax.struct.dataclass
class Config:
  """The widths of :class:`ConfigNet`, as a Transformer's config struct holds them."""

  emb_dim: int = 8
  num_heads: int = 2
  qkv_dim: int = 8
  mlp_dim: int = 12
  num_layers: int = 2


class ConfigMlp(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.config.mlp_dim)(x))
    return nn.Dense(x.shape[-1])(h)


class ConfigLayer(nn.Module):
  config: Config

  @nn.compact
  def __call__(self, x):
    c = self.config
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=c.num_heads, qkv_features=c.qkv_dim)(h, h)
    return x + ConfigMlp(c, name="Mlp_0")(nn.LayerNorm()(x))


class ConfigNet(nn.Module):
  """Layers whose MLP width is ``config.mlp_dim``, one field for all of them."""

  config: Config

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.config.emb_dim)(x)
    for i in range(self.config.num_layers):
      x = ConfigLayer(self.config, name=f"layer_{i}")(x)
    return nn.Dense(3)(x)


class Stage(nn.Module):
  filters: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(self.filters, (3, 3))(x))
    return nn.relu(nn.Conv(self.filters, (3, 3))(h))


class StagedNet(nn.Module):
  """Stage ``i`` has ``num_filters * 2**i`` filters, as ResNets are written."""

  num_filters: int = 4

  @nn.compact
  def __call__(self, x):
    for i in range(2):
      x = Stage(self.num_filters * 2**i)(x)
    return nn.Dense(2)(jnp.mean(x, axis=(1, 2)))
