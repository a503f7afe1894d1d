"""Shared benchmark plumbing: interleaved timing, tables, JSON results."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time

import jax

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def block(tree):
  return jax.tree_util.tree_map(lambda x: x.block_until_ready() if hasattr(x, "block_until_ready") else x, tree)


def interleaved_medians(runners: dict, rounds: int, steps_per_round: int) -> dict:
  """Median seconds per step of each runner, measured in alternation.

  ``runners[name]()`` runs ``steps_per_round`` steps and blocks. Interleaving
  spreads machine noise evenly over the contestants, so ratios are fair.
  """
  samples = {name: [] for name in runners}
  for _ in range(rounds):
    for name, run in runners.items():
      start = time.perf_counter()
      run()
      samples[name].append((time.perf_counter() - start) / steps_per_round)
  return {name: statistics.median(v) for name, v in samples.items()}


def machine() -> dict:
  dev = jax.devices()[0]
  return {
      "platform": dev.platform,
      "device": getattr(dev, "device_kind", str(dev)),
      "device_count": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "python": platform.python_version(),
      "jax": jax.__version__,
      "date": datetime.date.today().isoformat(),
  }


def print_table(rows: list, columns: list, title: str = "") -> None:
  if title:
    print(f"\n{title}")
  text = [[_fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(t[i]) for t in text)) for i, c in enumerate(columns)]
  print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
  print("  ".join("-" * w for w in widths))
  for t in text:
    print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def _fmt(v):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.4g}"
  return str(v)


def write_json(name: str, payload: dict) -> str:
  os.makedirs(RESULTS, exist_ok=True)
  path = os.path.join(RESULTS, f"{name}.json")
  payload = {"machine": machine(), **payload}
  with open(path, "w") as f:
    json.dump(payload, f, indent=2, default=float)
  print(f"\nwrote {path}")
  return path
