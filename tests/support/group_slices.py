"""NumPy views of a family's groups: the slices of group ``(layer, j)`` and their norms.

Written from the definition of :class:`rmda_jax.Slice` (the axis viewed as
``split``, the group index at ``position``, the layer at ``layer_axis``),
independently of the library's group layouts.
"""

import numpy as np

from rmda_jax.core.trees import path_to_str


def flat(tree):
  """``{path: float64 array}`` of a params tree (paths as the library writes them)."""
  import jax

  keyed = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {path_to_str(k): np.asarray(v, np.float64) for k, v in keyed}


def unflat(like, arrays):
  """``arrays`` (by path) in the structure and dtypes of ``like``."""
  import jax
  import jax.numpy as jnp

  keyed, treedef = jax.tree_util.tree_flatten_with_path(like)
  leaves = [jnp.asarray(arrays[path_to_str(k)], jnp.result_type(v)) for k, v in keyed]
  return jax.tree_util.tree_unflatten(treedef, leaves)


def group_view(a, s):
  """``a`` viewed so that axis 0 is the layer (length 1 without one) and axis 1 the group."""
  shape = list(a.shape)
  inner = list(s.split) if s.split else [shape[s.axis]]
  view = a.reshape(shape[: s.axis] + inner + shape[s.axis + 1 :])
  group = s.axis + s.position
  if s.layer_axis is None:
    return np.moveaxis(view, group, 0)[None]
  layer = s.layer_axis if s.layer_axis < s.axis else s.layer_axis + len(inner) - 1
  return np.moveaxis(view, (layer, group), (0, 1))


def group_norms(arrays, family):
  """``(layers or 1, size)`` Euclidean norms of the family's groups."""
  total = 0.0
  for s in family.members:
    v = group_view(arrays[s.path], s)
    total = total + np.sum(np.square(v.reshape(v.shape[0], v.shape[1], -1)), axis=2)
  return np.sqrt(total)


def set_group(arrays, family, layer, j, values, members=None):
  """A copy of ``arrays`` with group ``(layer, j)`` of ``members`` (default all) set.

  ``values`` is a number or ``shape -> array``.
  """
  out = dict(arrays)
  for s in family.members if members is None else members:
    a = np.array(out[s.path])
    shape = list(a.shape)
    inner = list(s.split) if s.split else [shape[s.axis]]
    view = a.reshape(shape[: s.axis] + inner + shape[s.axis + 1 :])
    index = [slice(None)] * view.ndim
    index[s.axis + s.position] = j
    if s.layer_axis is not None:
      index[s.layer_axis if s.layer_axis < s.axis else s.layer_axis + len(inner) - 1] = layer
    target = view[tuple(index)]
    view[tuple(index)] = values(target.shape) if callable(values) else values
    out[s.path] = view.reshape(a.shape)
  return out
