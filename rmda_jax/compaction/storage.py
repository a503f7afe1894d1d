"""Writing a compact library model to disk and reading it back without the original.

``path/model.json`` holds the model's class and fields, what was kept and the
ranks of factorized kernels; ``path/params`` (and ``path/collections``) the
arrays, with orbax.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np

from rmda_jax.compaction.modules import Compacted
from rmda_jax.core.extras import optional_import


def _to_tuple(value: Any) -> Any:
  return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def save(path: str, compacted: Compacted) -> None:
  """Write a compact library model so that :func:`load` rebuilds it without the original.

  ``path/model.json`` holds the class and fields, ``path/params`` the arrays (orbax).
  """
  ocp = optional_import("orbax.checkpoint", "saving a compact model")
  model = compacted.model
  fields = {
    f.name: getattr(model, f.name)
    for f in dataclasses.fields(model)
    if f.name not in ("parent", "name") and not f.name.startswith("_")
  }
  os.makedirs(path, exist_ok=True)
  with ocp.StandardCheckpointer() as writer:
    writer.save(os.path.join(os.path.abspath(path), "params"), compacted.params, force=True)
    if compacted.collections:
      writer.save(
        os.path.join(os.path.abspath(path), "collections"), compacted.collections, force=True
      )
    writer.wait_until_finished()
  with open(os.path.join(path, "model.json"), "w") as f:
    json.dump(
      {
        "class": type(model).__name__,
        "fields": fields,
        "kept": {k: np.asarray(v).tolist() for k, v in compacted.kept.items()},
        "ranks": compacted.ranks,
      },
      f,
      indent=2,
    )


def load(path: str, classes: tuple = ()) -> Compacted:
  """The compact model written by :func:`save` (or ``rmda-jax compact --out``).

  ``classes``: the module classes it may be, e.g. ``rmda_jax.app.models.ZOO``
  for a run of ``rmda-jax compact``, or a module class of your own.
  """
  config = os.path.join(path, "model.json")
  if not os.path.isfile(config):
    raise ValueError(
      f"{path} holds no compact model "
      "(no model.json; write one with rmda-jax compact RUN --out DIR)."
    )
  with open(config) as f:
    spec = json.load(f)
  known = {c.__name__: c for c in classes}
  cls = known.get(spec.get("class"))
  if cls is None:
    raise ValueError(
      f"{config}: model class {spec.get('class')!r} is not among classes= "
      f"({', '.join(known) or 'none given'}); pass it, e.g. classes=rmda_jax.app.models.ZOO or "
      "classes=(MyModule,)."
    )
  model = cls(**{k: _to_tuple(v) for k, v in spec["fields"].items()})
  ocp = optional_import("orbax.checkpoint", "loading a compact model")
  with ocp.StandardCheckpointer() as reader:  # the saved shapes are the compact ones: no template
    params = reader.restore(os.path.join(os.path.abspath(path), "params"))
    collections_dir = os.path.join(os.path.abspath(path), "collections")
    collections = reader.restore(collections_dir) if os.path.isdir(collections_dir) else {}
  kept = {k: np.asarray(v) for k, v in spec.get("kept", {}).items()}
  return Compacted(model, params, kept, spec.get("ranks", {}), collections)
