"""Stage-wise schedule, structure tracking, and bit-exact checkpoint/resume."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from problems import GROUPS, SHAPES, from_tree, make_problem, numpy_grad, quadratic_step, to_tree

import rmda_jax

EPOCHS, SPE, MILESTONES = 6, 4, (2, 4)


def _run_steps(tx, x, target, scale, noise, steps):
  step = quadratic_step(tx, target, scale)
  params = to_tree(x)
  state = tx.init(params)
  history = []
  for t in range(steps):
    params, state = step(params, state, to_tree(noise[t]))
    history.append((params, state))
  return history


@pytest.mark.parametrize(
  "method,kind,lam",
  [("rmda", "group_lasso", 0.15), ("ramda", "group_lasso", 0.05), ("ramda", None, 0.0)],
)
def test_restart_lr_eps_and_ramp_match_the_reference_scheduler(method, kind, lam):
  steps = EPOCHS * SPE
  lr, c0, gamma = 0.05, 0.5, 0.5
  x, target, scale, noise = make_problem(steps=steps)
  xs, zs, cs = ref.stagewise_run(
    method,
    x,
    numpy_grad(target, scale, noise),
    EPOCHS,
    SPE,
    MILESTONES,
    gamma,
    lr,
    c0,
    lam,
    kind,
    GROUPS,
  )
  stages = rmda_jax.Stagewise.from_epochs(MILESTONES, SPE, gamma=gamma)
  reg = None if kind is None else rmda_jax.group_lasso(lam)
  if method == "rmda":
    tx = rmda_jax.rmda(lr, momentum=c0, regularizer=reg, stages=stages)
  else:
    tx = rmda_jax.ramda(lr, momentum=c0, regularizer=reg, stages=stages)
  history = _run_steps(tx, x, target, scale, noise, steps)
  for t, (params, state) in enumerate(history):
    got = from_tree(params)
    for n in SHAPES:
      np.testing.assert_allclose(got[n], xs[t][n], atol=2e-5, rtol=0, err_msg=f"step {t} {n}")
    # the in-stage counter restarts exactly at the milestones (steps 8 and 16)
    stage_start = max(m * SPE for m in (0,) + MILESTONES if m * SPE <= t)
    assert int(state.stage_count) == t - stage_start + 1
    # the momentum used matches: c = min(c0 sqrt(n), 1) in the last stage
    np.testing.assert_allclose(float(stages.momentum(c0, t)), cs[t], rtol=1e-6)
  assert cs[-1] == 1.0 and cs[4 * SPE] == c0


def test_params_equal_the_structured_point_once_the_ramp_reaches_one():
  steps = EPOCHS * SPE
  x, target, scale, noise = make_problem(steps=steps)
  stages = rmda_jax.Stagewise.from_epochs(MILESTONES, SPE, gamma=0.5)
  tx = rmda_jax.rmda(0.05, momentum=0.5, regularizer=rmda_jax.group_lasso(0.15), stages=stages)
  params, state = _run_steps(tx, x, target, scale, noise, steps)[-1]
  assert float(stages.momentum(0.5, steps - 1)) == 1.0
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(state.structured)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(rmda_jax.metrics.group_sparsity(params, rmda_jax.group_lasso(0.15))) > 0


def test_stagewise_validation_and_lr_schedule():
  with pytest.raises(ValueError, match="milestones"):
    rmda_jax.stagewise([10, 5])
  with pytest.raises(ValueError, match="gamma"):
    rmda_jax.stagewise([10], gamma=0.0)
  with pytest.raises(TypeError, match="stages"):
    rmda_jax.rmda(0.1, stages=[10, 20])
  sched = rmda_jax.stagewise([3, 6], gamma=0.1).learning_rate(1.0)
  np.testing.assert_allclose(
    [float(sched(t)) for t in range(8)], [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6
  )


def test_tracker_reports_the_identification_step():
  tracker = rmda_jax.metrics.StructureTracker(rmda_jax.group_lasso(1.0))
  rows = [[1, 1, 1, 1], [1, 0, 1, 1], [1, 0, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 0, 0, 1]]
  seq = [
    {"kernel": jnp.asarray(np.array(r, np.float32)[:, None] * np.ones((4, 3), np.float32))}
    for r in rows
  ]
  state = tracker.init(seq[0])
  update = jax.jit(tracker.update)
  last = []
  for p in seq[1:]:
    state = update(state, p)
    last.append(int(state.last_change))
  assert last == [1, 1, 3, 3, 3]
  assert int(state.num_changes) == 2 and int(state.step) == 5
  ut = rmda_jax.metrics.StructureTracker(rmda_jax.l1(1.0), kind="unstructured")
  s = ut.init({"kernel": jnp.ones((2, 2))})
  s = ut.update(s, {"kernel": jnp.array([[1.0, 0.0], [1.0, 1.0]])})
  s = ut.update(s, {"kernel": jnp.array([[2.0, 0.0], [3.0, 1.0]])})
  assert int(s.last_change) == 1 and int(s.num_changes) == 1


RESUME_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, jax.numpy as jnp, optax
    sys.path.insert(0, {tests!r})
    import rmda_jax
    from rmda_jax.app import checkpoint
    from problems import make_problem, quadratic_step, to_tree

    method, mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    k, n = int(sys.argv[5]), int(sys.argv[6])
    stages = rmda_jax.stagewise([5, 9], gamma=0.5)
    if method == "rmda":
        tx = rmda_jax.rmda(
            0.05, momentum=0.3, regularizer=rmda_jax.group_lasso(0.15), stages=stages
        )
    else:
        tx = rmda_jax.ramda(
            0.05, momentum=0.3, regularizer=rmda_jax.group_lasso(0.05), stages=stages
        )
    x, target, scale, noise = make_problem(steps=n)
    step = quadratic_step(tx, target, scale)
    params = to_tree(x); state = tx.init(params)
    if mode == "resume":
        restored = checkpoint.restore(path, {{"params": params, "opt_state": state}})
        params, state = restored["params"], restored["opt_state"]
        start = int(state.count)
    else:
        start = 0
    stop = k if mode == "save" else n
    for t in range(start, stop):
        params, state = step(params, state, to_tree(noise[t]))
    if mode == "save":
        checkpoint.save(path, {{"params": params, "opt_state": state}})
    leaves = jax.tree_util.tree_leaves((params, state))
    np.savez(out, *[np.asarray(l) for l in leaves])
""")


@pytest.mark.parametrize("method", ["rmda", "ramda"])
def test_resume_is_bit_exact_in_a_fresh_process(method, tmp_path):
  pytest.importorskip("orbax.checkpoint")
  script = tmp_path / "resume.py"
  script.write_text(
    RESUME_SCRIPT.format(
      tests=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support")
    )
  )
  ckpt, k, n = str(tmp_path / "ckpt"), 7, 14

  def run(mode, out):
    subprocess.run(
      [sys.executable, str(script), method, mode, ckpt, str(out), str(k), str(n)],
      check=True,
      capture_output=True,
      text=True,
    )
    data = np.load(out)
    return [data[f"arr_{i}"] for i in range(len(data.files))]

  straight = run("straight", tmp_path / "straight.npz")
  run("save", tmp_path / "saved.npz")
  resumed = run("resume", tmp_path / "resumed.npz")
  assert len(straight) == len(resumed)
  for a, b in zip(straight, resumed):
    np.testing.assert_array_equal(a, b)
