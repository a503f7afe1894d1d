"""Checks shared by the fault tests: log records, bit-identical runs, one-line errors."""

import json
import os

import jax
import numpy as np

from rmda_jax.app import train

# what an epoch record measures of the machine, not of the run
WALL_CLOCK = ("seconds", "examples_per_second", "examples_per_second_per_process")


def records(out):
  """log.json's epoch records without the wall-clock fields."""
  with open(os.path.join(out, "log.json")) as f:
    epochs = json.load(f)["epochs"]
  return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in epochs]


def assert_same_run(out, reference):
  """Same log records and bit-identical params and optimizer state as the reference run."""
  assert records(out) == records(reference)
  _, _, _, params, state = train.load_run(out)
  _, _, _, ref_params, ref_state = train.load_run(reference)
  leaves, ref_leaves = (
    jax.tree_util.tree_leaves((params, state)),
    jax.tree_util.tree_leaves((ref_params, ref_state)),
  )
  assert len(leaves) == len(ref_leaves)
  for a, b in zip(leaves, ref_leaves):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def one_line_error(capsys, *fragments):
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in err, err
  for fragment in fragments:
    assert fragment in err, err
  return err
