"""Finding and measuring the structure of a model: coupled groups from its computation, and metrics.

* :mod:`~rmda_jax.structure.discovery`: coupled groups found from the
  jaxpr of a forward pass (:func:`discover_groups`, :func:`discover_linen`,
  :func:`discover_nnx`);
* :mod:`~rmda_jax.structure.metrics`: unstructured, group and weighted group
  sparsity, low-rank level, on-set fraction, and the structure tracker.

It imports :mod:`rmda_jax.prox` (the regularizers decide which groups the
metrics count) and :mod:`rmda_jax.core`.
"""

from rmda_jax.structure import discovery, metrics
from rmda_jax.structure.discovery import discover_groups, discover_linen, discover_nnx

__all__ = ["discover_groups", "discover_linen", "discover_nnx", "discovery", "metrics"]
