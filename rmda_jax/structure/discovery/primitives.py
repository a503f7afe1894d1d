"""The primitives discovery knows, by how their dimensions and zeros behave.

Pass 1 (:mod:`~rmda_jax.structure.discovery.graph`) links dimensions by these
classes; pass 2 (:mod:`~rmda_jax.structure.discovery.exits`) follows zeros:
a multiplicative primitive's output vanishes where any operand does, an
additive one's where all do, a zero-preserving unary one's where its
operand does.
"""

from __future__ import annotations

# Elementwise primitives whose output is 0 where their (first) operand is 0.
ZERO_PRESERVING_UNARY = frozenset(
  {
    "neg",
    "sin",
    "tan",
    "tanh",
    "erf",
    "sqrt",
    "cbrt",
    "abs",
    "sign",
    "square",
    "expm1",
    "log1p",
    "asin",
    "atan",
    "sinh",
    "asinh",
    "atanh",
    "convert_element_type",
    "reduce_precision",
    "copy",
    "copy_p",
    "stop_gradient",
    "floor",
    "ceil",
    "round",
    "real",
    "imag",
    "erf_inv",
    "optimization_barrier",
    "sharding_constraint",
    "mesh_cast",
    "reshard",
  }
)


OTHER_UNARY = frozenset(
  {
    "exp",
    "exp2",
    "log",
    "cos",
    "acos",
    "cosh",
    "acosh",
    "logistic",
    "rsqrt",
    "erfc",
    "is_finite",
    "not",
    "integer_pow",
    "population_count",
    "clz",
    "lgamma",
    "digamma",
    "bessel_i0e",
    "bessel_i1e",
    "conj",
  }
)


MULTIPLICATIVE = frozenset({"mul", "and"})


ADDITIVE = frozenset({"add", "sub", "max", "min", "add_any", "or", "xor"})


OTHER_BINARY = frozenset(
  {
    "div",
    "rem",
    "pow",
    "atan2",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "nextafter",
    "shift_left",
    "shift_right_logical",
    "shift_right_arithmetic",
    "igamma",
    "igammac",
    "random_gamma_grad",
    "polygamma",
    "zeta",
  }
)

#: Primitives on operands of one shape (up to size-1 broadcasting), entry by entry.
ELEMENTWISE = MULTIPLICATIVE | ADDITIVE | OTHER_BINARY | frozenset({"select_n", "clamp"})


LAYOUT = frozenset(
  {
    "convert_element_type",
    "reduce_precision",
    "copy",
    "copy_p",
    "reshape",
    "transpose",
    "broadcast_in_dim",
    "squeeze",
    "sharding_constraint",
    "mesh_cast",
    "reshard",
  }
)


REDUCTIONS = frozenset(
  {
    "reduce_sum",
    "reduce_max",
    "reduce_min",
    "reduce_prod",
    "reduce_and",
    "reduce_or",
    "reduce_xor",
    "argmax",
    "argmin",
  }
)


CUMULATIVE = frozenset({"cumsum", "cumprod", "cummax", "cummin", "cumlogsumexp"})


SOURCES = frozenset(
  {
    "iota",
    "random_bits",
    "random_seed",
    "random_wrap",
    "random_unwrap",
    "random_fold_in",
    "random_split",
    "threefry2x32",
    "rng_bit_generator",
    "rng_uniform",
  }
)


class ALL:
  """The zero set of a literal 0: zero whatever the parameters are."""
