"""Training over two processes of two CPU devices each (gloo collectives), against one of four.

Each test launches real ``rmda-jax train`` processes joined by
``--coordinator`` / ``--num-processes`` / ``--process-id``, as the README's
rehearsal does (the first test runs the README's own commands), and checks
the log against one process with four simulated devices, the checkpoint
directory, resuming, a SIGTERM on one process and a killed peer.
"""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest
from run_checks import records

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COMMON = ["--hidden", "16", "--batch-size", "32", "--no-progress", "--no-plots"]
STEPS_PER_EPOCH = 1347 // 32  # digits' training split


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def environment(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("RMDA_JAX_TEST_SAVE_PAUSE", None)
  return env


def command(args):
  return [sys.executable, "-m", "rmda_jax", "train", *args]


def start_processes(args, tmp_path, name, peer_timeout=60):
  """Two processes of ``rmda-jax train args``; their Popen objects (output in files).

  ``args`` is the processes' argument list, or a function of the process index giving it.
  """
  port = free_port()
  procs = []
  for i in range(2):
    joined = [
      *(args(i) if callable(args) else args),
      "--coordinator",
      f"localhost:{port}",
      "--num-processes",
      "2",
      "--process-id",
      str(i),
      "--peer-timeout",
      str(peer_timeout),
    ]
    log = open(tmp_path / f"{name}.p{i}.log", "w")
    procs.append(
      subprocess.Popen(
        command(joined), env=environment(2), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path
      )
    )
  return procs


def finish(procs, timeout=300):
  codes = []
  for p in procs:
    try:
      codes.append(p.wait(timeout))
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  return codes


def run_processes(args, tmp_path, name):
  """The exit statuses and outputs of two processes of ``rmda-jax train args``."""
  codes = finish(start_processes(args, tmp_path, name))
  return codes, [(tmp_path / f"{name}.p{i}.log").read_text() for i in range(2)]


def two_processes(args, tmp_path, name):
  codes, logs = run_processes(args, tmp_path, name)
  assert codes == [0, 0], logs
  return logs


def one_process(args, tmp_path):
  done = subprocess.run(
    command(args), env=environment(4), capture_output=True, text=True, cwd=tmp_path, timeout=300
  )
  assert done.returncode == 0, done.stderr
  return done.stdout


def assert_close_logs(out, reference, tol=1e-5):
  got, want = records(out), records(reference)
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for key, value in b.items():
      if isinstance(value, float):
        assert abs(a[key] - value) <= tol * max(1.0, abs(value)), (key, a[key], value)
      else:
        assert a[key] == value, key


def steps_in(out):
  return sorted(int(n) for n in os.listdir(os.path.join(out, "checkpoint")) if n.isdigit())


def readme_rehearsal():
  """The rmda-jax arguments of the README's two-process rehearsal, and its environment."""
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  block = re.search(
    r"<!-- multihost-rehearsal -->\s*```bash\n(.*?)```\s*<!-- /multihost-rehearsal -->",
    text,
    re.S,
  )
  assert block, "README.md lost its multi-host rehearsal"
  script = block.group(1)
  assert "export XLA_FLAGS=--xla_force_host_platform_device_count=2" in script
  line = script.split("rmda-jax train", 1)[1].split("&", 1)[0].replace("\\\n", " ")
  return script, shlex.split(line)


def test_the_readme_rehearsal_gives_the_numbers_of_one_process_and_resumes(tmp_path):
  script, words = readme_rehearsal()
  assert words[words.index("--process-id") + 1] == "$i"
  assert words[words.index("--num-processes") + 1] == "2"
  mesh = words[words.index("--mesh") + 1]
  # the README's commands themselves, on a free port
  port = free_port()
  runnable = script.replace("localhost:12355", f"localhost:{port}").replace(
    "rmda-jax train", f"{shlex.quote(sys.executable)} -m rmda_jax train"
  )
  env = environment(2)
  env.pop("XLA_FLAGS")
  done = subprocess.run(
    ["bash", "-c", f"set -e\n{runnable}"],
    env=env,
    capture_output=True,
    text=True,
    cwd=tmp_path,
    timeout=600,
  )
  assert done.returncode == 0, done.stdout + done.stderr
  out = tmp_path / words[words.index("--out") + 1]
  reference = tmp_path / "one"
  plain = list(words)
  for flag in ("--coordinator", "--num-processes", "--process-id"):
    at = plain.index(flag)
    del plain[at : at + 2]
  plain[plain.index("--out") + 1] = str(reference)
  one_process(plain, tmp_path)
  assert_close_logs(out, reference)
  # process 0 alone prints the run (both processes' lines are in the one output here)
  assert done.stdout.count("epoch    1  loss") == 1, done.stdout
  # one checkpoint directory: the final step, complete, with one manifest
  assert steps_in(out)[-1] == 2 * STEPS_PER_EPOCH
  last = os.path.join(out, "checkpoint", str(2 * STEPS_PER_EPOCH))
  assert os.path.isfile(os.path.join(last, "files.sha256.json"))
  assert not [n for n in os.listdir(out) if "tmp" in n or "probe" in n]
  # resumed in two processes for a third epoch: the numbers of one process trained for three
  args = [*COMMON, "--epochs", "3", "--mesh", mesh, "--out", str(out), "--resume"]
  two_processes(args, tmp_path, "resumed")
  longer = tmp_path / "one-longer"
  one_process([*COMMON, "--epochs", "3", "--mesh", mesh, "--out", str(longer)], tmp_path)
  assert_close_logs(out, longer)


def test_data_parallel_over_the_hosts_matches_one_process_and_resumes_across_counts(tmp_path):
  args = [*COMMON, "--epochs", "2", "--max-steps", "60", "--mesh", "data=4"]
  out, reference = tmp_path / "two", tmp_path / "one"
  logs = two_processes([*args, "--out", str(out)], tmp_path, "two")
  one_process([*args, "--out", str(reference)], tmp_path)
  assert_close_logs(out, reference)
  assert "ex/s" in logs[0] and "per process" in logs[0]
  assert "epoch" not in logs[1] and "summary" not in logs[1]
  with open(out / "log.json") as f:
    epochs = json.load(f)["epochs"]
  assert epochs[-1]["examples_per_second_per_process"] * 2 == pytest.approx(
    epochs[-1]["examples_per_second"]
  )
  # a one-process run resumed by two processes, and the other way round
  longer = [*COMMON, "--epochs", "2", "--max-steps", "84", "--mesh", "data=4", "--resume"]
  two_processes([*longer, "--out", str(reference)], tmp_path, "resumed")
  one_process([*longer, "--out", str(out)], tmp_path)
  full = tmp_path / "full"
  one_process([*longer[:-1], "--out", str(full)], tmp_path)
  assert_close_logs(reference, full)
  assert_close_logs(out, full)


def wait_for_checkpoint(out, procs, timeout=240):
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if os.path.isdir(os.path.join(out, "checkpoint")) and steps_in(out):
      return
    assert all(p.poll() is None for p in procs), "a process ended before the first checkpoint"
    time.sleep(0.05)
  raise AssertionError("no checkpoint")


@pytest.mark.parametrize("fault", ["sigterm", "kill"])
def test_a_signal_or_a_dead_peer_ends_every_process_with_the_checkpoint_intact(fault, tmp_path):
  mesh = ["--mesh", "data=2,model=2", "--checkpoint-every", "1"]
  out = tmp_path / "run"
  procs = start_processes(
    [*COMMON, "--epochs", "400", *mesh, "--out", str(out)], tmp_path, fault, peer_timeout=10
  )
  wait_for_checkpoint(out, procs)
  hit = time.monotonic()
  procs[1].send_signal(signal.SIGTERM if fault == "sigterm" else signal.SIGKILL)
  codes = finish(procs, timeout=120)
  took = time.monotonic() - hit
  logs = [(tmp_path / f"{fault}.p{i}.log").read_text() for i in range(2)]
  assert took < 90, logs
  assert codes[0] != 0, logs
  if fault == "sigterm":
    # both stop after the same step, each saying so in one line with the command to resume
    assert codes == [128 + signal.SIGTERM] * 2, logs
    stops = [re.search(r"interrupted by SIGTERM(?: on process 1)? at step (\d+)", t) for t in logs]
    assert stops[0] and stops[1], logs
    assert "SIGTERM on process 1" in stops[0].group(0)
    assert stops[0].group(1) == stops[1].group(1)
    assert "--resume" in logs[0] and "Traceback" not in logs[0] + logs[1]
  else:
    assert codes[1] == -signal.SIGKILL
  # the newest complete checkpoint resumes in two processes to the numbers of one process
  stored = steps_in(out)
  assert stored, logs
  epochs = stored[-1] // STEPS_PER_EPOCH + 1
  args = [*COMMON, "--epochs", str(epochs), *mesh]
  two_processes([*args, "--out", str(out), "--resume"], tmp_path, f"{fault}-resumed")
  reference = tmp_path / "one"
  one_process([*args, "--out", str(reference)], tmp_path)
  assert_close_logs(out, reference)


def test_processes_that_cannot_work_together_stop_in_one_line(tmp_path):
  args = [*COMMON, "--epochs", "1", "--max-steps", "2"]
  # other settings on process 1 (the processes start with the same arguments but one)
  codes, logs = run_processes(
    lambda i: [*args, *(["--lr", "0.2"] if i else []), "--out", str(tmp_path / "run")],
    tmp_path,
    "settings",
  )
  assert codes == [2, 2], logs
  for i, log in enumerate(logs):
    line = [e for e in log.splitlines() if "error" in e]
    assert len(line) == 1 and f"(process {i}/2)" in line[0], log
    assert "process 1 was started with other settings than process 0: --lr 0.2" in line[0]
  # an --out that is not the same directory for both (as a disk local to each host)
  codes, logs = run_processes(
    lambda i: [*args, "--out", str(tmp_path / f"local{i}")], tmp_path, "storage"
  )
  assert codes == [1, 1], logs
  for log in logs:
    assert "is not shared storage: process 1" in log, log
  assert not os.path.exists(tmp_path / "local0" / "checkpoint")


@pytest.mark.parametrize(
  "args, fragment",
  [
    (["--mesh", "data=2"], "a multi-process run needs a mesh over all of them"),
    (["--num-processes", "0"], "--num-processes must be at least 1"),
  ],
)
def test_bad_multi_process_settings(args, fragment, tmp_path):
  joined = [*COMMON, "--epochs", "1", "--out", str(tmp_path / "run"), *args]
  if "--num-processes" not in args:
    codes, logs = run_processes(joined, tmp_path, "bad")
    assert all(code != 0 for code in codes), logs
    assert all(fragment in log for log in logs), logs
  else:
    done = subprocess.run(
      command([*joined, "--coordinator", "localhost:1"]),
      env=environment(2),
      capture_output=True,
      text=True,
      timeout=120,
    )
    assert done.returncode == 1 and fragment in done.stderr, done.stderr
