"""Structure-vs-accuracy fronts of every method: a strength sweep per method, several seeds.

``quality.py`` compares the methods at one shared strength, so they end at
different accuracies. Here each method sweeps its own log-spaced grid of
strengths (from almost dense to accuracy lost) with several seeds, under the
papers' stage structure (learning rate x 0.1 at each milestone; RMDA / RAMDA
restart there and ramp their momentum to 1 after the last one: the optimizer
of ``rmda_jax.app.train.training_optimizer``, the same as ``rmda-jax train``), and
the structured point is evaluated (``z = rmda_jax.structured_params(state)``
for RMDA / RAMDA, the iterate for the proximal methods).

One training program is jitted per (problem, method) and ``jax.vmap``-ed
over the strengths (a traced regularizer strength) and the seeds (the
initialization and the batch order, those of ``rmda-jax train --seed``), so
all runs of a method train in one ``lax.scan``.

Problems (``--problems``): ``lenet5`` (LeNet5 on the offline MNIST subset),
``mlp7`` (MLP 784-512-256-128-64-32-16-10 on the MNIST subset), ``logreg``
(logistic regression on the MNIST subset, convex), ``digits`` (the MLP
64-128-128-10 of ``rmda-jax train``'s default on digits); each with
``--regularizers group_lasso,l1``. Methods: rmda, ramda, prox_sgd,
prox_adamw (ProxGen), prox_ssi (faithful) and prox_ssi_bc (bias-corrected
metric, ``rmda_jax.prox_ssi(..., bias_correction=True)``).

Reports per problem: validation accuracy vs weighted group sparsity
(group-LASSO) or sparsity of the regularized weights (L1), a point per
(method, strength) with the seed spread, each method's front (non-dominated
points); the highest sparsity within 0.3 and 1 point of the best regularized
accuracy of all methods; the area under each front. Figures
``results/pareto_<problem>.png``, ``results/pareto.json``.

    taskset -c 1 python benchmarks/pareto.py     # default budget: ~40 min on one core
    python benchmarks/pareto.py --quick          # smoke run: ~2 min
    python benchmarks/pareto.py --full           # the full budget: ~10 h on one core
    python benchmarks/pareto.py --long           # the papers' stage lengths, after a default run
    python benchmarks/pareto.py --pilot --problems digits   # one seed, a wide grid:
                                                            # to choose the grids
    python benchmarks/pareto.py --replot         # redraw the figures from results/pareto.json

The default: digits MLP (100 epochs) and logistic regression (60 epochs) with both regularizers, the
7-layer MLP (10 epochs) and LeNet5 (4 epochs, without prox_ssi_bc) with group-LASSO, 7 strengths x 3
seeds, 3 equal stages. ``--full``: every problem with both regularizers, 300 / 200 / 60 / 30 epochs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax

from rmda_jax import Stagewise, metrics, prox_ssi, structured_params
from rmda_jax import prox as regs
from rmda_jax.app import data as datasets
from rmda_jax.app import train

METHODS = ("rmda", "ramda", "prox_sgd", "prox_adamw", "prox_ssi", "prox_ssi_bc")
LABELS = {
  "rmda": "RMDA",
  "ramda": "RAMDA",
  "prox_sgd": "ProxSGD",
  "prox_adamw": "ProxGen (AdamW)",
  "prox_ssi": "ProxSSI",
  "prox_ssi_bc": "ProxSSI, bias-corrected",
}
COLORS = {
  "rmda": "tab:blue",
  "ramda": "tab:orange",
  "prox_sgd": "tab:green",
  "prox_adamw": "tab:red",
  "prox_ssi": "tab:purple",
  "prox_ssi_bc": "tab:brown",
}
REGULARIZERS = ("group_lasso", "l1")


@dataclasses.dataclass(frozen=True)
class Problem:
  model: str
  dataset: str
  hidden: tuple = (128, 128)
  epochs: int = 30  # default budget
  full_epochs: int = 100  # --full
  skip_by_default: tuple = ()  # methods left out unless --methods names them (time budget)


PROBLEMS = {
  "lenet5": Problem(
    "lenet5", "mnist_subset", epochs=4, full_epochs=30, skip_by_default=("prox_ssi_bc",)
  ),
  "mlp7": Problem(
    "mlp", "mnist_subset", hidden=(512, 256, 128, 64, 32, 16), epochs=10, full_epochs=60
  ),
  "logreg": Problem("logreg", "mnist_subset", epochs=60, full_epochs=200),
  "digits": Problem("mlp", "digits", hidden=(128, 128), epochs=100, full_epochs=300),
}

# Strength grids per (regularizer, problem, method): (lowest, highest), log-spaced; chosen from
# pilot sweeps so that each front runs from almost dense to accuracy lost (see
# benchmarks/README.md).
GRIDS = {
  # digits MLP, group-LASSO
  ("group_lasso", "digits", "rmda"): (1e-3, 8e-3),
  ("group_lasso", "digits", "ramda"): (3e-5, 6e-3),
  ("group_lasso", "digits", "prox_sgd"): (1e-3, 8e-3),
  ("group_lasso", "digits", "prox_adamw"): (1e-4, 6e-3),
  ("group_lasso", "digits", "prox_ssi"): (5e-5, 3e-3),
  ("group_lasso", "digits", "prox_ssi_bc"): (1e-4, 6e-3),
  # digits MLP, L1
  ("l1", "digits", "rmda"): (3e-4, 1.5e-2),
  ("l1", "digits", "ramda"): (1e-5, 2e-2),
  ("l1", "digits", "prox_sgd"): (3e-4, 1.5e-2),
  ("l1", "digits", "prox_adamw"): (1e-4, 1.5e-2),
  ("l1", "digits", "prox_ssi"): (3e-5, 3e-3),
  ("l1", "digits", "prox_ssi_bc"): (1e-4, 1.5e-2),
  # logistic regression, group-LASSO
  ("group_lasso", "logreg", "rmda"): (3e-4, 3e-2),
  ("group_lasso", "logreg", "ramda"): (1e-4, 3e-2),
  ("group_lasso", "logreg", "prox_sgd"): (1e-3, 3e-2),
  ("group_lasso", "logreg", "prox_adamw"): (1e-3, 3e-2),
  ("group_lasso", "logreg", "prox_ssi"): (1e-3, 3e-2),
  ("group_lasso", "logreg", "prox_ssi_bc"): (1e-3, 3e-2),
  # MLP 784-512-256-128-64-32-16-10 on the MNIST subset, group-LASSO (also used for LeNet5, whose
  # weighted group sparsity is dominated by its fc layer of 800 x 500, as the MLP's by its
  # 784 x 512)
  ("group_lasso", "mlp7", "rmda"): (8e-4, 5e-3),
  ("group_lasso", "mlp7", "ramda"): (3e-5, 2e-3),
  ("group_lasso", "mlp7", "prox_sgd"): (8e-4, 6e-3),
  ("group_lasso", "mlp7", "prox_adamw"): (1e-4, 5e-3),
  ("group_lasso", "mlp7", "prox_ssi"): (3e-5, 2e-3),
  ("group_lasso", "mlp7", "prox_ssi_bc"): (1e-4, 5e-3),
  # MLP, L1: the digits MLP's grids
  # logistic regression, L1
  ("l1", "logreg", "rmda"): (1e-4, 3e-2),
  ("l1", "logreg", "ramda"): (1e-5, 2e-2),
  ("l1", "logreg", "prox_sgd"): (3e-4, 3e-2),
  ("l1", "logreg", "prox_adamw"): (3e-4, 3e-2),
  ("l1", "logreg", "prox_ssi"): (3e-4, 3e-2),
  ("l1", "logreg", "prox_ssi_bc"): (3e-4, 3e-2),
}


def milestones_for(epochs: int, stages: int = 3) -> tuple:
  """Milestones splitting ``epochs`` into ``stages`` equal stages (the papers: 500 epochs,
  milestones every 100)."""
  out = sorted({max(round(epochs * i / stages), 1) for i in range(1, stages)})
  return tuple(m for m in out if m < epochs)


def config_for(problem: Problem, method: str, epochs: int, milestones: tuple, batch_size: int):
  return train.TrainConfig(
    model=problem.model,
    dataset=problem.dataset,
    hidden=problem.hidden,
    optimizer="prox_ssi" if method == "prox_ssi_bc" else method,
    epochs=epochs,
    batch_size=batch_size,
    milestones=milestones,
  )


def make_regularizer(name: str, strength):
  return regs.group_lasso(strength) if name == "group_lasso" else regs.l1(strength)


def make_optimizer(config, method, regularizer, steps_per_epoch):
  """The optimizer of ``rmda-jax train`` (``train.training_optimizer``); ProxSSI's bias-corrected
  variant built the same way with ``bias_correction=True``."""
  if method != "prox_ssi_bc":
    return train.training_optimizer(config, regularizer, steps_per_epoch)
  stages = Stagewise.from_epochs(tuple(config.milestones), steps_per_epoch, gamma=config.gamma)
  tx = prox_ssi(stages.learning_rate(config.lr), regularizer=regularizer, bias_correction=True)
  return optax.apply_if_finite(tx, max_consecutive_errors=config.skip_nonfinite)


def batch_order(n: int, batch_size: int, epochs: int, seed: int) -> np.ndarray:
  """``(epochs, steps, batch)`` example indices: the order of ``rmda-jax train --seed``."""
  steps = datasets.steps_per_epoch(n, batch_size)
  out = np.empty((epochs, steps, batch_size), np.int32)
  for epoch in range(1, epochs + 1):
    order = np.random.default_rng([seed, epoch]).permutation(n)
    out[epoch - 1] = order[: steps * batch_size].reshape(steps, batch_size)
  return out


def _program_parts(
  problem: Problem,
  method: str,
  regularizer_name: str,
  epochs: int,
  milestones: tuple,
  batch_size: int,
  dataset,
):
  config = config_for(problem, method, epochs, milestones, batch_size)
  model = train.build_model(config, dataset)
  x_train, y_train = jnp.asarray(dataset.x_train), jnp.asarray(dataset.y_train)
  x_val, y_val = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
  steps = datasets.steps_per_epoch(len(dataset.x_train), batch_size)
  dual = method in ("rmda", "ramda")
  counted = regs.group_lasso(0.0) if regularizer_name == "group_lasso" else regs.l1(0.0)

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  def accuracy(p):
    return jnp.mean(jnp.argmax(model.apply({"params": p}, x_val), -1) == y_val)

  def make_tx(strength):
    return make_optimizer(config, method, make_regularizer(regularizer_name, strength), steps)

  def start(strength, seed):
    tx = make_tx(strength)
    params = model.init(jax.random.PRNGKey(seed), x_train[:1])["params"]
    return tx, (params, tx.init(params))

  def step(tx, carry, idx):
    p, s = carry
    loss, grads = jax.value_and_grad(loss_fn)(p, x_train[idx], y_train[idx])
    updates, s = tx.update(grads, s, p)
    return (optax.apply_updates(p, updates), s), loss

  def structured(carry):
    params, state = carry
    return structured_params(state) if dual else params

  def sparsity(carry):
    point = structured(carry)
    if regularizer_name == "group_lasso":
      return metrics.weighted_group_sparsity(point, counted)
    return metrics.weight_sparsity(point)

  def report(carry, last_loss):
    params, state = carry
    point = structured(carry)
    out = {
      "val_accuracy": accuracy(point),
      "weighted_group_sparsity": metrics.weighted_group_sparsity(point, counted),
      "group_sparsity": metrics.group_sparsity(point, counted),
      "weight_sparsity": metrics.weight_sparsity(point),
      "unstructured_sparsity": metrics.unstructured_sparsity(point),
      "final_train_loss": last_loss,
    }
    if dual:  # the params x (equal to z once the momentum ramp has reached 1)
      out["params_val_accuracy"] = accuracy(params)
      out["params_weighted_group_sparsity"] = metrics.weighted_group_sparsity(params, counted)
    return out

  return make_tx, start, step, report, sparsity


def build_program(
  problem: Problem,
  method: str,
  regularizer_name: str,
  epochs: int,
  milestones: tuple,
  batch_size: int,
  dataset,
  batched: bool = True,
):
  """``run(strengths[S], seeds[K], orders[K, E, T, B]) -> dict of [K, S] arrays``.

  ``batched``: one jitted ``lax.scan`` over all steps, ``jax.vmap``-ed over
  strengths and seeds. Otherwise (convolutional models: XLA:CPU runs a
  convolution inside a loop body, and a vmapped one, several times slower
  than a plain jitted call) one jitted step, compiled once for every
  strength and seed, driven from Python.
  """
  make_tx, start, step, report, sparsity = _program_parts(
    problem, method, regularizer_name, epochs, milestones, batch_size, dataset
  )

  if batched:

    def one(strength, seed, order):
      tx, carry = start(strength, seed)

      def epoch(c, idx):
        c, losses = jax.lax.scan(lambda cc, i: step(tx, cc, i), c, idx)
        return c, (jnp.mean(losses), sparsity(c))

      carry, (losses, curve) = jax.lax.scan(epoch, carry, order)
      return {**report(carry, losses[-1]), "sparsity_curve": curve}

    per_seed = jax.vmap(one, in_axes=(0, None, None))  # the strengths share the seed's batch order
    return jax.jit(jax.vmap(per_seed, in_axes=(None, 0, 0)))

  init = jax.jit(lambda strength, seed: start(strength, seed)[1])
  train_step = jax.jit(
    lambda carry, strength, idx: step(make_tx(strength), carry, idx), donate_argnums=0
  )
  final = jax.jit(report)
  measure = jax.jit(sparsity)

  def run(strengths, seeds, orders):
    rows = []
    for seed, order in zip(np.asarray(seeds), np.asarray(orders)):
      row = []
      for strength in np.asarray(strengths):
        strength = jnp.float32(strength)
        carry = init(strength, int(seed))
        losses, curve = [], []
        for epoch_order in order:
          for idx in epoch_order:
            carry, loss = train_step(carry, strength, idx)
            losses.append(loss)
          curve.append(measure(carry))
        out = dict(final(carry, jnp.mean(jnp.stack(losses[-order.shape[1] :]))))
        out["sparsity_curve"] = jnp.stack(curve)
        row.append(out)
      rows.append(row)
    return {k: np.array([[np.asarray(r[k]) for r in row] for row in rows]) for k in rows[0][0]}

  return run


# --------------------------------------------------------------------------- analysis
def front(points: list) -> list:
  """The non-dominated points (no other point has both more sparsity and more accuracy), by
  sparsity."""
  out = []
  for p in points:
    if not any(
      q is not p
      and q["sparsity"] >= p["sparsity"]
      and q["accuracy"] >= p["accuracy"]
      and (q["sparsity"] > p["sparsity"] or q["accuracy"] > p["accuracy"])
      for q in points
    ):
      out.append(p)
  return sorted(out, key=lambda p: p["sparsity"])


def area_under_front(points: list) -> float:
  """``int_0^1 max{accuracy of a point with sparsity >= s} ds``: the accuracy attainable at each
  sparsity level, integrated (a staircase through the front; 0 beyond the sparsest point)."""
  area, previous = 0.0, 0.0
  for p in front(points):
    best_beyond = max(q["accuracy"] for q in points if q["sparsity"] >= p["sparsity"])
    area += (p["sparsity"] - previous) * best_beyond
    previous = p["sparsity"]
  return area


def summarize(results: dict, tolerances=(0.003, 0.01)) -> list:
  """Per method: the highest sparsity within each tolerance of the best regularized accuracy (of all
  methods), the strength reaching it, and the area under the method's front."""
  best = max(p["accuracy"] for points in results.values() for p in points)
  rows = []
  for method, points in results.items():
    row = {
      "method": method,
      "best_accuracy_all_methods": best,
      "area_under_front": area_under_front(points),
      "best_accuracy": max(p["accuracy"] for p in points),
    }
    for tol in tolerances:
      ok = [p for p in points if p["accuracy"] >= best - tol - 1e-9]
      top = max(ok, key=lambda p: p["sparsity"]) if ok else None
      key = f"{tol * 100:g}"
      row[f"sparsity_within_{key}"] = top["sparsity"] if top else None
      row[f"sparsity_std_within_{key}"] = top["sparsity_std"] if top else None
      row[f"accuracy_within_{key}"] = top["accuracy"] if top else None
      row[f"strength_within_{key}"] = top["strength"] if top else None
    rows.append(row)
  return rows


def plot(results: dict, path: str, title: str, xlabel: str) -> None:
  import matplotlib

  if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  best = max(p["accuracy"] for points in results.values() for p in points)
  fig, axes = plt.subplots(1, 2, figsize=(13, 5))
  for ax, zoom in zip(axes, (False, True)):
    for method, points in results.items():
      color = COLORS[method]
      xs = [p["sparsity"] for p in points]
      ys = [p["accuracy"] for p in points]
      ax.errorbar(
        xs,
        ys,
        xerr=[p["sparsity_std"] for p in points],
        yerr=[p["accuracy_std"] for p in points],
        fmt="o",
        ms=4,
        color=color,
        alpha=0.55,
        capsize=2,
        lw=0.8,
      )
      f = front(points)
      ax.plot(
        [p["sparsity"] for p in f],
        [p["accuracy"] for p in f],
        "-",
        color=color,
        lw=1.8,
        label=LABELS[method],
      )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy (structured point)")
    ax.grid(alpha=0.3)
    if zoom:
      ax.set_ylim(best - 0.03, best + 0.004)
      ax.axhline(best - 0.003, color="gray", ls=":", lw=1)
      ax.axhline(best - 0.01, color="gray", ls="--", lw=1)
      ax.set_title("zoom: dotted / dashed = 0.3 / 1 point below the best")
    else:
      ax.set_title(title)
      ax.legend(fontsize=8, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def figure_path(name: str, label: str) -> str:
  """``results/pareto_<problem>[_l1][_<suffix of name>].png``."""
  problem_name, regularizer = label.split("/")
  suffix = name[len("pareto") :] if name.startswith("pareto") else "_" + name
  return os.path.join(
    _harness.RESULTS, f"pareto_{problem_name}{'_l1' if regularizer == 'l1' else ''}{suffix}.png"
  )


def draw(name: str, label: str, result: dict, seeds: int) -> None:
  regularizer = label.split("/")[1]
  xlabel = (
    "weighted group sparsity"
    if regularizer == "group_lasso"
    else "sparsity of the regularized weights"
  )
  path = figure_path(name, label)
  os.makedirs(_harness.RESULTS, exist_ok=True)
  plot(
    {m: r["points"] for m, r in result["methods"].items()},
    path,
    f"{label}: {result['epochs']} epochs, milestones {list(result['milestones'])}, {seeds} seeds",
    xlabel,
  )
  print(f"wrote {path}")


def replot(name: str) -> None:
  """Redraw the figures of ``results/<name>.json``."""
  with open(os.path.join(_harness.RESULTS, f"{name}.json")) as f:
    payload = json.load(f)
  for label, result in payload["problems"].items():
    draw(name, label, result, payload["args"]["seeds"])


# --------------------------------------------------------------------------- running
GRID_PROXY = {"lenet5": "mlp7"}  # no pilot sweep of its own (see GRIDS)
GRID_PROXY_L1 = {"mlp7": "digits", "lenet5": "digits"}


def grid_for(
  problem_name: str, regularizer: str, method: str, count: int, wide: bool
) -> np.ndarray:
  proxy = (GRID_PROXY_L1 if regularizer == "l1" else GRID_PROXY).get(problem_name, problem_name)
  lo, hi = (1e-6, 1e-1) if wide else GRIDS[(regularizer, proxy, method)]
  return np.logspace(math.log10(lo), math.log10(hi), count)


def parse_problems(spec: str) -> list:
  """``digits,mlp7:group_lasso,...`` -> [(problem, regularizer)]; a bare name means both
  regularizers."""
  out = []
  for item in spec.split(","):
    name, _, reg = item.strip().partition(":")
    if name not in PROBLEMS:
      raise SystemExit(f"--problems: unknown problem {name!r} (choose from {', '.join(PROBLEMS)})")
    regs_ = (reg,) if reg else REGULARIZERS
    for r in regs_:
      r = {"gl": "group_lasso", "l1": "l1"}.get(r, r)
      if r not in REGULARIZERS:
        raise SystemExit(f"--problems: unknown regularizer {r!r} in {item!r}")
      out.append((name, r))
  return out


def sweep(problem_name, regularizer, methods, args, log=print) -> dict:
  problem = PROBLEMS[problem_name]
  dataset = datasets.load(problem.dataset)
  epochs = args.epochs or (problem.full_epochs if args.full else problem.epochs)
  milestones = (
    tuple(int(m) for m in args.milestones.split(","))
    if args.milestones
    else milestones_for(epochs, args.stages)
  )
  seeds = np.arange(args.seeds)
  orders = np.stack(
    [batch_order(len(dataset.x_train), args.batch_size, epochs, int(s)) for s in seeds]
  )
  batched = problem.model != "lenet5"
  out = {
    "epochs": epochs,
    "milestones": milestones,
    "steps_per_epoch": orders.shape[2],
    "methods": {},
  }
  for method in methods:
    strengths = (
      np.array([float(v) for v in args.strengths.split(",")])
      if args.strengths
      else grid_for(problem_name, regularizer, method, args.strengths_per_method, args.pilot)
    )
    started = time.perf_counter()
    run = build_program(
      problem, method, regularizer, epochs, milestones, args.batch_size, dataset, batched
    )
    raw = jax.device_get(
      run(jnp.asarray(strengths, jnp.float32), jnp.asarray(seeds), jnp.asarray(orders))
    )
    seconds = time.perf_counter() - started
    key = "weighted_group_sparsity" if regularizer == "group_lasso" else "weight_sparsity"
    points = []
    for j, strength in enumerate(strengths):
      acc = np.asarray(raw["val_accuracy"])[:, j]
      sp = np.asarray(raw[key])[:, j]
      point = {
        "strength": float(strength),
        "accuracy": float(np.mean(acc)),
        "accuracy_std": float(np.std(acc)),
        "sparsity": float(np.mean(sp)),
        "sparsity_std": float(np.std(sp)),
        "per_seed": {
          k: [float(v) for v in np.asarray(raw[k])[:, j]] for k in raw if k != "sparsity_curve"
        },
        "sparsity_curve": [
          float(v) for v in np.mean(np.asarray(raw["sparsity_curve"])[:, j], axis=0)
        ],
      }
      points.append(point)
      log(
        f"  {method:12s} lambda {strength:9.3g}  acc {100 * point['accuracy']:6.2f} +- "
        f"{100 * point['accuracy_std']:4.2f}  sparsity {100 * point['sparsity']:6.2f} +- "
        f"{100 * point['sparsity_std']:4.2f}"
      )
    out["methods"][method] = {"points": points, "seconds": seconds}
    log(f"  {method}: {len(strengths)} strengths x {len(seeds)} seeds in {seconds:.0f} s")
  return out


DEFAULT_PROBLEMS = "digits,logreg,mlp7:group_lasso,lenet5:group_lasso"
FULL_PROBLEMS = "digits,logreg,mlp7,lenet5"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--problems",
    default=None,
    help=f"comma-separated {', '.join(PROBLEMS)}, each optionally :group_lasso or :l1 "
    f"(default {DEFAULT_PROBLEMS}; --full: {FULL_PROBLEMS})",
  )
  parser.add_argument(
    "--methods", default=None, help=f"comma-separated, default {','.join(METHODS)}"
  )
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument(
    "--epochs", type=int, default=None, help="epochs of every problem (default: per problem)"
  )
  parser.add_argument(
    "--stages", type=int, default=3, help="stages (milestones = stages - 1, equally spaced)"
  )
  parser.add_argument(
    "--milestones", default=None, help="comma-separated epochs (overrides --stages)"
  )
  parser.add_argument(
    "--strengths",
    default=None,
    help="comma-separated strengths for every method (overrides the per-method grids)",
  )
  parser.add_argument("--strengths-per-method", type=int, default=7)
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument(
    "--quick", action="store_true", help="smoke run: digits and logreg, few epochs, 2 seeds"
  )
  parser.add_argument(
    "--full",
    action="store_true",
    help="the full budget: every problem and regularizer, the longer per-problem epochs",
  )
  parser.add_argument(
    "--pilot",
    action="store_true",
    help="one wide grid (1e-6 .. 1e-1) for every method, to choose the per-method grids",
  )
  parser.add_argument(
    "--long",
    action="store_true",
    help="one long run per method at its best strength (read "
    "from results/pareto.json), the papers' stage lengths",
  )
  parser.add_argument(
    "--long-steps-per-stage",
    type=int,
    default=46900,
    help="--long: steps per stage (the papers: 100 epochs x 469 steps of MNIST)",
  )
  parser.add_argument("--long-stages", type=int, default=5, help="--long: stages (the papers: 5)")
  parser.add_argument(
    "--out-name", default=None, help="results/<name>.json (default pareto, pareto_long, ...)"
  )
  parser.add_argument(
    "--replot", action="store_true", help="only redraw the figures of results/<out-name>.json"
  )
  args = parser.parse_args(argv)
  if args.replot:
    return replot(args.out_name or "pareto")
  command = "python " + " ".join(
    [os.path.relpath(__file__, os.getcwd())] + sys.argv[1:]
    if argv is None
    else ["benchmarks/pareto.py"] + list(argv)
  )
  if args.long:
    return long_mode(args, command)
  if args.quick:
    args.problems = args.problems or "digits:group_lasso,logreg:l1"
    args.seeds = min(args.seeds, 2)
    args.epochs = args.epochs or 12
  spec = args.problems or (FULL_PROBLEMS if args.full else DEFAULT_PROBLEMS)
  methods = [m for m in (args.methods or ",".join(METHODS)).split(",") if m]
  for m in methods:
    if m not in METHODS:
      raise SystemExit(f"--methods: unknown method {m!r} (choose from {', '.join(METHODS)})")
  if args.pilot:
    args.seeds, args.strengths_per_method = 1, max(args.strengths_per_method, 11)
  name = args.out_name or (
    "pareto_pilot" if args.pilot else "pareto_quick" if args.quick else "pareto"
  )
  started = time.perf_counter()
  payload = {"command": command, "args": vars(args), "problems": {}}
  table = []
  for problem_name, regularizer in parse_problems(spec):
    label = f"{problem_name}/{regularizer}"
    print(f"\n== {label}", flush=True)
    chosen = [m for m in methods if args.methods or m not in PROBLEMS[problem_name].skip_by_default]
    result = sweep(
      problem_name, regularizer, chosen, args, log=lambda line: print(line, flush=True)
    )
    per_method = {m: r["points"] for m, r in result["methods"].items()}
    rows = summarize(per_method)
    result["summary"] = rows
    payload["problems"][label] = result
    for row in rows:
      table.append(
        {
          "problem": label,
          "method": row["method"],
          "best acc %": 100 * row["best_accuracy"],
          "sparsity @0.3 %": _pct(row["sparsity_within_0.3"]),
          "lambda @0.3": row["strength_within_0.3"],
          "sparsity @1 %": _pct(row["sparsity_within_1"]),
          "acc @1 %": _pct(row["accuracy_within_1"]),
          "lambda @1": row["strength_within_1"],
          "AUF": row["area_under_front"],
        }
      )
    if not args.pilot:
      draw(name, label, result, args.seeds)
    best = rows[0]["best_accuracy_all_methods"]
    print(f"best regularized accuracy on {label}: {100 * best:.2f}%")
    payload["table"] = table
    _harness.write_json(
      name, payload
    )  # after every problem: a cut-short run keeps what it finished
  payload["seconds"] = time.perf_counter() - started
  _harness.print_table(
    table,
    list(table[0]),
    "highest sparsity within 0.3 / 1 point of the best regularized "
    "accuracy of all methods (means over seeds); AUF = area under front",
  )
  payload["table"] = table
  _harness.write_json(name, payload)
  print(f"total {payload['seconds'] / 60:.1f} min")


def _pct(v):
  return None if v is None else 100 * v


def long_mode(args, command):
  """One long run per method at its best strength from ``results/pareto.json`` (the highest sparsity
  within 1 point of the best accuracy), and at 1/3 and 1/10 of it, with the papers' stage lengths:
  ``--long-stages`` stages (5: their 500 epochs with milestones every 100) of
  ``--long-steps-per-stage`` steps each (46,900: 100 epochs of 469 steps of MNIST at batch 128),
  on our data."""
  spec = args.problems or "digits:group_lasso,logreg:group_lasso"
  source_path = os.path.join(_harness.RESULTS, "pareto.json")
  with open(source_path) as f:
    source = json.load(f)
  methods = [m for m in (args.methods or ",".join(METHODS)).split(",") if m]
  payload = {"command": command, "args": vars(args), "source": source_path, "problems": {}}
  table = []
  started = time.perf_counter()
  for problem_name, regularizer in parse_problems(spec):
    label = f"{problem_name}/{regularizer}"
    if label not in source["problems"]:
      print(f"skipping {label}: not in {source_path}")
      continue
    problem = PROBLEMS[problem_name]
    dataset = datasets.load(problem.dataset)
    steps = datasets.steps_per_epoch(len(dataset.x_train), args.batch_size)
    per_stage = max(math.ceil(args.long_steps_per_stage / steps), 1)
    epochs = per_stage * args.long_stages
    milestones = tuple(per_stage * i for i in range(1, args.long_stages))
    orders = batch_order(len(dataset.x_train), args.batch_size, epochs, 0)[None]
    short = {row["method"]: row for row in source["problems"][label]["summary"]}
    short_points = {m: r["points"] for m, r in source["problems"][label]["methods"].items()}
    print(
      f"\n== {label}: {epochs} epochs ({epochs * steps:,} steps), milestones {list(milestones)}",
      flush=True,
    )
    result = {"epochs": epochs, "milestones": milestones, "steps_per_epoch": steps, "methods": {}}
    for method in methods:
      if method not in short:
        continue
      best = short[method]["strength_within_1"]
      if best is None:
        best = max(short_points[method], key=lambda p: p["accuracy"])["strength"]
      strengths = np.array([best / 10, best / math.sqrt(10), best])
      t0 = time.perf_counter()
      run = build_program(
        problem,
        method,
        regularizer,
        epochs,
        milestones,
        args.batch_size,
        dataset,
        batched=problem.model != "lenet5",
      )
      raw = jax.device_get(
        run(jnp.asarray(strengths, jnp.float32), jnp.asarray([0]), jnp.asarray(orders))
      )
      key = "weighted_group_sparsity" if regularizer == "group_lasso" else "weight_sparsity"
      points = []
      for j, strength in enumerate(strengths):
        at_short = min(short_points[method], key=lambda p: abs(math.log(p["strength"] / strength)))
        curve = np.asarray(raw["sparsity_curve"])[0, j]
        point = {
          "strength": float(strength),
          "accuracy": float(raw["val_accuracy"][0, j]),
          "sparsity": float(raw[key][0, j]),
          "sparsity_at_stage_ends": [
            float(curve[per_stage * i - 1]) for i in range(1, args.long_stages + 1)
          ],
          "short_accuracy": at_short["accuracy"],
          "short_sparsity": at_short["sparsity"],
          "short_strength": at_short["strength"],
        }
        points.append(point)
        table.append(
          {
            "problem": label,
            "method": method,
            "lambda": point["strength"],
            "long acc %": 100 * point["accuracy"],
            "long sparsity %": 100 * point["sparsity"],
            "short acc %": 100 * point["short_accuracy"],
            "short sparsity %": 100 * point["short_sparsity"],
          }
        )
        print(
          f"  {method:12s} lambda {strength:9.3g}  long: acc {100 * point['accuracy']:6.2f} "
          "sparsity "
          f"{100 * point['sparsity']:6.2f}  | short (lambda {at_short['strength']:.3g}): acc "
          f"{100 * at_short['accuracy']:6.2f} sparsity {100 * at_short['sparsity']:6.2f}",
          flush=True,
        )
      result["methods"][method] = {"points": points, "seconds": time.perf_counter() - t0}
    payload["problems"][label] = result
    payload["table"] = table
    _harness.write_json(args.out_name or "pareto_long", payload)
  payload["seconds"] = time.perf_counter() - started
  if table:
    _harness.print_table(
      table, list(table[0]), "long runs (papers' stage lengths, seed 0) vs the short sweep"
    )
  _harness.write_json(args.out_name or "pareto_long", payload)


if __name__ == "__main__":
  main()
