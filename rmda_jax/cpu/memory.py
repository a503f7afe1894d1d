"""Keeping freed memory in a CPU process, so a step's temporaries are not page-faulted anew.

XLA:CPU allocates the temporary buffers of a compiled computation at every
call, as one block, and frees it when the call ends. glibc's ``malloc``
serves a block over its mmap threshold (128 KiB, adjusted upwards to at
most 32 MiB as blocks are freed) with a fresh ``mmap`` and gives it back to
the kernel at ``free``. The next call then maps new pages, and the kernel
zeroes each one at its first touch, which makes writing a fresh temporary
far slower than writing into reused memory (``benchmarks/README.md``
measures both). RMDA's step keeps its temporaries under that threshold, but
RAMDA's and ProxGen's exact group-LASSO solves read arrays that XLA stores
in them (the metric and ``b``), as large as the largest leaves, page-faulted
at every step.

:func:`keep_freed_memory` raises glibc's mmap threshold (blocks up to
``max_block_bytes`` come from the heap) and its trim threshold (freed memory
at the top of the heap is kept, up to 2 GiB), with ``mallopt``. The next
call reuses the pages of the previous one. The price is that the process
holds on to its peak heap, as a long-running training job does anyway.

XLA runs a computation on its own threads, and glibc gives a thread other
than the main one an arena of heaps of at most 64 MiB, so a larger block
asked for there is mapped whatever the threshold. :func:`keep_freed_memory`
therefore also limits glibc to one arena (``M_ARENA_MAX = 1``). Arenas made
before the call stay in use (by their threads, and by new threads that
inherit the arena of one that has exited), so call it first, before JAX
runs anything.

The setting is the process's, not a compiled function's, so it is a call to
make once in a training program (``rmda-jax train`` makes it), not something
the library does on import. Called first, it acts like starting Python with
``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` and ``MALLOC_ARENA_MAX=1``
set (which also covers arenas made before any Python runs); on accelerators
it only concerns host memory, and there is nothing to gain there.

Example (at the top of a training script, before any JAX computation)::

  import rmda_jax
  rmda_jax.cpu.keep_freed_memory()   # False, and nothing changed, without glibc
"""

from __future__ import annotations

import ctypes
import operator
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1


def _glibc():
  """The process's C library if it is glibc (which has ``mallopt``), else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
  except (OSError, TypeError):
    return None
  if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):
    return None
  libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
  libc.mallopt.restype = ctypes.c_int
  return libc


def keep_freed_memory(max_block_bytes: int = 1 << 30) -> bool:
  """Make glibc keep freed blocks up to ``max_block_bytes`` in the process, for reuse.

  Sets ``M_MMAP_THRESHOLD = max_block_bytes``, ``M_TRIM_THRESHOLD = 2**31 - 1``
  and ``M_ARENA_MAX = 1`` with ``mallopt``; call it before JAX runs anything
  (see the module docstring for why, and for what a training step on CPU
  gains from it).

  Args:
    max_block_bytes: an int in [1, 2**31 - 1]: blocks up to this size are
      taken from the heap instead of being mapped and unmapped at every call
      (default 1 GiB; above a step's temporaries). Some glibc versions refuse
      a threshold above 32 MiB; pass at most ``32 << 20`` there.

  Returns:
    True when glibc accepted the three settings (which covers the threads
    that allocate afterwards, see the module docstring). False, with nothing
    changed, where the C library is not glibc (macOS, musl, Windows) or glibc
    refuses ``max_block_bytes`` as a threshold.

  Raises:
    TypeError: ``max_block_bytes`` is not an int.
    ValueError: ``max_block_bytes`` is outside [1, 2**31 - 1].

  Example:
    >>> import rmda_jax
    >>> rmda_jax.cpu.keep_freed_memory(0)
    Traceback (most recent call last):
    ...
    ValueError: max_block_bytes must be in [1, 2**31 - 1], got 0.
  """
  if isinstance(max_block_bytes, bool):
    raise TypeError(f"max_block_bytes must be an int, got {max_block_bytes!r}.")
  try:
    size = operator.index(max_block_bytes)
  except TypeError:
    raise TypeError(
      f"max_block_bytes must be an int, got {type(max_block_bytes).__name__}."
    ) from None
  if not 1 <= size <= _INT_MAX:
    raise ValueError(f"max_block_bytes must be in [1, 2**31 - 1], got {size}.")
  libc = _glibc()
  if libc is None:
    return False
  # The threshold first: setting the trim threshold alone would switch off
  # glibc's own raising of the mmap threshold, a loss if the threshold is refused.
  if not libc.mallopt(_M_MMAP_THRESHOLD, size):
    return False
  trim_kept = bool(libc.mallopt(_M_TRIM_THRESHOLD, _INT_MAX))
  one_arena = bool(libc.mallopt(_M_ARENA_MAX, 1))
  return trim_kept and one_arena
