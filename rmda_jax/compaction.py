"""Compaction: turn a structured model into a physically smaller Flax model.

Structured sparsity pays off when the zeros become a smaller network.
:func:`compact` takes a model of :mod:`rmda_jax.models` and its trained params
and returns a model of the same class with fewer channels / neurons / heads,
its params, and which units were kept; the compact model computes the same
function as the original, on any input. It is driven by the coupled groups
that :func:`rmda_jax.discover_groups` finds in the model's computation, and
cuts every removable unit from every leaf it spans
(:func:`rmda_jax.reduction.compact_function`): a unit whose consumer slices
are zero (the input-wise groups RMDA zeroes), whose whole group is zero (the
coupled groups), or whose producer slices are zero where the computation
keeps a zero unit zero (ReLU, pooling). The removals are repeated until
nothing changes (a removal can make another unit dead); at least one unit of
every layer is kept, and the model's input is not touched. With
``low_rank=True``, every kernel whose numerical rank ``r`` is small enough to
save parameters (``r (m + n) < m n`` for the ``(m, n)`` matrix view) is
replaced by the factors of its truncated SVD (see :func:`factorize` and
:class:`rmda_jax.models.LowRank`).

Models: :class:`~rmda_jax.models.MLP`, :class:`~rmda_jax.models.LeNet5`,
:class:`~rmda_jax.models.VGG`, :class:`~rmda_jax.models.LogisticRegression`,
:class:`~rmda_jax.models.TransformerBlock` and
:class:`~rmda_jax.models.TransformerLM` (heads and hidden units per layer).
For any other function, :func:`rmda_jax.reduction.compact_function` gives a
smaller function with the same outputs, and :func:`compact_nnx` a smaller
NNX module.

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

from rmda_jax import discovery
from rmda_jax import models
from rmda_jax import reduction
from rmda_jax.models import num_params  # re-exported: compaction reports sizes
from rmda_jax import regularizers as regs

__all__ = ["Compacted", "SUPPORTED", "compact", "compact_linen", "compact_nnx", "factorize", "flops", "latencies",
           "num_params"]

SUPPORTED = (models.MLP, models.LeNet5, models.VGG, models.LogisticRegression, models.TransformerBlock,
             models.TransformerLM)


@dataclasses.dataclass
class Compacted:
  """A compact model, its params, and what was kept.

  Attributes:
    model: the smaller model (same class, new widths, maybe ``ranks``).
    params: its params.
    kept: per layer name, the indices of the original output units kept.
    ranks: per layer name, the rank of a factorized kernel.
    collections: the model's other variable collections (BatchNorm's
      ``batch_stats``), cut like the params.
  """

  model: Any
  params: Any
  kept: dict
  ranks: dict
  collections: dict = dataclasses.field(default_factory=dict)  # the other variables (batch_stats, ...)

  def apply(self, *args, **kwargs):
    return self.model.apply({"params": self.params, **self.collections}, *args, **kwargs)


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


def _layer_names(model) -> list:
  if isinstance(model, models.LogisticRegression):
    return ["Dense_0"]
  if isinstance(model, models.MLP):
    return [f"Dense_{i}" for i in range(len(model.hidden) + 1)]
  if isinstance(model, models.LeNet5):
    return [f"Conv_{i}" for i in range(len(model.conv_features))] + ["Dense_0", "Dense_1"]
  if isinstance(model, models.VGG):
    return [f"Conv_{i}" for i in range(sum(len(s) for s in model.stages))] + ["Dense_0"]
  if isinstance(model, models.TransformerLM):
    blocks = [f"{kind}_{i}" for i in range(model.layers)
              for kind in ("ln_attn", "attn", "ln_mlp", "mlp_in", "mlp_out")]
    return (["embed"] + (["positions"] if model.positions == "learned" else []) + blocks + ["ln_out"]
            + ([] if model.tied else ["head"]))
  return ["LayerNorm_0", "MultiHeadDotProductAttention_0", "LayerNorm_1", "Dense_0", "Dense_1"]


def _example_input(model, params):
  """A small input of the shape the model's params imply (batch 2)."""
  if isinstance(model, (models.MLP, models.LogisticRegression)):
    return jnp.zeros((2, np.shape(params["Dense_0"]["kernel"])[0]))
  if isinstance(model, models.LeNet5):
    channels = np.shape(params[f"Conv_{len(model.conv_features) - 1}"]["kernel"])[-1]
    side = math.isqrt(np.shape(params["Dense_0"]["kernel"])[0] // channels)
    for _ in model.conv_features:
      side = 2 * side + 4   # undo max-pool 2 and the valid 5x5 conv
    return jnp.zeros((2, side, side, np.shape(params["Conv_0"]["kernel"])[2]))
  if isinstance(model, models.VGG):
    side = 2 ** (len(model.stages) + 1)
    return jnp.zeros((2, side, side, np.shape(params["Conv_0"]["kernel"])[2]))
  if isinstance(model, models.TransformerLM):
    return jnp.zeros((2, min(4, model.context)), jnp.int32)
  return jnp.zeros((2, 4, model.dim))


def _rebuild(model, params):
  """The same model class with the widths of ``params``."""
  out = lambda name: int(np.shape(params[name]["kernel"])[-1])
  if isinstance(model, models.MLP):
    return model.clone(hidden=tuple(out(f"Dense_{i}") for i in range(len(model.hidden))))
  if isinstance(model, models.LeNet5):
    return model.clone(conv_features=tuple(out(f"Conv_{i}") for i in range(len(model.conv_features))),
                       dense_features=out("Dense_0"))
  if isinstance(model, models.VGG):
    widths = iter(out(f"Conv_{i}") for i in range(sum(len(s) for s in model.stages)))
    return model.clone(stages=tuple(tuple(next(widths) for _ in stage) for stage in model.stages))
  if isinstance(model, models.TransformerLM):
    heads = tuple(int(np.shape(params[f"attn_{i}"]["query"]["kernel"])[1]) for i in range(model.layers))
    head_dim = int(np.shape(params["attn_0"]["query"]["kernel"])[2])
    return model.clone(heads=heads, head_dim=head_dim, mlp=tuple(out(f"mlp_in_{i}") for i in range(model.layers)))
  if isinstance(model, models.TransformerBlock):
    heads, head_dim = np.shape(params["MultiHeadDotProductAttention_0"]["query"]["kernel"])[1:]
    return model.clone(heads=int(heads), qkv_features=int(heads * head_dim), mlp_features=out("Dense_0"))
  return model


def compact_linen(model, variables, *example_args, groups=None, keep_at_least: int = 1, method=None,
                  **kwargs) -> Compacted:
  """A smaller linen module of the same class computing the same function.

  Every removable unit (see the module doc) is cut from every variable it
  spans, params and other collections (BatchNorm's ``batch_stats``) alike,
  until nothing changes, and the module is rebuilt with the new widths by
  :func:`rmda_jax.rebuild.rebuild_linen`: its integer fields that set the
  widths of its layers (``hidden: int``, ``features: tuple``, ``heads`` with
  ``qkv_features``) get the new values, checked against the cut variables'
  shapes. Works for modules built from the standard Flax layers whose widths
  come from the module's fields; a width written as a constant inside the
  module's code is an error naming the layer's attribute (use
  :func:`rmda_jax.reduction.compact_function` for those).

  Args:
    model: the linen module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``), or
      the params alone.
    *example_args: an example input (any batch size).
    groups: the coupled groups; None discovers them (again after each round
      of removals).
    keep_at_least: units kept per family (>= 0).
    method, **kwargs: as for ``model.apply``: use the module's inference
      mode, e.g. ``train=False`` for BatchNorm's running statistics.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> class Block(nn.Module):
    ...   hidden: int = 16
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     h = nn.gelu(nn.Dense(self.hidden)(nn.LayerNorm()(x)))
    ...     return x + nn.Dense(4)(h)
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
    >>> params = Block().init(jax.random.PRNGKey(1), x)["params"]
    >>> params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[5:].set(0)   # units 5.. unused
    >>> small = compact_linen(Block(), params, x)
    >>> small.model.hidden, bool(jnp.allclose(small.apply(x), Block().apply({"params": params}, x), atol=1e-6))
    (5, True)
  """
  from rmda_jax import rebuild

  variables = dict(variables)
  params = variables.pop("params") if "params" in variables else variables
  collections = {} if params is variables else variables
  if not example_args:
    raise TypeError("compact_linen needs an example input (any batch size): compact_linen(model, variables, x).")
  kept = {}
  current = model
  while True:
    if collections:
      apply = lambda p, c, *a, m=current: m.apply({"params": p, **c}, *a, method=method, **kwargs)
    else:
      apply = lambda p, *a, m=current: m.apply({"params": p}, *a, method=method, **kwargs)
    found = groups if groups is not None else discovery.discover_linen(
        current, params, *example_args, variables=collections, method=method, **kwargs)
    small = reduction.compact_function(apply, params, found, *example_args,
                                       extras=collections or None, keep_at_least=keep_at_least)
    for name, keep in small.kept.items():
      kept[name] = kept[name][keep] if name in kept else keep
    changed = any(len(k) < f.size for f, k in zip(found.families, small.kept.values()))
    params = jax.tree_util.tree_map(jnp.asarray, small.params)
    if collections:
      collections = jax.tree_util.tree_map(jnp.asarray, small.extras)
    target = {"params": params, **collections}
    if changed:
      resized = {(f.size, len(k)) for f, k in zip(found.families, small.kept.values())}
      current = rebuild.rebuild_linen(current, target, *example_args, resized=resized, method=method, **kwargs)
    if not changed or groups is not None:  # given groups fit the original shapes only: one round
      break
  return Compacted(current, params, kept, {}, dict(collections))


def compact(model, params, low_rank: bool = False) -> Compacted:
  """The smaller model computing the same function; see the module doc.

  Args:
    model: an :class:`~rmda_jax.models.MLP`, :class:`~rmda_jax.models.LeNet5`,
      :class:`~rmda_jax.models.VGG`, :class:`~rmda_jax.models.LogisticRegression`
      or :class:`~rmda_jax.models.TransformerBlock`.
    params: its params (the ``"params"`` collection), e.g. the structured
      point ``rmda_jax.structured_params(state)`` or the final params.
    low_rank: also factorize kernels of low numerical rank.

  Raises:
    TypeError: another model (use :func:`rmda_jax.reduction.compact_function`
      for any function, :func:`compact_nnx` for an NNX module).
    ValueError: params that do not match the model's layers.
  """
  if not isinstance(model, SUPPORTED):
    raise TypeError(
        f"compact rebuilds the library's models ({', '.join(c.__name__ for c in SUPPORTED)}) from their params "
        f"alone; for {type(model).__name__}, give an example input: compaction.compact_linen(model, variables, x) "
        "(linen), compaction.compact_nnx(model, groups, x) (NNX), or "
        "rmda_jax.reduction.compact_function(apply_fn, params, groups, x) for any function.")
  if getattr(model, "ranks", None) is not None and any(r is not None for r in model.ranks):
    raise ValueError("the model is already factorized (ranks is set); compact the full model.")
  names = _layer_names(model)
  if set(params) != set(names) or any("kernel" not in params[n] for n in names
                                      if n.startswith(("Dense", "Conv", "mlp", "head"))):
    raise ValueError(f"params do not match the {type(model).__name__}: expected layers {names}, "
                     f"got {sorted(params)}.")
  x = _example_input(model, params)
  kept = {}
  current = model
  while True:  # a removal can make another unit dead (a consumer's remaining rows all zero...)
    apply = lambda p, x, m=current: m.apply({"params": p}, x)
    groups = discovery.discover_groups(apply, params, x)
    small = reduction.compact_function(apply, params, groups, x)
    for name, keep in small.kept.items():
      kept[name] = kept[name][keep] if name in kept else keep
    changed = any(len(k) < f.size for f, k in zip(groups.families, small.kept.values()))
    params = jax.tree_util.tree_map(jnp.asarray, small.params)
    current = _rebuild(model, params)
    if not changed:
      break
  params = {name: dict(layer) if isinstance(layer, dict) else layer for name, layer in params.items()}
  for name in names:
    if name.startswith(("Dense", "Conv")) and name not in kept:
      kept[name] = np.arange(np.shape(params[name]["kernel"])[-1])
  compact_model = _rebuild(model, params)
  ranks = {}
  if low_rank and not hasattr(model, "ranks"):
    raise ValueError(f"low_rank: {type(model).__name__} has no factorized layers (ranks).")
  if low_rank:
    layer_ranks = []
    for name in names:
      if not name.startswith(("Dense", "Conv")):
        continue
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


def compact_nnx(model, groups, *example_args, in_place: bool = False, keep_at_least: int = 1):
  """A smaller NNX module computing the same function; returns ``(module, kept)``.

  Every removable unit of ``groups`` (:func:`rmda_jax.discover_nnx`) is cut
  from every variable it spans -- parameters and the rest (BatchNorm
  statistics) -- as :func:`rmda_jax.reduction.compact_function` decides, and
  the layers' size attributes are set to the new shapes (``in_features``,
  ``out_features``, ``num_heads``, ``qkv_features``, ``num_features``, ...),
  so the module works with ``nnx.jit``, ``nnx.Optimizer`` and further
  training. ``in_place=False`` (default) leaves ``model`` as it was and
  returns a copy; ``kept`` maps each family to the indices of its units kept.

  Example:
    >>> import jax, jax.numpy as jnp, numpy as np, rmda_jax
    >>> from flax import nnx
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.fc1, self.fc2 = nnx.Linear(4, 8, rngs=rngs), nnx.Linear(8, 2, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.fc2(nnx.relu(self.fc1(x)))
    >>> model, x = MLP(nnx.Rngs(0)), jnp.ones((3, 4))
    >>> model.fc2.kernel[...] = model.fc2.kernel[...].at[::2].set(0)   # units 0, 2, 4, 6 unused
    >>> small, kept = rmda_jax.compaction.compact_nnx(model, rmda_jax.discover_nnx(model, x), x)
    >>> small.fc1.out_features, small.fc2.in_features, small.fc2.kernel[...].shape
    (4, 4, (4, 2))
    >>> bool(jnp.allclose(small(x), model(x), atol=1e-6))
    True
  """
  from flax import nnx

  if not in_place:
    model = nnx.clone(model)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  fn = lambda p, r, *args: nnx.merge(graphdef, p, r)(*args)
  small = reduction.compact_function(fn, params, groups, *example_args, extras=rest, keep_at_least=keep_at_least)
  nnx.update(model, small.params, small.extras)
  for _, module in nnx.iter_modules(model):
    _set_nnx_sizes(module, nnx)
  return model, small.kept


def _set_nnx_sizes(module, nnx) -> None:
  """Size attributes of the standard NNX layers, from their (new) arrays."""
  shape = lambda variable: tuple(np.shape(variable.get_value()))
  if isinstance(module, nnx.Linear):
    module.in_features, module.out_features = shape(module.kernel)
  elif isinstance(module, nnx.Conv):
    kernel = shape(module.kernel)
    module.in_features = kernel[-2] * module.feature_group_count
    module.out_features = kernel[-1]
  elif isinstance(module, nnx.LinearGeneral):
    kernel = shape(module.kernel)
    n_in = len(module.in_features)
    module.in_features, module.out_features = kernel[:n_in], kernel[n_in:]
  elif isinstance(module, nnx.MultiHeadAttention):
    features, heads, head_dim = shape(module.query.kernel)
    module.in_features, module.num_heads, module.head_dim = features, heads, head_dim
    module.qkv_features = heads * head_dim
    module.out_features = shape(module.out.kernel)[-1]
  elif isinstance(module, (nnx.LayerNorm, nnx.RMSNorm, nnx.BatchNorm, nnx.GroupNorm)):
    for name in ("scale", "bias", "mean"):
      variable = getattr(module, name, None)
      if variable is not None:
        module.num_features = shape(variable)[-1]
        break
  elif isinstance(module, nnx.Embed):
    module.num_embeddings, module.features = shape(module.embedding)


def _to_tuple(value):
  return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def save(path: str, compacted: Compacted) -> None:
  """Write a compact library model so that :func:`load` rebuilds it without the
  original: ``path/model.json`` (class and fields) and ``path/params`` (orbax)."""
  import json
  import os

  from rmda_jax import checkpoint

  model = compacted.model
  fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ("parent", "name") and not f.name.startswith("_")}
  os.makedirs(path, exist_ok=True)
  checkpoint.save(os.path.join(os.path.abspath(path), "params"), compacted.params)
  if compacted.collections:
    checkpoint.save(os.path.join(os.path.abspath(path), "collections"), compacted.collections)
  with open(os.path.join(path, "model.json"), "w") as f:
    json.dump({"class": type(model).__name__, "fields": fields,
               "kept": {k: np.asarray(v).tolist() for k, v in compacted.kept.items()},
               "ranks": compacted.ranks}, f, indent=2)


def load(path: str, classes: tuple = ()) -> Compacted:
  """The compact model written by :func:`save` (or ``rmda-jax compact --out``).

  ``classes``: the user's module classes it may be (a :func:`compact_linen`
  result), besides the library's models."""
  import json
  import os

  from rmda_jax import checkpoint

  config = os.path.join(path, "model.json")
  if not os.path.isfile(config):
    raise ValueError(f"{path} holds no compact model (no model.json; write one with rmda-jax compact RUN --out DIR).")
  with open(config) as f:
    spec = json.load(f)
  known = {c.__name__: c for c in (*SUPPORTED, *classes)}
  cls = known.get(spec.get("class"))
  if cls is None:
    raise ValueError(f"{config}: unknown model class {spec.get('class')!r} (known: {', '.join(known)}; "
                     "pass a module class of your own with classes=(MyModule,)).")
  model = cls(**{k: _to_tuple(v) for k, v in spec["fields"].items()})
  ocp = checkpoint._orbax()
  with ocp.StandardCheckpointer() as reader:  # the saved shapes are the compact ones: no template
    params = reader.restore(os.path.join(os.path.abspath(path), "params"))
    collections_dir = os.path.join(os.path.abspath(path), "collections")
    collections = reader.restore(collections_dir) if os.path.isdir(collections_dir) else {}
  kept = {k: np.asarray(v) for k, v in spec.get("kept", {}).items()}
  return Compacted(model, params, kept, spec.get("ranks", {}), collections)
