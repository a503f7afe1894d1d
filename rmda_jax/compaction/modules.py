"""Compaction: turn a structured model into a physically smaller Flax model.

Structured sparsity pays off when the zeros become a smaller network.
:func:`compact` takes a linen model and its trained params and returns a
model of the same class with fewer channels / neurons / heads, its params,
and which units were kept; the compact model computes the same function as
the original, on any input. It is driven by the coupled groups that
:func:`rmda_jax.discover_groups` finds in the model's computation, and cuts
every removable unit from every leaf it spans
(:func:`rmda_jax.compact_function`): a unit whose consumer slices
are zero (the input-wise groups RMDA zeroes), whose whole group is zero (the
coupled groups), or whose producer slices are zero where the computation
keeps a zero unit zero (ReLU, pooling). The removals are repeated until
nothing changes (a removal can make another unit dead); at least one unit of
every layer is kept, and the model's input is not touched. With
``low_rank=True``, every kernel whose numerical rank ``r`` is small enough to
save parameters (``r (m + n) < m n`` for the ``(m, n)`` matrix view) is
replaced by the factors of its truncated SVD (see :func:`factorize`).

Which model class is rebuilt, and how:

* a model that implements the *compaction protocol* -- ``compaction_layers()``
  (its top-level param names), ``compaction_input(params)`` (an example
  input) and ``with_widths_of(params)`` (the same class with the widths of
  ``params``), and optionally ``compaction_groups(groups)`` (the families
  whose widths the class can change), as the models of
  :mod:`rmda_jax.app.models` do -- needs only its params;
* any other linen module is rebuilt by :func:`compact_linen` from an example
  input: its integer fields that set its layers' widths are found and
  checked (:mod:`rmda_jax.compaction.rebuild`);
* :func:`compact_nnx` compacts an NNX module in place or as a copy, and
  :func:`rmda_jax.compact_function` any function.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> from rmda_jax import compaction
  >>> class MLP(nn.Module):
  ...   hidden: tuple = (8, 4)
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     for width in self.hidden:
  ...       x = nn.relu(nn.Dense(width)(x))
  ...     return nn.Dense(3)(x)
  >>> x = jax.random.normal(jax.random.PRNGKey(1), (4, 5))
  >>> params = MLP().init(jax.random.PRNGKey(0), x)["params"]
  >>> params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[:6].set(0)  # 6 input groups
  >>> small = compaction.compact(MLP(), params, x)
  >>> small.model.hidden, compaction.num_params(small.params) < compaction.num_params(params)
  ((2, 4), True)
  >>> bool(jnp.allclose(MLP().apply({"params": params}, x), small.apply(x), atol=1e-5))
  True
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from rmda_jax.compaction.function import CompactFunction, compact_function
from rmda_jax.compaction.low_rank import factorize
from rmda_jax.compaction.rebuild import controlled_widths, field_name, rebuild_linen
from rmda_jax.core.groups import Groups
from rmda_jax.structure.discovery import discover_groups, discover_linen

PROTOCOL = ("compaction_layers", "compaction_input", "with_widths_of")


def follows_protocol(model: Any) -> bool:
  """Whether ``model`` tells how it is rebuilt from params alone (see the module doc)."""
  return all(callable(getattr(model, name, None)) for name in PROTOCOL)


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
  collections: dict = dataclasses.field(
    default_factory=dict
  )  # the other variables (batch_stats, ...)

  def apply(self, *args: Any, **kwargs: Any) -> Any:
    """``model.apply`` with the compact variables."""
    return self.model.apply({"params": self.params, **self.collections}, *args, **kwargs)


def compact_linen(
  model: Any,
  variables: Any,
  *example_args: Any,
  groups: Groups | None = None,
  keep_at_least: int = 1,
  method: Any = None,
  **kwargs: Any,
) -> Compacted:
  """A smaller linen module of the same class computing the same function.

  Every removable unit (see the module doc) is cut from every variable it
  spans, params and other collections (BatchNorm's ``batch_stats``) alike,
  until nothing changes, and the module is rebuilt with the new widths by
  :func:`rmda_jax.compaction.rebuild_linen`: its integer fields that set the
  widths of its layers (``hidden: int``, ``features: tuple``, ``heads`` with
  ``qkv_features``) get the new values, checked against the cut variables'
  shapes. Works for modules built from the standard Flax layers whose widths
  come from the module's fields; a width written as a constant inside the
  module's code is an error naming the layer's attribute (use
  :func:`rmda_jax.compact_function` for those).

  Args:
    model: the linen module.
    variables: its variables (``{"params": ..., "batch_stats": ...}``), or
      the params alone; boxed ones (``nn.with_logical_partitioning``) are
      unboxed, and the compact variables are plain arrays.
    *example_args: an example input (any batch size).
    groups: the coupled groups; None discovers them (again after each round
      of removals).
    keep_at_least: units kept per family (>= 0).
    method: as for ``model.apply``.
    **kwargs: as for ``model.apply``: use the module's inference mode, e.g.
      ``train=False`` for BatchNorm's running statistics.

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
    >>> same = jnp.allclose(small.apply(x), Block().apply({"params": params}, x), atol=1e-6)
    >>> small.model.hidden, bool(same)
    (5, True)
  """
  from flax.core import meta

  variables = dict(meta.unbox(variables))  # boxed params (logical partitioning) as plain arrays
  params = variables.pop("params") if "params" in variables else variables
  collections = {} if params is variables else variables
  if not example_args:
    raise TypeError(
      "compact_linen needs an example input (any batch size): compact_linen(model, variables, x)."
    )
  kept = {}
  current = model
  while True:

    def apply(p: Any, *a: Any, m: Any = current, with_extras: bool = bool(collections)) -> Any:
      # with other collections, the first argument after the params holds them (extras)
      extra, args = (a[0], a[1:]) if with_extras else ({}, a)
      return m.apply({"params": p, **extra}, *args, method=method, **kwargs)

    found = (
      groups
      if groups is not None
      else discover_linen(
        current, params, *example_args, variables=collections, method=method, **kwargs
      )
    )

    small = _shrink(apply, params, found, example_args, collections, keep_at_least, {})
    changed = any(k.shape[-1] < f.size for f, k in zip(found.families, small.kept.values()))
    if changed:
      try:
        model_out = _rebuilt(current, small, found, example_args, method, kwargs)
      except ValueError as error:
        # one field may set the widths of several layers: keep them at one width
        minimum, ties = _tied_minimum(current, found, small, example_args, method, kwargs)
        if not minimum:
          raise
        small = _shrink(apply, params, found, example_args, collections, keep_at_least, minimum)
        changed = any(k.shape[-1] < f.size for f, k in zip(found.families, small.kept.values()))
        try:
          model_out = (
            _rebuilt(current, small, found, example_args, method, kwargs) if changed else current
          )
        except ValueError as second:
          raise ValueError(
            f"{second}\n{'; '.join(ties)}: those layers were kept at one width, and the module "
            "still cannot be rebuilt with it (the field also sets widths that were not cut)."
          ) from error
      current = model_out
    for name, keep in small.kept.items():
      kept[name] = _compose(kept[name], keep) if name in kept else keep
    params = jax.tree_util.tree_map(jnp.asarray, small.params)
    if collections:
      collections = jax.tree_util.tree_map(jnp.asarray, small.extras)
    if not changed or groups is not None:  # given groups fit the original shapes only: one round
      break
  return Compacted(current, params, kept, {}, dict(collections))


def _shrink(
  apply: Any,
  params: Any,
  groups: Groups,
  example_args: tuple,
  collections: dict,
  keep_at_least: int,
  minimum: dict[str, int],
) -> CompactFunction:
  """:func:`compact_function` of ``apply``, each family keeping at least its ``minimum``."""
  widths = {f.name: minimum.get(f.name, keep_at_least) for f in groups.families}
  return compact_function(
    apply, params, groups, *example_args, extras=collections or None, keep_at_least=widths
  )


def _rebuilt(
  model: Any, small: CompactFunction, groups: Groups, example_args: tuple, method: Any, kwargs: dict
) -> Any:
  """``model`` rebuilt with the widths of ``small``'s variables (:func:`rebuild_linen`)."""
  target = {"params": small.params, **(small.extras or {})}
  resized = {(f.size, k.shape[-1]) for f, k in zip(groups.families, small.kept.values())}
  return rebuild_linen(model, target, *example_args, resized=resized, method=method, **kwargs)


def _tied_minimum(
  model: Any, groups: Groups, small: Any, example_args: tuple, method: Any, kwargs: dict
) -> tuple[dict[str, int], list[str]]:
  """Per family, the width it must keep so that each field setting several widths has one value.

  A field that sets the widths of several families (``config.mlp_dim`` for
  the MLP of every layer, ``num_filters`` for ``num_filters * 2**i`` filters
  in stage ``i``) gets the smallest value that keeps every one of them wide
  enough; each family then keeps ``ratio x value`` units, padded with its
  removable units (the function is unchanged). Empty when no field does.
  Also, per such field, what it sets (for the messages).
  """
  widths = {
    f.name: ("params/" + f.members[0].path, f.members[0].axis) for f in groups.families if f.members
  }
  kwargs = dict(kwargs) if method is None else {**kwargs, "method": method}
  minimum: dict[str, int] = {}
  ties = []
  for field, ratios in controlled_widths(model, widths, *example_args, **kwargs):
    if len(ratios) < 2:
      continue
    value = max(-(-small.kept[name].shape[-1] // ratio) for name, ratio in ratios.items())
    for name, ratio in ratios.items():
      minimum[name] = max(minimum.get(name, 0), ratio * value)
    ties.append(f"{field_name(field)} sets the widths of {', '.join(sorted(ratios))}")
  return minimum, ties


def _compose(kept: np.ndarray, keep: np.ndarray) -> np.ndarray:
  """The original indices of a second round's ``keep`` (indices into the first's ``kept``)."""
  return kept[keep] if kept.ndim == 1 else np.take_along_axis(kept, keep, axis=1)


def compact(model: Any, params: Any, *example_args: Any, low_rank: bool = False) -> Compacted:
  """The smaller model computing the same function; see the module doc.

  Args:
    model: a linen model: one that follows the compaction protocol (the
      models of :mod:`rmda_jax.app.models`), or any linen module with an
      example input (then :func:`compact_linen` rebuilds it).
    params: its params (the ``"params"`` collection), e.g. the structured
      point ``rmda_jax.structured_params(state)`` or the final params.
    *example_args: an example input (any batch size); optional under the
      protocol.
    low_rank: also factorize kernels of low numerical rank (a protocol model
      with a ``ranks`` field, whose ``Dense_*`` / ``Conv_*`` layers then
      become ``down`` / ``up`` pairs, as :class:`rmda_jax.app.models.LowRank`).

  Raises:
    TypeError: a model outside the protocol without an example input.
    ValueError: params that do not match the model's layers; ``low_rank``
      for a model without ``ranks``.
  """
  if not follows_protocol(model):
    if not example_args:
      raise TypeError(
        f"{type(model).__name__} does not say how it is rebuilt from its params "
        "(the compaction protocol: "
        f"{', '.join(PROTOCOL)}); give an example input: compaction.compact(model, params, x) or "
        "compaction.compact_linen(model, variables, x) (linen), "
        "compaction.compact_nnx(model, groups, x) (NNX), "
        "or rmda_jax.compact_function(apply_fn, params, groups, x) for any function."
      )
    if low_rank:
      raise ValueError(f"low_rank: {type(model).__name__} has no factorized layers (ranks).")
    return compact_linen(model, params, *example_args)
  if getattr(model, "ranks", None) is not None and any(r is not None for r in model.ranks):
    raise ValueError("the model is already factorized (ranks is set); compact the full model.")
  names = model.compaction_layers()
  if set(params) != set(names) or any(
    "kernel" not in params[n] for n in names if n.startswith(("Dense", "Conv", "mlp", "head"))
  ):
    raise ValueError(
      f"params do not match the {type(model).__name__}: expected layers {names}, "
      f"got {sorted(params)}."
    )
  x = example_args[0] if example_args else model.compaction_input(params)
  kept = {}
  current = model
  while True:  # a removal can make another unit dead (a consumer's remaining rows all zero...)

    def apply(p: Any, x: Any, m: Any = current) -> Any:
      return m.apply({"params": p}, x)

    groups = discover_groups(apply, params, x)
    if callable(getattr(model, "compaction_groups", None)):  # the widths the class can express
      groups = model.compaction_groups(groups)
    small = compact_function(apply, params, groups, x)
    for name, keep in small.kept.items():
      kept[name] = _compose(kept[name], keep) if name in kept else keep
    changed = any(k.shape[-1] < f.size for f, k in zip(groups.families, small.kept.values()))
    params = jax.tree_util.tree_map(jnp.asarray, small.params)
    current = model.with_widths_of(params)
    if not changed:
      break
  params = {
    name: dict(layer) if isinstance(layer, dict) else layer for name, layer in params.items()
  }
  for name in names:
    if name.startswith(("Dense", "Conv")) and name not in kept:
      kept[name] = np.arange(np.shape(params[name]["kernel"])[-1])
  compact_model = model.with_widths_of(params)
  expected = jax.eval_shape(lambda: compact_model.init(jax.random.PRNGKey(0), x))["params"]
  if jax.tree_util.tree_map(np.shape, expected) != jax.tree_util.tree_map(np.shape, params):
    raise ValueError(
      f"{type(model).__name__}.with_widths_of does not express the compacted widths (its "
      "compaction_groups should leave out the families it cannot resize)."
    )
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
        params[name] = {
          "down": {"kernel": down},
          "up": {"kernel": up, "bias": params[name]["bias"]},
        }
        ranks[name] = r
      layer_ranks.append(ranks.get(name))
    if ranks:
      compact_model = compact_model.clone(ranks=tuple(layer_ranks))
  return Compacted(compact_model, params, kept, ranks)


def compact_nnx(
  model: Any, groups: Groups, *example_args: Any, in_place: bool = False, keep_at_least: int = 1
) -> tuple[Any, dict[str, np.ndarray]]:
  """A smaller NNX module computing the same function; returns ``(module, kept)``.

  Every removable unit of ``groups`` (:func:`rmda_jax.discover_nnx`) is cut
  from every variable it spans -- parameters and the rest (BatchNorm
  statistics) -- as :func:`rmda_jax.compact_function` decides, and
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

  def fn(p: Any, r: Any, *args: Any) -> Any:
    return nnx.merge(graphdef, p, r)(*args)

  small = compact_function(
    fn, params, groups, *example_args, extras=rest, keep_at_least=keep_at_least
  )
  nnx.update(model, small.params, small.extras)
  for _, module in nnx.iter_modules(model):
    _set_nnx_sizes(module, nnx)
  return model, small.kept


def _set_nnx_sizes(module: Any, nnx: Any) -> None:
  """Size attributes of the standard NNX layers, from their (new) arrays.

  The trailing axes of each array: a layer stacked by ``nnx.vmap`` (the
  layers of an ``nnx.scan``) has leading layer axes.
  """

  def shape(variable: Any) -> tuple[int, ...]:
    return tuple(np.shape(variable.get_value()))

  if isinstance(module, nnx.Linear):
    module.in_features, module.out_features = shape(module.kernel)[-2:]
  elif isinstance(module, nnx.Conv):
    kernel = shape(module.kernel)
    module.in_features = kernel[-2] * module.feature_group_count
    module.out_features = kernel[-1]
  elif isinstance(module, nnx.LinearGeneral):
    kernel = shape(module.kernel)
    n_in, n_out = len(module.in_features), len(module.out_features)
    kernel = kernel[len(kernel) - n_in - n_out :]
    module.in_features, module.out_features = kernel[:n_in], kernel[n_in:]
  elif isinstance(module, nnx.MultiHeadAttention):
    features, heads, head_dim = shape(module.query.kernel)[-3:]
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
    module.num_embeddings, module.features = shape(module.embedding)[-2:]
