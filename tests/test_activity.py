"""Tests of `sparsejax.activity` against the paper's worked example and autodiff."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import activity

V = jnp.asarray([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
W = jnp.asarray([[0.5, -0.3], [0.2, 0.1], [-0.4, 0.6]])
B = jnp.asarray([0.1, -0.2])


def _k(w, b):
  return activity.mean_activation(jax.nn.sigmoid(V @ w + b))


def _grads(fn):
  return jax.grad(lambda w, b: fn(_k(w, b)), argnums=(0, 1))(W, B)


def test_mean_activation_worked_example():
  np.testing.assert_allclose(_k(W, B), [0.512427, 0.573719], atol=1e-6)


def test_sparse_rbm_values_and_gradients():
  k = _k(W, B)
  assert float(activity.sparse_rbm(k, p=0.1)) == pytest.approx(0.394506, abs=1e-6)
  gw, gb = _grads(functools.partial(activity.sparse_rbm, p=0.1))
  np.testing.assert_allclose(gb, [0.204932, 0.229460], atol=1e-6)
  np.testing.assert_allclose(gw[0], [0.102083, 0.118134], atol=1e-6)


def test_normal_sparse_rbm_values_and_gradients():
  k = _k(W, B)
  assert float(activity.normal_sparse_rbm(k, p=0.0, sigma=1.0)) == pytest.approx(-0.688261, abs=1e-6)
  gw, gb = _grads(functools.partial(activity.normal_sparse_rbm, p=0.0, sigma=1.0))
  np.testing.assert_allclose(gb, [0.044541, 0.047021], atol=1e-6)
  np.testing.assert_allclose(gw, [[0.022187, 0.024208], [0.022354, 0.022813], [0.044541, 0.047021]], atol=1e-6)


def test_l_half_both_forms_and_combined():
  k = _k(W, B)
  assert float(activity.lq_global(k, q=0.5)) == pytest.approx(2.170563, abs=1e-6)
  gw, gb = _grads(activity.lq_global)
  np.testing.assert_allclose(gb, [0.511331, 0.471078], atol=1e-6)
  np.testing.assert_allclose(gw[0], [0.254709, 0.242528], atol=1e-6)
  assert float(activity.l_half_sum(k)) == pytest.approx(1.473283, abs=1e-6)
  np.testing.assert_allclose(_grads(activity.l_half_sum)[1], [0.173535, 0.159873], atol=1e-6)
  _, gb = _grads(functools.partial(activity.local_global, lambda_local=3.0, lambda_global=0.005))
  np.testing.assert_allclose(gb, [0.136178, 0.143418], atol=1e-6)
  # The closed-form gradient of (sum sqrt k)^2 is (sum sqrt k)/sqrt(k_j).
  np.testing.assert_allclose(jax.grad(activity.lq_global)(k), np.sum(np.sqrt(k)) / np.sqrt(k), rtol=1e-6)
  assert float(activity.l1_mean(k)) == pytest.approx(float(np.sum(k)))


def test_response_penalties_and_intermediates_hook():
  a = jnp.asarray([[0.3, 0.0], [0.0, -0.2]])
  assert float(activity.log_sum_responses(a, eps=0.1)) == pytest.approx((np.log1p(3.0) + np.log1p(2.0)) / 2)
  g = jax.grad(lambda x: activity.log_sum_responses(x, eps=0.1))(a)
  assert float(g[0, 0]) == pytest.approx(0.5 * 1 / (0.1 + 0.3)) and float(g[0, 1]) == 0.0
  # LSES activity term, scalar check: alpha = 0.01, eps_a = 0.1, a = 0.3, n = 1 -> 0.025.
  g1 = jax.grad(lambda x: 0.01 * activity.log_sum_responses(x, eps=0.1))(jnp.asarray([[0.3]]))
  assert float(g1[0, 0]) == pytest.approx(0.025)
  fn = activity.from_intermediates(functools.partial(activity.log_sum_responses, eps=0.1), 2.0,
                                   select=lambda name: "activation_0" in name)
  inter = {"activation_0": (a,), "activation_1": (a * 10,)}
  assert float(fn(None, inter)) == pytest.approx(2.0 * float(activity.log_sum_responses(a, eps=0.1)))
  for eps in (0.0, 1e-8):  # a dead unit (k_j = 0) gives a finite gradient
    assert np.all(np.isfinite(np.asarray(jax.grad(lambda k: activity.lq_global(k, eps=eps))(jnp.asarray([0.0, 0.5])))))
  with pytest.raises(ValueError, match="eps must satisfy 0.0 < eps"):
    activity.log_sum_responses(a, eps=0.0)
  with pytest.raises(ValueError, match="q must satisfy"):
    activity.lq_global(jnp.ones(2), q=1.5)
