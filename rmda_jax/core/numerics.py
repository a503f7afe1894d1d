"""Arithmetic shared by the regularizers and the solvers: no 0/0, NaN kept visible.

Example:
  >>> import jax.numpy as jnp
  >>> from rmda_jax.core import numerics
  >>> numerics.safe_divide(jnp.array([1.0, 0.0]), jnp.array([2.0, 0.0])).tolist()
  [0.5, 0.0]
  >>> numerics.shrink_factor(jnp.array([4.0, 1.0, jnp.nan]), jnp.array(2.0)).tolist()
  [0.5, 0.0, nan]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def compute_dtype(dtype: Any) -> np.dtype:
  """Float32, or float64 where the input already is: accumulators never go below float32."""
  return jnp.promote_types(dtype, jnp.float32)


def as_compute_dtype(x: Any) -> Array:
  """``x`` as an array in its :func:`compute_dtype`."""
  x = jnp.asarray(x)
  return x.astype(compute_dtype(x.dtype))


def safe_divide(num: Array, den: Array) -> Array:
  """``num / den`` where ``den != 0``, else 0 (no 0/0 anywhere, gradients included)."""
  nonzero = den != 0
  return jnp.where(nonzero, num / jnp.where(nonzero, den, 1), 0)


def norm_from_squares(squared: Array) -> Array:
  """``sqrt`` of a sum of squares: 0 at 0 with a finite gradient, NaN stays NaN.

  A group with a NaN entry is seen, never taken for a zero group.
  """
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1)), squared)


def shrink_factor(norm: Array, threshold: Array) -> Array:
  """``max(0, 1 - threshold / norm)`` without 0/0; NaN where ``norm`` is NaN."""
  return jnp.where(
    norm > threshold, 1 - safe_divide(threshold, norm), jnp.where(norm <= threshold, 0, norm)
  )


def soft_threshold(x: Array, threshold: Array) -> Array:
  """``sign(x) * max(|x| - threshold, 0)``."""
  return jnp.sign(x) * jnp.maximum(jnp.abs(x) - threshold, 0)
