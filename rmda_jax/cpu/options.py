"""XLA compiler options for a training step on CPU: sums that vectorize, XLA's own convolutions.

**Sums.** XLA:CPU compiles a reduction fused with the expression it sums
(the exact group-LASSO solver's Newton sums, group norms of a computed
tree) as a loop that adds its terms one after another, in the order of the
source: each addition waits for the previous one, so the sum runs at one
term per floating-point-add latency whatever the vector width. Allowing
LLVM to reassociate floating-point arithmetic lets it split the sum over
vector lanes. The options below turn on XLA:CPU's fast-math mode for that,
but keep everything else IEEE: NaN and infinities propagate and compare as
usual (``honor_nans``, ``honor_infs``), divisions stay divisions
(``honor_division``), ``exp``/``log``/... keep their accurate versions
(``honor_functions``), and ``min``/``max`` keep propagating NaN. What
changes is the rounding of sums (the order in which terms are added), as on
GPUs and TPUs, whose reductions are always reassociated
(``benchmarks/step_speed.py --mode inplace_reassoc`` measures the gain).

**Convolutions.** XLA:CPU hands convolutions to YNNPACK by default (its
``LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION`` fusion type), whose
convolutions of a training step (forward and both backward ones) are slower
than XLA's own convolution thunks on the CPUs ``benchmarks/train_step.py``
measures. The options keep YNNPACK for what it does well there, dots and
reductions (the group norms of every proximal step read their operands
through it), and leave the convolutions to XLA; the optimizer steps compile
to the same code. A convolution is computed by another algorithm, so its
float32 rounding differs. The setting is ``xla_cpu_experimental_ynn_fusion_type``,
an experimental option: it is included only where this jaxlib accepts it
(checked once by compiling a one-line function) and where ``XLA_FLAGS`` does
not set it already, so a user's own choice stands.

Pass them to ``jax.jit`` for the whole training step. On other backends
:func:`compiler_options` returns ``{}`` (their compilers have their own
reduction strategies and convolution libraries), so the same code runs
everywhere.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import rmda_jax
  >>> step = jax.jit(lambda x: jnp.sum(x * x), compiler_options=rmda_jax.cpu.compiler_options())
  >>> float(step(jnp.ones(8)))
  8.0
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

_REASSOCIATE_SUMS = {
  "xla_cpu_enable_fast_math": True,
  "xla_cpu_fast_math_honor_nans": True,
  "xla_cpu_fast_math_honor_infs": True,
  "xla_cpu_fast_math_honor_division": True,
  "xla_cpu_fast_math_honor_functions": True,
  "xla_cpu_enable_fast_min_max": False,
}

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
# XLA:CPU's default fusion types less INDIVIDUAL_CONVOLUTION (a per-jit option
# takes the whole list; the "+"/"-" edits of XLA_FLAGS are not accepted here).
_CONVOLUTIONS_BY_XLA = {
  YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
}


@functools.cache
def _xla_accepts(options: tuple) -> bool:
  """Whether this jaxlib's XLA compiles a trivial function with ``options`` (name, value pairs)."""
  try:
    x = jax.device_put(
      np.zeros(2, np.float32), jax.devices("cpu")[0]
    )  # RuntimeError where JAX_PLATFORMS has no cpu
    jax.jit(lambda v: v + 1, compiler_options=dict(options)).lower(x).compile()
  except (jax.errors.JaxRuntimeError, RuntimeError, ValueError):
    return False
  return True


def _user_sets(option: str) -> bool:
  return f"--{option}" in os.environ.get("XLA_FLAGS", "")


def compiler_options(backend: str | None = None) -> dict[str, bool | str]:
  """``jax.jit(..., compiler_options=...)`` for a CPU step: vectorized sums, XLA's convolutions.

  The sums are reassociated, everything else stays IEEE; convolutions run
  through XLA's own thunks instead of YNNPACK where this jaxlib accepts the
  setting and ``XLA_FLAGS`` does not choose otherwise (module docstring).

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
  if platform.lower() != "cpu":
    return {}
  options: dict[str, bool | str] = dict(_REASSOCIATE_SUMS)
  if not _user_sets(YNN_FUSION_TYPE) and _xla_accepts(tuple(_CONVOLUTIONS_BY_XLA.items())):
    options.update(_CONVOLUTIONS_BY_XLA)
  return options
