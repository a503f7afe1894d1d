"""One whole training step (LeNet5, or a small VGG; batch 128, forward + backward + optimizer):
JAX against PyTorch.

The JAX step is the one ``rmda-jax train`` compiles (``rmda_jax.app.steps.make_step``
under ``jax.jit``), with SGD, RMDA and RAMDA, timed four ways: plain
``jax.jit``, with params and state donated, as the app compiles it ("app":
donated, and with :func:`rmda_jax.cpu.compiler_options`, which lets XLA:CPU
reassociate sums and run the convolutions itself instead of through
YNNPACK), and the same with YNNPACK's convolutions ("app ynnconv", the app
before it chose XLA's); the PyTorch step is the usual eager ``zero_grad / loss.backward() /
opt.step()`` on the same architecture and batch, with ``torch.optim.SGD``
(momentum 0.9) and with RMDA written in PyTorch tensor ops per parameter
(the way a PyTorch optimizer implements it), so the cost RMDA adds to a step
is measured in both frameworks. All contestants are timed in alternation in
one process (medians of interleaved rounds), with PyTorch on as many threads
as XLA uses here.

Then, to see where the JAX step spends its time, one profile of each JAX
step sums the time of its convolution thunks against the rest, and the JAX
steps are timed again in fresh processes under XLA:CPU flag settings (fast
math, oneDNN, no YNNPACK fusions) and with ``jax.default_matmul_precision``
set to bfloat16 (``JAX_DEFAULT_MATMUL_PRECISION``).

    pip install torch==2.13.0        # not a dependency of the library; the PyTorch rows need it
    python benchmarks/train_step.py               # about 9 minutes on 2 CPU cores
                                                  # (the flag settings too)
    python benchmarks/train_step.py --rounds 30 --skip-flags
    # a small VGG, JAX rows only, about 9 minutes:
    python benchmarks/train_step.py --model vgg --rounds 10 --steps 3
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile

import _harness
import jax
import jax.numpy as jnp
import numpy as np
import optax

import rmda_jax
from rmda_jax.app import models, steps
from rmda_jax.cpu import options as compile_options

BATCH = 128
LR, MOMENTUM, STRENGTH = (
  0.1,
  0.1,
  1e-4,
)  # RMDA's papers' settings; group-LASSO strength of the demo scale
SETTINGS = {  # label -> environment added for a fresh process
  "fast math": {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"},
  "oneDNN": {"XLA_FLAGS": "--xla_cpu_use_onednn=true"},
  "no YNNPACK fusions": {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="},
  "matmul precision bfloat16": {"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"},
}


MODELS = {  # --model -> (the app's model, one input's shape); PyTorch rows for LeNet5 only
  "lenet5": (models.LeNet5, (28, 28, 1)),
  "vgg": (
    models.VGG,
    (32, 32, 3),
  ),  # the app's default VGG (32-64-128-128 channels) on CIFAR-sized inputs
}


def batch(seed=0, shape=(28, 28, 1)):
  rng = np.random.default_rng(seed)
  return (
    rng.normal(size=(BATCH, *shape)).astype(np.float32),
    rng.integers(0, 10, size=BATCH).astype(np.int32),
  )


def jax_optimizers():
  return {
    "sgd": optax.sgd(LR, momentum=0.9),
    "rmda": rmda_jax.rmda(LR, momentum=MOMENTUM, regularizer=rmda_jax.group_lasso(STRENGTH)),
    "ramda": rmda_jax.ramda(1e-2, momentum=MOMENTUM, regularizer=rmda_jax.group_lasso(STRENGTH)),
  }


def _reassociated_only() -> dict:
  """``cpu_compiler_options`` without its convolution setting: convolutions stay with YNNPACK,
  XLA:CPU's default."""
  options = rmda_jax.cpu.compiler_options()
  options.pop(compile_options.YNN_FUSION_TYPE, None)
  return options


VARIANTS = {  # label suffix -> (donated, compiler options); "app": as rmda-jax train
  "": (False, dict),
  " donated": (True, dict),
  " app ynnconv": (True, _reassociated_only),
  " app": (True, rmda_jax.cpu.compiler_options),
}


def jax_runners(x, y, model_name="lenet5"):
  """name -> (run, step function, args) per optimizer and :data:`VARIANTS` entry."""
  model = MODELS[model_name][0]()
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  loss_fn = steps.softmax_cross_entropy(lambda p, xb: model.apply({"params": p}, xb))
  x, y = jnp.asarray(x), jnp.asarray(y)
  runners = {}
  for name, tx in jax_optimizers().items():
    step = steps.make_step(loss_fn, tx)
    for suffix, (donated, options) in VARIANTS.items():
      fn = jax.jit(step, donate_argnums=(0, 1) if donated else (), compiler_options=options())
      holder = {"p": jax.tree_util.tree_map(jnp.copy, params)}
      holder["s"] = tx.init(holder["p"])

      def run(fn=fn, holder=holder):
        holder["p"], holder["s"], loss = fn(holder["p"], holder["s"], x, y)
        _harness.block((holder["p"], loss))

      run()  # compile
      runners[f"jax {name}{suffix}"] = (run, fn, holder)
  return runners, (x, y)


def torch_runners(x, y, threads):
  try:
    import torch
  except ImportError:
    return {}
  torch.set_num_threads(threads)
  torch.manual_seed(0)

  class LeNet5(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.conv0 = torch.nn.Conv2d(1, 20, 5)
      self.conv1 = torch.nn.Conv2d(20, 50, 5)
      self.fc0 = torch.nn.Linear(800, 500)
      self.fc1 = torch.nn.Linear(500, 10)

    def forward(self, h):
      h = torch.nn.functional.max_pool2d(torch.relu(self.conv0(h)), 2)
      h = torch.nn.functional.max_pool2d(torch.relu(self.conv1(h)), 2)
      return self.fc1(torch.relu(self.fc0(h.flatten(1))))

  class RMDA(torch.optim.Optimizer):
    """RMDA (rmda_jax.rmda's update) as a PyTorch optimizer: group-LASSO on the
    input groups of the weights (input channels / input features), biases free."""

    def __init__(self, params, lr, momentum, strength):
      super().__init__(params, dict(lr=lr, momentum=momentum, strength=strength))
      self.k, self.alpha = 0, 0.0

    @torch.no_grad()
    def step(self):
      self.k += 1
      s = self.defaults["lr"] * math.sqrt(self.k)
      self.alpha += s
      for group in self.param_groups:
        for p in group["params"]:
          state = self.state[p]
          if not state:
            state["anchor"], state["grad_sum"] = p.detach().clone(), torch.zeros_like(p)
          state["grad_sum"].add_(p.grad, alpha=s)
          z = state["anchor"] - state["grad_sum"] / math.sqrt(self.k)
          if p.dim() > 1:  # (out, in, ...) in PyTorch: a group is one input channel / feature
            dims = [d for d in range(p.dim()) if d != 1]
            size = p.numel() // p.shape[1]
            tau = self.alpha / math.sqrt(self.k) * group["strength"] * math.sqrt(size)
            norm = z.pow(2).sum(dim=dims, keepdim=True).sqrt()
            z.mul_(torch.clamp(1 - tau / norm.clamp_min(1e-30), min=0))
          p.mul_(1 - group["momentum"]).add_(z, alpha=group["momentum"])

  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y.astype(np.int64))
  runners = {}
  for name in ("sgd", "rmda"):
    torch.manual_seed(0)
    net = LeNet5()
    opt = (
      torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9)
      if name == "sgd"
      else RMDA(net.parameters(), LR, MOMENTUM, STRENGTH)
    )

    def run(net=net, opt=opt):
      opt.zero_grad(set_to_none=True)
      loss = torch.nn.functional.cross_entropy(net(xt), yt)
      loss.backward()
      opt.step()
      return float(loss)  # the step's result reaches Python, as the JAX runner's does

    run()
    runners[f"torch {name}"] = (run, None, None)
  return runners


def convolution_thunks(compiled_text: str) -> set:
  """Names of the top-level instructions of a compiled HLO module that run a convolution."""
  bodies, current = {}, None
  for line in compiled_text.splitlines():
    if line and not line.startswith((" ", "}")) and "{" in line:
      current = line.split(" ")[0].lstrip("%")
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  convolving = {
    name
    for name, lines in bodies.items()
    if any(" convolution(" in body_line for body_line in lines)
  }
  names = set()
  for line in compiled_text.splitlines():
    line = line.strip()
    if " = " not in line:
      continue
    name = line.split(" = ")[0].lstrip("%")
    called = [c.lstrip("%") for c in line.split("calls=")[1:]]
    if " convolution(" in line or any(c.split(",")[0].split(" ")[0] in convolving for c in called):
      names.add(name)
  return names


def profile_split(fn, holder, args, repeats=5) -> dict:
  """Per step: ms in convolution thunks, in the others, and the whole step (one JAX profile)."""
  conv = convolution_thunks(fn.lower(holder["p"], holder["s"], *args).compile().as_text())
  directory = tempfile.mkdtemp(prefix="train_step_trace_")
  with jax.profiler.trace(directory, create_perfetto_trace=True):
    for _ in range(repeats):
      holder["p"], holder["s"], loss = fn(holder["p"], holder["s"], *args)
      _harness.block((holder["p"], loss))
  files = glob.glob(os.path.join(directory, "**", "*.trace.json.gz"), recursive=True)
  if not files:
    return {}
  events = json.load(gzip.open(files[0]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  totals = collections.Counter()
  for e in events:
    if e.get("ph") != "X":
      continue
    name = e.get("name", "")
    if name == "ThunkExecutor::Execute (wait for completion)":
      totals["step"] += e.get("dur", 0)
    elif name in conv:
      totals["convolution"] += e.get("dur", 0)
    elif "Thunk" not in name and "$" not in name and not name.startswith(("Pjit", "Common", "jit")):
      totals["other thunks"] += e.get("dur", 0)
  # thunks run concurrently on the two threads: their times add up to more than the step's
  return {k: v / repeats / 1e3 for k, v in totals.items()}


def _with_sgd(name: str) -> str:
  """``"jax ramda app"`` -> ``"jax sgd app"``: the same framework and variant with SGD."""
  framework, _, *variant = name.split(" ")
  return " ".join([framework, "sgd", *variant])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--rounds", type=int, default=25)
  parser.add_argument("--steps", type=int, default=10, help="steps per timed round")
  parser.add_argument("--skip-flags", action="store_true", help="skip the XLA flag settings")
  parser.add_argument(
    "--model",
    choices=sorted(MODELS),
    default="lenet5",
    help="vgg: the app's small VGG on 32x32x3 inputs, JAX rows only",
  )
  parser.add_argument(
    "--jax-only", action="store_true", help=argparse.SUPPRESS
  )  # a flag setting's subprocess
  args = parser.parse_args()

  x, y = batch(shape=MODELS[args.model][1])
  jax_side, jargs = jax_runners(x, y, args.model)
  contestants = dict(jax_side)
  if not args.jax_only and args.model == "lenet5":
    contestants.update(torch_runners(x, y, threads=os.cpu_count() or 1))

  def repeat(run):
    return lambda: [run() for _ in range(args.steps)]

  medians = _harness.interleaved_medians(
    {k: repeat(v[0]) for k, v in contestants.items()}, args.rounds, args.steps
  )
  if args.jax_only:
    print(json.dumps({k: 1e3 * v for k, v in medians.items()}))
    return

  base = medians.get("torch sgd")
  rows = [
    {
      "step": name,
      "ms": 1e3 * t,
      "vs torch sgd": None if base is None else t / base,
      "vs same framework's sgd": t / medians[_with_sgd(name)],
    }
    for name, t in medians.items()
  ]
  _harness.print_table(
    rows,
    ["step", "ms", "vs torch sgd", "vs same framework's sgd"],
    f"{args.model} training step, batch {BATCH} (median of {args.rounds} interleaved rounds of "
    f"{args.steps} steps)",
  )

  split = {}
  for name in ("jax sgd donated", "jax rmda donated", "jax sgd app", "jax rmda app"):
    _, fn, holder = jax_side[name]
    split[name] = profile_split(fn, holder, jargs)
    if name.endswith(" app"):
      # XLA's own convolution thunks run their work on Eigen's thread pool, outside the thunk's
      # profile event (which covers the dispatch only): their time is not in the profile.
      split[name].pop("convolution", None)
  _harness.print_table(
    [{"contestant": k, **v} for k, v in split.items()],
    ["contestant", "step", "convolution", "other thunks"],
    "where a JAX step's time goes (ms per step, one profile; thunks overlap on the threads; "
    "'-': XLA's convolutions, whose work the profile does not see)",
  )

  flags = {}
  if not args.skip_flags:
    for label, extra in SETTINGS.items():
      env = dict(os.environ)
      for key, value in extra.items():
        env[key] = (env.get(key, "") + " " + value).strip() if key == "XLA_FLAGS" else value
      out = subprocess.run(
        [
          sys.executable,
          __file__,
          "--jax-only",
          "--rounds",
          str(max(args.rounds // 2, 5)),
          "--steps",
          str(args.steps),
          "--model",
          args.model,
        ],
        env=env,
        capture_output=True,
        text=True,
      )
      try:
        flags[label] = json.loads(out.stdout.strip().splitlines()[-1])
      except (IndexError, json.JSONDecodeError):
        flags[label] = {"error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    _harness.print_table(
      [{"setting": f"{label}: {SETTINGS[label]}", **v} for label, v in flags.items()],
      ["setting", *jax_side],
      "JAX step ms under XLA:CPU flags and JAX settings (separate processes)",
    )

  _harness.write_json(
    "train_step" if args.model == "lenet5" else f"train_step_{args.model}",
    {
      "args": vars(args),
      "batch": BATCH,
      "ms": {k: 1e3 * v for k, v in medians.items()},
      "rows": rows,
      "profile_ms": split,
      "xla_flags_ms": flags,
    },
  )


if __name__ == "__main__":
  main()
