"""Metrics against NumPy counts written from the reference definitions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rmda_jax
from rmda_jax import metrics


def _params():
  rng = np.random.default_rng(0)
  conv = rng.normal(size=(3, 3, 4, 6))
  conv[:, :, [0, 2], :] = 0  # 2 of 4 input channels zero
  dense = rng.normal(size=(5, 3))
  dense[[1, 3, 4]] = 0  # 3 of 5 input features zero
  bias = np.array([0.0, 1.0, 2.0])
  low = rng.normal(size=(6, 2)) @ rng.normal(size=(2, 4))  # rank 2 of 4
  return {
    "Conv_0": {"kernel": conv, "bias": np.zeros(6)},
    "Dense_0": {"kernel": dense, "bias": bias},
    "Dense_1": {"kernel": low},
  }


def test_metrics_match_numpy_counts():
  p = _params()
  jp = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), p)
  leaves = jax.tree_util.tree_leaves(p)
  unstructured = 1 - sum(np.count_nonzero(x) for x in leaves) / sum(x.size for x in leaves)
  np.testing.assert_allclose(float(metrics.unstructured_sparsity(jp)), unstructured, rtol=1e-6)

  # input-wise groups: 4 conv channels (size 54), 5 dense rows (size 3), 6 rows of Dense_1 (size 4)
  conv_nz = np.sqrt((p["Conv_0"]["kernel"] ** 2).sum(axis=(0, 1, 3))) > 0
  dense_nz = np.linalg.norm(p["Dense_0"]["kernel"], axis=1) > 0
  low_nz = np.linalg.norm(p["Dense_1"]["kernel"], axis=1) > 0
  groups_total = 4 + 5 + 6
  nonzero = conv_nz.sum() + dense_nz.sum() + low_nz.sum()
  reg = rmda_jax.group_lasso(1e-3)
  np.testing.assert_allclose(
    float(metrics.group_sparsity(jp, reg)), 1 - nonzero / groups_total, rtol=1e-6
  )
  weighted = 1 - (conv_nz.sum() * 54 + dense_nz.sum() * 3 + low_nz.sum() * 4) / (
    4 * 54 + 5 * 3 + 6 * 4
  )
  np.testing.assert_allclose(float(metrics.weighted_group_sparsity(jp, reg)), weighted, rtol=1e-6)

  # low rank: conv as (36, 6) matrix, ranks via numpy
  nuc = rmda_jax.nuclear_norm(1e-3)
  mats = [p["Conv_0"]["kernel"].reshape(-1, 6), p["Dense_0"]["kernel"], p["Dense_1"]["kernel"]]
  ranks = [np.linalg.matrix_rank(m.astype(np.float32)) for m in mats]
  level = 1 - sum(ranks) / sum(min(m.shape) for m in mats)
  np.testing.assert_allclose(float(metrics.low_rank_level(jp, nuc)), level, rtol=1e-6)
  assert ranks[2] == 2

  # l1: groups are entries of the regularized leaves only
  reg_leaves = [p["Conv_0"]["kernel"], p["Dense_0"]["kernel"], p["Dense_1"]["kernel"]]
  l1_sparsity = 1 - sum(np.count_nonzero(x) for x in reg_leaves) / sum(x.size for x in reg_leaves)
  np.testing.assert_allclose(
    float(metrics.group_sparsity(jp, rmda_jax.l1(1.0))), l1_sparsity, rtol=1e-6
  )


def test_metrics_are_jittable_and_nan_free_on_empty_sets():
  only_bias = {"bias": jnp.zeros(3)}
  assert float(jax.jit(metrics.group_sparsity)(only_bias)) == 0.0
  assert float(metrics.weighted_group_sparsity(only_bias)) == 0.0
  assert float(metrics.low_rank_level(only_bias)) == 0.0
  assert float(metrics.unstructured_sparsity(only_bias)) == 1.0
  reg = rmda_jax.group_lasso(1e-3)
  out = jax.jit(lambda p: metrics.summary(p, reg))(jax.tree_util.tree_map(jnp.asarray, _params()))
  assert set(out) == {
    "unstructured_sparsity",
    "group_sparsity",
    "weighted_group_sparsity",
    "weight_sparsity",
  }


def test_tracker_follows_the_regularizers_own_support_the_rank():
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(6, 2)), rng.normal(size=(2, 5))
  rank2 = {"Dense_0": {"kernel": jnp.asarray(u @ v, jnp.float32)}}
  rank1 = {"Dense_0": {"kernel": jnp.asarray(np.outer(u[:, 0], v[0]), jnp.float32)}}
  tracker = metrics.StructureTracker(rmda_jax.nuclear_norm(1e-3), kind="regularizer")
  t = tracker.init(rank2)
  assert int(np.sum(np.asarray(t.support[0]))) == np.linalg.matrix_rank(u @ v) == 2
  t = tracker.update(t, rank2)
  assert int(t.num_changes) == 0
  t = jax.jit(tracker.update)(t, rank1)  # the rank drops: a change at step 2
  assert (int(t.last_change), int(t.num_changes)) == (2, 1)
  assert int(np.sum(np.asarray(t.support[0]))) == 1
  with pytest.raises(ValueError, match="give the regularizer"):
    metrics.StructureTracker(kind="regularizer")
