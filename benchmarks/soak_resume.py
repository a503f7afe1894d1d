"""Interrupt soak: kill and resume `rmda-jax train` many times, check nothing is ever lost.

Each try trains a small MLP on digits (4 epochs, a checkpoint every epoch) in
a real process and interrupts it again and again: SIGINT or SIGTERM at a
random moment or inside a checkpoint save (a test hook pauses there), two
SIGINTs in a row (the save is abandoned), or SIGKILL at a random moment or
0-0.1 s after orbax starts writing a step (no chance to clean up). After
each interrupt it runs the command the process printed (for SIGKILL: the
same command with --resume when a checkpoint step exists). A try ends when a
run finishes; its log records (less wall-clock seconds) and final params and
optimizer state are then compared bit for bit with an uninterrupted run.

Two more kinds of tries follow:

* two writers: a second ``rmda-jax train`` on the same ``--out`` (plain,
  ``--resume`` or ``--overwrite``) starts 0-3 s after the first. The
  directory lock must refuse it with one line while the first runs (or, once
  the first has finished, it must do what its flag says), and the run left in
  the directory must be bit-identical to the uninterrupted one: never two
  runs' steps and logs mixed.
* a full disk: the run writes to a 1 MiB tmpfs (mounted when this machine
  lets a process mount one; else orbax's save is made to fail as TensorStore
  does on ENOSPC, from the third save on). It must stop with one line naming
  the step and the last intact checkpoint; after space is freed, the printed
  ``--resume`` command must finish bit-identical to an uninterrupted run.

    python benchmarks/soak_resume.py              # ~3 min on 2 CPU cores
    python benchmarks/soak_resume.py --tries 20 --writers 10 --full-disk 4
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import _harness
import jax
import numpy as np

from rmda_jax.app import train

ARGS = [
  "--hidden",
  "16",
  "--batch-size",
  "32",
  "--milestones",
  "1",
  "--no-progress",
  "--no-plots",
  "--epochs",
  "4",
  "--checkpoint-every",
  "1",
]
FAULTS = {
  "SIGINT random": ((signal.SIGINT,), "random"),
  "SIGINT in save": ((signal.SIGINT,), "save"),
  "SIGTERM random": ((signal.SIGTERM,), "random"),
  "SIGTERM in save": ((signal.SIGTERM,), "save"),
  "2x SIGINT in save": ((signal.SIGINT, signal.SIGINT), "save"),
  "SIGKILL random": ((signal.SIGKILL,), "random"),
  "SIGKILL in save": ((signal.SIGKILL,), "save"),
}


WIDE = ["--hidden", "128,128", *ARGS[2:]]  # 0.4 MB a step: a 1 MiB disk fills at the third

# run in the child in place of `python -m rmda_jax`: orbax's save fails from its third call on, as
# TensorStore's writes do on a full disk
FULL_DISK_CHILD = """
import sys
import orbax.checkpoint as ocp
original, calls = ocp.CheckpointManager.save, []
def save(self, step, *args, **kwargs):
  calls.append(step)
  if len(calls) >= 3:
    raise ValueError("RESOURCE_EXHAUSTED: Failed to write: No space left on device "
                     "[os_error_code='28']")
  return original(self, step, *args, **kwargs)
ocp.CheckpointManager.save = save
from rmda_jax.app import cli
sys.exit(cli.main(sys.argv[1:], process=True))
"""


def launch(args, env, fault, rng, pause, child=None):
  """Run the training module (or ``child``, a ``python -c`` program); send ``fault``.

  ``fault`` = (signals, moment). Returns (exit code, output lines, seconds).
  """
  started = time.perf_counter()
  program = ["-m", "rmda_jax"] if child is None else ["-c", child]
  proc = subprocess.Popen(
    [sys.executable, *program, "train", *args],
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
        time.sleep(0.05)
      if proc.poll() is None:
        proc.send_signal(signum)

  output, timer = [], None
  while (line := lines.get(timeout=300)) is not None:
    output.append(line)
    if timer is None and signals:
      if moment == "random":
        timer = threading.Timer(rng.uniform(0.0, 3.0), send)
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
  code = proc.wait(timeout=120)
  if timer is not None:
    timer.cancel()
  return code, output, time.perf_counter() - started


def _mount_tmpfs(path, size):
  """Mount a tmpfs of ``size`` at ``path``; whether this machine allowed it."""
  if os.geteuid() != 0 or shutil.which("mount") is None:
    return False
  os.makedirs(path, exist_ok=True)
  done = subprocess.run(
    ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], capture_output=True
  )
  return done.returncode == 0


def _one_line_error(output, *fragments):
  errors = [line for line in output if line.startswith("rmda-jax train: ")]
  return (
    len(errors) == 1
    and not any("Traceback" in line for line in output)
    and all(f in errors[0] for f in fragments)
  )


def writer_tries(n, work, env, rng, reference):
  """Two writers on one --out: the lock must keep exactly one run there."""
  rows = []
  for t in range(n):
    out = os.path.join(work, f"writers{t}")
    flag = str(rng.choice(["", "--resume", "--overwrite"]))
    delay = float(rng.uniform(0.0, 3.0))
    results = {}

    def run(name, args, wait, results=results):
      time.sleep(wait)
      results[name] = launch(args, env, None, rng, 0.0)

    first = threading.Thread(target=run, args=("first", [*ARGS, "--out", out], 0.0))
    second_args = [*ARGS, "--out", out] + ([flag] if flag else [])
    second = threading.Thread(target=run, args=("second", second_args, delay))
    first.start()
    second.start()
    first.join()
    second.join()
    (code_a, out_a, _), (code_b, out_b, _) = results["first"], results["second"]

    def refused(code, output):
      # while the other runs: the lock; once it has finished, a plain start meets its run; a
      # --resume that starts before the first has made the directory finds nothing to resume
      return (code == 1 and _one_line_error(output, "is in use by another rmda-jax process")) or (
        code == 2
        and (
          _one_line_error(output, "already holds a training run")
          or _one_line_error(output, "nothing to resume")
        )
      )

    clean = 0 in (code_a, code_b) and all(
      code == 0 or refused(code, output) for code, output in ((code_a, out_a), (code_b, out_b))
    )
    steps = sorted(n for n in os.listdir(os.path.join(out, "checkpoint")) if n.isdigit())
    same = identical(out, reference)
    rows.append(
      {
        "try": t,
        "second writer": flag or "(plain)",
        "after s": round(delay, 2),
        "first exit": code_a,
        "second exit": code_b,
        "every failure one line": clean,
        "steps kept": len(steps),
        "identical to uninterrupted": same,
        "mixed": not (same and clean) or len(steps) > train.KEEP_CHECKPOINTS,
      }
    )
    print(
      f"writers {t}: second {flag or '(plain)'} after {delay:.2f} s: exit {code_b}, "
      f"identical {same}",
      flush=True,
    )
  return rows


def full_disk_tries(n, work, env, rng):
  """Training into a full disk: one line, the last checkpoint intact, an exact resume."""
  reference = os.path.join(work, "reference-wide")
  code, output, _ = launch([*WIDE, "--out", reference, "--overwrite"], env, None, rng, 0.0)
  if code != 0:
    raise SystemExit("\n".join(output))
  rows = []
  for t in range(n):
    disk = os.path.join(work, f"disk{t}")
    real = _mount_tmpfs(disk, "1m")
    out = os.path.join(disk, "run")
    code, output, _ = launch(
      [*WIDE, "--out", out], env, None, rng, 0.0, None if real else FULL_DISK_CHILD
    )
    message = output[-1] if output else ""
    one_line = code == 1 and _one_line_error(output, "No space left on device", "--resume")
    intact = sorted(os.listdir(os.path.join(out, "checkpoint")))
    if real:
      subprocess.run(["mount", "-o", "remount,size=16m", disk], check=True)  # space freed
    resume = shlex.split(message.split(" with: ", 1)[1])[2:] if " with: " in message else None
    code_r = launch(resume, env, None, rng, 0.0)[0] if resume else None
    same = code_r == 0 and identical(out, reference)
    if real:
      subprocess.run(["umount", "-l", disk], capture_output=True)
    rows.append(
      {
        "try": t,
        "disk": "tmpfs 1 MiB" if real else "injected ENOSPC",
        "exit": code,
        "one-line message": one_line,
        "steps left": ",".join(intact),
        "resumed exit": code_r,
        "identical to uninterrupted": same,
      }
    )
    print(f"full disk {t}: exit {code}, one line {one_line}, resumed identical {same}", flush=True)
  return rows


def records(out):
  with open(os.path.join(out, "log.json")) as f:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in json.load(f)["epochs"]]


def identical(out, reference) -> bool:
  if records(out) != records(reference):
    return False
  a = jax.tree_util.tree_leaves(train.load_run(out)[3:])
  b = jax.tree_util.tree_leaves(train.load_run(reference)[3:])
  return len(a) == len(b) and all(
    np.asarray(x).dtype == np.asarray(y).dtype
    and np.asarray(x).tobytes() == np.asarray(y).tobytes()
    for x, y in zip(a, b)
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tries", type=int, default=5)
  parser.add_argument("--max-interrupts", type=int, default=6, help="per try, before it may finish")
  parser.add_argument(
    "--save-pause",
    type=float,
    default=0.25,
    help="seconds the test hook pauses before and after each checkpoint write",
  )
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--writers", type=int, default=3, help="tries with two writers on one --out")
  parser.add_argument("--full-disk", type=int, default=2, help="tries that fill the disk")
  parser.add_argument(
    "--work", default=None, help="directory for the runs (default: a temporary one)"
  )
  args = parser.parse_args()
  work = args.work or tempfile.mkdtemp(prefix="rmda_jax_soak_")
  rng = np.random.default_rng(args.seed)
  env = dict(
    os.environ,
    PYTHONUNBUFFERED="1",
    JAX_COMPILATION_CACHE_DIR=os.path.join(work, "jax-cache"),
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )
  reference = os.path.join(work, "reference")
  code, output, _ = launch([*ARGS, "--out", reference, "--overwrite"], env, None, rng, 0.0)
  if code != 0:
    raise SystemExit("\n".join(output))
  env[train.SAVE_PAUSE_ENV] = str(args.save_pause)

  # (a SIGKILLed process can print nothing: its message column is "-")
  per_fault = {
    name: {
      "fault": name,
      "sent": 0,
      "exit as expected": 0,
      "one-line message": None if FAULTS[name][0][0] == signal.SIGKILL else 0,
      "next run resumed": 0,
      "left a partial step": 0,
    }
    for name in FAULTS
  }
  tries, events, problem_log = [], [], []
  for t in range(args.tries):
    out = os.path.join(work, f"try{t}")
    command = [*ARGS, "--out", out, "--overwrite"]
    interrupts, problems, processes = 0, [], 0
    pending = None  # the fault sent to the previous process, credited when the next one resumes
    while True:
      name = str(rng.choice(list(FAULTS))) if interrupts < args.max_interrupts else None
      code, output, seconds = launch(
        command, env, FAULTS[name] if name else None, rng, args.save_pause
      )
      processes += 1
      text = "\n".join(output)
      for bad in ("Traceback", "damaged", "error"):
        if bad in text:
          problems.append(
            f"process {processes} (after {name or 'no fault'}): {bad!r} in its output: "
            + " | ".join(line for line in output if line.strip())[-2000:]
          )
      if pending is not None and any(line.startswith("resumed from") for line in output):
        per_fault[pending]["next run resumed"] += 1
      pending = None
      if code == 0:
        break
      if name is None:
        problems.append(
          f"process {processes} (no fault) failed with exit code {code}: "
          + " | ".join(line for line in output if line.strip())[-2000:]
        )
        break
      interrupts += 1
      signals = FAULTS[name][0]
      per_fault[name]["sent"] += 1
      left = (
        sorted(os.listdir(os.path.join(out, "checkpoint")))
        if os.path.isdir(os.path.join(out, "checkpoint"))
        else []
      )
      events.append(
        {
          "try": t,
          "fault": name,
          "exit": code,
          "seconds": round(seconds, 2),
          "checkpoint dir after": left,
        }
      )
      per_fault[name]["left a partial step"] += any(
        not n.isdigit() for n in left
      )  # orbax's temporary step
      if signals[0] == signal.SIGKILL:
        per_fault[name]["exit as expected"] += code == -signal.SIGKILL
        has_step = any(n.isdigit() for n in left)
        command = [*ARGS, "--out", out] + (["--resume"] if has_step else ["--overwrite"])
        pending = name if has_step else None
        if not has_step:
          per_fault[name]["next run resumed"] += (
            1  # killed before the first checkpoint: started again
          )
        continue
      per_fault[name]["exit as expected"] += code == 128 + signals[0]
      message = output[-1] if output else ""
      if message.startswith("rmda-jax train: interrupted by") and " with: " in message:
        per_fault[name]["one-line message"] += 1
        words = shlex.split(message.split(" with: ", 1)[1])
        command = words[2:]
        pending = name if "--resume" in command else None
        if "--resume" not in command:
          per_fault[name]["next run resumed"] += (
            1  # interrupted before the first checkpoint: started again
          )
      else:
        problems.append(f"process {processes}: no resume message after {name}: {message!r}")
        break
    same = code == 0 and identical(out, reference)
    leftovers = [n for n in os.listdir(os.path.join(out, "checkpoint")) if not n.isdigit()]
    tries.append(
      {
        "try": t,
        "interrupts": interrupts,
        "processes": processes,
        "finished": code == 0,
        "identical to uninterrupted": same,
        "leftovers": len(leftovers),
        "problems": len(problems),
      }
    )
    problem_log.extend({"try": t, "problem": p} for p in problems)
    for p in problems:
      print(f"try {t}: {p}")
    print(f"try {t}: {interrupts} interrupts, finished {code == 0}, identical {same}", flush=True)

  writers = writer_tries(args.writers, work, env, rng, reference)
  disks = full_disk_tries(args.full_disk, work, env, rng)
  _harness.print_table(list(per_fault.values()), list(per_fault["SIGINT random"]), "interrupts")
  _harness.print_table(tries, list(tries[0]), "tries")
  if writers:
    _harness.print_table(writers, list(writers[0]), "two writers on one --out")
  if disks:
    _harness.print_table(disks, list(disks[0]), "a full disk")
  lost = sum(not t["identical to uninterrupted"] for t in tries)
  mixed = sum(w["mixed"] for w in writers)
  disk_lost = sum(not d["identical to uninterrupted"] or not d["one-line message"] for d in disks)
  print(
    f"\n{sum(t['interrupts'] for t in tries)} interrupts in {len(tries)} tries; "
    f"runs lost or changed: {lost}; two-writer tries mixed: {mixed} of {len(writers)}; "
    f"full-disk tries lost or without a one-line message: {disk_lost} of {len(disks)}"
  )
  _harness.write_json(
    "soak_resume",
    {
      "args": vars(args),
      "faults": list(per_fault.values()),
      "tries": tries,
      "events": events,
      "problems": problem_log,
      "writers": writers,
      "full_disk": disks,
    },
  )


if __name__ == "__main__":
  main()
