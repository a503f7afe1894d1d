"""ProxSSI's bias-corrected metric (``prox_ssi(..., bias_correction=True)``) against NumPy.

The reference is written here from the formulas (Adam's moments, the
bias-corrected metric ``D = sqrt(v / (1 - b2^t)) + eps``, the Adam step, and
the group-LASSO prox in the metric ``D`` solved by bisection on its secular
equation), independently of the library's solvers. The default
(``bias_correction=False``) must keep the original's numbers.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rmda_jax

LR, B1, B2, EPS = 0.05, 0.9, 0.999, 1e-6


def _group_prox_metric(y, d, tau):
  """argmin_z 1/2 (z - y)^T diag(d) (z - y) + tau ||z||, by bisection on r = ||z||."""
  if np.linalg.norm(d * y) <= tau:
    return np.zeros_like(y)

  def phi(r):  # decreasing in r, phi(0) > 0
    return np.sum((d * y / (d * r + tau)) ** 2) - 1.0

  lo, hi = 0.0, np.linalg.norm(y)
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if phi(mid) > 0 else (lo, mid)
  r = 0.5 * (lo + hi)
  return d * r * y / (d * r + tau)


def _reference(x, grads, strength, regularizer, bias_correction):
  """NumPy ProxSSI: per step Adam moments, metric, Adam step, prox (kernel rows are the groups)."""
  m = {k: np.zeros_like(v) for k, v in x.items()}
  v = {k: np.zeros_like(v) for k, v in x.items()}
  x = {k: val.copy() for k, val in x.items()}
  for t, g in enumerate(grads, start=1):
    for k in x:
      m[k] = B1 * m[k] + (1 - B1) * g[k]
      v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
      if bias_correction:
        d = np.sqrt(v[k] / (1 - B2**t)) + EPS
        y = x[k] - LR * (m[k] / (1 - B1**t)) / d
      else:
        d = np.sqrt(v[k]) + EPS
        y = x[k] - LR * np.sqrt(1 - B2**t) / (1 - B1**t) * m[k] / d
      if k != "kernel":  # the bias is not regularized
        x[k] = y
      elif regularizer == "l1":
        x[k] = np.sign(y) * np.maximum(np.abs(y) - LR * strength / d, 0.0)
      else:
        tau = LR * strength * np.sqrt(y.shape[1])  # w_g = sqrt(group size), one group per input row
        x[k] = np.stack([_group_prox_metric(y[i], d[i], tau) for i in range(y.shape[0])])
  return x


def _run(x, grads, strength, regularizer, bias_correction):
  reg = rmda_jax.group_lasso(strength) if regularizer == "group_lasso" else rmda_jax.l1(strength)
  tx = rmda_jax.prox_ssi(
    LR, b1=B1, b2=B2, eps=EPS, regularizer=reg, bias_correction=bias_correction
  )
  params = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
  state = tx.init(params)
  for g in grads:
    updates, state = tx.update(
      {k: jnp.asarray(v, jnp.float32) for k, v in g.items()}, state, params
    )
    params = optax.apply_updates(params, updates)
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


def _problem(seed=0):
  rng = np.random.default_rng(seed)
  x = {
    "kernel": rng.normal(size=(5, 4)) * np.array([[1.0], [0.05], [1.0], [0.02], [0.5]]),
    "bias": rng.normal(size=(4,)),
  }
  grads = [{k: rng.normal(size=v.shape) for k, v in x.items()} for _ in range(2)]
  return x, grads


# strengths that remove some groups / entries and keep others (the faithful metric's threshold is
# ~30x larger in the first steps, hence its smaller strengths)
@pytest.mark.parametrize(
  "regularizer,strength,bias_correction",
  [
    ("group_lasso", 1.5, True),
    ("group_lasso", 0.05, False),
    ("l1", 1.0, True),
    ("l1", 0.03, False),
  ],
)
def test_two_steps_match_numpy(regularizer, strength, bias_correction):
  x, grads = _problem()
  for steps in (1, 2):
    want = _reference(x, grads[:steps], strength, regularizer, bias_correction)
    got = _run(x, grads[:steps], strength, regularizer, bias_correction)
    for k in want:
      np.testing.assert_allclose(
        got[k], want[k], rtol=2e-5, atol=2e-6, err_msg=f"{k} after {steps} step(s)"
      )
      np.testing.assert_array_equal(got[k] == 0, want[k] == 0)
  # the case is not vacuous: some groups (rows) / entries are removed, others kept
  kernel = np.abs(_reference(x, grads, strength, regularizer, bias_correction)["kernel"])
  units = kernel.sum(axis=1) if regularizer == "group_lasso" else kernel
  assert (units == 0).any() and (units > 0).any()


def test_corrected_metric_removes_less_in_the_first_steps():
  """The faithful metric sqrt(v_t) ~ 0.03 |g| at t = 1 inflates the threshold ~32x: it removes
  groups that the corrected metric keeps."""
  x, grads = _problem(1)
  faithful = _run(x, grads[:1], 0.3, "group_lasso", False)["kernel"]
  corrected = _run(x, grads[:1], 0.3, "group_lasso", True)["kernel"]

  def kept(k):
    return int((np.abs(k).sum(axis=1) > 0).sum())

  assert kept(corrected) > kept(faithful)


def test_default_is_the_faithful_metric():
  x, grads = _problem(2)
  reg = rmda_jax.group_lasso(0.3)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
  a, b = (
    rmda_jax.prox_ssi(LR, regularizer=reg),
    rmda_jax.prox_ssi(LR, regularizer=reg, bias_correction=False),
  )
  ua, _ = a.update(
    {k: jnp.asarray(v, jnp.float32) for k, v in grads[0].items()}, a.init(params), params
  )
  ub, _ = b.update(
    {k: jnp.asarray(v, jnp.float32) for k, v in grads[0].items()}, b.init(params), params
  )
  for k in ua:
    np.testing.assert_array_equal(np.asarray(ua[k]), np.asarray(ub[k]))


def test_bias_correction_must_be_a_bool():
  with pytest.raises(TypeError, match="bias_correction"):
    rmda_jax.prox_ssi(LR, bias_correction="yes")


def test_jits_with_a_traced_strength():
  x, grads = _problem(3)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in x.items()}
  g = {k: jnp.asarray(v, jnp.float32) for k, v in grads[0].items()}

  @jax.jit
  def step(strength):
    tx = rmda_jax.prox_ssi(LR, regularizer=rmda_jax.group_lasso(strength), bias_correction=True)
    updates, _ = tx.update(g, tx.init(params), params)
    return optax.apply_updates(params, updates)["kernel"]

  want = _reference(x, grads[:1], 0.3, "group_lasso", True)["kernel"]
  np.testing.assert_allclose(np.asarray(step(jnp.float32(0.3))), want, rtol=2e-5, atol=2e-6)
