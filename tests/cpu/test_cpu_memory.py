"""rmda_jax.cpu.keep_freed_memory: glibc keeps a freed large block in the heap, for reuse."""

import ctypes
import os
import subprocess
import sys
import textwrap

import pytest

import rmda_jax
from rmda_jax.cpu import memory as cpu_memory

BLOCK_MB = 96

# Allocates and frees a 96 MiB block with the C library's own malloc, in a
# new thread as XLA does, and reports what glibc's mallinfo2 says it keeps
# as free heap afterwards: the block itself when it came from the heap and
# stayed, ~0 when it was mapped for the allocation and unmapped at free
# (glibc's default above 32 MiB, and always above 64 MiB in a thread's arena).
PROBE = textwrap.dedent(f"""
    import ctypes, sys, threading
    import rmda_jax
    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena ordblks smblks hblks hblkhd usmblks "
                     "fsmblks uordblks fordblks keepcost").split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = rmda_jax.cpu.keep_freed_memory(int(sys.argv[2])) if sys.argv[1] == "keep" else None
    seen = {{}}
    def allocate_and_free():
        block = libc.malloc({BLOCK_MB} << 20)
        ctypes.memset(block, 1, {BLOCK_MB} << 20)
        seen["mapped"] = libc.mallinfo2().hblkhd
        libc.free(block)
    thread = threading.Thread(target=allocate_and_free)
    thread.start()
    thread.join()
    print(applied, seen["mapped"] >> 20, libc.mallinfo2().fordblks >> 20)
""")


def _has_mallinfo2() -> bool:
  if not sys.platform.startswith("linux"):
    return False
  libc = ctypes.CDLL(None)
  return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


def _probe(mode, max_block_bytes=1 << 30):
  # glibc's defaults, whatever this process was started with
  env = {
    k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
  }
  out = subprocess.run(
    [sys.executable, "-c", PROBE, mode, str(max_block_bytes)],
    capture_output=True,
    text=True,
    check=True,
    env=env,
  )
  applied, mapped_mb, free_heap_mb = out.stdout.split()
  return applied, int(mapped_mb), int(free_heap_mb)


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_freed_large_block_stays_in_the_process_only_after_keep_freed_memory():
  applied, mapped_mb, free_heap_mb = _probe("default")
  assert mapped_mb >= BLOCK_MB and free_heap_mb < BLOCK_MB  # mapped, and unmapped at free
  applied, mapped_mb, free_heap_mb = _probe("keep")
  assert applied == "True"
  assert mapped_mb < BLOCK_MB and free_heap_mb >= BLOCK_MB  # from the heap, and kept there


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_block_over_max_block_bytes_is_still_mapped():
  applied, mapped_mb, free_heap_mb = _probe("keep", max_block_bytes=BLOCK_MB // 2 << 20)
  assert applied == "True"
  assert mapped_mb >= BLOCK_MB and free_heap_mb < BLOCK_MB


class _RefusingLibc:
  """A glibc whose mallopt refuses the mmap threshold, recording every call."""

  def __init__(self):
    self.calls = []

  def mallopt(self, option, value):
    self.calls.append((option, value))
    return 0 if option == cpu_memory._M_MMAP_THRESHOLD else 1


def test_a_refused_threshold_changes_nothing_else(monkeypatch):
  libc = _RefusingLibc()
  monkeypatch.setattr(cpu_memory, "_glibc", lambda: libc)
  assert rmda_jax.cpu.keep_freed_memory(1 << 30) is False
  assert libc.calls == [(-3, 1 << 30)]  # no trim threshold, no arena limit after the refusal


@pytest.mark.parametrize("bad", [1.5, "1024", True, None])
def test_keep_freed_memory_rejects_a_non_int(bad):
  with pytest.raises(TypeError, match="max_block_bytes"):
    rmda_jax.cpu.keep_freed_memory(bad)


@pytest.mark.parametrize("bad", [0, -1, 2**31])
def test_keep_freed_memory_rejects_a_size_out_of_range(bad):
  with pytest.raises(ValueError, match=r"max_block_bytes must be in \[1, 2\*\*31 - 1\]"):
    rmda_jax.cpu.keep_freed_memory(bad)


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
  monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
  assert rmda_jax.cpu.keep_freed_memory() is False


@pytest.mark.parametrize(
  "process, platforms, called",
  [
    (True, None, True),
    (True, "cpu", True),
    (True, "cuda,cpu", True),
    (True, "cuda", False),
    (True, "tpu", False),
    (False, None, False),
  ],
)
def test_the_train_command_keeps_freed_memory_as_the_whole_process_on_cpu(
  process, platforms, called, monkeypatch, tmp_path
):
  import jax

  from rmda_jax.app import cli

  calls = []
  monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda *args: calls.append(args) or True)
  monkeypatch.setattr(cli, "_ignore_exit_signals", lambda: None)
  monkeypatch.setattr(cli, "_train", lambda args: 0)
  # the value main() reads; jax.config.update would re-select the platform of a running backend
  monkeypatch.setattr(
    type(jax.config), "jax_platforms", property(lambda self: platforms), raising=False
  )
  assert cli.main(["train", "--out", str(tmp_path)], process=process) == 0
  assert calls == ([()] if called else [])
