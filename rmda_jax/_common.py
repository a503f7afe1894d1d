"""Validation and small helpers shared by the optimizers."""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp

ScalarOrSchedule = Union[float, Callable[[jax.Array], jax.Array]]


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_schedule(value, argname: str) -> None:
  if not (callable(value) or is_number(value) or isinstance(value, jax.Array)):
    raise TypeError(f"{argname} must be a float or an optax schedule, got {type(value).__name__}.")


def check_learning_rate(value, argname: str = "learning_rate") -> None:
  check_schedule(value, argname)
  if is_number(value) and not (value >= 0 and math.isfinite(value)):
    raise ValueError(f"{argname} must be a finite number >= 0, got {value!r}.")


def check_momentum(value, argname: str = "momentum") -> None:
  """The papers' momentum: the weight c in (0, 1] of the new point (1 = none)."""
  check_schedule(value, argname)
  if is_number(value) and not 0 < value <= 1:
    raise ValueError(
        f"{argname} must be in (0, 1] (the weight of the new point: x <- (1-c) x + c z; "
        f"1 means no momentum), got {value!r}."
    )


def check_in_range(value, argname: str, low: float, high: float, low_open=False, high_open=True):
  if not is_number(value):
    raise TypeError(f"{argname} must be a number, got {type(value).__name__}.")
  ok_low = value > low if low_open else value >= low
  ok_high = value < high if high_open else value <= high
  if not (ok_low and ok_high):
    lb = "(" if low_open else "["
    rb = ")" if high_open else "]"
    raise ValueError(f"{argname} must be in {lb}{low}, {high}{rb}, got {value!r}.")


def check_int(value, argname: str, low: int = 1) -> None:
  """``value`` is an integer (not a bool) ``>= low``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ValueError(f"{argname} must be an integer >= {low}, got {value!r}.")


def evaluate(value: ScalarOrSchedule, count) -> jax.Array:
  """A hyperparameter at step ``count``, as a float32 scalar."""
  return jnp.asarray(value(count) if callable(value) else value, jnp.float32)


def require_params(params, name: str) -> None:
  if params is None:
    raise ValueError(
        f"{name}.update needs the current params: call tx.update(grads, state, params)."
    )


def to_float32(tree) -> Any:
  """Accumulator copy of a tree: float32 at least, whatever the params' dtype."""
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32)), tree
  )


def zeros_float32(tree) -> Any:
  return jax.tree_util.tree_map(
      lambda x: jnp.zeros(jnp.shape(x), jnp.promote_types(jnp.result_type(x), jnp.float32)), tree
  )


def updates_to(new_params, params) -> Any:
  """``new - params`` in the params' dtypes, so ``apply_updates`` lands on ``new``
  (exactly on every zero of ``new``)."""
  return jax.tree_util.tree_map(
      lambda new, x: (jnp.asarray(new).astype(jnp.result_type(x)) - x), new_params, params
  )


def cast_like(tree, like) -> Any:
  return jax.tree_util.tree_map(lambda a, x: jnp.asarray(a).astype(jnp.result_type(x)), tree, like)
