"""Tests of `sparsejax.train`: pmap equivalence, exact resume, padding, failures."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import data, runloop, train, transforms
from sparsejax.models import MLP

pytestmark = pytest.mark.integration  # trains models: the integration tier (see README)

LR = 0.1


def _digits():
  return data.load("digits", "train"), data.load("digits", "test")


def _tx():
  return optax.chain(optax.sgd(LR, momentum=0.9), transforms.integrated_tl1(2e-3, LR, a=0.01))


def _config(**kw):
  base = dict(epochs=2, batch_size=64, progress=False)
  base.update(kw)
  return train.TrainConfig(**base)


def _assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def test_two_devices_equal_one_device(tmp_path):
  assert jax.local_device_count() == 2, "conftest sets 2 fake CPU devices"
  (x, y), test = _digits()
  model = MLP((32, 10))
  one = train.fit(model, _tx(), (x, y), test, _config(num_devices=1), str(tmp_path / "one"))
  two = train.fit(model, _tx(), (x, y), test, _config(num_devices=2), str(tmp_path / "two"))
  _assert_trees_close(one.state.params, two.state.params, atol=1e-5)
  assert one.history[-1]["eval_accuracy"] == pytest.approx(two.history[-1]["eval_accuracy"], abs=1e-3)
  assert 0 < two.history[-1]["weight_sparsity"] < 1


class _Interrupt(Exception):
  pass


def test_resume_mid_epoch_equals_uninterrupted(tmp_path):
  (x, y), test = _digits()
  model = MLP((32, 10))
  config = _config(epochs=3, checkpoint_every_steps=5)
  full = train.fit(model, _tx(), (x, y), test, config, str(tmp_path / "full"))

  calls = []

  def crash_in_epoch_two(params):
    calls.append(1)
    if len(calls) == 2:
      raise _Interrupt()
    return {}

  workdir = str(tmp_path / "resumed")
  with pytest.raises(_Interrupt):
    train.fit(model, _tx(), (x, y), test, config, workdir, report_fn=crash_in_epoch_two)
  # 22 steps per epoch: the crash came after step 44 but before its epoch-end save,
  # so the latest checkpoint is the mid-epoch one at step 40.
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())[-1] == 40
  resumed = train.fit(model, _tx(), (x, y), test, config, workdir, resume=True, report_fn=lambda p: {})
  assert int(resumed.state.step) == int(full.state.step) == 66
  _assert_trees_close(full.state.params, resumed.state.params, atol=0.0)  # bit-identical
  _assert_trees_close(full.state.opt_state, resumed.state.opt_state, atol=0.0)
  with open(os.path.join(workdir, "log.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert [r["step"] for r in records] == [22, 44, 66]  # epoch 1 from the first run, 2-3 resumed
  assert records[1]["resumed_from_step"] == 40 and "resumed_from_step" not in records[2]


def test_padded_last_batch_gives_the_exact_mean_gradient(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.normal(0, 1, (10, 4)).astype(np.float32)
  y = rng.integers(0, 3, 10).astype(np.int32)
  model = MLP((3,))
  tx = optax.sgd(0.5)
  result = train.fit(model, tx, (x, y), None, _config(epochs=1, batch_size=16), str(tmp_path))  # 10 real + 6 padding
  state = train.create_train_state(model, tx, x, seed=0)

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  expected = jax.tree.map(lambda p, g: p - 0.5 * g, state.params, jax.grad(loss)(state.params))
  _assert_trees_close(result.state.params, expected, atol=1e-6)
  assert result.history[-1]["train_loss"] == pytest.approx(float(loss(state.params)), rel=1e-5)


def test_nan_loss_is_a_clear_error_and_keeps_the_last_checkpoint(tmp_path):
  (x, y), test = _digits()
  model = MLP((32, 10))
  workdir = str(tmp_path)
  blow_up = optax.chain(optax.sgd(0.1), optax.scale_by_schedule(lambda step: jnp.where(step >= 30, jnp.nan, 1.0)))
  with pytest.raises(runloop.NonFiniteLossError, match=r"non-finite.*Last good checkpoint: step 22"):
    train.fit(model, blow_up, (x, y), test, _config(epochs=3), workdir)
  restored = train.fit(model, blow_up, (x, y), test, _config(epochs=1), workdir, resume=True)
  assert int(restored.state.step) == 22
  assert all(np.all(np.isfinite(np.asarray(l))) for l in jax.tree.leaves(restored.state.params))
  with open(os.path.join(workdir, "log.jsonl")) as f:
    assert [json.loads(line)["step"] for line in f] == [22]  # the good epoch's record is kept
  with pytest.raises(ValueError, match=r"does not match this run's model and optimizer"):
    train.fit(model, optax.adam(0.1), (x, y), test, _config(epochs=2), workdir, resume=True)


def test_bad_inputs(tmp_path):
  (x, y), test = _digits()
  model = MLP((8, 10))
  bad = x.copy()
  bad[100, 3, 3, 0] = np.nan
  with pytest.raises(ValueError, match=r"train inputs has non-finite values: example 100 \(batch 1\)"):
    train.fit(model, optax.sgd(0.1), (bad, y), test, _config(), str(tmp_path))
  with pytest.raises(ValueError, match=r"batch_size=63 must be divisible by the 2 devices"):
    train.fit(model, optax.sgd(0.1), (x, y), test, _config(batch_size=63), str(tmp_path))
  with pytest.raises(ValueError, match=r"1347 inputs but 10 targets"):
    train.fit(model, optax.sgd(0.1), (x, y[:10]), test, _config(), str(tmp_path))
  with pytest.raises(ValueError, match=r"task must be"):
    train.fit(model, optax.sgd(0.1), (x, y), test, _config(task="ranking"), str(tmp_path))


def test_regression_and_activity_penalty(tmp_path):
  rng = np.random.default_rng(1)
  x = rng.normal(0, 1, (256, 6)).astype(np.float32)
  y = (x @ rng.normal(0, 1, (6, 1))).astype(np.float32)
  model = MLP((32, 1))
  seen = {}

  def penalty(params, intermediates):
    seen["keys"] = sorted(intermediates)
    act = intermediates["activation_0"][0]
    return 1e-3 * jnp.mean(jnp.sum(jnp.log1p(jnp.abs(act) / 0.1), axis=-1))

  result = train.fit(model, optax.adam(1e-2), (x, y), (x, y), _config(epochs=30, batch_size=64, task="regression"),
                     str(tmp_path), penalty_fn=penalty)
  assert seen["keys"] == ["activation_0"]
  assert result.history[-1]["eval_mse"] < 0.1 * float(np.mean(np.sum(y**2, -1)))
