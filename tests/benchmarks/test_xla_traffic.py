"""The benchmarks' count of bytes a compiled step moves (benchmarks/_xla_traffic.py)."""

import importlib.util
import os

import jax
import jax.numpy as jnp

_PATH = os.path.join(
  os.path.dirname(__file__), os.pardir, os.pardir, "benchmarks", "_xla_traffic.py"
)
_spec = importlib.util.spec_from_file_location("_xla_traffic", _PATH)
xla_traffic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xla_traffic)

N = 4096  # float32 entries: 16 KiB per array


def test_one_fusion_reads_its_operands_and_writes_its_result():
  f = jax.jit(lambda x, y: x * 2.0 + y)
  x = jnp.ones(N)
  text = f.lower(x, x).compile().as_text()
  sizes = xla_traffic.instruction_bytes(text)
  # two operands read and one result written, 4 bytes each, whatever XLA names the fusion
  assert max(sizes.values()) == 3 * 4 * N
  assert xla_traffic.traffic(text, lambda: f(x, x).block_until_ready()) == 3 * 4 * N


def test_a_loop_body_counts_once_per_iteration():
  def repeat(x, n):
    return jax.lax.while_loop(lambda c: c[0] < n, lambda c: (c[0] + 1, jnp.sin(c[1])), (0, x))[1]

  f = jax.jit(repeat)
  x = jnp.ones(N)
  text = f.lower(x, 3).compile().as_text()
  per_array = 4 * N
  for n in (3, 7):
    moved = xla_traffic.traffic(text, lambda n=n: f(x, n).block_until_ready())
    # each iteration reads the carried array and writes the new one; anything
    # else (the counter, a copy in or out of the loop) is at most a few arrays
    assert 2 * n * per_array <= moved <= (2 * n + 4) * per_array, (n, moved / per_array)
