"""Compact vs original model: parameters, FLOPs and inference latency, side by side.

Trains LeNet5 on the offline MNIST subset and a VGG-style CNN on digits with
RMDA + group-LASSO (``rmda_jax.app.train``, the code of ``rmda-jax train``),
compacts the structured point ``z`` (``rmda_jax.compaction.compact``), checks
that both models give the same predictions, and times one jitted forward pass
of each, interleaved, at several batch sizes. Then a character-level
Transformer LM (1 and 2 pre-LN blocks) on the Python documentation text that
ships with Python (``pydoc_data``), trained with RAMDA + group-LASSO on its
discovered groups (whole heads and MLP units), compacted by
``rmda_jax.compact_function``: heads and units kept per layer, the
largest difference of next-token probabilities, params, FLOPs and latency.

    python benchmarks/compaction.py                       # ~12 min on 2 CPU cores
    python benchmarks/compaction.py --epochs 60 --strength 2e-3   # one lambda for the CNNs
    python benchmarks/compaction.py --models lm1 lm2 --lm-steps 2000
"""

from __future__ import annotations

import argparse
import os

import _harness
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmda_jax
from rmda_jax import compaction
from rmda_jax.app import data as datasets
from rmda_jax.app import train

SETTINGS = {
  "lenet5": ("mnist_subset", 1e-3),
  "vgg": ("digits", 3e-3),
}  # dataset, group-LASSO lambda
LMS = {"lm1": 1, "lm2": 2}  # layers


class CharLM(nn.Module):
  """A decoder-only pre-LN Transformer over bytes (learned positions, GELU MLP)."""

  layers: int
  dim: int = 64
  heads: int = 4
  mlp: int = 256
  context: int = 64

  @nn.compact
  def __call__(self, tokens):
    x = nn.Embed(256, self.dim)(tokens)
    x = x + self.param("positions", nn.initializers.normal(0.02), (self.context, self.dim))
    mask = nn.make_causal_mask(tokens)
    for i in range(self.layers):
      h = nn.LayerNorm(name=f"ln_attn_{i}")(x)
      x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name=f"attn_{i}")(
        h, h, mask=mask
      )
      h = nn.gelu(nn.Dense(self.mlp, name=f"mlp_in_{i}")(nn.LayerNorm(name=f"ln_mlp_{i}")(x)))
      x = x + nn.Dense(self.dim, name=f"mlp_out_{i}")(h)
    return nn.Dense(256, name="head")(nn.LayerNorm(name="ln_out")(x))


def text_batches(context, batch, seed):
  import pydoc_data.topics

  data = np.frombuffer(
    "\n".join(pydoc_data.topics.topics.values()).encode("utf-8", "replace"), np.uint8
  )
  split = int(0.9 * len(data))
  rng = np.random.default_rng(seed)

  def sample(part):
    starts = rng.integers(0, len(part) - context - 1, size=batch)
    window = np.stack([part[s : s + context + 1] for s in starts]).astype(np.int32)
    return window[:, :-1], window[:, 1:]

  return (lambda: sample(data[:split])), (lambda: sample(data[split:]))


def lm_rows(name, steps, strength, batch_sizes, rounds):
  model = CharLM(LMS[name])
  train_batch, val_batch = text_batches(model.context, 32, seed=0)
  x, _ = train_batch()
  params = model.init(jax.random.PRNGKey(0), x)["params"]

  def apply(p, t):
    return model.apply({"params": p}, t)

  groups = rmda_jax.discover_groups(apply, params, x)
  reg = rmda_jax.group_lasso(strength, groups=groups)
  stages = rmda_jax.Stagewise((steps // 2, 3 * steps // 4), gamma=0.1)
  tx = rmda_jax.ramda(1e-2, momentum=0.1, regularizer=reg, stages=stages)
  state = tx.init(params)

  @jax.jit
  def step(p, s, x, y):
    loss, grads = jax.value_and_grad(
      lambda p: optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()
    )(p)
    u, s = tx.update(grads, s, p)
    return optax.apply_updates(p, u), s, loss

  for _ in range(steps):
    params, state, _ = step(params, state, *train_batch())
  z = rmda_jax.structured_params(state)
  xv, yv = val_batch()
  val_loss = float(optax.softmax_cross_entropy_with_integer_labels(apply(z, xv), yv).mean())
  small = rmda_jax.compact_function(apply, z, groups, x)
  probs = jax.nn.softmax(apply(z, xv)), jax.nn.softmax(jax.jit(small.fn)(small.params, xv))
  diff = float(jnp.max(jnp.abs(probs[0] - probs[1])))
  kept = ", ".join(
    f"{k} {len(v)}/{f.size}" for f, (k, v) in zip(groups.families, small.kept.items())
  )
  print(
    f"{name}: val loss {val_loss:.3f} (perplexity {np.exp(val_loss):.2f}), weighted group sparsity "
    f"{float(rmda_jax.metrics.weighted_group_sparsity(z, reg)):.3f}; kept {kept}; "
    f"max |p - p_compact| {diff:.1e}",
    flush=True,
  )

  def cost(fn, p, t):
    c = jax.jit(fn).lower(p, t).compile().cost_analysis()
    return float((c[0] if isinstance(c, (list, tuple)) else c).get("flops", float("nan")))

  n0, n1 = compaction.num_params(z), compaction.num_params(small.params)
  f0, f1 = cost(apply, z, x[:2]) / 2, cost(small.fn, small.params, x[:2]) / 2
  original, compact_fn = jax.jit(apply), jax.jit(small.fn)
  rows = []
  for batch in batch_sizes:
    tokens = np.resize(xv, (batch, model.context))
    runners = {
      "original": lambda tokens=tokens: original(z, tokens).block_until_ready(),
      "compact": lambda tokens=tokens: compact_fn(small.params, tokens).block_until_ready(),
    }
    for run in runners.values():
      run()
    t = _harness.interleaved_medians(runners, rounds, 1)
    rows.append(
      {
        "model": name,
        "lambda": strength,
        "batch": batch,
        "val_loss": val_loss,
        "max_prob_diff": diff,
        "params": n0,
        "params_compact": n1,
        "params_ratio": n1 / n0,
        "flops": f0,
        "flops_compact": f1,
        "flops_ratio": f1 / f0,
        "ms": 1e3 * t["original"],
        "ms_compact": 1e3 * t["compact"],
        "latency_ratio": t["compact"] / t["original"],
        "compact_widths": kept,
      }
    )
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--models", nargs="+", default=list(SETTINGS) + list(LMS), choices=list(SETTINGS) + list(LMS)
  )
  parser.add_argument("--lm-steps", type=int, default=1500)
  parser.add_argument("--lm-strength", type=float, default=3e-4)
  parser.add_argument("--epochs", type=int, default=20)
  parser.add_argument(
    "--strength",
    type=float,
    default=None,
    help="lambda for every model (default: 1e-3 for lenet5, 3e-3 for vgg)",
  )
  parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 512])
  parser.add_argument("--rounds", type=int, default=15)
  parser.add_argument("--work", default="/tmp/rmda_jax_compaction")
  args = parser.parse_args()

  rows = []
  for model_name in args.models:
    if model_name in LMS:
      rows += lm_rows(
        model_name,
        args.lm_steps,
        args.lm_strength,
        [b for b in args.batch_sizes if b <= 64],
        args.rounds,
      )
      continue
    dataset_name, default_strength = SETTINGS[model_name]
    strength = default_strength if args.strength is None else args.strength
    config = train.TrainConfig(
      model=model_name,
      dataset=dataset_name,
      optimizer="rmda",
      regularizer="group_lasso",
      strength=strength,
      epochs=args.epochs,
      milestones=(args.epochs // 2, 3 * args.epochs // 4),
      progress=False,
      plots=False,
      checkpoint_every=10**9,
      out=os.path.join(args.work, model_name),
      overwrite=True,
    )
    result = train.run(config, log=lambda line: None)
    dataset = datasets.load(config.dataset)
    model = train.build_model(config, dataset)
    params = rmda_jax.structured_params(result.opt_state)
    small = compaction.compact(model, params)
    x_all = dataset.x_test
    original_pred = np.argmax(np.asarray(model.apply({"params": params}, x_all)), -1)
    compact_pred = np.argmax(np.asarray(small.apply(x_all)), -1)
    same = float(np.mean(original_pred == compact_pred))
    accuracy = float(np.mean(original_pred == dataset.y_test))
    widths = ", ".join(f"{k} {len(v)}" for k, v in small.kept.items())
    print(
      f"{model_name}: val acc {accuracy:.4f}, group sparsity "
      f"{result.history[-1]['group_sparsity']:.3f}; "
      f"compact widths {widths}; identical predictions on {same:.2%} of the validation set",
      flush=True,
    )
    n0, n1 = compaction.num_params(params), compaction.num_params(small.params)
    f0 = compaction.flops(model, params, x_all[:1])
    f1 = compaction.flops(small.model, small.params, x_all[:1])
    for batch in args.batch_sizes:
      x = np.resize(x_all, (batch,) + x_all.shape[1:])
      t = compaction.latencies(
        {"original": (model, params), "compact": (small.model, small.params)}, x, rounds=args.rounds
      )
      rows.append(
        {
          "model": model_name,
          "lambda": strength,
          "batch": batch,
          "val_acc": accuracy,
          "same_predictions": same,
          "params": n0,
          "params_compact": n1,
          "params_ratio": n1 / n0,
          "flops": f0,
          "flops_compact": f1,
          "flops_ratio": f1 / f0,
          "ms": 1e3 * t["original"],
          "ms_compact": 1e3 * t["compact"],
          "latency_ratio": t["compact"] / t["original"],
          "compact_widths": widths,
        }
      )
  _harness.print_table(
    rows,
    [
      "model",
      "lambda",
      "batch",
      "val_acc",
      "params",
      "params_compact",
      "params_ratio",
      "flops_ratio",
      "ms",
      "ms_compact",
      "latency_ratio",
    ],
    f"compact vs original after {args.epochs} epochs of RMDA + group-LASSO; "
    f"latency: median of {args.rounds} interleaved rounds",
  )
  _harness.write_json("compaction", {"args": vars(args), "rows": rows})


if __name__ == "__main__":
  main()
