"""The identification problem: its optimum satisfies the KKT conditions (checked
with autodiff gradients, independently of the solver), the support summary
follows its definition, and the training record is consistent."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax
from rmda_jax.app import identification


@pytest.fixture(scope="module")
def small_problem():
  problem = identification.group_sparse_logistic(
    seed=1, n=60, copies=2, informative=3, noise_features=3, classes=3
  )
  return problem, identification.solve_optimum(problem, strength=0.05, iters=5000)


def test_optimum_satisfies_kkt_with_autodiff_gradient(small_problem):
  problem, opt = small_problem
  x = np.asarray(problem.features)
  onehot = np.eye(problem.classes)[problem.labels]

  def smooth(w):  # mean cross-entropy, written out (no optax)
    logits = x @ w
    return np.mean(-np.sum(onehot * (logits - np.log(np.sum(np.exp(logits), 1, keepdims=True))), 1))

  with jax.enable_x64(True):
    grad = np.asarray(
      jax.grad(lambda w: jnp.mean(-jnp.sum(onehot * jax.nn.log_softmax(x @ w), 1)))(
        jnp.asarray(opt.kernel)
      )
    )
  threshold = 0.05 * np.sqrt(problem.classes)
  norms = np.linalg.norm(opt.kernel, axis=1)
  assert opt.support.any() and not opt.support.all()
  for j in range(len(norms)):
    if norms[j] > 0:  # stationarity on the support
      np.testing.assert_allclose(grad[j], -threshold * opt.kernel[j] / norms[j], atol=1e-7)
    else:  # the subgradient ball contains -grad
      assert np.linalg.norm(grad[j]) <= threshold + 1e-9
  assert opt.kkt_residual < 1e-7
  np.testing.assert_allclose(
    opt.margin, threshold - np.linalg.norm(grad[~opt.support], axis=1).max(), atol=1e-7
  )
  # and a global check: no random nearby point has a lower objective
  rng = np.random.default_rng(0)

  def objective(w):
    return smooth(w) + threshold * np.linalg.norm(w, axis=1).sum()

  base = objective(opt.kernel)
  for scale in (1e-4, 1e-2):
    for _ in range(50):
      assert objective(opt.kernel + scale * rng.normal(size=opt.kernel.shape)) >= base - 1e-12


def test_summarize_follows_definitions():
  optimal = np.array([True, False, True])
  supports = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1], [1, 0, 1], [1, 0, 1], [1, 0, 1]], bool)
  s = identification.summarize(supports, optimal)
  assert s["identified_at"] == 3
  assert s["final_error"] == 0
  assert s["changes_second_half"] == 0  # changes at steps 1, 2, 3 happen before step 3
  assert s["steps_on_optimal_support"] == pytest.approx(4 / 6)
  never = identification.summarize(supports[:3], optimal)
  assert never["identified_at"] is None and never["final_error"] == 1


def test_track_supports_records_the_structured_point(small_problem):
  problem, opt = small_problem
  tx = rmda_jax.rmda(0.3, momentum=0.1, regularizer=rmda_jax.group_lasso(0.05))
  run = identification.track_supports(tx, problem, steps=50, batch_size=8, seed=0, optimum=opt)
  assert run["supports"].shape == (50, problem.features.shape[1])
  np.testing.assert_array_equal(run["supports"][-1], np.any(run["structured"] != 0, axis=1))
  np.testing.assert_allclose(
    run["distances"][-1], np.linalg.norm(run["structured"] - opt.kernel), rtol=1e-5
  )
  baseline = identification.track_supports(
    rmda_jax.prox_sgd(0.1, regularizer=rmda_jax.group_lasso(0.05)), problem, 5, 8
  )
  assert baseline["distances"] is None and baseline["supports"].shape == (5, 6)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"classes": 1}, {"noise": -1.0}, {"copies": 1.5}])
def test_bad_problem_arguments(kwargs):
  name = next(iter(kwargs))
  with pytest.raises(ValueError, match=name):
    identification.group_sparse_logistic(**kwargs)


def test_bad_training_arguments(small_problem):
  problem, _ = small_problem
  with pytest.raises(ValueError, match="steps"):
    identification.track_supports(optax.sgd(0.1), problem, steps=0)
  with pytest.raises(ValueError, match="strength"):
    identification.solve_optimum(problem, strength=0.0)
