"""Coupled-group discovery: its cost on Transformers up to 12 layers x 768 and on a
48-layer scanned decoder 1024 wide, the scanned and the unrolled decoder giving the
same groups, and the optimizer step on coupled groups against the per-leaf group
step on the same tree, and on stacked against unrolled layers.

  python benchmarks/discovery.py                 # ~4 min on 2 CPU cores
  python benchmarks/discovery.py --rounds 15     # steadier step ratios

Discovery traces an abstract model (``jax.eval_shape``: no 85M-parameter
arrays are made). The step comparison runs RMDA and RAMDA + group-LASSO on a
Transformer block's params, once with the default per-leaf groups and once
with the discovered coupled groups, interleaved in one process, each a jitted
``update + apply_updates`` with donated buffers.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from _harness import block, interleaved_medians, print_table, write_json

import rmda_jax


class Block(nn.Module):
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    h = nn.LayerNorm()(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads)(
      h, h, mask=nn.make_causal_mask(x[..., 0])
    )
    h = nn.gelu(nn.Dense(4 * self.dim)(nn.LayerNorm()(x)))
    return x + nn.Dense(self.dim)(h)


class LM(nn.Module):
  layers: int
  dim: int
  heads: int
  vocab: int = 1024
  context: int = 128

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.dim)(tokens)
    x = (
      x
      + self.param("pos", nn.initializers.normal(0.02), (self.context, self.dim))[: tokens.shape[1]]
    )
    for i in range(self.layers):
      x = Block(self.dim, self.heads, name=f"block_{i}")(x)
    return nn.LayerNorm()(x) @ self.variables["params"]["Embed_0"]["embedding"].T


class ScannedBlock(nn.Module):
  """:class:`Block` with the ``(carry, x)`` signature ``nn.scan`` wants."""

  dim: int
  heads: int

  @nn.compact
  def __call__(self, x, _):
    return Block(self.dim, self.heads, name="block")(x), None


class ScannedLM(nn.Module):
  """:class:`LM` with its blocks applied by ``nn.scan(nn.remat(...))`` over stacked params."""

  layers: int
  dim: int
  heads: int
  vocab: int = 1024
  context: int = 128

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(self.vocab, self.dim)(tokens)
    x = (
      x
      + self.param("pos", nn.initializers.normal(0.02), (self.context, self.dim))[: tokens.shape[1]]
    )
    stack = nn.scan(
      nn.remat(ScannedBlock),
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=self.layers,
    )
    x, _ = stack(self.dim, self.heads, name="blocks")(x, None)
    return nn.LayerNorm()(x) @ self.variables["params"]["Embed_0"]["embedding"].T


def per_layer_groups(groups, scanned):
  """Every family as ``(layer, kind, size, leaves inside the layer)``, one entry per layer."""
  out = set()
  for f in groups.families:
    if scanned:
      inner = tuple(sorted(p.split("/", 2)[2] if p.startswith("blocks/") else p for p in f.paths))
      out.update((layer, f.kind, f.size, inner) for layer in range(f.layers or 1))
    else:
      layer = int(f.paths[0].split("/")[0].split("_")[1])
      inner = tuple(sorted(p.split("/", 1)[1] for p in f.paths))
      out.add((layer, f.kind, f.size, inner))
  return out


def scanned_and_unrolled(layers, dim, heads, repeats=3):
  """Discovery time of the scanned and the unrolled decoder, and whether their groups agree."""
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  rows, found = [], {}
  for scanned, model in ((True, ScannedLM(layers, dim, heads)), (False, LM(layers, dim, heads))):
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      groups = rmda_jax.discover_linen(model, params, tokens)
      times.append(time.perf_counter() - start)
    found[scanned] = per_layer_groups(groups, scanned)
    rows.append(
      {
        "model": f"LM {layers}x{dim}, {heads} heads, {'scanned' if scanned else 'unrolled'}",
        "params_M": sum(int(x.size) for x in jax.tree_util.tree_leaves(params)) / 1e6,
        "seconds": min(times),
        "families": len(groups.families),
        "groups": groups.num_groups(),
      }
    )
  same = found[True] == found[False]
  for row in rows:
    row["same groups"] = same
  return rows


def stacked_step_ratio(layers, dim, heads, rounds, steps):
  """RMDA + group-LASSO on a scanned decoder's stacked params vs on its unrolled params."""
  tokens = jnp.zeros((1, 16), jnp.int32)
  runners, sizes = {}, {}
  for scanned, model in ((True, ScannedLM(layers, dim, heads)), (False, LM(layers, dim, heads))):
    params = model.init(jax.random.PRNGKey(0), tokens)["params"]
    groups = rmda_jax.discover_linen(model, params, tokens)
    sizes[scanned] = groups.num_groups()
    tx = rmda_jax.rmda(0.1, regularizer=rmda_jax.group_lasso(1e-3, groups=groups))
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    grads = treedef.unflatten([1e-3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])

    @jax.jit
    def run(p, s, tx=tx, grads=grads):
      def body(carry, _):
        p, s = carry
        u, s = tx.update(grads, s, p)
        return (optax.apply_updates(p, u), s), None

      return jax.lax.scan(body, (p, s), None, length=steps)[0]

    state = {"p": params, "s": tx.init(params)}

    def runner(state=state, run=run):
      state["p"], state["s"] = block(run(state["p"], state["s"]))

    runner()
    runners[scanned] = runner
  medians = interleaved_medians(runners, rounds, steps)
  assert sizes[True] == sizes[False], sizes
  return {
    "tree": f"LM {layers}x{dim}, {heads} heads",
    "groups": sizes[True],
    "stacked_ms": 1e3 * medians[True],
    "unrolled_ms": 1e3 * medians[False],
    "stacked / unrolled": medians[True] / medians[False],
  }


def time_discovery(layers, dim, heads, repeats=3):
  model = LM(layers, dim, heads)
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
  times, groups = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    groups = rmda_jax.discover_linen(model, params, tokens)
    times.append(time.perf_counter() - start)
  n_params = sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
  kinds = {}
  for f in groups.families:
    kinds[f.kind] = kinds.get(f.kind, 0) + 1
  return {
    "model": f"LM {layers}x{dim}, {heads} heads",
    "params_M": n_params / 1e6,
    "seconds": min(times),
    "families": len(groups.families),
    "heads_families": kinds.get("heads", 0),
    "units_families": kinds.get("units", 0),
    "groups": groups.num_groups(),
  }


def step_ratio(dim, heads, rounds, steps):
  model = Block(dim, heads)
  x = jnp.ones((2, 16, dim))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  groups = rmda_jax.discover_linen(model, params, x)
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  grads = treedef.unflatten([1e-3 * jax.random.normal(k, p.shape) for k, p in zip(keys, leaves)])
  rows, runners = [], {}
  for method in ("rmda", "ramda"):
    for layout, reg in (
      ("per-leaf", rmda_jax.group_lasso(1e-3)),
      ("coupled", rmda_jax.group_lasso(1e-3, groups=groups)),
    ):
      tx = (
        rmda_jax.rmda(0.1, regularizer=reg)
        if method == "rmda"
        else rmda_jax.ramda(1e-2, regularizer=reg)
      )

      @jax.jit
      def run(p, s, tx=tx):
        def body(carry, _):
          p, s = carry
          u, s = tx.update(grads, s, p)
          return (optax.apply_updates(p, u), s), None

        return jax.lax.scan(body, (p, s), None, length=steps)[0]

      state = {"p": params, "s": tx.init(params)}

      def runner(state=state, run=run):
        state["p"], state["s"] = block(run(state["p"], state["s"]))

      runner()  # compile
      runners[(method, layout)] = runner
  medians = interleaved_medians(runners, rounds, steps)
  for method in ("rmda", "ramda"):
    per_leaf, coupled = medians[(method, "per-leaf")], medians[(method, "coupled")]
    rows.append(
      {
        "method": method,
        "tree": f"block {dim}/{heads} heads",
        "per_leaf_ms": 1e3 * per_leaf,
        "coupled_ms": 1e3 * coupled,
        "coupled / per-leaf": coupled / per_leaf,
      }
    )
  return rows


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args()
  discovery = [
    time_discovery(layers, dim, heads)
    for layers, dim, heads in ((1, 64, 4), (4, 256, 4), (12, 768, 12))
  ]
  print_table(
    discovery,
    ["model", "params_M", "seconds", "families", "heads_families", "units_families", "groups"],
    "discovery time (best of 3)",
  )
  scanned = scanned_and_unrolled(48, 1024, 16)
  print_table(
    scanned,
    ["model", "params_M", "seconds", "families", "groups", "same groups"],
    "scanned vs unrolled decoder: discovery time (best of 3), groups per layer",
  )
  if not scanned[0]["same groups"]:
    raise SystemExit("the scanned and the unrolled decoder gave different groups")
  stacked = [stacked_step_ratio(48, 64, 4, args.rounds, args.steps)]
  print_table(
    stacked,
    ["tree", "groups", "stacked_ms", "unrolled_ms", "stacked / unrolled"],
    "RMDA step on per-layer groups: stacked leaves vs unrolled layers (interleaved medians)",
  )
  steps = step_ratio(256, 8, args.rounds, args.steps) + step_ratio(768, 12, args.rounds, 5)
  print_table(
    steps,
    ["method", "tree", "per_leaf_ms", "coupled_ms", "coupled / per-leaf"],
    "optimizer step, coupled vs per-leaf groups (interleaved medians)",
  )
  write_json(
    "discovery",
    {
      "discovery": discovery,
      "scanned": scanned,
      "stacked_step": stacked,
      "step": steps,
      "rounds": args.rounds,
    },
  )


if __name__ == "__main__":
  main()
