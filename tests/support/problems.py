"""A small mixed pytree (conv kernel, dense kernel, bias) and a noisy quadratic
loss, driven identically by the NumPy references and the JAX optimizers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

GROUPS = {"conv": (0, 1, 3), "dense": (1,), "bias": None}
SHAPES = {"conv": (3, 3, 2, 4), "dense": (6, 5), "bias": (5,)}


def make_problem(seed=0, steps=40, init_scale=0.1):
  rng = np.random.default_rng(seed)
  x = {n: rng.normal(size=s) * init_scale for n, s in SHAPES.items()}
  target = {n: rng.normal(size=s) * 0.3 for n, s in SHAPES.items()}
  target["dense"][:2] = 0.0  # groups that the penalty can remove
  target["conv"][:, :, 0, :] = 0.0
  scale = {n: rng.uniform(0.5, 2.0, size=s) for n, s in SHAPES.items()}
  noise = [{n: rng.normal(size=s) * 0.1 for n, s in SHAPES.items()} for _ in range(steps)]
  return x, target, scale, noise


def numpy_grad(target, scale, noise):
  step = {"t": 0}

  def grad(x):
    g = {n: scale[n] * (x[n] - target[n]) + noise[step["t"]][n] for n in x}
    step["t"] += 1
    return g

  return grad


def to_tree(d, dtype=jnp.float32):
  return {
    "conv": {"kernel": jnp.asarray(d["conv"], dtype)},
    "dense": {"kernel": jnp.asarray(d["dense"], dtype)},
    "bias": jnp.asarray(d["bias"], dtype),
  }


def from_tree(t):
  return {
    "conv": np.asarray(t["conv"]["kernel"], np.float64),
    "dense": np.asarray(t["dense"]["kernel"], np.float64),
    "bias": np.asarray(t["bias"], np.float64),
  }


def quadratic_step(tx, target, scale, compiler_options=None):
  """The jitted step ``(params, state, noise_t) -> (params, state)`` on the noisy quadratic."""
  jt, js = to_tree(target), to_tree(scale)

  @functools.partial(jax.jit, compiler_options=compiler_options)
  def step(params, state, noise_t):
    grads = jax.tree_util.tree_map(
      lambda s, p, t, n: (s * (p.astype(jnp.float32) - t) + n).astype(p.dtype),
      js,
      params,
      jt,
      noise_t,
    )
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def single_trace_step(tx):
  """A jitted ``(params, state, grads)`` step that fails if it is traced more than once."""
  import chex

  chex.clear_trace_counter()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  return step


def run_jax(tx, x, target, scale, noise, steps, dtype=jnp.float32, compiler_options=None):
  """``steps`` jitted updates on the quadratic; returns (params, state)."""
  step = quadratic_step(tx, target, scale, compiler_options)
  jn = [to_tree(n) for n in noise]
  params = to_tree(x, dtype)
  state = tx.init(params)
  for t in range(steps):
    params, state = step(params, state, jn[t])
  return params, state


def per_leaf_secular(bs, diags, thresholds, axes_list, **options):
  """rmda_jax.prox.secular.group_lasso_secular on one leaf per entry, its groups given by reduce
  axes."""
  from rmda_jax.core import GroupLayout, GroupRule
  from rmda_jax.prox import secular

  layouts = [
    GroupLayout.of_rule(b.shape, GroupRule(tuple(axes)), 1.0) for b, axes in zip(bs, axes_list)
  ]
  zs, iterations, residual = secular.group_lasso_secular(
    [[b] for b in bs], [[d] for d in diags], thresholds, layouts, **options
  )
  return [z[0] for z in zs], iterations, residual
