"""Structure identification on a convex problem whose optimal support is known.

The papers' central claim is that RMDA / RAMDA find the support (the nonzero
groups) of the regularized optimum after finitely many steps and keep it,
while proximal stochastic methods keep flipping groups on and off. This module
makes the claim checkable:

* :func:`group_sparse_logistic`: a multinomial logistic regression with one
  group per input feature, on a finite "augmented" dataset (every example
  appears as several fixed noisy copies), so the objective is a finite sum;
* :func:`solve_optimum`: its group-LASSO optimum by full-batch FISTA in
  float64, with the KKT residual and the screening margin of the zero groups;
* :func:`track_supports`: minibatch training with any optimizer of this
  package, recording the support of the structured point (``z`` for
  RMDA/RAMDA, the iterate for the proximal baselines) and its distance to the
  optimum at every step, in one jitted ``lax.scan``;
* :func:`summarize`: when the support became the optimal one for good, the
  final support error, and how often it moved.

The objective is ``1/n sum_i CE(x_i W, y_i) + lambda sum_j sqrt(C) ||W_j||``
(``W_j`` the row of feature ``j``, ``C`` the number of classes), the default
input-wise grouping of :func:`rmda_jax.group_lasso` on a ``(d, C)`` kernel.

Example:
  >>> from rmda_jax.app import identification
  >>> problem = identification.group_sparse_logistic(seed=0, n=40, copies=2)
  >>> problem.features.shape, problem.classes
  ((80, 20), 4)
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmda_jax
from rmda_jax.app import steps as training_steps


def _check_count(value: Any, name: str, low: int = 1) -> None:
  """An integer (not a bool) ``>= low``; anything else is a ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")


@dataclasses.dataclass(frozen=True)
class Problem:
  """A finite-sum group-sparse logistic regression.

  Attributes:
    features: ``(n * copies, d)`` float64 inputs, noisy copies included.
    labels: ``(n * copies,)`` integer classes.
    classes: number of classes ``C``.
    informative: the first ``informative`` features carry the signal.
  """

  features: np.ndarray
  labels: np.ndarray
  classes: int
  informative: int


@dataclasses.dataclass(frozen=True)
class Optimum:
  """The regularized optimum and how well it is known.

  Attributes:
    kernel: ``W*``, shape ``(d, C)``.
    support: boolean ``(d,)``, the nonzero groups of ``W*``.
    kkt_residual: norm of the smallest subgradient of the objective at ``W*``.
    margin: ``min over zero groups of lambda sqrt(C) - ||grad_j||`` (how far the
      zero groups are from becoming nonzero; > 0 means a strict support).
  """

  kernel: np.ndarray
  support: np.ndarray
  kkt_residual: float
  margin: float


def group_sparse_logistic(
  seed: int = 0,
  n: int = 400,
  copies: int = 5,
  informative: int = 10,
  noise_features: int = 10,
  classes: int = 4,
  noise: float = 0.3,
) -> Problem:
  """A random problem where only the first ``informative`` features matter.

  Args:
    seed: NumPy seed.
    n: distinct examples (>= 1).
    copies: fixed noisy copies of each example (>= 1), the "augmentation".
    informative: features that carry the signal (>= 1).
    noise_features: pure-noise features (>= 0).
    classes: number of classes (>= 2).
    noise: standard deviation of the copies' input noise (>= 0).
  """
  for name, value, low in (
    ("n", n, 1),
    ("copies", copies, 1),
    ("informative", informative, 1),
    ("noise_features", noise_features, 0),
    ("classes", classes, 2),
  ):
    _check_count(value, name, low)
  if not noise >= 0:
    raise ValueError(f"noise must be >= 0, got {noise!r}.")
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
  features = np.concatenate([x + noise * rng.normal(size=x.shape) for _ in range(copies)])
  return Problem(features, np.concatenate([y] * copies), classes, informative)


def _softmax_grad(problem: Problem, kernel: np.ndarray) -> np.ndarray:
  x, onehot = problem.features, np.eye(problem.classes)[problem.labels]
  logits = x @ kernel
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  return x.T @ (p - onehot) / len(x)


def _group_shrink(v: np.ndarray, threshold: float) -> np.ndarray:
  norm = np.linalg.norm(v, axis=1, keepdims=True)
  return np.where(norm > threshold, 1 - threshold / np.where(norm > 0, norm, 1), 0) * v


def solve_optimum(problem: Problem, strength: float, iters: int = 20000) -> Optimum:
  """The group-LASSO optimum by full-batch FISTA in float64.

  Args:
    problem: from :func:`group_sparse_logistic`.
    strength: ``lambda > 0``.
    iters: FISTA iterations (the KKT residual of the result tells whether
      they were enough).
  """
  if not strength > 0:
    raise ValueError(f"strength must be > 0, got {strength!r}.")
  x = problem.features
  weight = np.sqrt(problem.classes)
  lipschitz = np.linalg.norm(x, 2) ** 2 / len(x) / 2  # softmax CE Hessian <= 1/2 X^T X / n
  kernel = np.zeros((x.shape[1], problem.classes))
  extrapolated, t = kernel.copy(), 1.0
  for _ in range(iters):
    new = _group_shrink(
      extrapolated - _softmax_grad(problem, extrapolated) / lipschitz, strength * weight / lipschitz
    )
    t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
    extrapolated = new + (t - 1) / t_new * (new - kernel)
    kernel, t = new, t_new
  grad = _softmax_grad(problem, kernel)
  norms = np.linalg.norm(kernel, axis=1)
  support = norms > 0
  safe = np.where(support, norms, 1)[:, None]
  nonzero_part = np.where(support[:, None], grad + strength * weight * kernel / safe, 0)
  grad_norms = np.linalg.norm(grad, axis=1)
  zero_part = np.maximum(grad_norms - strength * weight, 0)[~support]
  residual = float(np.sqrt(np.sum(nonzero_part**2) + np.sum(zero_part**2)))
  margin = float(np.min(strength * weight - grad_norms[~support])) if (~support).any() else np.inf
  return Optimum(kernel, support, residual, margin)


def stagewise_methods(strength: float, steps: int) -> dict[str, optax.GradientTransformation]:
  """Every optimizer of the package on this problem, with the papers' protocol.

  Learning rate x 0.1 at 50% and 75% of ``steps`` (RMDA/RAMDA also restart
  their dual averaging there, see :func:`rmda_jax.stagewise`), one
  group-LASSO of strength ``strength``, learning rates tuned for
  :func:`group_sparse_logistic`'s defaults.

  Returns:
    ``{name: optax.GradientTransformation}`` for rmda, ramda, prox_sgd,
    prox_adamw and prox_ssi.
  """
  reg = rmda_jax.group_lasso(strength)
  stages = rmda_jax.stagewise([steps // 2, 3 * steps // 4], gamma=0.1, momentum_ramp=False)
  return {
    "rmda": rmda_jax.rmda(0.3, momentum=0.1, regularizer=reg, stages=stages),
    "ramda": rmda_jax.ramda(0.05, momentum=0.1, regularizer=reg, stages=stages),
    "prox_sgd": rmda_jax.prox_sgd(stages.learning_rate(0.5), momentum=0.1, regularizer=reg),
    "prox_adamw": rmda_jax.prox_adamw(stages.learning_rate(0.01), regularizer=reg),
    "prox_ssi": rmda_jax.prox_ssi(stages.learning_rate(0.01), regularizer=reg),
  }


def _structured_kernel(state: optax.OptState, params: optax.Params) -> jax.Array:
  """The kernel of the structured point of ``state`` (or of the iterate ``params``).

  The point has the structure of ``params``, ``{"kernel": array}``.
  """
  point = cast("dict[str, jax.Array]", rmda_jax.structured_params(state, params))
  return point["kernel"]


def track_supports(
  optimizer: optax.GradientTransformation,
  problem: Problem,
  steps: int,
  batch_size: int = 16,
  seed: int = 0,
  optimum: Optimum | None = None,
) -> dict[str, np.ndarray | None]:
  """Train ``{"kernel": zeros(d, C)}`` by minibatch steps and record the structure.

  Args:
    optimizer: any optimizer of this package (or a chain holding one).
    problem: from :func:`group_sparse_logistic`.
    steps: number of steps (>= 1).
    batch_size: examples per step, drawn with replacement (>= 1).
    seed: seed of the minibatch draws.
    optimum: when given, the distance of the structured point to its kernel
      is recorded at every step.

  Returns:
    ``{"supports": (steps, d) bool, "structured": (d, C) final structured
    point, "distances": (steps,) or None}`` as NumPy arrays.
  """
  _check_count(steps, "steps")
  _check_count(batch_size, "batch_size")
  x = jnp.asarray(problem.features, jnp.float32)
  y = jnp.asarray(problem.labels)
  draws = jnp.asarray(np.random.default_rng(seed).integers(0, len(x), size=(steps, batch_size)))
  target = None if optimum is None else jnp.asarray(optimum.kernel, jnp.float32)
  params = {"kernel": jnp.zeros((x.shape[1], problem.classes), jnp.float32)}

  step = training_steps.make_step(
    training_steps.softmax_cross_entropy(lambda p, xb: xb @ p["kernel"]), optimizer
  )

  @jax.jit
  def run(params):
    def body(carry, idx):
      p, s, _ = step(*carry, x[idx], y[idx])
      z = _structured_kernel(s, p)
      distance = jnp.zeros(()) if target is None else jnp.linalg.norm(z - target)
      return (p, s), (jnp.any(z != 0, axis=1), distance)

    (p, s), (supports, distances) = jax.lax.scan(body, (params, optimizer.init(params)), draws)
    return supports, distances, _structured_kernel(s, p)

  supports, distances, structured = run(params)
  return {
    "supports": np.asarray(supports),
    "structured": np.asarray(structured),
    "distances": None if optimum is None else np.asarray(distances),
  }


def summarize(supports: np.ndarray, optimal: np.ndarray) -> dict[str, int | float | None]:
  """How a support trajectory relates to the optimal support.

  Returns:
    ``identified_at``: the first step after which the support equals
    ``optimal`` until the end, or None if the last step differs;
    ``final_error``: groups whose zero/nonzero status differs at the end;
    ``changes_second_half``: steps of the second half where the support moved;
    ``steps_on_optimal_support``: fraction of steps on the optimal support.

  Example:
    >>> import numpy as np
    >>> s = np.array([[1, 1], [1, 0], [1, 1], [1, 0], [1, 0]], bool)
    >>> summarize(s, np.array([True, False]))["identified_at"]
    3
  """
  supports = np.asarray(supports, bool)
  match = (supports == np.asarray(optimal, bool)).all(axis=1)
  identified = None
  if match[-1]:
    mismatched = np.nonzero(~match)[0]
    identified = int(mismatched[-1] + 1) if len(mismatched) else 0
  changes = np.any(supports[1:] != supports[:-1], axis=1)
  return {
    "identified_at": identified,
    "final_error": int(np.sum(supports[-1] != optimal)),
    "changes_second_half": int(changes[len(match) // 2 :].sum()),
    "steps_on_optimal_support": float(match.mean()),
  }
