"""Which units of a family can be cut from a model exactly, from the values of its leaves.

Example:
  >>> import numpy as np
  >>> from rmda_jax import Family, Slice
  >>> from rmda_jax.compaction.removal import removable_units
  >>> hidden = Family("h", "units", 3, (Slice("w1", 1), Slice("w2", 0)), consumers=("w2",))
  >>> leaves = {"w1": np.ones((2, 3)), "w2": np.array([[1.0], [0.0], [2.0]])}
  >>> removable_units(hidden, leaves).tolist()   # unit 1 is not consumed
  [False, True, False]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from rmda_jax.core.groups import Family, Slice
from rmda_jax.core.layout import GroupLayout


def removable_units(
  family: Family, leaves: Mapping[str, Any], producers: Sequence[Slice] = ()
) -> np.ndarray:
  """Which units of a family can be cut exactly (``leaves``: arrays by path).

  The whole group is zero, or its slices in the family's consumer leaves
  are; or, where ``producers`` (the slices that produce the unit, in any
  leaf, for a computation that keeps a zero unit zero; with layer axes for a
  family on stacked leaves) are given, all of those are. Shape ``(size,)``,
  or ``(layers, size)`` for a family on stacked leaves.
  """

  def zero(members: tuple[Slice, ...]) -> np.ndarray:
    if not members:
      return np.zeros(
        (family.size,) if family.layers is None else (family.layers, family.size), bool
      )
    layout = GroupLayout.of_family(
      dataclasses.replace(family, members=members, consumers=(), weight=None),
      [np.shape(leaves[m.path]) for m in members],
    )
    return ~np.asarray(layout.nonzero([jnp.asarray(leaves[m.path], jnp.float32) for m in members]))

  removable = zero(family.members)
  consumers = tuple(m for m in family.members if m.path in family.consumers)
  if consumers and len(consumers) == len(family.consumers):
    removable = removable | zero(consumers)
  if producers:
    removable = removable | zero(tuple(producers))
  return removable
