"""Tests of relaxed variable splitting (`sparsejax.rvsm`, re-exported as `rvsm.rvsm`)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import prox, rvsm


def _run_example(steps):
  c = jnp.asarray([1.0, 0.05])
  params = {"w": jnp.asarray([[0.8, 0.3]])}
  tx = optax.chain(rvsm.rvsm(prox.l0, 0.01, 1.0), optax.sgd(0.5))
  state = tx.init(params)
  history = []
  for _ in range(steps):
    grads = {"w": params["w"] - c}  # f(w) = 1/2 ||w - c||^2
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    history.append((np.asarray(rvsm.find_rvsm_state(state).u["w"][0]), np.asarray(params["w"][0])))
  return history, params, state


def test_math_worked_example_and_fixed_point():
  history, params, state = _run_example(3)
  expected = [((0.8, 0.3), (0.9, 0.175)), ((0.9, 0.175), (0.95, 0.1125)), ((0.95, 0.0), (0.975, 0.025))]
  for (u, w), (u_exp, w_exp) in zip(history, expected):
    np.testing.assert_allclose(u, u_exp, atol=1e-7)
    np.testing.assert_allclose(w, w_exp, atol=1e-7)
  history, params, state = _run_example(60)
  np.testing.assert_allclose(history[-1][1], (1.0, 0.025), atol=1e-6)
  np.testing.assert_allclose(history[-1][0], (1.0, 0.0), atol=1e-6)
  # The fixed point solves (w - c) + beta (w - u) = 0 with u = H(w).
  w, u = history[-1][1], history[-1][0]
  np.testing.assert_allclose((w - np.array([1.0, 0.05])) + (w - u), 0.0, atol=1e-6)
  sparse = rvsm.sparse_params(state, params)
  assert float(sparse["w"][0, 1]) == 0.0


@pytest.mark.float64  # compares to float64 references at tight tolerances
@pytest.mark.parametrize("name,kw", [("l0", {}), ("l1", {}), ("tl1", {"a": 1.0})])
def test_step_equals_hand_written_update_with_any_optimizer(name, kw):
  rng = np.random.default_rng(0)
  params = {"Dense_0": {"kernel": jnp.asarray(rng.normal(0, 0.1, (6, 4))), "bias": jnp.asarray(rng.normal(0, 0.1, 4))}}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1, p.shape)), params)
  lam, beta, lr = 1e-3, 0.5, 0.1
  tx = optax.chain(rvsm.rvsm(name, lam, beta, **kw), optax.sgd(lr, momentum=0.9))
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  w = params["Dense_0"]["kernel"]
  u = prox.get(name)(w, lam / beta, **kw)
  np.testing.assert_allclose(new["Dense_0"]["kernel"], w - lr * (grads["Dense_0"]["kernel"] + beta * (w - u)), atol=1e-12)
  np.testing.assert_allclose(new["Dense_0"]["bias"], params["Dense_0"]["bias"] - lr * grads["Dense_0"]["bias"], atol=1e-12)
  stored = np.asarray(rvsm.find_rvsm_state(state).u["Dense_0"]["kernel"])
  np.testing.assert_allclose(stored, u, rtol=1e-13, atol=0)
  np.testing.assert_array_equal(stored == 0, np.asarray(u) == 0)
  assert rvsm.find_rvsm_state(state).u["Dense_0"]["bias"] is None


def test_only_chosen_layers_are_split_and_errors():
  params = {"Conv_0": {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.zeros(2)},
            "Dense_0": {"kernel": jnp.full((4, 2), 0.01), "bias": jnp.zeros(2)}}
  only_fc = lambda p: {k: {"kernel": k == "Dense_0", "bias": False} for k in p}  # noqa: E731
  tx = rvsm.rvsm("l0", 1e-3, 1.0, mask=only_fc)
  state = tx.init(params)
  sparse = rvsm.sparse_params(state, params)
  assert np.all(np.asarray(sparse["Dense_0"]["kernel"]) == 0)        # 0.01 < sqrt(2e-3)
  np.testing.assert_array_equal(sparse["Conv_0"]["kernel"], params["Conv_0"]["kernel"])  # not split
  with pytest.raises(ValueError, match=r"beta must satisfy 0.0 < beta"):
    rvsm.rvsm("l0", 1e-3, 0.0)
  with pytest.raises(ValueError, match=r"strength must satisfy"):
    rvsm.rvsm("l1", -1.0, 1.0)
  with pytest.raises(ValueError, match=r"needs params"):
    tx.update(params, state)
