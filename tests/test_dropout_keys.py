"""Dropout keys indexed by the global example: a run is the same on any device count (issue 34, item 8)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import train
from sparsejax._example_keys import example_indexed_key
from sparsejax.models.interface import functional
from sparsejax.models.mlp import MLP
from sparsejax.models.nnx_models import NNXMLP

BASE = jax.random.PRNGKey(11)


@pytest.mark.parametrize("shape", [(8, 5), (8, 3, 4), (24, 6)])  # (24, 6): batch folded into the leading axis (x3)
@pytest.mark.parametrize("draw", ["bernoulli", "normal", "uniform"])
def test_a_shard_draws_its_rows_of_the_global_draw(shape, draw):
  def sample(key, shape):
    key = jax.random.fold_in(key, 5)  # a module path, as flax folds it
    if draw == "bernoulli":
      return jax.random.bernoulli(key, 0.3, shape)
    return getattr(jax.random, draw)(key, shape, jnp.float32)
  whole = sample(example_indexed_key(BASE, 0, 8), shape)
  for shards in (2, 4):
    per = shape[0] // shards
    parts = [sample(example_indexed_key(BASE, i * 8 // shards, 8 // shards), (per,) + shape[1:]) for i in range(shards)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_a_mask_broadcast_over_the_batch_is_the_same_on_every_shard():
  a = jax.random.bernoulli(example_indexed_key(BASE, 0, 4), 0.5, (1, 16))
  b = jax.random.bernoulli(example_indexed_key(BASE, 4, 4), 0.5, (1, 16))
  np.testing.assert_array_equal(a, b)


def test_draws_are_uniform_and_keys_separate_streams():
  u = np.asarray(jax.random.uniform(example_indexed_key(BASE, 0, 1000), (1000, 100), jnp.float32))
  assert abs(u.mean() - 0.5) < 0.005 and abs(u.var() - 1 / 12) < 0.002
  assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1  # columns of one row are not copies
  split = jax.random.split(example_indexed_key(BASE, 0, 1000), 2)
  v0, v1 = (np.asarray(jax.random.uniform(k, (1000,), jnp.float32)) for k in split)
  assert abs(np.corrcoef(v0, v1)[0, 1]) < 0.1
  other = np.asarray(jax.random.uniform(example_indexed_key(jax.random.PRNGKey(12), 0, 1000), (1000, 100), jnp.float32))
  assert not np.allclose(u, other)


def test_nnx_dropout_built_with_one_seed_gets_a_new_mask_per_key():
  # nnx.Dropout draws from the "default" stream when the module was built with nnx.Rngs(seed):
  # reseeding only a "dropout" stream left one fixed mask for every training step.
  model = functional(NNXMLP(8, (64, 3), nnx.Rngs(0), dropout_rate=0.5))
  variables = model.init()
  x = jnp.ones((4, 8), jnp.float32)
  out = [model.apply(variables, x, train=True, rngs={"dropout": example_indexed_key(jax.random.PRNGKey(s), 0, 4)})
         for s in (0, 1, 0)]
  assert not np.allclose(out[0], out[1])
  np.testing.assert_array_equal(out[0], out[2])


def _data():
  rng = np.random.default_rng(0)
  return rng.normal(size=(96, 8)).astype(np.float32), rng.integers(0, 3, 96).astype(np.int32)


def _max_diff(a, b) -> float:
  return max(float(np.abs(np.asarray(u) - np.asarray(v)).max()) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.integration  # trains 10 small runs
@pytest.mark.parametrize("make", [lambda: MLP(features=(32, 3), dropout_rate=0.5),
                                  lambda: NNXMLP(8, (32, 3), nnx.Rngs(0), dropout_rate=0.5)], ids=["linen", "nnx"])
def test_a_run_with_dropout_is_the_same_on_any_device_count_and_parallelism(make, tmp_path):
  x, y = _data()
  base = train.TrainConfig(epochs=2, batch_size=32, checkpoint=False, progress=False)

  def run(name, **kw):
    return train.fit(make(), optax.sgd(0.1), (x, y), None, dataclasses.replace(base, **kw), str(tmp_path / name))

  one = run("one", num_devices=1).state.params
  for name, kw in (("two", {"num_devices": 2}), ("sharded", {"parallelism": "sharded"}),
                   ("fsdp", {"parallelism": "fsdp"})):
    assert _max_diff(one, run(name, **kw).state.params) < 1e-6, name
  assert _max_diff(one, run("seed", num_devices=1, seed=1).state.params) > 1e-3  # dropout is on and seeded


@pytest.mark.integration  # trains 3 small runs with checkpoints
def test_a_resume_on_another_device_count_continues_the_same_run(tmp_path):
  x, y = _data()
  config = train.TrainConfig(epochs=2, batch_size=32, progress=False, num_devices=2)
  model = MLP(features=(32, 3), dropout_rate=0.5)
  whole = train.fit(model, optax.sgd(0.1), (x, y), None, config, str(tmp_path / "whole"))
  train.fit(model, optax.sgd(0.1), (x, y), None, dataclasses.replace(config, epochs=1), str(tmp_path / "split"))
  resumed = train.fit(model, optax.sgd(0.1), (x, y), None, dataclasses.replace(config, num_devices=1),
                      str(tmp_path / "split"), resume=True)
  assert int(resumed.state.step) == int(whole.state.step) == 6
  assert _max_diff(whole.state.params, resumed.state.params) < 1e-6
