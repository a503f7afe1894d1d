"""The training command end to end on tiny settings, its outputs, resume, and its errors."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from run_checks import WALL_CLOCK

from rmda_jax.app import cli, train

PNG = b"\x89PNG\r\n\x1a\n"
TINY = [
  "--epochs",
  "2",
  "--max-steps",
  "3",
  "--batch-size",
  "32",
  "--hidden",
  "16",
  "--no-progress",
  "--milestones",
  "1",
]


def _check_outputs(out, epochs):
  with open(os.path.join(out, "log.json")) as f:
    log = json.load(f)
  assert [r["epoch"] for r in log["epochs"]] == list(range(1, epochs + 1))
  for key in (
    "train_loss",
    "val_accuracy",
    "group_sparsity",
    "weighted_group_sparsity",
    "unstructured_sparsity",
  ):
    assert all(key in r for r in log["epochs"])
  for name in ("curves.png", "groups.png"):
    with open(os.path.join(out, name), "rb") as f:
      content = f.read()
    assert content.startswith(PNG) and len(content) > 1000
  assert os.path.isdir(os.path.join(out, "checkpoint"))
  return log


def _same_run(out, reference):
  """Equal log records (less the wall-clock seconds) and bit-identical params and optimizer
  state."""
  logs = []
  for path in (out, reference):
    with open(os.path.join(path, "log.json")) as f:
      logs.append(
        [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in json.load(f)["epochs"]]
      )
  assert logs[0] == logs[1]
  leaves = [jax.tree_util.tree_leaves(train.load_run(path)[3:]) for path in (out, reference)]
  assert len(leaves[0]) == len(leaves[1])
  for a, b in zip(*leaves):
    assert (
      np.asarray(a).dtype == np.asarray(b).dtype
      and np.asarray(a).tobytes() == np.asarray(b).tobytes()
    )


@pytest.mark.parametrize("optimizer", train.OPTIMIZERS)
def test_every_optimizer_runs_end_to_end_and_resumes_exactly(optimizer, tmp_path):
  out = str(tmp_path / optimizer)
  # RigL's mask updates stop at 75% of the 2 epochs (step 63): update them every 20 steps
  tiny = [*TINY, "--rigl-update-every", "20"] if optimizer == "rigl" else TINY
  assert cli.main(["train", "--optimizer", optimizer, "--out", out, *tiny]) == 0
  log = _check_outputs(out, 1)
  # 3 of the 42 steps of epoch 1: logged as a partial epoch
  assert log["epochs"][0]["step"] == 3 and log["epochs"][0]["partial"]
  # resume: the step budget grows to 5, epoch 1 continues from step 3
  resumed = [a if a != "3" else "5" for a in tiny]
  assert cli.main(["train", "--optimizer", optimizer, "--out", out, "--resume", *resumed]) == 0
  log = _check_outputs(out, 1)
  assert [r["step"] for r in log["epochs"]] == [5]
  # the same numbers as 5 steps in one go
  reference = str(tmp_path / "reference")
  assert (
    cli.main(["train", "--optimizer", optimizer, "--out", reference, "--no-plots", *resumed]) == 0
  )
  _same_run(out, reference)
  if optimizer == "rigl":  # the default 90% of the kernel weights are zero from the first step on
    assert all(abs(r["weight_sparsity"] - 0.9) < 1e-3 for r in log["epochs"])


@pytest.mark.parametrize(
  "model,dataset,regularizer",
  [
    ("lenet5", "mnist_subset", "group_lasso"),
    ("vgg", "digits", "nuclear"),
    ("logreg", "digits", "l1"),
    ("mlp", "digits", "ternary"),
  ],
)
def test_models_and_regularizers(model, dataset, regularizer, tmp_path):
  out = str(tmp_path / model)
  args = [
    "train",
    "--model",
    model,
    "--dataset",
    dataset,
    "--regularizer",
    regularizer,
    "--out",
    out,
    *TINY,
  ]
  assert cli.main(args) == 0
  log = _check_outputs(out, 1)
  if regularizer == "nuclear":
    assert "low_rank_level" in log["epochs"][0]
  if regularizer == "ternary":
    assert 0 <= log["epochs"][0]["on_set_fraction"] <= 1 and "objective" not in log["epochs"][0]


def test_structured_rigl_drops_whole_hidden_units(tmp_path):
  out = str(tmp_path / "rigl")
  args = [
    "train",
    "--optimizer",
    "rigl",
    "--groups",
    "discovered",
    "--sparsity",
    "0.5",
    "--rigl-update-every",
    "20",
    "--out",
    out,
    *TINY,
  ]
  assert cli.main(args) == 0
  log = _check_outputs(out, 1)
  params = jax.tree_util.tree_map(np.asarray, train.load_run(out)[3])
  # hidden unit j of the first layer: its kernel column, its bias, the next kernel's row
  zero = [
    not (
      params["Dense_0"]["kernel"][:, j].any()
      or params["Dense_0"]["bias"][j]
      or params["Dense_1"]["kernel"][j].any()
    )
    for j in range(16)
  ]
  touched = [not params["Dense_0"]["kernel"][:, j].any() for j in range(16)]
  assert 0 < sum(zero) < 16 and zero == touched
  assert sorted(params) == ["Dense_0", "Dense_1"]  # --hidden 16: one hidden layer
  # reported over the coupled groups: the fraction of hidden units dropped
  assert abs(log["epochs"][0]["group_sparsity"] - sum(zero) / 16) < 1e-6


@pytest.mark.parametrize(
  "args, fragment",
  [
    (["--optimizer", "adam"], "invalid choice"),
    (["--strength", "-1"], "--strength must be >= 0"),
    (["--momentum", "1.5"], "--momentum must be in (0, 1]"),
    (["--model", "lenet5"], "lenet5 needs images"),
    (["--optimizer", "rigl", "--sparsity", "1"], "--sparsity must be in [0, 1)"),
    (["--optimizer", "rigl", "--momentum", "1"], "heavy-ball beta in [0, 1)"),
    # 2 epochs of 42 steps: mask updates end at step 63, before the first at step 100
    (["--optimizer", "rigl"], "--rigl-update-every 100 leaves RigL no mask update"),
    (
      ["--batch-size", "5000"],
      "--batch-size 5000 is larger than the training set (1347 examples of digits)",
    ),
    (["--skip-nonfinite", "-1"], "--skip-nonfinite must be >= 0"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other"),
  ],
)
def test_bad_options_give_one_line_errors(args, fragment, tmp_path, capsys):
  with pytest.raises(SystemExit) if "adam" in args else _nullcontext():
    code = cli.main(["train", "--out", str(tmp_path), *TINY, *args])
    assert code == 2
  err = capsys.readouterr().err.strip()
  assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err


class _nullcontext:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def test_missing_dataset_offline_is_one_line_in_a_real_process(tmp_path):
  env = dict(os.environ, RMDA_JAX_DATA=str(tmp_path / "cache"))
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "rmda_jax",
      "train",
      "--dataset",
      "fashion_mnist",
      "--no-download",
      "--out",
      str(tmp_path / "run"),
      *TINY,
    ],
    capture_output=True,
    text=True,
    env=env,
  )
  assert proc.returncode == 2
  err = proc.stderr.strip()
  assert (
    "fashion_mnist is not in the cache" in err
    and len(err.splitlines()) == 1
    and "Traceback" not in err
  )


@pytest.mark.parametrize(
  "missing, fragment",
  [("matplotlib", "plots (or --no-plots) need matplotlib"), ("orbax", "checkpoints need orbax")],
)
def test_a_missing_optional_dependency_is_one_line_naming_the_extra(
  missing, fragment, tmp_path, monkeypatch, capsys
):
  import importlib.util

  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
  )
  assert cli.main(["train", "--out", str(tmp_path / "run"), *TINY]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and fragment in err[0] and 'pip install "rmda-jax[examples]"' in err[0]
  assert not os.path.exists(tmp_path / "run")  # nothing was started
