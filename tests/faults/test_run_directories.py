"""Faults around run directories: a second writer, a full disk, read-only targets, a closed pipe,
a directory deleted under the run, other data on resume, damaged or replaced compact output.

Each case ends in one line on standard error and a non-zero status, or in correct behaviour, and
nothing that was written before the fault is lost: a resumed run ends bit for bit like one that was
never stopped. A full disk and a read-only file system are real (a small tmpfs) where this machine
lets the tests mount one, and injected at orbax's save otherwise.
"""

import glob
import json
import os
import shutil
import subprocess
import sys
import time

import orbax.checkpoint as ocp
import pytest
from run_checks import assert_same_run, one_line_error, records

from rmda_jax.app import checkpoint as ckpt
from rmda_jax.app import cli, rundir, runs, train

SMALL = ["--hidden", "16", "--batch-size", "32", "--milestones", "1", "--no-progress", "--no-plots"]
WIDE = [
  "--hidden",
  "128,128",
  "--batch-size",
  "32",
  "--milestones",
  "1",
  "--no-progress",
  "--no-plots",
  "--epochs",
  "4",
]


def _mount_tmpfs(path, size):
  """Mount a tmpfs of ``size`` at ``path``; whether this machine allowed it."""
  if os.geteuid() != 0 or shutil.which("mount") is None:
    return False
  os.makedirs(path, exist_ok=True)
  done = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
  )
  return done.returncode == 0


def _remount(path, options):
  subprocess.run(["mount", "-o", f"remount,{options}", path], check=True, capture_output=True)


@pytest.fixture
def small_disk(tmp_path):
  """A 1 MiB file system (a tmpfs) at tmp_path/disk, or None where none can be mounted."""
  path = str(tmp_path / "disk")
  if not _mount_tmpfs(path, "1m"):
    yield None
    return
  yield path
  subprocess.run(["umount", "-l", path], capture_output=True)


# --- one writer per run directory -----------------------------------------------------------------


def _hold_lock(out):
  """Another process holding the lock of ``out``; returns the process once it holds it."""
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys, time; from rmda_jax.app import rundir; "
      f"lock = rundir.RunLock({out!r}).acquire(); print('held', flush=True); time.sleep(120)",
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
  return holder


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(
  tmp_path, capsys
):
  out = str(tmp_path / "run")
  tiny = [*SMALL, "--epochs", "1", "--max-steps", "5"]
  assert cli.main(["train", *tiny, "--out", out]) == 0
  before = {name: os.path.getmtime(os.path.join(out, name)) for name in ("config.json", "log.json")}
  steps = sorted(os.listdir(os.path.join(out, "checkpoint")))
  capsys.readouterr()
  holder = _hold_lock(out)
  try:
    for flags in (["--resume"], ["--overwrite"], ["--resume", "--max-steps", "9"]):
      assert cli.main(["train", *tiny, "--out", out, *flags]) == 1
      one_line_error(
        capsys, f"--out {out} is in use by another rmda-jax process", f"pid {holder.pid}"
      )
    # nothing of the run was touched: --overwrite deleted nothing, --resume wrote nothing
    assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == steps
    assert {n: os.path.getmtime(os.path.join(out, n)) for n in before} == before
  finally:
    holder.kill()  # SIGKILL: the kernel releases the lock with the process
    holder.wait()
  assert cli.main(["train", *tiny, "--out", out, "--resume", "--max-steps", "9"]) == 0
  assert [r["step"] for r in records(out)] == [9]


def test_two_concurrent_runs_on_one_directory_leave_one_run(tmp_path):
  """Two real processes started together: one trains, the other exits 1 at once with the reason."""
  out = str(tmp_path / "run")
  args = [sys.executable, "-m", "rmda_jax", "train", *SMALL, "--epochs", "2", "--out", out]
  procs = [
    subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2)
  ]
  results = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in procs]
  codes = sorted(code for code, _ in results)
  assert codes == [0, 1], results
  refused = next(err for code, err in results if code == 1).strip()
  assert len(refused.splitlines()) == 1 and (
    "is in use by another rmda-jax process" in refused or "already holds a training run" in refused
  ), refused
  assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["42", "84"]
  assert [r["step"] for r in records(out)] == [42, 84]


def test_a_reader_never_reports_a_step_rotated_away_under_it_as_damaged(tmp_path, monkeypatch):
  """While a reader restores the newest step, the writer saves two more (rotating it away)."""
  out = str(tmp_path / "run")
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", out]) == 0
  path = os.path.join(out, "checkpoint")
  with ckpt.Steps(path, read_only=True) as reader:
    template_tree, record = reader.restore(84, _template(out))
  writer = ckpt.Steps(path, max_to_keep=runs.KEEP_CHECKPOINTS)
  original = ckpt.Steps.restore
  calls = []

  def restore_while_the_writer_saves(self, step, template):
    calls.append(step)
    if len(calls) == 1:  # the writer moves on while the reader is in the newest step
      writer.save(126, template_tree, dict(record, step=126))
      writer.save(168, template_tree, dict(record, step=168))
    return original(self, step, template)

  monkeypatch.setattr(ckpt.Steps, "restore", restore_while_the_writer_saves)
  with ckpt.Steps(path, read_only=True) as reader:
    step, _, _, damaged = runs.restore_newest(reader, lambda config: template_tree)
  writer.close()
  assert calls[0] == 84 and step == 168 and damaged == [], (calls, damaged)
  assert sorted(os.listdir(path)) == ["126", "168"]


def _template(out):
  _, _, _, params, opt_state = runs.load_run(out)
  return {"params": params, "opt_state": opt_state}


# --- I/O faults -----------------------------------------------------------------------------------


def _inject_full_disk(monkeypatch, at_call):
  """orbax's save fails from its ``at_call``-th call as TensorStore does on a full disk."""
  original, calls = ocp.CheckpointManager.save, []

  def save(self, step, *args, **kwargs):
    calls.append(step)
    if len(calls) >= at_call:
      raise ValueError(
        f'RESOURCE_EXHAUSTED: Error writing "params/0" at local file "{self.directory}": '
        "Failed to write 65536 bytes: No space left on device [os_error_code='28']"
      )
    return original(self, step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", save)


# orbax's other writes of a failed save report into the closed event loop as unraisable errors:
# the library mutes them in the hook it finds, and pytest installs its own for each test
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_a_full_disk_stops_with_one_line_keeps_the_last_checkpoint_and_resumes_exactly(
  disk, small_disk, tmp_path, capsys, monkeypatch
):
  if disk == "tmpfs" and small_disk is None:
    pytest.skip("this machine does not let the tests mount a tmpfs (the injected case runs)")
  small_disk = small_disk if disk == "tmpfs" else None
  reference = str(tmp_path / "reference")
  assert cli.main(["train", *WIDE, "--out", reference]) == 0
  out = os.path.join(small_disk, "run") if small_disk else str(tmp_path / "run")
  if small_disk is None:
    _inject_full_disk(monkeypatch, at_call=3)
  capsys.readouterr()
  assert cli.main(["train", *WIDE, "--out", out]) == 1
  err = one_line_error(
    capsys, "No space left on device", "free space", "the last checkpoint is step 84", "--resume"
  )
  assert "cannot write " + os.path.join(out, "checkpoint", "126") in err
  assert sorted(os.listdir(os.path.join(out, "checkpoint"))) == ["42", "84"]  # nothing half-written
  assert [r["step"] for r in records(out)] == [42, 84]
  if small_disk:
    _remount(small_disk, "size=16m")  # space freed
  else:
    monkeypatch.undo()
  assert cli.main(["train", *WIDE, "--out", out, "--resume"]) == 0
  assert_same_run(out, reference)


def test_read_only_targets_fail_before_any_work(small_disk, tmp_path, capsys, monkeypatch):
  finished = str(tmp_path / "finished")
  assert cli.main(["train", *SMALL, "--epochs", "1", "--out", finished]) == 0
  if small_disk is not None:
    target = small_disk
    shutil.copytree(finished, os.path.join(target, "run"))
    _remount(target, "ro")
    reason = "Read-only file system"
  elif os.geteuid() != 0:
    target = str(tmp_path / "locked")
    shutil.copytree(finished, os.path.join(target, "run"))
    for folder, _, _ in os.walk(target):
      os.chmod(folder, 0o555)
    reason = "Permission denied"
  else:
    pytest.skip("root without mount: no directory here refuses writes")
  capsys.readouterr()
  run = os.path.join(target, "run")
  assert cli.main(["train", *SMALL, "--epochs", "2", "--out", run, "--resume"]) == 1
  one_line_error(capsys, f"--out {run}", reason)
  assert cli.main(["train", *SMALL, "--out", os.path.join(target, "new")]) == 1
  one_line_error(capsys, f"--out {os.path.join(target, 'new')}", reason)

  def no_work(*args, **kwargs):
    raise AssertionError("compact loaded the run before checking --out")

  monkeypatch.setattr("rmda_jax.app.commands.load_run", no_work)
  assert cli.main(["compact", finished, "--out", os.path.join(target, "small")]) == 1
  one_line_error(capsys, f"--out {os.path.join(target, 'small')}", reason)
  monkeypatch.undo()
  # a reader needs no write access
  assert cli.main(["compact", run]) == 0
  assert capsys.readouterr().err == ""


def test_a_closed_standard_output_stops_with_one_line_and_the_run_resumes(tmp_path):
  out = str(tmp_path / "run")
  proc = subprocess.Popen(
    [sys.executable, "-m", "rmda_jax", "train", *SMALL, "--epochs", "4", "--out", out],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  assert proc.stdout is not None and proc.stderr is not None
  assert proc.stdout.readline().startswith("rmda on mlp/digits")
  assert proc.stdout.readline().startswith("epoch    1")
  proc.stdout.close()  # what `| head -2` does
  err = proc.stderr.read().strip()
  assert proc.wait(timeout=120) == 1
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  assert "standard output was closed" in err and "--resume" in err, err
  assert cli.main(["train", *SMALL, "--epochs", "4", "--out", out, "--resume"]) == 0
  assert [r["epoch"] for r in records(out)] == [1, 2, 3, 4]


def test_a_run_directory_deleted_during_the_run_stops_it_and_nothing_is_written_again(tmp_path):
  out, moved = str(tmp_path / "run"), str(tmp_path / "moved")

  def log(line):
    if line.startswith("epoch    2"):  # after step 42's checkpoint, before step 84's
      os.rename(out, moved)  # someone moves (or deletes) the directory while the run goes on

  config = train.TrainConfig(
    hidden=(16,), batch_size=32, milestones=(1,), epochs=3, out=out, progress=False, plots=False
  )
  with pytest.raises(train.RunFault, match=f"--out {out} was deleted or replaced") as caught:
    train.run(config, log=log)
  assert caught.value.restart_flag is None  # start again: the run's directory is gone
  assert not os.path.exists(out)  # not recreated
  assert sorted(os.listdir(os.path.join(moved, "checkpoint"))) == ["42"]


# --- data fingerprints ----------------------------------------------------------------------------


def test_a_resume_on_changed_data_is_refused_with_both_fingerprints(tmp_path, capsys):
  text = tmp_path / "corpus.txt"
  text.write_text("the quick brown fox jumps over the lazy dog. " * 100)
  out = str(tmp_path / "run")
  lm = [
    "--model",
    "transformer",
    "--dataset",
    f"text:{text}",
    "--layers",
    "1",
    "--width",
    "16",
    "--heads",
    "2",
    "--context",
    "16",
    "--batch-size",
    "8",
    "--epochs",
    "2",
    "--no-progress",
    "--no-plots",
  ]
  assert cli.main(["train", *lm, "--max-steps", "3", "--out", out]) == 0
  with open(os.path.join(out, "config.json")) as f:
    stored = json.load(f)["data_fingerprint"]
  assert len(stored["file_sha256"]) == 64 and stored["name"] == f"text:{text}"
  # the same file again resumes; a changed one (same size, other bytes) does not
  assert cli.main(["train", *lm, "--max-steps", "4", "--out", out, "--resume"]) == 0
  text.write_text("THE quick brown fox jumps over the lazy dog. " * 100)
  capsys.readouterr()
  assert cli.main(["train", *lm, "--max-steps", "6", "--out", out, "--resume"]) == 2
  err = one_line_error(capsys, "--resume: the data differ", "--allow-data-change")
  assert stored["sha256"][:12] in err and stored["file_sha256"][:12] in err
  assert [r["step"] for r in records(out)] == [4]
  assert (
    cli.main(["train", *lm, "--max-steps", "6", "--out", out, "--resume", "--allow-data-change"])
    == 0
  )
  assert [r["step"] for r in records(out)] == [6]


# --- compact output -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("trained") / "run")
  assert cli.main(["train", *SMALL, "--epochs", "1", "--strength", "0.05", "--out", out]) == 0
  return out


def test_compact_output_is_verified_when_read_and_damage_is_one_line(trained, tmp_path, capsys):
  from rmda_jax import compaction
  from rmda_jax.app import models

  small = str(tmp_path / "small")
  assert cli.main(["compact", trained, "--out", small]) == 0
  with open(os.path.join(small, "model.json")) as f:
    manifest = json.load(f)["files"]
  assert manifest and all(name.startswith("params/") for name in manifest)
  assert compaction.load(small, classes=models.ZOO).params is not None
  largest = max(
    (
      p
      for p in glob.glob(os.path.join(small, "params", "**", "*"), recursive=True)
      if os.path.isfile(p)
    ),
    key=os.path.getsize,
  )
  with open(largest, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x01  # one bit
    f.seek(0)
    f.write(data)
  with pytest.raises(compaction.storage.DamagedModelError, match="does not match its checksum"):
    compaction.load(small, classes=models.ZOO)
  capsys.readouterr()
  assert cli.main(["generate", small, "--tokens", "3"]) == 2
  one_line_error(capsys, "is damaged", os.path.relpath(largest, small))
  with open(os.path.join(small, "model.json"), "w") as f:
    f.write('{"class": "MLP", "fi')  # a torn model.json
  assert cli.main(["generate", small]) == 2
  one_line_error(capsys, "model.json is unreadable")


def test_compact_out_needs_overwrite_and_overwrite_leaves_nothing_stale(trained, tmp_path, capsys):
  small = str(tmp_path / "small")
  assert cli.main(["compact", trained, "--out", small]) == 0
  (tmp_path / "small" / "notes.txt").write_text("mine")
  capsys.readouterr()
  assert cli.main(["compact", trained, "--out", small]) == 2
  one_line_error(capsys, f"--out {small} already holds a compact model", "--overwrite")
  assert cli.main(["compact", trained, "--out", small, "--overwrite", "--params", "final"]) == 0
  assert sorted(os.listdir(small)) == ["model.json", "notes.txt", "params"]
  # a training run replaced with --overwrite takes a compact model written into it with it
  run = str(tmp_path / "run")
  shutil.copytree(trained, run)
  assert cli.main(["compact", run, "--out", run]) == 0
  assert os.path.isfile(os.path.join(run, "model.json"))
  assert (
    cli.main(["train", *SMALL, "--epochs", "1", "--max-steps", "2", "--out", run, "--overwrite"])
    == 0
  )
  assert not any(os.path.exists(os.path.join(run, n)) for n in ("model.json", "params"))


def test_a_failed_compact_save_leaves_no_model_to_load(trained, tmp_path, monkeypatch):
  from rmda_jax import compaction
  from rmda_jax.app import models

  small = str(tmp_path / "small")
  _, _, model, params, _ = runs.load_run(trained)
  compacted = compaction.compact(model, params)
  compaction.save(small, compacted)

  def full(*args, **kwargs):
    raise ValueError(
      "RESOURCE_EXHAUSTED: Failed writing: No space left on device [os_error_code='28']"
    )

  monkeypatch.setattr(ocp.StandardCheckpointer, "save", full)
  with pytest.raises(OSError, match="No space left on device") as caught:
    compaction.save(small, compacted, overwrite=True)
  assert caught.value.errno == 28
  monkeypatch.undo()
  assert sorted(os.listdir(small)) == []  # no model.json, no temporary arrays
  with pytest.raises(ValueError, match="holds no compact model"):
    compaction.load(small, classes=models.ZOO)
  with pytest.raises(FileExistsError):
    compaction.save(str(tmp_path / "again"), compacted)
    compaction.save(str(tmp_path / "again"), compacted)


def test_the_lock_file_records_its_holder_and_stays_after_release(tmp_path):
  out = str(tmp_path)
  with rundir.RunLock(out) as lock:
    with open(lock.path) as f:
      holder = json.load(f)
    assert holder["pid"] == os.getpid() and holder["started"] <= time.time()
    assert lock.still_held()
  assert os.path.exists(os.path.join(out, rundir.LOCK_NAME)) and not lock.still_held()
  with rundir.RunLock(out):  # free again
    pass
