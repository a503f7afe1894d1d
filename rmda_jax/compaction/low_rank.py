"""Low-rank kernels as two factors: the truncated SVD of a kernel's matrix view.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.compaction import factorize
  >>> kernel = jnp.outer(jnp.arange(1.0, 5.0), jnp.ones(3))   # rank 1
  >>> down, up = factorize(kernel)
  >>> down.shape, up.shape, bool(jnp.allclose(down @ up, kernel, atol=1e-5))
  ((4, 1), (1, 3), True)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rmda_jax.core.numerics import compute_dtype
from rmda_jax.prox.spectral import as_matrix, rank_tolerance


def factorize(kernel: jax.typing.ArrayLike, rank: int | None = None) -> tuple[jax.Array, jax.Array]:
  """Thin factors of a kernel: ``down`` (``shape[:-1] + (r,)``) and ``up`` (``(r, out)``).

  ``reshape(down, (-1, r)) @ up`` is the best rank-``r`` approximation of the
  ``(-1, out)`` matrix view (truncated SVD, singular values split evenly),
  and equals the kernel up to float error when ``r`` is its numerical rank
  (the default, with the ``numpy.linalg.matrix_rank`` tolerance).
  """
  kernel = jnp.asarray(kernel)
  matrix = as_matrix(kernel.astype(compute_dtype(kernel.dtype)))
  u, s, vt = jnp.linalg.svd(matrix, full_matrices=False)
  if rank is None:
    rank = max(int(jnp.sum(s > rank_tolerance(s, matrix.shape))), 1)
  root = jnp.sqrt(s[:rank])
  down = (u[:, :rank] * root).reshape(kernel.shape[:-1] + (rank,)).astype(kernel.dtype)
  up = (root[:, None] * vt[:rank]).astype(kernel.dtype)
  return down, up
