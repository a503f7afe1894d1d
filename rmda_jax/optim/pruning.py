"""RigL: sparse training by periodic drop and grow (the pruning baseline).

RigL (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML
2020) trains a network whose chosen leaves keep a fixed number of nonzero
weights from the first step. Every ``update_every`` steps until ``end_step``,
in each sparse leaf it

* drops the ``n_t = round(f_t * active)`` active weights of smallest magnitude,
* grows the ``n_t`` weights of largest gradient magnitude among those not kept
  (the new connections start at zero),

with the drop fraction annealed by a cosine,
``f_t = drop_fraction / 2 * (1 + cos(pi * t / end_step))``. Between events the
masked weights, their gradients and their optimizer moments stay exactly zero.

:func:`rigl` wraps any optax optimizer; the per-leaf densities come from the
Erdos-Renyi-Kernel rule (:func:`erk_densities`) or are uniform.

Example:
  >>> import jax, jax.numpy as jnp, optax, rmda_jax
  >>> params = {"Dense_0": {"kernel": jnp.ones((64, 32)), "bias": jnp.zeros(32)}}
  >>> tx = rmda_jax.rigl(optax.sgd(0.1, momentum=0.9), sparsity=0.9, end_step=1000)
  >>> state = tx.init(params)
  >>> int(state.masks["Dense_0"]["kernel"].sum()), bool(state.masks["Dense_0"]["bias"].all())
  (205, True)

References:
  Evci, Gale, Menick, Castro & Elsen, "Rigging the Lottery: Making All
  Tickets Winners", ICML 2020, arXiv:1911.11134.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, trees
from rmda_jax.core import rules as rules_lib
from rmda_jax.core.groups import Groups
from rmda_jax.core.layout import GroupLayout
from rmda_jax.optim import chain
from rmda_jax.prox.group_norms import GroupLasso
from rmda_jax.prox.regularizer import Placement

DISTRIBUTIONS = ("erk", "uniform")


class RigLState(NamedTuple):
  """State of :func:`rigl`.

  The step counter is ``steps``, not ``count``, so that
  ``optax.tree_utils.tree_get(state, "count")`` finds the wrapped
  optimizer's counter alone.

  Attributes:
    steps: int32, steps taken.
    masks: a boolean tree like the params (all True on the dense leaves).
    inner_state: the wrapped optimizer's state (moments of masked weights are 0).
  """

  steps: jax.Array
  masks: Any
  inner_state: Any


def erk_densities(shapes: Sequence[tuple], sparsity: float, power_scale: float = 1.0) -> list:
  """Per-leaf densities of the Erdos-Renyi-Kernel rule for a global ``sparsity``.

  A leaf of shape ``(k_1, ..., k_n)`` gets density proportional to
  ``(sum_i k_i / prod_i k_i) ** power_scale``, scaled so that the total number
  of kept weights is ``(1 - sparsity) * sum of sizes``; leaves whose density
  would exceed 1 are kept dense and the others rescaled (RigL's
  ``get_sparsities_erdos_renyi``).

  Example:
    >>> [round(d, 4) for d in erk_densities([(784, 300), (300, 100), (100, 10)], 0.9)]
    [0.0796, 0.2302, 1.0]
  """
  sizes = [math.prod(s) for s in shapes]
  raw = [(sum(s) / math.prod(s)) ** power_scale for s in shapes]
  dense = set()
  while True:
    # kept = eps * sum_free raw * size + sum_dense size = (1 - sparsity) * total
    budget = sum(
      (1 - sparsity) * n if i not in dense else -sparsity * n for i, n in enumerate(sizes)
    )
    divisor = sum(raw[i] * sizes[i] for i in range(len(sizes)) if i not in dense)
    if divisor == 0:
      return [1.0] * len(sizes)
    eps = budget / divisor
    free = [i for i in range(len(sizes)) if i not in dense]
    largest = max(raw[i] for i in free)
    if largest * eps <= 1:
      return [1.0 if i in dense else eps * raw[i] for i in range(len(sizes))]
    dense.update(i for i in free if raw[i] == largest)


def active_counts(
  shapes: Sequence[tuple], sparsity: float, distribution: str = "erk", power_scale: float = 1.0
) -> list:
  """Number of active weights per sparse leaf (at least 1, at most its size)."""
  if distribution == "erk":
    densities = erk_densities(shapes, sparsity, power_scale)
  else:
    densities = [1 - sparsity] * len(shapes)
  return [
    int(min(max(round(d * math.prod(s)), 1), math.prod(s))) for d, s in zip(densities, shapes)
  ]


def drop_fraction_at(count: jax.typing.ArrayLike, drop_fraction: float, end_step: int) -> jax.Array:
  """``drop_fraction / 2 * (1 + cos(pi * t / end_step))``, 0 from ``end_step`` on."""
  t = jnp.minimum(jnp.asarray(count, jnp.float32), end_step)
  return drop_fraction / 2 * (1 + jnp.cos(jnp.pi * t / end_step))


def _ranks(scores: jax.Array) -> jax.Array:
  """Rank of each entry of a flat array in decreasing order (0 = largest; stable)."""
  order = jnp.argsort(-scores, stable=True)
  return jnp.zeros(scores.shape, jnp.int32).at[order].set(jnp.arange(scores.size, dtype=jnp.int32))


def drop_and_grow(
  weights: jax.Array, grads: jax.Array, mask: jax.Array, num_swap: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """One RigL mask update of a leaf; returns ``(new_mask, new_connections)``.

  Keeps the ``active - num_swap`` active weights of largest magnitude, then
  adds the ``num_swap`` entries of largest ``|grad|`` outside the kept ones
  (a weight dropped this step may come back, as a new connection). Ties go to
  the lower flat index. Shapes are static: ranks come from a stable sort.
  """
  flat_w, flat_g, flat_m = weights.reshape(-1), grads.reshape(-1), mask.reshape(-1)
  active = jnp.sum(flat_m, dtype=jnp.int32)
  keep_scores = jnp.where(flat_m, jnp.abs(flat_w).astype(jnp.float32), -jnp.inf)
  kept = flat_m & (_ranks(keep_scores) < active - num_swap)
  grow_scores = jnp.where(kept, -jnp.inf, jnp.abs(flat_g).astype(jnp.float32))
  grown = ~kept & (_ranks(grow_scores) < num_swap)
  return (kept | grown).reshape(mask.shape), (grown & ~kept).reshape(mask.shape)


def rigl(
  optimizer: optax.GradientTransformation,
  sparsity: float,
  end_step: int,
  update_every: int = 100,
  drop_fraction: float = 0.3,
  distribution: str = "erk",
  rules: rules_lib.RuleSpec = None,
  erk_power_scale: float = 1.0,
  seed: int = 0,
  skip_nonfinite: bool | int = False,
  groups: Groups | None = None,
) -> optax.GradientTransformation:
  r"""RigL sparse training around ``optimizer`` (any optax transformation).

  .. math::
    u_t = \mathrm{opt}(m \odot g_t),\quad
    w' = m \odot (w_t + u_t),\quad
    (m, \text{new}) \leftarrow \mathrm{drop\_grow}(w', g_t, m, n_t)
    \text{ if } t \bmod \Delta T = 0,\ 0 < t < T_\text{end},\quad
    w_{t+1} = m \odot w' \text{ (new connections set to 0)}

  with ``n_t = round(f_t * active)`` and ``f_t`` the cosine-annealed drop
  fraction. After each mask update the wrapped optimizer's params-shaped
  state (momentum, Adam moments) is masked too, so a weight re-enters with
  zero moments. The first update also zeroes the masked entries of the
  initial params (or call :func:`apply_masks` on them before training).

  Args:
    optimizer: the dense optimizer to wrap, e.g. ``optax.sgd(0.1, momentum=0.9)``.
    sparsity: target fraction of zero weights over the sparse leaves, in ``[0, 1)``.
    end_step: last step with mask updates (> 0); the cosine reaches 0 there.
    update_every: ``Delta T``, steps between mask updates (>= 1).
    drop_fraction: initial drop fraction in ``[0, 1]`` (RigL: 0.3).
    distribution: ``"erk"`` (Erdos-Renyi-Kernel) or ``"uniform"``.
    rules: which leaves are sparse, as for :func:`rmda_jax.l1`: None (every
      leaf with ndim >= 2 except embeddings), a callable
      ``(path, leaf) -> groups.Elementwise() | None``, or a tree of those.
    erk_power_scale: exponent of the ERK rule (1 in RigL; 0 gives uniform).
    seed: seed of the random initial masks.
    skip_nonfinite: skip a step whose gradient has a NaN or an infinite
      entry: the update is zero and the state (masks included) is left as it
      was (the transformation is wrapped in ``optax.apply_if_finite``, whose
      ``ApplyIfFiniteState`` holds the :class:`RigLState`; :func:`masks_of`
      finds it). ``True`` skips every such step; an integer ``n >= 1`` gives
      up after ``n`` consecutive ones and applies the step.

    groups: coupled groups (a :class:`~rmda_jax.Groups`, e.g. from
      :func:`rmda_jax.discover_groups`) for *structured* RigL: the masks keep
      or drop whole groups -- a hidden unit from every leaf it spans, a head
      from q, k, v and the output projection -- so the sparse model can be
      compacted. A group's weight score is its norm ``||w_g||_2`` over all
      its slices, its growth score ``||g_g||_2``; ``sparsity`` is the fraction
      of groups dropped, spread over the families by the ERK rule on the
      ``(groups, group size)`` view of each family (or uniformly); leaves in
      no family stay dense. A whole group set to zero is a saddle (a zero
      ReLU/GELU unit gets no gradient), so a grown group does not restart
      at zero: its consumer slices (``Family.consumers``) start at zero, which
      leaves the function unchanged, and its other slices are drawn from
      ``N(mean, std)`` of the kept entries of the same leaf; groups with
      equal (zero) growth scores are chosen at random. A family without
      consumers restarts at zero. Exclusive with ``rules``.

  ``sparsity``, ``drop_fraction`` and ``erk_power_scale`` are numbers or
  concrete scalar arrays.

  Raises:
    TypeError / ValueError: an argument of the wrong type or out of range; in
      ``update``, grads or masks whose tree structure or shapes differ from
      the params'.

  Example:
    >>> import jax, jax.numpy as jnp, optax, rmda_jax
    >>> params = {"Dense_0": {"kernel": jnp.ones((20, 10))}}
    >>> tx = rmda_jax.rigl(optax.adamw(1e-3), sparsity=0.9, end_step=7500, update_every=100)
    >>> state = tx.init(params)
    >>> grads = {"Dense_0": {"kernel": jnp.ones((20, 10))}}
    >>> updates, state = tx.update(grads, state, params)
    >>> params = optax.apply_updates(params, updates)
    >>> int(jnp.count_nonzero(params["Dense_0"]["kernel"]))   # 10% of the weights, from step 1
    20
  """
  checks.check_in_range(sparsity, "sparsity", 0, 1, concrete=True)
  checks.check_in_range(drop_fraction, "drop_fraction", 0, 1, high_open=False, concrete=True)
  checks.check_in_range(erk_power_scale, "erk_power_scale", 0, math.inf, concrete=True)
  sparsity, drop_fraction, erk_power_scale = (
    float(sparsity),
    float(drop_fraction),
    float(erk_power_scale),
  )
  end_step = checks.check_integer(end_step, "end_step")
  update_every = checks.check_integer(update_every, "update_every")
  max_errors = checks.check_skip_nonfinite(skip_nonfinite)
  if not isinstance(distribution, str) or distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}.")
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(
      f"optimizer must be an optax.GradientTransformation, got {type(optimizer).__name__}."
    )
  if end_step <= update_every and drop_fraction > 0:
    raise ValueError(
      f"rigl: end_step ({end_step}) must be > update_every ({update_every}): the masks are "
      "updated at the multiples of update_every below end_step, so none would be; lower "
      "update_every, raise end_step, or pass drop_fraction=0 for masks that never change."
    )
  if groups is not None:
    if rules is not None:
      raise ValueError(
        "rigl: give rules= (unstructured masks) or groups= (masks of coupled groups), not both."
      )
    if not isinstance(groups, Groups):
      raise TypeError(
        f"groups must be a rmda_jax.Groups (e.g. from rmda_jax.discover_groups), "
        f"got {type(groups).__name__}."
      )
    masks: _MaskRule = _GroupMasks(groups, sparsity, distribution, erk_power_scale, seed)
  else:
    masks = _EntryMasks(rules, sparsity, distribution, erk_power_scale, seed)
  tx = _drop_and_grow_training(optimizer, masks, end_step, update_every, drop_fraction)
  return chain.skipping_nonfinite(tx, max_errors)


class _MaskRule(Protocol):
  """What the two kinds of RigL masks (entries, or whole coupled groups) provide."""

  def initial(self, params: optax.Params) -> optax.Params:
    """The random initial masks, a boolean tree like ``params``."""
    ...

  def drop_and_grow(
    self,
    weights: optax.Params,
    grads: optax.Updates,
    masks: optax.Params,
    count: jax.Array,
    fraction: jax.Array,
  ) -> tuple[optax.Params, optax.Params]:
    """One mask update: ``(new weights, new masks)``."""
    ...


def _drop_and_grow_training(
  optimizer: optax.GradientTransformation,
  masks: _MaskRule,
  end_step: int,
  update_every: int,
  drop_fraction: float,
) -> optax.GradientTransformationExtraArgs:
  """``optimizer`` on masked gradients and weights, the masks updated every few steps."""

  def init_fn(params: optax.Params) -> RigLState:
    trees.check_real_floating(params, "rigl")
    return RigLState(chain.zero_count(), masks.initial(params), optimizer.init(params))

  def update_fn(
    updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    grads = updates
    params = chain.check_update_args(grads, state.masks, params, "rigl")
    masked_grads = apply_masks(grads, state.masks)
    updates, inner_state = optimizer.update(masked_grads, state.inner_state, params, **extra_args)
    new_params = apply_masks(optax.apply_updates(params, updates), state.masks)
    count = state.steps
    fraction = drop_fraction_at(count, drop_fraction, end_step)
    is_event = (count > 0) & (count < end_step) & (count % update_every == 0)

    def mask_update(operand: tuple[Any, Any]) -> tuple[Any, Any, Any]:
      new_params, inner_state = operand
      weights, new_masks = masks.drop_and_grow(new_params, grads, state.masks, count, fraction)
      inner_state = optax.tree_map_params(
        optimizer, lambda s, m: jnp.where(m, s, jnp.zeros((), s.dtype)), inner_state, new_masks
      )
      return weights, inner_state, new_masks

    def keep(operand: tuple[Any, Any]) -> tuple[Any, Any, Any]:
      new_params, inner_state = operand
      return new_params, inner_state, state.masks

    new_params, inner_state, new_masks = jax.lax.cond(
      is_event, mask_update, keep, (new_params, inner_state)
    )
    new_state = RigLState(chain.next_count(count), new_masks, inner_state)
    return trees.updates_to(new_params, params), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


@dataclasses.dataclass(frozen=True)
class _EntryMasks:
  """Masks of single weights in the leaves the rules make sparse (RigL as published)."""

  rules: Any
  sparsity: float
  distribution: str
  power_scale: float
  seed: int

  def sparse_leaves(self, params: optax.Params) -> tuple[list[Any], list[bool], Any]:
    _, leaves, leaf_rules, treedef = rules_lib.resolve_rules(
      self.rules, params, rules_lib.default_elementwise_rule, rules_lib.Elementwise, "rigl rules"
    )
    return leaves, [r is not None for r in leaf_rules], treedef

  def initial(self, params: optax.Params) -> optax.Params:
    leaves, sparse, treedef = self.sparse_leaves(params)
    shapes = [tuple(jnp.shape(x)) for x, s in zip(leaves, sparse) if s]
    counts = iter(active_counts(shapes, self.sparsity, self.distribution, self.power_scale))
    keys = iter(jax.random.split(jax.random.PRNGKey(self.seed), max(len(shapes), 1)))
    masks = []
    for x, is_sparse in zip(leaves, sparse):
      if not is_sparse:
        masks.append(jnp.ones(jnp.shape(x), bool))
        continue
      size = math.prod(jnp.shape(x))
      order = jax.random.permutation(next(keys), size)
      masks.append(
        (jnp.zeros(size, bool).at[order[: next(counts)]].set(True)).reshape(jnp.shape(x))
      )
    return jax.tree_util.tree_unflatten(treedef, masks)

  def drop_and_grow(
    self,
    weights: optax.Params,
    grads: optax.Updates,
    masks: optax.Params,
    count: jax.Array,
    fraction: jax.Array,
  ) -> tuple[optax.Params, optax.Params]:
    flat_w, sparse, treedef = self.sparse_leaves(weights)
    flat_g = jax.tree_util.tree_leaves(grads)
    flat_m = jax.tree_util.tree_leaves(masks)
    new_masks, new_weights = [], []
    for w, g, m, is_sparse in zip(flat_w, flat_g, flat_m, sparse):
      if not is_sparse:
        new_masks.append(m)
        new_weights.append(w)
        continue
      active = jnp.sum(m, dtype=jnp.int32)
      num_swap = jnp.round(fraction * active.astype(jnp.float32)).astype(jnp.int32)
      new_mask, new_connections = drop_and_grow(w, g, m, num_swap)
      new_masks.append(new_mask)
      new_weights.append(jnp.where(new_connections | ~new_mask, jnp.zeros((), w.dtype), w))
    return jax.tree_util.tree_unflatten(treedef, new_weights), jax.tree_util.tree_unflatten(
      treedef, new_masks
    )


@dataclasses.dataclass(frozen=True)
class _GroupMasks:
  """Masks that keep or drop whole coupled groups (structured RigL, see :func:`rigl`).

  A family on stacked leaves (``layers x n`` groups) is ``layers`` layers of
  ``n`` groups: each layer gets its ERK density, its kept count and its
  drop-and-grow swaps, as separate layers would, in one pass over the stack.
  """

  groups: Groups
  sparsity: float
  distribution: str
  power_scale: float
  seed: int

  def terms(self, params: optax.Params) -> tuple[Placement, list[tuple[bool, ...]]]:
    """The families laid on ``params``, and per term which of its leaves consume the unit."""
    placement = GroupLasso(0.0, groups=self.groups).place(params)
    consumers = {f.paths: frozenset(f.consumers) for f in self.groups.families}
    flags = []
    for term in placement.terms:
      paths = tuple(placement.paths[i] for i in term.leaves)
      flags.append(tuple(p in consumers[paths] for p in paths))
    return placement, flags

  def initial(self, params: optax.Params) -> optax.Params:
    placement, _ = self.terms(params)
    layouts: list[GroupLayout] = [t.rule for t in placement.terms]
    layers = [_layers(layout) for layout in layouts]
    # one ERK entry per layer: a stacked family's layers are layers of their own
    shapes = [
      (layout.group_shape[-1], layout.group_size)
      for layout, n in zip(layouts, layers)
      for _ in range(n)
    ]
    densities = (
      erk_densities(shapes, self.sparsity, self.power_scale)
      if self.distribution == "erk"
      else [1 - self.sparsity] * len(shapes)
    )
    counts = [min(max(round(d * n), 1), n) for d, (n, _) in zip(densities, shapes)]
    keys = jax.random.split(jax.random.PRNGKey(self.seed), max(len(shapes), 1))
    masks = [jnp.ones(jnp.shape(x), bool) for x in placement.leaves]
    start = 0
    for term, layout, n_layers in zip(placement.terms, layouts, layers):
      rows = []
      for layer in range(n_layers):
        n = layout.group_shape[-1]
        order = jax.random.permutation(keys[start + layer], n)
        rows.append(jnp.zeros(n, bool).at[order[: counts[start + layer]]].set(True))
      start += n_layers
      kept = jnp.stack(rows).reshape(layout.group_shape)
      for member, i in enumerate(term.leaves):
        masks[i] = jnp.broadcast_to(layout.spread(kept, member), jnp.shape(placement.leaves[i]))
    return placement.unflatten(masks)

  def drop_and_grow(
    self,
    weights: optax.Params,
    grads: optax.Updates,
    masks: optax.Params,
    count: jax.Array,
    fraction: jax.Array,
  ) -> tuple[optax.Params, optax.Params]:
    placement, consumer_flags = self.terms(weights)
    flat_g = jax.tree_util.tree_leaves(grads)
    new_masks = list(jax.tree_util.tree_leaves(masks))
    new_weights = list(placement.leaves)
    key = jax.random.fold_in(jax.random.PRNGKey(self.seed), count)
    for u, (term, is_consumer) in enumerate(zip(placement.terms, consumer_flags)):
      layout: GroupLayout = term.rule
      index = term.leaves
      kept = _group_mask(new_masks, index, layout).reshape(-1, layout.group_shape[-1])
      active = jnp.sum(kept, axis=-1, dtype=jnp.int32)  # per layer
      num_swap = jnp.round(fraction * active.astype(jnp.float32)).astype(jnp.int32)
      unit_key, tie_key = jax.random.split(jax.random.fold_in(key, u))
      # a zero group of a ReLU/GELU unit has a zero gradient: equal scores go to a random group
      grow = _group_scores([flat_g[i] for i in index], layout).reshape(kept.shape)
      grow = jnp.where(grow > 0, grow, -jax.random.uniform(tie_key, grow.shape))
      scores = _group_scores([new_weights[i] for i in index], layout).reshape(kept.shape)
      new_kept, fresh = jax.vmap(drop_and_grow)(scores, grow, kept, num_swap)
      new_kept, fresh = new_kept.reshape(layout.group_shape), fresh.reshape(layout.group_shape)
      regrow = any(is_consumer)
      for member, i in enumerate(index):
        mask = jnp.broadcast_to(layout.spread(new_kept, member), jnp.shape(new_weights[i]))
        new = jnp.broadcast_to(layout.spread(fresh, member), jnp.shape(new_weights[i]))
        w = jnp.where(new | ~mask, jnp.zeros((), new_weights[i].dtype), new_weights[i])
        if regrow and not is_consumer[member]:
          w = jnp.where(new, _resample(jax.random.fold_in(unit_key, member), w, mask & ~new), w)
        new_masks[i], new_weights[i] = mask, w
    return placement.unflatten(new_weights), placement.unflatten(new_masks)


def _layers(layout: GroupLayout) -> int:
  """The layers of a family's layout: ``layers`` for ``(layers, n)`` groups, else 1."""
  return layout.group_shape[0] if len(layout.group_shape) == 2 else 1


def _group_scores(arrays: list[jax.Array], layout: GroupLayout) -> jax.Array:
  """``||a_g||_2^2`` of every group of a family (float32)."""
  return layout.sum([jnp.square(a.astype(jnp.float32)) for a in arrays])


def _resample(key, leaf, kept) -> jax.Array:
  """Fresh entries drawn from ``N(mean, std)`` of the leaf's kept entries (its own dtype)."""
  x = leaf.astype(jnp.float32)
  n = jnp.maximum(jnp.sum(kept), 1)
  mean = jnp.sum(jnp.where(kept, x, 0.0)) / n
  std = jnp.sqrt(jnp.sum(jnp.where(kept, jnp.square(x - mean), 0.0)) / n)
  return (mean + std * jax.random.normal(key, leaf.shape)).astype(leaf.dtype)


def _group_mask(masks: list[jax.Array], index: Sequence[int], layout: GroupLayout) -> jax.Array:
  """The kept groups of a family, from its members' masks (kept where any member entry is)."""
  return layout.max([masks[i].astype(jnp.float32) for i in index]) > 0


def apply_masks(tree: optax.Params, masks: optax.Params) -> optax.Params:
  """``tree`` with its masked entries set to exactly zero (dtypes kept)."""
  return jax.tree_util.tree_map(
    lambda x, m: jnp.where(m, x, jnp.zeros((), jnp.result_type(x))), tree, masks
  )


def masks_of(state: Any) -> optax.Params | None:
  """The RigL masks inside a (possibly chained) optimizer state, or None."""
  if isinstance(state, RigLState):
    return state.masks
  if isinstance(state, (tuple, list)):
    for child in state:
      found = masks_of(child)
      if found is not None:
        return found
  return None
