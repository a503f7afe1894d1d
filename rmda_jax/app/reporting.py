"""Reporting: what a training run measures and prints.

Evaluation over batches, the structure metrics of a point
(:func:`rmda_jax.metrics.summary`), the language-model metrics (perplexity,
heads and hidden units kept per layer), the per-epoch line, the final
summary table and the progress bar.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import optax

from rmda_jax.app.config import TrainConfig
from rmda_jax.core.groups import Groups
from rmda_jax.prox import Regularizer
from rmda_jax.structure import metrics


def batched_mean(
  fn: Callable[[optax.Params, np.ndarray, np.ndarray], jax.Array],
  params: optax.Params,
  x: np.ndarray,
  y: np.ndarray,
  batch: int,
  between: Callable[[], None] | None = None,
) -> float:
  """The per-example mean of ``fn`` over ``(x, y)``, evaluated ``batch`` examples at a time.

  ``fn(params, x_b, y_b)`` returns a batch's sum (correct predictions, summed
  loss); ``between`` is called after each batch.
  """
  total = 0.0
  for start in range(0, len(x), batch):
    total += float(fn(params, x[start : start + batch], y[start : start + batch]))
    if between is not None:
      between()
  return total / len(x)


def language_metrics(
  record: dict[str, Any], structured: optax.Params, found: Groups, unigram: float
) -> dict[str, Any]:
  """Perplexity (and the unigram baseline's), and the units kept per layer.

  The heads and hidden units kept per layer of ``found`` are those of the
  structured point ``z`` for RMDA/RAMDA, of the params otherwise.
  """
  out: dict[str, Any] = {
    "val_perplexity": float(np.exp(record["val_loss"])),
    "unigram_perplexity": unigram,
  }
  kept = metrics.family_kept(structured, found)
  kinds = {f.name: f.kind for f in found.families}
  out["heads_kept"] = {name: k / n for name, (k, n) in kept.items() if kinds[name] == "heads"}
  out["units_kept"] = {name: k / n for name, (k, n) in kept.items() if kinds[name] == "units"}
  return out


def structure_metrics(
  params: optax.Params, regularizer: Regularizer | None, groups: Groups | None = None
) -> dict[str, float]:
  """:func:`rmda_jax.metrics.summary` as floats (over ``groups`` when given)."""
  return {k: float(v) for k, v in metrics.summary(params, regularizer, groups).items()}


def throughput(examples: int, seconds: float, processes: int = 1) -> dict[str, float]:
  """The training examples per second of an epoch, in total and (several processes) per process."""
  total = examples / seconds if seconds > 0 else 0.0
  rates = {"examples_per_second": total}
  if processes > 1:
    rates["examples_per_second_per_process"] = total / processes
  return rates


def epoch_line(r: dict[str, Any], batches_per_epoch: int | None = None) -> str:
  """The line printed for the epoch record ``r``."""
  line = (
    f"epoch {r['epoch']:4d}  loss {r['train_loss']:.4f}  train acc {r['train_accuracy']:.4f}  "
    f"val acc {r['val_accuracy']:.4f}  sparsity {r['unstructured_sparsity']:.3f}  "
    f"group {r['group_sparsity']:.3f}  weighted group {r['weighted_group_sparsity']:.3f}"
  )
  if r.get("examples_per_second"):
    line += f"  {r['examples_per_second']:.0f} ex/s"
    if "examples_per_second_per_process" in r:
      line += f" ({r['examples_per_second_per_process']:.0f} per process)"
  if r.get("skipped_steps"):
    line += f"  skipped {r['skipped_steps']} non-finite"
  if "low_rank_level" in r:
    line += f"  low rank {r['low_rank_level']:.3f}"
  if "on_set_fraction" in r:
    line += f"  on set {r['on_set_fraction']:.3f}"
  if "structured_group_sparsity" in r:
    line += (
      f"  | z: group {r['structured_group_sparsity']:.3f} "
      f"val acc {r['structured_val_accuracy']:.4f}"
    )
  if "val_perplexity" in r:
    heads = ",".join(f"{v:.2f}" for v in r["heads_kept"].values())
    units = ",".join(f"{v:.2f}" for v in r["units_kept"].values())
    line += f"  | val ppl {r['val_perplexity']:.2f}  heads kept {heads}  units kept {units}"
  if r.get("partial"):
    line += " (partial epoch" + (
      f", {r['step'] % batches_per_epoch} of {batches_per_epoch} steps)"
      if batches_per_epoch
      else ")"
    )
  return line


def summary_table(history: list[dict[str, Any]], config: TrainConfig) -> str:
  """The table printed at the end of a run: accuracy, sparsity and steps of its last epoch."""
  if not history:
    return "no epoch ran"
  last = history[-1]
  best = max(history, key=lambda r: r["val_accuracy"])
  rows = [
    ("final validation accuracy", f"{last['val_accuracy']:.4f}"),
    ("best validation accuracy", f"{best['val_accuracy']:.4f} (epoch {best['epoch']})"),
    ("unstructured sparsity", f"{last['unstructured_sparsity']:.4f}"),
    ("group sparsity", f"{last['group_sparsity']:.4f}"),
    ("weighted group sparsity", f"{last['weighted_group_sparsity']:.4f}"),
    ("weight sparsity (kernels)", f"{last['weight_sparsity']:.4f}"),
  ]
  if "on_set_fraction" in last:
    rows.append(("weights on the discrete set", f"{last['on_set_fraction']:.4f}"))
  if "low_rank_level" in last:
    rows.append(("low-rank level", f"{last['low_rank_level']:.4f}"))
  rows.append(
    (
      "epochs / steps",
      f"{last['epoch']}{' (partial)' if last.get('partial') else ''} / {last['step']}",
    )
  )
  skipped = sum(r.get("skipped_steps", 0) for r in history)
  if skipped:
    rows.append(("skipped steps (non-finite)", f"{skipped}"))
  rows.append(("outputs", config.out))
  width = max(len(k) for k, _ in rows)
  lines = ["", "summary", "-" * (width + 30)] + [f"{k.ljust(width)}  {v}" for k, v in rows]
  return "\n".join(lines)


class _NoBar:
  def update(self, n: int) -> None:
    pass

  def close(self) -> None:
    pass


def progress_factory(enabled: bool) -> Callable[..., Any]:
  """``progress(**tqdm_options)``: a tqdm bar, or one that shows nothing (disabled, no tqdm)."""
  if not enabled:
    return lambda **kw: _NoBar()
  try:
    from tqdm.auto import tqdm
  except ImportError:
    return lambda **kw: _NoBar()
  return lambda **kw: tqdm(leave=False, **kw)
