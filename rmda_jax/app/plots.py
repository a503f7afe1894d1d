"""Figures of a training run (matplotlib, optional): curves and surviving groups.

Every function saves the figure to ``path`` when one is given, and returns it
otherwise (a notebook displays it). In a process that has not imported
``matplotlib.pyplot`` yet (scripts, the command line) the non-interactive Agg
backend is selected, so no display is needed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
import optax

from rmda_jax.prox import Regularizer
from rmda_jax.structure import metrics

if TYPE_CHECKING:
  from matplotlib.figure import Figure


def _pyplot() -> ModuleType:
  try:
    import matplotlib
  except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("plots need matplotlib: pip install 'rmda-jax[examples]'") from err
  if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def _finish(plt: ModuleType, fig: Figure, path: str | None) -> Figure | None:
  """Save and return None, or return the figure.

  The figure is closed either way, so that interactive backends do not show
  it a second time.
  """
  fig.tight_layout()
  if path is not None:
    fig.savefig(path, dpi=100)
  plt.close(fig)
  return None if path is not None else fig


def curves(
  history: list[dict[str, Any]], path: str | None = None, title: str = ""
) -> Figure | None:
  """Accuracy (left) and sparsity (right) against epochs, like the papers' figures."""
  plt = _pyplot()
  epochs = [r["epoch"] for r in history]
  fig, (acc, sp) = plt.subplots(1, 2, figsize=(11, 4))
  acc.plot(epochs, [r["train_accuracy"] for r in history], label="train")
  acc.plot(epochs, [r["val_accuracy"] for r in history], label="validation")
  if history and "structured_val_accuracy" in history[0]:
    acc.plot(epochs, [r["structured_val_accuracy"] for r in history], "--", label="validation (z)")
  acc.set_xlabel("epoch")
  acc.set_ylabel("accuracy")
  acc.legend()
  acc.grid(alpha=0.3)
  for key, label in [
    ("group_sparsity", "group sparsity"),
    ("weighted_group_sparsity", "weighted group sparsity"),
    ("unstructured_sparsity", "unstructured sparsity"),
    ("low_rank_level", "low-rank level"),
    ("structured_group_sparsity", "group sparsity (z)"),
  ]:
    if history and key in history[0]:
      sp.plot(
        epochs,
        [r[key] for r in history],
        "--" if key.startswith("structured") else "-",
        label=label,
      )
  sp.set_xlabel("epoch")
  sp.set_ylabel("sparsity")
  sp.set_ylim(-0.02, 1.02)
  sp.legend()
  sp.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return _finish(plt, fig, path)


def comparison(
  histories: dict[str, list[dict[str, Any]]],
  key: str,
  path: str | None = None,
  ylabel: str = "",
  title: str = "",
) -> Figure | None:
  """One curve per method (e.g. group sparsity vs epoch for every optimizer)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for name, history in histories.items():
    ax.plot([r["epoch"] for r in history], [r[key] for r in history], label=name)
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend()
  if title:
    ax.set_title(title)
  return _finish(plt, fig, path)


def _grid(mask: np.ndarray) -> np.ndarray:
  n = mask.size
  cols = math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  out = np.full(rows * cols, np.nan)
  out[:n] = mask
  return out.reshape(rows, cols)


def surviving_groups(
  params: optax.Params,
  regularizer: Regularizer | None,
  input_shape: Sequence[int],
  path: str | None = None,
) -> Figure | None:
  """Which groups survived, one panel per regularized leaf or family of coupled groups.

  A Dense layer fed by the flattened input is drawn as the input image (kept
  pixels in colour); other layers as a grid of their groups (input channels
  of a conv layer, input neurons of a Dense layer).
  """
  plt = _pyplot()
  placement = metrics.counted_groups(params, regularizer)
  n = max(len(placement.terms), 1)
  fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.8), squeeze=False)
  pixels = int(np.prod(input_shape))
  for ax, term in zip(axes[0], placement.terms):
    paths = placement.gather(placement.paths, term)
    name = paths[0] if len(paths) == 1 else f"{paths[0]} +{len(paths) - 1}"
    leaves = [jnp.asarray(x) for x in placement.gather(placement.leaves, term)]
    kept = np.asarray(metrics.nonzero_groups(leaves, term.rule)).reshape(-1).astype(float)
    if kept.size == pixels and len(input_shape) == 3:
      image = kept.reshape(input_shape).max(axis=-1)
      ax.imshow(image, cmap="viridis", vmin=0, vmax=1)
      what = "input pixels"
    elif kept.size == pixels and len(input_shape) == 1 and math.isqrt(pixels) ** 2 == pixels:
      side = math.isqrt(pixels)
      ax.imshow(kept.reshape(side, side), cmap="viridis", vmin=0, vmax=1)
      what = "input features"
    else:
      ax.imshow(_grid(kept), cmap="viridis", vmin=0, vmax=1)
      what = "groups"
    ax.set_title(f"{name}\n{int(kept.sum())}/{kept.size} {what} kept", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  if not placement.terms:
    axes[0][0].text(0.5, 0.5, "no regularized groups", ha="center", va="center")
    axes[0][0].axis("off")
  return _finish(plt, fig, path)


def kept_heatmap(
  history: list[dict[str, Any]],
  key: str = "heads_kept",
  path: str | None = None,
  title: str = "",
) -> Figure | None:
  """A heat map of the units kept per layer (rows) by epoch (columns).

  ``history[i][key]`` maps a layer name to the fraction of its units (heads,
  or hidden units with ``key="units_kept"``) that are not exactly zero.
  """
  plt = _pyplot()
  layers = sorted(
    {name for record in history for name in record.get(key, {})}, key=lambda n: (len(n), n)
  )
  epochs = [r["epoch"] for r in history]
  grid = (
    np.array([[r.get(key, {}).get(name, np.nan) for r in history] for name in layers])
    if layers
    else np.zeros((1, max(len(history), 1)))
  )
  fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(epochs) + 2), 0.5 * max(len(layers), 1) + 1.5))
  image = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
  ax.set_yticks(range(len(layers)))
  ax.set_yticklabels(layers, fontsize=8)
  step = max(1, len(epochs) // 10)
  ax.set_xticks(range(0, len(epochs), step))
  ax.set_xticklabels([str(e) for e in epochs[::step]], fontsize=8)
  ax.set_xlabel("epoch")
  fig.colorbar(image, ax=ax, label=f"fraction of {key.split('_')[0]} kept")
  ax.set_title(title or key.replace("_", " "), fontsize=9)
  return _finish(plt, fig, path)
