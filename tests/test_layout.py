"""The package layout: every module imports on its own (no import cycle), and the
library never imports the application (:mod:`rmda_jax.app`)."""

import concurrent.futures
import pkgutil
import subprocess
import sys

import rmda_jax

MODULES = sorted(m.name for m in pkgutil.walk_packages(rmda_jax.__path__, "rmda_jax.")
                 if m.name != "rmda_jax.__main__")
PROBE = """
import sys, importlib
importlib.import_module({name!r})
print(",".join(sorted(m for m in sys.modules if m == "rmda_jax.app" or m.startswith("rmda_jax.app."))))
"""


def _import_alone(name):
  proc = subprocess.run([sys.executable, "-c", PROBE.format(name=name)], capture_output=True, text=True,
                        timeout=300)
  return name, proc.returncode, proc.stdout.strip(), proc.stderr[-2000:]


def test_every_module_imports_alone_and_the_library_never_imports_the_application():
  assert "rmda_jax.app.cli" in MODULES and "rmda_jax.regularizers" in MODULES
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(_import_alone, MODULES))
  failed = [(name, err) for name, code, _, err in results if code != 0]
  assert not failed, failed
  library = [name for name in MODULES if not name.startswith("rmda_jax.app")]
  leaks = {name: app for name, _, app, _ in results if name in library and app}
  assert not leaks, f"library modules that import the application: {leaks}"
  # the application does load itself (the probe sees it)
  assert dict((name, app) for name, _, app, _ in results)["rmda_jax.app.cli"]
