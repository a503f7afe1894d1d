"""Fault injection on the training command: interrupts at any moment (also inside checkpoint saves),
hard kills, damaged checkpoints and logs, changed settings, non-finite training, bad paths.

Every resumed run is compared with an uninterrupted run of the same settings: the log records (less
the wall-clock ``seconds``) and the final params and optimizer state must be equal bit for bit.
"""

import glob
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from run_checks import assert_same_run, one_line_error, records

from rmda_jax.app import checkpoint as ckpt
from rmda_jax.app import cli, train
from rmda_jax.app import data as datasets

SMALL = ["--hidden", "16", "--batch-size", "32", "--milestones", "1", "--no-progress", "--no-plots"]
SAVE_PAUSE = 0.25  # seconds the test hook pauses before and after each checkpoint write


# --- interrupts in a real process -----------------------------------------------------------------


def _environment(tmp_path):
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env[train.SAVE_PAUSE_ENV] = str(SAVE_PAUSE)
  # compiled programs cached between the processes of the test (the same programs, only faster)
  env.update(
    JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax-cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  return env


def _launch(args, env, fault, rng):
  """Run ``python -m rmda_jax train args``; ``fault`` = (signals, moment) is sent at that moment.

  moment "random": a seeded random delay (0-1 s) after the first output line (the header, printed
  before compilation and training); "save": when the process enters a checkpoint save window (test
  hook), and for SIGKILL 0-0.1 s after orbax starts writing the step. Returns (exit code, output
  lines).
  """
  proc = subprocess.Popen(
    [sys.executable, "-m", "rmda_jax", "train", *args],
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    env=env,
  )
  lines = queue.Queue()

  def read():
    for line in proc.stdout:
      lines.put(line.rstrip("\n"))
    lines.put(None)

  threading.Thread(target=read, daemon=True).start()
  signals, moment = fault if fault else ((), None)

  def send():
    for i, signum in enumerate(signals):
      if i:
        threading.Event().wait(0.05)
      if proc.poll() is None:
        proc.send_signal(signum)

  output, timer = [], None
  while (line := lines.get(timeout=120)) is not None:
    output.append(line)
    if timer is None and signals:
      if moment == "random":
        timer = threading.Timer(rng.uniform(0.0, 1.0), send)
      elif (
        moment == "save"
        and line.startswith("checkpoint save window")
        and signals != (signal.SIGKILL,)
      ):
        timer = threading.Timer(0.0, send)
      elif moment == "save" and line.startswith(
        "checkpoint write"
      ):  # SIGKILL: inside orbax's write, or just after
        timer = threading.Timer(rng.uniform(0.0, 0.1), send)
      if timer is not None:
        timer.start()
  code = proc.wait(timeout=60)
  if timer is not None:
    timer.cancel()
  return code, output


def _module_command(message_command):
  words = shlex.split(message_command)
  assert words[:2] == ["rmda-jax", "train"]
  return words[2:]


def test_interrupted_at_random_moments_and_during_saves_then_resumed_equals_an_uninterrupted_run(
  tmp_path,
):
  env = _environment(tmp_path)
  rng = np.random.default_rng(14)
  args = [*SMALL, "--epochs", "4", "--checkpoint-every", "1"]
  reference = str(tmp_path / "reference")
  code, output = _launch(
    [*args, "--out", reference], dict(env, **{train.SAVE_PAUSE_ENV: "0"}), None, rng
  )
  assert code == 0, output

  out = str(tmp_path / "run")
  # the save-window faults first: each completes at most one epoch, so all four find a save to hit
  faults = [
    ((signal.SIGINT,), "save"),
    ((signal.SIGINT, signal.SIGINT), "save"),
    ((signal.SIGTERM,), "save"),
    ((signal.SIGKILL,), "save"),
    ((signal.SIGINT,), "random"),
    ((signal.SIGKILL,), "random"),
  ]
  command = [*args, "--out", out]
  seen = []
  for fault in faults + [None]:
    code, output = _launch(command, env, fault, rng)
    text = "\n".join(output)
    assert "Traceback" not in text and "damaged" not in text and "error" not in text, text
    if "--resume" in command:
      assert any(line.startswith("resumed from") for line in output), text
    if code == 0:
      break
    seen.append(code)
    if fault[0][0] == signal.SIGKILL:
      assert code == -signal.SIGKILL
      has_step = any(name.isdigit() for name in os.listdir(os.path.join(out, "checkpoint")))
      command = [*args, "--out", out] + (["--resume"] if has_step else [])
      continue
    # SIGINT -> 130, SIGTERM -> 143, and one line that says how to go on
    assert code == 128 + fault[0][0], text
    message = output[-1]
    assert message.startswith(
      f"rmda-jax train: interrupted by {signal.Signals(fault[0][0]).name}"
    ), text
    assert ("resume with: " in message) or ("start again with: " in message), message
    command = _module_command(message.split(" with: ", 1)[1])
  assert code == 0, text
  assert len(seen) >= 4, (
    seen
  )  # the run was really interrupted (each process needs seconds to start)
  assert_same_run(out, reference)
  assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == [
    "126",
    "168",
  ]  # the newest 2, no leftovers


# --- mid-epoch stop and resume --------------------------------------------------------------------


def test_max_steps_mid_epoch_then_resume_ends_like_an_uninterrupted_run(tmp_path, capsys):
  # digits, batch 64: 21 steps per epoch; 50 steps stop inside epoch 3
  tiny = ["--hidden", "16", "--no-progress", "--no-plots", "--milestones", "2,4"]
  first, reference = str(tmp_path / "first"), str(tmp_path / "reference")
  assert cli.main(["train", *tiny, "--epochs", "5", "--max-steps", "50", "--out", first]) == 0
  log = records(first)
  assert [r["step"] for r in log] == [21, 42, 50] and log[-1]["partial"] and "partial" not in log[1]
  assert cli.main(["train", *tiny, "--epochs", "5", "--out", first, "--resume"]) == 0
  assert "at step 50 (epoch 2 + 8 of 21 steps of epoch 3)" in capsys.readouterr().out
  assert cli.main(["train", *tiny, "--epochs", "5", "--out", reference]) == 0
  assert [r["step"] for r in records(first)] == [21, 42, 63, 84, 105]
  assert_same_run(first, reference)


# --- damaged checkpoints and logs -----------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 2-epoch run with checkpoints at steps 42 and 84."""
  out = str(tmp_path_factory.mktemp("finished") / "run")
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out]) == 0
  assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["42", "84"]
  return out


def _copy(finished, tmp_path, name="run"):
  out = str(tmp_path / name)
  shutil.copytree(finished, out)
  return out


def _largest_array_file(out, step):
  files = glob.glob(
    os.path.join(out, "checkpoint", str(step), "state", "**", "d", "*"), recursive=True
  )
  return max(files, key=os.path.getsize)


def _flip_bytes(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    middle = len(data) // 2
    for i in range(middle, middle + 16):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize(
  "damage, manifest", [(_flip_bytes, True), (_truncate, True), (_flip_bytes, False)]
)
def test_damaged_newest_checkpoint_falls_back_to_the_older_step(
  damage, manifest, finished, tmp_path, capsys
):
  out = _copy(finished, tmp_path)
  damage(_largest_array_file(out, 84))
  if (
    not manifest
  ):  # as if killed before the file checksums were written: the per-array checksums catch it
    os.remove(os.path.join(out, "checkpoint", "84", ckpt.MANIFEST))
  assert cli.main(["compact", out]) == 0  # compact uses the older step and says so
  note = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
  assert (
    len(note) == 1 and "checkpoint step 84 is damaged" in note[0] and "using step 42" in note[0]
  ), note
  # The flipped bytes land in an array's values (caught by the per-array checksums) or, depending
  # on where OCDBT placed the arrays in the file, in its index (orbax cannot read the step):
  # caught either way.
  assert "does not match its checksum" in note[0] or "its arrays are unreadable" in note[0], note
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 0
  lines = capsys.readouterr().out.splitlines()
  assert any("checkpoint step 84 is damaged" in line and "using step 42" in line for line in lines)
  assert os.path.isdir(os.path.join(out, "checkpoint-damaged", "84"))
  assert_same_run(out, finished)


def test_every_checkpoint_damaged_is_a_one_line_error_never_silent_weights(
  finished, tmp_path, capsys
):
  out = _copy(finished, tmp_path)
  _flip_bytes(_largest_array_file(out, 84))
  _truncate(_largest_array_file(out, 42))
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 2
  one_line_error(capsys, "no usable checkpoint", "step 84 is damaged", "step 42 is damaged")
  assert cli.main(["compact", out]) == 2
  one_line_error(capsys, "no usable checkpoint")
  with pytest.raises(train.ConfigError, match="no usable checkpoint"):
    train.load_run(out)


def test_non_finite_params_in_a_checkpoint_are_refused(finished, tmp_path, capsys):
  out = _copy(finished, tmp_path)
  _, _, _, params, state = train.load_run(out)
  with ckpt.Steps(os.path.join(out, "checkpoint")) as steps:
    record = steps.read_record(84)
    poisoned = jax.tree_util.tree_map(lambda x: x * np.nan, params)
    steps.save(
      85,
      {"params": poisoned, "opt_state": state},
      {k: v for k, v in record.items() if k != "checksums"},
    )
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 0
  out_lines = capsys.readouterr().out
  assert "checkpoint step 85 is damaged (its params are not finite); using step 84" in out_lines
  assert_same_run(out, finished)


def test_empty_checkpoint_directory_is_a_one_line_error(finished, tmp_path, capsys):
  out = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(out, "checkpoint"))
  os.makedirs(os.path.join(out, "checkpoint"))
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 2
  one_line_error(capsys, "--resume: no complete checkpoint in")
  assert cli.main(["compact", out]) == 2
  one_line_error(capsys, "no complete checkpoint in")
  assert cli.main(["compact", str(tmp_path)]) == 2  # not a run at all
  one_line_error(capsys, "is not a training run")


def test_corrupt_log_is_rebuilt_from_the_checkpoint(finished, tmp_path, capsys):
  out = _copy(finished, tmp_path)
  shutil.rmtree(os.path.join(out, "checkpoint", "84"))  # the run as it was after epoch 1
  with open(os.path.join(out, "log.json"), "w") as f:
    f.write('{"epochs": [{"epoch": 1, "train_lo')
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out, "--resume"]) == 0
  assert_same_run(out, finished)


# --- existing runs and changed settings -----------------------------------------------------------


def test_existing_run_needs_resume_or_overwrite_and_resume_keeps_the_settings(tmp_path, capsys):
  out = str(tmp_path / "run")
  tiny = [*SMALL, "--epochs", "1"]
  assert cli.main(["train", *tiny, "--max-steps", "5", "--out", out]) == 0
  with open(os.path.join(out, "config.json")) as f:
    config_before = f.read()
  capsys.readouterr()
  assert cli.main(["train", *tiny, "--max-steps", "5", "--out", out]) == 2
  one_line_error(capsys, f"--out {out} already holds a training run", "--resume", "--overwrite")
  with open(os.path.join(out, "config.json")) as f:
    assert f.read() == config_before
  for changed, fragment in [
    (["--hidden", "32"], "--hidden 16 -> 32"),
    (["--lr", "0.2"], "--lr 0.1 -> 0.2"),
    (["--seed", "3"], "--seed 0 -> 3"),
    (["--regularizer", "l1"], "--regularizer group_lasso -> l1"),
    (["--optimizer", "ramda"], "--optimizer rmda -> ramda"),
    (["--batch-size", "16"], "--batch-size 32 -> 16"),
  ]:
    assert cli.main(["train", *tiny, "--out", out, "--resume", *changed]) == 2
    one_line_error(capsys, "--resume: this command changes settings", fragment)
  assert cli.main(["train", *tiny, "--out", out, "--resume", "--overwrite"]) == 2
  one_line_error(capsys, "--resume and --overwrite")
  # allowed changes: epochs, max steps, checkpointing and output options
  assert (
    cli.main(
      ["train", *tiny, "--max-steps", "7", "--checkpoint-every", "3", "--out", out, "--resume"]
    )
    == 0
  )
  assert [r["step"] for r in records(out)] == [7]
  # --overwrite starts from scratch: only the new run's checkpoint is left
  assert cli.main(["train", *tiny, "--max-steps", "3", "--out", out, "--overwrite"]) == 0
  assert os.listdir(os.path.join(out, "checkpoint")) == ["3"] and [
    r["step"] for r in records(out)
  ] == [3]


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
  a_file = tmp_path / "file"
  a_file.write_text("x")
  assert cli.main(["train", *SMALL, "--out", str(a_file)]) == 2
  one_line_error(capsys, "--out", "is a file")
  assert cli.main(["train", *SMALL, "--out", str(tmp_path / "run"), "--data-dir", str(a_file)]) == 2
  one_line_error(capsys, "--data-dir", "is a file")
  assert cli.main(["train", *SMALL, "--out", str(tmp_path / "none"), "--resume"]) == 2
  one_line_error(capsys, "--resume: no checkpoint in")
  assert cli.main(["compact", str(a_file)]) == 2
  one_line_error(capsys, "is not a training run")


# --- non-finite training --------------------------------------------------------------------------


def test_huge_learning_rate_stops_with_one_line_and_no_checkpoint(tmp_path, capsys):
  out = str(tmp_path / "run")
  assert (
    cli.main(["train", "--lr", "1e6", "--epochs", "2", "--no-progress", "--no-plots", "--out", out])
    == 1
  )
  one_line_error(capsys, "training diverged", "non-finite", "--lr")
  assert train.existing_run(out) is None  # nothing of the diverged state was written
  assert not any(name.isdigit() for name in os.listdir(os.path.join(out, "checkpoint")))


@pytest.fixture
def digits_with_a_nan_image(monkeypatch):
  """digits whose first training image is NaN: the batch holding it has a non-finite gradient."""
  real = datasets.load

  def load(name, *args, **kwargs):
    ds = real(name, *args, **kwargs)
    x = np.array(ds.x_train)
    x[0] = np.nan
    return datasets.Dataset(ds.name, x, ds.y_train, ds.x_test, ds.y_test, ds.num_classes)

  monkeypatch.setattr(train.datasets, "load", load)


def test_steps_with_a_non_finite_gradient_are_skipped_and_counted(
  digits_with_a_nan_image, tmp_path, capsys
):
  out = str(tmp_path / "run")
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out]) == 0
  log = records(out)
  # 1347 examples, batch 32: 42 batches of the 1344 shuffled first, so the NaN image is used
  # unless it is among the 3 left out of an epoch
  expected = []
  for epoch in (1, 2):
    order = np.random.default_rng([0, epoch]).permutation(1347)
    expected.append(int(0 in order[: 42 * 32]))
  assert [r["skipped_steps"] for r in log] == expected and sum(expected) >= 1
  assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in log)
  assert "skipped 1 non-finite" in capsys.readouterr().out
  _, _, _, params, _ = train.load_run(out)
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree_util.tree_leaves(params))
  assert (
    cli.main(
      ["train", *SMALL, "--epochs", "2", "--skip-nonfinite", "0", "--out", str(tmp_path / "strict")]
    )
    == 1
  )
  one_line_error(
    capsys, "training diverged", "1 step in a row had a non-finite gradient", "--skip-nonfinite 0"
  )
