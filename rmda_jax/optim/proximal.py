r"""The proximal step: solve a :class:`Subproblem`, exactly where it can be, and keep the point.

Every optimizer of the library ends its chain with :func:`proximal_step`:

.. math::

   z = \arg\min_z \tfrac12\langle z, P z\rangle - \langle b, z\rangle
       + \mathrm{scale}\,\lambda\psi(z)
   \quad\big(z = \mathrm{prox}_{\mathrm{scale}\,\lambda\psi}(b)
   \ \text{when } P \text{ is None}\big),

where the :class:`Subproblem` comes from a metric block
(:mod:`rmda_jax.optim.preconditioners`) or a baseline's subproblem block
(:mod:`rmda_jax.optim.subproblems`).

Example:
  >>> import jax.numpy as jnp, rmda_jax
  >>> from rmda_jax.optim import Subproblem, proximal_step
  >>> tx = proximal_step(rmda_jax.group_lasso(1.0), keep_point=False)
  >>> b = {"w": jnp.array([[3.0, 4.0], [0.1, 0.1]])}
  >>> problem = Subproblem(b, None, jnp.float32(1.0), None, None, jnp.int32(0))
  >>> z, _ = tx.update(problem, tx.init({"w": jnp.zeros((2, 2))}))
  >>> [[round(v, 4) for v in row] for row in z["w"].tolist()]   # shrunk by sqrt(2) / norm
  [[2.1515, 2.8686], [0.0, 0.0]]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from rmda_jax.core import checks, trees
from rmda_jax.optim import chain
from rmda_jax.optim.schedules import value_at
from rmda_jax.prox import solvers
from rmda_jax.prox.regularizer import Regularizer, check_regularizer
from rmda_jax.prox.subproblem import empty_info


class Subproblem(NamedTuple):
  r"""A proximal subproblem for :func:`proximal_step`.

  With a diagonal ``metric`` ``P``: ``min_z 1/2 <z, P z> - <b, z> + scale *
  lambda psi(z)``; with ``metric=None`` (a scalar metric folded into ``b`` and
  ``scale``): ``z = prox_{scale * lambda psi}(b)``.

  Attributes:
    b: the linear term (the prox center when ``metric`` is None).
    metric: ``P >= 0`` shaped like the params, or None.
    scale: scalar multiplying the regularizer's strength.
    init: warm start of an iterative solve; None uses the previous point kept
      by :func:`proximal_step` (``keep_point=True``).
    anchor: the value of the coordinates where ``P == 0`` (unregularized);
      None means 0.
    count: int32, the step count (tolerance schedules of the solver).
    twin: optional, ``b`` computed a second time from the same inputs
      passed through ``jax.lax.optimization_barrier`` (see :func:`twin_of`);
      the closed-form prox reads its group norms from it (``metric=None``),
      except on the leaves of fewer than :data:`TWIN_MIN_ENTRIES` entries of
      a step that keeps its point (see :func:`proximal_step`).
  """

  b: optax.Params
  metric: optax.Params | None
  scale: jax.Array
  init: optax.Params | None
  anchor: optax.Params | None
  count: jax.Array
  twin: optax.Params | None = None


class ProximalStepState(NamedTuple):
  """State of :func:`proximal_step`.

  Attributes:
    structured: the last solution ``z`` in the params' dtypes (the exactly
      structured point), or ``optax.EmptyState()`` (``keep_point=False``).
    solver_info: iterations and final residual of the last solve, or
      ``optax.EmptyState()`` (``solver=None``).
  """

  structured: optax.Params
  solver_info: Any


#: A step that keeps its point reads the group norms of a leaf with at least
#: this many entries from ``Subproblem.twin``, of a smaller leaf from ``b``
#: itself (see :func:`proximal_step`): 4M float32 entries, 16 MB, so that
#: the prox centers XLA then stores stay under glibc's 32 MB mmap threshold
#: even two at a time.
TWIN_MIN_ENTRIES = 1 << 22


def twin_of(fn: Callable[..., Any], *operands: Any) -> Any:
  """``fn(*operands)`` on the operands passed through ``jax.lax.optimization_barrier``.

  The result holds the same values as ``fn(*operands)`` but XLA cannot merge
  the two computations, so each is fused into its own consumer. A prox
  whose group norms and scaling both read ``b = fn(*operands)`` would
  otherwise make XLA store ``b`` in a temporary buffer (its norm is a
  reduction that cannot share a fusion with the scaling), and on CPU every
  temporary is freshly allocated and page-faulted at every call. With the
  twin, the norms read the operands once more and nothing is stored.

  Example:
    >>> import jax.numpy as jnp
    >>> from rmda_jax.optim import twin_of
    >>> twin_of(lambda x, m: x - 0.5 * m, jnp.ones(2), jnp.ones(2)).tolist()
    [0.5, 0.5]
  """
  return fn(*jax.lax.optimization_barrier(operands))


def check_strength(
  strength: optax.ScalarOrSchedule | None, regularizer: Regularizer | None
) -> None:
  """A strength override needs a regularizer and is ``>= 0`` (where concrete)."""
  if strength is None:
    return
  if regularizer is None:
    raise ValueError(
      "strength is given but there is no regularizer to scale: pass regularizer=... too."
    )
  checks.check_scalar(strength, "strength", low=0.0, schedule=True)


def proximal_step(
  regularizer: Regularizer | None = None,
  solver: None | str | solvers.Solver = "auto",
  keep_point: bool = True,
  strength: optax.ScalarOrSchedule | None = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Solve a :class:`Subproblem`: the prox step, exact where it can be.

  .. math::

     z = \arg\min_z \tfrac12\langle z, P z\rangle - \langle b, z\rangle
         + \mathrm{scale}\,\lambda\psi(z)
     \quad\big(z = \mathrm{prox}_{\mathrm{scale}\,\lambda\psi}(b)
     \ \text{when } P \text{ is None}\big).

  A diagonal ``P`` is solved by :func:`rmda_jax.prox.solve`: exactly for
  no regularizer, L1 / elastic net and group-LASSO, by proximal gradient for
  the nuclear norm and other penalties (warm started at ``Subproblem.init``,
  or at the previous solution when that is None).

  Args:
    regularizer: a rmda_jax regularizer or None (then ``z`` is the
      unregularized minimizer).
    solver: ``"auto"``, ``"exact"``, ``"pgd"``, a
      :class:`~rmda_jax.prox.Exact` / :class:`~rmda_jax.prox.ProximalGradient`,
      or None for subproblems with ``metric=None`` only (the closed-form prox;
      no ``solver_info`` in the state).
    keep_point: keep the solution, in the params' dtypes, as
      ``state.structured`` (the exactly structured point that
      :func:`rmda_jax.structured_params` returns; also the default warm start).
    strength: ``lambda >= 0`` in place of ``regularizer.strength``: a number,
      a scalar array or a schedule of ``Subproblem.count`` (a penalty
      warm-up; injectable with ``optax.inject_hyperparams``); None keeps the
      regularizer's.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` mapping a :class:`Subproblem`
    to ``z`` (float32 at least); its state is a :class:`ProximalStepState`;
    ``update`` needs ``params`` with ``keep_point``.

  Example:
    >>> import jax.numpy as jnp, rmda_jax
    >>> from rmda_jax.optim import Subproblem, proximal_step
    >>> tx = proximal_step(rmda_jax.l1(1.0), keep_point=False)
    >>> problem = Subproblem({"w": jnp.array([[3.0, 0.5]])}, {"w": jnp.array([[2.0, 1.0]])},
    ...                      jnp.float32(1.0), None, None, jnp.int32(0))
    >>> z, state = tx.update(problem, tx.init({"w": jnp.zeros((1, 2))}))
    >>> z["w"].tolist()   # soft(b, 1) / P
    [[1.0, 0.0]]
  """
  check_regularizer(regularizer)
  check_strength(strength, regularizer)
  if solver is not None:
    solver = solvers.make_solver(solver, regularizer)
  if (
    strength is None
    and regularizer is not None
    and checks.is_tracer(getattr(regularizer, "strength", None))
  ):
    # a regularizer built inside the step with a traced strength: its value is known only
    # there, so it is guarded like a strength schedule
    strength = regularizer.strength

  guarded_strength = strength is not None and checks.known_only_in_step(strength)

  def regularizer_at(count: jax.Array) -> Regularizer | None:
    if strength is None or regularizer is None:  # check_strength: a strength has a regularizer
      return regularizer
    return dataclasses.replace(regularizer, strength=value_at(strength, count, checks.STRENGTH))

  def init_fn(params: optax.Params) -> Any:
    if regularizer is not None:
      regularizer.check(params)
    return ProximalStepState(
      structured=trees.fresh_copy(params) if keep_point else optax.EmptyState(),
      solver_info=optax.EmptyState() if solver is None else empty_info(),
    )

  def update_fn(
    updates: Any, state: Any, params: optax.Params | None = None, **extra_args: Any
  ) -> tuple[Any, Any]:
    del extra_args
    problem = updates
    reg = regularizer_at(problem.count)
    if problem.metric is None:
      statistics = problem.twin
      if keep_point and statistics is not None:
        # With the point kept, XLA stores b once (one small temporary or the
        # point's own buffer) and the norms, the point and what follows read
        # it, which takes fewer passes over a leaf than the twin (that reads
        # the accumulators again). Without a kept point, XLA would store every
        # leaf's b at once, a temporary page-faulted at every call, and so
        # would a leaf of TWIN_MIN_ENTRIES or more: those keep reading the twin.
        statistics = jax.tree_util.tree_map(
          lambda b, twin: b if b.size < TWIN_MIN_ENTRIES else twin, problem.b, statistics
        )
      z = problem.b if reg is None else reg.prox(problem.b, problem.scale, statistics=statistics)
      info = state.solver_info if solver is None else empty_info()
    else:
      if solver is None:
        raise ValueError("proximal_step(solver=None) solves only subproblems with metric=None.")
      init = problem.init
      if init is None and keep_point:
        init = trees.to_float32(state.structured)
      z, info = solvers.solve(
        reg,
        problem.b,
        problem.metric,
        problem.scale,
        init=init,
        solver=solver,
        count=problem.count,
        anchor=problem.anchor,
      )
    if guarded_strength and reg is not None:
      # a strength out of range is NaN here (value_at); the prox would read it as no threshold,
      # or as a threshold that zeroes everything: the point is NaN instead, never a fake structure
      invalid = jnp.isnan(reg.strength)
      z = jax.tree_util.tree_map(lambda a: jnp.where(invalid, jnp.nan, a), z)
    structured = state.structured
    if keep_point:
      params = chain.require_params(params, "proximal_step")
      structured = trees.cast_like(z, params)
      # The closed-form prox never reads the previous point, nor does any
      # solve read it on unregularized leaves: tie it to the new one so that
      # jit does not prune it as an unused argument, which would leave its
      # donated buffer unused and the new point in freshly allocated (on CPU:
      # page-faulted) memory at every call.
      structured, _ = jax.lax.optimization_barrier((structured, state.structured))
    return z, ProximalStepState(structured, info)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
