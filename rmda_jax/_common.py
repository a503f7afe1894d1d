"""Validation and small helpers shared by the optimizers.

Hyperparameters (learning rate, momentum, eps, betas, strengths, ...) are
numbers or scalar arrays (``jax.typing.ArrayLike``, as in optax), and
schedules where the optimizer evaluates them per step. A concrete value is
checked for range when the optimizer is built; a traced one (inside
``jax.jit``, or a hyperparameter of ``optax.inject_hyperparams``) cannot be
read there and is used as given.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]

# ``skip_nonfinite=True``: optax.apply_if_finite never gives up (its int32
# counter saturates at this value, so ``count > max`` is never true).
NEVER_GIVE_UP = 2**31 - 1


def is_number(value) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_tracer(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def _is_array(value) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _range_text(low, high, low_open, high_open) -> str:
  if high == math.inf and low == -math.inf:
    return "a finite number"
  if high == math.inf:
    return f"a finite number {'>' if low_open else '>='} {low:g}"
  if low == -math.inf:
    return f"a finite number {'<' if high_open else '<='} {high:g}"
  return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_scalar(value, argname: str, low: float = -math.inf, high: float = math.inf,
                 low_open: bool = False, high_open: bool = False, schedule: bool = False,
                 concrete: bool = False, note: str = "") -> None:
  """Validate a scalar hyperparameter.

  ``value`` is a real number (not a bool) or a real scalar array; with
  ``schedule``, a callable too. Anything else is a TypeError naming
  ``argname``. A number or a concrete array must be finite and in the range
  ``low .. high`` (open ends as told), else a ValueError naming ``argname`` and
  the range (``note`` appended). A traced array is not checked (its value is
  unknown here); with ``concrete`` it is a TypeError instead.
  """
  accepted = "a number, a scalar array or an optax schedule" if schedule else "a number or a scalar array"
  if schedule and callable(value) and not _is_array(value):
    return
  if is_tracer(value):
    if concrete:
      raise TypeError(f"{argname} must be a concrete number, got a traced value ({value!r}); "
                      "it is used in Python when the optimizer is built.")
    return
  if is_number(value):
    number = value
  elif _is_array(value):
    dtype = np.result_type(value.dtype)
    if dtype == np.bool_ or not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
      raise TypeError(f"{argname} must be {accepted} (of an integer or floating dtype), "
                      f"got an array of dtype {dtype}.")
    if np.ndim(value) != 0:
      raise ValueError(f"{argname} must be a scalar ({_range_text(low, high, low_open, high_open)}), "
                       f"got an array of shape {np.shape(value)}.")
    number = float(np.asarray(value))
  else:
    raise TypeError(f"{argname} must be {accepted}, got {type(value).__name__} ({value!r:.60}).")
  ok_low = number > low if low_open else number >= low
  ok_high = number < high if high_open else number <= high
  if not (math.isfinite(number) and ok_low and ok_high):
    raise ValueError(f"{argname} must be {_range_text(low, high, low_open, high_open)}{note}, got {value!r}.")


def check_schedule(value, argname: str) -> None:
  """``value`` is a number, a scalar array or a schedule (type only)."""
  check_scalar(value, argname, schedule=True)


def check_learning_rate(value, argname: str = "learning_rate") -> None:
  check_scalar(value, argname, low=0.0, schedule=True)


def check_momentum(value, argname: str = "momentum") -> None:
  """The papers' momentum: the weight c in (0, 1] of the new point (1 = none)."""
  check_scalar(value, argname, 0.0, 1.0, low_open=True, schedule=True,
               note=" (the weight of the new point: x <- (1-c) x + c z; 1 means no momentum)")


def check_in_range(value, argname: str, low: float, high: float, low_open=False, high_open=True,
                   concrete=False):
  """A number or scalar array in ``[low, high)`` (ends as told); see :func:`check_scalar`."""
  check_scalar(value, argname, low, high, low_open=low_open, high_open=high_open, concrete=concrete)


def check_int(value, argname: str, low: int = 1) -> None:
  """``value`` is an integer (not a bool) ``>= low``."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ValueError(f"{argname} must be an integer >= {low}, got {value!r}.")


def check_integer(value, argname: str, low: int = 1) -> int:
  """A Python (or NumPy) integer ``>= low``: TypeError for another type, ValueError below ``low``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{argname} must be an integer >= {low}, got {type(value).__name__} ({value!r:.60}).")
  if value < low:
    raise ValueError(f"{argname} must be an integer >= {low}, got {value!r}.")
  return int(value)


def check_axes(axes, argname: str) -> tuple:
  """A sequence of integer axes (not bools, not floats) as a tuple of ints."""
  if isinstance(axes, (str, bytes)) or _is_array(axes) and np.ndim(axes) == 0:
    raise TypeError(f"{argname} must be a tuple of integer axes, e.g. (0,), got {axes!r}.")
  try:
    items = tuple(axes)
  except TypeError:
    raise TypeError(f"{argname} must be a tuple of integer axes, e.g. (0,), got {axes!r}.") from None
  out = []
  for a in items:
    is_bool = isinstance(a, (bool, np.bool_)) or (_is_array(a) and np.result_type(a.dtype) == np.bool_)
    try:
      index = None if is_bool else operator.index(a)
    except TypeError:
      index = None
    if index is None:
      raise TypeError(f"{argname} must hold integers (not bools or floats), got {axes!r}.")
    out.append(index)
  return tuple(out)


def check_skip_nonfinite(value) -> Optional[int]:
  """``skip_nonfinite`` as ``max_consecutive_errors`` of ``optax.apply_if_finite`` (None: off)."""
  if isinstance(value, (bool, np.bool_)):
    return NEVER_GIVE_UP if value else None
  if isinstance(value, numbers.Integral):
    if value < 0:
      raise ValueError(f"skip_nonfinite must be a bool or an integer >= 0, got {value!r}.")
    return int(value) or None
  raise TypeError(
      f"skip_nonfinite must be a bool or an integer >= 0 (a Python value; under "
      f"optax.inject_hyperparams list it in static_args), got {type(value).__name__}.")


def skip_nonfinite(tx, max_consecutive_errors: Optional[int]):
  """``tx`` wrapped in ``optax.apply_if_finite`` (as is for None)."""
  if max_consecutive_errors is None:
    return tx
  return optax.apply_if_finite(tx, max_consecutive_errors)


def evaluate(value: ScalarOrSchedule, count) -> jax.Array:
  """A hyperparameter at step ``count``, as a float32 scalar."""
  return jnp.asarray(value(count) if callable(value) else value, jnp.float32)


def require_params(params, name: str) -> None:
  if params is None:
    raise ValueError(
        f"{name}.update needs the current params: call tx.update(grads, state, params)."
    )


def _clip(text: str, limit: int = 1200) -> str:
  return text if len(text) <= limit else text[:limit] + " ..."


def check_like_params(tree, params, argname: str, hint: str = "") -> None:
  """``tree`` has the params' tree structure and leaf shapes, else a ValueError
  naming ``argname`` and showing both. Static: costs nothing under jit."""
  tree_def = jax.tree_util.tree_structure(tree)
  params_def = jax.tree_util.tree_structure(params)
  if tree_def != params_def:
    tree_paths = [jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
    param_paths = [jax.tree_util.keystr(kp) for kp, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    tree_set, param_set = set(tree_paths), set(param_paths)
    only_tree = [p for p in tree_paths if p not in param_set]
    only_params = [p for p in param_paths if p not in tree_set]
    detail = ""
    for where, paths in ((argname, only_tree), ("params", only_params)):
      if paths:
        detail += f"\n  leaves only in {where}: {', '.join(paths[:5])}{', ...' if len(paths) > 5 else ''}"
    raise ValueError(
        f"{argname} must have the params' tree structure{hint}.{detail}\n"
        f"  {argname}: {_clip(str(tree_def))}\n  params: {_clip(str(params_def))}")
  for (kp, leaf), param in zip(jax.tree_util.tree_flatten_with_path(tree)[0], jax.tree_util.tree_leaves(params)):
    if jnp.shape(leaf) != jnp.shape(param):
      raise ValueError(
          f"{argname} must have the params' shapes{hint}: leaf {jax.tree_util.keystr(kp)} has shape "
          f"{jnp.shape(leaf)}, the param {jnp.shape(param)}.")


def check_update_args(grads, state_tree, params, name: str) -> None:
  """``update``'s checks: params given, grads and the state's params-shaped
  ``state_tree`` shaped like them."""
  require_params(params, name)
  check_like_params(grads, params, "grads")
  check_like_params(state_tree, params, f"the {name} state",
                    hint=" (was it made by tx.init with other params?)")


def to_float32(tree) -> Any:
  """Accumulator copy of a tree: float32 at least, whatever the params' dtype."""
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(x, jnp.promote_types(jnp.result_type(x), jnp.float32)), tree
  )


def fresh_copy(tree, accumulator: bool = False) -> Any:
  """A copy of ``tree`` in new buffers (float32 at least with ``accumulator``),
  never aliasing the input: an optimizer state built from the params must
  survive ``jax.jit(..., donate_argnums=...)`` donating both."""
  def copy(x):
    dtype = jnp.result_type(x)
    if accumulator:
      dtype = jnp.promote_types(dtype, jnp.float32)
    return jnp.array(x, dtype=dtype, copy=True)

  return jax.tree_util.tree_map(copy, tree)


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


def optional_import(module: str, purpose: str, extra: str = "examples"):
  """Import an optional dependency, or raise an ImportError naming the extra that installs it."""
  import importlib

  try:
    return importlib.import_module(module)
  except ImportError as err:
    package = module.split(".")[0].replace("_", "-")
    raise ImportError(f"{purpose} needs {package}: pip install \"rmda-jax[{extra}]\"") from err
