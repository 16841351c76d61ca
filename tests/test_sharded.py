"""The sharded training path (`parallelism="sharded"`: one jit program over a device Mesh) against pmap
(checkpoint resume also for `parallelism="fsdp"`).

conftest gives 2 fake CPU devices (float64: the module is marked so). Every case trains the same run both ways
and compares the final parameters: the per-replica arithmetic and the collectives are
the same, so they agree to float rounding (here exactly, or to 1e-12).
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import activity, controller, data, gan, pruning, runloop, rvsm, selection, train, transforms
from sparsejax.models import MLP, dcgan

pytestmark = [pytest.mark.integration,  # the integration tier: pytest -m integration (see README)
              pytest.mark.float64]  # equalities to 1e-10..1e-12

LR = 0.05


class _BatchNormNet(nn.Module):
  """A user's linen model with BatchNorm (batch statistics averaged over the replicas)."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = x.reshape((x.shape[0], -1))
    x = nn.Dense(32)(x)
    x = nn.BatchNorm(use_running_average=not train, axis_name="batch")(x)
    return nn.Dense(10)(nn.relu(x))


def _digits(n=512):
  (x, y), test = data.load("digits", "train"), data.load("digits", "test")
  return (x[:n], y[:n]), (test[0][:200], test[1][:200])


def _mean_activation_penalty(params, intermediates):
  return 1e-3 * jnp.sum(jnp.sqrt(jnp.mean(jnp.abs(intermediates["activation_0"][0]), axis=0) + 1e-8))


def _case(name, steps):
  sgd = optax.sgd(LR, momentum=0.9)
  if name == "integrated_tl1":   # group shrinkage over a kernel's rows, then TL1
    return MLP((32, 10)), optax.chain(sgd, transforms.integrated_tl1(2e-3, LR, a=0.05)), None
  if name == "rvsm":
    return MLP((32, 10)), optax.chain(rvsm.rvsm("l0", 1e-4, 1.0), sgd), None   # penalised gradient, then SGD
  if name == "nnz_controller":   # its global statistic: the exact k-th magnitude over all kernels
    return MLP((32, 10)), optax.chain(sgd, controller.nnz_controller("l1", 400, LR, total_steps=steps)), None
  if name == "gmp":
    return MLP((32, 10)), optax.chain(sgd, pruning.gradual_magnitude_pruning(0.9, 0, steps // 2, 4)), None
  if name == "activity_penalty":
    return MLP((32, 10)), sgd, _mean_activation_penalty
  if name == "batch_norm":
    return _BatchNormNet(), sgd, None
  raise ValueError(name)


@pytest.mark.parametrize("name", ["integrated_tl1", "rvsm", "nnz_controller", "gmp", "activity_penalty",
                                  "batch_norm"])
def test_sharded_equals_pmap(tmp_path, name):
  assert jax.local_device_count() == 2
  train_xy, test_xy = _digits()
  epochs, batch = 2, 64
  steps = pruning.schedule_total_steps(epochs, len(train_xy[0]), batch)
  results = {}
  for parallelism in ("pmap", "sharded"):
    model, tx, penalty = _case(name, steps)
    config = train.TrainConfig(epochs=epochs, batch_size=batch, eval_batch_size=90, progress=False,
                               parallelism=parallelism, checkpoint=False)
    results[parallelism] = train.fit(model, tx, train_xy, test_xy, config, str(tmp_path / parallelism),
                                     penalty_fn=penalty, report_fn=lambda p: {})
  pmap, sharded = results["pmap"], results["sharded"]
  for a, b in zip(jax.tree.leaves(pmap.state), jax.tree.leaves(sharded.state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-12, rtol=0)
  assert [r["eval_accuracy"] for r in pmap.history] == [r["eval_accuracy"] for r in sharded.history]
  assert [r["train_loss"] for r in pmap.history] == pytest.approx([r["train_loss"] for r in sharded.history],
                                                                  abs=1e-12)
  kernels = selection.weight_leaves(sharded.state.params)
  if name in ("integrated_tl1", "nnz_controller", "gmp"):
    assert sum(int(np.sum(np.asarray(k) == 0)) for k in kernels) > 0   # the penalty acted
  if name == "nnz_controller":
    assert selection.count_nonzero(sharded.state.params) == 400
  if name == "batch_norm":
    assert sharded.state.model_state["batch_stats"]


@pytest.mark.parametrize("parallelism", ["sharded", "fsdp"])
def test_sharded_checkpoint_resume_is_bit_identical(tmp_path, parallelism):
  train_xy, test_xy = _digits()
  model = MLP((32, 10))

  def tx():
    return optax.chain(optax.sgd(LR, momentum=0.9), transforms.l1(1e-3, LR))

  config = train.TrainConfig(epochs=3, batch_size=64, progress=False, parallelism=parallelism, checkpoint_every_steps=5)
  full = train.fit(model, tx(), train_xy, test_xy, config, str(tmp_path / "full"), report_fn=lambda p: {})
  workdir = str(tmp_path / "resumed")
  first = train.TrainConfig(epochs=2, batch_size=64, progress=False, parallelism=parallelism, checkpoint_every_steps=5)
  train.fit(model, tx(), train_xy, test_xy, first, workdir, report_fn=lambda p: {})
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "16"))
  resumed = train.fit(model, tx(), train_xy, test_xy, config, workdir, resume=True, report_fn=lambda p: {})
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert [r["step"] for r in resumed.history] == [8, 16, 24]


def _gan_images_and_penalty():
  """64 digits padded to 28x28 in [0, 1], and a channel-pooled l_half activity penalty."""
  images = np.asarray(data.load("digits", "train")[0][:64], np.float32)
  images = np.pad(images, ((0, 0), (10, 10), (10, 10), (0, 0)))
  penalty = activity.from_mean_activations(lambda k: 0.1 * activity.l_half_sum(k, eps=1e-8), pool="channel",
                                           axis_name="batch")
  return images / float(images.max()), penalty


def test_sharded_gan_equals_pmap(tmp_path):
  images, penalty = _gan_images_and_penalty()
  results = {}
  for parallelism in ("pmap", "sharded"):
    g, d = dcgan.dcgan_28(width=8, axis_name="batch")
    config = gan.GANConfig(epochs=2, batch_size=32, latent_dim=8, progress=False, checkpoint=False,
                           parallelism=parallelism)
    results[parallelism] = gan.fit_gan(g, d, optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5), images, config,
                                       str(tmp_path / parallelism), d_penalty=penalty, g_penalty=penalty)
  for a, b in zip(jax.tree.leaves(results["pmap"].state), jax.tree.leaves(results["sharded"].state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-10, rtol=0)


def test_parallelism_is_validated(tmp_path):
  train_xy, test_xy = _digits()
  with pytest.raises(ValueError, match=r"TrainConfig.parallelism must be one of \('pmap', 'sharded', 'fsdp'\); "
                                       r"got 'zero3'"):
    train.fit(MLP((8, 10)), optax.sgd(0.1), train_xy, test_xy,
              train.TrainConfig(epochs=1, parallelism="zero3", progress=False), str(tmp_path))
  with pytest.raises(ValueError, match=r"GANConfig.parallelism must be one of"):
    gan.fit_gan(*dcgan.dcgan_28(width=8), optax.adam(1e-3), optax.adam(1e-3), np.zeros((64, 28, 28, 1), np.float32),
                gan.GANConfig(epochs=1, parallelism="jit"), str(tmp_path / "gan"))
  with pytest.raises(ValueError, match=r"parallelism must be one of"):
    runloop.DataParallel(jax.devices(), "sharding")


def test_sharded_step_survives_many_steps_on_fake_cpu_devices():
  """The trap: async dispatch of collective programs over fake CPU devices deadlocks (see DataParallel)."""
  placement = runloop.DataParallel(jax.devices(), "sharded")

  def step(state, x):
    total = jax.lax.psum(jnp.sum(x), runloop.AXIS)
    return {"w": state["w"] + total}, {"total": total}

  run = placement.step(step, donate_state=True)
  state = placement.put_state({"w": np.zeros(3)})
  batch = placement.put_batch(np.ones((8, 3)))
  for _ in range(3000):
    state, metrics = run(state, *batch)
  np.testing.assert_array_equal(placement.host(state)["w"], 3000 * 24.0)
  assert runloop.first_value(metrics["total"]) == 24.0
