"""Sphinx configuration of the API reference:
``python -m sphinx -W -b html docs docs/_build/html``."""

import importlib.metadata
import inspect
import os
import pkgutil

import rmda_jax

project = "rmda_jax"
author = "rmda_jax developers"
release = importlib.metadata.version("rmda-jax")
version = release

extensions = [
  "sphinx.ext.autodoc",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx.ext.viewcode",
]

# Google-style docstrings (Args:, Returns:, Raises:, Example:), as optax and flax write them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# Attributes as a field list: a NamedTuple's fields are documented once, by autodoc.
napoleon_use_ivar = True

# Each object is documented in the module that defines it; a module's re-exports are not
# documented again there (the public surface page lists them, see below).
autodoc_default_options = {"members": True, "show-inheritance": True, "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_inherit_docstrings = True
add_module_names = False

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []


# --------------------------------------------------------------------------- the API pages
# One page per layer, written at every build from the package itself, so that
# a new module is in the reference the moment it exists.

LAYERS = (
  ("rmda_jax.core", "core: numerics, checks, trees, groups"),
  ("rmda_jax.prox", "prox: regularizers and subproblem solvers"),
  ("rmda_jax.optim", "optim: optimizers and building blocks"),
  ("rmda_jax.structure", "structure: discovery and metrics"),
  ("rmda_jax.compaction", "compaction: smaller models"),
  ("rmda_jax.cpu", "cpu: compiler options, memory, timing"),
  ("rmda_jax.testing", "testing"),
  ("rmda_jax.app", "app: the rmda-jax command"),
)


def _modules(package: str) -> list:
  module = __import__(package, fromlist=["_"])
  if not hasattr(module, "__path__"):
    return []
  return sorted(
    m.name
    for m in pkgutil.walk_packages(module.__path__, package + ".")
    if not m.name.endswith("__main__")
  )


def _write_api_pages(root: str) -> None:
  os.makedirs(root, exist_ok=True)
  index = [
    "API reference",
    "=============",
    "",
    ".. toctree::",
    "   :maxdepth: 2",
    "",
    "   rmda_jax",
  ]
  # the public surface, as ``rmda_jax.__all__`` lists it; each object is indexed where it is defined
  surface = [name for name in rmda_jax.__all__ if not inspect.ismodule(getattr(rmda_jax, name))]
  top = [
    "rmda_jax",
    "========",
    "",
    ".. automodule:: rmda_jax",
    "   :no-index:",
    "   :imported-members:",
    f"   :members: {', '.join(surface)}",
    "",
  ]
  pages = {"rmda_jax": "\n".join(top)}
  for package, title in LAYERS:
    name = package.rsplit(".", 1)[-1]
    index.append(f"   {name}")
    lines = [title, "=" * len(title), "", f".. automodule:: {package}", "   :no-members:", ""]
    for module in _modules(package):
      is_package = hasattr(__import__(module, fromlist=["_"]), "__path__")
      lines += [module, "-" * len(module), "", f".. automodule:: {module}"]
      lines += ["   :no-members:", ""] if is_package else [""]
    pages[name] = "\n".join(lines)
  pages["index"] = "\n".join(index) + "\n"
  for name, text in pages.items():
    path = os.path.join(root, f"{name}.rst")
    old = open(path).read() if os.path.exists(path) else None
    if old != text:  # unchanged pages keep their time stamps, so Sphinx does not rebuild them
      with open(path, "w") as f:
        f.write(text)


_write_api_pages(os.path.join(os.path.dirname(os.path.abspath(__file__)), "api"))
