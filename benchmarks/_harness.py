"""Shared benchmark plumbing: tables, JSON results (timing: :mod:`rmda_jax.cpu.timing`)."""

from __future__ import annotations

import datetime
import json
import os
import platform

import jax

from rmda_jax.cpu.timing import block, interleaved_medians  # noqa: F401  (the one timing helper)

RESULTS = os.path.join(os.path.dirname(__file__), "results")


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
  widths = [max([len(c), *(len(t[i]) for t in text)]) for i, c in enumerate(columns)]
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
