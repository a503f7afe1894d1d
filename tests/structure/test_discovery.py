"""Group discovery on small linen and NNX models.

Every model's families are listed by hand. Each listed family is first checked
on the function itself: once the group's consumer slices are zero, its unit
is gone (random values in the slices that compute the unit leave the outputs
unchanged). Then discovery must return exactly the listed families.
"""

import dataclasses
import functools
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rmda_jax import Slice
from rmda_jax.app import models

INPUT = "<input>"  # the model input, as a path of the arrays the checks edit
ATOL = 1e-5
FULL_KINDS = ("units", "heads", "inputs")


def discovery():
  from rmda_jax.structure import discovery as module

  return module


# ----------------------------------------------------------------------------
# Expectations and the independent check


@dataclasses.dataclass(frozen=True)
class Expected:
  """A hand-listed family and the slices that compute its unit.

  ``consumers`` contract the unit away; ``others`` are the remaining members
  (producer kernel, bias, norm params); ``upstream`` are slices that compute
  the unit but belong to another family or to the input.
  """

  kind: str
  size: int
  consumers: tuple
  others: tuple = ()
  upstream: tuple = ()
  whole: bool = False  # no parameter contracts it away: exact only once every member is zero

  @property
  def members(self):
    return self.consumers + self.others

  def key(self):
    return (self.kind, self.size, frozenset(slice_key(s) for s in self.members))


def slice_key(s):
  return (s.path, s.axis, tuple(s.split), s.position)


def family_key(family):
  return (family.kind, family.size, frozenset(slice_key(m) for m in family.members))


def set_index(a, s, j, values):
  """A copy of ``a`` with index ``j`` of slice ``s`` set to ``values``."""
  a = np.array(a, dtype=np.float32)
  b = a.reshape(s.expanded_shape(a.shape))
  index = [slice(None)] * b.ndim
  index[s.group_axis()] = j
  b[tuple(index)] = values(b[tuple(index)].shape) if callable(values) else values
  return b.reshape(a.shape)


def zero_index(a, s, j):
  return set_index(a, s, j, 0.0)


@dataclasses.dataclass
class Case:
  """A model: ``apply(arrays)`` runs it on flat params plus ``arrays[INPUT]``."""

  apply: Callable
  arrays: dict
  expected: list
  discover: Callable  # () -> Groups
  unprunable: tuple = ()  # leaves that must be among the unprunable dimensions' members

  def __post_init__(self):
    self._jitted = jax.jit(self.apply)

  def run(self, arrays):
    return np.asarray(self._jitted(arrays), dtype=np.float32)


def check_removed(case, family, j, seed):
  """Group ``j`` zero: the slices computing unit ``j`` no longer reach the outputs."""
  producers = family.others + family.upstream
  assert producers, "nothing computes the unit"

  def perturb(arrays, sign):
    rng = np.random.default_rng(seed)
    arrays = dict(arrays)
    for s in producers:
      arrays[s.path] = set_index(arrays[s.path], s, j, lambda shape: sign * rng.normal(size=shape))
    return arrays

  zeroed = dict(case.arrays)
  for s in family.members:
    zeroed[s.path] = zero_index(zeroed[s.path], s, j)
  np.testing.assert_allclose(case.run(perturb(zeroed, 1.0)), case.run(zeroed), atol=ATOL)
  # Not vacuous: with the consumers intact, a perturbation or its opposite sign
  # (a relu unit dead under one is alive under the other) moves the outputs.
  base = case.run(case.arrays)
  change = max(np.max(np.abs(case.run(perturb(case.arrays, sign)) - base)) for sign in (1.0, -1.0))
  assert change > 1e-3, f"unit {j} of {family.kind} {family.size} does not reach the outputs"


# ----------------------------------------------------------------------------
# Helpers for building cases


def flatten(tree, prefix=""):
  out = {}
  for k, v in tree.items():
    path = f"{prefix}/{k}" if prefix else str(k)
    if isinstance(v, dict):
      out.update(flatten(v, path))
    else:
      out[path] = np.asarray(v, dtype=np.float32)
  return out


def unflatten(flat):
  tree = {}
  for path, v in flat.items():
    if path == INPUT:
      continue
    node = tree
    parts = path.split("/")
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = jnp.asarray(v)
  return tree


def jitter(flat, seed):
  """Params moved off their init (biases and norm params away from 0 and 1)."""
  rng = np.random.default_rng(seed)
  return {k: (v + 0.1 * rng.normal(size=v.shape)).astype(np.float32) for k, v in flat.items()}


def random_input(shape, seed=1):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def linen_case(
  model, x, expected, kinds=None, exclude=(), stats=None, unprunable=(), check_x=None, **kwargs
):
  """A linen model; ``stats``: randomized ``batch_stats``; ``check_x``: a larger batch for the
  checks."""
  variables = model.init(jax.random.PRNGKey(0), jnp.asarray(x), **kwargs)
  params = jitter(flatten(dict(variables["params"])), 2)
  extra = {}
  if stats is not None:
    rng = np.random.default_rng(3)
    flat = flatten(dict(variables["batch_stats"]))
    flat = {
      k: (rng.uniform(0.5, 1.5, v.shape) if k.endswith("var") else rng.normal(size=v.shape)).astype(
        np.float32
      )
      for k, v in flat.items()
    }
    extra = {"batch_stats": unflatten(flat)}

  def apply(arrays):
    return model.apply({"params": unflatten(arrays), **extra}, jnp.asarray(arrays[INPUT]), **kwargs)

  tree = unflatten(params)

  def discover():
    if kinds is None and not exclude:
      if extra:
        return discovery().discover_linen(model, tree, jnp.asarray(x), variables=extra, **kwargs)
      return discovery().discover_linen(model, tree, jnp.asarray(x), **kwargs)

    def fn(p, x):
      return model.apply({"params": p, **extra}, x, **kwargs)

    options = {"exclude": exclude} if exclude else {}
    if kinds is not None:
      options["kinds"] = kinds
    return discovery().discover_groups(fn, tree, jnp.asarray(x), **options)

  return Case(
    apply, {**params, INPUT: x if check_x is None else check_x}, expected, discover, unprunable
  )


def nnx_case(model, x, expected, kinds=None, unprunable=()):
  """An NNX model; with ``kinds``, discovery runs on its params as a plain dict."""
  graphdef, state, rest = nnx.split(model, nnx.Param, ...)
  params = jitter(flatten(nnx.to_pure_dict(state)), 2)
  nnx.replace_by_pure_dict(state, unflatten(params))
  nnx.update(model, state)

  def forward(pure, x):
    p = jax.tree.map(lambda a: a, state)
    nnx.replace_by_pure_dict(p, pure)
    return nnx.merge(graphdef, p, rest)(x)

  def apply(arrays):
    return forward(unflatten(arrays), jnp.asarray(arrays[INPUT]))

  def discover():
    if kinds is None:
      return discovery().discover_nnx(model, jnp.asarray(x))
    return discovery().discover_groups(forward, unflatten(params), jnp.asarray(x), kinds=kinds)

  return Case(apply, {**params, INPUT: x}, expected, discover, unprunable)


# ----------------------------------------------------------------------------
# Models


class LinenMLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(16)(x))
    x = nn.relu(nn.Dense(12)(x))
    return nn.Dense(4)(x)


class NnxMLP(nnx.Module):
  def __init__(self, rngs):
    self.fc0 = nnx.Linear(6, 16, rngs=rngs)
    self.fc1 = nnx.Linear(16, 12, rngs=rngs)
    self.fc2 = nnx.Linear(12, 4, rngs=rngs)

  def __call__(self, x):
    return self.fc2(nnx.relu(self.fc1(nnx.relu(self.fc0(x)))))


class ConvBN(nn.Module):
  """Conv(8) -> BN -> relu -> Conv(4) -> BN -> relu -> mean pool -> Dense(3)."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    for features in (8, 4):
      x = nn.Conv(features, (3, 3))(x)
      x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
    return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


class LinenResidual(nn.Module):
  """conv-BN-relu-conv-BN plus the input, relu."""

  @nn.compact
  def __call__(self, x, train: bool = True):
    h = nn.Conv(6, (3, 3), use_bias=False)(x)
    h = nn.relu(nn.BatchNorm(use_running_average=not train)(h))
    h = nn.Conv(x.shape[-1], (3, 3), use_bias=False)(h)
    h = nn.BatchNorm(use_running_average=not train)(h)
    return nn.relu(x + h)


class NnxResidual(nnx.Module):
  def __init__(self, rngs):
    self.conv0 = nnx.Conv(4, 6, (3, 3), use_bias=False, rngs=rngs)
    self.bn0 = nnx.BatchNorm(6, rngs=rngs)
    self.conv1 = nnx.Conv(6, 4, (3, 3), use_bias=False, rngs=rngs)
    self.bn1 = nnx.BatchNorm(4, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.bn0(self.conv0(x)))
    return nnx.relu(x + self.bn1(self.conv1(h)))


class LinenTransformer(nn.Module):
  """Pre-LN block: attention (2 heads of 4) and an MLP (32 units), two residual adds."""

  @nn.compact
  def __call__(self, x):
    x = x + nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8)(nn.LayerNorm()(x))
    h = nn.gelu(nn.Dense(32)(nn.LayerNorm()(x)))
    return x + nn.Dense(8)(h)


class NnxTransformer(nnx.Module):
  def __init__(self, rngs):
    self.ln1 = nnx.LayerNorm(8, rngs=rngs)
    self.attn = nnx.MultiHeadAttention(
      num_heads=2, in_features=8, qkv_features=8, decode=False, rngs=rngs
    )
    self.ln2 = nnx.LayerNorm(8, rngs=rngs)
    self.fc1 = nnx.Linear(8, 32, rngs=rngs)
    self.fc2 = nnx.Linear(32, 8, rngs=rngs)

  def __call__(self, x):
    x = x + self.attn(self.ln1(x))
    return x + self.fc2(nnx.gelu(self.fc1(self.ln2(x))))


class FusedAttention(nn.Module):
  """Pre-LN attention with one fused qkv projection, written out by hand."""

  heads: int = 2
  split: bool = False  # jnp.split instead of indexing the q/k/v axis

  @nn.compact
  def __call__(self, x):
    b, t, d = x.shape
    hd = d // self.heads
    qkv = nn.Dense(3 * d)(nn.LayerNorm()(x)).reshape(b, t, 3, self.heads, hd)
    if self.split:
      q, k, v = (a[:, :, 0] for a in jnp.split(qkv, 3, axis=2))
    else:
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(hd)
    weights = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, self.heads * hd)
    return x + nn.Dense(d)(out)


# ----------------------------------------------------------------------------
# Hand-listed families


def mlp_expected(names, inputs=False, exclude=False):
  """3-layer MLP with layers ``names``, input (16, 6): hidden 16 and 12, logits 4."""
  a, b, c = names
  k0, b0, k1, b1, k2 = f"{a}/kernel", f"{a}/bias", f"{b}/kernel", f"{b}/bias", f"{c}/kernel"
  x_in = Expected("inputs", 6, (Slice(k0, 0),), (), (Slice(INPUT, 1),))
  if inputs:
    hidden0 = Expected("units", 16, (Slice(k1, 0),), (Slice(b0, 0),), (Slice(k0, 1),))
  else:
    hidden0 = Expected("units", 16, (Slice(k1, 0),), (Slice(k0, 1), Slice(b0, 0)))
  hidden1 = Expected("units", 12, (Slice(k2, 0),), (Slice(b1, 0),), (Slice(k1, 1),))
  if exclude:  # "*Dense_1*" drops both hidden families
    return [x_in] if inputs else []
  return [hidden0, hidden1] + ([x_in] if inputs else [])


def lenet_expected():
  """LeNet5 on 28x28x1: the input channel has size 1 and gives no group."""
  return [
    Expected(
      "units",
      20,
      (Slice("Conv_1/kernel", 2),),
      (Slice("Conv_0/kernel", 3), Slice("Conv_0/bias", 0)),
    ),
    # conv 50 -> pool -> 4 x 4 x 50 flattened: channel c is the minor factor
    Expected(
      "units",
      50,
      (Slice("Dense_0/kernel", 0, (16, 50), 1),),
      (Slice("Conv_1/bias", 0),),
      (Slice("Conv_1/kernel", 3),),
    ),
    Expected(
      "units",
      500,
      (Slice("Dense_1/kernel", 0),),
      (Slice("Dense_0/bias", 0),),
      (Slice("Dense_0/kernel", 1),),
    ),
  ]


def vgg_expected(inputs=False):
  """VGG stages ((32,), (64,), (128, 128)) on 16x16x3, global mean pool, Dense head."""
  widths = (32, 64, 128, 128)
  families = []
  for i, n in enumerate(widths):
    consumer = (
      Slice(f"Conv_{i + 1}/kernel", 2) if i + 1 < len(widths) else Slice("Dense_0/kernel", 0)
    )
    kernel = Slice(f"Conv_{i}/kernel", 3)
    if i == 0 and not inputs:
      families.append(Expected("units", n, (consumer,), (kernel, Slice(f"Conv_{i}/bias", 0))))
    else:
      families.append(Expected("units", n, (consumer,), (Slice(f"Conv_{i}/bias", 0),), (kernel,)))
  if inputs:
    families.append(Expected("inputs", 3, (Slice("Conv_0/kernel", 2),), (), (Slice(INPUT, 3),)))
  return families


def conv_bn_expected():
  return [
    Expected(
      "units",
      8,
      (Slice("Conv_1/kernel", 2),),
      (
        Slice("Conv_0/kernel", 3),
        Slice("Conv_0/bias", 0),
        Slice("BatchNorm_0/scale", 0),
        Slice("BatchNorm_0/bias", 0),
      ),
    ),
    Expected(
      "units",
      4,
      (Slice("Dense_0/kernel", 0),),
      (Slice("Conv_1/bias", 0), Slice("BatchNorm_1/scale", 0), Slice("BatchNorm_1/bias", 0)),
      (Slice("Conv_1/kernel", 3),),
    ),
  ]


def residual_expected(conv0, bn0, conv1):
  """Only the internal channels (6); the 4-channel stream is the block's output."""
  return [
    Expected(
      "units",
      6,
      (Slice(f"{conv1}/kernel", 2),),
      (Slice(f"{conv0}/kernel", 3), Slice(f"{bn0}/scale", 0), Slice(f"{bn0}/bias", 0)),
    )
  ]


def transformer_expected(attn, fc1, fc2, heads=True, units=True, value_dim=False):
  """2 heads (q/k/v kernels and biases, out kernel) and 32 MLP units.

  ``value_dim``: without heads, the value head_dim (4) is contracted only by
  the out kernel, so it is a units family; so is the q/k head_dim, contracted
  between q and k: it vanishes once all of its q and k slices are zero.
  """
  families = []
  if heads:
    families.append(
      Expected(
        "heads",
        2,
        (Slice(f"{attn}/out/kernel", 0),),
        tuple(Slice(f"{attn}/{n}/kernel", 1) for n in ("query", "key", "value"))
        + tuple(Slice(f"{attn}/{n}/bias", 0) for n in ("query", "key", "value")),
      )
    )
  if units:
    families.append(
      Expected(
        "units",
        32,
        (Slice(f"{fc2}/kernel", 0),),
        (Slice(f"{fc1}/kernel", 1), Slice(f"{fc1}/bias", 0)),
      )
    )
  if value_dim:
    families.append(
      Expected(
        "units",
        4,
        (Slice(f"{attn}/out/kernel", 1),),
        (Slice(f"{attn}/value/kernel", 2), Slice(f"{attn}/value/bias", 1)),
      )
    )
    families.append(
      Expected(
        "units",
        4,
        (),
        tuple(Slice(f"{attn}/{n}/kernel", 2) for n in ("query", "key"))
        + tuple(Slice(f"{attn}/{n}/bias", 1) for n in ("query", "key")),
        whole=True,
      )
    )
  return families


def fused_expected():
  """Head h: Dense_0 (8, 24) columns as (3, 2, 4) factor 1; Dense_1 (8, 8) rows as (2, 4)
  factor 0."""
  return [
    Expected(
      "heads",
      2,
      (Slice("Dense_1/kernel", 0, (2, 4), 0),),
      (Slice("Dense_0/kernel", 1, (3, 2, 4), 1), Slice("Dense_0/bias", 0, (3, 2, 4), 1)),
    )
  ]


# ----------------------------------------------------------------------------
# Cases

MLP_X = (16, 6)
SEQ_X = (2, 5, 8)


def _mlp_linen(inputs=False, exclude=False):
  return linen_case(
    LinenMLP(),
    random_input(MLP_X),
    mlp_expected(("Dense_0", "Dense_1", "Dense_2"), inputs, exclude),
    kinds=FULL_KINDS if inputs else None,
    exclude=("*Dense_1*",) if exclude else (),
    unprunable=("Dense_2/bias",),
  )


def _mlp_nnx(inputs=False):
  return nnx_case(
    NnxMLP(nnx.Rngs(0)),
    random_input(MLP_X),
    mlp_expected(("fc0", "fc1", "fc2"), inputs),
    kinds=FULL_KINDS if inputs else None,
    unprunable=("fc2/bias",),
  )


def _lenet(inputs=False):
  return linen_case(
    models.LeNet5(),
    random_input((1, 28, 28, 1)),
    lenet_expected(),
    kinds=FULL_KINDS if inputs else None,
    unprunable=("Dense_1/bias",),
    check_x=random_input((8, 28, 28, 1)),
  )


def _vgg(inputs=False):
  return linen_case(
    models.VGG(),
    random_input((2, 16, 16, 3)),
    vgg_expected(inputs),
    kinds=FULL_KINDS if inputs else None,
    unprunable=("Dense_0/bias",),
  )


def _conv_bn():
  return linen_case(
    ConvBN(),
    random_input((2, 6, 6, 3)),
    conv_bn_expected(),
    stats=True,
    unprunable=("Dense_0/bias",),
    train=False,
  )


def _residual_linen(inputs=False):
  return linen_case(
    LinenResidual(),
    random_input((2, 6, 6, 4)),
    residual_expected("Conv_0", "BatchNorm_0", "Conv_1"),
    stats=True,
    kinds=FULL_KINDS if inputs else None,
    unprunable=("BatchNorm_1/scale",),
    train=False,
  )


def _residual_nnx():
  model = NnxResidual(nnx.Rngs(0))
  rng = np.random.default_rng(3)
  for bn in (model.bn0, model.bn1):
    n = bn.mean[...].shape
    bn.mean[...] = jnp.asarray(rng.normal(size=n), jnp.float32)
    bn.var[...] = jnp.asarray(rng.uniform(0.5, 1.5, n), jnp.float32)
  model.eval()
  return nnx_case(
    model,
    random_input((2, 6, 6, 4)),
    residual_expected("conv0", "bn0", "conv1"),
    unprunable=("bn1/scale",),
  )


def _transformer_linen(kinds=None, exclude=()):
  asked = kinds or ("units", "heads")
  return linen_case(
    LinenTransformer(),
    random_input(SEQ_X),
    transformer_expected(
      "MultiHeadDotProductAttention_0",
      "Dense_0",
      "Dense_1",
      heads="heads" in asked,
      units="units" in asked and not exclude,
      value_dim="heads" not in asked,
    ),
    kinds=kinds,
    exclude=exclude,
    unprunable=("LayerNorm_0/scale",),
  )


def _transformer_nnx():
  return nnx_case(
    NnxTransformer(nnx.Rngs(0)),
    random_input(SEQ_X),
    transformer_expected("attn", "fc1", "fc2"),
    unprunable=("ln1/scale",),
  )


def _fused(split=False, kinds=None):
  """Without heads, the head_dim shared by q, k and v is one family: q.k contracts it
  between activations, so it is exact only with all of its slices zero."""
  head_dim = [
    Expected(
      "units",
      4,
      (Slice("Dense_1/kernel", 0, (2, 4), 1),),
      (Slice("Dense_0/kernel", 1, (6, 4), 1), Slice("Dense_0/bias", 0, (6, 4), 1)),
      whole=True,
    )
  ]
  return linen_case(
    FusedAttention(split=split),
    random_input(SEQ_X),
    fused_expected() if kinds is None else head_dim,
    kinds=kinds,
    unprunable=("LayerNorm_0/scale",),
  )


CASES = {
  "mlp_linen": _mlp_linen,
  "mlp_linen_inputs": functools.partial(_mlp_linen, inputs=True),
  "mlp_nnx": _mlp_nnx,
  "mlp_nnx_inputs": functools.partial(_mlp_nnx, inputs=True),
  "lenet5": _lenet,
  "lenet5_inputs": functools.partial(_lenet, inputs=True),
  "vgg": _vgg,
  "vgg_inputs": functools.partial(_vgg, inputs=True),
  "conv_bn_linen": _conv_bn,
  "residual_linen": _residual_linen,
  "residual_linen_inputs": functools.partial(_residual_linen, inputs=True),
  "residual_nnx": _residual_nnx,
  "transformer_linen": _transformer_linen,
  "transformer_nnx": _transformer_nnx,
  "fused_qkv_index": _fused,
  "fused_qkv_split": functools.partial(_fused, split=True),
  # options
  "transformer_linen_heads_only": functools.partial(_transformer_linen, kinds=("heads",)),
  "transformer_linen_units_only": functools.partial(_transformer_linen, kinds=("units",)),
  "fused_qkv_units_only": functools.partial(_fused, kinds=("units",)),
  "transformer_linen_exclude": functools.partial(_transformer_linen, exclude=("*Dense_1*",)),
  "mlp_linen_exclude": functools.partial(_mlp_linen, exclude=True),
  "mlp_linen_inputs_exclude": functools.partial(_mlp_linen, inputs=True, exclude=True),
}
# Cases whose expected families another case already checks on the function.
SAME_FAMILIES = (
  "lenet5_inputs",
  "residual_linen_inputs",
  "fused_qkv_split",
  "transformer_linen_heads_only",
  "fused_qkv_units_only",
  "transformer_linen_exclude",
  "mlp_linen_exclude",
  "mlp_linen_inputs_exclude",
)


@functools.cache
def case(name):
  return CASES[name]()


# ----------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("name", [n for n in CASES if n not in SAME_FAMILIES])
def test_expected_families_remove_their_units(name):
  """Independent of discovery: each hand-listed group removes its unit once zero."""
  c = case(name)
  for f, family in enumerate(c.expected):
    if family.whole:
      continue
    for j in sorted({0, family.size // 2, family.size - 1}):
      check_removed(c, family, j, seed=100 * f + j)


@pytest.mark.parametrize("name", list(CASES))
def test_discovered_families(name):
  c = case(name)
  start = time.perf_counter()
  groups = c.discover()
  elapsed = time.perf_counter() - start
  got = [family_key(f) for f in groups.families]
  want = [e.key() for e in c.expected]
  missing = [k for k in want if k not in got]
  extra = [k for k in got if k not in want]
  assert not missing and not extra and len(got) == len(want), (
    f"missing: {missing}\nextra: {extra}\n{groups}"
  )
  unprunable = {m.path for u in groups.unprunable for m in u.members}
  for path in c.unprunable:
    assert path in unprunable, f"{path} not among the unprunable dimensions:\n{groups}"
  assert elapsed < 5.0, f"discovery took {elapsed:.1f} s"


def test_summary_names_kinds_layers_and_counts():
  groups = case("transformer_linen").discover()
  text = str(groups)
  assert "heads" in text and "units" in text
  for family in groups.families:
    assert family.name in text and str(family.size) in text
  assert "Dense_0" in text and "MultiHeadDotProductAttention_0" in text


# ----------------------------------------------------------------------------
# Nested jaxprs and unknown primitives


@jax.custom_vjp
def _scaled_identity(x):
  return x


_scaled_identity.defvjp(lambda x: (x, None), lambda _, g: (2 * g,))


def _nested_mlp(params, x):
  """A hidden layer through jax.jit, jax.checkpoint, a custom_jvp (relu) and a custom_vjp."""
  hidden = jax.jit(lambda x, w, b: x @ w + b)(x, params["w0"], params["b0"])
  hidden = jax.checkpoint(lambda h: jax.nn.relu(h))(hidden)
  hidden = _scaled_identity(hidden)
  return hidden @ params["w1"]


def test_nested_jaxprs_are_followed():
  rng = np.random.default_rng(0)
  params = {
    "w0": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
    "b0": jnp.zeros(7),
    "w1": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32),
  }
  groups = discovery().discover_groups(_nested_mlp, params, jnp.ones((2, 5)))
  assert [family_key(f) for f in groups.families] == [
    ("units", 7, frozenset({("w0", 1, (), 0), ("b0", 0, (), 0), ("w1", 0, (), 0)}))
  ]
  assert not groups.unknown_primitives


def test_an_unknown_primitive_keeps_its_dimensions_whole_and_is_named():
  rng = np.random.default_rng(0)
  params = {
    "w0": jnp.asarray(rng.normal(size=(5, 7)), jnp.float32),
    "w1": jnp.asarray(rng.normal(size=(7, 3)), jnp.float32),
  }

  def fn(p, x):
    hidden = jnp.sort(x @ p["w0"], axis=-1)  # sorts across the hidden units
    return hidden @ p["w1"]

  groups = discovery().discover_groups(fn, params, jnp.ones((2, 5)))
  assert groups.families == ()
  assert "sort" in groups.unknown_primitives
  reasons = [r for u in groups.unprunable for r in u.reasons if "w1" in {m.path for m in u.members}]
  assert any("sort" in r for r in reasons), groups
  assert "sort" in str(groups)
