"""Compaction: the compact model computes the same outputs as the original on
random inputs, with the widths that the zeroed groups imply."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmda_jax import compaction
from rmda_jax.app import models

KEY = jax.random.PRNGKey(0)


def silence(params, layer, units):
  p = dict(params[layer])
  p["kernel"] = p["kernel"].at[..., units].set(0)
  p["bias"] = p["bias"].at[..., units].set(0)
  params[layer] = p


def assert_same_function(model, params, small, x):
  expected = model.apply({"params": params}, x)
  got = small.apply(x)
  scale = float(jnp.max(jnp.abs(expected))) + 1e-6
  np.testing.assert_allclose(np.asarray(got), np.asarray(expected), atol=2e-5 * scale, rtol=1e-4)


CASES = {
  "mlp": (models.MLP(hidden=(12, 9, 7), num_classes=4), (6, 10)),
  "lenet5": (models.LeNet5(num_classes=5, conv_features=(6, 8), dense_features=16), (3, 28, 28, 1)),
  "vgg": (models.VGG(stages=((6,), (8, 8)), num_classes=3), (2, 16, 16, 3)),
}
# (producer, consumer, positions): consumer input p * C + c reads producer channel c
LINKS = {
  "mlp": [("Dense_0", "Dense_1", 1), ("Dense_1", "Dense_2", 1), ("Dense_2", "Dense_3", 1)],
  # 28 -> conv5 24 -> pool 12 -> conv5 8 -> pool 4: 4 x 4 positions per channel after flattening
  "lenet5": [("Conv_0", "Conv_1", 1), ("Conv_1", "Dense_0", 16), ("Dense_0", "Dense_1", 1)],
  "vgg": [("Conv_0", "Conv_1", 1), ("Conv_1", "Conv_2", 1), ("Conv_2", "Dense_0", 1)],
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("pattern", ["mixed", "none"])
def test_compact_model_computes_the_same_function(name, pattern):
  model, shape = CASES[name]
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  params = {k: dict(v) for k, v in model.init(KEY, x)["params"].items()}
  names = sorted(params)
  rng = np.random.default_rng(len(name))
  expected_width = {n: params[n]["kernel"].shape[-1] for n in names}
  for i, (producer, consumer, positions) in enumerate(LINKS[name]):
    channels = params[producer]["kernel"].shape[-1]
    # "mixed": the first link keeps one unit, the second loses none, the third half at random
    if pattern == "none" or i == 1:
      continue
    if i == 0:
      removed = np.arange(1, channels)
    else:
      removed = rng.choice(channels, size=channels // 2, replace=False)
    # half of the removed units through the consumer's input groups, half silenced at the producer
    through_consumer, silenced = removed[::2], removed[1::2]
    kernel = np.array(params[consumer]["kernel"])
    for c in through_consumer:
      kernel[..., c + channels * np.arange(positions), :] = 0
    params[consumer]["kernel"] = jnp.asarray(kernel)
    silence(params, producer, silenced)
    expected_width[producer] = channels - len(removed)
  small = compaction.compact(model, params)
  assert_same_function(model, params, small, x)
  assert_same_function(model, params, small, 3 * jax.random.normal(jax.random.PRNGKey(2), shape))
  widths = {n: small.params[n]["kernel"].shape[-1] for n in names}
  assert widths == expected_width
  if pattern == "none":
    assert compaction.num_params(small.params) == compaction.num_params(params)
  else:
    assert compaction.num_params(small.params) < compaction.num_params(params)


def low_rank_kernel(rng, shape, rank):
  m = int(np.prod(shape[:-1]))
  return jnp.asarray(
    (rng.normal(size=(m, rank)) @ rng.normal(size=(rank, shape[-1]))).reshape(shape), jnp.float32
  )


def test_factorize_reproduces_the_kernel_at_its_rank():
  rng = np.random.default_rng(0)
  for shape, rank in [((40, 30), 3), ((5, 5, 6, 16), 4), ((20, 20), 20)]:
    kernel = low_rank_kernel(rng, shape, rank)
    down, up = compaction.factorize(kernel)
    assert up.shape == (rank, shape[-1]) and down.shape == shape[:-1] + (rank,)
    rebuilt = np.asarray(down).reshape(-1, rank) @ np.asarray(up)
    np.testing.assert_allclose(
      rebuilt,
      np.asarray(kernel).reshape(-1, shape[-1]),
      atol=1e-4 * float(jnp.max(jnp.abs(kernel))),
    )
    assert np.linalg.matrix_rank(rebuilt) == rank


@pytest.mark.parametrize("name", ["mlp", "lenet5"])
def test_low_rank_compaction_keeps_outputs(name):
  model, shape = CASES[name]
  x = jax.random.normal(jax.random.PRNGKey(1), shape)
  params = {k: dict(v) for k, v in model.init(KEY, x)["params"].items()}
  rng = np.random.default_rng(3)
  layer = "Dense_1" if name == "mlp" else "Conv_1"
  params[layer]["kernel"] = low_rank_kernel(rng, params[layer]["kernel"].shape, 2)
  params["Dense_0"]["kernel"] = low_rank_kernel(rng, params["Dense_0"]["kernel"].shape, 1)
  small = compaction.compact(model, params, low_rank=True)
  assert small.ranks[layer] == 2 and small.ranks["Dense_0"] == 1
  assert set(small.params[layer]) == {"down", "up"}
  assert_same_function(model, params, small, x)
  assert compaction.num_params(small.params) < compaction.num_params(params)


def test_unsupported_and_mismatched():
  class Custom(models.MLP.__bases__[0]):  # a user linen module
    def __call__(self, x):
      return x

  with pytest.raises(TypeError, match="Custom"):
    compaction.compact(Custom(), {})
  model, shape = CASES["mlp"]
  params = model.init(KEY, jnp.zeros(shape))["params"]
  with pytest.raises(ValueError, match="expected layers"):
    compaction.compact(models.MLP(hidden=(12, 9), num_classes=4), params)


def test_compact_command_on_a_training_run(tmp_path, capsys):
  from rmda_jax.app import cli

  out = str(tmp_path / "run")
  assert (
    cli.main(
      [
        "train",
        "--out",
        out,
        "--epochs",
        "1",
        "--max-steps",
        "5",
        "--hidden",
        "16,16",
        "--strength",
        "2",
        "--no-progress",
        "--no-plots",
        "--milestones",
        "none",
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert cli.main(["compact", out, "--out", str(tmp_path / "small"), "--low-rank"]) == 0
  lines = capsys.readouterr().out.splitlines()
  table = {
    line[:24].strip(): line[24:].split()
    for line in lines
    if line[:24].strip() in ("parameters", "FLOPs per example", "validation accuracy")
  }
  before, after, ratio = table["parameters"]
  assert int(after.replace(",", "")) < int(before.replace(",", ""))
  assert table["validation accuracy"][0] == table["validation accuracy"][1]
  assert os.path.isfile(tmp_path / "small" / "model.json")
  assert cli.main(["compact", str(tmp_path)]) == 2
  assert "not a training run" in capsys.readouterr().err
