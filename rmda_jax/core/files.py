"""Files written atomically and read back verified: SHA-256 manifests, JSON, OS errors.

A directory of files (a checkpoint step, a compact model) is committed by
writing a manifest of each file's SHA-256 once the files are complete, and
checked against it before it is read, so damage (a flipped byte, a truncated
or missing file) is found instead of read as numbers. A JSON file is
written to a temporary name, synced and renamed over the old one, so a
reader sees the old file or the new one, never a part.

Example:
  >>> import os, tempfile
  >>> from rmda_jax.core import files
  >>> root = tempfile.mkdtemp()
  >>> files.write_json(os.path.join(root, "a.json"), {"x": 1})
  >>> manifest = files.checksums(root)
  >>> files.first_mismatch(root, manifest) is None
  True
  >>> with open(os.path.join(root, "a.json"), "a") as f:
  ...   _ = f.write(" ")
  >>> files.first_mismatch(root, manifest)
  'a.json does not match its checksum'
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
from typing import Any

_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


def digest(path: str, algorithm: str = "sha256") -> str:
  """The hex digest (``hashlib`` ``algorithm``) of the file at ``path``, read in 1 MiB chunks."""
  found = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      found.update(chunk)
  return found.hexdigest()


def remove(path: str) -> None:
  """Delete the file, link or directory tree at ``path``, if there is one."""
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def checksums(root: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
  """SHA-256 of every file under ``root``, keyed by relative path (less those starting ``skip``)."""
  found = {}
  for folder, subfolders, names in os.walk(root):
    subfolders.sort()
    for name in sorted(names):
      path = os.path.join(folder, name)
      relative = os.path.relpath(path, root)
      if not (skip and relative.startswith(skip)):
        found[relative] = digest(path)
  return found


def first_mismatch(root: str, expected: dict[str, str]) -> str | None:
  """The first file under ``root`` missing or differing from ``expected``, in words; or None."""
  for relative, expected_digest in expected.items():
    path = os.path.join(root, relative)
    if not os.path.isfile(path):
      return f"{relative} is missing"
    if digest(path) != expected_digest:
      return f"{relative} does not match its checksum"
  return None


def write_json(path: str, content: Any) -> None:
  """Write ``content`` to ``path`` atomically (temporary file, fsync, rename).

  Raises:
    OSError: naming ``path``; the temporary file is removed and ``path`` is as it was.
  """
  tmp = f"{path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "w") as f:
      json.dump(content, f, indent=2)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as err:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise OSError(err.errno, err.strerror, path) from None


def as_os_error(err: BaseException, path: str) -> OSError:
  """``err``, raised while writing ``path`` with orbax, as an ``OSError`` with its errno.

  TensorStore (orbax's storage) reports a failed system call as a
  ``ValueError`` whose message ends with ``[os_error_code='28']``; that
  errno is kept (``EIO`` when there is none), so that a caller can tell a full
  disk from a read-only file system.

  Example:
    >>> from rmda_jax.core.files import as_os_error
    >>> err = as_os_error(ValueError("RESOURCE_EXHAUSTED: ... [os_error_code='28']"), "/ckpt/7")
    >>> err.errno, err.strerror, err.filename
    (28, 'No space left on device', '/ckpt/7')
  """
  code = err.errno if isinstance(err, OSError) else None
  if code is None:
    match = _OS_ERROR_CODE.search(str(err))
    code = int(match.group(1)) if match else errno.EIO
  return OSError(code, os.strerror(code), path)
