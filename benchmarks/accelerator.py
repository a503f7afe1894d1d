"""The accelerator table: every optimizer's step against its memory floor, on one device.

For each param tree (the app's VGG-16, a ResNet-50, a 124M and a 1.3B-parameter
decoder with its blocks stacked as ``nn.scan`` stacks them; the decoders' params
bf16, every library optimizer's state float32) and each optimizer
(optax.sgd, optax.adamw, prox_sgd, rmda, ramda, prox_adamw, prox_ssi with
group-LASSO, on the per-leaf default groups and, where discovery gives them, on
the coupled groups), the jitted ``update + apply_updates`` runs in place (params
and state donated), interleaved in one process; reported per step:

* the median time and its ratio to optax.sgd (rmda, prox_sgd) or optax.adamw
  (the adaptive ones);
* the floor, the bytes a step must move (gradients read, params and state read
  and written once), and the fraction of the device's measured read-modify-write
  bandwidth that the step reaches (``floor / time / bandwidth``: 1 is the floor);
* RAMDA's and the adaptive methods' inner iterations (``solver_info``).

Then a whole training step (forward, backward, update) of the app's VGG and
Transformer LM with each optimizer, against optax SGD / AdamW, and the discovery
time of a 48-layer scanned decoder 1024 wide.

  python benchmarks/accelerator.py               # on the accelerator: < 8 min on one H200
  python benchmarks/accelerator.py --tiny        # dry run at small sizes (CPU, ~1.5 min)
  python benchmarks/accelerator.py --trees vgg16 decoder_124M --skip-training   # a part

Writes ``results/accelerator.json`` (``accelerator_tiny.json`` for ``--tiny``).
"""

from __future__ import annotations

import argparse
import time

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax
from discovery import ScannedLM

import rmda_jax
from rmda_jax.app import models, steps

STRENGTH = 1e-5


def optimizers(groups=None, rules=None) -> dict:
  """name -> (transformation, baseline name); group-LASSO on ``groups``, else per-leaf ``rules``."""
  reg = rmda_jax.group_lasso(STRENGTH, rules=rules, groups=groups)
  return {
    "optax.sgd": (optax.sgd(0.1, momentum=0.9), None),
    "optax.adamw": (optax.adamw(1e-3), None),
    "prox_sgd": (rmda_jax.prox_sgd(0.1, regularizer=reg), "optax.sgd"),
    "rmda": (rmda_jax.rmda(0.1, momentum=0.1, regularizer=reg), "optax.sgd"),
    "ramda": (rmda_jax.ramda(1e-2, momentum=0.1, regularizer=reg), "optax.adamw"),
    "prox_adamw": (rmda_jax.prox_adamw(1e-3, regularizer=reg), "optax.adamw"),
    "prox_ssi": (rmda_jax.prox_ssi(1e-3, regularizer=reg), "optax.adamw"),
  }


# ----------------------------------------------------------------------------
# param trees


def resnet50_params(width: int = 64, stages=(3, 4, 6, 3), classes: int = 1000, seed: int = 0):
  """A ResNet-50's param tree as Flax lays it out (bottleneck blocks, BatchNorm scale and bias)."""
  rng = np.random.default_rng(seed)

  def conv(kh, kw, cin, cout):
    return {"kernel": rng.normal(size=(kh, kw, cin, cout)).astype(np.float32) * 0.02}

  def norm(c):
    return {"scale": np.ones(c, np.float32), "bias": np.zeros(c, np.float32)}

  params = {"conv_init": conv(7, 7, 3, width), "bn_init": norm(width)}
  cin = width
  for stage, blocks in enumerate(stages):
    filters = width * 2**stage
    for b in range(blocks):
      block = {
        "Conv_0": conv(1, 1, cin, filters),
        "BatchNorm_0": norm(filters),
        "Conv_1": conv(3, 3, filters, filters),
        "BatchNorm_1": norm(filters),
        "Conv_2": conv(1, 1, filters, 4 * filters),
        "BatchNorm_2": norm(4 * filters),
      }
      if b == 0:
        block["conv_proj"] = conv(1, 1, cin, 4 * filters)
        block["norm_proj"] = norm(4 * filters)
      params[f"BottleneckResNetBlock_{sum(stages[:stage]) + b}"] = block
      cin = 4 * filters
  params["Dense_0"] = {
    "kernel": rng.normal(size=(cin, classes)).astype(np.float32) * 0.02,
    "bias": np.zeros(classes, np.float32),
  }
  return jax.tree_util.tree_map(jnp.asarray, params)


def decoder(layers: int, dim: int, heads: int, vocab: int = 50257, dtype=jnp.bfloat16):
  """A scanned decoder's params (``dtype``) and its per-layer coupled groups."""
  model = ScannedLM(layers, dim, heads, vocab=vocab, context=1024)
  tokens = jnp.zeros((1, 16), jnp.int32)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
  groups = rmda_jax.discover_linen(model, abstract, tokens)
  keys = iter(jax.random.split(jax.random.PRNGKey(0), len(jax.tree_util.tree_leaves(abstract))))
  params = jax.tree_util.tree_map(
    lambda a: (0.02 * jax.random.normal(next(keys), a.shape, jnp.float32)).astype(dtype), abstract
  )
  return params, groups


def vgg16(tiny: bool):
  model = models.VGG.vgg16() if not tiny else models.VGG(stages=((8,), (16,)))
  x = jnp.zeros((1, 32, 32, 3))
  params = model.init(jax.random.PRNGKey(0), x)["params"]
  groups = rmda_jax.discover_linen(model, params, x)
  return params, groups


def trees(tiny: bool) -> dict:
  """name -> (params, coupled groups or None)."""
  out = {"vgg16": vgg16(tiny)}
  out["resnet50"] = (
    resnet50_params() if not tiny else resnet50_params(width=8, stages=(1, 1), classes=10),
    None,
  )
  if tiny:
    out["decoder_tiny"] = decoder(2, 64, 4, vocab=512)
  else:
    out["decoder_124M"] = decoder(12, 768, 12)
    out["decoder_1.3B"] = decoder(24, 2048, 16)
  return out


# ----------------------------------------------------------------------------
# measurements


def tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree)))


def copy_bandwidth(nbytes: int, repeats: int = 20) -> float:
  """Bytes per second of a jitted, donated read-modify-write over ``nbytes``."""
  x = jnp.zeros(nbytes // 4, jnp.float32)
  f = jax.jit(lambda a: a + 1.0, donate_argnums=0)
  x = _harness.block(f(x))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    x = _harness.block(f(x))
    times.append(time.perf_counter() - start)
  return 2 * nbytes / float(np.median(times))


def step_runner(tx, params, grads):
  """``(run, state bytes, state)``: ``run()`` takes one donated in-place step."""
  holder = {"p": jax.tree_util.tree_map(jnp.copy, params)}
  holder["s"] = tx.init(holder["p"])

  def one(p, s):
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s

  call = jax.jit(one, donate_argnums=(0, 1))
  holder["p"], holder["s"] = _harness.block(call(holder["p"], holder["s"]))  # compile

  def run():
    holder["p"], holder["s"] = call(holder["p"], holder["s"])
    _harness.block(holder["p"])

  return run, tree_bytes(holder["s"]), holder


def inner_iterations(holder) -> int | None:
  info = getattr(holder["s"], "solver_info", None)
  iterations = getattr(info, "iterations", None)
  return None if iterations is None else int(iterations)


def optimizer_steps(tree_set: dict, rounds: int, bandwidth: float) -> list[dict]:
  rows = []
  for tree_name, (params, groups) in tree_set.items():
    keys = iter(jax.random.split(jax.random.PRNGKey(1), len(jax.tree_util.tree_leaves(params))))
    grads = jax.tree_util.tree_map(
      lambda p, keys=keys: (1e-3 * jax.random.normal(next(keys), p.shape, jnp.float32)).astype(
        p.dtype
      ),
      params,
    )
    layouts = {"per-leaf": None} if groups is None else {"per-leaf": None, "coupled": groups}
    count, pbytes = sum(x.size for x in jax.tree_util.tree_leaves(params)), tree_bytes(params)
    # stacked decoder blocks: the per-leaf groups per layer, as the coupled ones are
    rules = rmda_jax.per_layer({"blocks/*": 0}) if tree_name.startswith("decoder") else None
    for layout, layout_groups in layouts.items():
      txs = optimizers(layout_groups, None if layout_groups is not None else rules)
      runners, state_bytes, holders = {}, {}, {}
      for name, (tx, _) in txs.items():
        runners[name], state_bytes[name], holders[name] = step_runner(tx, params, grads)
      medians = _harness.interleaved_medians(runners, rounds, 1)
      for name, (_, base) in txs.items():
        floor = pbytes + 2 * pbytes + 2 * state_bytes[name]
        rows.append(
          {
            "tree": tree_name,
            "params_M": count / 1e6,
            "groups": layout,
            "optimizer": name,
            "ms": 1e3 * medians[name],
            "ratio": None if base is None else medians[name] / medians[base],
            "floor_MB": floor / 1e6,
            "of_bandwidth": floor / medians[name] / bandwidth,
            "inner_iterations": inner_iterations(holders[name]),
          }
        )
      del runners, holders
  return rows


def training_steps(tiny: bool, rounds: int) -> list[dict]:
  """A whole training step of the app's VGG and Transformer LM, each optimizer against optax."""
  if tiny:
    cases = {
      "vgg": (models.VGG(stages=((8,), (16,))), (8, 32, 32, 3), 10),
      "transformer_lm": (models.TransformerLM(dim=64, layers=2, context=64), (4, 64), 256),
    }
  else:
    cases = {
      "vgg16": (models.VGG.vgg16(), (128, 32, 32, 3), 10),
      "transformer_lm": (models.TransformerLM(dim=768, layers=12, context=512), (16, 512), 256),
    }
  rows = []
  for case, (model, shape, classes) in cases.items():
    rng = np.random.default_rng(0)
    if case.startswith("transformer"):
      x = jnp.asarray(rng.integers(0, classes, size=shape), jnp.int32)
      y = jnp.roll(x, -1, axis=1)
    else:
      x = jnp.asarray(rng.normal(size=shape), jnp.float32)
      y = jnp.asarray(rng.integers(0, classes, size=shape[0]), jnp.int32)
    params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
    loss_fn = steps.softmax_cross_entropy(lambda p, xb, model=model: model.apply({"params": p}, xb))
    runners = {}
    for name, (tx, _) in optimizers().items():
      step = jax.jit(steps.make_step(loss_fn, tx), donate_argnums=(0, 1))
      holder = {"p": jax.tree_util.tree_map(jnp.copy, params)}
      holder["s"] = tx.init(holder["p"])

      def run(step=step, holder=holder, x=x, y=y):
        holder["p"], holder["s"], loss = step(holder["p"], holder["s"], x, y)
        _harness.block((holder["p"], loss))

      run()  # compile
      runners[name] = run
    medians = _harness.interleaved_medians(runners, rounds, 1)
    for name, (_, base) in optimizers().items():
      rows.append(
        {
          "model": case,
          "batch": "x".join(map(str, shape)),
          "optimizer": name,
          "ms": 1e3 * medians[name],
          "ratio": None if base is None else medians[name] / medians[base],
        }
      )
  return rows


def discovery_time(tiny: bool) -> dict:
  layers, dim, heads = (4, 64, 4) if tiny else (48, 1024, 16)
  model = ScannedLM(layers, dim, heads)
  tokens = jax.ShapeDtypeStruct((1, 16), jnp.int32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens)["params"]
  times = []
  for _ in range(3):
    start = time.perf_counter()
    groups = rmda_jax.discover_linen(model, params, tokens)
    times.append(time.perf_counter() - start)
  return {
    "model": f"scanned LM {layers}x{dim}, {heads} heads",
    "seconds": min(times),
    "groups": groups.num_groups(),
  }


def main():
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--tiny", action="store_true", help="small sizes: a dry run on CPU")
  parser.add_argument("--rounds", type=int, default=None)
  parser.add_argument(
    "--trees", nargs="*", default=None, help="a subset of the param trees (default: all)"
  )
  parser.add_argument("--skip-training", action="store_true", help="no whole training steps")
  args = parser.parse_args()
  rounds = args.rounds or (3 if args.tiny else 9)
  print(_harness.machine())
  bandwidth = copy_bandwidth((64 << 20) if args.tiny else (2 << 30))
  print(f"read-modify-write bandwidth: {bandwidth / 1e9:.1f} GB/s")
  tree_set = trees(args.tiny)
  if args.trees:
    unknown = sorted(set(args.trees) - set(tree_set))
    if unknown:
      raise SystemExit(f"--trees: unknown {unknown}; known: {sorted(tree_set)}")
    tree_set = {k: v for k, v in tree_set.items() if k in args.trees}
  step_rows = optimizer_steps(tree_set, rounds, bandwidth)
  _harness.print_table(
    step_rows,
    [
      "tree",
      "params_M",
      "groups",
      "optimizer",
      "ms",
      "ratio",
      "floor_MB",
      "of_bandwidth",
      "inner_iterations",
    ],
    "optimizer step in place (interleaved medians); of_bandwidth = floor / time / bandwidth",
  )
  train_rows = [] if args.skip_training else training_steps(args.tiny, rounds)
  _harness.print_table(
    train_rows,
    ["model", "batch", "optimizer", "ms", "ratio"],
    "whole training step (forward, backward, update), interleaved medians",
  )
  found = discovery_time(args.tiny)
  _harness.print_table([found], ["model", "seconds", "groups"], "discovery (best of 3)")
  _harness.write_json(
    "accelerator_tiny" if args.tiny else "accelerator",
    {
      "bandwidth_GBps": bandwidth / 1e9,
      "optimizer_step": step_rows,
      "training_step": train_rows,
      "discovery": found,
      "rounds": rounds,
    },
  )


if __name__ == "__main__":
  main()
