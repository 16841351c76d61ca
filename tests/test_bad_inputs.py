"""Bad inputs that used to give an obscure error or none: each now names the argument and what is allowed."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import gan, penalties, prox, runloop, selection, train, transforms
from sparsejax.models import MLP, dcgan


@pytest.mark.parametrize("name", ["l1", "scad", "tl1", "group_lasso", "sparse_group_lasso", "exclusive"])
def test_tau_none_names_tau(name):
  with pytest.raises(ValueError, match="tau must be a number >= 0.*got tau=None"):
    getattr(prox, name)(jnp.ones((3, 3)), None)


@pytest.mark.parametrize("axis", [1.0, "1", None, object()])
def test_group_axis_of_the_wrong_type_names_axis(axis):
  with pytest.raises(ValueError, match="axis"):
    prox.group_lasso(jnp.ones((3, 3)), 0.1, axis=axis)


def test_numpy_integer_axes_are_accepted():
  np.testing.assert_array_equal(prox.group_lasso(jnp.ones((3, 3)), 0.1, axis=np.int64(1)),
                                prox.group_lasso(jnp.ones((3, 3)), 0.1, axis=1))


@pytest.mark.parametrize("value", ["no", 1, None])
def test_scale_by_group_size_must_be_a_bool(value):
  with pytest.raises(ValueError, match="scale_by_group_size must be True or False"):
    prox.group_lasso(jnp.ones((3, 3)), 0.1, scale_by_group_size=value)
  with pytest.raises(ValueError, match="scale_by_group_size must be True or False"):
    penalties.group_lasso(jnp.ones((3, 3)), scale_by_group_size=value)


def test_integer_weights_are_refused_by_a_proximal_step():
  tx = transforms.l1(0.1, 0.1)
  params = {"k": jnp.ones((3, 3), jnp.int32)}
  with pytest.raises(ValueError, match="needs floating-point weights.*int32"):
    tx.update(params, tx.init(params), params)


@pytest.mark.parametrize("workdir", [None, "", 3])
def test_fit_workdir_must_be_a_path(workdir):
  x, y = np.ones((8, 4), np.float32), np.zeros(8, np.int32)
  with pytest.raises(ValueError, match="workdir must be a directory path"):
    train.fit(MLP((3,)), optax.sgd(0.1), (x, y), None, train.TrainConfig(epochs=1, batch_size=4), workdir)


def test_workdir_path_is_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert runloop.workdir_path("run") == str(tmp_path / "run")


def test_regression_with_one_target_per_example_and_many_outputs_is_refused(tmp_path):
  x, y = np.ones((8, 4), np.float32), np.arange(8) % 3
  config = train.TrainConfig(epochs=1, batch_size=4, task="regression", progress=False)
  with pytest.raises(ValueError, match=r"one value per model output \(10: shape \(N, 10\)\).*task='classification'"):
    train.fit(MLP((10,)), optax.sgd(0.1), (x, y), None, config, str(tmp_path))


def test_regression_with_matching_targets_still_trains(tmp_path):
  x = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
  config = train.TrainConfig(epochs=1, batch_size=4, task="regression", progress=False, checkpoint=False)
  result = train.fit(MLP((2,)), optax.sgd(0.01), (x, x[:, :2]), None, config, str(tmp_path))
  assert np.isfinite(result.history[-1]["train_loss"])


def test_gan_generator_of_another_image_size_is_refused_before_training(tmp_path):
  g, d = dcgan.dcgan_28(channels=1, width=8, axis_name="batch")
  images = np.random.default_rng(0).random((8, 32, 32, 1), dtype=np.float32)
  with pytest.raises(ValueError, match=r"generator makes images of shape \(28, 28, 1\).*\(32, 32, 1\)"):
    gan.fit_gan(g, d, optax.adam(1e-3), optax.adam(1e-3), images, gan.GANConfig(epochs=1, batch_size=4),
                str(tmp_path))


def test_history_path_below_a_regular_file_names_history_path(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")

  def train_fn(strength):
    raise AssertionError("no training may start")
  with pytest.raises(ValueError, match="history_path .* cannot be created"):
    selection.select_strength(train_fn, target_nnz=5, initial_strengths=(1e-3, 1e-2),
                              history_path=str(blocker / "history.jsonl"))
