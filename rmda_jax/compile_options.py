"""XLA compiler options for a training step on CPU: reductions that vectorize.

XLA:CPU compiles a reduction fused with the expression it sums (the exact
group-LASSO solver's Newton sums, group norms of a computed tree) as a loop
that adds its terms one after another, in the order of the source: each
addition waits for the previous one, so the sum runs at one term per
floating-point-add latency whatever the vector width. Allowing LLVM to
reassociate floating-point arithmetic lets it split the sum over vector
lanes. The options below turn on XLA:CPU's fast-math mode for that, but keep
everything else IEEE: NaN and infinities propagate and compare as usual
(``honor_nans``, ``honor_infs``), divisions stay divisions
(``honor_division``), ``exp``/``log``/... keep their accurate versions
(``honor_functions``), and ``min``/``max`` keep propagating NaN.

What changes is the rounding of sums (the order in which terms are added),
as on GPUs and TPUs, whose reductions are always reassociated. On the 2-core
CPU of ``benchmarks/step_speed.py`` the Newton pass over a 2.4M-entry
convolution kernel goes from 2.0 to 0.4 ms.

Pass them to ``jax.jit`` for the whole training step. On other backends
:func:`cpu_compiler_options` returns ``{}`` (their compilers have their own
reduction strategies), so the same code runs everywhere.

Example:
  >>> import jax, jax.numpy as jnp
  >>> from rmda_jax.compile_options import cpu_compiler_options
  >>> step = jax.jit(lambda x: jnp.sum(x * x), compiler_options=cpu_compiler_options())
  >>> float(step(jnp.ones(8)))
  8.0
"""

from __future__ import annotations

from typing import Optional

import jax

_REASSOCIATE_SUMS = {
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
    "xla_cpu_enable_fast_min_max": False,
}


def cpu_compiler_options(backend: Optional[str] = None) -> dict:
  """``jax.jit(..., compiler_options=...)`` letting XLA:CPU vectorize sums, IEEE otherwise.

  Args:
    backend: the platform the step is compiled for (``"cpu"``, ``"gpu"``,
      ``"tpu"``, ...); None means ``jax.default_backend()``.

  Returns:
    A new dict of XLA debug options for a CPU backend, ``{}`` for any other.

  Raises:
    TypeError: ``backend`` is not a string or None.
  """
  if backend is not None and not isinstance(backend, str):
    raise TypeError(f"backend must be a platform name such as 'cpu' or None, got {backend!r}.")
  platform = jax.default_backend() if backend is None else backend
  return dict(_REASSOCIATE_SUMS) if platform.lower() == "cpu" else {}
