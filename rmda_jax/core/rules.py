"""How a parameter leaf is cut into groups, and which leaves are regularized.

A *rule* says how one leaf of the params tree is regularized; ``None`` means
"not regularized". Three kinds exist, one per family of regularizer:

* :class:`GroupRule` (group-LASSO): a group is the slice obtained by fixing
  every axis *not* in ``reduce_axes``; the penalty is ``sum_g w_g ||x_g||_2``
  with ``w_g = sqrt(group size)`` unless a weight is given.
* :class:`Elementwise` (L1, elastic net): every entry is its own group.
* :class:`Matrix` (nuclear norm): the leaf is viewed as a matrix of shape
  ``(prod(shape[:-1]), shape[-1])``, so a Flax conv kernel ``(kh, kw, in, out)``
  becomes ``(kh * kw * in, out)``.

Rules are given per regularizer as ``None`` (the Flax-aware defaults below), a
callable ``(path, leaf) -> rule | None`` where ``path`` is the ``/``-joined key
path (``"params/Dense_0/kernel"``), or a pytree with the params' structure whose
leaves are rules or ``None``. :func:`by_path` builds a callable from glob
patterns.

Flax defaults (the papers' choices, translated from PyTorch layouts): every leaf
with ``ndim >= 2`` is regularized except biases (of any shape, e.g. the
``(heads, head_dim)`` biases of attention), norm scales and embeddings. A
Dense kernel ``(in, out)`` has one group per input feature (reduce axis 1), a
Conv kernel ``(kh, kw, in, out)`` one group per input channel (reduce axes
``(0, 1, 3)``); in general the group index is axis ``ndim - 2``, which fits
every ``nn.Conv`` (1-D, 2-D, 3-D). Attention projections (``DenseGeneral`` /
``LinearGeneral`` kernels of ``query``, ``key``, ``value``: ``(in, heads,
head_dim)``; ``out``: ``(heads, head_dim, out)``) have one group per head,
and other ``DenseGeneral`` kernels one group per input feature (axis 0).
``grouping="output"`` gives one group per output feature / filter (axis
``ndim - 1``) instead; heads stay heads. For groups that span several leaves
(a whole hidden unit, channel or head), see :func:`rmda_jax.discover_groups`.

**Stacked layers.** The params of a ``scan`` over layers (``nn.scan``,
``nnx.vmap`` + ``nnx.scan``) hold every layer in one leaf, ``(layers, in,
out)`` for a Dense kernel. A leaf's shape alone does not say so: a
``(layers, in, out)`` kernel reads as a 1-D conv kernel ``(width, in, out)``,
whose default groups (one per input channel, over the width) would mix
layers. :func:`per_layer` applies any rule to each layer of the leaves it is
told are stacked, never reducing over the layer axes: by the logical axis
names the params carry (``nn.scan(..., metadata_params={nn.PARTITION_NAME:
"layers"})``, ``nnx.vmap(..., transform_metadata={nnx.PARTITION_NAME:
"layers"})``, :func:`layer_axes_of`), or by explicit patterns. The groups of
:func:`rmda_jax.discover_groups` are per layer on stacked leaves by
themselves.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax

from rmda_jax.core import checks
from rmda_jax.core.trees import leaf_name, module_name, path_to_str

UNREGULARIZED_NAMES = ("embedding", "bias", "scale")


ATTENTION_INPUTS = ("query", "key", "value")


ATTENTION_OUTPUT = "out"


GENERAL_DENSE_PREFIXES = ("DenseGeneral", "LinearGeneral")


GROUPINGS = ("input", "output")


@dataclasses.dataclass(frozen=True)
class GroupRule:
  """Groups of a leaf for group-LASSO.

  Attributes:
    reduce_axes: axes summed inside a group's norm. ``()`` makes every entry
      its own group; all axes make the leaf a single group. Negative axes are
      allowed.
    weight: the group weight ``w_g``; ``None`` means ``sqrt(group size)``.
  """

  reduce_axes: tuple[int, ...]
  weight: float | None = None

  def __post_init__(self) -> None:
    object.__setattr__(
      self, "reduce_axes", checks.check_axes(self.reduce_axes, "GroupRule.reduce_axes")
    )
    if self.weight is not None:
      checks.check_scalar(self.weight, "GroupRule.weight", low=0.0, concrete=True)
      object.__setattr__(self, "weight", float(self.weight))


@dataclasses.dataclass(frozen=True)
class Elementwise:
  """Every entry of the leaf is penalized on its own (L1, elastic net)."""


@dataclasses.dataclass(frozen=True)
class Matrix:
  """The leaf is penalized as the matrix ``reshape(leaf, (-1, shape[-1]))``.

  Attributes:
    layer_axes: axes indexing the layers of a stacked leaf (not the last):
      each layer is a matrix of its own (the other axes, the last one as
      columns).
  """

  layer_axes: tuple[int, ...] = ()

  def __post_init__(self) -> None:
    object.__setattr__(self, "layer_axes", checks.check_axes(self.layer_axes, "Matrix.layer_axes"))


#: A per-leaf rule.
Rule = GroupRule | Elementwise | Matrix
#: A rule chosen per leaf: ``(path, leaf) -> rule | None``.
RuleFn = Callable[[str, Any], Rule | None]
#: What a regularizer's ``rules`` accepts: None (the defaults), a :data:`RuleFn`, or a tree
#: of rules (or None) matching the params.
RuleSpec = Any


def is_default_regularized(path: str, leaf: Any) -> bool:
  """Whether the Flax-aware default rules regularize this leaf."""
  return len(jax.numpy.shape(leaf)) >= 2 and leaf_name(path) not in UNREGULARIZED_NAMES


def input_wise(ndim: int) -> GroupRule:
  """One group per index of axis ``ndim - 2`` (input feature / input channel)."""
  return GroupRule(tuple(a for a in range(ndim) if a != ndim - 2))


def output_wise(ndim: int) -> GroupRule:
  """One group per index of the last axis (output feature / filter)."""
  return GroupRule(tuple(range(ndim - 1)))


def head_rule(path: str, ndim: int) -> GroupRule | None:
  """One group per head for an attention projection kernel, else None."""
  if ndim != 3:
    return None
  name = module_name(path)
  if name in ATTENTION_INPUTS:
    return GroupRule((0, 2))  # (in, heads, head_dim)
  if name == ATTENTION_OUTPUT:
    return GroupRule((1, 2))  # (heads, head_dim, out)
  return None


def default_group_rule(grouping: str = "input") -> RuleFn:
  """The Flax-aware default group-LASSO rule as a ``(path, leaf)`` callable."""
  if grouping not in GROUPINGS:
    raise ValueError(f"grouping must be one of {GROUPINGS}, got {grouping!r}.")
  make = input_wise if grouping == "input" else output_wise

  def rule(path: str, leaf: Any) -> GroupRule | None:
    if not is_default_regularized(path, leaf):
      return None
    ndim = len(jax.numpy.shape(leaf))
    heads = head_rule(path, ndim)
    if heads is not None:
      return heads
    if ndim >= 3 and module_name(path).startswith(GENERAL_DENSE_PREFIXES):
      return GroupRule(tuple(range(1, ndim))) if grouping == "input" else output_wise(ndim)
    return make(ndim)

  return rule


def default_elementwise_rule(path: str, leaf: Any) -> Elementwise | None:
  """The default L1 / elastic-net rule: every entry of a default-regularized leaf."""
  return Elementwise() if is_default_regularized(path, leaf) else None


def default_matrix_rule(path: str, leaf: Any) -> Matrix | None:
  """The default nuclear-norm rule: every default-regularized leaf as a matrix."""
  return Matrix() if is_default_regularized(path, leaf) else None


def by_path(patterns: Mapping[str, Rule | None], default: RuleFn) -> RuleFn:
  """Rules chosen by glob patterns on the ``/``-joined key path.

  The first pattern (in insertion order) that matches a path decides its rule;
  a value of ``None`` excludes the leaf. Paths that match nothing use
  ``default``. A pattern that matches no leaf of the params is an error
  (raised where the rules are laid against the params, e.g. ``tx.init``):
  a typo never silently does nothing.

  Example:
    >>> from rmda_jax.core import rules
    >>> rule = rules.by_path({"*/Dense_1/kernel": None,
    ...                        "*/Conv_0/kernel": rules.output_wise(4)},
    ...                       default=rules.default_group_rule())
  """
  return PathRules(tuple(patterns.items()), default)


@dataclasses.dataclass(frozen=True)
class PathRules:
  """The callable :func:`by_path` returns: ``(path, leaf) -> rule``."""

  patterns: tuple[tuple[str, Rule | None], ...]
  default: RuleFn

  def __call__(self, path: str, leaf: Any) -> Rule | None:
    for pattern, chosen in self.patterns:
      if fnmatch.fnmatchcase(path, pattern):
        return chosen
    return self.default(path, leaf)

  def unmatched(self, paths: Sequence[str]) -> list[str]:
    """The patterns that match none of ``paths``."""
    return [p for p, _ in self.patterns if not any(fnmatch.fnmatchcase(path, p) for path in paths)]


@dataclasses.dataclass(frozen=True)
class PerLayer:
  """The callable :func:`per_layer` returns: a rule applied to each layer of stacked leaves.

  Attributes:
    layer_axes: ``(glob pattern, layer axes)`` pairs on leaf paths, first
      match wins.
    rule: the rule of one layer: a :data:`RuleFn`, or None for the
      regularizer's default (bound by :meth:`with_default`).
  """

  layer_axes: tuple[tuple[str, tuple[int, ...]], ...]
  rule: RuleFn | None = None

  def with_default(self, default: RuleFn) -> PerLayer:
    """This, with ``default`` as the rule of one layer where none was given."""
    return self if self.rule is not None else dataclasses.replace(self, rule=default)

  def axes_of(self, path: str) -> tuple[int, ...]:
    """The layer axes of the leaf at ``path`` (``()`` for a leaf that is not stacked)."""
    for pattern, axes in self.layer_axes:
      if fnmatch.fnmatchcase(path, pattern):
        return axes
    return ()

  def unmatched(self, paths: Sequence[str]) -> list[str]:
    """The patterns that match none of ``paths`` (and those of the rule of one layer)."""
    inner = self.rule.unmatched(paths) if isinstance(self.rule, (PathRules, PerLayer)) else []
    mine = [
      p for p, _ in self.layer_axes if not any(fnmatch.fnmatchcase(path, p) for path in paths)
    ]
    return mine + inner

  def __call__(self, path: str, leaf: Any) -> Rule | None:
    assert self.rule is not None, "resolve_rules binds the regularizer's default rule"
    shape = tuple(jax.numpy.shape(leaf))
    ndim = len(shape)
    axes = self.axes_of(path)
    if not axes:
      return self.rule(path, leaf)
    if any(not -ndim <= a < ndim for a in axes) or len({a % ndim for a in axes}) != len(axes):
      raise ValueError(
        f"rules: layer axes {axes} of leaf {path!r} do not fit its shape {shape} "
        f"(distinct axes in {-ndim} .. {ndim - 1})."
      )
    layers = sorted(a % ndim for a in axes)
    rest = [a for a in range(ndim) if a not in layers]
    one_layer = jax.ShapeDtypeStruct(
      tuple(shape[a] for a in rest), jax.numpy.result_type(getattr(leaf, "dtype", float))
    )
    rule = self.rule(path, one_layer)
    if isinstance(rule, GroupRule):
      inner = len(rest)
      if any(not -inner <= a < inner for a in rule.reduce_axes):
        raise ValueError(
          f"rules: the rule of one layer of {path!r} reduces axes {rule.reduce_axes}, out of "
          f"range for the layer's shape {one_layer.shape}."
        )
      return GroupRule(tuple(rest[a % inner] for a in rule.reduce_axes), rule.weight)
    if isinstance(rule, Matrix):
      return Matrix(tuple(layers) + tuple(rest[a] for a in rule.layer_axes))
    return rule


def per_layer(
  layer_axes: Any, rule: RuleFn | None = None, *, names: Sequence[str] = ("layers",)
) -> PerLayer:
  """Rules applied to each layer of stacked leaves: groups never span two layers.

  Args:
    layer_axes: which leaves are stacked, and along which axes: a mapping
      from glob patterns on leaf paths to an axis or a tuple of axes
      (``{"*/layers/*": 0}``), or the params carrying logical axis names
      (see :func:`layer_axes_of`), whose axes named in ``names`` are the
      layer axes.
    rule: the rule of one layer, a ``(path, leaf) -> rule`` callable that
      sees the leaf with its layer axes removed; None: the regularizer's
      default rule.
    names: the logical names of layer axes, when ``layer_axes`` are params.

  Returns:
    A :data:`RuleFn` for any regularizer's ``rules``: a :class:`GroupRule`
    of one layer never reduces a layer axis, a :class:`Matrix` gets the
    layer axes (one matrix per layer), and other rules are unchanged. A
    pattern that matches no leaf is an error where the rules meet the params.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> from rmda_jax.core import rules
    >>> params = {"layers": {"kernel": jnp.ones((4, 8, 3))}}   # 4 stacked (8, 3) kernels
    >>> rule = rules.per_layer({"layers/*": 0}).with_default(rules.default_group_rule())
    >>> rule("layers/kernel", params["layers"]["kernel"])   # one group per layer and input
    GroupRule(reduce_axes=(2,), weight=None)
  """
  if isinstance(layer_axes, Mapping) and all(
    isinstance(v, int) or (isinstance(v, (tuple, list)) and all(isinstance(a, int) for a in v))
    for v in layer_axes.values()
  ):
    pairs = tuple(
      (str(p), (int(a),) if isinstance(a, int) else tuple(int(b) for b in a))
      for p, a in layer_axes.items()
    )
  else:
    pairs = tuple((p, a) for p, a in layer_axes_of(layer_axes, names).items())
  if rule is not None and not callable(rule):
    raise TypeError(
      f"per_layer: rule must be a (path, leaf) -> rule callable or None, got {rule!r}."
    )
  return PerLayer(pairs, rule)


def layer_axes_of(params: Any, names: Sequence[str] = ("layers",)) -> dict[str, tuple[int, ...]]:
  """Per leaf path, its axes whose logical name is in ``names`` (leaves with none left out).

  ``params`` carries the names as Flax puts them: linen boxes
  (``nn.with_logical_partitioning``, ``nn.Partitioned``: the params as
  ``model.init`` returns them, before ``nn.unbox``), NNX variables with
  ``sharding`` metadata (an ``nnx.State``), or a tree of
  ``jax.sharding.PartitionSpec`` (``nn.get_partition_spec``,
  ``nnx.get_partition_spec``). Paths are those of the unboxed params.
  """
  wanted = set(names)

  def is_named(x: Any) -> bool:
    return isinstance(x, jax.sharding.PartitionSpec) or _axis_names(x) is not None

  keyed = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_named)[0]
  out = {}
  for key_path, leaf in keyed:
    axis_names = tuple(leaf) if isinstance(leaf, jax.sharding.PartitionSpec) else _axis_names(leaf)
    if not axis_names:
      continue
    axes = tuple(i for i, n in enumerate(axis_names) if n in wanted)
    if axes:
      out[path_to_str(key_path)] = axes
  return out


def _axis_names(x: Any) -> tuple | None:
  """The logical axis names a Flax box or NNX variable carries, or None."""
  names = getattr(x, "names", None)  # linen nn.Partitioned / LogicallyPartitioned
  if isinstance(names, (tuple, list)):
    return tuple(names)
  get_metadata = getattr(x, "get_metadata", None)  # nnx.Variable
  if callable(get_metadata):
    metadata = get_metadata()
    for key in ("sharding", "sharding_names", "out_sharding"):
      value = metadata.get(key) if isinstance(metadata, Mapping) else None
      if isinstance(value, (tuple, list, jax.sharding.PartitionSpec)):
        return tuple(value)
  return None


def _is_rule_leaf(x: Any) -> bool:
  return x is None or isinstance(x, (GroupRule, Elementwise, Matrix))


def resolve_rules(
  spec: RuleSpec, params: Any, default: RuleFn, expected: type, argname: str = "rules"
) -> tuple[list[str], list[Any], list[Any], Any]:
  """Rules for every leaf of ``params``, validated against the leaves' shapes.

  Args:
    spec: None (``default``), a :data:`RuleFn`, or a tree of rules.
    params: the params tree.
    default: the rule function used when ``spec`` is None.
    expected: the rule type the regularizer takes.
    argname: the name of the argument, for the messages.

  Returns:
    ``(paths, leaves, rules, treedef)`` with ``rules[i]`` the normalized rule
    of ``leaves[i]`` (group axes made non-negative) or ``None``.

  Raises:
    ValueError: when a rule tree does not match ``params``, a rule has the
      wrong kind, or group axes do not fit a leaf's shape.
  """
  keyed, treedef = jax.tree_util.tree_flatten_with_path(params)
  paths = [path_to_str(kp) for kp, _ in keyed]
  leaves = [leaf for _, leaf in keyed]
  if spec is None:
    spec = default
  if isinstance(spec, PerLayer):
    spec = spec.with_default(default)
  if callable(spec) and not _is_rule_leaf(spec):
    rules = [spec(p, x) for p, x in zip(paths, leaves)]
    unmatched = spec.unmatched(paths) if isinstance(spec, (PathRules, PerLayer)) else []
    if unmatched:
      raise ValueError(
        f"{argname}: the pattern(s) {unmatched} match no leaf of the params "
        f"(leaves: {', '.join(paths[:8])}{', ...' if len(paths) > 8 else ''})."
      )
  else:
    # matched by path, so a plain dict of rules fits an nnx.State (or a
    # FrozenDict) holding the same leaves
    keyed_rules = jax.tree_util.tree_flatten_with_path(spec, is_leaf=_is_rule_leaf)[0]
    by_path_str = {path_to_str(kp): r for kp, r in keyed_rules}
    missing = [p for p in paths if p not in by_path_str]
    extra = [p for p in by_path_str if p not in set(paths)]
    bad = [r for r in by_path_str.values() if not _is_rule_leaf(r)]
    if missing or extra or bad or len(by_path_str) != len(keyed_rules):
      raise ValueError(
        f"{argname}: the rule tree does not match the params tree"
        + (f"; no rule for {missing[:4]}" if missing else "")
        + (f"; rules for leaves the params do not have: {extra[:4]}" if extra else "")
        + (f"; not rules: {bad[:2]}" if bad else "")
        + ".\n"
        f"  params structure: {treedef}\n"
        "Give one rule (or None) per params leaf, or a callable (path, leaf) -> rule."
      )
    rules = [by_path_str[p] for p in paths]
  return (
    paths,
    leaves,
    [_check_rule(r, p, x, expected, argname) for r, p, x in zip(rules, paths, leaves)],
    treedef,
  )


def _check_rule(rule: Any, path: str, leaf: Any, expected: type, argname: str) -> Any:
  """The normalized rule of a leaf (ValueError when it does not fit).

  None for no rule and for a zero-size leaf, which has nothing to regularize.
  """
  if rule is None:
    return None
  if not isinstance(rule, expected):
    raise ValueError(
      f"{argname}: leaf {path!r} got a rule of type {type(rule).__name__}; "
      f"this regularizer takes {expected.__name__} or None."
    )
  shape = jax.numpy.shape(leaf)
  ndim = len(shape)
  if isinstance(rule, GroupRule):
    axes = []
    for a in rule.reduce_axes:
      if not -ndim <= a < ndim:
        raise ValueError(
          f"{argname}: reduce axis {a} of leaf {path!r} is out of range for its "
          f"shape {shape} (accepted: {-ndim} .. {ndim - 1})."
        )
      axes.append(a % ndim)
    if len(set(axes)) != len(axes):
      raise ValueError(f"{argname}: leaf {path!r} has repeated reduce axes {rule.reduce_axes}.")
    rule = GroupRule(tuple(sorted(axes)), rule.weight)
  if isinstance(rule, Matrix) and ndim < 2:
    raise ValueError(
      f"{argname}: the nuclear norm needs a leaf with ndim >= 2, but {path!r} has shape {shape}."
    )
  if isinstance(rule, Matrix) and rule.layer_axes:
    layers = sorted({a % ndim for a in rule.layer_axes if -ndim <= a < ndim})
    if len(layers) != len(rule.layer_axes) or ndim - 1 in layers or ndim - len(layers) < 2:
      raise ValueError(
        f"{argname}: layer axes {rule.layer_axes} of leaf {path!r} (shape {shape}) must be "
        f"distinct axes in {-ndim} .. {ndim - 2}, not the last, leaving at least two."
      )
    rule = Matrix(tuple(layers))
  if math.prod(shape) == 0:
    return None
  return rule


def group_size(shape: Sequence[int], rule: GroupRule) -> int:
  """Entries in one group of a leaf of ``shape`` under ``rule``."""
  return int(math.prod(shape[a] for a in rule.reduce_axes))


def num_groups(shape: Sequence[int], rule: GroupRule) -> int:
  """Groups of a leaf of ``shape`` under ``rule``."""
  size = math.prod(shape)
  gsize = group_size(shape, rule)
  return 0 if gsize == 0 else size // gsize


def group_weight(shape: Sequence[int], rule: GroupRule) -> float:
  """``w_g``: the rule's weight, or ``sqrt(group size)`` by default."""
  if rule.weight is not None:
    return float(rule.weight)
  return math.sqrt(group_size(shape, rule))
