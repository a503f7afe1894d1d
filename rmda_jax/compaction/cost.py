"""What a model costs: parameters, FLOPs of a forward pass, and interleaved latencies."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import optax

from rmda_jax.cpu import timing


def num_params(params: optax.Params) -> int:
  """Number of entries over all leaves."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))


def flops(model: Any, params: optax.Params, x: jax.typing.ArrayLike) -> float:
  """FLOPs of one jitted forward pass on ``x``, from XLA's cost analysis."""
  compiled = jax.jit(lambda p, x: model.apply({"params": p}, x)).lower(params, x).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def latencies(
  candidates: dict[str, tuple[Any, optax.Params]],
  x: jax.typing.ArrayLike,
  rounds: int = 15,
  calls: int = 5,
) -> dict[str, float]:
  """Median seconds per jitted forward pass of each ``(model, params)``, interleaved.

  See :func:`rmda_jax.cpu.timing.interleaved_medians`.
  """
  runners = {}
  for name, (model, params) in candidates.items():
    fn = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x))
    fn(params, x).block_until_ready()

    def run(fn: Any = fn, params: optax.Params = params) -> None:
      for _ in range(calls):
        out = fn(params, x)
      out.block_until_ready()

    runners[name] = run
  return timing.interleaved_medians(runners, rounds, calls)
