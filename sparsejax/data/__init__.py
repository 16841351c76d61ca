"""Data: loaders for real datasets, generated datasets, and batching/sharding.

- `sparsejax.data.loaders`: `load(name, split)` returns `(x, y)` numpy arrays
  (images float32 (N, H, W, C) in [0, 1], tabular float32 (N, D), labels int32),
  from an explicit directory, offline packages, or tensorflow-datasets (never
  downloading unless asked); `load_celeb_a_64` for the DCGAN experiments.
- `sparsejax.data.generators`: Mackey-Glass series, shaky/regular handwritten
  curves, small tabular sets (all generated, no download).
- `sparsejax.data.batching`: deterministic epoch batches (a resumed run sees the
  same batches), padding with example weights, pmap sharding, finiteness checks.

Everything is re-exported here (`sparsejax.data.load`, `sparsejax.data.iterate`, ...).
"""

from sparsejax.data.batching import check_finite, epoch_batches, iterate, pad_batch, shard
from sparsejax.data.generators import (
    breast_cancer,
    high_dim_small_sample,
    mackey_glass,
    mackey_glass_series,
    shaky_curves,
)
from sparsejax.data.loaders import (
    CELEB_A_CROP,
    CURVES_SPLITS,
    DATASETS,
    DEBIAN_FASHION_MNIST,
    INSTALL_HINTS,
    PENDIGITS_TRAIN_SIZE,
    SDD_TRAIN_FRACTION,
    SOURCES,
    SPLIT_SEED,
    SPLITS,
    TFDS_NAMES,
    DataNotFoundError,
    center_crop_resize,
    load,
    load_celeb_a_64,
    read_idx,
)

__all__ = [
    "load", "load_celeb_a_64", "center_crop_resize", "read_idx", "DataNotFoundError", "DATASETS", "SOURCES",
    "SPLITS", "TFDS_NAMES", "INSTALL_HINTS", "DEBIAN_FASHION_MNIST", "PENDIGITS_TRAIN_SIZE", "SPLIT_SEED",
    "SDD_TRAIN_FRACTION", "CURVES_SPLITS", "CELEB_A_CROP",
    "epoch_batches", "pad_batch", "shard", "check_finite", "iterate",
    "mackey_glass_series", "mackey_glass", "shaky_curves", "high_dim_small_sample", "breast_cancer",
]
