"""Training with group-LASSO on discovered groups, then compaction, through control flow.

On each model of ``tests/support/control_flow_models.py``: a few groups of
each layer start small (different ones in different layers), RMDA trains
with group-LASSO on the discovered families until whole per-layer units and
heads are exactly zero, and the compacted function computes the trained
model's outputs on inputs of another batch (and sequence) size. The zero
groups are counted with NumPy norms of the slices, not by the library.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from control_flow_models import (
  Config,
  ConfigNet,
  StagedNet,
  bottleneck_resnet,
  cond_model,
  gru_tagger,
  head_mask_encoder,
  lstm_tagger,
  nnx_stack,
  scanned_decoder,
  while_recurrence,
)
from flax import nnx
from group_slices import flat, group_norms, group_view, unflat

import rmda_jax
from rmda_jax import compaction

# name -> (builder, group-LASSO strength, steps)
TRAINED = {
  "scanned_decoder": (scanned_decoder, 0.02, 60),
  "lstm_tagger": (lstm_tagger, 0.02, 60),
  "gru_tagger": (gru_tagger, 0.02, 60),
  "bottleneck_resnet": (bottleneck_resnet, 0.02, 60),
  "cond_model": (cond_model, 0.05, 60),
  "while_recurrence": (while_recurrence, 0.1, 60),
  "head_mask_encoder": (head_mask_encoder, 0.02, 60),
}


def assert_close(got, want):
  scale = float(np.max(np.abs(np.asarray(want)))) + 1e-6
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=3e-5 * scale, rtol=1e-4)


def weakened(params, groups, scale=1e-3):
  """Params with groups ``(l, 2l)``, ``(l, 2l + 1)`` of every family scaled down.

  A family of two groups has ``(l, l)`` scaled down only.
  """
  arrays = flat(params)
  for family in groups.families:
    for layer in range(family.layers or 1):
      chosen = [2 * layer, 2 * layer + 1] if family.size > 2 else [layer]
      for j in {c % family.size for c in chosen}:
        for member in family.members:
          a = np.array(arrays[member.path])
          group_view(a, member)[layer, j] *= scale  # a view of the copy: writes ``a``
          arrays[member.path] = a
  return unflat(params, arrays)


@functools.cache
def trained(name):
  build, strength, steps = TRAINED[name]
  model = build()
  groups = rmda_jax.discover_groups(model.apply, model.params, *model.args, extras=model.extras)
  params = weakened(model.params, groups)
  target = jax.random.normal(jax.random.PRNGKey(7), np.shape(model(params, *model.args)))

  def loss(p):
    return jnp.mean(jnp.square(model(p, *model.args) - target))

  tx = rmda_jax.rmda(0.05, momentum=0.1, regularizer=rmda_jax.group_lasso(strength, groups=groups))

  @jax.jit
  def step(p, state):
    updates, state = tx.update(model.gradient(loss)(p), state, p)
    return optax.apply_updates(p, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return model, groups, rmda_jax.structured_params(state)


@pytest.mark.parametrize("name", list(TRAINED))
def test_group_lasso_zeroes_whole_units_per_layer_and_compaction_is_exact(name):
  model, groups, params = trained(name)
  arrays = flat(params)
  zero = {f.name: group_norms(arrays, f) == 0 for f in groups.families}
  assert any(z.any() for z in zero.values()), "no group became exactly zero"
  assert not all(z.all() for z in zero.values()), "every group became zero"
  for family in groups.families:
    if family.layers:
      rows = {tuple(np.flatnonzero(r)) for r in zero[family.name]}
      assert len(rows) > 1, f"{family.name}: every layer lost the same units"
  small = rmda_jax.compact_function(model.apply, params, groups, *model.args, extras=model.extras)
  for family in groups.families:
    kept = small.kept[family.name]
    z = zero[family.name] if family.layers else zero[family.name][0]
    # a zero group is cut unless its layer keeps it to stay as wide as the widest layer
    assert kept.shape[-1] <= family.size
    if not family.layers:
      assert not set(kept) & set(np.flatnonzero(z)) or len(kept) == 1
    else:
      assert kept.shape[-1] == max(1, int(np.max(np.sum(~z, axis=1))))
  n_params = sum(np.size(x) for x in jax.tree_util.tree_leaves(params))
  n_small = sum(np.size(x) for x in jax.tree_util.tree_leaves(small.params))
  assert n_small < n_params
  want = model(params, *model.other_args)
  extras = () if model.extras is None else (small.extras,)
  assert_close(jax.jit(small.fn)(small.params, *extras, *model.other_args), want)


def test_compact_linen_rebuilds_a_scanned_decoder_at_its_widest_layer():
  model, groups, params = trained("scanned_decoder")
  boxed = jax.tree_util.tree_map(
    lambda box, new: box.replace_boxed(new) if isinstance(box, nn.meta.AxisMetadata) else new,
    model.boxed,
    params,
    is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata),
  )
  small = compaction.compact_linen(model.module, {"params": boxed}, *model.args)
  units = next(f for f in groups.families if f.kind == "units")
  widest = int(np.max(np.sum(group_norms(flat(params), units) > 0, axis=1)))
  assert small.model.mlp_dim == widest < model.module.mlp_dim
  assert_close(small.apply(*model.other_args), model(params, *model.other_args))


def test_compact_linen_keeps_layers_set_by_one_config_field_at_one_width():
  module = ConfigNet(Config())
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 4))
  params = flat(module.init(jax.random.PRNGKey(1), x)["params"])
  params["layer_0/Mlp_0/Dense_1/kernel"][:5] = 0  # layer 0 needs 7 of 12 units
  params["layer_1/Mlp_0/Dense_1/kernel"][3:10] = 0  # layer 1 needs 5
  params = unflat(module.init(jax.random.PRNGKey(1), x)["params"], params)
  small = compaction.compact_linen(module, params, x)
  assert small.model.config.mlp_dim == 7 and small.model.config.num_heads == 2
  other = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 4))
  assert_close(small.apply(other), module.apply({"params": params}, other))


def test_compact_linen_keeps_the_ratio_of_widths_one_field_scales():
  module = StagedNet()  # stage i has num_filters * 2**i filters
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 6, 3))
  init = module.init(jax.random.PRNGKey(1), x)["params"]
  p = flat(init)
  # dead ReLU channels (zero kernel and bias): each stage-0 layer needs 3 of its 4
  # channels, the first stage-1 layer 6 of 8, and the classifier reads 4 of the last 8
  for layer, dead in (("Stage_0/Conv_0", [0]), ("Stage_0/Conv_1", [1]), ("Stage_1/Conv_0", [0, 1])):
    p[layer + "/kernel"][..., dead] = 0
    p[layer + "/bias"][dead] = 0
  p["Dense_0/kernel"][2:6] = 0
  small = compaction.compact_linen(module, unflat(init, p), x)
  assert small.model.num_filters == 3  # stage 0: 3, stage 1: 6 (>= 4)
  other = jax.random.normal(jax.random.PRNGKey(2), (3, 6, 6, 3))
  assert_close(small.apply(other), module.apply({"params": unflat(init, p)}, other))


def test_compact_nnx_cuts_scanned_blocks_and_they_keep_training():
  model = nnx_stack()
  model.eval()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
  groups = rmda_jax.discover_nnx(model, x)
  units = next(f for f in groups.families if f.kind == "units")
  down = np.array(model.blocks.down.kernel[...])
  for layer in range(3):
    down[layer, [layer, layer + 3, 7]] = 0  # different units per layer, 9 of 12 needed
  model.blocks.down.kernel[...] = jnp.asarray(down)
  other = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 5))
  want = model(other)
  small, kept = compaction.compact_nnx(model, groups, x)
  assert kept[units.name].shape == (3, 9)
  assert small.blocks.down.kernel[...].shape == (3, 9, 8)
  assert small.blocks.bn.mean[...].shape == (3, 9)
  assert small.blocks.up.out_features == 9
  assert_close(small(other), want)
  small.train()
  optimizer = nnx.Optimizer(small, optax.sgd(0.01), wrt=nnx.Param)

  def loss(m):
    return jnp.mean(jnp.square(m(x)))

  before = float(loss(small))
  for _ in range(3):
    grads = nnx.grad(loss)(small)
    optimizer.update(small, grads)
  assert np.isfinite(float(loss(small))) and float(loss(small)) != before


def test_nnx_scanned_blocks_trained_with_group_lasso_lose_units_per_layer():
  model = nnx_stack()
  model.eval()  # BatchNorm reads its statistics; the params still train
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 4, 5))
  groups = rmda_jax.discover_nnx(model, x)
  nnx.update(model, weakened(nnx.state(model, nnx.Param), groups))
  target = jax.random.normal(jax.random.PRNGKey(3), (4, 4, 3))
  # momentum 1: the params are the structured point itself
  tx = rmda_jax.rmda(0.05, momentum=1.0, regularizer=rmda_jax.group_lasso(0.02, groups=groups))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: jnp.mean(jnp.square(m(x) - target)))(model)
    optimizer.update(model, grads)

  for _ in range(60):
    step(model, optimizer)
  arrays = flat(nnx.state(model, nnx.Param))
  for family in groups.families:
    zero = group_norms(arrays, family) == 0
    assert zero.any() and not zero.all(), family.name
    assert len({tuple(np.flatnonzero(r)) for r in zero}) > 1, family.name
  other = jax.random.normal(jax.random.PRNGKey(1), (3, 6, 5))
  want = model(other)
  small, kept = compaction.compact_nnx(model, groups, x)
  assert sum(k.size for k in kept.values()) < sum(f.num_groups for f in groups.families)
  assert_close(small(other), want)
