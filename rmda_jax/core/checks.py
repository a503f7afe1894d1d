"""Checks of hyperparameters and arguments, done where an object is built.

Hyperparameters (learning rate, momentum, eps, betas, strengths, ...) are
numbers or scalar arrays (``jax.typing.ArrayLike``, as in optax), and
schedules where the optimizer evaluates them per step. A concrete value is
checked for range when the optimizer is built; a traced one (inside
``jax.jit``, or a hyperparameter of ``optax.inject_hyperparams``) cannot be
read there and is used as given. Every failure is a ``TypeError`` (wrong
kind of value) or a ``ValueError`` (out of range) whose message names the
argument and what it accepts.

Example:
  >>> from rmda_jax.core import checks
  >>> checks.check_momentum(0.1)
  >>> checks.check_momentum(0.0)  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: momentum must be in (0, 1] (the weight of the new point: ...), got 0.0.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.core import Tracer

#: ``skip_nonfinite=True`` as ``optax.apply_if_finite``'s ``max_consecutive_errors``:
#: its int32 counter saturates at this value, so ``count > max`` is never true.
NEVER_GIVE_UP = 2**31 - 1


def is_number(value: Any) -> bool:
  """Whether ``value`` is a real Python or NumPy number (a bool is not)."""
  return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def is_tracer(value: Any) -> bool:
  """Whether ``value`` is a traced array (its value is unknown when the check runs)."""
  return isinstance(value, Tracer)


def _is_array(value: Any) -> bool:
  return isinstance(value, (jax.Array, np.ndarray, np.generic))


def _range_text(low: float, high: float, low_open: bool, high_open: bool) -> str:
  if high == math.inf and low == -math.inf:
    return "a finite number"
  if high == math.inf:
    return f"a finite number {'>' if low_open else '>='} {low:g}"
  if low == -math.inf:
    return f"a finite number {'<' if high_open else '<='} {high:g}"
  return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def check_scalar(
  value: Any,
  argname: str,
  low: float = -math.inf,
  high: float = math.inf,
  low_open: bool = False,
  high_open: bool = False,
  schedule: bool = False,
  concrete: bool = False,
  note: str = "",
) -> None:
  """Validate a scalar hyperparameter.

  ``value`` is a real number (not a bool) or a real scalar array; with
  ``schedule``, a callable too. Anything else is a TypeError naming
  ``argname``. A number or a concrete array must be finite and in the range
  ``low .. high`` (open ends as told), else a ValueError naming ``argname`` and
  the range (``note`` appended). A traced array is not checked (its value is
  unknown here); with ``concrete`` it is a TypeError instead.

  Args:
    value: the hyperparameter.
    argname: its name, for the message.
    low: the lowest accepted value.
    high: the highest accepted value.
    low_open: whether ``low`` itself is excluded.
    high_open: whether ``high`` itself is excluded.
    schedule: whether a callable (an optax schedule) is accepted.
    concrete: whether a traced value is refused.
    note: appended to the range in the message.

  Raises:
    TypeError: not a number, scalar array (or schedule); traced with ``concrete``.
    ValueError: out of range, non-finite, or an array that is not a scalar.
  """
  accepted = (
    "a number, a scalar array or an optax schedule" if schedule else "a number or a scalar array"
  )
  if schedule and callable(value) and not _is_array(value):
    return
  value = cast(Any, value)  # a number or an array from here on
  if is_tracer(value):
    if concrete:
      raise TypeError(
        f"{argname} must be a concrete number, got a traced value ({value!r}); "
        "it is used in Python when the optimizer is built."
      )
    return
  if is_number(value):
    number = float(value)
  elif _is_array(value):
    dtype = np.result_type(value.dtype)
    if dtype == np.bool_ or not (
      jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)
    ):
      raise TypeError(
        f"{argname} must be {accepted} (of an integer or floating dtype), "
        f"got an array of dtype {dtype}."
      )
    if np.ndim(value) != 0:
      raise ValueError(
        f"{argname} must be a scalar ({_range_text(low, high, low_open, high_open)}), "
        f"got an array of shape {np.shape(value)}."
      )
    number = float(np.asarray(value))
  else:
    raise TypeError(f"{argname} must be {accepted}, got {type(value).__name__} ({value!r:.60}).")
  ok_low = number > low if low_open else number >= low
  ok_high = number < high if high_open else number <= high
  if not (math.isfinite(number) and ok_low and ok_high):
    raise ValueError(
      f"{argname} must be {_range_text(low, high, low_open, high_open)}{note}, got {value!r}."
    )


def check_learning_rate(value: Any, argname: str = "learning_rate") -> None:
  """A learning rate: ``>= 0``, a number, a scalar array or a schedule."""
  check_scalar(value, argname, low=0.0, schedule=True)


def check_momentum(value: Any, argname: str = "momentum") -> None:
  """The papers' momentum: the weight c in (0, 1] of the new point (1 = none)."""
  check_scalar(
    value,
    argname,
    0.0,
    1.0,
    low_open=True,
    schedule=True,
    note=" (the weight of the new point: x <- (1-c) x + c z; 1 means no momentum)",
  )


def check_nonnegative(value: Any, argname: str) -> None:
  """A finite number ``>= 0`` or such a scalar array (a traced array is not checked)."""
  check_scalar(value, argname, low=0.0)


def check_in_range(
  value: Any,
  argname: str,
  low: float,
  high: float,
  low_open: bool = False,
  high_open: bool = True,
  concrete: bool = False,
) -> None:
  """A number or scalar array in ``[low, high)`` (ends as told); see :func:`check_scalar`."""
  check_scalar(value, argname, low, high, low_open=low_open, high_open=high_open, concrete=concrete)


def check_integer(value: Any, argname: str, low: int = 1) -> int:
  """A Python (or NumPy) integer ``>= low``, returned as an int.

  Raises:
    TypeError: not an integer (a bool is not one).
    ValueError: below ``low``.
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(
      f"{argname} must be an integer >= {low}, got {type(value).__name__} ({value!r:.60})."
    )
  if value < low:
    raise ValueError(f"{argname} must be an integer >= {low}, got {value!r}.")
  return int(value)


def check_axes(axes: Any, argname: str) -> tuple[int, ...]:
  """A sequence of integer axes (not bools, not floats) as a tuple of ints.

  Raises:
    TypeError: not a sequence of integers.
  """
  if isinstance(axes, (str, bytes)) or _is_array(axes) and np.ndim(axes) == 0:
    raise TypeError(f"{argname} must be a tuple of integer axes, e.g. (0,), got {axes!r}.")
  try:
    items = tuple(axes)
  except TypeError:
    raise TypeError(
      f"{argname} must be a tuple of integer axes, e.g. (0,), got {axes!r}."
    ) from None
  out = []
  for a in items:
    is_bool = isinstance(a, (bool, np.bool_)) or (
      _is_array(a) and np.result_type(a.dtype) == np.bool_
    )
    try:
      index = None if is_bool else operator.index(cast(Any, a))
    except TypeError:
      index = None
    if index is None:
      raise TypeError(f"{argname} must hold integers (not bools or floats), got {axes!r}.")
    out.append(index)
  return tuple(out)


def check_skip_nonfinite(value: Any) -> int | None:
  """``skip_nonfinite`` as ``max_consecutive_errors`` of ``optax.apply_if_finite`` (None: off).

  ``True`` is :data:`NEVER_GIVE_UP`, ``False`` and ``0`` are None, an integer
  ``n >= 1`` is ``n``.

  Raises:
    TypeError: not a bool or an integer (e.g. a traced value).
    ValueError: a negative integer.
  """
  if isinstance(value, (bool, np.bool_)):
    return NEVER_GIVE_UP if value else None
  if isinstance(value, numbers.Integral):
    if value < 0:
      raise ValueError(f"skip_nonfinite must be a bool or an integer >= 0, got {value!r}.")
    return int(value) or None
  raise TypeError(
    f"skip_nonfinite must be a bool or an integer >= 0 (a Python value; under "
    f"optax.inject_hyperparams list it in static_args), got {type(value).__name__}."
  )


class Bounds(NamedTuple):
  """The accepted range of a hyperparameter, for :func:`guarded`."""

  argname: str
  low: float = -math.inf
  high: float = math.inf
  low_open: bool = False
  high_open: bool = False

  def text(self) -> str:
    """The range in words (``a finite number >= 0``, ``in (0, 1]``)."""
    return _range_text(self.low, self.high, self.low_open, self.high_open)


LEARNING_RATE = Bounds("learning_rate", low=0.0)
MOMENTUM = Bounds("momentum", 0.0, 1.0, low_open=True)
STRENGTH = Bounds("strength", low=0.0)

_checked_mode = False


def set_checked_mode(enabled: bool) -> None:
  """Turn the checked mode of hyperparameters on or off (off by default).

  A hyperparameter whose value is only known in the step (a schedule, or a
  traced array under ``jax.jit`` or ``optax.inject_hyperparams``) cannot be
  checked when the optimizer is built. Its value is always guarded in the
  step: one out of range or not finite is replaced by NaN, so the update is
  NaN (and a finiteness check, e.g. ``optax.apply_if_finite`` on the next
  gradient or the training loop's, sees it) instead of a finite, fake
  structure. In checked mode the step also reports it as a
  ``jax.experimental.checkify`` error naming the argument, the range, the
  value and the step: run the step under ``checkify.checkify`` and call
  ``err.throw()``.

  The mode is read when a step is traced: set it before the first call of a
  jitted step (or clear its cache with ``jax.clear_caches()``).

  Example:
    >>> import jax, jax.numpy as jnp, optax, rmda_jax
    >>> from jax.experimental import checkify
    >>> from rmda_jax.core import checks
    >>> checks.set_checked_mode(True)
    >>> tx = rmda_jax.rmda(optax.linear_schedule(0.5, -0.5, 4))  # -0.25 at step 3
    >>> params = {"w": jnp.ones(3)}
    >>> @jax.jit
    ... def step(params, state):
    ...   updates, state = tx.update({"w": jnp.ones(3)}, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> checked = jax.jit(checkify.checkify(step))
    >>> state = tx.init(params)
    >>> for _ in range(4):
    ...   err, (params, state) = checked(params, state)
    >>> print(err.get().split(" (")[0])
    learning_rate must be a finite number >= 0, got -0.25 at step 3
    >>> checks.set_checked_mode(False)
  """
  global _checked_mode
  _checked_mode = bool(enabled)


def checked_mode() -> bool:
  """Whether the checked mode of :func:`set_checked_mode` is on."""
  return _checked_mode


def known_only_in_step(value: Any) -> bool:
  """Whether a hyperparameter's value is unknown when the optimizer is built.

  A schedule or a traced array: the construction-time checks could not see
  it, so the step guards it (:func:`guarded`).
  """
  return (callable(value) and not _is_array(value)) or is_tracer(value)


def guarded(value: jax.Array, bounds: Bounds, step: Any) -> jax.Array:
  """``value`` if finite and within ``bounds``, else NaN; in checked mode also a checkify error.

  For hyperparameters evaluated in the step (see :func:`set_checked_mode`).
  """
  low_ok = value > bounds.low if bounds.low_open else value >= bounds.low
  high_ok = value < bounds.high if bounds.high_open else value <= bounds.high
  valid = jnp.isfinite(value) & low_ok & high_ok
  if _checked_mode:
    from jax.experimental import checkify

    checkify.check(
      valid,
      f"{bounds.argname} must be {bounds.text()}, got {{value}} at step {{step}}",
      value=value,
      step=step,
    )
  return jnp.where(valid, value, jnp.nan)
