"""Independent NumPy (float64) re-derivations of the algorithms, for the tests.

Written from the specification's equations, sharing no code with rmda_jax.
Params are dicts of numpy arrays; a "groups" dict maps a leaf name to the
tuple of reduced axes (None = unregularized).
"""

import numpy as np


def group_weight(shape, axes):
  return np.sqrt(np.prod([shape[a] for a in axes])) if axes else 1.0


def prox_group_lasso(y, thr, axes):
  """max(0, 1 - thr w / ||y_g||) y_g, with w = sqrt(group size)."""
  w = group_weight(y.shape, axes)
  norm = np.sqrt(np.sum(y * y, axis=axes, keepdims=True))
  with np.errstate(divide="ignore", invalid="ignore"):
    factor = np.where(norm > thr * w, 1 - thr * w / norm, 0.0)
  return factor * y


def prox_l1(y, thr):
  return np.sign(y) * np.maximum(np.abs(y) - thr, 0)


def prox_nuclear(y, thr):
  m = y.reshape(-1, y.shape[-1])
  u, s, vt = np.linalg.svd(m, full_matrices=False)
  return ((u * np.maximum(s - thr, 0)) @ vt).reshape(y.shape)


def prox_tree(kind, tree, thr, groups):
  out = {}
  for name, y in tree.items():
    axes = groups.get(name)
    if axes is None or kind is None:
      out[name] = y
    elif kind == "group_lasso":
      out[name] = prox_group_lasso(y, thr, axes)
    elif kind == "l1":
      out[name] = prox_l1(y, thr)
    elif kind == "nuclear":
      out[name] = prox_nuclear(y, thr)
    else:
      raise ValueError(kind)
  return out


def rmda_run(x, grad_fn, steps, lr, c, lam, kind, groups):
  """RMDA as in the spec: s_k = lr sqrt(k); z = prox_{(alpha/sqrt k) lam}(x0 - V/sqrt k)."""
  x = {k: v.astype(np.float64) for k, v in x.items()}
  x0 = {k: v.copy() for k, v in x.items()}
  V = {k: np.zeros_like(v) for k, v in x.items()}
  alpha = 0.0
  zs = []
  for k in range(1, steps + 1):
    g = grad_fn(x)
    s = lr * np.sqrt(k)
    alpha += s
    for n in V:
      V[n] = V[n] + s * g[n]
    y = {n: x0[n] - V[n] / np.sqrt(k) for n in x}
    z = prox_tree(kind, y, alpha / np.sqrt(k) * lam, groups)
    x = {n: (1 - c) * x[n] + c * z[n] for n in x}
    zs.append(z)
  return x, zs


# --------------------------------------------------------------- diagonal-metric subproblems
def diag_prox_group_bisect(b, P, thr, axes, iters=200):
  """argmin 1/2 z'Pz - b'z + thr w ||z_g|| per group, by bisection on r = ||z_g||."""
  w = group_weight(b.shape, axes)
  tau = thr * w
  bn = np.sqrt(np.sum(b * b, axis=axes, keepdims=True))
  active = bn > tau
  lo = np.zeros_like(bn)
  p_min = np.min(
    np.where(b != 0, P, np.inf), axis=axes, keepdims=True
  )  # coordinates with b = 0 stay 0
  hi = np.where(active, (bn - tau) / np.where(active, p_min, 1), 0)
  for _ in range(iters):
    mid = (lo + hi) / 2
    f = np.sqrt(np.sum((b / (P * mid + tau)) ** 2, axis=axes, keepdims=True))
    lo = np.where(f > 1, mid, lo)
    hi = np.where(f > 1, hi, mid)
  r = (lo + hi) / 2
  return np.where(active, r * b / (P * r + tau), 0)


def diag_prox_fista(b, P, prox, iters=1500, step_axes=None):
  """argmin 1/2 z'Pz - b'z + psi(z) by FISTA with step 1/max(P) (over step_axes)."""
  Pmax = np.max(P) if step_axes is None else np.max(P, axis=step_axes, keepdims=True)
  eta = 1.0 / Pmax
  z = b / P
  v, t = z.copy(), 1.0
  for _ in range(iters):
    z_new = prox(v - eta * (P * v - b), eta)
    t_new = (1 + np.sqrt(1 + 4 * t * t)) / 2
    v = z_new + (t - 1) / t_new * (z_new - z)
    z, t = z_new, t_new
  return z


def diag_prox(kind, b, P, thr, axes):
  if kind is None or axes is None:
    return b / P
  if kind == "group_lasso":
    return diag_prox_group_bisect(b, P, thr, axes)
  if kind == "l1":
    return np.sign(b) * np.maximum(np.abs(b) - thr, 0) / P
  if kind == "nuclear":
    return diag_prox_fista(b, P, lambda y, eta: prox_nuclear(y, eta * thr))
  raise ValueError(kind)


def ramda_run(x, grad_fn, steps, lr, c, lam, kind, groups, eps):
  x = {k: v.astype(np.float64) for k, v in x.items()}
  x0 = {k: v.copy() for k, v in x.items()}
  V = {k: np.zeros_like(v) for k, v in x.items()}
  U = {k: np.zeros_like(v) for k, v in x.items()}
  alpha = 0.0
  for k in range(1, steps + 1):
    g = grad_fn(x)
    s = lr * np.sqrt(k)
    alpha += s
    z = {}
    for n in x:
      V[n] = V[n] + s * g[n]
      U[n] = U[n] + s * g[n] ** 2
      P = np.cbrt(U[n]) + eps
      z[n] = diag_prox(kind, P * x0[n] - V[n], P, alpha * lam, groups.get(n))
    x = {n: (1 - c) * x[n] + c * z[n] for n in x}
  return x, z


def prox_sgd_run(x, grad_fn, steps, lr, c, lam, kind, groups):
  x = {k: v.astype(np.float64) for k, v in x.items()}
  m = {k: None for k in x}
  for _ in range(steps):
    g = grad_fn(x)
    for n in x:
      m[n] = c * g[n] if m[n] is None else (1 - c) * m[n] + c * g[n]
    x = prox_tree(kind, {n: x[n] - lr * m[n] for n in x}, lr * lam, groups)
  return x


def _adam_prox_run(x, grad_fn, steps, b1, b2, prox_step):
  """Adam moments in float64; ``prox_step(x_n, m_n, v_n, t, name)`` gives each new leaf."""
  x = {k: v.astype(np.float64) for k, v in x.items()}
  m = {k: np.zeros_like(v) for k, v in x.items()}
  v = {k: np.zeros_like(v) for k, v in x.items()}
  for t in range(1, steps + 1):
    g = grad_fn(x)
    new = {}
    for n in x:
      m[n] = b1 * m[n] + (1 - b1) * g[n]
      v[n] = b2 * v[n] + (1 - b2) * g[n] ** 2
      new[n] = prox_step(x[n], m[n], v[n], t, n)
    x = new
  return x


def prox_adamw_run(x, grad_fn, steps, lr, lam, kind, groups, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
  def prox_step(xn, m, v, t, n):
    D = np.sqrt(v) / np.sqrt(1 - b2**t) + eps
    a = lr / (1 - b1**t)
    return diag_prox(kind, D * (1 - lr * wd) * xn - a * m, D, lr * lam, groups.get(n))

  return _adam_prox_run(x, grad_fn, steps, b1, b2, prox_step)


def prox_ssi_run(x, grad_fn, steps, lr, lam, kind, groups, b1=0.9, b2=0.999, eps=1e-6):
  def prox_step(xn, m, v, t, n):
    D = np.sqrt(v) + eps
    y = xn - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / D
    return diag_prox(kind, D * y, D, lr * lam, groups.get(n))

  return _adam_prox_run(x, grad_fn, steps, b1, b2, prox_step)


def stagewise_run(
  method,
  x,
  grad_fn,
  epochs,
  steps_per_epoch,
  milestones,
  gamma,
  lr,
  c0,
  lam,
  kind,
  groups,
  eps=1e-6,
):
  """The reference multistep scheduler driving RMDA/RAMDA, written as the papers' epoch loop.

  After each epoch whose number (1-based) is a milestone: lr and eps times gamma,
  and a restart (k, alpha, sums <- 0, x0 <- x). After every step of an epoch
  past the last milestone: count += 1 (from 1), c = min(c0 sqrt(count), 1).
  Returns the params after every step, the z of every step and the c used.
  """
  x = {k: v.astype(np.float64) for k, v in x.items()}

  def zeros():
    return {k: np.zeros_like(v) for k, v in x.items()}

  x0, V, U, alpha, k = {n: v.copy() for n, v in x.items()}, zeros(), zeros(), 0.0, 0
  c, count = c0, 1
  xs, zs, cs = [], [], []
  for epoch in range(epochs):
    for _ in range(steps_per_epoch):
      g = grad_fn(x)
      k += 1
      s = lr * np.sqrt(k)
      alpha += s
      z = {}
      for n in x:
        V[n] = V[n] + s * g[n]
        if method == "rmda":
          y = x0[n] - V[n] / np.sqrt(k)
          z[n] = prox_tree(kind, {n: y}, alpha / np.sqrt(k) * lam, groups)[n]
        else:
          U[n] = U[n] + s * g[n] ** 2
          P = np.cbrt(U[n]) + eps
          z[n] = diag_prox(kind, P * x0[n] - V[n], P, alpha * lam, groups.get(n))
      x = {n: (1 - c) * x[n] + c * z[n] for n in x}
      xs.append(x)
      zs.append(z)
      cs.append(c)
      if epoch + 1 > milestones[-1]:
        count += 1
        c = min(c0 * np.sqrt(count), 1.0)
    if epoch + 1 in milestones:
      lr *= gamma
      eps *= gamma
      x0, V, U, alpha, k = {n: v.copy() for n, v in x.items()}, zeros(), zeros(), 0.0, 0
  return xs, zs, cs
