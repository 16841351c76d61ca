"""Tests of the RBM: CD-1 gradient, sparsity gradients, learning on digits, DBN stack."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import activity, data
from sparsejax.models import rbm


def _tiny():
  params = {"kernel": jnp.asarray([[0.5, -0.3], [0.2, 0.1], [-0.4, 0.6]]),
            "visible_bias": jnp.asarray([0.05, -0.1, 0.0]), "hidden_bias": jnp.asarray([0.1, -0.2])}
  v0 = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
  return params, v0


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_cd1_gradient_is_the_expectation_difference():
  params, v0 = _tiny()
  grads, aux = rbm.cd_gradient(params, v0, jax.random.PRNGKey(0), k=1)
  w, a, b = (np.asarray(params[n]) for n in ("kernel", "visible_bias", "hidden_bias"))
  v0n = np.asarray(v0)
  h0 = 1 / (1 + np.exp(-(v0n @ w + b)))
  np.testing.assert_allclose(aux.h0, h0, rtol=1e-12)
  vk = np.asarray(aux.vk)
  hk = 1 / (1 + np.exp(-(vk @ w + b)))
  np.testing.assert_allclose(grads["kernel"], -(v0n.T @ h0 - vk.T @ hk) / 2, rtol=1e-12)
  np.testing.assert_allclose(grads["visible_bias"], -np.mean(v0n - vk, 0), rtol=1e-12)
  np.testing.assert_allclose(grads["hidden_bias"], -np.mean(h0 - hk, 0), rtol=1e-12)


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_exact_gradient_matches_cd_infinity_in_expectation():
  """On a 3x2 RBM, the exact NLL gradient (enumerating states) equals <vh>_model - <vh>_data."""
  params, v0 = _tiny()
  states_v = jnp.asarray([[int(c) for c in f"{i:03b}"] for i in range(8)], jnp.float64)
  def nll(p):
    log_z = jax.scipy.special.logsumexp(-rbm.free_energy(p, states_v))
    return jnp.mean(rbm.free_energy(p, v0)) + log_z
  exact = jax.grad(nll)(params)
  probs = jax.nn.softmax(-rbm.free_energy(params, states_v))
  h_model = rbm.hidden_probabilities(params, states_v)
  model_vh = (states_v * probs[:, None]).T @ h_model
  data_vh = v0.T @ rbm.hidden_probabilities(params, v0) / 2
  np.testing.assert_allclose(exact["kernel"], model_vh - data_vh, atol=1e-12)


def test_sparsity_gradients_match_worked_example():
  params, v0 = _tiny()
  plain, _ = rbm.cd_gradient(params, v0, jax.random.PRNGKey(1))
  combined = functools.partial(activity.local_global, lambda_local=3.0, lambda_global=0.005)
  with_penalty, _ = rbm.cd_gradient(params, v0, jax.random.PRNGKey(1), penalty=combined)
  np.testing.assert_allclose(with_penalty["hidden_bias"] - plain["hidden_bias"], [0.136178, 0.143418], atol=1e-6)
  np.testing.assert_allclose(with_penalty["visible_bias"], plain["visible_bias"])


def _train_on_digits(penalty):
  x, _ = data.load("digits", "train")
  v = jnp.asarray(x.reshape(len(x), -1), jnp.float32)
  params = rbm.RBM(32).init(jax.random.PRNGKey(0), v[:1])["params"]
  tx = optax.sgd(0.1, momentum=0.5)
  state = tx.init(params)

  @jax.jit
  def step(params, state, batch, rng):
    grads, _ = rbm.cd_gradient(params, batch, rng, penalty=penalty)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  before = float(rbm.reconstruction_error(params, v))
  rng = jax.random.PRNGKey(1)
  for _ in range(15):
    for i in range(0, len(v), 50):
      rng, sub = jax.random.split(rng)
      params, state = step(params, state, v[i:i + 50], sub)
  return v, params, before, float(rbm.reconstruction_error(params, v))


@pytest.mark.integration  # trains for many seconds: the integration tier
def test_rbm_on_digits_learns_and_sparse_variant_is_sparser():
  v, dense, before, after = _train_on_digits(None)
  assert after < 0.6 * before
  _, sparse, _, after_sparse = _train_on_digits(lambda k: 5.0 * activity.sparse_rbm(k, p=0.05))
  assert after_sparse < 0.8 * before
  assert float(jnp.mean(rbm.hidden_probabilities(sparse, v))) < 0.7 * float(jnp.mean(rbm.hidden_probabilities(dense, v)))
  assert np.isfinite(float(rbm.pseudo_likelihood(dense, v, jax.random.PRNGKey(2))))
  features = rbm.dbn_features([dense, rbm.RBM(8).init(jax.random.PRNGKey(3), jnp.zeros((1, 32)))["params"]], v)
  assert features.shape == (len(v), 8)
