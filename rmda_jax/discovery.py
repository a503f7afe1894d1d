"""Coupled groups found from the computation: a dependency graph over jaxpr dimensions.

:func:`discover_groups` traces the forward pass ``fn(params, *args)`` with
``jax.make_jaxpr`` and links every parameter axis to the activation
dimensions it meets, through each primitive's dimension rules: contractions
(``dot_general``, convolutions), elementwise ops with broadcasting,
``broadcast_in_dim``, transposes, reshapes that split or merge dimensions
(heads), slices and splits (fused q/k/v), concatenation, reductions and nested
jaxprs (``pjit``, ``custom_jvp`` / ``custom_vjp`` such as ``gelu``, ``remat``).
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

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import math
from typing import Any, Callable, Iterable, Optional, Sequence

import jax
import numpy as np
from jax.extend import core as jcore

from rmda_jax import groups as group_rules
from rmda_jax.structure import Family, Groups, Slice, Unprunable

KIND_ORDER = ("heads", "units", "inputs")
DEFAULT_KINDS = ("units", "heads")

# Elementwise primitives whose output is 0 where their (first) operand is 0.
_ZERO_PRESERVING_UNARY = frozenset({
    "neg", "sin", "tan", "tanh", "erf", "sqrt", "cbrt", "abs", "sign", "square", "expm1", "log1p",
    "asin", "atan", "sinh", "asinh", "atanh", "convert_element_type", "reduce_precision", "copy", "copy_p",
    "stop_gradient", "floor", "ceil", "round", "real", "imag", "erf_inv", "optimization_barrier",
    "sharding_constraint", "mesh_cast", "reshard",
})
_OTHER_UNARY = frozenset({
    "exp", "exp2", "log", "cos", "acos", "cosh", "acosh", "logistic", "rsqrt", "erfc", "is_finite", "not",
    "integer_pow", "population_count", "clz", "lgamma", "digamma", "bessel_i0e", "bessel_i1e", "conj",
})
_MULTIPLICATIVE = frozenset({"mul", "and"})
_ADDITIVE = frozenset({"add", "sub", "max", "min", "add_any", "or", "xor"})
_OTHER_BINARY = frozenset({
    "div", "rem", "pow", "atan2", "eq", "ne", "lt", "le", "gt", "ge", "nextafter", "shift_left",
    "shift_right_logical", "shift_right_arithmetic", "igamma", "igammac", "random_gamma_grad", "polygamma",
    "zeta",
})
_LAYOUT = frozenset({"convert_element_type", "reduce_precision", "copy", "copy_p", "reshape", "transpose",
                     "broadcast_in_dim", "squeeze", "sharding_constraint", "mesh_cast", "reshard"})
_REDUCTIONS = frozenset({"reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or",
                         "reduce_xor", "argmax", "argmin"})
_CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})
_SOURCES = frozenset({"iota", "random_bits", "random_seed", "random_wrap", "random_unwrap", "random_fold_in",
                      "random_split", "threefry2x32", "rng_bit_generator", "rng_uniform"})
_CALLS = frozenset({"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
                    "custom_vjp_call_jaxpr", "remat", "checkpoint", "remat2", "custom_lin", "named_call"})


class _ALL:
  """The zero set of a literal 0: zero whatever the parameters are."""


# --------------------------------------------------------------------------- atoms
class _Atoms:
  """Union-find over dimension atoms that can be refined into factors.

  Each array axis of size > 1 is a list of atoms (row-major factors). Splitting
  an atom splits its whole class, so every linked axis sees the same factors.
  """

  def __init__(self):
    self.parent: list = []
    self.sizes: list = []
    self.children: list = []
    self.members: dict = {}
    self.reasons: dict = {}

  def new(self, size: int) -> int:
    atom = len(self.parent)
    self.parent.append(atom)
    self.sizes.append(int(size))
    self.children.append(None)
    self.members[atom] = [atom]
    self.reasons[atom] = set()
    return atom

  def find(self, a: int) -> int:
    root = a
    while self.parent[root] != root:
      root = self.parent[root]
    while self.parent[a] != root:
      self.parent[a], a = root, self.parent[a]
    return root

  def union(self, a: int, b: int) -> None:
    ra, rb = self.find(a), self.find(b)
    if ra == rb:
      return
    if len(self.members[ra]) < len(self.members[rb]):
      ra, rb = rb, ra
    self.parent[rb] = ra
    self.members[ra].extend(self.members.pop(rb))
    self.reasons[ra] |= self.reasons.pop(rb)

  def leaves(self, atoms: Iterable[int]) -> list:
    out = []
    stack = list(atoms)[::-1]
    while stack:
      a = stack.pop()
      if self.children[a] is None:
        out.append(a)
      else:
        stack.extend(self.children[a][::-1])
    return out

  def split(self, a: int, sizes: Sequence[int]) -> None:
    """Refine the class of leaf atom ``a`` into factors ``sizes`` (row-major)."""
    root = self.find(a)
    members = self.members[root]
    reasons = set(self.reasons[root])
    first = None
    for m in members:
      self.children[m] = [self.new(s) for s in sizes]
      if first is None:
        first = self.children[m]
        for c in first:
          self.reasons[c] |= reasons
      else:
        for c0, c in zip(first, self.children[m]):
          self.union(c0, c)

  def align(self, left: Sequence[int], right: Sequence[int]) -> bool:
    """Link two atom sequences of the same total size factor by factor,
    refining where one factor covers several; False where they interleave."""
    left, right = collections.deque(self.leaves(left)), collections.deque(self.leaves(right))
    while left and right:
      a, b = left.popleft(), right.popleft()
      if self.children[a] is not None:
        left.extendleft(self.children[a][::-1])
        right.appendleft(b)
        continue
      if self.children[b] is not None:
        right.extendleft(self.children[b][::-1])
        left.appendleft(a)
        continue
      sa, sb = self.sizes[a], self.sizes[b]
      if sa == sb:
        self.union(a, b)
      elif sa < sb and sb % sa == 0:
        self.split(b, (sa, sb // sa))
        right.appendleft(b)
        left.appendleft(a)
      elif sb < sa and sa % sb == 0:
        self.split(a, (sb, sa // sb))
        left.appendleft(a)
        right.appendleft(b)
      else:
        return False
    return not left and not right

  def mark(self, atoms: Iterable[int], reason: str) -> None:
    for leaf in self.leaves(atoms):
      self.reasons[self.find(leaf)].add(reason)


# --------------------------------------------------------------------------- the graph
class _Graph:
  """Pass 1 links dimensions; pass 2 finds exits, zero sets and kinds."""

  def __init__(self, atoms: _Atoms):
    self.atoms = atoms
    self.env: dict = {}          # (scope, var) -> [list of atoms per axis]
    self.scope: tuple = ()       # the call equations we are inside: a jaxpr called twice has two scopes
    self.unknown: list = []
    self.batch_classes: list = []  # atoms that are batch dims of an activation-activation contraction

  # ---- helpers
  def fresh(self, aval) -> list:
    return [[self.atoms.new(s)] if s > 1 else [] for s in getattr(aval, "shape", ())]

  def axes(self, v) -> list:
    if isinstance(v, jcore.Literal):
      return [[] for _ in np.shape(v.val)]
    key = (self.scope, v)
    if key not in self.env:
      self.env[key] = self.fresh(v.aval)
    return self.env[key]

  def define(self, v, axes) -> None:
    if not isinstance(v, jcore.DropVar):
      self.env[(self.scope, v)] = axes

  def link(self, a: list, b: list, context: str) -> None:
    if not self.atoms.align(a, b):
      self.atoms.mark(a + b, f"{context} interleaves this dimension with others")

  def all_atoms(self, v) -> list:
    return [a for axis in self.axes(v) for a in axis]

  def unknown_primitive(self, eqn) -> None:
    name = eqn.primitive.name
    if name not in self.unknown:
      self.unknown.append(name)
    outs = []
    for v in eqn.outvars:
      axes = self.fresh(v.aval)
      self.define(v, axes)
      outs.extend(a for axis in axes for a in axis)
    ins = [a for v in eqn.invars for a in self.all_atoms(v)]
    self.atoms.mark(ins + outs, f"used by {name}, which discovery does not know")

  # ---- pass 1
  def run(self, jaxpr) -> None:
    for eqn in jaxpr.eqns:
      self.equation(eqn)

  def equation(self, eqn) -> None:
    name = eqn.primitive.name
    ins, outs = eqn.invars, eqn.outvars
    params = eqn.params
    if name in _CALLS:
      inner = _inner_jaxpr(eqn)
      if inner is None:
        return self.unknown_primitive(eqn)
      jaxpr = inner.jaxpr if isinstance(inner, jcore.ClosedJaxpr) else inner
      outer_axes = [None if isinstance(v, jcore.Literal) else self.axes(v) for v in ins]
      self.scope = self.scope + (id(eqn),)
      for axes, var in zip(outer_axes, jaxpr.invars):
        self.define(var, axes if axes is not None else self.fresh(var.aval))
      for var in jaxpr.constvars:
        self.axes(var)
      self.run(jaxpr)
      inner_axes = [self.fresh(v.aval) if isinstance(v, jcore.Literal) else self.axes(v) for v in jaxpr.outvars]
      self.scope = self.scope[:-1]
      for outer, axes in zip(outs, inner_axes):
        self.define(outer, axes)
      return
    if name in _LAYOUT or name in _ZERO_PRESERVING_UNARY or name in _OTHER_UNARY or name in _MULTIPLICATIVE \
        or name in _ADDITIVE or name in _OTHER_BINARY or name in ("select_n", "clamp"):
      if name == "reshape":
        out = self.fresh(outs[0].aval)
        self.link([a for axis in self.axes(ins[0]) for a in axis], [a for axis in out for a in axis], "a reshape")
        return self.define(outs[0], out)
      if name == "transpose":
        axes = self.axes(ins[0])
        return self.define(outs[0], [axes[p] for p in params["permutation"]])
      if name == "squeeze":
        axes = self.axes(ins[0])
        dims = {d % len(axes) for d in params["dimensions"]}
        return self.define(outs[0], [a for i, a in enumerate(axes) if i not in dims])
      if name == "broadcast_in_dim":
        out = self.fresh(outs[0].aval)
        in_shape = ins[0].aval.shape
        for i, d in enumerate(params["broadcast_dimensions"]):
          if in_shape[i] == outs[0].aval.shape[d]:
            self.link(self.axes(ins[0])[i], out[d], "a broadcast")
        return self.define(outs[0], out)
      return self.elementwise(eqn)
    if name in _REDUCTIONS:
      axes = self.axes(ins[0])
      dims = {d % max(len(axes), 1) for d in params["axes"]}
      return self.define(outs[0], [a for i, a in enumerate(axes) if i not in dims])
    if name in _CUMULATIVE:
      return self.define(outs[0], self.axes(ins[0]))
    if name == "dot_general":
      return self.dot_general(eqn)
    if name == "conv_general_dilated":
      return self.convolution(eqn)
    if name.startswith("reduce_window"):
      return self.window(eqn)
    if name == "split":
      return self.split(eqn)
    if name == "slice":
      return self.slice(eqn)
    if name == "concatenate":
      return self.concatenate(eqn)
    if name == "pad":
      return self.pad(eqn)
    if name == "gather":
      return self.gather(eqn)
    if name == "dynamic_slice":
      return self.dynamic_slice(eqn)
    if name == "dynamic_update_slice":
      axes = self.axes(ins[0])
      for i, (a, b) in enumerate(zip(axes, self.axes(ins[1]))):
        if ins[0].aval.shape[i] == ins[1].aval.shape[i]:
          self.link(a, b, "dynamic_update_slice")
        else:
          self.atoms.mark(a + b, "updated in part (dynamic_update_slice)")
      return self.define(outs[0], axes)
    if name in _SOURCES:
      for v in outs:
        self.define(v, self.fresh(v.aval))
      return
    return self.unknown_primitive(eqn)

  def elementwise(self, eqn) -> None:
    out_aval = eqn.outvars[0].aval
    out = self.fresh(out_aval)
    for v in eqn.invars:
      shape = np.shape(v.val) if isinstance(v, jcore.Literal) else v.aval.shape
      if len(shape) != len(out_aval.shape):
        continue
      for i, axis in enumerate(self.axes(v)):
        if shape[i] == out_aval.shape[i]:
          self.link(axis, out[i], eqn.primitive.name)
    for v in eqn.outvars:
      self.define(v, out)

  def dot_general(self, eqn) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    la, ra = self.axes(lhs), self.axes(rhs)
    for i, j in zip(lc, rc):
      self.link(la[i], ra[j], "a contraction")
    for i, j in zip(lb, rb):
      self.link(la[i], ra[j], "a batched contraction")
    lfree = [i for i in range(len(la)) if i not in lc and i not in lb]
    rfree = [i for i in range(len(ra)) if i not in rc and i not in rb]
    self.define(eqn.outvars[0], [la[i] for i in lb] + [la[i] for i in lfree] + [ra[i] for i in rfree])

  def convolution(self, eqn) -> None:
    p = eqn.params
    lhs, rhs = eqn.invars
    out_v = eqn.outvars[0]
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    la, ra = self.axes(lhs), self.axes(rhs)
    out = self.fresh(out_v.aval)
    self.define(out_v, out)
    if p.get("batch_group_count", 1) != 1:
      self.atoms.mark([a for ax in la + ra + out for a in ax], "a batch-grouped convolution")
      return
    self.link(la[lhs_spec[0]], out[out_spec[0]], "a convolution's batch")
    groups_count = p.get("feature_group_count", 1)
    in_features = lhs.aval.shape[lhs_spec[1]]
    out_features = rhs.aval.shape[rhs_spec[0]]
    if groups_count == 1:
      self.link(la[lhs_spec[1]], ra[rhs_spec[1]], "a convolution")
      self.link(ra[rhs_spec[0]], out[out_spec[1]], "a convolution")
    elif groups_count == in_features == out_features:
      self.link(la[lhs_spec[1]], ra[rhs_spec[0]], "a depthwise convolution")
      self.link(ra[rhs_spec[0]], out[out_spec[1]], "a depthwise convolution")
    else:
      self.atoms.mark(la[lhs_spec[1]] + ra[rhs_spec[0]] + out[out_spec[1]] + ra[rhs_spec[1]],
                      "a grouped convolution")
    spatial = [la[d] for d in lhs_spec[2:]] + [ra[d] for d in rhs_spec[2:]] + [out[d] for d in out_spec[2:]]
    self.atoms.mark([a for ax in spatial for a in ax], "a convolution window")

  def window(self, eqn) -> None:
    p = eqn.params
    n = len(eqn.invars) // 2 if eqn.primitive.name == "reduce_window" else 1
    outs = [self.fresh(v.aval) for v in eqn.outvars]
    dims = p["window_dimensions"]
    strides = p["window_strides"]
    padding = p["padding"]
    base = p.get("base_dilation", (1,) * len(dims))
    dil = p.get("window_dilation", (1,) * len(dims))
    for operand, out in zip(eqn.invars[:n], outs):
      for i, (a, b) in enumerate(zip(self.axes(operand), out)):
        if dims[i] == 1 and strides[i] == 1 and tuple(padding[i]) == (0, 0) and base[i] == 1 and dil[i] == 1:
          self.link(a, b, "a pooling")
        else:
          self.atoms.mark(a + b, "a pooling window")
    for v, out in zip(eqn.outvars, outs):
      self.define(v, out)

  def _piece(self, in_axis: list, size_in: int, size_out: int, start: int, out_axis: list, what: str) -> None:
    """Out axis = one contiguous block ``[start, start + size_out)`` of the in axis."""
    if size_out == 0:
      return  # an empty piece reads nothing
    if size_out == size_in:
      self.link(in_axis, out_axis, what)
    elif size_in % size_out == 0 and start % size_out == 0:
      parts = self.atoms.new(size_in // size_out)
      self.atoms.mark([parts], f"cut into parts ({what})")
      self.link(in_axis, [parts] + out_axis, what)
    else:
      self.atoms.mark(in_axis + out_axis, f"sliced ({what})")

  def split(self, eqn) -> None:
    axis = eqn.params["axis"]
    operand = eqn.invars[0]
    axes = self.axes(operand)
    size_in = operand.aval.shape[axis]
    start = 0
    for v, size in zip(eqn.outvars, eqn.params["sizes"]):
      out = [list(a) for a in axes]
      out[axis] = [self.atoms.new(size)] if size > 1 else []
      self._piece(axes[axis], size_in, int(size), start, out[axis], "split")
      start += int(size)
      self.define(v, out)

  def slice(self, eqn) -> None:
    p = eqn.params
    operand, out_v = eqn.invars[0], eqn.outvars[0]
    axes = self.axes(operand)
    out = self.fresh(out_v.aval)
    strides = p["strides"] or (1,) * len(axes)
    for i, (a, b) in enumerate(zip(axes, out)):
      size_in, size_out = operand.aval.shape[i], out_v.aval.shape[i]
      if strides[i] != 1 and size_out != size_in:
        self.atoms.mark(a + b, "strided slice")
      else:
        self._piece(a, size_in, size_out, p["start_indices"][i], b, "slice")
    self.define(out_v, out)

  def dynamic_slice(self, eqn) -> None:
    operand, out_v = eqn.invars[0], eqn.outvars[0]
    out = self.fresh(out_v.aval)
    for i, (a, b) in enumerate(zip(self.axes(operand), out)):
      if operand.aval.shape[i] == out_v.aval.shape[i]:
        self.link(a, b, "dynamic_slice")
      else:
        self.atoms.mark(a + b, "sliced at a dynamic position")
    self.define(out_v, out)

  def concatenate(self, eqn) -> None:
    dim = eqn.params["dimension"]
    out_v = eqn.outvars[0]
    out = self.fresh(out_v.aval)
    for v in eqn.invars:
      for i, (a, b) in enumerate(zip(self.axes(v), out)):
        if i == dim:
          self.atoms.mark(a + b, "concatenated")
        else:
          self.link(a, b, "concatenate")
    self.define(out_v, out)

  def pad(self, eqn) -> None:
    operand, out_v = eqn.invars[0], eqn.outvars[0]
    out = self.fresh(out_v.aval)
    for (lo, hi, interior), a, b in zip(eqn.params["padding_config"], self.axes(operand), out):
      if (lo, hi, interior) == (0, 0, 0):
        self.link(a, b, "pad")
      else:
        self.atoms.mark(a + b, "padded")
    self.define(out_v, out)

  def gather(self, eqn) -> None:
    p = eqn.params
    operand, indices = eqn.invars
    out_v = eqn.outvars[0]
    dn = p["dimension_numbers"]
    out = self.fresh(out_v.aval)
    oa, ia = self.axes(operand), self.axes(indices)
    if getattr(dn, "operand_batching_dims", ()):
      self.atoms.mark([a for ax in oa + ia + out for a in ax], "a batched gather")
      return self.define(out_v, out)
    kept = [i for i in range(len(oa)) if i not in dn.collapsed_slice_dims]
    for i, d in zip(kept, dn.offset_dims):
      if p["slice_sizes"][i] == operand.aval.shape[i] and i not in dn.start_index_map:
        self.link(oa[i], out[d], "gather")
      else:
        self.atoms.mark(oa[i] + out[d], "indexed (gather)")
    for i in dn.start_index_map:
      self.atoms.mark(oa[i], "indexed (gather)")
    batch_out = [d for d in range(len(out)) if d not in dn.offset_dims]
    for d, a in zip(batch_out, ia[:-1]):
      self.link(a, out[d], "gather")
    return self.define(out_v, out)


def _inner_jaxpr(eqn):
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    inner = eqn.params.get(key)
    if isinstance(inner, (jcore.Jaxpr, jcore.ClosedJaxpr)):
      jaxpr = inner.jaxpr if isinstance(inner, jcore.ClosedJaxpr) else inner
      if len(jaxpr.invars) == len(eqn.invars) and len(jaxpr.outvars) == len(eqn.outvars):
        return inner
  return None


# --------------------------------------------------------------------------- pass 2
class _Semantics:
  """Zero sets (which dimensions a value vanishes along when their parameters
  are zeroed), param views, exits of each dimension, and kinds."""

  def __init__(self, graph: _Graph, param_vars: dict):
    self.g = graph
    self.atoms = graph.atoms
    self.zero: dict = {}                     # (scope, var) -> classes it vanishes along
    self.view: dict = {((), v): i for v, i in param_vars.items()}  # (scope, var) -> param index (pure views)
    self.consumers = collections.defaultdict(set)   # class -> param indices contracted against it
    self.needs_all: set = set()               # classes whose zeroing operand is not a plain parameter view
    self.exits = collections.Counter()
    self.silent_exits = collections.Counter()  # exits where an activation operand vanishes with its producers
    self.first_seen: dict = {}
    self.heads: set = set()
    self.counter = 0
    for v, _ in param_vars.items():
      self.zero[((), v)] = set(self.classes(v))

  def classes(self, v) -> list:
    if isinstance(v, jcore.Literal):
      return []
    return [self.atoms.find(a) for a in self.atoms.leaves(self.g.all_atoms(v))]

  def axis_classes(self, v, i) -> list:
    return [self.atoms.find(a) for a in self.atoms.leaves(self.g.axes(v)[i])]

  def zset(self, v):
    if isinstance(v, jcore.Literal):
      return _ALL if np.all(np.asarray(v.val) == 0) else set()
    return self.zero.get((self.g.scope, v), set())

  def set_zero(self, v, zs) -> None:
    if isinstance(v, jcore.DropVar):
      return
    present = set(self.classes(v))
    self.zero[(self.g.scope, v)] = present if zs is _ALL else (set(zs) & present)

  def view_of(self, v):
    """The parameter index ``v`` is a plain view of (cast, reshape, transpose...), or None."""
    if isinstance(v, jcore.Literal):
      return None
    return self.view.get((self.g.scope, v))

  def set_view(self, v, index) -> None:
    if index is not None and not isinstance(v, jcore.DropVar):
      self.view[(self.g.scope, v)] = index

  def run(self, jaxpr) -> None:
    for eqn in jaxpr.eqns:
      self.equation(eqn)

  def equation(self, eqn) -> None:
    self.counter += 1
    for v in eqn.outvars:
      if not isinstance(v, jcore.DropVar):
        for c in self.classes(v):
          self.first_seen.setdefault(c, self.counter)
    name = eqn.primitive.name
    ins, outs = eqn.invars, eqn.outvars
    if name in _CALLS:
      inner = _inner_jaxpr(eqn)
      jaxpr = inner.jaxpr if isinstance(inner, jcore.ClosedJaxpr) else inner
      outer_zero = [self.zset(v) for v in ins]
      outer_views = [self.view_of(v) for v in ins]
      self.g.scope = self.g.scope + (id(eqn),)
      for var, zeros, view in zip(jaxpr.invars, outer_zero, outer_views):
        self.zero[(self.g.scope, var)] = zeros
        self.set_view(var, view)
      self.run(jaxpr)
      inner_zero = [self.zset(v) for v in jaxpr.outvars]
      inner_views = [self.view_of(v) for v in jaxpr.outvars]
      self.g.scope = self.g.scope[:-1]
      for outer, zeros, view in zip(outs, inner_zero, inner_views):
        self.set_zero(outer, zeros)
        self.set_view(outer, view)
      return
    if name in _LAYOUT and len(ins) >= 1:
      self.set_view(outs[0], self.view_of(ins[0]))
    if name in _LAYOUT or name in _ZERO_PRESERVING_UNARY or name == "integer_pow" and eqn.params["y"] > 0:
      return self.set_zero(outs[0], self.zset(ins[0]))
    if name in _MULTIPLICATIVE or name in ("dot_general", "conv_general_dilated"):
      zs = set()
      for v in ins:
        z = self.zset(v)
        if z is _ALL:
          zs = _ALL
          break
        zs |= z
      if name == "dot_general":
        self.contraction(eqn)
      if name == "conv_general_dilated":
        self.conv_contraction(eqn)
      return self.set_zero(outs[0], zs)
    if name in _ADDITIVE or name == "select_n":
      operands = ins[1:] if name == "select_n" else ins
      zs = _ALL
      for v in operands:
        z = self.zset(v)
        if z is _ALL:
          continue
        zs = set(z) if zs is _ALL else zs & z
      return self.set_zero(outs[0], zs)
    if name == "div":
      return self.set_zero(outs[0], self.zset(ins[0]))
    if name in _REDUCTIONS or name in _CUMULATIVE:
      if name in _CUMULATIVE:
        dims = [eqn.params["axis"]]
      else:
        dims = eqn.params["axes"]
      for d in dims:
        cls = self.axis_classes(ins[0], d % len(ins[0].aval.shape))
        self.atoms_mark_classes(cls, f"reduced by {name}" if name in _REDUCTIONS else f"accumulated by {name}")
      return self.set_zero(outs[0], self.zset(ins[0]) if name not in ("argmax", "argmin") else set())
    if name.startswith("reduce_window") or name in ("slice", "split", "pad", "dynamic_slice", "squeeze",
                                                      "gather", "concatenate", "dynamic_update_slice"):
      base = self.zset(ins[0])
      if name == "concatenate":
        base = _ALL
        for v in ins:
          z = self.zset(v)
          base = z if base is _ALL else (base if z is _ALL else base & z)
      for v in outs:
        self.set_zero(v, base)
      return
    for v in outs:
      self.set_zero(v, set())

  def atoms_mark_classes(self, classes, reason) -> None:
    for c in classes:
      self.atoms.reasons[c].add(reason)

  def _exit(self, cls, operands) -> None:
    """A contraction over class ``cls``: exact if an operand vanishes along it."""
    self.exits[cls] += 1
    vanishing = [v for v in operands if self.zset(v) is _ALL or cls in self.zset(v)]
    views = [self.view_of(v) for v in vanishing if self.view_of(v) is not None]
    if len(views) < len(vanishing):
      self.silent_exits[cls] += 1
    if views:
      # zeroing the parameter it is contracted against removes the dimension
      self.consumers[cls].update(views)
    elif vanishing:
      # it vanishes only once every parameter slice that produces it is zero
      self.needs_all.add(cls)
    else:
      self.atoms.reasons[cls].add("contracted between activations")

  def contraction(self, eqn) -> None:
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    lhs, rhs = eqn.invars
    for i in lc:
      for cls in self.axis_classes(lhs, i):
        self._exit(cls, (lhs, rhs))
    if self.view_of(lhs) is None and self.view_of(rhs) is None:
      for i in lb:
        self.heads.update(self.axis_classes(lhs, i))

  def conv_contraction(self, eqn) -> None:
    p = eqn.params
    if p.get("feature_group_count", 1) != 1 or p.get("batch_group_count", 1) != 1:
      return
    lhs, rhs = eqn.invars
    for cls in self.axis_classes(lhs, p["dimension_numbers"].lhs_spec[1]):
      self._exit(cls, (lhs, rhs))


# --------------------------------------------------------------------------- public
def discover_groups(
    fn: Callable[..., Any],
    params: Any,
    *example_args: Any,
    kinds: Sequence[str] = DEFAULT_KINDS,
    exclude: Sequence[str] = (),
    couple: Sequence[tuple] = (),
) -> Groups:
  """Find the coupled groups of ``fn(params, *example_args)`` from its jaxpr.

  Args:
    fn: the forward pass, ``fn(params, *args)``; every output is treated as a
      model output (return the predictions only, not updated statistics).
    params: the parameters the groups live in (a pytree; ``nnx.State`` paths
      are normalised, NNX's ``value`` attribute is not a component).
    *example_args: example inputs (arrays or ``jax.ShapeDtypeStruct``; the
      batch size does not matter).
    kinds: which families to offer, among ``"units"`` (hidden units,
      channels), ``"heads"`` (attention heads), ``"inputs"`` (features of the
      inputs). Default: units and heads.
    exclude: glob patterns on leaf paths; a family with a matching member is
      not offered (e.g. ``("*/Dense_0/*",)``).
    couple: extra couplings the computation does not show, as pairs
      ``((path_a, axis_a), (path_b, axis_b))`` of parameter axes of the same
      size (e.g. parameters shared by construction).

  Returns:
    A :class:`~rmda_jax.structure.Groups`: the disjoint families offered,
    the dimensions not offered with the reasons, and unknown primitives.

  Raises:
    ValueError: an unknown kind, or a ``couple`` entry naming no leaf.
  """
  bad = [k for k in kinds if k not in KIND_ORDER]
  if bad:
    raise ValueError(f"kinds must be among {KIND_ORDER}, got {list(kinds)}.")
  traced = trace(fn, params, *example_args, couple=couple)
  atoms, semantics, paths = traced.atoms, traced.semantics, traced.paths

  # every parameter axis: (class, Slice)
  by_class = collections.defaultdict(list)
  for i in range(traced.n_params):
    for axis, leaves in enumerate(traced.axis_atoms(i)):
      sizes = [atoms.sizes[a] for a in leaves]
      for position, a in enumerate(leaves):
        by_class[atoms.find(a)].append((i, _canonical(paths[i], axis, sizes, position)))

  candidates, unprunable = [], []
  for cls, members in by_class.items():
    reasons = set(atoms.reasons[cls])
    leaf_ids = [i for i, _ in members]
    if len(set(leaf_ids)) != len(leaf_ids):
      reasons.add("appears on two axes of one leaf")
    if not reasons and not semantics.exits[cls]:
      reasons.add("never contracted (unused, or only passed through)")
    size = atoms.sizes[cls]
    slices = tuple(s for _, s in sorted(members, key=lambda m: m[0]))
    if reasons:
      unprunable.append(Unprunable(size, slices, tuple(sorted(reasons))))
      continue
    kind = "inputs" if cls in traced.input_classes else "heads" if cls in semantics.heads else "units"
    candidates.append((cls, kind, size, sorted(members, key=lambda m: m[0])))

  order = lambda c: (KIND_ORDER.index(c[1]), semantics.first_seen.get(c[0], 1 << 30))
  candidates.sort(key=order)
  owner: dict = {}
  offered = []
  deferred = []
  for cls, kind, size, members in candidates:
    if kind not in kinds or any(fnmatch.fnmatchcase(paths[i], pat) for i, _ in members for pat in exclude):
      why = "excluded" if kind in kinds else f"kind {kind} not asked for"
      unprunable.append(Unprunable(size, tuple(s for _, s in members), (why,)))
      continue
    if cls in semantics.needs_all:
      deferred.append((cls, kind, size, members))
      continue
    needed = semantics.consumers[cls]
    taken = [paths[i] for i in needed if i in owner]
    if taken:
      unprunable.append(Unprunable(size, tuple(s for _, s in members),
                                   (f"its consumer {taken[0]} belongs to {owner[paths.index(taken[0])]}",)))
      continue
    for i in needed:
      owner[i] = _name(paths, members, semantics.consumers[cls], kind)
    offered.append((cls, kind, size, members))
  families = []
  for cls, kind, size, members in offered:
    name = _name(paths, members, semantics.consumers[cls], kind)
    mine = [s for i, s in members if owner.setdefault(i, name) == name]
    consumers = tuple(paths[i] for i in sorted(semantics.consumers[cls]))
    families.append(Family(name, kind, size, tuple(mine), consumers=consumers))
  for cls, kind, size, members in deferred:
    name = _name(paths, members, semantics.consumers[cls], kind)
    taken = [paths[i] for i, _ in members if i in owner]
    if taken:
      unprunable.append(Unprunable(size, tuple(s for _, s in members),
                                   (f"needs all its leaves, but {taken[0]} belongs to {owner[paths.index(taken[0])]}",)))
      continue
    for i, _ in members:
      owner[i] = name
    families.append(Family(name, kind, size, tuple(s for _, s in members)))
  families = _unique_names(families)
  return Groups(tuple(families), tuple(unprunable), tuple(traced.graph.unknown),
                tuple(zip(paths, traced.shapes[:traced.n_params])))


@dataclasses.dataclass
class Traced:
  """A forward pass traced to a jaxpr, its dimensions linked (the dependency graph).

  Attributes:
    jaxpr: the ``ClosedJaxpr`` of ``flat(param_leaves, extra_leaves, *args)``.
    atoms, graph, semantics: the union-find of dimensions, the dimension of
      every variable, and the exits / zero sets / kinds.
    paths, shapes: of the parameter leaves, then the extra leaves.
    n_params, n_extras: how many of each.
    input_classes: the dimensions of the example inputs.
    out_tree, args_tree: the structure of ``fn``'s output and of the example args.
  """

  jaxpr: Any
  atoms: _Atoms
  graph: _Graph
  semantics: _Semantics
  paths: list
  shapes: list
  n_params: int
  n_extras: int
  input_classes: set
  out_tree: Any = None
  args_tree: Any = None

  def axis_atoms(self, leaf: int) -> list:
    """Per axis of parameter (or extra) leaf ``leaf``, its leaf atoms."""
    var = self.jaxpr.jaxpr.invars[leaf]
    return [self.atoms.leaves(axis) for axis in self.graph.axes(var)]

  def class_slices(self, cls: int) -> list:
    """``(leaf index, Slice)`` of every parameter and extra axis carrying dimension ``cls``."""
    out = []
    for i in range(self.n_params + self.n_extras):
      for axis, atoms in enumerate(self.axis_atoms(i)):
        sizes = [self.atoms.sizes[a] for a in atoms]
        for position, a in enumerate(atoms):
          if self.atoms.find(a) == cls:
            out.append((i, _canonical(self.paths[i], axis, sizes, position)))
    return out

  def silent_when_produced_zero(self, cls: int) -> bool:
    """Whether the dimension vanishes at every exit once the slices that produce
    it are zero (ReLU, GELU, pooling and norms with zero scale and shift keep a
    zero unit zero)."""
    exits = self.semantics.exits[cls]
    return exits > 0 and self.semantics.silent_exits[cls] == exits

  def class_of(self, member: Slice) -> int:
    """The dimension (class root) of a family member's group index."""
    i = self.paths.index(member.path)
    atoms = self.axis_atoms(i)[member.axis]
    sizes = [self.atoms.sizes[a] for a in atoms]
    split = member.split or (self.shapes[i][member.axis],)
    before = math.prod(split[:member.position])
    n = split[member.position]
    for k, a in enumerate(atoms):
      if math.prod(sizes[:k]) == before and sizes[k] == n:
        return self.atoms.find(a)
    raise ValueError(f"{member.describe()} is not a dimension of the computation (its axis is {sizes}).")


def trace(fn: Callable[..., Any], params: Any, *example_args: Any, extras: Any = None,
          couple: Sequence[tuple] = ()) -> Traced:
  """Trace ``fn(params, *args)`` (or ``fn(params, extras, *args)``) and link its dimensions.

  ``extras`` are arrays the computation reads besides the params (e.g.
  BatchNorm statistics): their dimensions are followed, so compaction slices
  them too, but they are never regularized.
  """
  keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
  extra_keyed, extra_def = jax.tree_util.tree_flatten_with_path(extras) if extras is not None else ([], None)
  paths = [group_rules.path_to_str(kp) for kp, _ in keyed] + \
          [group_rules.path_to_str(kp) for kp, _ in extra_keyed]
  shapes = [tuple(np.shape(x)) for _, x in keyed + extra_keyed]
  abstract = lambda pairs: [jax.ShapeDtypeStruct(np.shape(x), jax.numpy.result_type(x)) for _, x in pairs]
  if extras is None:
    flat_fn = lambda leaves, extra, *args: fn(jax.tree_util.tree_unflatten(treedef, leaves), *args)
  else:
    flat_fn = lambda leaves, extra, *args: fn(jax.tree_util.tree_unflatten(treedef, leaves),
                                              jax.tree_util.tree_unflatten(extra_def, extra), *args)
  closed, out_shape = jax.make_jaxpr(flat_fn, return_shape=True)(abstract(keyed), abstract(extra_keyed),
                                                                  *example_args)
  jaxpr = closed.jaxpr
  n_params, n_extras = len(keyed), len(extra_keyed)
  param_vars = {v: i for i, v in enumerate(jaxpr.invars[:n_params])}

  atoms = _Atoms()
  graph = _Graph(atoms)
  for v in jaxpr.invars + jaxpr.constvars:
    graph.axes(v)
  index_of = {p: i for i, p in enumerate(paths[:n_params])}
  for entry in couple:
    (pa, aa), (pb, ab) = entry
    for p in (pa, pb):
      if p not in index_of:
        raise ValueError(f"couple: no leaf {p!r} in params (leaves: {', '.join(paths[:8])}...).")
    va, vb = jaxpr.invars[index_of[pa]], jaxpr.invars[index_of[pb]]
    graph.link(graph.axes(va)[aa], graph.axes(vb)[ab], "a declared coupling")
  graph.run(jaxpr)

  semantics = _Semantics(graph, param_vars)
  semantics.run(jaxpr)
  for v in jaxpr.outvars:
    if not isinstance(v, jcore.Literal):
      semantics.atoms_mark_classes(semantics.classes(v), "a model output")
  input_classes = set()
  for v in jaxpr.invars[n_params + n_extras:]:
    input_classes.update(semantics.classes(v))
  return Traced(closed, atoms, graph, semantics, paths, shapes, n_params, n_extras, input_classes,
                jax.tree_util.tree_structure(out_shape), jax.tree_util.tree_structure(example_args))


def _canonical(path: str, axis: int, sizes: Sequence[int], position: int) -> Slice:
  pre = math.prod(sizes[:position])
  post = math.prod(sizes[position + 1:])
  n = sizes[position]
  if pre == 1 and post == 1:
    return Slice(path, axis)
  if pre == 1:
    return Slice(path, axis, (n, post), 0)
  if post == 1:
    return Slice(path, axis, (pre, n), 1)
  return Slice(path, axis, (pre, n, post), 1)


def _module(path: str) -> str:
  return path.rsplit("/", 1)[0] if "/" in path else path


def _name(paths, members, consumers, kind) -> str:
  """The layer a family belongs to: the module holding all its leaves, else
  the module of its first producer kernel (the layer whose outputs the units
  are), else of its first producer."""
  if kind == "inputs":
    return "inputs of " + _module(paths[min(consumers)]) if consumers else "inputs"
  modules = [_module(paths[i]).split("/") for i, _ in members]
  common = []
  for parts in zip(*modules):
    if len(set(parts)) != 1:
      break
    common.append(parts[0])
  if common and len(members) > 1:
    return "/".join(common)
  producers = [paths[i] for i, _ in members if i not in consumers]
  kernels = [p for p in producers if p.rsplit("/", 1)[-1] == "kernel"]
  if kernels or producers:
    return _module((kernels or producers)[0])
  return _module(paths[members[0][0]]) + " (consumer side)"


def _unique_names(families):
  seen = collections.Counter(f.name for f in families)
  counts = collections.Counter()
  out = []
  for f in families:
    if seen[f.name] > 1:
      counts[f.name] += 1
      f = dataclasses.replace(f, name=f"{f.name} #{counts[f.name]}")
    out.append(f)
  return out


def discover_linen(model, params, *example_args, variables: Optional[dict] = None, method=None,
                   **kwargs) -> Groups:
  """:func:`discover_groups` for a linen module: ``model.apply({"params": p, **variables}, *args)``.

  ``variables`` holds the other collections (e.g. ``{"batch_stats": ...}``,
  closed over; use the module's inference mode, e.g.
  ``use_running_average=True``); ``kwargs`` go to :func:`discover_groups`
  (``kinds``, ``exclude``, ``couple``).
  """
  options = {k: kwargs.pop(k) for k in ("kinds", "exclude", "couple") if k in kwargs}
  extra = dict(variables or {})
  extra.pop("params", None)

  def fn(p, *args):
    return model.apply({"params": p, **extra}, *args, method=method, **kwargs)

  return discover_groups(fn, params, *example_args, **options)


def discover_nnx(model, *example_args, wrt=None, **kwargs) -> Groups:
  """:func:`discover_groups` for an NNX module, over its ``nnx.Param`` state.

  The groups' paths are those of ``nnx.state(model, nnx.Param)`` (what
  ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` optimizes). Put the module in
  inference mode first (``model.eval()``) so BatchNorm uses its statistics.
  """
  from flax import nnx

  wrt = nnx.Param if wrt is None else wrt
  graphdef, params, rest = nnx.split(model, wrt, ...)

  def fn(p, *args):
    return nnx.merge(graphdef, p, rest)(*args)

  return discover_groups(fn, params, *example_args, **kwargs)
