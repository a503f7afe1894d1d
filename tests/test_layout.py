"""The package layout: layers import one way, every module imports on its own, the library never
imports the application (:mod:`rmda_jax.app`), and the public surface is what ``__all__`` says."""

import ast
import concurrent.futures
import dataclasses
import importlib
import inspect
import pathlib
import pkgutil
import subprocess
import sys

import rmda_jax

PACKAGE = pathlib.Path(rmda_jax.__file__).parent
MODULES = sorted(
  m.name
  for m in pkgutil.walk_packages(rmda_jax.__path__, "rmda_jax.")
  if m.name != "rmda_jax.__main__"
)

# What each layer may import besides itself: app -> compaction -> structure -> optim / prox -> core;
# cpu (compiler options, memory, timing) and testing stand beside them and import nothing of the
# package.
ALLOWED = {
  "core": set(),
  "cpu": set(),
  "testing": set(),
  "prox": {"core"},
  "optim": {"prox", "core"},
  "structure": {"prox", "core"},
  "compaction": {"structure", "prox", "core", "cpu"},
}
PROBE = """
import sys, importlib
importlib.import_module({name!r})
print(",".join(sorted(
    m for m in sys.modules if m == "rmda_jax.app" or m.startswith("rmda_jax.app.")
)))
"""


def _layer(module: str) -> str:
  return module.split(".")[1]


def _imported_layers(path: pathlib.Path, module: str) -> set:
  """The layers of the package a source file imports (at its top, in functions, under
  TYPE_CHECKING)."""
  package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
      else:
        target = node.module or ""
      names = (
        [target] + [f"{target}.{alias.name}" for alias in node.names]
        if target == "rmda_jax"
        else [target]
      )
    for name in names:
      parts = name.split(".")
      if parts[0] == "rmda_jax" and len(parts) > 1:
        found.add(parts[1])
  return found


def test_layers_import_one_way():
  wrong = {}
  for module in MODULES:
    if module.startswith("rmda_jax.app"):
      continue
    path = PACKAGE.joinpath(*module.split(".")[1:])
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    layer = _layer(module)
    extra = _imported_layers(path, module) - ALLOWED[layer] - {layer}
    if extra:
      wrong[module] = sorted(extra)
  assert not wrong, f"modules that import a layer above them (or beside them): {wrong}"


def _import_alone(name):
  proc = subprocess.run(
    [sys.executable, "-c", PROBE.format(name=name)], capture_output=True, text=True, timeout=300
  )
  return name, proc.returncode, proc.stdout.strip(), proc.stderr[-2000:]


def test_every_module_imports_alone_and_the_library_never_imports_the_application():
  assert "rmda_jax.app.cli" in MODULES and "rmda_jax.prox.regularizer" in MODULES
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(_import_alone, MODULES))
  failed = [(name, err) for name, code, _, err in results if code != 0]
  assert not failed, failed
  library = [name for name in MODULES if not name.startswith("rmda_jax.app")]
  leaks = {name: app for name, _, app, _ in results if name in library and app}
  assert not leaks, f"library modules that import the application: {leaks}"
  # the application does load itself (the probe sees it)
  assert dict((name, app) for name, _, app, _ in results)["rmda_jax.app.cli"]


def test_every_module_is_reachable_from_its_package_and_no_private_module_exists():
  private = [m for m in MODULES if any(part.startswith("_") for part in m.split(".")[1:])]
  assert not private, private
  for module in MODULES:
    if module.startswith("rmda_jax.app"):
      importlib.import_module(module)  # the application's modules are imported where they are used
    parent, _, child = module.rpartition(".")
    assert getattr(sys.modules[parent], child, None) is sys.modules[module], (
      f"{module} is not the attribute {child} of {parent} "
      "(a name there hides it, or it is not imported)"
    )


def test_the_public_surface_is_all_and_every_name_in_it_exists():
  assert len(set(rmda_jax.__all__)) == len(rmda_jax.__all__)
  for name in rmda_jax.__all__:
    assert hasattr(rmda_jax, name), name
  public = {n for n in vars(rmda_jax) if not n.startswith("_")}
  assert public - set(rmda_jax.__all__) <= {"app"}, public - set(rmda_jax.__all__)
  for package in ("core", "prox", "optim", "structure", "compaction", "cpu"):
    module = getattr(rmda_jax, package)
    for name in module.__all__:
      assert hasattr(module, name), f"rmda_jax.{package}.{name}"


def _public_functions():
  """``(name, function)`` of every public function and method defined in the package."""
  for module_name in ["rmda_jax", *MODULES]:
    module = importlib.import_module(module_name)
    for attr, obj in vars(module).items():
      if attr.startswith("_") or getattr(obj, "__module__", None) != module_name:
        continue
      if inspect.isfunction(obj):
        yield f"{module_name}.{attr}", obj
      elif inspect.isclass(obj):
        for member, value in vars(obj).items():
          if member.startswith("_") and member not in ("__init__", "__call__"):
            continue
          fn = value.fget if isinstance(value, property) else getattr(value, "__func__", value)
          generated = dataclasses.is_dataclass(obj) and member == "__init__"
          if (
            inspect.isfunction(fn)
            and fn.__qualname__.startswith(obj.__qualname__)
            and not generated
          ):
            yield f"{module_name}.{attr}.{member}", fn


def test_every_public_function_and_method_is_annotated():
  missing = {}
  for name, fn in _public_functions():
    signature = inspect.signature(fn)
    absent = [
      p.name
      for p in signature.parameters.values()
      if p.name not in ("self", "cls") and p.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty and fn.__name__ != "__init__":
      absent.append("return")
    if absent:
      missing[name] = absent
  assert not missing, missing
