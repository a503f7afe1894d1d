"""Run by tests/app/test_language_model.py in a subprocess with 8 CPU devices: the
training command on one device, data-parallel over 8, and data 2 x model 4;
prints the largest differences of the log and the params as JSON."""

import json
import os
import sys


def main():
  os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  )
  import jax
  import numpy as np

  from rmda_jax.app import cli, train

  out, model = sys.argv[1], sys.argv[2]
  if model == "transformer":
    args = [
      "--model",
      "transformer",
      "--dataset",
      "pydoc",
      "--context",
      "16",
      "--width",
      "32",
      "--heads",
      "4",
      "--layers",
      "1",
      "--mlp",
      "32",
      "--optimizer",
      "ramda",
      "--strength",
      "1e-3",
    ]
  else:
    args = ["--model", "mlp", "--hidden", "16", "--optimizer", "rmda"]
  common = [
    "train",
    *args,
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--max-steps",
    "6",
    "--milestones",
    "none",
    "--no-progress",
    "--no-plots",
  ]
  runs = {}
  for name, mesh in [("one", "data=1"), ("data", "data=8"), ("fsdp", "data=2,model=4")]:
    assert cli.main(common + ["--mesh", mesh, "--out", os.path.join(out, name)]) == 0
    with open(os.path.join(out, name, "log.json")) as f:
      log = json.load(f)
    record = (log["epochs"] or [log.get("partial")])[-1]
    _, _, _, params, _ = train.load_run(os.path.join(out, name))
    runs[name] = (record, jax.tree_util.tree_leaves(params))
  result = {"devices": jax.device_count()}
  for name in ("data", "fsdp"):
    record, leaves = runs[name]
    base_record, base_leaves = runs["one"]
    result[name] = {
      "loss": max(abs(record[k] - base_record[k]) for k in ("train_loss", "val_loss")),
      "params": max(
        float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(leaves, base_leaves)
      ),
    }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
