"""Timing that survives a noisy machine: interleaved rounds, medians.

Contestants are run in alternation, round after round, so that the machine's
slow and fast moments are spread evenly over them; the median of each one's
rounds is its time. Compare contestants by their ratio, measured in one run.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.cpu import timing
  >>> x = jnp.ones((64, 64))
  >>> runners = {"add": lambda: timing.block(x + x), "mul": lambda: timing.block(x @ x)}
  >>> t = timing.interleaved_medians(runners,
  ...                                rounds=3, steps_per_round=1)
  >>> sorted(t), all(v > 0 for v in t.values())
  (['add', 'mul'], True)
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax


def block(tree: Any) -> Any:
  """Wait for every array of ``tree`` (dispatch is asynchronous); returns it."""
  return jax.tree_util.tree_map(
    lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree
  )


def interleaved_medians(
  runners: Mapping[str, Callable[[], object]], rounds: int, steps_per_round: int
) -> dict:
  """Median seconds per step of each runner, measured in alternation.

  ``runners[name]()`` runs ``steps_per_round`` steps and blocks (e.g. ends
  with :func:`block`).
  """
  if rounds < 1 or steps_per_round < 1:
    raise ValueError(
      f"rounds and steps_per_round must be >= 1, got {rounds} and {steps_per_round}."
    )
  samples = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      samples[name].append((time.perf_counter() - start) / steps_per_round)
  return {name: statistics.median(v) for name, v in samples.items()}
