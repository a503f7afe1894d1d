"""Names in discovery: the canonical slice of a factor of an axis, and the name of a family.

Example:
  >>> from rmda_jax.structure.discovery.naming import canonical_slice
  >>> canonical_slice("attn/query/kernel", 1, [4, 16], 0)   # head factor of a fused (4 * 16) axis
  Slice(path='attn/query/kernel', axis=1, split=(4, 16), position=0, layer_axis=None)
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Collection, Sequence

from rmda_jax.core.groups import Family, Slice


def canonical_slice(path: str, axis: int, sizes: Sequence[int], position: int) -> Slice:
  """The :class:`~rmda_jax.Slice` of factor ``position`` of an axis viewed as ``sizes``.

  Factors of size 1 next to it are dropped, so the view is at most
  ``(before, n, after)``.
  """
  pre = math.prod(sizes[:position])
  post = math.prod(sizes[position + 1 :])
  n = sizes[position]
  if pre == 1 and post == 1:
    return Slice(path, axis)
  if pre == 1:
    return Slice(path, axis, (n, post), 0)
  if post == 1:
    return Slice(path, axis, (pre, n), 1)
  return Slice(path, axis, (pre, n, post), 1)


def module_path(path: str) -> str:
  """The module part of a leaf's path (``"attn/query"`` for ``"attn/query/kernel"``)."""
  return path.rsplit("/", 1)[0] if "/" in path else path


def family_name(
  paths: Sequence[str], members: Sequence[tuple[int, Slice]], consumers: Collection[int], kind: str
) -> str:
  """The layer a family belongs to.

  The module holding all its leaves, else the module holding all its
  producers (the cell of a recurrent layer, whose gates produce the units),
  else the module of its first producer kernel (the layer whose outputs the
  units are), else of its first producer.
  """
  if kind == "inputs":
    return "inputs of " + module_path(paths[min(consumers)]) if consumers else "inputs"
  common = _common_module([paths[i] for i, _ in members])
  if common and len(members) > 1:
    return common
  producers = [paths[i] for i, _ in members if i not in consumers]
  common = _common_module(producers)
  if common and len({module_path(p) for p in producers}) > 1:
    return common
  kernels = [p for p in producers if p.rsplit("/", 1)[-1] == "kernel"]
  if kernels or producers:
    return module_path((kernels or producers)[0])
  return module_path(paths[members[0][0]]) + " (consumer side)"


def _common_module(paths: Sequence[str]) -> str:
  """The longest module path holding all ``paths`` ("" if none)."""
  modules = [module_path(p).split("/") for p in paths]
  common = []
  for parts in zip(*modules):
    if len(set(parts)) != 1:
      break
    common.append(parts[0])
  return "/".join(common)


def unique_names(families: Sequence[Family]) -> list[Family]:
  """The families, ``" #1"``, ``" #2"``, ... appended to the names that two or more share."""
  seen = collections.Counter(f.name for f in families)
  counts = collections.Counter()
  out = []
  for f in families:
    if seen[f.name] > 1:
      counts[f.name] += 1
      f = dataclasses.replace(f, name=f"{f.name} #{counts[f.name]}")
    out.append(f)
  return out
