"""Coupled groups found from the computation: a dependency graph over jaxpr dimensions.

:func:`discover_groups` traces the forward pass ``fn(params, *args)`` with
``jax.make_jaxpr`` and links every parameter axis to the activation
dimensions it meets, through each primitive's dimension rules: contractions
(``dot_general``, convolutions), elementwise ops with broadcasting,
``broadcast_in_dim``, transposes, reshapes that split or merge dimensions
(heads), slices and splits (fused q/k/v), concatenation (of pieces of one
size, as an LSTM's gate kernels), reductions, nested jaxprs (``pjit``,
``custom_jvp`` / ``custom_vjp`` such as ``gelu``, ``remat``) and control flow:
``scan`` (the layers of a scan over stacked params have groups of their own,
see :mod:`~rmda_jax.structure.discovery.tracing`; params closed over the body,
as an RNN cell's, are one group for every step), ``while_loop`` /
``fori_loop`` and ``cond`` / ``switch``.
Dimensions are atoms of a union-find that can be *refined*: when a reshape
splits an ``(H * D)`` axis into ``(H, D)``, every axis already linked to it is
split the same way, so a head found after the projection is also a head of
the projection's kernel.

**Exactness.** A dimension is offered as a family of groups only if zeroing
all of a group's slices removes that unit from the function exactly, so
compaction can cut it with identical outputs: every way the dimension leaves
the computation must be a contraction against parameters of the group (a
consumer kernel row, an attention output projection). Dimensions reduced by a
normalisation (LayerNorm over the residual stream) or a softmax, contracted
between two activations only, that are model outputs, sliced, concatenated,
windows of convolutions and pooling, or touched by a primitive this module
does not know, are not offered; they are listed in ``Groups.unprunable`` with
the reason (unknown primitives also by name in ``Groups.unknown_primitives``):
never guessed.

The modules follow the concerns: :mod:`~rmda_jax.structure.discovery.tracing`
traces the forward pass; :mod:`~rmda_jax.structure.discovery.atoms` is the
union-find of dimensions; :mod:`~rmda_jax.structure.discovery.graph` (pass 1)
holds the per-primitive dimension rules (:mod:`~rmda_jax.structure.discovery.primitives`
the primitive tables); :mod:`~rmda_jax.structure.discovery.exits` (pass 2)
the zero sets and exits; :mod:`~rmda_jax.structure.discovery.control_flow`
the nested jaxprs; :mod:`~rmda_jax.structure.discovery.naming` the names of
slices and families; :mod:`~rmda_jax.structure.discovery.discover` the
assignment of disjoint families.

**Disjointness.** A leaf can carry two dimensions (the middle kernel of two
hidden layers). Families are disjoint: each first takes the leaves that
*consume* it (the kernels it is contracted against; heads, then units, then
inputs, each in computation order), and a family that cannot have all of them
is dropped; then the families take their other leaves (producer kernels,
biases, norm parameters) that are still free. So the hidden units of an MLP's
first layer are ``{Dense_0 kernel[:, j], Dense_0 bias[j], Dense_1 kernel[j, :]}``
and those of its second layer ``{Dense_1 bias[j], Dense_2 kernel[j, :]}``:
zeroing either removes the unit exactly, and compaction still cuts the whole
unit from every leaf.

Example:
  >>> import jax, jax.numpy as jnp, flax.linen as nn, rmda_jax
  >>> class MLP(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     hidden = nn.relu(nn.Dense(16)(x))
  ...     return nn.Dense(3)(hidden)
  >>> model = MLP()
  >>> params = model.init(jax.random.PRNGKey(0), jnp.ones((1, 8)))["params"]
  >>> groups = rmda_jax.discover_linen(model, params, jnp.ones((1, 8)))
  >>> [(f.kind, f.size, f.paths) for f in groups.families]
  [('units', 16, ('Dense_0/bias', 'Dense_0/kernel', 'Dense_1/kernel'))]
  >>> reg = rmda_jax.group_lasso(1e-3, groups=groups)

References:
  G. Fang et al., "DepGraph: Towards Any Structural Pruning", CVPR 2023.
"""

from rmda_jax.structure.discovery import (
  atoms,
  control_flow,
  discover,
  exits,
  graph,
  naming,
  primitives,
  tracing,
)
from rmda_jax.structure.discovery.discover import (
  DEFAULT_KINDS,
  KIND_ORDER,
  discover_groups,
  discover_linen,
  discover_nnx,
)
from rmda_jax.structure.discovery.tracing import Traced, trace

__all__ = [
  "DEFAULT_KINDS",
  "KIND_ORDER",
  "Traced",
  "atoms",
  "control_flow",
  "discover",
  "discover_groups",
  "discover_linen",
  "discover_nnx",
  "exits",
  "graph",
  "naming",
  "primitives",
  "trace",
  "tracing",
]
