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
:mod:`rmda_jax.compaction` expect.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from rmda_jax import models
  >>> params = models.LeNet5().init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  >>> params["params"]["Dense_0"]["kernel"].shape
  (800, 500)
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class LogisticRegression(nn.Module):
  """Multinomial logistic regression on flattened inputs."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


class MLP(nn.Module):
  """Dense + ReLU layers on flattened inputs, then a Dense classifier."""

  hidden: Sequence[int] = (512, 256)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      x = nn.relu(nn.Dense(width)(x))
    return nn.Dense(self.num_classes)(x)


class LeNet5(nn.Module):
  """LeNet5-large: conv(20, 5x5) -> pool -> conv(50, 5x5) -> pool -> fc 500 -> fc classes."""

  num_classes: int = 10
  conv_features: Sequence[int] = (20, 50)
  dense_features: int = 500

  @nn.compact
  def __call__(self, x):
    for features in self.conv_features:
      x = nn.Conv(features, (5, 5), padding="VALID")(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.dense_features)(x))
    return nn.Dense(self.num_classes)(x)


class VGG(nn.Module):
  """VGG-style CNN: stages of 3x3 conv + ReLU, max-pool 2 after each stage, Dense head."""

  stages: Sequence[Sequence[int]] = ((32,), (64,), (128, 128))
  num_classes: int = 10

  @nn.compact
  def __call__(self, x):
    for stage in self.stages:
      for features in stage:
        x = nn.relu(nn.Conv(features, (3, 3), padding="SAME")(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = jnp.mean(x, axis=(1, 2))  # global average pool: any input size works
    return nn.Dense(self.num_classes)(x)

  @classmethod
  def vgg16(cls, num_classes: int = 10) -> "VGG":
    """The VGG16 conv stack (about 14.7M parameters) with a linear head."""
    return cls(((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)), num_classes)


class TransformerBlock(nn.Module):
  """A pre-norm transformer block (self-attention + MLP), for optimizer benchmarks."""

  dim: int = 512
  heads: int = 8
  mlp_ratio: int = 4

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(h, h)
    h = nn.LayerNorm()(x)
    h = nn.Dense(self.dim * self.mlp_ratio)(h)
    return x + nn.Dense(self.dim)(nn.gelu(h))


def num_params(params) -> int:
  import jax

  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
