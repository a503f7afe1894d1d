"""Optional dependencies: imported where they are used, named with the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(module: str, purpose: str, extra: str = "examples") -> ModuleType:
  """Import an optional dependency.

  Args:
    module: the module to import (``"orbax.checkpoint"``).
    purpose: what needs it, for the message (``"checkpointing"``).
    extra: the extra of ``rmda-jax`` that installs it.

  Raises:
    ImportError: the module is not installed; the message says
      ``pip install "rmda-jax[extra]"``.

  Example:
    >>> from rmda_jax.core.extras import optional_import
    >>> optional_import("json", "reading a config").__name__
    'json'
  """
  try:
    return importlib.import_module(module)
  except ImportError as err:
    package = module.split(".")[0].replace("_", "-")
    raise ImportError(f'{purpose} needs {package}: pip install "rmda-jax[{extra}]"') from err
