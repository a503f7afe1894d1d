"""The exactly structured point ``z`` of a (possibly chained) optimizer state.

RMDA and RAMDA keep ``z``, the prox output where the structure is exact, in
their state while the params move towards it with the papers' momentum;
:func:`structured_params` finds it inside any state made of optax
combinators (``optax.chain``, ``optax.inject_hyperparams``,
``optax.apply_if_finite``), as ``optax.contrib.schedule_free_eval_params``
does for schedule-free optimizers.

Example:
  >>> import jax.numpy as jnp, optax, rmda_jax
  >>> tx = optax.inject_hyperparams(rmda_jax.rmda)(learning_rate=0.1, momentum=0.1)
  >>> state = tx.init({"w": jnp.ones(3)})
  >>> rmda_jax.structured_params(state)["w"].tolist()
  [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import trees
from rmda_jax.optim.accumulators import DualAveragingCenterState, DualAveragingSumsState
from rmda_jax.optim.baselines import ProxAdamState, ProxSGDState
from rmda_jax.optim.dual_averaging import DualAveragingState
from rmda_jax.optim.proximal import ProximalStepState
from rmda_jax.prox.regularizer import Regularizer


def _find_states(state, types) -> list:
  found = []

  def visit(node):
    if isinstance(node, types):
      found.append(node)
    elif isinstance(node, (tuple, list)):
      for child in node:
        visit(child)
    elif isinstance(node, dict):
      for child in node.values():
        visit(child)

  visit(state)
  return found


def recompute_point(
  sums: DualAveragingCenterState | DualAveragingSumsState, regularizer: Regularizer | None
) -> optax.Params:
  """RMDA's ``z_k = prox_{(alpha_k/sqrt(k)) lambda psi}(x0 - V_k/sqrt(k))`` from its sums (float32).

  The point :func:`rmda` computes at step ``k`` (the anchor before the first
  step); from sums that keep ``V_k`` instead of the center, to float32
  rounding. ``regularizer`` must be the one the optimizer used, at the
  strength of that step.
  """
  k = sums.stage_count
  sqrt_k = jnp.sqrt(jnp.maximum(k, 1).astype(jnp.float32))
  y = sums.center
  z = y if regularizer is None else regularizer.prox(y, sums.alpha / sqrt_k)
  return jax.tree_util.tree_map(lambda zz, x0: jnp.where(k > 0, zz, x0), z, sums.anchor)


def structured_params(
  state: optax.OptState, params: optax.Params | None = None, regularizer: Regularizer | None = None
) -> optax.Params:
  """The exactly structured point ``z`` kept by :func:`rmda` / :func:`ramda`.

  Walks a possibly nested optimizer state (``optax.chain``,
  ``optax.inject_hyperparams``, ``optax.apply_if_finite`` as made by
  ``skip_nonfinite``, ...) to the one dual-averaging state in it, or to the
  one :func:`rmda_jax.optim.proximal.proximal_step` that keeps its point (a chain of
  the building blocks of :mod:`rmda_jax.optim`).
  For the proximal baselines (``prox_sgd``, ``prox_adamw``, ``prox_ssi``),
  whose iterate is the prox output itself, pass ``params`` and get them back.
  For ``rmda(..., keep_point=False)``, pass the ``regularizer`` it uses and
  ``z`` is recomputed from the state (:func:`recompute_point`).

  Args:
    state: an optimizer state.
    params: the current params, returned for the proximal baselines (and
      giving the recomputed point their dtypes).
    regularizer: for an RMDA state without its point.

  Raises:
    ValueError: no (or more than one) dual-averaging state is found and the
      state is not a proximal baseline's; an RMDA state without its point
      and no ``regularizer``.

  Example:
    >>> import jax.numpy as jnp, optax, rmda_jax
    >>> tx = optax.chain(optax.clip_by_global_norm(1.0), rmda_jax.rmda(0.1))
    >>> state = tx.init({"w": jnp.ones((2, 2))})
    >>> rmda_jax.structured_params(state)["w"].shape
    (2, 2)
  """
  candidates = _find_states(state, (DualAveragingState, ProximalStepState))
  found = [s for s in candidates if not isinstance(s.structured, optax.EmptyState)]
  if len(found) == 1:
    return found[0].structured
  if len(found) > 1:
    raise ValueError(f"the state holds {len(found)} rmda/ramda states; pass the one you mean.")
  pointless = [
    s
    for s in candidates
    if isinstance(s, DualAveragingState) and isinstance(s.sq_grad_sum, optax.EmptyState)
  ]
  if len(pointless) == 1:
    if regularizer is None:
      raise ValueError(
        "this rmda state does not keep its point (keep_point=False): pass the regularizer "
        "it uses, structured_params(state, regularizer=...), to recompute it."
      )
    z = recompute_point(pointless[0].sums, regularizer)
    return z if params is None else trees.cast_like(z, params)
  if params is not None and _find_states(state, (ProxSGDState, ProxAdamState)):
    return params
  raise ValueError(
    "no rmda/ramda state found in this optimizer state (for prox_sgd / prox_adamw / "
    "prox_ssi, the params themselves are structured: pass params=...)."
  )
