"""Sparsity as a fraction: `optimizers.*(..., sparsity=, total_steps=)` and the controllers' `sparsity=`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import controller, masking, optimizers


def _problem(seed=0):
  """A small two-layer regression: params, loss and a batch stream."""
  rng = np.random.default_rng(seed)
  w_true = rng.normal(size=(12, 1)) * (rng.random((12, 1)) < 0.3)
  x = rng.normal(size=(256, 12)).astype(np.float32)
  y = (x @ w_true).astype(np.float32)
  params = {"hidden": {"kernel": jnp.asarray(rng.normal(size=(12, 24)) * 0.3, jnp.float32),
                       "bias": jnp.zeros(24, jnp.float32)},
            "out": {"kernel": jnp.asarray(rng.normal(size=(24, 1)) * 0.3, jnp.float32)}}

  def loss(p, xb, yb):
    h = jax.nn.relu(xb @ p["hidden"]["kernel"] + p["hidden"]["bias"])
    return jnp.mean((h @ p["out"]["kernel"] - yb) ** 2)
  return params, loss, x, y


def _train(tx, steps, seed=0):
  params, loss, x, y = _problem(seed)
  state = tx.init(params)

  @jax.jit
  def step(p, s, xb, yb):
    g = jax.grad(loss)(p, xb, yb)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  rng = np.random.default_rng(seed + 1)
  for _ in range(steps):
    idx = rng.integers(0, len(x), 32)
    params, state = step(params, state, x[idx], y[idx])
  return params, state


def _kernel_nnz(params):
  return int(sum(np.count_nonzero(np.asarray(p)) for p in jax.tree.leaves(params) if np.ndim(p) >= 2))


@pytest.mark.parametrize("make", [
    lambda s, t: optimizers.sgd(optax.cosine_decay_schedule(0.05, t), momentum=0.9, penalty="scad", sparsity=s,
                                total_steps=t),
    lambda s, t: optimizers.adam(1e-2, penalty="tl1", sparsity=s, total_steps=t),
    lambda s, t: optimizers.adamw(1e-2, penalty="l1", sparsity=s, total_steps=t, weight_decay=1e-4),
], ids=["sgd_scad", "adam_tl1", "adamw_l1"])
@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_one_call_small_run_ends_exactly_on_the_fraction(make):
  """A few hundred steps with every default: the run ends on round((1 - s) n) kernel nonzeros."""
  steps, sparsity = 300, 0.9
  params, _ = _train(make(sparsity, steps), steps)
  n = masking.regularised_size(params)
  assert n == 12 * 24 + 24
  assert _kernel_nnz(params) == round((1 - sparsity) * n)
  assert np.count_nonzero(np.asarray(params["hidden"]["bias"])) > 0  # biases are not regularised


def test_group_penalty_by_name_uses_the_bisection_controller():
  steps = 200
  params, _ = _train(optimizers.sgd(0.05, momentum=0.9, penalty="group_lasso", sparsity=0.75, total_steps=steps), steps)
  nnz, n = _kernel_nnz(params), masking.regularised_size(params)
  assert 0 < nnz <= round(0.25 * n)
  rows = np.abs(np.asarray(params["hidden"]["kernel"])).sum(axis=1)
  assert np.count_nonzero(rows) < 12  # whole input rows (groups) removed


def test_sparsity_equals_the_same_count_given_as_target_nnz():
  steps = 60
  n = 12 * 24 + 24
  by_fraction = controller.nnz_controller("mcp", sparsity=0.8, learning_rate=0.05, total_steps=steps)
  by_count = controller.nnz_controller("mcp", round(0.2 * n), 0.05, total_steps=steps)
  a, sa = _train(optax.chain(optax.sgd(0.05), by_fraction), steps)
  b, sb = _train(optax.chain(optax.sgd(0.05), by_count), steps)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  np.testing.assert_array_equal(sa[1].log_strength, sb[1].log_strength)


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_sparsity_under_inject_hyperparams_can_change_during_training():
  tx = optax.inject_hyperparams(controller.nnz_controller, static_args=("prox_fn",))(
      prox_fn="l1", sparsity=0.5, learning_rate=0.05, rate=1.0)
  params, loss, x, y = _problem()
  state = tx.init(params)
  n = masking.regularised_size(params)
  update = jax.jit(tx.update)
  for sparsity in (0.5, 0.9):
    state.hyperparams["sparsity"] = jnp.asarray(sparsity)
    for _ in range(3):
      u, state = update(jax.tree.map(lambda g: -0.05 * g, jax.grad(loss)(params, x[:32], y[:32])), state, params)
      params = optax.apply_updates(params, u)
    assert _kernel_nnz(params) == round((1 - sparsity) * n)  # rate 1: exact at every step


def test_nnz_controller_refuses_group_penalties():
  with pytest.raises(ValueError, match=r"use controller.nnz_controller_for\('group_lasso'"):
    controller.nnz_controller("group_lasso", sparsity=0.5, learning_rate=0.1)


def test_regularised_size_reads_shapes_only():
  shapes = jax.eval_shape(lambda: {"k": jnp.zeros((7, 5)), "b": jnp.zeros(5), "c": jnp.zeros((2, 3, 4))})
  assert masking.regularised_size(shapes) == 35 + 24
  assert masking.regularised_size(shapes, "all") == 35 + 24 + 5
  assert masking.regularised_size(shapes, {"k": True, "b": True, "c": False}) == 40


@pytest.mark.parametrize("kwargs, match", [
    ({"strength": 1e-3, "sparsity": 0.9}, "exactly one of strength"),
    ({}, "exactly one of strength"),
    ({"strength": 1e-3, "total_steps": 100}, "total_steps is the NNZ controller's schedule"),
    ({"sparsity": 1.0}, r"sparsity must be in \(0, 1\)|sparsity"),
    ({"sparsity": 0.0}, "sparsity"),
    ({"sparsity": -0.5}, "sparsity"),
    ({"sparsity": 0.9, "total_steps": 0}, "total_steps"),
    ({"sparsity": "high"}, "sparsity"),
])
def test_one_call_bad_arguments_name_the_argument(kwargs, match):
  with pytest.raises(ValueError, match=match):
    optimizers.sgd(0.1, penalty="scad", **kwargs)


def test_penalty_none_rejects_penalty_arguments():
  with pytest.raises(ValueError, match=r"\['sparsity'\] given with penalty=None"):
    optimizers.adam(1e-3, penalty=None, sparsity=0.9)
  assert isinstance(optimizers.adam(1e-3, penalty=None), optax.GradientTransformation)


def test_controller_target_errors():
  with pytest.raises(ValueError, match="exactly one of target_nnz"):
    controller.nnz_controller("l1", 10, 0.1, sparsity=0.5)
  with pytest.raises(ValueError, match="exactly one of target_nnz"):
    controller.nnz_controller("l1", learning_rate=0.1)
  with pytest.raises(ValueError, match="learning_rate is required"):
    controller.nnz_controller("l1", sparsity=0.5)
  tx = controller.nnz_controller("l1", sparsity=0.999, learning_rate=0.1)
  with pytest.raises(ValueError, match=r"sparsity=0.999 keeps 0 of the 20 regularised weights"):
    tx.init({"k": jnp.ones((4, 5))})


def test_mask_leaves_must_be_bools():
  with pytest.raises(ValueError, match="mask leaves must be True or False"):
    masking.mask_leaves({"k": "no"}, {"k": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="mask leaves must be True or False"):
    optimizers.sgd(0.1, penalty="l1", strength=0.1, mask={"k": 0}).init({"k": jnp.ones((2, 2))})


def test_schedule_object_equals_the_keyword_arguments():
  steps = 80
  sched = controller.ControllerSchedule(total_steps=steps, interval=5, debias_steps=20)
  a, sa = _train(optax.chain(optax.sgd(0.05), controller.nnz_controller("l1", 60, 0.05, schedule=sched)), steps)
  b, sb = _train(optax.chain(optax.sgd(0.05), controller.nnz_controller("l1", 60, 0.05, total_steps=steps, interval=5,
                                                                        debias_steps=20)), steps)
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert _kernel_nnz(a) == 60
  resolved = sched.resolved()
  assert (resolved.rate, resolved.exact_final_steps, resolved.ramp) == (1.0, 4, (8, 40))
  with pytest.raises(ValueError, match="not both"):
    controller.nnz_controller("l1", 60, 0.05, schedule=sched, rate=0.5)
  with pytest.raises(TypeError, match="ControllerSchedule"):
    controller.nnz_controller_for("group_lasso", 60, 0.05, schedule={"total_steps": 10})
  with pytest.raises(ValueError, match="interval"):
    controller.nnz_controller("l1", 60, 0.05, schedule=controller.ControllerSchedule(interval=0))
