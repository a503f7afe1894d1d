"""Structure identification on a convex problem with a known optimal support.

Group-sparse multinomial logistic regression (one group per input feature,
``lambda * sum_j sqrt(C) ||W_j||``) on a finite "augmented" dataset: every
example appears with several fixed noisy copies, so the objective is a finite
sum whose optimum a high-precision full-batch solver (FISTA in float64; its
KKT residual is printed) computes exactly. All methods use the papers'
stage-wise protocol (learning rate x 0.1 at 50% and 75% of the steps). Each method is then trained by
minibatch steps, and we record the support of its structured point (``z`` for
RMDA/RAMDA, the iterate for the proximal baselines) at every step:

* ``identified at``: the first step after which the support equals the
  optimal support until the end ("never" if it does not end there);
* ``final error``: groups whose zero/nonzero status differs from the optimum;
* ``changes (2nd half)``: steps in the second half at which the support moved.

    python benchmarks/identification.py              # 3 seeds, ~3 min on 2 CPU cores
    python benchmarks/identification.py --seeds 10 --steps 20000
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import _harness
import rmda_jax


def make_data(seed, n=400, copies=5, informative=10, noise_features=10, classes=4, noise=0.3):
  rng = np.random.default_rng(seed)
  d = informative + noise_features
  rows = rng.normal(size=(informative, classes))
  w_true = np.zeros((d, classes))
  w_true[:informative] = 1.5 * rows / np.linalg.norm(rows, axis=1, keepdims=True)
  x = rng.normal(size=(n, d))
  logits = x @ w_true
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  y = np.array([rng.choice(classes, p=pi) for pi in p])
  # the augmentation: fixed noisy copies of every example
  X = np.concatenate([x + noise * rng.normal(size=x.shape) for _ in range(copies)])
  Y = np.concatenate([y] * copies)
  return X, Y, classes


def _group_prox(v, thr):
  norm = np.linalg.norm(v, axis=1, keepdims=True)
  return np.where(norm > thr, 1 - thr / np.where(norm > 0, norm, 1), 0) * v


def optimum(X, Y, classes, lam, iters=20000):
  """Full-batch FISTA in float64; returns W* and its KKT residual."""
  n, d = X.shape
  T = np.eye(classes)[Y]
  w = np.sqrt(classes)
  L = np.linalg.norm(X, 2) ** 2 / n / 2
  W = np.zeros((d, classes)); V = W.copy(); t = 1.0

  def grad(W):
    logits = X @ W
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    return X.T @ (p - T) / n

  for _ in range(iters):
    W_new = _group_prox(V - grad(V) / L, lam * w / L)
    t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
    V = W_new + (t - 1) / t_new * (W_new - W)
    W, t = W_new, t_new
  G = grad(W)
  norms = np.linalg.norm(W, axis=1)
  kkt = np.where(norms[:, None] > 0, G + lam * w * W / np.where(norms > 0, norms, 1)[:, None], 0)
  zero_viol = np.maximum(np.linalg.norm(G, axis=1) - lam * w, 0)[norms == 0]
  residual = np.sqrt(np.sum(kkt ** 2) + np.sum(zero_viol ** 2))
  margin = np.min(lam * w - np.linalg.norm(G, axis=1)[norms == 0]) if (norms == 0).any() else np.inf
  return W, residual, margin


def methods(lam, steps):
  """Every method with the papers' stage-wise protocol: lr x 0.1 at 50% and 75%
  of the steps (RMDA/RAMDA also restart there)."""
  reg = rmda_jax.group_lasso(lam)
  stages = rmda_jax.stagewise([steps // 2, 3 * steps // 4], gamma=0.1, momentum_ramp=False)
  return {
      "rmda": rmda_jax.rmda(0.3, momentum=0.1, regularizer=reg, stages=stages),
      "ramda": rmda_jax.ramda(0.05, momentum=0.1, regularizer=reg, stages=stages),
      "prox_sgd": rmda_jax.prox_sgd(stages.learning_rate(0.5), momentum=0.1, regularizer=reg),
      "prox_adamw": rmda_jax.prox_adamw(stages.learning_rate(0.01), regularizer=reg),
      "prox_ssi": rmda_jax.prox_ssi(stages.learning_rate(0.01), regularizer=reg),
  }


def train_supports(tx, X, Y, classes, steps, batch, seed):
  Xj, Yj = jnp.asarray(X, jnp.float32), jnp.asarray(Y)
  idx = jnp.asarray(np.random.default_rng(seed).integers(0, len(X), size=(steps, batch)))
  params = {"kernel": jnp.zeros((X.shape[1], classes))}

  def loss(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(xb @ p["kernel"], yb).mean()

  @jax.jit
  def run(params):
    def body(carry, i):
      p, s = carry
      g = jax.grad(loss)(p, Xj[i], Yj[i])
      u, s = tx.update(g, s, p)
      p = optax.apply_updates(p, u)
      z = rmda_jax.structured_params(s, p)["kernel"]
      return (p, s), jnp.any(z != 0, axis=1)

    (p, s), supports = jax.lax.scan(body, (params, tx.init(params)), idx)
    return supports, rmda_jax.structured_params(s, p)["kernel"]

  supports, z = run(params)
  return np.asarray(supports), np.asarray(z)


def summarize(supports, optimal):
  match = (supports == optimal).all(axis=1)
  steps = len(match)
  identified = None
  if match[-1]:
    mismatched = np.nonzero(~match)[0]
    identified = int(mismatched[-1] + 1) if len(mismatched) else 0
  changes = np.any(supports[1:] != supports[:-1], axis=1)
  return {
      "identified_at": identified,
      "final_error": int(np.sum(supports[-1] != optimal)),
      "changes_second_half": int(changes[steps // 2:].sum()),
      "steps_on_optimal_support": float(match.mean()),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=6000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--strength", type=float, default=0.04)
  args = parser.parse_args()

  rows, per_seed = [], []
  for seed in range(args.seeds):
    X, Y, classes = make_data(seed)
    W, residual, margin = optimum(X, Y, classes, args.strength)
    optimal = np.linalg.norm(W, axis=1) > 0
    print(f"seed {seed}: optimal support {int(optimal.sum())}/{len(optimal)} groups, "
          f"KKT residual {residual:.1e}, screening margin of the zero groups {margin:.2e}")
    for name, tx in methods(args.strength, args.steps).items():
      supports, z = train_supports(tx, X, Y, classes, args.steps, args.batch, seed)
      result = {"seed": seed, "method": name, **summarize(supports, optimal),
                "distance_to_optimum": float(np.linalg.norm(z - W))}
      per_seed.append(result)
  for name in methods(args.strength, args.steps):
    results = [r for r in per_seed if r["method"] == name]
    ids = [r["identified_at"] for r in results]
    rows.append({
        "method": name,
        "identified": f"{sum(i is not None for i in ids)}/{len(ids)}",
        "identified_at (median)": (int(np.median([i for i in ids if i is not None]))
                                   if any(i is not None for i in ids) else "never"),
        "final_error (mean)": float(np.mean([r["final_error"] for r in results])),
        "changes_2nd_half (mean)": float(np.mean([r["changes_second_half"] for r in results])),
        "on_optimal_support": float(np.mean([r["steps_on_optimal_support"] for r in results])),
        "dist_to_opt (mean)": float(np.mean([r["distance_to_optimum"] for r in results])),
    })
  _harness.print_table(rows, list(rows[0]), f"support identification over {args.seeds} seeds, "
                                            f"{args.steps} steps of batch {args.batch}")
  _harness.write_json("identification", {"args": vars(args), "summary": rows, "runs": per_seed})


if __name__ == "__main__":
  main()
