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
