"""The Flax (linen) models of the papers' experiments, sized for the tests and benchmarks.

* :class:`LogisticRegression`: one Dense layer (the papers' "Linear").
* :class:`MLP`: Dense + ReLU stack (the RAMDA paper's MLP is
  ``(512, 256, 128, 64, 32, 16)``).
* :class:`LeNet5`: the "LeNet5-large" of the RMDA code: conv 20 k5 (valid),
  max-pool 2, conv 50 k5, max-pool 2, fc 500, fc classes.
* :class:`VGG`: VGG-style conv stacks (3x3 convs, max-pool after each stage),
  then a Dense classifier; ``VGG.vgg16()`` is the ~15M-parameter version.

All are sequential stacks of ``Conv_i`` / ``Dense_i`` layers, which is what
the default group rules (one group per input feature / input channel) and
:mod:`rmda_jax.compaction` expect. ``ranks`` (one entry per layer, None for a
full layer) replaces a layer by its factorization at that rank: a thin layer
``down`` (no bias) followed by a 1x1 ``up`` layer with the bias, as
:func:`rmda_jax.compaction.compact` produces from a low-rank kernel.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from rmda_jax.app import models
  >>> params = models.LeNet5().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  >>> params["params"]["Dense_0"]["kernel"].shape
  (800, 500)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmda_jax.compaction import num_params  # noqa: F401  (the zoo's size, as compaction reports it)
from rmda_jax.core.groups import Family, Groups

Ranks = Sequence[int | None] | None

# a model's params: its "params" collection, one entry per top-level layer name
LayerParams = Mapping[str, Any]


class LowRank(nn.Module):
  """A Dense or Conv layer whose kernel is the product of two thin factors.

  ``y = up(down(x))``: ``down`` maps to ``rank`` features without bias
  (a Dense, or a Conv with the original window), ``up`` is a Dense (a 1x1
  conv) to ``features`` with the bias. Same outputs as the full layer with
  kernel ``reshape(down) @ up`` and the same bias.
  """

  features: int
  rank: int
  kernel_size: Sequence[int] | None = None  # None: a Dense layer
  padding: str = "SAME"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.kernel_size is None:
      x = nn.Dense(self.rank, use_bias=False, name="down")(x)
    else:
      x = nn.Conv(
        self.rank, tuple(self.kernel_size), padding=self.padding, use_bias=False, name="down"
      )(x)
    return nn.Dense(self.features, name="up")(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pooling with stride 2 of ``(N, H, W, C)`` (``nn.max_pool``'s VALID result).

  Written as a reshape and a max over the window axes when ``H`` and ``W``
  are even: its gradient is elementwise, where ``nn.max_pool``'s is XLA's
  ``select_and_scatter``, which XLA:CPU runs as index arrays and a scatter,
  far slower than elementwise work. Ties share the gradient instead of going
  to the first maximum, which after a ReLU only concerns windows of zeros,
  whose gradient the ReLU stops anyway.

  Example:
    >>> import jax.numpy as jnp
    >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    >>> max_pool_2x2(x)[0, :, :, 0].tolist()
    [[5.0, 7.0], [13.0, 15.0]]
  """
  n, h, w, c = x.shape
  if h % 2 or w % 2:
    return nn.max_pool(x, (2, 2), strides=(2, 2))
  return jnp.max(x.reshape(n, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _rank(ranks: Ranks, index: int) -> int | None:
  return None if ranks is None else ranks[index]


def dense(features: int, name: str, rank: int | None = None) -> nn.Module:
  """A Dense layer named ``name``, or its :class:`LowRank` factorization at ``rank``."""
  if rank is None:
    return nn.Dense(features, name=name)
  return LowRank(features, rank, name=name)


def conv(
  features: int, kernel_size: Sequence[int], padding: str, name: str, rank: int | None = None
) -> nn.Module:
  """A Conv layer named ``name``, or its :class:`LowRank` factorization at ``rank``."""
  if rank is None:
    return nn.Conv(features, tuple(kernel_size), padding=padding, name=name)
  return LowRank(features, rank, tuple(kernel_size), padding, name=name)


class LogisticRegression(nn.Module):
  """Multinomial logistic regression on flattened inputs."""

  num_classes: int = 10
  ranks: Ranks = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return dense(self.num_classes, "Dense_0", _rank(self.ranks, 0))(x.reshape(x.shape[0], -1))

  # the compaction protocol (see rmda_jax.compaction.compact)
  def compaction_layers(self) -> list:
    return ["Dense_0"]

  def compaction_input(self, params: LayerParams) -> jax.Array:
    return jnp.zeros((2, np.shape(params["Dense_0"]["kernel"])[0]))

  def with_widths_of(self, params: LayerParams) -> LogisticRegression:
    return self


class MLP(nn.Module):
  """Dense + ReLU layers on flattened inputs, then a Dense classifier."""

  hidden: Sequence[int] = (512, 256)
  num_classes: int = 10
  ranks: Ranks = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.hidden):
      x = nn.relu(dense(width, f"Dense_{i}", _rank(self.ranks, i))(x))
    n = len(self.hidden)
    return dense(self.num_classes, f"Dense_{n}", _rank(self.ranks, n))(x)

  def compaction_layers(self) -> list:
    return [f"Dense_{i}" for i in range(len(self.hidden) + 1)]

  def compaction_input(self, params: LayerParams) -> jax.Array:
    return jnp.zeros((2, np.shape(params["Dense_0"]["kernel"])[0]))

  def with_widths_of(self, params: LayerParams) -> MLP:
    return self.clone(hidden=tuple(_out(params, f"Dense_{i}") for i in range(len(self.hidden))))


class LeNet5(nn.Module):
  """LeNet5-large: conv(20, 5x5) -> pool -> conv(50, 5x5) -> pool -> fc 500 -> fc classes."""

  num_classes: int = 10
  conv_features: Sequence[int] = (20, 50)
  dense_features: int = 500
  ranks: Ranks = None  # Conv_0, Conv_1, Dense_0, Dense_1

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, features in enumerate(self.conv_features):
      x = conv(features, (5, 5), "VALID", f"Conv_{i}", _rank(self.ranks, i))(x)
      x = max_pool_2x2(nn.relu(x))
    x = x.reshape(x.shape[0], -1)
    n = len(self.conv_features)
    x = nn.relu(dense(self.dense_features, "Dense_0", _rank(self.ranks, n))(x))
    return dense(self.num_classes, "Dense_1", _rank(self.ranks, n + 1))(x)

  def compaction_layers(self) -> list:
    return [f"Conv_{i}" for i in range(len(self.conv_features))] + ["Dense_0", "Dense_1"]

  def compaction_input(self, params: LayerParams) -> jax.Array:
    channels = np.shape(params[f"Conv_{len(self.conv_features) - 1}"]["kernel"])[-1]
    side = math.isqrt(np.shape(params["Dense_0"]["kernel"])[0] // channels)
    for _ in self.conv_features:
      side = 2 * side + 4  # undo max-pool 2 and the valid 5x5 conv
    return jnp.zeros((2, side, side, np.shape(params["Conv_0"]["kernel"])[2]))

  def with_widths_of(self, params: LayerParams) -> LeNet5:
    return self.clone(
      conv_features=tuple(_out(params, f"Conv_{i}") for i in range(len(self.conv_features))),
      dense_features=_out(params, "Dense_0"),
    )


class VGG(nn.Module):
  """VGG-style CNN: stages of 3x3 conv + ReLU, max-pool 2 after each stage, Dense head."""

  stages: Sequence[Sequence[int]] = ((32,), (64,), (128, 128))
  num_classes: int = 10
  ranks: Ranks = None  # every conv in order, then the Dense head

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    i = 0
    for stage in self.stages:
      for features in stage:
        x = nn.relu(conv(features, (3, 3), "SAME", f"Conv_{i}", _rank(self.ranks, i))(x))
        i += 1
      x = max_pool_2x2(x)
    x = jnp.mean(x, axis=(1, 2))  # global average pool: any input size works
    return dense(self.num_classes, "Dense_0", _rank(self.ranks, i))(x)

  def compaction_layers(self) -> list:
    return [f"Conv_{i}" for i in range(sum(len(s) for s in self.stages))] + ["Dense_0"]

  def compaction_input(self, params: LayerParams) -> jax.Array:
    side = 2 ** (len(self.stages) + 1)
    return jnp.zeros((2, side, side, np.shape(params["Conv_0"]["kernel"])[2]))

  def with_widths_of(self, params: LayerParams) -> VGG:
    widths = iter(_out(params, f"Conv_{i}") for i in range(sum(len(s) for s in self.stages)))
    return self.clone(stages=tuple(tuple(next(widths) for _ in stage) for stage in self.stages))

  @classmethod
  def vgg16(cls, num_classes: int = 10) -> VGG:
    """The VGG16 conv stack (about 14.7M parameters) with a linear head."""
    return cls(
      ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)), num_classes
    )


class TransformerBlock(nn.Module):
  """A pre-norm transformer block (self-attention + MLP).

  ``qkv_features`` (default ``dim``) is ``heads * head_dim``; ``mlp_features``
  (default ``dim * mlp_ratio``) the MLP's hidden width. A compacted block
  keeps ``head_dim`` and sets both to what survived.
  """

  dim: int = 512
  heads: int = 8
  mlp_ratio: int = 4
  qkv_features: int | None = None
  mlp_features: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, qkv_features=self.qkv_features)(
      h, h
    )
    h = nn.LayerNorm()(x)
    h = nn.Dense(self.mlp_features or self.dim * self.mlp_ratio)(h)
    return x + nn.Dense(self.dim)(nn.gelu(h))

  def compaction_layers(self) -> list:
    return ["LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "Dense_0", "Dense_1"]

  def compaction_input(self, params: LayerParams) -> jax.Array:
    return jnp.zeros((2, 4, self.dim))

  def compaction_groups(self, groups: Groups) -> Groups:
    """Heads and MLP units: the widths this class has (``head_dim`` is fixed)."""
    return _only(
      groups,
      lambda f: (
        (f.kind == "heads" and f.name.startswith("MultiHeadDotProductAttention"))
        or (f.kind == "units" and f.name == "Dense_0")
      ),
    )

  def with_widths_of(self, params: LayerParams) -> TransformerBlock:
    heads, head_dim = np.shape(params["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1:]
    return self.clone(
      heads=int(heads), qkv_features=int(heads * head_dim), mlp_features=_out(params, "Dense_0")
    )


class CausalSelfAttention(nn.Module):
  """Multi-head causal self-attention, optionally rotary.

  Its ``query``, ``key``, ``value`` and ``out`` projections are those of
  ``nn.MultiHeadDotProductAttention``.
  """

  heads: int
  head_dim: int
  rotary: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    def dense(name: str) -> nn.DenseGeneral:
      return nn.DenseGeneral((self.heads, self.head_dim), name=name)

    q, k, v = dense("query")(x), dense("key")(x), dense("value")(x)
    if self.rotary:
      q, k = rotate(q), rotate(k)
    mask = nn.make_causal_mask(x[..., 0])
    out = nn.dot_product_attention(q, k, v, mask=mask)
    return nn.DenseGeneral(x.shape[-1], axis=(-2, -1), name="out")(out)


def rotate(x: jax.Array) -> jax.Array:
  """Rotary position embedding over the last axis of ``(batch, time, heads, head_dim)``.

  The pairs ``(i, i + head_dim / 2)`` are rotated by ``t / 10000^(2i / head_dim)``.
  """
  time, half = x.shape[1], x.shape[-1] // 2
  freqs = 1.0 / (10000 ** (jnp.arange(half) / half))
  angles = jnp.arange(time)[:, None] * freqs[None, :]
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  first, second = x[..., :half], x[..., half : 2 * half]
  parts = [first * cos - second * sin, first * sin + second * cos]
  if x.shape[-1] % 2:
    parts.append(x[..., 2 * half :])
  return jnp.concatenate(parts, axis=-1)


class TransformerLM(nn.Module):
  """A decoder-only, pre-LN Transformer language model.

  Token embedding, learned (or rotary) positions, ``layers`` blocks of causal
  multi-head attention and a GELU MLP with residual adds, a final LayerNorm,
  and an output layer tied to the embedding (or its own ``head`` Dense). The
  per-layer ``heads`` and ``mlp`` widths may differ (a compacted model).

  Attributes:
    vocab: vocabulary size (256 for bytes).
    context: the longest sequence (the learned position table's length).
    dim: the residual stream's width.
    heads: attention heads per layer (an int, or one per layer).
    head_dim: width of a head (default ``dim // heads``).
    mlp: MLP hidden width per layer (an int, or one per layer; default
      ``4 * dim``).
    layers: number of blocks.
    positions: ``"learned"`` or ``"rotary"``.
    tied: the output layer is the transposed embedding.
  """

  vocab: int = 256
  context: int = 128
  dim: int = 128
  heads: int | tuple[int, ...] = 4
  head_dim: int | None = None
  mlp: int | tuple[int, ...] | None = None
  layers: int = 2
  positions: str = "learned"
  tied: bool = True

  def _per_layer(
    self, value: int | tuple[int, ...] | list[int] | None, default: int
  ) -> tuple[int, ...]:
    value = default if value is None else value
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * self.layers

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    heads = self._per_layer(self.heads, 4)
    head_dim = self.head_dim or self.dim // heads[0]
    mlp = self._per_layer(self.mlp, 4 * self.dim)
    embed = nn.Embed(self.vocab, self.dim, name="embed")
    x = embed(tokens)
    if self.positions == "learned":
      table = self.param("positions", nn.initializers.normal(0.02), (self.context, self.dim))
      x = x + table[: tokens.shape[1]]
    for i in range(self.layers):
      h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
      x = x + CausalSelfAttention(heads[i], head_dim, self.positions == "rotary", name=f"attn_{i}")(
        h
      )
      h = nn.gelu(nn.Dense(mlp[i], name=f"mlp_in_{i}")(nn.LayerNorm(name=f"ln_mlp_{i}")(x)))
      x = x + nn.Dense(self.dim, name=f"mlp_out_{i}")(h)
    x = nn.LayerNorm(name="ln_out")(x)
    return embed.attend(x) if self.tied else nn.Dense(self.vocab, name="head")(x)

  def compaction_layers(self) -> list:
    blocks = [
      f"{kind}_{i}"
      for i in range(self.layers)
      for kind in ("ln_attn", "attn", "ln_mlp", "mlp_in", "mlp_out")
    ]
    return (
      ["embed"]
      + (["positions"] if self.positions == "learned" else [])
      + blocks
      + ["ln_out"]
      + ([] if self.tied else ["head"])
    )

  def compaction_input(self, params: LayerParams) -> jax.Array:
    return jnp.zeros((2, min(4, self.context)), jnp.int32)

  def compaction_groups(self, groups: Groups) -> Groups:
    """Heads and MLP units per layer: the widths this class has (one ``head_dim`` for all)."""
    return _only(
      groups,
      lambda f: (
        (f.kind == "heads" and f.name.startswith("attn_"))
        or (f.kind == "units" and f.name.startswith("mlp_in_"))
      ),
    )

  def with_widths_of(self, params: LayerParams) -> TransformerLM:
    heads = tuple(
      int(np.shape(params[f"attn_{i}"]["query"]["kernel"])[1]) for i in range(self.layers)
    )
    head_dim = int(np.shape(params["attn_0"]["query"]["kernel"])[2])
    return self.clone(
      heads=heads,
      head_dim=head_dim,
      mlp=tuple(_out(params, f"mlp_in_{i}") for i in range(self.layers)),
    )


def _only(groups: Groups, keep: Callable[[Family], bool]) -> Groups:
  import dataclasses

  return dataclasses.replace(groups, families=tuple(f for f in groups.families if keep(f)))


def _out(params: LayerParams, name: str) -> int:
  """Output width of a layer's kernel."""
  return int(np.shape(params[name]["kernel"])[-1])


ZOO = (MLP, LeNet5, VGG, LogisticRegression, TransformerBlock, TransformerLM)


def generate(
  model: nn.Module,
  params: optax.Params,
  prompt: jax.typing.ArrayLike,
  steps: int,
  temperature: float = 0.0,
  seed: int = 0,
) -> np.ndarray:
  """Continue ``prompt`` (int tokens, shape ``(time,)``) by ``steps`` tokens.

  ``temperature = 0`` is greedy decoding; otherwise tokens are sampled from
  ``softmax(logits / temperature)``. The model sees at most its last
  ``model.context`` tokens (a sliding window, recomputed each step).
  Returns the prompt followed by the new tokens (NumPy int32).
  """
  import jax
  import numpy as np

  if steps < 0 or temperature < 0:
    raise ValueError(f"steps and temperature must be >= 0, got {steps} and {temperature}.")
  context = model.context
  tokens = np.asarray(prompt, np.int32).reshape(-1)
  if tokens.size == 0:
    tokens = np.zeros((1,), np.int32)
  window = np.zeros((1, context), np.int32)
  next_logits = _next_logits(model)
  key = jax.random.PRNGKey(seed)
  out: list[int] = tokens.tolist()
  for _ in range(steps):
    recent = np.asarray(out[-context:], np.int32)
    window[0, : len(recent)] = recent
    logits = next_logits(params, window, len(recent))
    if temperature == 0:
      token = int(jnp.argmax(logits))
    else:
      key, sub = jax.random.split(key)
      token = int(jax.random.categorical(sub, logits / temperature))
    out.append(token)
  return np.asarray(out, np.int32)


@functools.lru_cache(maxsize=16)
def _next_logits(model: nn.Module) -> Callable[[optax.Params, np.ndarray, int], jax.Array]:
  """The jitted next-token logits of a model, compiled once per model.

  Not once per :func:`generate` call.
  """
  import jax

  @jax.jit
  def next_logits(p, window, length):
    # without mutable collections, apply returns the logits alone
    return cast(jax.Array, model.apply({"params": p}, window))[0, length - 1]

  return next_logits
