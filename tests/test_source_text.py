"""Docstrings and comments say what the code does and why: no measurements, no history.

Figures belong in benchmarks/README.md, where the command that reproduces them stands beside
them; the story of how the code got here belongs in the commit messages.
"""

import ast
import io
import pathlib
import re
import tokenize

import rmda_jax

PACKAGE = pathlib.Path(rmda_jax.__file__).parent

MEASUREMENT = re.compile(
  r"\b\d+(\.\d+)?\s?(ms|us|µs|ns)\b"  # a time
  r"|\b\d+(\.\d+)?\s?[KMG]B/s\b"  # a bandwidth
  r"|\b\d+(\.\d+)?x\b"  # a ratio (2.1x; not 3x3, not 0x54A2)
  r"|\b\d+(\.\d+)?\s?->\s?\d+(\.\d+)?\s?(ms|s|MB|GB|%|x)\b"  # a before -> after figure
  r"|\bs a step\b"
)
HISTORY = re.compile(
  r"\b(used to|in an earlier version|an older version|before the change|until recently|"
  r"of old|no longer|was changed|we changed)\b",
  re.IGNORECASE,
)


def _texts(path: pathlib.Path):
  """(line, text) of every docstring and comment of a source file."""
  source = path.read_text()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=False)
      if doc:
        yield node.body[0].lineno, doc
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      yield token.start[0], token.string


def test_no_docstring_or_comment_holds_a_measurement_or_history():
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    for line, text in _texts(path):
      for pattern in (MEASUREMENT, HISTORY):
        match = pattern.search(text)
        if match:
          found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {match.group(0)!r}")
  assert not found, "\n".join(found)


def test_the_patterns_catch_what_they_are_for():
  for text in (
    "takes 14.3 ms a step",
    "2.1x faster than optax",
    "118 -> 87 ms",
    "at 1.5 GB/s",
    "the names of old",
    "it used to store V_k",
  ):
    assert MEASUREMENT.search(text) or HISTORY.search(text), text
  for text in ("a 32 MiB threshold", "the previous point is the warm start", "4M entries, 16 MB"):
    assert not (MEASUREMENT.search(text) or HISTORY.search(text)), text
