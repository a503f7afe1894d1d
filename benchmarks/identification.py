"""Structure identification on a convex problem with a known optimal support.

Group-sparse multinomial logistic regression (one group per input feature,
``lambda * sum_j sqrt(C) ||W_j||``) on a finite "augmented" dataset: every
example appears with several fixed noisy copies, so the objective is a finite
sum whose optimum a high-precision full-batch solver (FISTA in float64; its
KKT residual is printed) computes exactly. All methods use the papers'
stage-wise protocol (learning rate x 0.1 at 50% and 75% of the steps). Each method is then trained
by minibatch steps, and we record the support of its structured point (``z`` for
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

import _harness
import numpy as np

from rmda_jax.app import identification


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seeds", type=int, default=3)
  parser.add_argument("--steps", type=int, default=6000)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--strength", type=float, default=0.04)
  args = parser.parse_args()

  rows, per_seed = [], []
  for seed in range(args.seeds):
    problem = identification.group_sparse_logistic(seed)
    opt = identification.solve_optimum(problem, args.strength)
    print(
      f"seed {seed}: optimal support {int(opt.support.sum())}/{len(opt.support)} groups, "
      f"KKT residual {opt.kkt_residual:.1e}, screening margin of the zero groups "
      f"{opt.margin:.2e}"
    )
    for name, tx in identification.stagewise_methods(args.strength, args.steps).items():
      run = identification.track_supports(tx, problem, args.steps, args.batch, seed)
      result = {
        "seed": seed,
        "method": name,
        **identification.summarize(run["supports"], opt.support),
        "distance_to_optimum": float(np.linalg.norm(run["structured"] - opt.kernel)),
      }
      per_seed.append(result)
  for name in identification.stagewise_methods(args.strength, args.steps):
    results = [r for r in per_seed if r["method"] == name]
    ids = [r["identified_at"] for r in results]
    rows.append(
      {
        "method": name,
        "identified": f"{sum(i is not None for i in ids)}/{len(ids)}",
        "identified_at (median)": (
          int(np.median([i for i in ids if i is not None]))
          if any(i is not None for i in ids)
          else "never"
        ),
        "final_error (mean)": float(np.mean([r["final_error"] for r in results])),
        "changes_2nd_half (mean)": float(np.mean([r["changes_second_half"] for r in results])),
        "on_optimal_support": float(np.mean([r["steps_on_optimal_support"] for r in results])),
        "dist_to_opt (mean)": float(np.mean([r["distance_to_optimum"] for r in results])),
      }
    )
  _harness.print_table(
    rows,
    list(rows[0]),
    f"support identification over {args.seeds} seeds, {args.steps} steps of batch {args.batch}",
  )
  _harness.write_json("identification", {"args": vars(args), "summary": rows, "runs": per_seed})


if __name__ == "__main__":
  main()
