"""``rmda-jax compact`` and ``rmda-jax generate``: use a trained run.

``compact`` cuts the exactly-zero groups of a run's model
(:func:`rmda_jax.compaction.compact`), prints parameters, FLOPs, latency and
validation accuracy (for a language model: the next-token probabilities'
difference and greedy tokens/s) before and after, and writes the compact
model; ``generate`` continues a prompt with a trained language model.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, cast

import flax.linen as nn
import optax

from rmda_jax.app import data as datasets
from rmda_jax.app import models, rundir
from rmda_jax.app.config import ConfigError
from rmda_jax.app.runs import load_run


def add_compact(sub: argparse._SubParsersAction) -> None:
  """Add the ``compact`` command and its options to the subcommands ``sub``."""
  p = sub.add_parser(
    "compact",
    help="turn a trained structured model into a smaller one with the same outputs",
    description="Remove the channels / neurons whose groups are exactly zero (and, with "
    "--low-rank, factorize low-rank kernels) from a run of rmda-jax train; print parameters, "
    "FLOPs, inference time and validation accuracy before and after.",
  )
  p.add_argument("run", help="the --out directory of a training run (or its checkpoint/ directory)")
  p.add_argument(
    "--low-rank", action="store_true", help="also factorize kernels of low numerical rank"
  )
  p.add_argument(
    "--params",
    choices=("structured", "final"),
    default="structured",
    help="structured (default): RMDA/RAMDA's point z, whose zeros are exact (the final params "
    "for other optimizers); final: the last params",
  )
  p.add_argument(
    "--batch-size", type=int, default=256, help="batch for the timing (default %(default)s)"
  )
  p.add_argument("--out", default=None, help="write the compact params (orbax) and model.json here")
  p.add_argument(
    "--overwrite",
    action="store_true",
    help="replace a compact model already in --out (without it, one there is an error)",
  )


def compact(args: argparse.Namespace) -> int:
  """Run ``rmda-jax compact``: compact a run's model, print the comparison, write it (``--out``)."""
  import os

  import jax
  import jax.numpy as jnp
  import numpy as np

  from rmda_jax import compaction
  from rmda_jax.optim import structured_params

  if args.batch_size < 1:
    raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
  if args.out:  # before any work: a target that cannot take the model fails at once
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
      raise ConfigError(f"--out {args.out} is a file, not a directory")
    if compaction.storage.holds_model(args.out) and not args.overwrite:
      raise ConfigError(
        f"--out {args.out} already holds a compact model (model.json, params/); add --overwrite "
        "to replace it"
      )
    rundir.check_writable(args.out, "--out")
  config, dataset, model, params, opt_state = load_run(args.run)
  source = "final params"
  if args.params == "structured" and config.optimizer in ("rmda", "ramda"):
    params, source = structured_params(opt_state), "structured point z"
  small = compaction.compact(model, params, low_rank=args.low_rank)
  # a NumPy batch: compaction.latencies and flops take any array (their x is annotated jax.Array)
  x: Any = dataset.x_test[: args.batch_size]
  times = compaction.latencies(
    {"original": (model, params), "compact": (small.model, small.params)}, x
  )

  def accuracy(m, p):
    return float(
      np.mean(np.argmax(np.asarray(m.apply({"params": p}, dataset.x_test)), -1) == dataset.y_test)
    )

  rows = [
    ("parameters", compaction.num_params(params), compaction.num_params(small.params), "{:,}"),
    (
      "FLOPs per example",
      compaction.flops(model, params, x[:1]),
      compaction.flops(small.model, small.params, x[:1]),
      "{:,.0f}",
    ),
    (f"ms per batch of {len(x)}", 1e3 * times["original"], 1e3 * times["compact"], "{:.3f}"),
    ("validation accuracy", accuracy(model, params), accuracy(small.model, small.params), "{:.4f}"),
  ]
  print(
    f"{config.model} from {args.run} ({source}); compact widths: "
    + ", ".join(f"{k} {len(v)}" for k, v in small.kept.items())
    + ("; ranks: " + ", ".join(f"{k} {r}" for k, r in small.ranks.items()) if small.ranks else "")
  )
  print(f"{'':24s}{'original':>16s}{'compact':>16s}{'ratio':>8s}")
  for name, before, after, fmt in rows:
    ratio = after / before if before else float("nan")
    print(f"{name:24s}{fmt.format(before):>16s}{fmt.format(after):>16s}{ratio:8.3f}")
  if config.model == "transformer":

    def outputs(m: nn.Module, p: optax.Params) -> jax.Array:
      # p is a flax "params" collection; without mutable collections apply returns the output alone
      return cast("jax.Array", m.apply({"params": cast("Mapping[str, Any]", p)}, x))

    probs = [
      jax.nn.softmax(outputs(m, p)) for m, p in ((model, params), (small.model, small.params))
    ]
    print(
      "largest difference of next-token probabilities: "
      f"{float(jnp.max(jnp.abs(probs[0] - probs[1]))):.2e}"
    )
    speeds = [
      tokens_per_second(m, p, dataset) for m, p in ((model, params), (small.model, small.params))
    ]
    print(
      f"{'greedy generation, tokens/s':24s}{speeds[0]:>16.1f}{speeds[1]:>16.1f}"
      f"{speeds[1] / speeds[0]:8.3f}"
    )
  if args.out:
    compaction.save(args.out, small, overwrite=args.overwrite)
    print(
      f"wrote {args.out}/params and {args.out}/model.json (rmda_jax.compaction.load reads them)"
    )
  return 0


def tokens_per_second(
  model: nn.Module, params: optax.Params, dataset: datasets.Dataset, tokens: int = 64
) -> float:
  """Tokens per second of greedy generation: ``tokens`` new tokens after a prompt.

  The prompt is the first 8 tokens of the validation set; a short call first
  compiles the step, so the timing covers generation only.
  """
  import time

  prompt = dataset.x_test[0][:8]
  models.generate(model, params, prompt, 2)  # compile
  start = time.perf_counter()
  models.generate(model, params, prompt, tokens)
  return tokens / (time.perf_counter() - start)


def add_generate(sub: argparse._SubParsersAction) -> None:
  """Add the ``generate`` command and its options to the subcommands ``sub``."""
  p = sub.add_parser(
    "generate",
    help="continue a prompt with a trained language model",
    description="Load a run of rmda-jax train --model transformer (or a compact model written by "
    "rmda-jax compact --out) and print a continuation of the prompt.",
  )
  p.add_argument("run", help="the --out directory of a training run, or of rmda-jax compact --out")
  p.add_argument("--prompt", default="The ", help="text to continue (default %(default)r)")
  p.add_argument("--tokens", type=int, default=200, help="bytes to generate (default %(default)s)")
  p.add_argument(
    "--temperature", type=float, default=0.0, help="0: greedy (default); > 0: sampling"
  )
  p.add_argument("--seed", type=int, default=0)
  p.add_argument(
    "--params",
    choices=("structured", "final"),
    default="structured",
    help="structured (default): RMDA/RAMDA's point z; final: the last params",
  )


def generate(args: argparse.Namespace) -> int:
  """Run ``rmda-jax generate``: print a language model's continuation of ``--prompt``."""
  import os

  import numpy as np

  from rmda_jax import compaction
  from rmda_jax.optim import structured_params

  if args.tokens < 0 or args.temperature < 0:
    raise ConfigError(
      f"--tokens and --temperature must be >= 0, got {args.tokens} and {args.temperature}"
    )
  if os.path.isfile(os.path.join(args.run, "model.json")):
    try:
      compact = compaction.load(args.run, classes=models.ZOO)
    except ValueError as err:  # damaged, or not a model of the zoo: one line either way
      raise ConfigError(str(err)) from None
    model, params = compact.model, compact.params
  else:
    config, _, model, params, opt_state = load_run(args.run)
    if args.params == "structured" and config.optimizer in ("rmda", "ramda"):
      params = structured_params(opt_state)
  if not isinstance(model, models.TransformerLM):
    raise ConfigError(
      f"{args.run} holds a {type(model).__name__}, not a language model "
      "(train one with --model transformer)"
    )
  prompt = np.frombuffer(args.prompt.encode("utf-8"), np.uint8)
  out = models.generate(model, params, prompt, args.tokens, args.temperature, args.seed)
  print(bytes(np.asarray(out, np.uint8)).decode("utf-8", errors="replace"))
  return 0
