"""Compaction: turn a structured model into a physically smaller Flax model.

Structured sparsity pays off when the zeros become a smaller network.
:func:`compact` takes a model of :mod:`rmda_jax.models` and its trained params
and returns a model of the same class with fewer channels / neurons, its
params, and which units were kept; the compact model computes the same
function as the original, on any input.

What is removed, for every link "layer A feeds layer B" (through ReLU, max
pooling, flattening or global average pooling, all of which map a zero
channel to zero and act per channel):

* unit ``j`` of A when B's input group ``j`` is all zero (B ignores it; with
  the default input-wise group-LASSO these are the groups RMDA zeroes), or
* unit ``j`` of A when A's kernel column ``j`` and bias ``j`` are zero (its
  output is ``relu(0) = 0`` everywhere, so B receives nothing from it).

Removing a unit deletes A's output column and bias entry and B's input rows;
the rules are applied until nothing changes (a removal can make another unit
dead). At least one unit of every layer is kept. The input of the first
layer is not touched (the compact model takes the same inputs). With
``low_rank=True``, every kernel whose numerical rank ``r`` is small enough to
save parameters (``r (m + n) < m n`` for the ``(m, n)`` matrix view) is
replaced by the factors of its truncated SVD (see :func:`factorize` and
:class:`rmda_jax.models.LowRank`).

Supported topologies: :class:`~rmda_jax.models.MLP`,
:class:`~rmda_jax.models.LeNet5`, :class:`~rmda_jax.models.VGG` and
:class:`~rmda_jax.models.LogisticRegression` (sequential Conv/Dense stacks
with element-wise ReLU). Anything else raises a ``TypeError``: a residual
connection, a normalization layer or an activation with ``f(0) != 0`` would
need its own rule.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from rmda_jax import compaction, models
  >>> model = models.MLP(hidden=(8, 4), num_classes=3)
  >>> params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))["params"]
  >>> params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[:6].set(0)  # 6 input groups
  >>> small = compaction.compact(model, params)
  >>> small.model.hidden, compaction.num_params(small.params) < compaction.num_params(params)
  ((2, 4), True)
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  >>> bool(jnp.allclose(model.apply({"params": params}, x), small.apply(x), atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from rmda_jax import models
from rmda_jax.models import num_params  # re-exported: compaction reports sizes
from rmda_jax import regularizers as regs

__all__ = ["Compacted", "Link", "SUPPORTED", "compact", "factorize", "flops", "latencies", "num_params"]

SUPPORTED = (models.MLP, models.LeNet5, models.VGG, models.LogisticRegression)


@dataclasses.dataclass(frozen=True)
class Link:
  """Layer ``producer`` feeds layer ``consumer``: its input index ``p * C + c``
  (``p < positions``) reads the producer's channel ``c`` (``C`` channels)."""

  producer: str
  consumer: str
  positions: int = 1


@dataclasses.dataclass
class Compacted:
  """A compact model, its params, and what was kept.

  Attributes:
    model: the smaller model (same class, new widths, maybe ``ranks``).
    params: its params.
    kept: per layer name, the indices of the original output units kept.
    ranks: per layer name, the rank of a factorized kernel.
  """

  model: Any
  params: Any
  kept: dict
  ranks: dict

  def apply(self, x):
    return self.model.apply({"params": self.params}, x)


def flops(model, params, x) -> float:
  """FLOPs of one jitted forward pass on ``x``, from XLA's cost analysis."""
  compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan")))


def latencies(candidates: dict, x, rounds: int = 15, calls: int = 5) -> dict:
  """Median seconds per jitted forward pass of each ``(model, params)``, interleaved."""
  import statistics
  import time

  fns = {name: (jax.jit(lambda p, x, m=m: m.apply({"params": p}, x)), p) for name, (m, p) in candidates.items()}
  for fn, p in fns.values():
    fn(p, x).block_until_ready()
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, (fn, p) in fns.items():
      start = time.perf_counter()
      for _ in range(calls):
        out = fn(p, x)
      out.block_until_ready()
      samples[name].append((time.perf_counter() - start) / calls)
  return {name: statistics.median(v) for name, v in samples.items()}


def _layers(model, params) -> tuple[list, list]:
  """Layer names in order, and the links between consecutive layers."""
  if not isinstance(model, SUPPORTED):
    raise TypeError(
        f"compact supports {', '.join(c.__name__ for c in SUPPORTED)} (sequential Conv/Dense stacks "
        f"with ReLU); got {type(model).__name__}.")
  if model.ranks is not None and any(r is not None for r in model.ranks):
    raise ValueError("the model is already factorized (ranks is set); compact the full model.")
  if isinstance(model, models.LogisticRegression):
    return ["Dense_0"], []
  if isinstance(model, models.MLP):
    names = [f"Dense_{i}" for i in range(len(model.hidden) + 1)]
    return names, [Link(a, b) for a, b in zip(names, names[1:])]
  if isinstance(model, models.LeNet5):
    convs = [f"Conv_{i}" for i in range(len(model.conv_features))]
    links = [Link(a, b) for a, b in zip(convs, convs[1:])]
    channels = params[convs[-1]]["kernel"].shape[-1]
    positions = params["Dense_0"]["kernel"].shape[0] // channels
    links += [Link(convs[-1], "Dense_0", positions), Link("Dense_0", "Dense_1")]
    return convs + ["Dense_0", "Dense_1"], links
  convs = [f"Conv_{i}" for i in range(sum(len(s) for s in model.stages))]
  names = convs + ["Dense_0"]
  return names, [Link(a, b) for a, b in zip(names, names[1:])]


def _dead_units(params, link: Link) -> np.ndarray:
  producer, consumer = params[link.producer], params[link.consumer]
  kernel_a = np.asarray(producer["kernel"])
  channels = kernel_a.shape[-1]
  kernel_b = np.asarray(consumer["kernel"])
  rows = np.moveaxis(kernel_b, -2, 0).reshape(link.positions, channels, -1)
  ignored = ~np.any(rows != 0, axis=(0, 2))
  bias = np.asarray(producer.get("bias", np.zeros(channels)))
  silent = ~np.any(kernel_a.reshape(-1, channels) != 0, axis=0) & (bias == 0)
  return ignored | silent


def _select(params, link: Link, keep: np.ndarray) -> None:
  producer, consumer = dict(params[link.producer]), dict(params[link.consumer])
  channels = np.shape(producer["kernel"])[-1]
  producer["kernel"] = jnp.take(producer["kernel"], keep, axis=-1)
  if "bias" in producer:
    producer["bias"] = jnp.take(producer["bias"], keep, axis=-1)
  rows = (np.arange(link.positions)[:, None] * channels + keep[None, :]).reshape(-1)
  consumer["kernel"] = jnp.take(consumer["kernel"], rows, axis=-2)
  params[link.producer], params[link.consumer] = producer, consumer


def factorize(kernel, rank: Optional[int] = None) -> tuple[jax.Array, jax.Array]:
  """Thin factors of a kernel: ``down`` (``shape[:-1] + (r,)``) and ``up`` (``(r, out)``).

  ``reshape(down, (-1, r)) @ up`` is the best rank-``r`` approximation of the
  ``(-1, out)`` matrix view (truncated SVD, singular values split evenly),
  and equals the kernel up to float error when ``r`` is its numerical rank
  (the default, with the ``numpy.linalg.matrix_rank`` tolerance).
  """
  kernel = jnp.asarray(kernel)
  matrix = regs.as_matrix(kernel.astype(regs.compute_dtype(kernel.dtype)))
  u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
  if rank is None:
    rank = max(int(jnp.sum(s > regs.rank_tolerance(s, matrix.shape))), 1)
  root = jnp.sqrt(s[:rank])
  down = (u[:, :rank] * root).reshape(kernel.shape[:-1] + (rank,)).astype(kernel.dtype)
  up = (root[:, None] * vt[:rank]).astype(kernel.dtype)
  return down, up


def _widths(model, params, names):
  out = {name: int(np.shape(params[name]["kernel"])[-1]) for name in names}
  if isinstance(model, models.MLP):
    return model.clone(hidden=tuple(out[n] for n in names[:-1]))
  if isinstance(model, models.LeNet5):
    convs = [n for n in names if n.startswith("Conv_")]
    return model.clone(conv_features=tuple(out[n] for n in convs), dense_features=out["Dense_0"])
  if isinstance(model, models.VGG):
    widths = iter(out[n] for n in names if n.startswith("Conv_"))
    return model.clone(stages=tuple(tuple(next(widths) for _ in stage) for stage in model.stages))
  return model


def compact(model, params, low_rank: bool = False) -> Compacted:
  """The smaller model computing the same function; see the module doc.

  Args:
    model: an :class:`~rmda_jax.models.MLP`, :class:`~rmda_jax.models.LeNet5`,
      :class:`~rmda_jax.models.VGG` or :class:`~rmda_jax.models.LogisticRegression`.
    params: its params (the ``"params"`` collection), e.g. the structured
      point ``rmda_jax.structured_params(state)`` or the final params.
    low_rank: also factorize kernels of low numerical rank.

  Raises:
    TypeError: an unsupported model.
    ValueError: params that do not match the model's layers.
  """
  names, links = _layers(model, params)
  missing = [n for n in names if n not in params or "kernel" not in params[n]]
  if missing or set(params) != set(names):
    raise ValueError(f"params do not match the {type(model).__name__}: expected layers {names}, "
                     f"got {sorted(params)}.")
  params = {name: dict(params[name]) for name in names}
  kept = {name: np.arange(np.shape(params[name]["kernel"])[-1]) for name in names}
  changed = True
  while changed:
    changed = False
    for link in links:
      dead = _dead_units(params, link)
      keep = np.flatnonzero(~dead) if not dead.all() else np.array([0])  # a layer keeps one unit
      if len(keep) < len(dead):
        _select(params, link, keep)
        kept[link.producer] = kept[link.producer][keep]
        changed = True
  compact_model = _widths(model, params, names)
  ranks = {}
  if low_rank:
    layer_ranks = []
    for name in names:
      kernel = params[name]["kernel"]
      m, n = math.prod(np.shape(kernel)[:-1]), np.shape(kernel)[-1]
      down, up = factorize(kernel)
      r = np.shape(up)[0]
      if r * (m + n) < m * n:
        params[name] = {"down": {"kernel": down}, "up": {"kernel": up, "bias": params[name]["bias"]}}
        ranks[name] = r
      layer_ranks.append(ranks.get(name))
    if ranks:
      compact_model = compact_model.clone(ranks=tuple(layer_ranks))
  return Compacted(compact_model, params, kept, ranks)
