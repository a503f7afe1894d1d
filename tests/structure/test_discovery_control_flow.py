"""Discovery through control flow, on models in the shapes public model code gives them.

A scanned and rematerialized decoder (linen), blocks made by ``nnx.vmap`` and
run by ``nnx.scan`` with BatchNorm, with and without ``nnx.remat`` (NNX), LSTM
and GRU taggers (``nn.RNN``),
bottleneck blocks with unnamed layers, a ``lax.cond`` model, a
``lax.while_loop`` recurrence, a per-layer constant head mask and
multi-query attention (``tests/support/control_flow_models.py``).

Each model's families are listed by hand (kind, layers, size, leaves), and
every family is checked on the model itself: with one group ``(layer, j)``
zero, random values in the group's producer slices leave the outputs
unchanged, and with the group intact they move them.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from control_flow_models import (
  SCANNED_NNX_EXPECTED,
  DecoderLayer,
  bottleneck_resnet,
  cond_model,
  gru_tagger,
  head_mask_encoder,
  lstm_tagger,
  mqa_attention,
  nnx_stack,
  scanned_decoder,
  while_recurrence,
)
from group_slices import flat, set_group, unflat

import rmda_jax

BUILDERS = {
  "scanned_decoder": scanned_decoder,
  "lstm_tagger": lstm_tagger,
  "gru_tagger": gru_tagger,
  "bottleneck_resnet": bottleneck_resnet,
  "cond_model": cond_model,
  "while_recurrence": while_recurrence,
  "head_mask_encoder": head_mask_encoder,
  "mqa_attention": mqa_attention,
}


@functools.cache
def built(name):
  model = BUILDERS[name]()
  groups = rmda_jax.discover_groups(model.apply, model.params, *model.args, extras=model.extras)
  return model, groups


def described(families):
  return sorted((f.kind, f.layers, f.size, tuple(sorted(f.paths))) for f in families)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_discovered_families_are_the_listed_ones(name):
  model, groups = built(name)
  want = sorted((k, n, s, tuple(sorted(p))) for k, n, s, p in model.expected)
  assert described(groups.families) == want, groups.summary()


@pytest.mark.parametrize("name", list(BUILDERS))
def test_a_zero_group_no_longer_reaches_the_outputs(name):
  model, groups = built(name)
  arrays = flat(model.params)
  run = jax.jit(model.__call__)
  base = np.asarray(run(model.params, *model.args))
  rng = np.random.default_rng(0)
  for family in groups.families:
    producers = [m for m in family.members if m.path not in family.consumers]
    layers = family.layers or 1
    for layer, j in {(0, 0), (layers - 1, family.size - 1), (layers // 2, family.size // 2)}:
      noise = lambda shape: rng.normal(size=shape)  # noqa: E731
      zeroed = set_group(arrays, family, layer, j, 0.0)
      moved = set_group(zeroed, family, layer, j, noise, producers)
      np.testing.assert_allclose(
        np.asarray(run(unflat(model.params, moved), *model.args)),
        np.asarray(run(unflat(model.params, zeroed), *model.args)),
        atol=1e-5,
        err_msg=f"{family.name} group {(layer, j)}",
      )
      if not producers:
        continue
      # with the consumers intact the producers do reach the outputs (a ReLU unit dead
      # under one sign of the noise is alive under the other)
      change = max(
        np.max(
          np.abs(
            np.asarray(
              run(
                unflat(model.params, set_group(arrays, family, layer, j, s * 3.0, producers)),
                *model.args,
              )
            )
            - base
          )
        )
        for s in (1.0, -1.0)
      )
      assert change > 1e-4, f"{family.name} group {(layer, j)} does not reach the outputs"


def test_scanned_layers_have_groups_of_their_own():
  _, groups = built("scanned_decoder")
  for family in groups.families:
    assert family.layers == 3 and family.num_groups == 3 * family.size
    assert all(m.layer_axis == 0 for m in family.members)
  heads = next(f for f in groups.families if f.kind == "heads")
  query = next(m for m in heads.members if m.path.endswith("query/kernel"))
  assert (query.axis, query.layer_axis) == (2, 0)  # (layers, embed, heads, head_dim)


def test_the_scan_iterations_are_named_among_the_unprunable():
  _, groups = built("scanned_decoder")
  reasons = [r for u in groups.unprunable for r in u.reasons]
  assert any("iterations of a scan" in r for r in reasons)


def unrolled_decoder_params(scanned):
  """The scanned decoder's params as ``layers`` separate layer trees."""
  stack = scanned["decoder"]
  layers = jax.tree_util.tree_leaves(stack)[0].shape[0]
  out = {k: v for k, v in scanned.items() if k != "decoder"}
  for i in range(layers):
    out[f"layer_{i}"] = jax.tree_util.tree_map(lambda a, i=i: a[i], stack)
  return out


def test_scanned_and_unrolled_decoders_have_the_same_groups():
  model, scanned = built("scanned_decoder")
  module = model.module
  params = unrolled_decoder_params(model.params)
  layer = DecoderLayer(module.heads, module.head_dim, module.mlp_dim)

  def unrolled(p, tokens):
    x = nn.Embed(module.vocab, module.embed).apply({"params": p["token_embedder"]}, tokens)
    mask = nn.make_causal_mask(tokens)
    for i in range(module.layers):
      x, _ = layer.apply({"params": p[f"layer_{i}"]}, x, mask)
    h = nn.LayerNorm().apply({"params": p["final_norm"]}, x)
    return nn.Dense(module.vocab).apply({"params": p["logits"]}, h)

  np.testing.assert_allclose(
    unrolled(params, *model.args), model(model.params, *model.args), atol=1e-5
  )
  flat_groups = rmda_jax.discover_groups(unrolled, params, *model.args)
  per_layer = sorted(
    (f.kind, f.size, tuple(sorted(p.split("/", 1)[1] for p in f.paths)), f.paths[0].split("/")[0])
    for f in flat_groups.families
  )
  from_scan = sorted(
    (f.kind, f.size, tuple(sorted(p.split("/", 1)[1] for p in f.paths)), f"layer_{i}")
    for f in scanned.families
    for i in range(f.layers)
  )
  assert per_layer == from_scan


@pytest.mark.parametrize("remat", [False, True])
def test_nnx_scan_over_vmapped_blocks_with_batch_statistics(remat):
  model = nnx_stack(remat=remat)
  model.eval()
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5))
  groups = rmda_jax.discover_nnx(model, x)
  want = sorted((k, n, s, tuple(sorted(p))) for k, n, s, p in SCANNED_NNX_EXPECTED)
  assert described(groups.families) == want, groups.summary()


def test_the_lstm_group_holds_the_hidden_kernels_rows():
  model, groups = built("lstm_tagger")
  (family,) = groups.families
  for member in family.members:
    if "/h" in member.path and member.path.endswith("kernel"):
      assert member.axis == 0  # rows: the hidden units the gates read
    if "/i" in member.path:
      assert member.axis == 1  # the gate columns the input kernels produce
  assert set(family.consumers) == {model.cell + f"h{g}/kernel" for g in "ifgo"} | {"head/kernel"}
  assert family.name == "OptimizedLSTMCell_0"


def test_unnamed_layers_in_one_block_are_disjoint_families():
  _, groups = built("bottleneck_resnet")
  paths = [p for f in groups.families for p in f.paths]
  assert len(paths) == len(set(paths))
  assert len({f.name for f in groups.families}) == len(groups.families)


def test_a_per_layer_head_mask_couples_no_two_layers():
  _, groups = built("head_mask_encoder")
  for family in groups.families:
    assert len({p.split("/")[0] for p in family.paths}) == 1


def test_multi_query_heads_are_heads():
  _, groups = built("mqa_attention")
  assert [f.kind for f in groups.families] == ["heads"]


def test_a_fori_loop_with_a_static_trip_count_is_a_scan_and_still_followed():
  rng = np.random.default_rng(0)
  params = {
    "w": jnp.asarray(rng.normal(size=(4, 6)), jnp.float32),
    "u": jnp.asarray(rng.normal(size=(6, 6)) * 0.3, jnp.float32),
    "v": jnp.asarray(rng.normal(size=(6, 2)), jnp.float32),
  }

  def fn(p, x):
    drive = x @ p["w"]
    h = jax.lax.fori_loop(0, 3, lambda i, h: jnp.tanh(h @ p["u"] + drive), jnp.zeros_like(drive))
    return h @ p["v"]

  assert "scan" in str(jax.make_jaxpr(fn)(params, jnp.ones((2, 4))))
  groups = rmda_jax.discover_groups(fn, params, jnp.ones((2, 4)))
  assert described(groups.families) == [("units", None, 6, ("u", "v", "w"))]
