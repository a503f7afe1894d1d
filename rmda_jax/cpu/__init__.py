"""Running a training step well on a CPU: compiler options, host memory, timing.

* :func:`compiler_options` (:mod:`~rmda_jax.cpu.options`): ``jax.jit``
  options that let XLA:CPU vectorize sums (IEEE otherwise) and run
  convolutions in its own thunks; ``{}`` on other backends;
* :func:`keep_freed_memory` (:mod:`~rmda_jax.cpu.memory`): glibc told to keep
  freed blocks, so a step's temporaries are not page-faulted anew at every
  call;
* :mod:`~rmda_jax.cpu.timing`: interleaved medians, for ratios measured on a
  noisy machine.

It imports nothing of the rest of :mod:`rmda_jax`.
"""

from rmda_jax.cpu import memory, options, timing
from rmda_jax.cpu.memory import keep_freed_memory
from rmda_jax.cpu.options import compiler_options

__all__ = ["compiler_options", "keep_freed_memory", "memory", "options", "timing"]
