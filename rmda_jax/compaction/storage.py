"""Writing a compact library model to disk and reading it back without the original.

``path/model.json`` holds the model's class and fields, what was kept, the
ranks of factorized kernels and the SHA-256 of every array file;
``path/params`` (and ``path/collections``) the arrays, with orbax. The arrays
are written under temporary names and renamed into place, and ``model.json``
is written last (atomically): it is the commit, so an interrupted or failed
save leaves no model to load, never a mix of two saves' files. :func:`load`
checks every file against ``model.json`` before it reads one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any

import numpy as np

from rmda_jax.compaction.modules import Compacted
from rmda_jax.core import files
from rmda_jax.core.extras import optional_import

FORMAT = 1

# what save writes into path (model.json last)
ARRAY_DIRS = ("params", "collections")


class DamagedModelError(ValueError):
  """A compact model on disk is incomplete, unreadable or does not match its checksums."""


def _to_tuple(value: Any) -> Any:
  return tuple(_to_tuple(v) for v in value) if isinstance(value, list) else value


def holds_model(path: str) -> bool:
  """Whether ``path`` holds (part of) a compact model (``model.json``, ``params``, ...)."""
  return any(os.path.lexists(os.path.join(path, name)) for name in ("model.json", *ARRAY_DIRS))


def save(path: str, compacted: Compacted, overwrite: bool = False) -> None:
  """Write a compact library model so that :func:`load` rebuilds it without the original.

  ``path/model.json`` holds the class, fields and checksums, ``path/params``
  the arrays (orbax). Other files in ``path`` are left alone.

  Args:
    path: the directory (created if needed).
    compacted: what :func:`~rmda_jax.compaction.compact` returned.
    overwrite: replace a compact model already in ``path`` (its files are
      removed first); without it, one there is an error.

  Raises:
    FileExistsError: ``path`` holds a compact model and not ``overwrite``.
    OSError: a write failed (its errno says why); ``path`` then holds no
      loadable model, and the temporary files are removed.
  """
  ocp = optional_import("orbax.checkpoint", "saving a compact model")
  path = os.path.abspath(path)
  if holds_model(path) and not overwrite:
    raise FileExistsError(
      f"{path} already holds a compact model (model.json, params/); pass overwrite=True "
      "(rmda-jax compact --overwrite) to replace it"
    )
  model = compacted.model
  fields = {
    f.name: getattr(model, f.name)
    for f in dataclasses.fields(model)
    if f.name not in ("parent", "name") and not f.name.startswith("_")
  }
  trees = {"params": compacted.params}
  if compacted.collections:
    trees["collections"] = compacted.collections
  tmp = {name: os.path.join(path, f".{name}.tmp-{os.getpid()}") for name in trees}
  try:
    os.makedirs(path, exist_ok=True)
    for name in ("model.json", *ARRAY_DIRS):  # the commit (model.json) goes first
      files.remove(os.path.join(path, name))
    with ocp.StandardCheckpointer() as writer:
      for name, tree in trees.items():
        writer.save(tmp[name], tree, force=True)
      writer.wait_until_finished()
    manifest = {}
    for name in trees:
      os.replace(tmp[name], os.path.join(path, name))
      manifest.update(
        {f"{name}/{k}": v for k, v in files.checksums(os.path.join(path, name)).items()}
      )
    files.write_json(
      os.path.join(path, "model.json"),
      {
        "format": FORMAT,
        "class": type(model).__name__,
        "fields": fields,
        "kept": {k: np.asarray(v).tolist() for k, v in compacted.kept.items()},
        "ranks": compacted.ranks,
        "files": manifest,
      },
    )
  except Exception as err:  # orbax reports a failed write as a ValueError carrying the errno
    for name in trees:
      with contextlib.suppress(OSError):
        files.remove(tmp[name])
    if isinstance(err, OSError) and err.filename:
      raise
    raise files.as_os_error(err, path) from None


def load(path: str, classes: tuple = ()) -> Compacted:
  """The compact model written by :func:`save` (or ``rmda-jax compact --out``).

  ``classes``: the module classes it may be, e.g. ``rmda_jax.app.models.ZOO``
  for a run of ``rmda-jax compact``, or a module class of your own.

  Raises:
    ValueError: ``path`` holds no compact model, or one of a class not in ``classes``.
    DamagedModelError: ``model.json`` is unreadable, or a file is missing or
      does not match its checksum.
  """
  config = os.path.join(path, "model.json")
  if not os.path.isfile(config):
    raise ValueError(
      f"{path} holds no compact model "
      "(no model.json; write one with rmda-jax compact RUN --out DIR)."
    )
  try:
    with open(config) as f:
      spec = json.load(f)
    if not isinstance(spec, dict):
      raise ValueError("not a JSON object")
  except (OSError, ValueError) as err:
    raise DamagedModelError(f"{config} is unreadable ({err}); write the model again") from None
  if spec.get("format") != FORMAT or not isinstance(spec.get("files"), dict):
    raise DamagedModelError(
      f"{config} has no checksums of its arrays (not written by this version's "
      "rmda_jax.compaction.save); write the model again with rmda-jax compact --out"
    )
  problem = files.first_mismatch(path, spec["files"])
  if problem is not None:
    raise DamagedModelError(f"the compact model in {path} is damaged: {problem}")
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
  try:
    with ocp.StandardCheckpointer() as reader:  # the saved shapes are the compact ones
      params = reader.restore(os.path.join(os.path.abspath(path), "params"))
      collections_dir = os.path.join(os.path.abspath(path), "collections")
      collections = reader.restore(collections_dir) if os.path.isdir(collections_dir) else {}
  except Exception as err:  # TensorStore / OCDBT errors of any kind: the files do not restore
    first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    raise DamagedModelError(f"the compact model in {path} does not restore ({first})") from None
  kept = {k: np.asarray(v) for k, v in spec.get("kept", {}).items()}
  return Compacted(model, params, kept, spec.get("ranks", {}), collections)
