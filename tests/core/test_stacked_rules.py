"""Per-leaf rules on stacked leaves: groups and matrices per layer, never across layers.

The references are NumPy loops over the layers of the stacked leaves.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmda_jax
from rmda_jax.core import rules
from rmda_jax.structure import metrics

L, IN, OUT = 3, 8, 4


class Block(nn.Module):
  @nn.compact
  def __call__(self, x, _):
    kernel = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("embed", "mlp"))
    h = nn.relu(nn.Dense(IN, kernel_init=kernel, name="wi")(x))
    out = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ("mlp", "embed"))
    return x + nn.Dense(OUT, kernel_init=out, name="wo")(h), None


class Stack(nn.Module):
  @nn.compact
  def __call__(self, x):
    stack = nn.scan(
      Block,
      variable_axes={"params": 0},
      split_rngs={"params": True},
      length=L,
      metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return stack(name="layers")(x, None)[0]


@pytest.fixture(scope="module")
def boxed():
  return Stack().init(jax.random.PRNGKey(0), jnp.ones((2, OUT)))["params"]


def input_groups_per_layer(kernel, strength, scale=1.0):
  """NumPy group-LASSO prox, one group per layer and input row of a (L, in, out) kernel."""
  k = np.asarray(kernel, np.float64)
  norms = np.sqrt(np.sum(k**2, axis=2, keepdims=True))
  t = scale * strength * np.sqrt(k.shape[2])
  return k * np.maximum(0.0, 1.0 - t / np.maximum(norms, 1e-30))


def test_layer_axes_are_read_from_boxes_and_partition_specs(boxed):
  want = {"layers/wi/kernel": (0,), "layers/wo/kernel": (0,)}
  assert rmda_jax.layer_axes_of(boxed) == want
  assert rmda_jax.layer_axes_of(nn.get_partition_spec({"params": boxed})["params"]) == want


@pytest.mark.parametrize("how", ["boxes", "pattern"])
def test_group_lasso_per_layer_groups(boxed, how):
  params = nn.unbox(boxed)
  spec = rmda_jax.per_layer(boxed if how == "boxes" else {"layers/*/kernel": 0})
  reg = rmda_jax.group_lasso(0.3, rules=spec)
  out = reg.prox(params, 0.5)
  for name in ("wi", "wo"):
    kernel = params["layers"][name]["kernel"]
    np.testing.assert_allclose(
      out["layers"][name]["kernel"], input_groups_per_layer(kernel, 0.3, 0.5), atol=1e-6
    )
  layouts = [t.rule for t in reg.place(params).terms]
  assert sorted(layout.num_groups for layout in layouts) == [L * OUT, L * IN]


def test_without_layer_axes_a_stacked_kernel_reads_as_a_conv_kernel(boxed):
  # documented: (layers, in, out) has the shape of a 1-D conv kernel (width, in, out),
  # whose default groups are the input channels over the width -- across layers
  params = nn.unbox(boxed)
  layouts = [t.rule for t in rmda_jax.group_lasso(0.1).place(params).terms]
  assert sorted(layout.num_groups for layout in layouts) == [OUT, IN]


def test_nuclear_norm_per_layer_is_one_matrix_per_layer():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(L, 6, 5)).astype(np.float32)
  reg = rmda_jax.nuclear_norm(0.8, rules=rmda_jax.per_layer({"w": 0}))
  out = np.asarray(reg.prox({"w": jnp.asarray(w)}, 1.0)["w"])
  for i in range(L):
    u, s, vt = np.linalg.svd(w[i].astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(out[i], (u * np.maximum(s - 0.8, 0)) @ vt, atol=1e-5)
  value = 0.8 * sum(np.linalg.svd(w[i], compute_uv=False).sum() for i in range(L))
  assert float(reg.value({"w": jnp.asarray(w)})) == pytest.approx(value, rel=1e-5)
  ranks = metrics.ranks({"w": jnp.asarray(out)}, reg)
  np.testing.assert_array_equal(ranks[0], [np.linalg.matrix_rank(out[i]) for i in range(L)])


def test_a_layer_axis_on_a_conv_leaf_keeps_the_conv_groups_per_layer():
  rng = np.random.default_rng(1)
  w = rng.normal(size=(3, 3, L, 2, 4)).astype(np.float32)  # layers in the middle
  reg = rmda_jax.group_lasso(0.2, rules=rmda_jax.per_layer({"w": 2}))
  (layout,) = [t.rule for t in reg.place({"w": w}).terms]
  assert layout.reduce_axes == ((0, 1, 4),)  # per layer and input channel


@pytest.mark.parametrize(
  "layer_axes, match",
  [({"nothing/*": 0}, "match no leaf"), ({"w": 5}, "do not fit"), ({"w": (0, 0)}, "do not fit")],
)
def test_bad_layer_axes_are_named(layer_axes, match):
  params = {"w": jnp.ones((L, 4, 2))}
  with pytest.raises(ValueError, match=match):
    rmda_jax.group_lasso(0.1, rules=rmda_jax.per_layer(layer_axes)).place(params)


def test_a_matrix_layer_axis_cannot_be_the_columns():
  with pytest.raises(ValueError, match="not the last"):
    rmda_jax.nuclear_norm(0.1, rules=lambda p, x: rules.Matrix((2,))).place(
      {"w": jnp.ones((L, 4, 2))}
    )
