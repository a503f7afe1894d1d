"""What every block of a chain shares: a count state, the update checks, named chains, skipping.

Example:
  >>> import jax.numpy as jnp, optax, rmda_jax
  >>> from typing import NamedTuple
  >>> from rmda_jax.optim import chain
  >>> class TwoStates(NamedTuple):
  ...   clip: optax.EmptyState
  ...   sgd: optax.ScaleByScheduleState
  >>> tx = chain.named_chain(TwoStates, optax.clip(1.0), optax.scale_by_learning_rate(0.1))
  >>> type(tx.init({"w": jnp.ones(2)})).__name__
  'TwoStates'
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core.trees import check_like_params, check_real_floating


class CountState(NamedTuple):
  """State of the blocks that only need the step count.

  The field is not named ``count``: a block holding it sits beside the
  optimizer's own counter (the dual-averaging sums, the momentum), and
  ``optax.tree_utils.tree_get(state, "count")`` must find exactly one.

  Attributes:
    steps: int32, updates applied so far.
  """

  steps: jax.Array


def zero_count() -> jax.Array:
  """The int32 step count of a fresh state."""
  return jnp.zeros((), jnp.int32)


def next_count(count: jax.Array) -> jax.Array:
  """``count + 1``, saturating at the int32 maximum (``optax.safe_int32_increment``)."""
  return cast(jax.Array, optax.safe_int32_increment(count))


def require_params(params: optax.Params | None, name: str) -> optax.Params:
  """``params``, which ``update`` needs.

  Raises:
    ValueError: they were not passed, naming ``name``.
  """
  if params is None:
    raise ValueError(
      f"{name}.update needs the current params: call tx.update(grads, state, params)."
    )
  return params


def check_update_args(
  grads: optax.Updates, state_tree: optax.Params, params: optax.Params | None, name: str
) -> optax.Params:
  """``update``'s checks, returning the params: given, grads and ``state_tree`` shaped like them.

  Static: costs nothing under jit.

  Raises:
    ValueError: no params, or grads or state of another structure or shapes.
  """
  params = require_params(params, name)
  check_like_params(grads, params, "grads")
  check_like_params(
    state_tree, params, f"the {name} state", hint=" (was it made by tx.init with other params?)"
  )
  return params


def named_chain(
  state_type: type,
  *transforms: optax.GradientTransformation,
  check: Callable[[Any, Any, Any], None] | None = None,
  name: str | None = None,
) -> optax.GradientTransformationExtraArgs:
  """``optax.chain(*transforms)`` whose state is ``state_type(*states)`` instead of a tuple.

  Args:
    state_type: a NamedTuple with one field per transformation (it may add
      properties that read into them, as :class:`rmda_jax.DualAveragingState`
      does).
    *transforms: the transformations, in order.
    check: if given, ``check(grads, state, params)`` runs first in ``update``.
    name: if given, ``init`` refuses params that are not real floating point
      (:func:`~rmda_jax.core.trees.check_real_floating`), naming ``name``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.
  """
  chained = optax.chain(*transforms)

  def init_fn(params: optax.Params) -> Any:
    if name is not None:
      check_real_floating(params, name)
    return state_type(*cast(tuple, chained.init(params)))

  def update_fn(
    updates: optax.Updates, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[optax.Updates, Any]:
    if check is not None:
      check(updates, state, params)
    updates, new_state = chained.update(updates, tuple(state), params, **extra_args)
    return updates, state_type(*cast(tuple, new_state))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def skipping_nonfinite(
  tx: optax.GradientTransformation, max_consecutive_errors: int | None
) -> optax.GradientTransformation:
  """``tx`` wrapped in ``optax.apply_if_finite`` (``tx`` itself for None).

  ``max_consecutive_errors`` comes from
  :func:`rmda_jax.core.checks.check_skip_nonfinite`.
  """
  if max_consecutive_errors is None:
    return tx
  return optax.apply_if_finite(tx, max_consecutive_errors)
