"""Pytree helpers: key paths, accumulator copies, updates that land on a new point.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.core import trees
  >>> params = {"Dense_0": {"kernel": jnp.ones((2, 2), jnp.bfloat16)}}
  >>> trees.paths(params)
  ['Dense_0/kernel']
  >>> trees.to_float32(params)["Dense_0"]["kernel"].dtype
  dtype('float32')
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import jax
import jax.numpy as jnp
import optax


def path_to_str(key_path: Iterable[Any]) -> str:
  """The ``/``-joined key path of a leaf.

  An NNX ``Variable``'s ``value`` attribute is not a component, so an
  ``nnx.State`` and the same weights as a plain dict have the same paths
  (``"attn/query/kernel"``).
  """
  parts = []
  for key in key_path:
    if isinstance(key, jax.tree_util.DictKey):
      parts.append(str(key.key))
    elif isinstance(key, jax.tree_util.GetAttrKey):
      if key.name != "value":
        parts.append(str(key.name))
    elif isinstance(key, jax.tree_util.SequenceKey):
      parts.append(str(key.idx))
    elif isinstance(key, jax.tree_util.FlattenedIndexKey):
      parts.append(str(key.key))
    else:
      parts.append(str(key))
  return "/".join(parts)


def paths(tree: optax.Params) -> list[str]:
  """The :func:`path_to_str` of every leaf of ``tree``, in leaf order."""
  return [path_to_str(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def leaf_name(path: str) -> str:
  """The last component of a ``/``-joined path (``"kernel"``)."""
  return path.rsplit("/", 1)[-1]


def module_name(path: str) -> str:
  """The name of the module holding a leaf (``"query"`` for ``".../query/kernel"``)."""
  parts = path.split("/")
  return parts[-2] if len(parts) >= 2 else ""


def _clip(text: str, limit: int = 1200) -> str:
  return text if len(text) <= limit else text[:limit] + " ..."


def check_like_params(
  tree: optax.Params, params: optax.Params, argname: str, hint: str = ""
) -> None:
  """``tree`` has the params' tree structure and leaf shapes.

  Static: costs nothing under jit.

  Raises:
    ValueError: naming ``argname``, the leaves only one of the trees has,
      or the first leaf whose shape differs.
  """
  tree_def = jax.tree_util.tree_structure(tree)
  params_def = jax.tree_util.tree_structure(params)
  if tree_def != params_def:
    tree_paths = [
      jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]
    param_paths = [
      jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]
    ]
    tree_set, param_set = set(tree_paths), set(param_paths)
    only_tree = [p for p in tree_paths if p not in param_set]
    only_params = [p for p in param_paths if p not in tree_set]
    detail = ""
    for where, names in ((argname, only_tree), ("params", only_params)):
      if names:
        detail += (
          f"\n  leaves only in {where}: {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}"
        )
    raise ValueError(
      f"{argname} must have the params' tree structure{hint}.{detail}\n"
      f"  {argname}: {_clip(str(tree_def))}\n  params: {_clip(str(params_def))}"
    )
  for (kp, leaf), param in zip(
    jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree_util.tree_leaves(params)
  ):
    if jnp.shape(leaf) != jnp.shape(param):
      raise ValueError(
        f"{argname} must have the params' shapes{hint}: leaf {jax.tree_util.keystr(kp)} has shape "
        f"{jnp.shape(leaf)}, the param {jnp.shape(param)}."
      )


def check_real_floating(params: optax.Params, name: str) -> None:
  """Every leaf of ``params`` has a real floating dtype (float16, bfloat16, float32, float64).

  An integer leaf would have its updates truncated and a complex one its
  prox taken on the wrong quantity (the proximal operators are defined on
  real numbers), so both are refused where the state is made.

  Raises:
    TypeError: naming ``name``, the first such leaf and its dtype.

  Example:
    >>> import jax.numpy as jnp
    >>> from rmda_jax.core.trees import check_real_floating
    >>> check_real_floating({"w": jnp.zeros(2, jnp.int32)}, "rmda")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: rmda.init: params leaf 'w' has dtype int32; ...
  """
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    dtype = jnp.result_type(leaf)
    if jnp.issubdtype(dtype, jnp.complexfloating):
      why = (
        "the proximal operators are defined on real numbers: optimize the real and imaginary "
        "parts as two real leaves"
      )
    elif not jnp.issubdtype(dtype, jnp.floating):
      why = (
        "its updates would be truncated: cast it to a floating dtype, or keep it out of the "
        "optimized params (optax.masked, optax.multi_transform)"
      )
    else:
      continue
    raise TypeError(
      f"{name}.init: params leaf {path_to_str(key_path)!r} has dtype {dtype}; {name} updates "
      f"real floating-point params only (float16, bfloat16, float32, float64): {why}."
    )


def to_float32(tree: optax.Params) -> optax.Params:
  """Accumulator copy of a tree: float32 at least, whatever the params' dtype."""
  return jax.tree_util.tree_map(
    lambda x: jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32)), tree
  )


def fresh_copy(tree: optax.Params, accumulator: bool = False) -> optax.Params:
  """A copy of ``tree`` in new buffers (float32 at least with ``accumulator``).

  It never aliases the input: an optimizer state built from the params must
  survive ``jax.jit(..., donate_argnums=...)`` donating both.
  """

  def copy(x):
    dtype = jnp.result_type(x)
    if accumulator:
      dtype = jnp.promote_types(dtype, jnp.float32)
    return jnp.array(x, dtype=dtype, copy=True)

  return jax.tree_util.tree_map(copy, tree)


def zeros_float32(tree: optax.Params) -> optax.Params:
  """Zeros shaped like ``tree``, float32 at least."""
  return jax.tree_util.tree_map(
    lambda x: jnp.zeros(jnp.shape(x), jnp.promote_types(jnp.result_type(x), jnp.float32)), tree
  )


def updates_to(new_params: optax.Params, params: optax.Params) -> optax.Params:
  """``new - params`` in the params' dtypes.

  ``optax.apply_updates`` then lands on ``new``, exactly on every zero of it.
  """
  return jax.tree_util.tree_map(
    lambda new, x: jnp.asarray(new).astype(jnp.result_type(x)) - x, new_params, params
  )


def cast_like(tree: optax.Params, like: optax.Params) -> optax.Params:
  """``tree`` in the dtypes of the matching leaves of ``like``."""
  return jax.tree_util.tree_map(lambda a, x: jnp.asarray(a).astype(jnp.result_type(x)), tree, like)
