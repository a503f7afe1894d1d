"""The language-model job: a tiny Transformer LM trained offline end to end, its
structure per layer, compaction with identical next-token probabilities, and
generation."""

import json
import os

import numpy as np
import pytest

from rmda_jax import compaction
from rmda_jax.app import cli, data, models

TINY = [
  "--model",
  "transformer",
  "--dataset",
  "pydoc",
  "--context",
  "32",
  "--width",
  "32",
  "--heads",
  "2",
  "--layers",
  "2",
  "--mlp",
  "48",
  "--batch-size",
  "16",
  "--epochs",
  "1",
  "--max-steps",
  "40",
  "--milestones",
  "none",
  "--no-progress",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("lm") / "run")
  assert cli.main(["train", *TINY, "--optimizer", "ramda", "--strength", "1e-3", "--out", out]) == 0
  return out


def test_text_data_is_next_byte_prediction():
  ds = data.load("pydoc", context=32)
  assert ds.x_train.shape[1] == 32 and ds.num_classes == 256
  np.testing.assert_array_equal(ds.x_train[0, 1:], ds.y_train[0, :-1])  # y is x shifted by one byte
  assert 10 < data.unigram_perplexity(ds) < 256


def test_the_tiny_lm_learns_and_reports_its_structure(lm_run):
  with open(os.path.join(lm_run, "log.json")) as f:
    record = json.load(f)["epochs"][-1]
  # 40 steps take a byte model well below the frequency-only baseline
  assert record["val_perplexity"] < 0.8 * record["unigram_perplexity"]
  assert record["train_loss"] > 0 and np.isfinite(record["val_loss"])
  assert set(record["heads_kept"]) == {"attn_0", "attn_1"} and set(record["units_kept"]) == {
    "mlp_in_0",
    "mlp_in_1",
  }
  assert all(
    0 <= v <= 1 for v in list(record["heads_kept"].values()) + list(record["units_kept"].values())
  )
  with open(os.path.join(lm_run, "heads.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_compaction_keeps_next_token_probabilities_and_generation(lm_run, tmp_path, capsys):
  assert cli.main(["compact", lm_run, "--out", str(tmp_path / "small")]) == 0
  out = capsys.readouterr().out
  difference = float(out.split("next-token probabilities:")[1].split()[0])
  assert difference < 1e-5
  small = compaction.load(str(tmp_path / "small"), classes=models.ZOO)
  assert isinstance(small.model, models.TransformerLM)
  assert cli.main(["generate", str(tmp_path / "small"), "--prompt", "The ", "--tokens", "12"]) == 0
  text = capsys.readouterr().out
  assert text.startswith("The ") and len(text.rstrip("\n").encode()) >= 4
  assert cli.main(["generate", lm_run, "--tokens", "5", "--temperature", "0.8"]) == 0


def test_a_text_file_of_the_user(tmp_path):
  path = tmp_path / "corpus.txt"
  path.write_text("the quick brown fox jumps over the lazy dog. " * 300)
  args = [
    "train",
    *TINY,
    "--dataset",
    f"text:{path}",
    "--optimizer",
    "adamw",
    "--regularizer",
    "none",
    "--max-steps",
    "5",
    "--no-plots",
    "--out",
    str(tmp_path / "run"),
  ]
  assert cli.main(args) == 0


@pytest.mark.parametrize(
  "args, fragment",
  [
    (["--model", "transformer"], "trains on text"),
    (["--dataset", "pydoc"], "trains on text"),
    (
      ["--model", "transformer", "--dataset", "pydoc", "--width", "30", "--heads", "4"],
      "multiple of --heads",
    ),
    (["--model", "transformer", "--dataset", "text:/nonexistent/file.txt"], "is not a file"),
  ],
)
def test_bad_language_model_options(args, fragment, tmp_path, capsys):
  assert cli.main(["train", "--out", str(tmp_path / "run"), "--no-progress", *args]) == 2
  err = capsys.readouterr().err.strip()
  assert fragment in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("model", ["transformer", "mlp"])
def test_an_8_device_mesh_gives_the_numbers_of_one_device(model, tmp_path):
  import subprocess
  import sys

  script = os.path.join(os.path.dirname(__file__), "..", "support", "mesh_run.py")
  proc = subprocess.run(
    [sys.executable, script, str(tmp_path), model], capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8
  for layout in ("data", "fsdp"):  # float32 round-off of reductions split over devices
    assert result[layout]["loss"] < 1e-5 and result[layout]["params"] < 1e-5, result
