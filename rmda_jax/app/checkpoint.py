"""Save and restore params and optimizer state with orbax-checkpoint (optional extra).

Optimizer states are NamedTuples of arrays, so they are ordinary pytrees: a
restore into a template of the same structure (e.g. ``tx.init(params)``) gives
back the exact arrays, and training resumes bit for bit.

Two levels:

* :func:`save` / :func:`restore`: one pytree in one directory.
* :class:`Steps`: a directory of step-numbered checkpoints, each a pytree plus
  a JSON record. A step is written under a temporary name and renamed when
  complete (orbax's ``CheckpointManager``), so an interrupt at any moment
  leaves the previous steps intact; the newest ``max_to_keep`` are kept, an
  older step being renamed out of the listing (into ``.rotated/``) before it
  is deleted, so that a reader never sees a step half deleted. The record
  stores the SHA-256 of every leaf and of itself, and :meth:`Steps.restore`
  checks them: a damaged step raises :class:`CheckpointError` instead of
  restoring wrong numbers. A write that fails (a full disk, a read-only file
  system) raises :class:`CheckpointWriteError`, an ``OSError`` with the
  errno, after removing what it had written: the older steps stay as they were.

Example:
  >>> import jax.numpy as jnp, tempfile, os, rmda_jax
  >>> from rmda_jax.app import checkpoint
  >>> params = {"w": jnp.ones((2, 2))}
  >>> tx = rmda_jax.rmda(0.1)
  >>> state = tx.init(params)
  >>> path = os.path.join(tempfile.mkdtemp(), "ckpt")
  >>> checkpoint.save(path, {"params": params, "opt_state": state})
  >>> restored = checkpoint.restore(path, {"params": params, "opt_state": tx.init(params)})
  >>> bool((restored["params"]["w"] == 1).all())
  True
  >>> with checkpoint.Steps(os.path.join(tempfile.mkdtemp(), "steps")) as steps:
  ...   steps.save(7, {"params": params}, {"epoch": 1})
  ...   tree, record = steps.restore(7, {"params": params})
  ...   steps.steps(), record["epoch"]
  ([7], 1)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import jax
import numpy as np

from rmda_jax.app import multihost
from rmda_jax.core import files
from rmda_jax.core.extras import optional_import

TMP_MARKER = ".orbax-checkpoint-tmp"
MANIFEST = "files.sha256.json"  # in each step directory, written once the step is complete
ROTATED = ".rotated"  # steps past max_to_keep are renamed here, then deleted


class CheckpointError(RuntimeError):
  """A checkpoint step cannot be used: unreadable, incomplete, or not matching its checksums."""


class CheckpointWriteError(OSError):
  """A step could not be written (``errno`` and ``filename`` say why and where)."""


def _write_error(err: BaseException, path: str) -> CheckpointWriteError:
  os_error = files.as_os_error(err, path)
  return CheckpointWriteError(os_error.errno, os_error.strerror, path)


class _AbandonedWrites(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    return "exception was never retrieved" not in record.getMessage()


def _without_closed_loop_reports(previous: Any) -> Any:
  """``sys.unraisablehook`` ``previous`` less "Event loop is closed" (see :func:`_quiet_orbax`)."""

  def hook(unraisable: Any) -> None:
    if not (
      isinstance(unraisable.exc_value, RuntimeError)
      and "Event loop is closed" in str(unraisable.exc_value)
    ):
      previous(unraisable)

  return hook


_abandoned_writes_muted = False


def _mute_abandoned_writes() -> None:
  """Keep dropping what the writes of a failed save report after it was given up.

  The other writes of that save finish on TensorStore's threads after orbax's
  event loop is closed, also after the save has returned: their callbacks
  raise "Event loop is closed" (as unraisable exceptions), and their futures
  log "exception was never retrieved" when collected. The failure itself was
  raised as :class:`CheckpointWriteError`; these reports would bury it in
  tracebacks.
  """
  global _abandoned_writes_muted
  if _abandoned_writes_muted:
    return
  _abandoned_writes_muted = True
  logging.getLogger("asyncio").addFilter(_AbandonedWrites())
  warnings.filterwarnings(
    "ignore", message="coroutine .* was never awaited", category=RuntimeWarning
  )
  sys.unraisablehook = _without_closed_loop_reports(sys.unraisablehook)


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
  """Silence the tracebacks of a failing write that orbax reports besides raising it.

  Orbax logs them through absl; the writes running beside the failed one
  report "Event loop is closed" as unraisable exceptions, some while the save
  is still under way (:func:`_mute_abandoned_writes` covers those after it).
  """
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  hook = sys.unraisablehook
  sys.unraisablehook = _without_closed_loop_reports(hook)
  try:
    yield
  finally:
    logger.setLevel(level)
    if not _abandoned_writes_muted:
      sys.unraisablehook = hook


def _orbax() -> Any:
  return optional_import("orbax.checkpoint", "checkpointing")


def save(path: str, tree: Any, overwrite: bool = True) -> None:
  """Write ``tree`` (params, optimizer state, counters...) to the directory ``path``."""
  ocp = _orbax()
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, tree, force=overwrite)
    ckptr.wait_until_finished()


def restore(path: str, template: Any) -> Any:
  """Read the tree at ``path`` into the structure, shapes and dtypes of ``template``.

  ``template`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves (with
  shardings, to restore sharded); a NamedTuple optimizer state in it comes
  back as the same NamedTuple.
  """
  ocp = _orbax()
  path = os.path.abspath(path)

  abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, abstract)


def _leaf_name(path: tuple[Any, ...]) -> str:
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def tree_checksums(tree: Any) -> dict[str, str]:
  """SHA-256 of each leaf's dtype, shape and bytes, keyed by path (``params/Dense_0/kernel``).

  A leaf with shards on other processes is gathered first (every process of a
  multi-process run must call this, on the same tree).
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    array = np.ascontiguousarray(multihost.host_copy(leaf))
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    out[_leaf_name(path)] = digest.hexdigest()
  return out


def _json_digest(body: Any) -> str:
  text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True)
  return hashlib.sha256(text.encode()).hexdigest()


def _reason(err: BaseException) -> str:
  """An exception as one short line (orbax and TensorStore errors span many lines)."""
  lines = [line.strip() for line in str(err).splitlines() if line.strip()]
  text = lines[0].split(" See full TensorStore details")[0] if lines else ""
  if len(text) > 160:
    text = text[:157] + "..."
  name = type(err).__name__
  return text if name == "Exception" and text else f"{name}: {text}" if text else name


class Steps:
  """Step-numbered checkpoints in one directory, each committed atomically and verified on restore.

  Args:
    path: the directory (created on the first save unless ``read_only``).
    max_to_keep: how many of the newest steps to keep.
    read_only: only list and restore (no cleanup, no directory creation).
  """

  def __init__(self, path: str, max_to_keep: int = 2, read_only: bool = False):
    ocp = _orbax()
    self.path = os.path.abspath(path)
    self.read_only = read_only
    if not read_only:
      multihost.on_primary(self._remove_unfinished)
    # (orbax's own read_only mode only adds warnings: nothing here writes unless save is called)
    options = ocp.CheckpointManagerOptions(
      enable_async_checkpointing=False,
      create=not read_only,
      lightweight_initialize=True,
      save_root_metadata=False,
      preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
      todelete_subdir=None if read_only else ROTATED,
    )
    self._manager = ocp.CheckpointManager(
      self.path, options=options, item_names=("state", "record")
    )

  def _remove_unfinished(self) -> None:
    """Delete what an interrupted save left (orbax's temporary step directories)."""
    if not os.path.isdir(self.path):
      return
    for name in os.listdir(self.path):
      if TMP_MARKER in name or name == ROTATED:
        shutil.rmtree(os.path.join(self.path, name), ignore_errors=True)

  def __enter__(self) -> Steps:
    return self

  def __exit__(self, *exc: object) -> Literal[False]:
    self.close()
    return False

  def close(self) -> None:
    self._manager.close()

  def steps(self) -> list[int]:
    """The complete steps, newest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps(), reverse=True)

  def step_dir(self, step: int) -> str:
    """The directory of ``step``."""
    return os.path.join(self.path, str(step))

  def save(self, step: int, tree: Any, record: dict[str, Any]) -> None:
    """Write ``tree`` and the JSON-able ``record`` (plus checksums) as ``step``.

    The step becomes visible only when it is complete.
    """
    ocp = _orbax()
    if self.read_only:
      raise ValueError(f"{self.path} was opened read-only")
    body = dict(record, checksums=tree_checksums(tree))
    envelope = {"body": body, "sha256": _json_digest(body)}
    with _quiet_orbax():
      try:
        self._manager.save(
          step,
          args=ocp.args.Composite(
            state=ocp.args.StandardSave(tree), record=ocp.args.JsonSave(envelope)
          ),
          force=True,
        )
        self._manager.wait_until_finished()
      except Exception as err:  # TensorStore reports OS errors as ValueError with the errno inside
        _mute_abandoned_writes()
        if multihost.is_primary():
          self._remove_unfinished()
        raise _write_error(err, self.step_dir(step)) from None
    multihost.on_primary(lambda: self._write_manifest(step))

  def _write_manifest(self, step: int) -> None:
    """Write the file checksums of the complete ``step`` (process 0 of a multi-process run).

    They let a restore find damage before orbax reads the step (a step
    without them is checked leaf by leaf).
    """
    manifest = os.path.join(self.step_dir(step), MANIFEST)
    try:
      with open(manifest + ".tmp", "w") as f:
        json.dump(files.checksums(self.step_dir(step), skip=(MANIFEST,)), f)
        f.flush()
        os.fsync(f.fileno())
      os.replace(manifest + ".tmp", manifest)
    except OSError as err:
      with contextlib.suppress(OSError):
        os.remove(manifest + ".tmp")
      raise _write_error(err, manifest) from None
    shutil.rmtree(os.path.join(self.path, ROTATED), ignore_errors=True)

  def verify_files(self, step: int) -> None:
    """Check the files of ``step`` against its manifest.

    A step saved without a manifest is checked per leaf only (by :meth:`restore`).
    """
    root = self.step_dir(step)
    try:
      with open(os.path.join(root, MANIFEST)) as f:
        expected = json.load(f)
    except (OSError, ValueError):
      return
    if not isinstance(expected, dict):
      return
    problem = files.first_mismatch(root, expected)
    if problem is not None:
      raise CheckpointError(problem)

  def read_record(self, step: int) -> dict[str, Any]:
    """The JSON record of ``step``, checked against its own checksum."""
    ocp = _orbax()
    try:
      envelope = self._manager.restore(
        step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
      )["record"]
    except Exception as err:  # orbax/JSON errors of any kind mean the same: unusable
      raise CheckpointError(f"its record is unreadable: {_reason(err)}") from None
    if not (
      isinstance(envelope, dict)
      and isinstance(envelope.get("body"), dict)
      and envelope.get("sha256") == _json_digest(envelope["body"])
    ):
      raise CheckpointError("its record does not match its checksum")
    return envelope["body"]

  def restore(self, step: int, template: Any) -> tuple[Any, dict[str, Any]]:
    """``(tree, record)`` of ``step``, with every leaf checked against its stored SHA-256.

    Raises:
      CheckpointError: the step is unreadable, does not fit ``template``, or a
        leaf does not match its checksum.
    """
    ocp = _orbax()
    # one process reads every file of the step; the others learn what it found
    multihost.on_primary(lambda: self.verify_files(step), (CheckpointError,))
    record = self.read_record(step)
    expected = record.get("checksums")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    try:
      tree = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )["state"]
    except (
      Exception
    ) as err:  # TensorStore, OCDBT, JSON, shape errors: all mean the step is unusable
      raise CheckpointError(f"its arrays are unreadable: {_reason(err)}") from None
    got = tree_checksums(tree)
    if not isinstance(expected, dict) or set(expected) != set(got):
      raise CheckpointError("its arrays do not match the stored list of checksums")
    for name, digest in got.items():
      if expected[name] != digest:
        raise CheckpointError(f"{name} does not match its checksum")
    return tree, record

  def set_aside(self, step: int, destination: str) -> None:
    """Move a (damaged) step out of the directory, to ``destination``."""
    if self.read_only:
      raise ValueError(f"{self.path} was opened read-only")

    def move() -> None:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      os.replace(self.step_dir(step), destination)

    multihost.on_primary(move)
    self._manager.reload()
