"""Bytes a compiled step moves as XLA scheduled it: per-thunk sizes times the thunks run.

A step's memory floor counts its inputs and outputs once each. What XLA:CPU
runs is a sequence of thunks (loop fusions, YNNPACK fusions, copies, the
bodies of while loops once per iteration), each reading its operands and
writing its result in full. This module reads every instruction's operand
and result sizes from the compiled module's text, counts the thunks that
one step executes from a ``jax.profiler`` trace, and adds them up: the
traffic of the schedule XLA chose, to set beside the floor and the time.

It is an estimate in two ways: a thunk that reads an operand partly (a
slice, a dynamic-update-slice) is counted as reading it whole, and one that
reads an operand twice is counted once.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax

_ITEM_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "bf16": 2,
  "f16": 2,
  "s16": 2,
  "u16": 2,
  "f32": 4,
  "s32": 4,
  "u32": 4,
  "f64": 8,
  "s64": 8,
  "u64": 8,
  "c64": 8,
  "c128": 16,
}
_ARRAY = re.compile(r"\b([a-z]+\d*)\[([\d,]*)\]")
_HEAD = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*")
_OPERAND = re.compile(r"%([\w.\-]+)")
# Instructions that move no data of their own (control flow runs its bodies' thunks).
_NO_TRAFFIC = {
  "while",
  "conditional",
  "call",
  "tuple",
  "get-tuple-element",
  "parameter",
  "constant",
  "bitcast",
  "after-all",
  "opt-barrier",
}


def _type_bytes(type_text: str) -> int:
  total = 0
  for dtype, dims in _ARRAY.findall(type_text):
    size = 1
    for d in filter(None, dims.split(",")):
      size *= int(d)
    total += size * _ITEM_BYTES.get(dtype, 4)
  return total


def _balanced(text: str, start: int) -> int:
  """Index just past the parenthesis group opening at ``text[start]``."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  return len(text)


def instruction_bytes(hlo_text: str) -> dict:
  """``{instruction name: bytes its thunk reads and writes}`` for every instruction of a module."""
  result_bytes, operands = {}, {}
  for line in hlo_text.splitlines():
    head = _HEAD.match(line)
    if not head:
      continue
    name, rest = head.group(1), line[head.end() :]
    if rest.startswith("("):
      end = _balanced(rest, 0)
      type_text, rest = rest[:end], rest[end:].lstrip()
    else:
      type_text, _, rest = rest.partition(" ")
    result_bytes[name] = _type_bytes(type_text)
    paren = rest.find("(")
    if rest[:paren] in _NO_TRAFFIC:
      continue
    operand_text = rest[paren : _balanced(rest, paren)] if paren >= 0 else ""
    operands[name] = list(dict.fromkeys(_OPERAND.findall(operand_text)))
  return {
    name: result_bytes[name] + sum(result_bytes.get(op, 0) for op in operands[name])
    for name in operands
  }


def executed_thunks(run) -> collections.Counter:
  """How many times each thunk ran during ``run()`` (which must block until done)."""
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      run()
    path = glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)[0]
    with gzip.open(path) as f:
      events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  return collections.Counter(e["name"] for e in events if e.get("ph") == "X" and "name" in e)


def traffic(hlo_text: str, run) -> int:
  """Bytes moved by the thunks of the module ``hlo_text`` that ran during ``run()``."""
  sizes = instruction_bytes(hlo_text)
  return sum(sizes[name] * n for name, n in executed_thunks(run).items() if name in sizes)
