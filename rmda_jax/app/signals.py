"""SIGINT / SIGTERM during a training job: noted, acted on at a safe point, by every process.

:class:`Signals` notes a signal and raises :class:`Interrupted` where the
job can stop without losing work: between steps, between evaluation batches,
after a checkpoint and its logs are written. A save under way always
completes. Inside :meth:`Signals.immediate` (loading data, which may
download) a signal stops the job at once; a second signal before the first
is acted on also stops it at once, abandoning a save under way (orbax
renames a step into place only once it is complete, so an abandoned save
leaves no trace).

In a multi-process run (``collective=True``) a process must not stop alone:
the others would wait for it in their next collective. A signal on any
process is therefore acted on by all at the same point: :meth:`Signals.flag`
is fed into each training step, which returns whether any process has one
(so that all stop after the same step), and :meth:`Signals.agree` compares
the processes' signals at the other safe points. Because a process blocked
in a collective (a peer that hangs) never runs Python's signal handler, a
thread reads the signal from ``signal.set_wakeup_fd`` and ends the process
``stop_timeout`` seconds after the first signal if it has not stopped by
then.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Literal

from rmda_jax.app import multihost

DEFAULT_STOP_TIMEOUT = 120  # seconds a process of a multi-process run waits for the others to stop


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM stopped the run.

  ``signum`` is the signal; ``peer`` the process that received it when that
  was another process of a multi-process run (None: this one);
  ``abandoned_save`` says that a second signal cut a checkpoint save short;
  ``where`` describes the position reached and the last checkpoint, in
  words; ``restart_flag`` is what to add to the same command to go on:
  ``"--resume"`` (a checkpoint of this run is on disk), ``"--overwrite"``
  (start again, replacing what this run wrote) or None (start again as it
  was).
  """

  def __init__(self, signum: int, abandoned_save: bool = False, peer: int | None = None):
    name = signal.Signals(signum).name
    super().__init__(name if peer is None else f"{name} on process {peer}")
    self.signum = signum
    self.peer = peer
    self.abandoned_save = abandoned_save
    self.where = ""
    self.restart_flag: str | None = None

  @property
  def exit_code(self) -> int:
    """The process exit status for the signal: 128 + its number."""
    return 128 + self.signum


_deadline_file = None


def end_within(seconds: float, why: str | None = None) -> None:
  """End this process (exit status 1) if it still runs ``seconds`` from now.

  A process of a multi-process run that stops may wait for a peer that never
  comes: in a collective, or in JAX's shutdown at exit. Such a wait can hold
  the interpreter's lock, so the deadline is ``faulthandler``'s watchdog,
  a thread that runs without it. With ``why``, says so in one line on
  standard error.
  """
  global _deadline_file
  if _deadline_file is None:
    _deadline_file = open(os.devnull, "w")
  if why is not None:
    print(
      f"rmda-jax train{multihost.describe_process()}: {why}; stopping with the other processes "
      f"(a process still running {seconds:g} s from now ends itself)",
      file=sys.stderr,
      flush=True,
    )
  faulthandler.dump_traceback_later(seconds, exit=True, file=_deadline_file)


class Signals:
  """The signals of one training job (a context manager installing the handlers).

  Args:
    collective: the job is one of several processes (see the module doc).
    stop_timeout: with ``collective``, seconds after the first signal at
      which the process ends itself if it has not stopped (:func:`end_within`),
      > 0.
  """

  def __init__(self, collective: bool = False, stop_timeout: float = DEFAULT_STOP_TIMEOUT):
    if stop_timeout <= 0:
      raise ValueError(f"stop_timeout must be positive, not {stop_timeout}")
    self.collective = collective
    self.stop_timeout = stop_timeout
    self.pending: int | None = None
    self.saving = False
    self._immediate = 0
    self._previous = {}
    self._wakeup: tuple[int, int] | None = None
    self._armed = False

  def __enter__(self) -> Signals:
    if threading.current_thread() is not threading.main_thread():
      return self
    for signum in (signal.SIGINT, signal.SIGTERM):
      self._previous[signum] = signal.signal(signum, self._handle)
    if self.collective:
      read, write = os.pipe()
      os.set_blocking(write, False)
      self._previous_wakeup = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
      self._wakeup = (read, write)
      threading.Thread(target=self._watch, args=(read,), daemon=True).start()
    return self

  def __exit__(self, *exc: object) -> Literal[False]:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    if self._wakeup is not None:
      signal.set_wakeup_fd(self._previous_wakeup)
      read, write = self._wakeup
      self._wakeup = None
      with contextlib.suppress(OSError):
        os.write(write, b"\0")  # wakes the watching thread, which closes both ends
    return False

  def _handle(self, signum: int, frame: FrameType | None) -> None:
    if self.pending is None and not self._immediate:
      self.pending = signum
      return
    raise Interrupted(signum, abandoned_save=self.saving)

  def _watch(self, read: int) -> None:
    """Arm the deadline at the first signal, also while the main thread is blocked in C code."""
    write = self._wakeup[1] if self._wakeup else -1
    try:
      while True:
        data = os.read(read, 64)
        signums = [b for b in data if b in (signal.SIGINT, signal.SIGTERM)]
        if signums:
          self._arm(signums[0])
        if not data or 0 in data:
          return
    finally:
      for fd in (read, write):
        with contextlib.suppress(OSError):
          os.close(fd)

  def _arm(self, signum: int) -> None:
    if self._armed:  # (only the watching thread arms)
      return
    self._armed = True
    end_within(self.stop_timeout, f"{signal.Signals(signum).name} received")

  def check(self) -> None:
    """Raise :class:`Interrupted` for a noted signal (alone: a no-op when ``collective``)."""
    if self.pending is not None and not self.collective:
      raise Interrupted(self.pending)

  def flag(self) -> int:
    """This process's noted signal for the next step (0: none)."""
    return self.pending or 0

  def stop_for(self, signum: int, peer: int) -> None:
    """Raise :class:`Interrupted` when the step says that process ``peer`` noted ``signum``.

    ``signum`` 0: no process has a signal, nothing to do.
    """
    if not signum:
      return
    if self.pending:
      raise Interrupted(self.pending)
    raise Interrupted(signum, peer=peer)

  def agree(self) -> None:
    """Raise :class:`Interrupted` on every process when any has a signal (a collective)."""
    if not self.collective:
      self.check()
      return
    noted = multihost.exchange(self.pending or 0)
    if self.pending:
      raise Interrupted(self.pending)
    for index, signum in enumerate(noted):
      if signum:
        raise Interrupted(signum, peer=index)

  @contextlib.contextmanager
  def immediate(self) -> Iterator[None]:
    """Within: a signal stops the job at once (a download, a long read)."""
    self.check()
    self._immediate += 1
    try:
      yield
    finally:
      self._immediate -= 1
