"""What every layer of the library speaks: numbers, arguments, trees and groups.

* :mod:`~rmda_jax.core.numerics`: arithmetic without 0/0 (group norms,
  shrink factors, soft thresholds) that keeps a NaN visible;
* :mod:`~rmda_jax.core.checks`: the checks of hyperparameters and arguments,
  each failing with a ``TypeError`` / ``ValueError`` that names the argument
  and the accepted range;
* :mod:`~rmda_jax.core.trees`: pytree helpers (``/``-joined key paths,
  float32 accumulator copies, updates that land exactly on a new point);
* :mod:`~rmda_jax.core.groups`: what a group is (:class:`Slice`,
  :class:`Family`, :class:`Groups`);
* :mod:`~rmda_jax.core.rules`: per-leaf rules (:class:`GroupRule`,
  :class:`Elementwise`, :class:`Matrix`) and the Flax-aware defaults;
* :mod:`~rmda_jax.core.layout`: groups laid on concrete leaves
  (:class:`GroupLayout`), the per-group sums every layer above reads;
* :mod:`~rmda_jax.core.extras`: optional dependencies.

Nothing here imports another subpackage of :mod:`rmda_jax`.
"""

from rmda_jax.core import checks, extras, groups, layout, numerics, rules, trees
from rmda_jax.core.groups import Family, Groups, Slice, Unprunable
from rmda_jax.core.layout import GroupLayout
from rmda_jax.core.rules import (
  Elementwise,
  GroupRule,
  Matrix,
  PerLayer,
  by_path,
  layer_axes_of,
  per_layer,
)

__all__ = [
  "Elementwise",
  "Family",
  "GroupLayout",
  "GroupRule",
  "Groups",
  "Matrix",
  "PerLayer",
  "Slice",
  "Unprunable",
  "by_path",
  "checks",
  "extras",
  "groups",
  "layer_axes_of",
  "layout",
  "numerics",
  "per_layer",
  "rules",
  "trees",
]
