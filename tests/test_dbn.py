"""RBM and DBN training through the run loop (`sparsejax.dbn`): the step's math, bad inputs, devices, resume, kills."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import activity, data, dbn, records, runloop
from sparsejax._example_keys import example_indexed_key
from sparsejax.models import rbm
from tests import multiprocess_worker

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PENALTY = functools.partial(activity.local_global, lambda_local=3.0, lambda_global=0.005)


def _binary_data(n=240, visible=20, seed=0):
  """Two prototypes with bit flips: data an RBM can model, not images."""
  prototypes = np.random.default_rng(0).random((2, visible)) < 0.5
  rng = np.random.default_rng(seed)
  x = prototypes[rng.integers(0, 2, n)] ^ (rng.random((n, visible)) < 0.05)
  return x.astype(np.float32)


def _config(**kw):
  return dbn.RBMConfig(**{"epochs": 2, "batch_size": 40, "progress": False, "num_devices": 1, **kw})


@pytest.mark.parametrize("persistent", [False, True])
def test_one_step_is_cd_plus_the_exact_gradient_of_the_penalty_on_the_mean_activation(persistent):
  v = jnp.asarray(_binary_data(40))
  config = _config(k=2, persistent=persistent)
  tx = optax.sgd(1.0)
  state = dbn.create_rbm_state(20, 8, tx, config)
  state = state.replace(params=jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                                            state.params))
  step = jax.vmap(dbn.make_rbm_train_step(tx, config, PENALTY), axis_name=runloop.AXIS, in_axes=(None, 0),
                  axis_size=1)
  new_state, metrics = step(state, v[None])
  # the same draws: the step's key for examples [0, 40); a persistent chain starts at the data
  key = example_indexed_key(jax.random.fold_in(state.rng, 0), 0, 40)
  chain = None
  if persistent:
    h0 = rbm.hidden_probabilities(state.params, v)
    chain = jax.random.bernoulli(jax.random.fold_in(key, 1), h0).astype(v.dtype)
  cd, aux = rbm.cd_gradient(state.params, v, key, k=2, chain=chain)
  penalty_grad = jax.grad(lambda w, b: PENALTY(jnp.mean(jax.nn.sigmoid(v @ w + b), axis=0)), argnums=(0, 1))(
      state.params["kernel"], state.params["hidden_bias"])
  expected = {"kernel": cd["kernel"] + penalty_grad[0], "visible_bias": cd["visible_bias"],
              "hidden_bias": cd["hidden_bias"] + penalty_grad[1]}
  for name in expected:
    np.testing.assert_allclose(state.params[name] - jax.tree.map(lambda a: a[0], new_state.params)[name],
                               expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(metrics["penalty"][0], PENALTY(jnp.mean(rbm.hidden_probabilities(state.params, v), 0)),
                             rtol=1e-6)
  if persistent:
    np.testing.assert_array_equal(new_state.chain[0], aux.chain)


def test_fit_rbm_on_a_users_array_learns_records_and_plots(tmp_path):
  x = _binary_data()
  held_out = _binary_data(80, seed=1)
  result = dbn.fit_rbm(x, 16, optax.sgd(0.5, momentum=0.5), _config(epochs=6, log_every_steps=2), tmp_path,
                       hidden_penalty=PENALTY, eval_data=held_out)
  history = result.history
  assert [r["epoch"] for r in history] == list(range(1, 7))
  assert history[-1]["train_recon_error"] < 0.5 * history[0]["train_recon_error"]
  assert history[-1]["eval_recon_error"] < 0.5 * history[0]["eval_recon_error"]  # held-out data of the same source
  assert history[-1]["train_pseudo_likelihood"] > history[0]["train_pseudo_likelihood"]
  for key in ("eval_recon_error", "free_energy_gap", "dead_units", "weight_sparsity", "hidden_activation"):
    assert key in history[-1]
  assert [r["step"] for r in result.steps] == list(range(2, 37, 2))
  assert {"log.jsonl", "steps.jsonl", "history.json", "hidden_activity.png"} <= set(os.listdir(tmp_path))
  assert "filters.png" not in os.listdir(tmp_path)  # no image shape for 20 visibles
  features = result.features(held_out)
  assert features.shape == (80, 16) and np.all((features >= 0) & (features <= 1))
  np.testing.assert_allclose(features, rbm.hidden_probabilities(result.params, jnp.asarray(held_out)), rtol=1e-6)


@pytest.mark.integration  # trains an RBM on images
def test_images_are_flattened_and_their_filters_drawn(tmp_path):
  images = data.load("digits", "train")[0][:200]
  result = dbn.fit_rbm(images, 16, optax.sgd(0.1), _config(epochs=1), tmp_path)
  assert np.shape(result.params["kernel"]) == (64, 16)
  assert "filters.png" in os.listdir(tmp_path)


@pytest.mark.integration  # trains a 2-layer DBN twice
def test_a_dbn_trains_each_layer_on_the_previous_ones_probabilities_and_resumes_per_layer(tmp_path):
  x = _binary_data()
  config = _config(epochs=2)
  stack = dbn.fit_dbn(x, (12, 6), optax.sgd(0.1, momentum=0.5), config, tmp_path, hidden_penalty=[PENALTY, None])
  assert [np.shape(p["kernel"]) for p in stack.stack] == [(20, 12), (12, 6)]
  assert stack.features(x).shape == (240, 6)
  np.testing.assert_allclose(stack.features(x), rbm.dbn_features(stack.stack, jnp.asarray(x)), rtol=1e-6)
  log = tmp_path / "layer_0" / "log.jsonl"
  before = log.read_text()
  again = dbn.fit_dbn(x, (12, 6), optax.sgd(0.1, momentum=0.5), config, tmp_path, hidden_penalty=[PENALTY, None],
                      resume=True)
  assert log.read_text() == before  # a finished layer is restored, not retrained
  for a, b in zip(jax.tree.leaves(stack.stack), jax.tree.leaves(again.stack)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call, match", [
    (lambda t: dbn.fit_rbm(np.full((100, 5), 0.5), 4, optax.sgd(0.1), _config(binary=True), t),
     r"train_data must be binary \(0 or 1\) with RBMConfig\(binary=True\); got the value 0.5"),
    (lambda t: dbn.fit_rbm(np.full((100, 5), 2.0), 4, optax.sgd(0.1), _config(), t), r"must lie in \[0, 1\]"),
    (lambda t: dbn.fit_rbm(np.full((100, 5), np.nan), 4, optax.sgd(0.1), _config(), t), "non-finite values"),
    (lambda t: dbn.fit_rbm(np.zeros(100), 4, optax.sgd(0.1), _config(), t), r"shape \(N, visible\)"),
    (lambda t: dbn.fit_rbm(np.zeros((10, 5)), 4, optax.sgd(0.1), _config(), t), "fewer than one batch of 40"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, optax.sgd(0.1), _config(), t, eval_data=np.zeros((9, 6))),
     "eval_data has 6 values per example but the training data has 5"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 0, optax.sgd(0.1), _config(), t), r"num_hidden must be an int >= 1"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, optax.sgd(0.1), _config(k=0), t), r"RBMConfig.k must be an int >= 1"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, optax.sgd(0.1), _config(init_scale=-1.0), t),
     "RBMConfig.init_scale"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, optax.sgd(0.1), _config(persistent="yes"), t),
     "RBMConfig.persistent must be True or False"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, "sgd", _config(), t), "tx must be an optax.GradientTransformation"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, optax.sgd(0.1), _config(), t, hidden_penalty=3.0),
     "hidden_penalty must be a callable"),
    (lambda t: dbn.fit_rbm(np.zeros((100, 5)), 4, optax.sgd(0.1), {"epochs": 1}, t), "config must be a dbn.RBMConfig"),
    (lambda t: dbn.fit_dbn(np.zeros((100, 5)), 8, optax.sgd(0.1), _config(), t), "layers must be a sequence"),
    (lambda t: dbn.fit_dbn(np.zeros((100, 5)), (8, 0), optax.sgd(0.1), _config(), t), r"layers\[1\] must be"),
    (lambda t: dbn.fit_dbn(np.zeros((100, 5)), (8, 4), [optax.sgd(0.1)] * 3, _config(), t),
     r"tx: one for every layer or one per layer \(2\); got 3"),
])
def test_bad_inputs_are_refused_before_training_naming_the_argument(tmp_path, call, match):
  with pytest.raises((ValueError, TypeError), match=match):
    call(tmp_path)
  assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.integration  # trains 8 small RBMs
@pytest.mark.parametrize("persistent", [False, True])
def test_the_same_rbm_on_any_device_count_and_parallelism(tmp_path, persistent):
  x = data.load("digits", "train")[0][:400]
  config = _config(k=2, persistent=persistent, checkpoint=False)
  runs = {}
  for name, kw in (("one", {"num_devices": 1}), ("two", {"num_devices": 2}), ("sharded", {"parallelism": "sharded"}),
                   ("fsdp", {"parallelism": "fsdp"})):
    runs[name] = dbn.fit_rbm(x, 24, optax.sgd(0.1, momentum=0.5), dataclasses.replace(config, **kw), tmp_path / name,
                             hidden_penalty=PENALTY).params
  for name, params in runs.items():
    for a, b in zip(jax.tree.leaves(runs["one"]), jax.tree.leaves(params)):
      np.testing.assert_allclose(a, b, atol=1e-6, rtol=0, err_msg=name)


@pytest.mark.integration  # trains the same RBM twice in subprocesses, killing one three times
def test_sigkill_then_resume_gives_the_same_rbm_bit_for_bit(tmp_path):
  options = {"devices": 1, "num_processes": 1, "process_id": 0, "port": 0, "trainer": "rbm", "epochs": 40,
             "checkpoint_every_steps": 3}
  full, killed = multiprocess_worker.run_killed_and_resumed(tmp_path, options, max_delay_s=0.2)
  for key in full:
    np.testing.assert_array_equal(full[key], killed[key])
  logged = records.read_jsonl(str(tmp_path / "killed" / "log.jsonl"))
  assert [r["epoch"] for r in logged] == list(range(1, 41))
