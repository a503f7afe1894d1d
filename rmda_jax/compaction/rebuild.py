"""Rebuild a linen module smaller: find the attributes that set its widths.

A linen module's layer widths are attributes -- of the standard layers
(``nn.Dense.features``, ``nn.Conv.features``, ``nn.DenseGeneral.features``,
``nn.MultiHeadDotProductAttention.num_heads`` / ``qkv_features``) and, for a
user's module, of the module itself (``hidden: int = 64`` passed down to
``nn.Dense(self.hidden)``) or of a config it holds (``config:
TransformerConfig`` with ``mlp_dim``, a dataclass). :func:`rebuild_linen` takes a module and the
shapes its compacted variables must have, and finds the module's integer
fields (entries of integer-tuple fields, fields of dataclass fields) whose new values give exactly
those shapes: a field equal to a family's old width ``n`` becomes the new
width ``n'``; a field that is a multiple ``k n`` (``qkv_features = heads x
head_dim``) becomes ``k n'``; pairs are tried when no single field fits
(heads and ``qkv_features`` change together). Every candidate is checked by
``jax.eval_shape`` of the module's ``init``: the rebuilt module is returned
only when all of its variables have the target shapes.

When no choice of fields fits, the error names the layer and the attribute
that holds the width (``Dense_0.features (64) is set inside
MyModel.__call__, not by a field of MyModel``), or the field that sets the
widths of several layers that were cut to different widths.
:func:`controlled_widths` tells which layers' widths a field sets, so that
:func:`rmda_jax.compact_linen` can keep such layers at one width.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> class Net(nn.Module):
  ...   hidden: int = 8
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     h = nn.relu(nn.Dense(self.hidden)(x))
  ...     return nn.Dense(2)(h)
  >>> target = {"params": {"Dense_0": {"kernel": (3, 5), "bias": (5,)},
  ...                      "Dense_1": {"kernel": (5, 2), "bias": (2,)}}}
  >>> rebuild_linen(Net(), target, jnp.ones((1, 3))).hidden
  5
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

# width attributes of the standard layers, for the error message
WIDTH_ATTRIBUTES = {
  "Dense": ("features",),
  "DenseGeneral": ("features",),
  "Conv": ("features",),
  "ConvTranspose": ("features",),
  "Embed": ("features", "num_embeddings"),
  "MultiHeadDotProductAttention": ("num_heads", "qkv_features", "out_features"),
  "MultiHeadAttention": ("num_heads", "qkv_features", "out_features"),
  "SelfAttention": ("num_heads", "qkv_features", "out_features"),
}


def _shapes(tree) -> dict:
  from flax.core import meta

  keyed = jax.tree_util.tree_flatten_with_path(meta.unbox(tree))[0]
  return {
    "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp): tuple(np.shape(x))
    for kp, x in keyed
  }


def _init_shapes(model, example_args, kwargs) -> tuple[dict, dict]:
  """Variable shapes of ``model.init`` and the layers met on the way (path -> module)."""
  from flax import linen as nn

  layers = {}

  def record(next_fun, args, kw, context):
    layers.setdefault("/".join(context.module.path), context.module)
    return next_fun(*args, **kw)

  def init(*args):
    with nn.intercept_methods(record):
      return model.init(jax.random.PRNGKey(0), *args, **kwargs)

  return _shapes(jax.eval_shape(init, *example_args)), layers


def _int_fields(model: Any, prefix: tuple[str, ...] = ()) -> list:
  """``(field path, index or None, value)`` of every int field and int entry of a tuple field.

  The field path is a tuple of names: ``("hidden",)``, or ``("config",
  "mlp_dim")`` for a field of a dataclass field (not of a submodule).
  """
  from flax import linen as nn

  out = []
  for f in dataclasses.fields(model):
    if f.name in ("parent", "name") or f.name.startswith("_"):
      continue
    value = getattr(model, f.name)
    path = prefix + (f.name,)
    if isinstance(value, bool):
      continue
    if isinstance(value, int):
      out.append((path, None, value))
    elif (
      isinstance(value, (tuple, list))
      and value
      and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
      out.extend((path, i, v) for i, v in enumerate(value))
    elif (
      dataclasses.is_dataclass(value)
      and not isinstance(value, (type, nn.Module))
      and len(prefix) < 2
    ):
      out.extend(_int_fields(value, path))
  return out


def field_name(field: tuple) -> str:
  """``config.mlp_dim`` or ``features[1]`` for an entry of :func:`_int_fields`."""
  path, index = field[0], field[1]
  return ".".join(path) + ("" if index is None else f"[{index}]")


def _replaced(obj: Any, path: tuple[str, ...], index: int | None, new: int) -> Any:
  """``obj`` with the field at ``path`` (entry ``index`` of a tuple) set to ``new``."""
  head, rest = path[0], path[1:]
  value = getattr(obj, head)
  if rest:
    value = _replaced(value, rest, index, new)
  elif index is not None:
    entries = list(value)
    entries[index] = new
    value = type(value)(entries)
  else:
    value = new
  if hasattr(obj, "clone") and callable(obj.clone):
    return obj.clone(**{head: value})
  return dataclasses.replace(obj, **{head: value})


def _with(model, changes):
  for (path, index, _), new in changes:
    model = _replaced(model, path, index, new)
  return model


def controlled_widths(
  model: Any, widths: dict[str, tuple[str, int]], *example_args: Any, **kwargs: Any
) -> list[tuple[tuple, dict[str, int]]]:
  """Which of ``widths`` each integer field of ``model`` sets, and how.

  ``widths`` maps a name (a family) to ``(path, axis)`` of a variable whose
  axis is that width (paths as ``"params/Dense_0/kernel"``). A field sets a
  width when doubling the field doubles it (checked by ``jax.eval_shape``
  of ``init``); the result lists, per such field, the widths it sets as
  ``name -> width / field value``.
  """
  shapes, _ = _init_shapes(model, example_args, kwargs)
  out = []
  for field in _int_fields(model):
    value = field[2]
    if value < 1:
      continue
    try:
      doubled, _ = _init_shapes(_with(model, [(field, 2 * value)]), example_args, kwargs)
    except Exception:  # a value the module's own checks reject: it sets nothing we can use
      continue
    ratios = {}
    for name, (path, axis) in widths.items():
      old, new = shapes.get(path), doubled.get(path)
      if old is None or new is None or len(old) != len(new):
        continue
      if new[axis] == 2 * old[axis] and old[axis] % value == 0:
        ratios[name] = old[axis] // value
    if ratios:
      out.append((field, ratios))
  return out


def _mismatched(shapes, target) -> set:
  return {p for p in target if shapes.get(p) != target[p]} | {p for p in shapes if p not in target}


def rebuild_linen(
  model: Any,
  target: Any,
  *example_args: Any,
  resized: Iterable[tuple[int, int]] = (),
  **kwargs: Any,
) -> Any:
  """The module ``model.clone(...)`` whose variables have the shapes of ``target``.

  Args:
    model: a linen module (a dataclass; its integer fields set the widths).
    target: a variables tree (``{"params": ..., "batch_stats": ...}``) of
      arrays or shapes.
    *example_args: an example input for ``model.init``.
    resized: ``(old width, new width)`` of every family that changed (the
      candidates' values); by default read off the mismatched shapes.
    **kwargs: keyword arguments of the module's ``__call__`` at init.

  Raises:
    ValueError: no choice of the module's fields gives the target shapes;
      the message names the layer and its width attribute.
  """
  target = {
    p: tuple(s) if isinstance(s, (tuple, list)) else tuple(np.shape(s))
    for p, s in _shapes_or_tuples(target).items()
  }
  shapes, layers = _init_shapes(model, example_args, kwargs)
  wrong = _mismatched(shapes, target)
  if not wrong:
    return model
  sizes = set(resized) | _size_changes(shapes, target, wrong)
  candidates = []
  for field in _int_fields(model):
    value = field[2]
    for old, new in sizes:
      if old and value % old == 0 and value // old >= 1 and new != old:
        candidates.append((field, value // old * new))
  current = model
  progress = True
  while wrong and progress:
    progress = False
    for size in (1, 2):
      best = None
      for combo in itertools.combinations(candidates, size):
        if len({c[0][:2] for c in combo}) < size:
          continue
        try:
          trial = _with(current, combo)
          trial_shapes, _ = _init_shapes(trial, example_args, kwargs)
        except Exception:  # a width the module's own checks reject: not this combination
          continue
        trial_wrong = _mismatched(trial_shapes, target)
        if trial_wrong < wrong and (best is None or len(trial_wrong) < len(best[1])):
          best = (trial, trial_wrong, combo)
      if best is not None:
        current, wrong = best[0], best[1]
        candidates = [c for c in candidates if c[0][:2] not in {b[0][:2] for b in best[2]}]
        progress = True
        break
  if wrong:
    # name a layer whose own output width changed (a producer), not one that only follows its input
    producer_first = sorted(
      wrong, key=lambda p: (not _output_changed(shapes.get(p), target.get(p)), p)
    )
    raise ValueError(_explain(model, producer_first, shapes, target, layers))
  return current


def _shapes_or_tuples(tree) -> dict:
  def is_shape(x: Any) -> bool:
    return isinstance(x, tuple) and all(isinstance(v, int) for v in x)

  keyed = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_shape)[0]
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp): x for kp, x in keyed}


def _output_changed(old, new) -> bool:
  return old is not None and new is not None and len(old) == len(new) and old[-1:] != new[-1:]


def _size_changes(shapes, target, wrong) -> set:
  out = set()
  for path in wrong:
    old, new = shapes.get(path), target.get(path)
    if old is not None and new is not None and len(old) == len(new):
      out.update((a, b) for a, b in zip(old, new) if a != b)
  return out


def _explain(model, wrong, shapes, target, layers) -> str:
  path = wrong[0]
  parts = path.split("/")[1:]  # drop the collection
  layer_path = "/".join(parts[:-1])
  layer = None
  for depth in range(len(parts) - 1, 0, -1):
    layer = layers.get("/".join(parts[:depth]))
    if layer is not None:
      layer_path = "/".join(parts[:depth])
      break
  kind = type(layer).__name__ if layer is not None else "layer"
  attributes = [a for a in WIDTH_ATTRIBUTES.get(kind, ()) if getattr(layer, a, None) is not None]
  where = (
    ", ".join(f"{layer_path}.{a} ({getattr(layer, a)})" for a in attributes)
    if attributes
    else f"the width of {layer_path} ({kind})"
  )
  fields = ", ".join(f"{field_name(f)}={f[2]}" for f in _int_fields(model)) or "none"
  return (
    f"cannot rebuild {type(model).__name__} smaller: {path} must become {target.get(path)} "
    f"(it is {shapes.get(path)}), but {where} is set inside {type(model).__name__}'s code, "
    "not by one of its "
    f"integer fields ({fields}). Make that width a field of {type(model).__name__}, or use "
    "rmda_jax.compact_function (any function) or compaction.compact_nnx (NNX)."
  )
