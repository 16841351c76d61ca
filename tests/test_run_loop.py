"""The one run loop (`runloop.run_epochs`) as a user's own trainer meets it: records, resume, non-finite, configs."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from sparsejax import data, gan, runloop, train

X = np.random.default_rng(0).normal(size=(96, 3)).astype(np.float32)
Y = X @ np.array([1.0, -2.0, 0.5], np.float32)


def _least_squares(config, lr=0.1):
  tx = optax.sgd(lr)

  def step(state, xb, yb):
    params, opt_state = state
    loss, grad = jax.value_and_grad(lambda w: jnp.mean((xb @ w - yb) ** 2))(params)
    updates, opt_state = tx.update(lax.pmean(grad, runloop.AXIS), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": lax.pmean(loss, runloop.AXIS)}

  hooks = runloop.LoopHooks(
      step=step,
      epoch_batches=lambda epoch: data.epoch_batches(len(X), config.batch_size, config.seed, epoch),
      load_batch=lambda idx: runloop.process_slice(X[idx], Y[idx]),
      summarize=runloop.mean_metrics,
      epoch_end=lambda state, epoch: {"epoch_seen": epoch})
  placement = runloop.DataParallel(runloop.data_parallel_devices(config.num_devices, config.batch_size),
                                   config.parallelism)
  params = jnp.zeros(3, jnp.float32)
  return hooks, placement, (params, tx.init(params))


def test_a_users_trainer_records_converges_and_resumes_exactly(tmp_path):
  config = runloop.LoopConfig(epochs=4, batch_size=16, log_every_steps=4, num_devices=1, progress=False)
  whole = runloop.run_epochs(config, tmp_path / "whole", *_least_squares(config), run_config={"trainer": "ls"})
  assert [r["epoch"] for r in whole.history] == [1, 2, 3, 4] and whole.history[-1]["epoch_seen"] == 4
  assert whole.history[-1]["loss"] < 1e-3 * whole.history[0]["loss"]
  np.testing.assert_allclose(whole.state[0], [1.0, -2.0, 0.5], atol=0.03)
  assert [r["step"] for r in whole.steps] == list(range(4, 25, 4))  # 6 steps an epoch, a record every 4
  assert len((tmp_path / "whole" / "steps.jsonl").read_text().splitlines()) == 6
  assert json.loads((tmp_path / "whole" / "history.json").read_text()) == whole.history

  half = dataclasses.replace(config, epochs=2)
  runloop.run_epochs(half, tmp_path / "split", *_least_squares(half), run_config={"trainer": "ls"})
  resumed = runloop.run_epochs(config, tmp_path / "split", *_least_squares(config), run_config={"trainer": "ls"},
                               resume=True)
  np.testing.assert_array_equal(resumed.state[0], whole.state[0])
  assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
  assert [r["step"] for r in resumed.steps] == [r["step"] for r in whole.steps]


def test_a_non_finite_metric_is_named_and_never_checkpointed(tmp_path):
  config = runloop.LoopConfig(epochs=3, batch_size=16, num_devices=1, progress=False)
  with pytest.raises(runloop.NonFiniteLossError, match=r"loss became non-finite before step 6; .*Last good"):
    runloop.run_epochs(config, tmp_path, *_least_squares(config, lr=1e6), run_config={"trainer": "ls"})
  assert runloop.latest_checkpoint_step(str(tmp_path)) is None


def test_a_resume_that_differs_is_refused_naming_the_field(tmp_path):
  config = runloop.LoopConfig(epochs=1, batch_size=16, num_devices=1, progress=False)
  runloop.run_epochs(config, tmp_path, *_least_squares(config), run_config={"trainer": "ls", "examples": 96})
  with pytest.raises(ValueError, match="examples was 96 there but is 95 now"):
    runloop.run_epochs(config, tmp_path, *_least_squares(config), run_config={"trainer": "ls", "examples": 95},
                       resume=True)


def test_configs_share_one_frozen_base_and_its_validation():
  for config in (train.TrainConfig(), gan.GANConfig()):
    assert isinstance(config, runloop.LoopConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
      config.epochs = 3  # type: ignore[misc]
  assert (train.TrainConfig().epochs, gan.GANConfig().epochs, gan.GANConfig().log_every_steps) == (10, 5, 10)
  for make, field, value, allowed in (
      (runloop.LoopConfig, "batch_size", 0, "an int > 0"), (train.TrainConfig, "eval_batch_size", 0, "an int > 0"),
      (gan.GANConfig, "g_steps", 0, "an int >= 1"), (train.TrainConfig, "checkpoint_every_steps", -1, "an int >= 0"),
      (gan.GANConfig, "log_every_steps", 1.5, "an int >= 0")):
    with pytest.raises(ValueError, match=rf"{make.__name__}\.{field} must be {allowed}"):
      make(**{field: value}).validate()
  with pytest.raises(ValueError, match=r"TrainConfig.task must be|task must be"):
    train.TrainConfig(task="ranking").validate()
  with pytest.raises(ValueError, match=r"GANConfig.generator_loss must be one of"):
    gan.GANConfig(generator_loss="wasserstein").validate()
  with pytest.raises(ValueError, match=r"LoopConfig.checkpoint must be True or False"):
    runloop.LoopConfig(checkpoint="yes").validate()
  with pytest.raises(TypeError, match="config must be a train.TrainConfig"):
    train.validate_config(gan.GANConfig())
