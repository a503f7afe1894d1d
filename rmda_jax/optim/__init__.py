r"""The optimizers, as optax transformations, and the building blocks they are chained from.

The optimizers (:mod:`~rmda_jax.optim.dual_averaging`: :func:`rmda`,
:func:`ramda`; :mod:`~rmda_jax.optim.baselines`: :func:`prox_sgd`,
:func:`prox_adamw`, :func:`prox_ssi`; :mod:`~rmda_jax.optim.rigl`:
:func:`rigl`) are short ``optax.chain``\ s of building blocks, each an
``optax.GradientTransformationExtraArgs`` with a NamedTuple state:

* ``rmda  = dual_averaging_center     -> sqrt_k_metric    -> proximal_step -> momentum_average``
* ``ramda = accumulate_dual_averaging -> cube_root_metric -> proximal_step -> momentum_average``
* ``prox_sgd   = dampened_momentum -> proximal_gradient_subproblem -> proximal_step -> to_updates``
* ``prox_adamw = adam_moments -> proxgen_subproblem  -> proximal_step -> to_updates``
* ``prox_ssi   = adam_moments -> prox_ssi_subproblem -> proximal_step -> to_updates``

Between the blocks flows a params-shaped tree or a small NamedTuple:
:class:`DualAverage` (from :mod:`~rmda_jax.optim.accumulators`),
:class:`AdamMoments` (from :mod:`~rmda_jax.optim.moments`), and the
:class:`Subproblem` (from :mod:`~rmda_jax.optim.preconditioners` or
:mod:`~rmda_jax.optim.subproblems`) that :func:`proximal_step` solves; the
new point becomes updates in :mod:`~rmda_jax.optim.updates`. A new variant is
a new chain. :func:`structured_params` (:mod:`~rmda_jax.optim.structured`)
finds the exactly structured point in any state; :mod:`~rmda_jax.optim.schedules`
has the stage-wise schedule, :mod:`~rmda_jax.optim.sharding` the state's
shardings.

Example: dual averaging whose metric is Adam's second moment instead of
RAMDA's cube root of the weighted sum of squared gradients:

  >>> import jax.numpy as jnp, optax, rmda_jax
  >>> from rmda_jax import optim
  >>> tx = optax.chain(
  ...     optim.accumulate_dual_averaging(0.1, grads=True),
  ...     optim.adam_metric(b2=0.999),
  ...     optim.proximal_step(rmda_jax.group_lasso(1.0)),
  ...     optim.momentum_average(1.0))
  >>> params = {"w": jnp.array([[1.0, 1.0], [1.0, 1.0]])}
  >>> state = tx.init(params)
  >>> grads = {"w": jnp.array([[0.1, 0.1], [5.0, -5.0]])}
  >>> updates, state = tx.update(grads, state, params)
  >>> params = optax.apply_updates(params, updates)
  >>> bool((params["w"][0] == 0).all()), bool((params["w"][1] != 0).all())   # group 0 removed
  (True, True)
  >>> rmda_jax.structured_params(state)["w"].shape
  (2, 2)

It imports :mod:`rmda_jax.prox` and :mod:`rmda_jax.core`.
"""

from rmda_jax.optim import (
  accumulators,
  baselines,
  chain,
  dual_averaging,
  moments,
  preconditioners,
  proximal,
  pruning,
  schedules,
  sharding,
  structured,
  subproblems,
  updates,
)
from rmda_jax.optim.accumulators import (
  DualAverage,
  DualAveragingCenterState,
  DualAveragingSumsState,
  accumulate_dual_averaging,
  dual_averaging_center,
)
from rmda_jax.optim.baselines import ProxAdamState, ProxSGDState, prox_adamw, prox_sgd, prox_ssi
from rmda_jax.optim.chain import CountState, named_chain
from rmda_jax.optim.dual_averaging import DualAveragingState, ramda, rmda
from rmda_jax.optim.moments import (
  AdamMoments,
  DampenedMomentumState,
  adam_moments,
  dampened_momentum,
)
from rmda_jax.optim.preconditioners import (
  AdamMetricState,
  adam_metric,
  cube_root_metric,
  sqrt_k_metric,
)
from rmda_jax.optim.proximal import ProximalStepState, Subproblem, proximal_step, twin_of
from rmda_jax.optim.pruning import RigLState, rigl
from rmda_jax.optim.schedules import Stagewise, stagewise
from rmda_jax.optim.structured import structured_params
from rmda_jax.optim.subproblems import (
  prox_ssi_subproblem,
  proxgen_subproblem,
  proximal_gradient_subproblem,
)
from rmda_jax.optim.updates import momentum_average, to_updates

__all__ = [
  "AdamMetricState",
  "AdamMoments",
  "CountState",
  "DampenedMomentumState",
  "DualAverage",
  "DualAveragingCenterState",
  "DualAveragingState",
  "DualAveragingSumsState",
  "ProxAdamState",
  "ProxSGDState",
  "ProximalStepState",
  "RigLState",
  "Stagewise",
  "Subproblem",
  "accumulate_dual_averaging",
  "accumulators",
  "adam_metric",
  "adam_moments",
  "baselines",
  "chain",
  "cube_root_metric",
  "dampened_momentum",
  "dual_averaging",
  "dual_averaging_center",
  "moments",
  "momentum_average",
  "named_chain",
  "preconditioners",
  "prox_adamw",
  "prox_sgd",
  "prox_ssi",
  "prox_ssi_subproblem",
  "proxgen_subproblem",
  "proximal",
  "proximal_gradient_subproblem",
  "proximal_step",
  "pruning",
  "ramda",
  "rigl",
  "rmda",
  "schedules",
  "sharding",
  "sqrt_k_metric",
  "stagewise",
  "structured",
  "structured_params",
  "subproblems",
  "to_updates",
  "twin_of",
  "updates",
]
