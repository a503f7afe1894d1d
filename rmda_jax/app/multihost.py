"""Multi-process runs: joining the job, agreeing across processes, host copies of global arrays.

A training run over several hosts is the same ``rmda-jax train`` command
started once per process (per host, or per GPU). :func:`initialize` joins
them into one JAX job (``jax.distributed.initialize``): from explicit
settings, from ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` /
``JAX_PROCESS_ID``, or from the cluster JAX detects (a SLURM step, Open MPI,
a Cloud TPU pod slice). Afterwards ``jax.devices()`` lists every process's
devices and one mesh spans them all.

The processes then act as one: every process computes every step on its
shard of the batch, and the decisions that must not differ between them are
taken once and shared. :func:`exchange` gives each process the JSON values
of all (a ``process_allgather`` of their bytes), :func:`on_primary` runs a
step on process 0 alone and raises its error on every process,
:func:`barrier` waits for all. :func:`host_copy` is the whole value of a
global array on every process, also when its shards live on other hosts.

A process that dies is noticed by JAX's coordination service, which stops
the others after ``peer_timeout`` seconds without its heartbeat.

Example (one process: nothing to join, every call is local):
  >>> from rmda_jax.app import multihost
  >>> multihost.initialize("off")
  False
  >>> multihost.exchange({"step": 3})
  [{'step': 3}]
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, Literal, TypeVar

import jax
import numpy as np

MODES = ("auto", "on", "off")

DEFAULT_PEER_TIMEOUT = 60  # seconds without a heartbeat before a process counts as dead

# the environment that says a process is one of several (auto mode); SLURM_STEP_NUM_TASKS is set
# inside an srun step only, not in the batch script that launches it
_TASK_COUNTS = ("JAX_NUM_PROCESSES", "SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")

T = TypeVar("T")


class MultihostError(RuntimeError):
  """The processes of a multi-process run cannot work together (one line)."""


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "").strip()
  try:
    return int(value) if value else None
  except ValueError:
    raise MultihostError(f"${name} must be an integer, not {value!r}") from None


def wanted(
  mode: Literal["auto", "on", "off"] | str,
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> bool:
  """Whether :func:`initialize` joins a multi-process job for these settings.

  ``on``: always; ``off``: never; ``auto``: when a coordinator, a process
  count above 1 or a process id is given (as arguments or by
  ``JAX_COORDINATOR_ADDRESS``), or when a SLURM step or Open MPI runs more
  than one task.
  """
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
  if mode != "auto":
    return mode == "on"
  if coordinator or process_id is not None or (num_processes or 1) > 1:
    return True
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return any((_env_int(name) or 1) > 1 for name in _TASK_COUNTS)


def initialize(
  mode: str = "auto",
  coordinator: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  peer_timeout: int = DEFAULT_PEER_TIMEOUT,
  join_timeout: int = 300,
) -> bool:
  """Join the multi-process job this process is part of; whether it is one.

  Args:
    mode: ``auto`` (join when the settings or the environment name several
      processes, see :func:`wanted`), ``on`` (always; JAX detects the
      cluster when the three settings are not given) or ``off``.
    coordinator: ``HOST:PORT`` of process 0's coordination service (default
      ``$JAX_COORDINATOR_ADDRESS`` or the cluster's).
    num_processes: how many processes (default ``$JAX_NUM_PROCESSES`` or
      the cluster's), >= 1.
    process_id: this process's index in ``[0, num_processes)`` (default
      ``$JAX_PROCESS_ID`` or the cluster's).
    peer_timeout: seconds without a heartbeat after which a process counts as
      dead and the coordination service stops the others, >= 1.
    join_timeout: seconds to wait for every process to join, >= 1.

  Must run before anything asks JAX for its devices. Raises
  :class:`MultihostError` when the settings do not fit or the job cannot be
  joined, with the reason in one line.
  """
  if num_processes is None:
    num_processes = _env_int("JAX_NUM_PROCESSES")
  if process_id is None:
    process_id = _env_int("JAX_PROCESS_ID")
  if not wanted(mode, coordinator, num_processes, process_id):
    return False
  if num_processes is not None and num_processes < 1:
    raise MultihostError(f"--num-processes must be at least 1, not {num_processes}")
  if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
    raise MultihostError(
      f"--process-id must be in [0, {num_processes}) for {num_processes} processes, "
      f"not {process_id}"
    )
  for name, seconds in (("--peer-timeout", peer_timeout), ("join timeout", join_timeout)):
    if seconds < 1:
      raise MultihostError(f"{name} must be at least 1 second, not {seconds}")
  if jax.distributed.is_initialized():
    return jax.process_count() > 1
  try:
    jax.distributed.initialize(
      coordinator_address=coordinator,
      num_processes=num_processes,
      process_id=process_id,
      initialization_timeout=join_timeout,
      heartbeat_timeout_seconds=peer_timeout,
    )
  except (ValueError, TypeError, RuntimeError) as err:
    reason = " ".join(str(err).split())[:300]
    raise MultihostError(
      f"cannot join the multi-process job ({reason}); give --coordinator HOST:PORT, "
      "--num-processes N and --process-id I (or their JAX_* variables), or run inside a SLURM "
      "step, Open MPI or a TPU pod slice"
    ) from None
  return jax.process_count() > 1


def describe_process() -> str:
  """`` (process I/N)`` in a multi-process job (joined by :func:`initialize`), else empty."""
  if not jax.distributed.is_initialized() or jax.process_count() == 1:
    return ""
  return f" (process {jax.process_index()}/{jax.process_count()})"


def count() -> int:
  """How many processes run the job (1 without :func:`initialize`)."""
  return jax.process_count()


def index() -> int:
  """This process's index (0 for the only process)."""
  return jax.process_index()


def is_primary() -> bool:
  """Whether this process is process 0: the one that writes the run's own files and logs."""
  return jax.process_index() == 0


def exchange(value: Any) -> list[Any]:
  """Every process's JSON-able ``value``, in process order (a collective: all must call it)."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils

  data = np.frombuffer(json.dumps(value, sort_keys=True).encode(), np.uint8)
  sizes = multihost_utils.process_allgather(np.asarray([data.size], np.int32))
  padded = np.zeros(int(np.max(sizes)), np.uint8)
  padded[: data.size] = data
  gathered = np.asarray(multihost_utils.process_allgather(padded))
  return [
    json.loads(gathered[i, : int(sizes[i][0])].tobytes().decode()) for i in range(len(gathered))
  ]


def barrier(name: str) -> None:
  """Wait until every process has reached the barrier ``name``."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _attempt(
  step: Callable[[], T], errors: tuple[type[Exception], ...]
) -> tuple[T | None, BaseException | None, dict[str, Any]]:
  """``(result, error, outcome)`` of ``step``; ``outcome`` describes the error for the others."""
  try:
    return step(), None, {}
  except errors as err:
    return None, err, {"kind": type(err).__name__, "message": str(err)}
  except OSError as err:
    outcome = {"kind": "OSError", "errno": err.errno, "message": err.strerror or str(err)}
    return None, err, {**outcome, "filename": err.filename}
  except Exception as err:  # anything else: the others stop too, saying where it came from
    reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    return None, err, {"kind": "MultihostError", "message": f"failed ({reason})"}


def _raise_shared(outcome: dict[str, Any], errors: tuple[type[Exception], ...], prefix: str):
  if outcome["kind"] == "OSError":
    raise OSError(outcome["errno"], prefix + outcome["message"], outcome["filename"])
  kind = next((e for e in errors if e.__name__ == outcome["kind"]), MultihostError)
  raise kind(prefix + outcome["message"])


def on_primary(step: Callable[[], T], errors: tuple[type[Exception], ...] = ()) -> T | None:
  """Run ``step`` on process 0 alone; its result there, None elsewhere (a collective).

  When ``step`` raises one of ``errors`` (classes built from one message) or
  an ``OSError``, every process raises it, so that all stop together with
  the same words; any other exception stops the others with a
  :class:`MultihostError`. The other processes wait until ``step`` is done.
  """
  if jax.process_count() == 1:
    return step()
  result, error, outcome = _attempt(step, errors) if is_primary() else (None, None, {})
  shared = exchange(outcome)[0]
  if error is not None:
    raise error
  if shared:
    _raise_shared(shared, errors, "")
  return result


def on_every(step: Callable[[], T], errors: tuple[type[Exception], ...] = ()) -> T:
  """Run ``step`` on every process; when it fails on one, every process raises (a collective).

  A process whose own ``step`` failed raises its error; the others raise the
  first failing process's, naming it (as :func:`on_primary` does).
  """
  if jax.process_count() == 1:
    return step()
  result, error, outcome = _attempt(step, errors)
  outcomes = exchange(outcome)
  if error is not None:
    raise error
  for i, shared in enumerate(outcomes):
    if shared:
      _raise_shared(shared, errors, f"on process {i}: ")
  return result  # pyright: ignore[reportReturnType]  (no process failed: step returned)


def check_agree(values: list[Any], what: str) -> None:
  """Raise MultihostError when the processes' ``values`` (from :func:`exchange`) differ."""
  differing = [i for i, v in enumerate(values) if v != values[0]]
  if differing:
    raise MultihostError(
      f"process{'es' if len(differing) > 1 else ''} {', '.join(map(str, differing))} "
      f"{'have' if len(differing) > 1 else 'has'} other {what} than process 0"
    )


def host_copy(x: Any) -> np.ndarray:
  """The whole value of ``x`` on this process (a collective when ``x`` has shards elsewhere)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(jax.device_get(x))


def host_tree(tree: Any) -> Any:
  """:func:`host_copy` of every leaf (every process must call it, in the same order)."""
  return jax.tree_util.tree_map(host_copy, tree)
