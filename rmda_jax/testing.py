"""Test helpers for users and for this package's own tests."""

from __future__ import annotations

import re
from typing import Any

HOST_PATTERNS = (
  r"custom_call_target=\"[^\"]*callback[^\"]*\"",
  r"custom_call_target=\"[^\"]*[Hh]ost[^\"]*\"",
  r"\boutfeed\(",
  r"\binfeed\(",
  r"\bsend\(",
  r"\brecv\(",
  r"is_host_transfer=true",
)


def host_transfers(compiled_text: str) -> list[str]:
  """Lines of compiled HLO that call back to Python or move data to/from the host."""
  found = []
  for line in compiled_text.splitlines():
    if any(re.search(p, line) for p in HOST_PATTERNS):
      found.append(line.strip())
  return found


def assert_no_host_transfers(jitted: Any, *args: Any, **kwargs: Any) -> None:
  """Fail if ``jitted(*args)`` compiles to HLO with host callbacks or transfers.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from rmda_jax.testing import assert_no_host_transfers
    >>> assert_no_host_transfers(jax.jit(lambda x: x + 1), jnp.ones(3))
  """
  text = jitted.lower(*args, **kwargs).compile().as_text()
  found = host_transfers(text)
  if found:
    raise AssertionError(
      "host callbacks/transfers in the compiled step:\n  " + "\n  ".join(found[:10])
    )
