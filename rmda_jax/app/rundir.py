"""Owning a run directory: an OS-level lock per directory, and I/O faults as one line.

A process that writes a run (``rmda-jax train``, also with ``--resume`` or
``--overwrite``) holds :class:`RunLock` on ``OUT/.rmda-jax.lock`` from before
it looks at what ``OUT`` holds until it exits. The lock is ``flock(2)``'s
exclusive lock on an open file: the kernel releases it when the process ends
in any way (an exception, a signal, ``kill -9``, a crash), so a lock left by a
killed process is never in the way, and a second writer is refused at once
with the holder's pid, host and command (written into the file by the holder).
Readers (``rmda-jax compact``, ``generate``) take no lock: they read only
complete, committed checkpoint steps (:mod:`rmda_jax.app.checkpoint`).

The lock file stays in place when released: deleting it would let a process
that opened it before the deletion lock a file that a process starting after
the deletion does not see. :meth:`RunLock.still_held` tells whether the directory the run writes to
is still the one it locked (it is not when ``OUT`` was deleted or moved away
during the run).

:func:`describe_os_error` turns an ``OSError`` into the words of one line:
what failed, on which path, and what to do.

Example:
  >>> import tempfile
  >>> from rmda_jax.app import rundir
  >>> out = tempfile.mkdtemp()
  >>> with rundir.RunLock(out, "--out") as lock:
  ...   try:
  ...     rundir.RunLock(out, "--out").acquire()
  ...   except rundir.RunDirError as err:
  ...     print("refused:", "is in use by another rmda-jax process" in str(err))
  refused: True
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import socket
import sys
import time
from typing import Literal

from rmda_jax.app import multihost

LOCK_NAME = ".rmda-jax.lock"

SHARED_PROBE = ".rmda-jax-shared-probe.json"  # written by process 0, read by the others


class RunDirError(RuntimeError):
  """A run directory cannot be used: locked by another process, not writable, gone."""


def _flock(fd: int) -> bool:
  """Take the exclusive lock of ``fd`` without waiting; whether it was free."""
  if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    try:
      msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # pyright: ignore[reportAttributeAccessIssue]
    except OSError:
      return False
    return True
  import fcntl

  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  return True


def _unlock(fd: int) -> None:
  if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    os.lseek(fd, 0, os.SEEK_SET)
    msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # pyright: ignore[reportAttributeAccessIssue]
    return
  import fcntl

  fcntl.flock(fd, fcntl.LOCK_UN)


def _holder_text(path: str) -> str:
  """Who holds the lock at ``path``, from what the holder wrote there (or ``unknown``)."""
  try:
    with open(path) as f:
      holder = json.load(f)
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started"])))
    return f"pid {int(holder['pid'])} on {holder['host']}, since {started}: {holder['command']}"
  except (OSError, ValueError, KeyError, TypeError):
    return "a process that has not yet written its pid"


def _command_line() -> str:
  """This process's command, ``rmda-jax ...`` when it is the command line's (else the program)."""
  program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
  if program in ("__main__.py", "rmda-jax", "cli.py"):
    program = "rmda-jax"
  return " ".join([program, *sys.argv[1:]])[:300]


class RunLock:
  """The exclusive lock of one run directory, held by one process at a time.

  Args:
    directory: the run directory (it must exist).
    flag: the option that named it, for messages (``"--out"``).

  Raises (from :meth:`acquire`):
    RunDirError: another process holds the lock (the message names it), or
      the directory cannot be written (read-only, no permission, gone).
  """

  def __init__(self, directory: str, flag: str = "--out"):
    self.directory = directory
    self.flag = flag
    self.path = os.path.join(directory, LOCK_NAME)
    self._fd: int | None = None

  def acquire(self) -> RunLock:
    """Take the lock or raise :class:`RunDirError`; writes this process's pid into the file."""
    try:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
      raise RunDirError(
        f"{self.flag} {self.directory}: {describe_os_error(err, self.directory)}"
      ) from None
    if not _flock(fd):
      os.close(fd)
      raise RunDirError(
        f"{self.flag} {self.directory} is in use by another rmda-jax process "
        f"({_holder_text(self.path)}); wait for it to end, stop it, or use another {self.flag}"
      )
    holder = {
      "pid": os.getpid(),
      "host": socket.gethostname(),
      "started": time.time(),
      "command": _command_line(),
    }
    try:
      os.ftruncate(fd, 0)
      os.pwrite(fd, json.dumps(holder).encode(), 0)
    except OSError as err:
      _unlock(fd)
      os.close(fd)
      raise RunDirError(
        f"{self.flag} {self.directory}: {describe_os_error(err, self.directory)}"
      ) from None
    self._fd = fd
    return self

  def still_held(self) -> bool:
    """Whether the lock file in the directory is still the file this lock holds.

    False when the directory (or the file) was deleted, moved or replaced since
    :meth:`acquire`: then nothing more should be written there.
    """
    if self._fd is None:
      return False
    try:
      now, held = os.stat(self.path), os.fstat(self._fd)
    except OSError:
      return False
    return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

  def release(self) -> None:
    """Give the lock up (the file stays). Idempotent."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      _unlock(fd)
    finally:
      os.close(fd)

  def __enter__(self) -> RunLock:
    return self.acquire() if self._fd is None else self

  def __exit__(self, *exc: object) -> Literal[False]:
    self.release()
    return False


# what to do about each kind of fault, appended to its description
_ADVICE = {
  errno.ENOSPC: "free space on that file system",
  errno.EDQUOT: "free space within your quota",
  errno.EACCES: "make it writable or choose another directory",
  errno.EPERM: "make it writable or choose another directory",
  errno.EROFS: "the file system is mounted read-only: choose another directory",
  errno.ENOENT: "it was removed or moved while in use",
  errno.EFBIG: "the file size limit (ulimit -f) was reached",
  errno.EIO: "the device reported an I/O error: check it",
  errno.EPIPE: "the program reading the output ended first",
}


def describe_os_error(err: OSError, path: str | None = None) -> str:
  """``err`` in words for one line: ``cannot write PATH (No space left on device): free space``.

  ``path`` is named when given (else the error's own file name, if any).
  """
  code = err.errno
  reason = os.strerror(code) if code is not None else (err.strerror or str(err))
  reason = " ".join(str(reason).split())[:200]
  where = path or err.filename
  what = f"cannot write {where}" if where else "an I/O operation failed"
  advice = _ADVICE.get(code) if code is not None else None
  return f"{what} ({reason})" + (f": {advice}" if advice else "")


def check_shared(directory: str, flag: str) -> None:
  """Check that every process of a multi-process run sees the same ``directory``.

  Process 0 writes a file with a random token there, every process reads it
  back: a process that does not find the token writes to storage of its own
  (a local disk, another mount), where the run's shards and files would never
  meet. A collective; nothing to check with one process.

  Raises:
    RunDirError: naming ``flag``, the directory and the processes (and hosts)
      that do not see process 0's file.
  """
  if multihost.count() == 1:
    return
  probe = os.path.join(directory, SHARED_PROBE)
  token = secrets.token_hex(16)

  def write() -> None:
    with open(probe, "w") as f:
      json.dump({"token": token}, f)

  multihost.on_primary(write, (RunDirError,))
  expected = multihost.exchange(token)[0]
  try:
    with open(probe) as f:
      seen = json.load(f).get("token") == expected
  except (OSError, ValueError, AttributeError):
    seen = False
  views = multihost.exchange({"seen": seen, "host": socket.gethostname()})
  multihost.on_primary(lambda: os.remove(probe))
  blind = [f"{i} (on {view['host']})" for i, view in enumerate(views) if not view["seen"]]
  if blind:
    raise RunDirError(
      f"{flag} {directory} is not shared storage: process{'es' if len(blind) > 1 else ''} "
      f"{', '.join(blind)} cannot see the file process 0 wrote there; a multi-process run needs "
      f"a {flag} that every host mounts (NFS, Lustre, a GCS or S3 FUSE mount), at any path"
    )


def check_writable(directory: str, flag: str) -> None:
  """Create ``directory`` if needed and check that a file can be written in it.

  Raises:
    RunDirError: naming ``flag``, the directory and the reason.
  """
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as err:
    raise RunDirError(f"{flag} {directory}: {describe_os_error(err, directory)}") from None
  probe = os.path.join(directory, f".rmda-jax-write-test-{os.getpid()}")
  try:
    with open(probe, "wb") as f:
      f.write(b"0")
  except OSError as err:
    raise RunDirError(f"{flag} {directory}: {describe_os_error(err, directory)}") from None
  finally:
    try:
      os.remove(probe)
    except OSError:
      pass
