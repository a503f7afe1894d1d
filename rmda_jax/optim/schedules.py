"""Stage-wise training: learning-rate drops with restarts, and the momentum ramp.

The RMDA/RAMDA papers train in stages. At each milestone ``m`` (a global step
count: the update that runs after ``m`` updates have been applied),

* the learning rate is multiplied by ``gamma`` (so is RAMDA's ``eps``);
* the dual-averaging state restarts: ``x0 <- x`` (the current params, the
  momentum average), the sums and ``alpha`` go to 0, the in-stage counter
  ``k`` to 0.

After the last milestone the momentum weight ramps to 1,
``c_t = min(c0 * sqrt(t - ramp_start + 1), 1)`` for ``t >= ramp_start``, so the
model's params become the exactly structured point ``z``. The first ramped
step uses ``c0``, the next ``c0 * sqrt(2)``: the reference scheduler's count
starting at 2 after the first step of the stage. ``c = 1`` is reached after
``1/c0**2 - 1`` further steps (99 for ``c0 = 0.1``).

Everything is a pure function of the global step count that lives in the
optimizer state, so it runs inside a jitted ``update``.

Example:
  >>> import rmda_jax
  >>> stages = rmda_jax.stagewise(milestones=[100, 200], gamma=0.1)
  >>> tx = rmda_jax.rmda(0.1, momentum=0.1, regularizer=rmda_jax.group_lasso(1e-3),
  ...                    stages=stages)
  >>> stages = rmda_jax.Stagewise.from_epochs([50, 100], steps_per_epoch=469)

Baselines (ProxSGD, ProxAdamW, ProxSSI, SGD) only decay their learning rate:
``stages.learning_rate(0.1)`` is the equivalent optax schedule
(``optax.piecewise_constant_schedule``).

References:
  Huang & Lee, ICLR 2022 (arXiv:2112.02612), Section 5 and the public code's
  ``multistep_param_scheduler``.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks


@dataclasses.dataclass(frozen=True)
class Stagewise:
  """Milestones (global steps), the decay ``gamma`` and the momentum ramp.

  Attributes:
    milestones: strictly increasing step counts > 0 at which a stage starts.
    gamma: factor in (0, 1] applied to the learning rate (and RAMDA's eps)
      at every milestone.
    momentum_ramp: whether the momentum ramps to 1 from ``ramp_start``.
    ramp_start: step at which the ramp starts; None means the last milestone
      (no ramp when there are no milestones).
    restart: whether the dual-averaging state restarts at each milestone.
  """

  milestones: tuple = ()
  gamma: float = 0.1
  momentum_ramp: bool = True
  ramp_start: int | None = None
  restart: bool = True

  def __post_init__(self):
    if any(not isinstance(m, numbers.Integral) for m in self.milestones):
      raise ValueError(f"milestones must be integers (step counts), got {self.milestones!r}.")
    milestones = tuple(int(m) for m in self.milestones)
    if any(m <= 0 for m in milestones) or any(b <= a for a, b in zip(milestones, milestones[1:])):
      raise ValueError(
        f"milestones must be strictly increasing step counts > 0, got {self.milestones!r}."
      )
    object.__setattr__(self, "milestones", milestones)
    if not (isinstance(self.gamma, numbers.Real) and 0 < self.gamma <= 1):
      raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}.")
    if self.ramp_start is not None and not (
      isinstance(self.ramp_start, numbers.Integral) and self.ramp_start >= 0
    ):
      raise ValueError(f"ramp_start must be an integer >= 0 or None, got {self.ramp_start!r}.")

  @classmethod
  def from_epochs(cls, milestones: Sequence[int], steps_per_epoch: int, **kwargs: Any) -> Stagewise:
    """Milestones given in epochs, as in the papers' configs."""
    if not (isinstance(steps_per_epoch, numbers.Integral) and steps_per_epoch > 0):
      raise ValueError(f"steps_per_epoch must be an integer > 0, got {steps_per_epoch!r}.")
    return cls(milestones=tuple(int(m) * steps_per_epoch for m in milestones), **kwargs)

  @property
  def ramp_begins(self) -> int | None:
    if not self.momentum_ramp:
      return None
    if self.ramp_start is not None:
      return self.ramp_start
    return self.milestones[-1] if self.milestones else None

  def stage(self, count: jax.typing.ArrayLike) -> jax.Array:
    """Index of the stage that the update at step ``count`` belongs to."""
    if not self.milestones:
      return jnp.zeros((), jnp.int32)
    return jnp.sum(jnp.asarray(count) >= jnp.asarray(self.milestones, jnp.int32)).astype(jnp.int32)

  def decay(self, count: jax.typing.ArrayLike) -> jax.Array:
    """``gamma ** stage(count)``, the factor on the learning rate and eps."""
    return jnp.asarray(self.gamma, jnp.float32) ** self.stage(count).astype(jnp.float32)

  def is_restart(self, count: jax.typing.ArrayLike) -> jax.Array:
    """Whether the update at step ``count`` starts a new stage."""
    if not (self.milestones and self.restart):
      return jnp.zeros((), bool)
    return jnp.any(jnp.asarray(count) == jnp.asarray(self.milestones, jnp.int32))

  def momentum(self, c0: jax.typing.ArrayLike, count: jax.typing.ArrayLike) -> jax.Array:
    """The ramped momentum weight ``min(c0 sqrt(count - start + 1), 1)`` after the start."""
    c0 = jnp.asarray(c0, jnp.float32)
    start = self.ramp_begins
    if start is None:
      return c0
    n = (jnp.asarray(count) - start + 1).astype(jnp.float32)
    return jnp.where(n >= 1, jnp.minimum(c0 * jnp.sqrt(jnp.maximum(n, 1)), 1.0), c0)

  def learning_rate(self, base: float) -> optax.Schedule:
    """The learning-rate part as an optax schedule, for the baselines."""
    return optax.piecewise_constant_schedule(base, {m: self.gamma for m in self.milestones})


def stagewise(
  milestones: Sequence[int] = (),
  gamma: float = 0.1,
  momentum_ramp: bool = True,
  ramp_start: int | None = None,
  restart: bool = True,
) -> Stagewise:
  """Build a :class:`Stagewise` schedule (milestones in steps); see the module doc."""
  return Stagewise(tuple(milestones), gamma, momentum_ramp, ramp_start, restart)


def value_at(
  hyperparameter: optax.ScalarOrSchedule,
  count: chex.Numeric,
  bounds: checks.Bounds | None = None,
) -> jax.Array:
  """A hyperparameter (a number, a scalar array or a schedule) at step ``count``, float32.

  With ``bounds``, a value that could not be checked when the optimizer was
  built (a schedule's, or a traced array's) is guarded: NaN when out of range
  or not finite, and in checked mode a checkify error
  (:func:`rmda_jax.core.checks.set_checked_mode`).
  """
  value = jnp.asarray(
    hyperparameter(count) if callable(hyperparameter) else hyperparameter, jnp.float32
  )
  if bounds is None or not checks.known_only_in_step(hyperparameter):
    return value
  return checks.guarded(value, bounds, count)


def check_stages(stages: Any) -> None:
  """``stages`` is a :class:`Stagewise` or None.

  Raises:
    TypeError: anything else.
  """
  if stages is not None and not isinstance(stages, Stagewise):
    raise TypeError(
      "stages must be a rmda_jax.Stagewise (see rmda_jax.stagewise) or None, "
      f"got {type(stages).__name__}."
    )


def decay(stages: Stagewise | None, count: chex.Numeric) -> jax.Array:
  """``gamma ** stage(count)``, 1 without stages."""
  return jnp.ones((), jnp.float32) if stages is None else stages.decay(count)
