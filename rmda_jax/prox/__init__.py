"""Regularizers and the proximal subproblems they pose.

* what a regularizer is (:mod:`~rmda_jax.prox.regularizer`): a sum of terms
  over the params tree, with its value, prox, diagonal-metric prox and
  support; :class:`Regularizer` for penalties that couple leaves,
  :class:`LeafRegularizer` for those written leaf by leaf;
* the penalties: group-LASSO (:mod:`~rmda_jax.prox.group_norms`), L1 and
  the elastic net (:mod:`~rmda_jax.prox.entrywise`), the nuclear norm
  (:mod:`~rmda_jax.prox.spectral`), discrete weight sets
  (:mod:`~rmda_jax.prox.discrete`);
* the diagonally preconditioned subproblem of the adaptive methods
  (:mod:`~rmda_jax.prox.subproblem`), solved exactly
  (:mod:`~rmda_jax.prox.exact`, with group-LASSO's secular equation in
  :mod:`~rmda_jax.prox.secular`) or inexactly
  (:mod:`~rmda_jax.prox.inexact`), chosen by :func:`make_solver` /
  :func:`solve` (:mod:`~rmda_jax.prox.solvers`).

It imports :mod:`rmda_jax.core` only.
"""

from rmda_jax.prox import (
  discrete,
  entrywise,
  exact,
  group_norms,
  inexact,
  regularizer,
  secular,
  solvers,
  spectral,
  subproblem,
)
from rmda_jax.prox.discrete import (
  DiscretePenalty,
  DiscreteSet,
  DiscreteValues,
  discrete_penalty,
  discrete_set,
)
from rmda_jax.prox.entrywise import ElasticNet, elastic_net, l1
from rmda_jax.prox.exact import Exact
from rmda_jax.prox.group_norms import GroupLasso, group_lasso
from rmda_jax.prox.inexact import ProximalGradient
from rmda_jax.prox.regularizer import (
  LeafRegularizer,
  Placement,
  Regularizer,
  Term,
  check_regularizer,
)
from rmda_jax.prox.solvers import Solver, make_solver, solve
from rmda_jax.prox.spectral import NuclearNorm, nuclear_norm
from rmda_jax.prox.subproblem import SolverInfo

__all__ = [
  "DiscretePenalty",
  "DiscreteSet",
  "DiscreteValues",
  "ElasticNet",
  "Exact",
  "GroupLasso",
  "LeafRegularizer",
  "NuclearNorm",
  "Placement",
  "ProximalGradient",
  "Regularizer",
  "Solver",
  "SolverInfo",
  "Term",
  "check_regularizer",
  "discrete",
  "discrete_penalty",
  "discrete_set",
  "elastic_net",
  "entrywise",
  "exact",
  "group_lasso",
  "group_norms",
  "inexact",
  "l1",
  "make_solver",
  "nuclear_norm",
  "regularizer",
  "secular",
  "solve",
  "solvers",
  "spectral",
  "subproblem",
]
