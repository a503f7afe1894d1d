"""Cashing in the structure: a trained model made physically smaller, with the same outputs.

* :func:`compact_function` (:mod:`~rmda_jax.compaction.function`): any
  forward pass re-evaluated with every removable unit cut from every array it
  spans (:mod:`~rmda_jax.compaction.removal` says which units are removable);
* :func:`compact`, :func:`compact_linen`, :func:`compact_nnx`
  (:mod:`~rmda_jax.compaction.modules`): a linen or NNX module rebuilt with
  the surviving widths (:mod:`~rmda_jax.compaction.rebuild` finds the fields
  that set them), low-rank kernels factorized (:mod:`~rmda_jax.compaction.low_rank`);
* :func:`save` / :func:`load` (:mod:`~rmda_jax.compaction.storage`), and the
  cost of a model (:mod:`~rmda_jax.compaction.cost`).

It imports :mod:`rmda_jax.structure` (discovery), :mod:`rmda_jax.prox`,
:mod:`rmda_jax.core` and :mod:`rmda_jax.cpu` (timing).
"""

from rmda_jax.compaction import cost, function, low_rank, modules, rebuild, removal, storage
from rmda_jax.compaction.cost import flops, latencies, num_params
from rmda_jax.compaction.function import CompactFunction, compact_function
from rmda_jax.compaction.low_rank import factorize
from rmda_jax.compaction.modules import (
  Compacted,
  compact,
  compact_linen,
  compact_nnx,
  follows_protocol,
)
from rmda_jax.compaction.rebuild import rebuild_linen
from rmda_jax.compaction.removal import removable_units
from rmda_jax.compaction.storage import load, save

__all__ = [
  "CompactFunction",
  "Compacted",
  "compact",
  "compact_function",
  "compact_linen",
  "compact_nnx",
  "cost",
  "factorize",
  "flops",
  "follows_protocol",
  "function",
  "latencies",
  "load",
  "low_rank",
  "modules",
  "num_params",
  "rebuild",
  "rebuild_linen",
  "removable_units",
  "removal",
  "save",
  "storage",
]
