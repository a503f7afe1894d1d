"""rmda_jax.keep_freed_memory: glibc keeps a freed large block in the heap, for reuse."""

import ctypes
import subprocess
import sys
import textwrap

import pytest

import rmda_jax
from rmda_jax import cpu_memory

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
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    applied = rmda_jax.keep_freed_memory() if sys.argv[1] == "keep" else None
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
  libc = ctypes.CDLL(None)
  return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


@pytest.mark.skipif(not _has_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_a_freed_large_block_stays_in_the_process_only_after_keep_freed_memory():
  def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    applied, mapped_mb, free_heap_mb = out.stdout.split()
    return applied, int(mapped_mb), int(free_heap_mb)

  applied, mapped_mb, free_heap_mb = probe("default")
  assert mapped_mb >= BLOCK_MB and free_heap_mb < BLOCK_MB   # mapped, and unmapped at free
  applied, mapped_mb, free_heap_mb = probe("keep")
  assert applied == "True"
  assert mapped_mb < BLOCK_MB and free_heap_mb >= BLOCK_MB   # from the heap, and kept there


@pytest.mark.parametrize("bad", [1.5, "1024", True, None])
def test_keep_freed_memory_rejects_a_non_int(bad):
  with pytest.raises(TypeError, match="max_block_bytes"):
    rmda_jax.keep_freed_memory(bad)


@pytest.mark.parametrize("bad", [0, -1, 2**31])
def test_keep_freed_memory_rejects_a_size_out_of_range(bad):
  with pytest.raises(ValueError, match=r"max_block_bytes must be in \[1, 2\*\*31 - 1\]"):
    rmda_jax.keep_freed_memory(bad)


def test_keep_freed_memory_is_a_no_op_without_glibc(monkeypatch):
  monkeypatch.setattr(cpu_memory, "_glibc", lambda: None)
  assert rmda_jax.keep_freed_memory() is False


@pytest.mark.parametrize("process", [True, False])
def test_the_train_command_keeps_freed_memory_only_when_it_is_the_whole_process(process, monkeypatch, tmp_path):
  from rmda_jax.app import cli

  calls = []
  monkeypatch.setattr(cpu_memory, "keep_freed_memory", lambda *args: calls.append(args) or True)
  monkeypatch.setattr(cli, "_ignore_exit_signals", lambda: None)
  monkeypatch.setattr(cli, "_train", lambda args: 0)
  assert cli.main(["train", "--out", str(tmp_path)], process=process) == 0
  assert calls == ([()] if process else [])
