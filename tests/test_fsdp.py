"""`parallelism="fsdp"`: parameters and optimizer state split over devices, one global-view jit program.

conftest gives 2 fake CPU devices. The fsdp step is one replica on the whole global
batch (XLA partitions it), so every case is compared with the one-device run of the
same global batch: they differ only in float summation order. Checkpoint resume is
tested in tests/test_sharded.py for both jit placements.
"""


import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from sparsejax import controller, gan, masking, pruning, runloop, rvsm, selection, train, transforms
from sparsejax.models import MLP, dcgan
from tests.test_sharded import _digits, _gan_images_and_penalty, _mean_activation_penalty

pytestmark = pytest.mark.integration  # the integration tier: pytest -m integration (see README)

LR = 0.05
HIDDEN = 128   # the first kernel is (64, 128): split along its 128 columns, which each row group spans


class _BatchNormNet(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Dense(HIDDEN)(x.reshape((x.shape[0], -1)))
    x = nn.BatchNorm(use_running_average=not train, axis_name="batch")(x)
    return nn.Dense(10)(nn.relu(x))


def _case(name, steps):
  sgd = optax.sgd(LR, momentum=0.9)
  mlp = MLP((HIDDEN, 10))
  if name == "group_lasso":      # row groups of the (64, 128) kernel span its split axis
    return mlp, optax.chain(sgd, transforms.proximal("group_lasso", 3.0, LR, masking.weights_only)), None
  if name == "integrated_tl1":
    return mlp, optax.chain(sgd, transforms.integrated_tl1(2e-3, LR, a=0.05)), None
  if name == "rvsm":
    return mlp, optax.chain(rvsm.rvsm("l0", 1e-4, 1.0), sgd), None   # penalised gradient, then SGD
  if name == "nnz_controller":   # the exact global k-th magnitude over every kernel's shards
    return mlp, optax.chain(sgd, controller.nnz_controller("l1", 900, LR, total_steps=steps)), None
  if name == "gmp":
    return mlp, optax.chain(sgd, pruning.gradual_magnitude_pruning(0.9, 0, steps // 2, 4)), None
  if name == "activity_penalty":
    return mlp, sgd, _mean_activation_penalty
  if name == "batch_norm":
    return _BatchNormNet(), sgd, None
  raise ValueError(name)


@pytest.mark.parametrize("name", ["group_lasso", "integrated_tl1", "rvsm", "nnz_controller", "gmp",
                                  "activity_penalty", "batch_norm"])
def test_fsdp_equals_the_one_device_run(tmp_path, name):
  train_xy, test_xy = _digits()
  epochs, batch = 2, 64
  steps = pruning.schedule_total_steps(epochs, len(train_xy[0]), batch)
  results = {}
  for parallelism, devices in (("pmap", 1), ("fsdp", 2)):
    model, tx, penalty = _case(name, steps)
    config = train.TrainConfig(epochs=epochs, batch_size=batch, eval_batch_size=100, progress=False,
                               parallelism=parallelism, num_devices=devices, checkpoint=False)
    results[parallelism] = train.fit(model, tx, train_xy, test_xy, config, str(tmp_path / parallelism),
                                     penalty_fn=penalty, report_fn=lambda p: {})
  one, fsdp = results["pmap"], results["fsdp"]
  for a, b in zip(jax.tree.leaves(one.state), jax.tree.leaves(fsdp.state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)
  assert [r["train_loss"] for r in one.history] == pytest.approx([r["train_loss"] for r in fsdp.history], abs=1e-5)
  kernels = selection.weight_leaves(fsdp.state.params)
  if name in ("group_lasso", "integrated_tl1", "nnz_controller", "gmp"):  # (rvsm: its sparse copy is in the state)
    zeros = [np.asarray(k) == 0 for k in kernels]
    assert sum(int(z.sum()) for z in zeros) > 0   # the penalty acted ...
    # ... with the same support as the one-device run
    assert all(np.array_equal(z, np.asarray(k) == 0) for z, k in zip(zeros, selection.weight_leaves(one.state.params)))
  if name == "group_lasso":
    assert np.any(np.all(np.asarray(kernels[0]) == 0, axis=1)), "whole row groups removed"
  if name == "nnz_controller":
    assert selection.count_nonzero(fsdp.state.params) == 900


def test_fsdp_splits_params_and_optimizer_state_and_keeps_them_split():
  placement = runloop.DataParallel(jax.devices()[:2], "fsdp")
  model = MLP((HIDDEN, 10))
  tx = optax.chain(optax.sgd(LR, momentum=0.9), transforms.l1(1e-3, LR))
  (x, y), _ = _digits(128)
  state = train.create_train_state(model, tx, x)
  step = placement.step(train.make_train_step(model, tx, num_devices=placement.replicas), donate_state=True)
  rstate = placement.put_state(state)
  for _ in range(3):
    rstate, _ = step(rstate, *placement.put_batch(x[:64], y[:64], np.ones(64, np.float32)))
  kernel = rstate.params["Dense_0"]["kernel"]
  trace = rstate.opt_state[0][0].trace["Dense_0"]["kernel"]  # sgd = chain(trace, scale)
  for leaf in (kernel, trace):
    assert leaf.shape == (64, HIDDEN)
    assert leaf.sharding.spec == jax.sharding.PartitionSpec(None, runloop.FSDP_AXIS)
    assert {s.data.shape for s in leaf.addressable_shards} == {(64, HIDDEN // 2)}, "each device holds half"
  bias = rstate.params["Dense_1"]["bias"]          # 10 entries: split in two halves of 5
  assert {s.data.shape for s in bias.addressable_shards} == {(5,)}
  assert rstate.step.sharding.is_fully_replicated
  assert placement.host(rstate).params["Dense_0"]["kernel"].shape == (64, HIDDEN)


def test_fsdp_spec_picks_the_largest_divisible_axis():
  spec = runloop.fsdp_spec
  P = jax.sharding.PartitionSpec
  assert spec((64, 128), 2) == P(None, "fsdp")
  assert spec((300, 100), 4) == P("fsdp", None)
  assert spec((3, 3, 1, 6), 4) == P(None, None, None, None)    # no axis divisible: replicated
  assert spec((), 2) == P()
  assert spec((64, 128), 1) == P(None, None)


def test_fsdp_gan_equals_the_one_device_run(tmp_path):
  images, penalty = _gan_images_and_penalty()
  results = {}
  for parallelism, devices in (("pmap", 1), ("fsdp", 2)):
    g, d = dcgan.dcgan_28(width=8, axis_name="batch")
    config = gan.GANConfig(epochs=2, batch_size=32, latent_dim=8, progress=False, checkpoint=False,
                           parallelism=parallelism, num_devices=devices)
    results[parallelism] = gan.fit_gan(g, d, optax.adam(2e-4, b1=0.5), optax.adam(2e-4, b1=0.5), images, config,
                                       str(tmp_path / parallelism), d_penalty=penalty, g_penalty=penalty)
  for a, b in zip(jax.tree.leaves(results["pmap"].state), jax.tree.leaves(results["fsdp"].state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=0)
  assert [r["d_loss"] for r in results["pmap"].history] == pytest.approx(
      [r["d_loss"] for r in results["fsdp"].history], abs=1e-5)


def test_fsdp_devices_is_validated(tmp_path):
  train_xy, test_xy = _digits()
  with pytest.raises(ValueError, match=r"fsdp_devices=3 must divide the 2 devices"):
    train.fit(MLP((8, 10)), optax.sgd(0.1), train_xy, test_xy,
              train.TrainConfig(epochs=1, parallelism="fsdp", fsdp_devices=3, progress=False), str(tmp_path))
  with pytest.raises(ValueError, match=r"TrainConfig.fsdp_devices must be an int >= 0"):
    train.fit(MLP((8, 10)), optax.sgd(0.1), train_xy, test_xy,
              train.TrainConfig(epochs=1, parallelism="fsdp", fsdp_devices=-1, progress=False), str(tmp_path / "b"))
