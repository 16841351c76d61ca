"""Magnitude-pruning baselines and exact O(n) selection (`sparsejax.pruning`), and the NNZ controller's accuracy."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import controller, data, magnitudes, pruning, selection, train
from sparsejax.models import MLP


def _params(seed=0, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  return {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(40, 20)), dtype), "bias": jnp.asarray(rng.normal(size=20), dtype)},
          "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(20, 5)), dtype), "bias": jnp.asarray(rng.normal(size=5), dtype)}}


def _kernels(tree):
  return [tree["Dense_0"]["kernel"], tree["Dense_1"]["kernel"]]


@pytest.mark.float64  # compares to float64 references at tight tolerances
@pytest.mark.parametrize("rolled", [True, False], ids=["rolled", "unrolled"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_kth_largest_magnitude_is_exact(dtype, rolled, monkeypatch):
  # small weight sets use a rolled loop, large ones unrolled passes: both are exact
  monkeypatch.setattr(magnitudes, "_ROLLED_MAX_ELEMENTS", 1 << 30 if rolled else 0)
  rng = np.random.default_rng(1)
  leaves = [jnp.asarray(rng.normal(size=(50, 7)), dtype), jnp.asarray(rng.standard_cauchy(size=33), dtype),
            jnp.asarray(np.repeat([0.5, -0.5, 0.0], 10), dtype)]  # ties and zeros
  values = np.sort(np.abs(np.concatenate([np.asarray(l, np.float64).ravel() for l in leaves])))[::-1]
  f = jax.jit(magnitudes.kth_largest_magnitude)
  for k in [1, 2, 17, 100, 350, 375, 383, values.size]:
    assert float(f(leaves, k)) == values[k - 1], k
  assert float(f(leaves, values.size + 1)) == 0.0
  inf_and_nan = [jnp.asarray([1.0, -np.inf, np.nan, 2.0], dtype)]  # NaN sorts above inf
  assert np.isnan(float(f(inf_and_nan, 1))) and float(f(inf_and_nan, 2)) == np.inf


@pytest.mark.float64  # compares to float64 references at tight tolerances
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_kth_largest_magnitude_matches_a_sort_where_the_search_is_hard(dtype):
  # the interpolation search against np.sort: a pruned support (a gap in |w| at the
  # support's edge, where the controller's exact phase asks), most weights tied at 0,
  # rounded values (many ties), heavy tails, tiny scales, and every k at the edges
  rng = np.random.default_rng(3)
  n = 12_000  # one size, so one compilation
  pruned = np.where(rng.random(n) < 0.06, rng.normal(size=n), 1e-3 * rng.normal(size=n))
  mostly_zero = np.where(rng.random(n) < 0.9, 0.0, rng.normal(size=n))
  cases = [pruned, mostly_zero, np.round(rng.normal(size=n), 1), rng.standard_cauchy(n), 1e-30 * rng.normal(size=n),
           np.full(n, -2.5)]
  f = jax.jit(magnitudes.kth_largest_magnitude)
  for weights in cases:
    leaves = [jnp.asarray(weights[: weights.size // 3], dtype), jnp.asarray(weights[weights.size // 3:], dtype)]
    values = np.sort(np.abs(np.concatenate([np.asarray(l, np.float64) for l in leaves])))[::-1]
    edge = int(np.count_nonzero(values))
    for k in sorted({1, 2, edge - 1, edge, edge + 1, values.size // 20, values.size // 2, values.size - 1,
                     values.size, *rng.integers(1, values.size + 1, 5)}):
      if 1 <= k <= values.size:
        assert float(f(leaves, k)) == values[k - 1], (k, edge)
  assert float(magnitudes.kth_largest_magnitude([jnp.zeros((0,), dtype)], 1)) == 0.0  # no weights: 0, as k > size


def test_cubic_schedule():
  s = [float(pruning.cubic_sparsity(t, 0.9, 10, 110, 0.1)) for t in (0, 10, 60, 110, 500)]
  np.testing.assert_allclose(s, [0.1, 0.1, 0.9 + (0.1 - 0.9) * 0.5 ** 3, 0.9, 0.9], rtol=1e-6)


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("optimizer", [optax.sgd(0.05, momentum=0.9), optax.adam(1e-2)], ids=["momentum", "adam"])
def test_gmp_reaches_the_target_and_masked_weights_stay_zero(scope, optimizer):
  params = _params()
  tx = optax.chain(optimizer, pruning.gradual_magnitude_pruning(0.9, 5, 45, frequency=10, scope=scope))
  state = tx.init(params)
  update = jax.jit(tx.update)
  rng = np.random.default_rng(2)
  previous_mask = None
  for step in range(80):
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
    updates, state = update(grads, state, params)
    params = optax.apply_updates(params, updates)
    mask = state[1].mask
    for leaf, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)):
      assert np.all(np.asarray(leaf)[~np.asarray(m)] == 0), step  # exactly zero under momentum/Adam
    if previous_mask is not None and step not in (5, 15, 25, 35, 45):
      for a, b in zip(jax.tree.leaves(previous_mask), jax.tree.leaves(mask)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # held between updates
    previous_mask = mask
  kernels = _kernels(params)
  if scope == "global":
    assert sum(int(np.count_nonzero(k)) for k in kernels) == round(0.1 * (800 + 100))
  else:
    assert [int(np.count_nonzero(k)) for k in kernels] == [80, 10]
  assert np.all(np.asarray(params["Dense_0"]["bias"]) != 0)  # biases are not pruned


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_one_shot_random_and_fixed_masks():
  params = _params(3)
  m = pruning.one_shot_magnitude_mask(params, 0.75)
  kept = np.concatenate([np.abs(np.asarray(k))[np.asarray(mk)] for k, mk in zip(_kernels(params), _kernels(m))])
  dropped = np.concatenate([np.abs(np.asarray(k))[~np.asarray(mk)] for k, mk in zip(_kernels(params), _kernels(m))])
  assert kept.size == 225 and kept.min() >= dropped.max()
  layer = pruning.one_shot_magnitude_mask(params, 0.5, scope="layer")
  assert [int(np.sum(np.asarray(k))) for k in _kernels(layer)] == [400, 50]
  density = pruning.mask_density(m)
  rand = pruning.random_mask(params, density, seed=0)
  for a, b in zip(_kernels(rand), _kernels(m)):
    assert abs(np.mean(np.asarray(a)) - np.mean(np.asarray(b))) < 1e-9
  assert np.all(np.asarray(rand["Dense_0"]["bias"]))
  tx = optax.chain(optax.adam(0.1), pruning.fixed_mask(m))
  state = tx.init(params)
  for _ in range(5):
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  for k, mk in zip(_kernels(params), _kernels(m)):
    assert np.all(np.asarray(k)[~np.asarray(mk)] == 0)
  with pytest.raises(ValueError, match="structure of params"):
    pruning.fixed_mask({"w": True}).init(params)


def test_bad_pruning_arguments():
  with pytest.raises(ValueError, match=r"target_sparsity must satisfy"):
    pruning.gradual_magnitude_pruning(1.0, 0, 10)
  with pytest.raises(ValueError, match=r"end_step must be an int >= 10"):
    pruning.gradual_magnitude_pruning(0.5, 10, 5)
  with pytest.raises(ValueError, match=r"frequency must be an int >= 1"):
    pruning.gradual_magnitude_pruning(0.5, 0, 5, frequency=0)
  with pytest.raises(ValueError, match=r"scope must be"):
    pruning.gradual_magnitude_pruning(0.5, 0, 5, scope="per_row")
  with pytest.raises(ValueError, match=r"switch_step must be an int >= 0"):
    pruning.sparsify_then_retrain(optax.sgd(0.1), optax.sgd(0.1), -1)


def test_sparsify_then_retrain_freezes_the_support_and_removes_shrinkage():
  from sparsejax import transforms
  params = _params(4)
  sparsify = optax.chain(optax.sgd(0.1), transforms.l1(2.0, 0.1))
  tx = pruning.sparsify_then_retrain(sparsify, optax.sgd(0.1), switch_step=3)
  state = tx.init(params)
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  for _ in range(3):
    updates, state = tx.update(zero_grads, state, params)
    params = optax.apply_updates(params, updates)
  support = [np.asarray(k) != 0 for k in _kernels(params)]
  assert 0 < sum(s.sum() for s in support) < 900
  frozen = jax.tree.map(np.asarray, params)
  updates, state = tx.update(zero_grads, state, params)  # phase 2, zero gradient: nothing moves (no shrinkage)
  params = optax.apply_updates(params, updates)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  ones = jax.tree.map(jnp.ones_like, params)
  for _ in range(3):  # phase 2 with gradients: kept weights move, the zero set stays
    updates, state = tx.update(ones, state, params)
    params = optax.apply_updates(params, updates)
  for k, s in zip(_kernels(params), support):
    np.testing.assert_array_equal(np.asarray(k) != 0, s)


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.parametrize("optimizer_name", ["momentum", "adam"])
def test_nnz_controller_ends_within_one_percent_of_the_target(tmp_path, optimizer_name):
  (x, y), test = data.load("digits", "train"), data.load("digits", "test")
  epochs, batch = (6, 64) if optimizer_name == "momentum" else (20, 64)
  steps = pruning.schedule_total_steps(epochs, len(x), batch)
  lr = 0.05 if optimizer_name == "momentum" else 1e-2
  optimizer = optax.sgd(lr, momentum=0.9) if optimizer_name == "momentum" else optax.adam(lr)
  target = 800  # of 64*64 + 64*10 = 4736 kernel weights
  adapt = controller.nnz_controller("l1", target, lr, initial_strength=1e-3, rate=0.05, interval=5,
                                   total_steps=steps, exact_final_steps=30)
  result = train.fit(MLP((64, 10)), optax.chain(optimizer, adapt), (x, y), test,
                     train.TrainConfig(epochs=epochs, batch_size=batch, progress=False, checkpoint=False),
                     str(tmp_path), report_fn=lambda p: {})
  nnz = selection.count_nonzero(result.state.params)
  assert abs(nnz - target) <= 0.01 * target, nnz
  assert result.history[-1]["eval_accuracy"] > 0.85


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_nnz_controller_per_layer_targets_by_chaining(tmp_path):
  (x, y), test = data.load("digits", "train"), data.load("digits", "test")
  epochs, batch, lr = 6, 64, 0.05
  steps = pruning.schedule_total_steps(epochs, len(x), batch)

  def only(name):
    return lambda params: {k: {"kernel": k == name, "bias": False} for k in params}

  tx = optax.chain(optax.sgd(lr, momentum=0.9),
                   controller.nnz_controller("l1", 600, lr, 1e-3, interval=5, mask=only("Dense_0"),
                                            total_steps=steps, exact_final_steps=30),
                   controller.nnz_controller("l1", 200, lr, 1e-3, interval=5, mask=only("Dense_1"),
                                            total_steps=steps, exact_final_steps=30))
  result = train.fit(MLP((64, 10)), tx, (x, y), test,
                     train.TrainConfig(epochs=epochs, batch_size=batch, progress=False, checkpoint=False),
                     str(tmp_path), report_fn=lambda p: {})
  counts = selection.count_nonzero(result.state.params, per_layer=True)
  assert abs(counts[0] - 600) <= 6 and abs(counts[1] - 200) <= 2, counts


def test_controller_schedule_defaults():
  # (rate, interval, exact_final_steps, ramp, debias_steps)
  assert controller.schedule_defaults(None) == (0.05, 1, 0, None, 0)
  assert controller.schedule_defaults(4690) == (1.0, 10, 200, (469, 2345), 1876)
  assert controller.schedule_defaults(100) == (1.0, 10, 5, (10, 50), 40)
  assert controller.schedule_defaults(3) == (1.0, 10, 1, (0, 2), 1)
  assert controller.schedule_defaults(1000, rate=0.3, interval=2, exact_final_steps=7, ramp=None,
                                      debias_steps=0) == (0.3, 2, 7, None, 0)
  assert controller.schedule_defaults(1000, ramp=(5, 9))[3] == (5, 9)


def test_controller_schedule_validation():
  with pytest.raises(ValueError, match=r"ramp must be \(begin_step, end_step\), 'auto' or None; got 'cubic'"):
    controller.nnz_controller("l1", 10, 0.1, total_steps=100, ramp="cubic")
  with pytest.raises(ValueError, match=r"ramp must be \(begin_step, end_step\) with 0 <= begin_step <= end_step"):
    controller.nnz_controller("l1", 10, 0.1, ramp=(9, 5))
  with pytest.raises(ValueError, match=r"debias_steps=50 needs total_steps >= exact_final_steps \+ debias_steps"):
    controller.nnz_controller("l1", 10, 0.1, debias_steps=50)
  with pytest.raises(ValueError, match=r"exact_final_steps=20 and debias_steps=90 need total_steps .* "
                                       r"here at least 110\); got total_steps=100"):
    controller.nnz_controller("l1", 10, 0.1, total_steps=100, exact_final_steps=20, debias_steps=90)
  with pytest.raises(ValueError, match=r"total_steps must be an int >= 1; got total_steps=0"):
    controller.nnz_controller("l1", 10, 0.1, total_steps=0)
  with pytest.raises(ValueError, match=r"debias_steps must be an int >= 0; got debias_steps=-1"):
    controller.nnz_controller("l1", 10, 0.1, total_steps=100, debias_steps=-1)


def _quadratic_run(tx, params, target_w, steps):
  """Momentum-free steps on 0.5 ||w - target_w||^2; returns params and states after each step."""
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.tree.map(lambda w, t: w - t, p, target_w), s, p))
  history = []
  for _ in range(steps):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    history.append((params, state))
  return history


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_controller_refit_phase_freezes_the_support_and_does_not_shrink():
  rng = np.random.default_rng(0)
  target_w = {"w": jnp.asarray(rng.normal(size=(30, 20)), jnp.float32), "b": jnp.zeros(20, jnp.float32)}
  params = jax.tree.map(lambda t: 0.1 * t, target_w)
  lr, total, refit, target = 0.2, 60, 20, 50
  tx = optax.chain(optax.sgd(lr), controller.nnz_controller("l1", target, lr, total_steps=total,
                                                           debias_steps=refit))
  history = _quadratic_run(tx, params, target_w, total)
  frozen_at = total - refit  # the first refit step starts from history[frozen_at - 1]
  support = np.asarray(history[frozen_at - 1][0]["w"]) != 0
  assert support.sum() == target and float(history[frozen_at - 1][1][1].nnz) == target
  # the exact phase chose the target largest |w| of the quadratic's minimiser (l1 keeps the order)
  largest = np.argsort(-np.abs(np.asarray(target_w["w"])).ravel())[:target]
  assert set(np.flatnonzero(support.ravel())) == set(largest)
  for t in range(frozen_at, total):
    before, after = np.asarray(history[t - 1][0]["w"]), np.asarray(history[t][0]["w"])
    np.testing.assert_array_equal(after != 0, support)
    # no shrinkage: exactly the optimizer's step w - lr (w - w*) on the support, 0 elsewhere
    expected = np.where(support, before - lr * (before - np.asarray(target_w["w"])), 0.0)
    np.testing.assert_allclose(after, expected, rtol=1e-6, atol=1e-7)
    assert float(history[t][1][1].nnz) == target
  # after the refit the survivors sit on the unpenalised minimiser (within (1 - lr)^refit of the gap)
  final = np.asarray(history[-1][0]["w"])
  np.testing.assert_allclose(final[support], np.asarray(target_w["w"])[support], atol=0.8 ** refit * 5)
  # without the refit, l1 at the same target leaves every survivor shrunk
  plain = optax.chain(optax.sgd(lr), controller.nnz_controller("l1", target, lr, total_steps=total, debias_steps=0))
  shrunk = np.asarray(_quadratic_run(plain, params, target_w, total)[-1][0]["w"])
  kept = shrunk != 0
  assert np.all(np.abs(shrunk[kept]) < np.abs(np.asarray(target_w["w"])[kept]) - 1e-3)


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_controller_scheduled_defaults_beat_a_target_from_step_zero(tmp_path):
  """At 90 % sparsity, total_steps (ramp + exact phase + refit) beats a target held from step 0, and ends on it."""
  (x, y), test = data.load("digits", "train"), data.load("digits", "test")
  epochs, batch, lr = 8, 64, 0.05
  steps = pruning.schedule_total_steps(epochs, len(x), batch)
  target = 474  # 10 % of the 4736 kernel weights of MLP 64-64-10
  accuracy, counts = {}, {}
  for name, kwargs in (("scheduled", {"total_steps": steps}), ("from_step_0", {})):
    adapt = controller.nnz_controller("l1", target, lr, **kwargs)
    result = train.fit(MLP((64, 10)), optax.chain(optax.sgd(lr, momentum=0.9), adapt), (x, y), test,
                       train.TrainConfig(epochs=epochs, batch_size=batch, progress=False, checkpoint=False),
                       str(tmp_path / name), report_fn=lambda p: {})
    accuracy[name] = result.history[-1]["eval_accuracy"]
    counts[name] = selection.count_nonzero(result.state.params)
  assert counts["scheduled"] == target, counts
  assert accuracy["scheduled"] > accuracy["from_step_0"] + 0.03, accuracy  # 4 points measured (92.4 vs 88.4)
  assert accuracy["scheduled"] > 0.85, accuracy


@pytest.mark.float64  # compares to float64 references at tight tolerances
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_blocked_sum_counts_and_sums_every_element_once(dtype, monkeypatch):
  # blocks of 16 over 1000 elements: 62 full blocks and a remainder of 8 (the loop is
  # forced on: the suite runs 2 CPU devices, where it is off)
  monkeypatch.setattr(magnitudes, "_SUM_BLOCK", 16)
  monkeypatch.setattr(magnitudes, "_blocks_help", lambda: True)
  rng = np.random.default_rng(7)
  p, u = (jnp.asarray(rng.normal(size=(40, 25)), dtype) for _ in range(2))
  v = np.asarray(p, np.float64) + np.asarray(u, np.float64)
  count = jax.jit(lambda p, u, t: magnitudes.blocked_sum(lambda a, b: jnp.abs(a + b) >= t, p, u))(p, u, 0.7)
  assert int(count) == int(np.count_nonzero(np.abs(np.asarray(p + u)) >= 0.7))
  total = magnitudes.blocked_sum(lambda a, b: a + b, p, u, dtype=dtype)
  np.testing.assert_allclose(float(total), v.sum(), rtol=1e-5 if dtype == jnp.float32 else 1e-12, atol=1e-4)
  small = jnp.arange(20.0)  # under two blocks: one plain sum
  assert int(magnitudes.blocked_sum(lambda a: a > 4.5, small)) == 15
  with pytest.raises(ValueError, match="one shape"):
    magnitudes.blocked_sum(lambda a, b: a > b, p, u[:3])


@pytest.mark.parametrize("rolled", [True, False], ids=["rolled", "unrolled"])
def test_kth_largest_magnitude_of_pairs_is_that_of_their_sums(rolled, monkeypatch):
  # (p, u) leaves stand for p + u; the unrolled passes count them in blocks of 8
  monkeypatch.setattr(magnitudes, "_ROLLED_MAX_ELEMENTS", 1 << 30 if rolled else 0)
  monkeypatch.setattr(magnitudes, "_SUM_BLOCK", 8)
  monkeypatch.setattr(magnitudes, "_blocks_help", lambda: True)
  rng = np.random.default_rng(2)
  ps = [jnp.asarray(rng.normal(size=(13, 7)), jnp.float32), jnp.asarray(rng.normal(size=45), jnp.float32)]
  us = [jnp.asarray(rng.normal(size=(13, 7)), jnp.float32), jnp.asarray(np.round(rng.normal(size=45)), jnp.float32)]
  sums = [p + u for p, u in zip(ps, us)]
  values = np.sort(np.abs(np.concatenate([np.asarray(s).ravel() for s in sums])))[::-1]
  f = jax.jit(magnitudes.kth_largest_magnitude)
  for k in [1, 5, 60, 135, values.size]:
    assert float(f(list(zip(ps, us)), k)) == float(f(sums, k)) == values[k - 1], k


def test_selection_on_sharded_weights_sums_each_shard_in_place():
  """With several devices the counts are single reductions: XLA sums each shard where it
  lies and all-reduces the counts; a blocked loop over the flattened weights would
  gather them onto every device."""
  if jax.device_count() < 2:
    pytest.skip("needs 2 devices (the suite's conftest sets 2 CPU devices)")
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:2]), ("fsdp",))
  for spec in (jax.sharding.PartitionSpec("fsdp", None), jax.sharding.PartitionSpec(None, "fsdp")):
    sharding = jax.sharding.NamedSharding(mesh, spec)
    p = jax.device_put(jnp.asarray(np.random.default_rng(0).normal(size=(1024, 1100)), jnp.float32), sharding)
    u = jax.device_put(jnp.full((1024, 1100), 0.01, jnp.float32), sharding)  # 1.1M weights: the unrolled passes
    select = jax.jit(lambda p, u: magnitudes.kth_largest_magnitude([(p, u)], 5000))
    assert "all-gather" not in select.lower(p, u).compile().as_text()
    expected = np.sort(np.abs(np.asarray(p) + np.asarray(u)).ravel())[::-1][4999]
    assert float(select(p, u)) == expected


def test_schedule_and_mask_helpers_reject_bad_arguments():
  params = {"a": {"kernel": jnp.arange(12.0).reshape(3, 4) - 5.0, "bias": jnp.ones(4)}}
  with pytest.raises(ValueError, match=r"end_step must be an int >= begin_step=10; got end_step=5"):
    pruning.cubic_sparsity(5, 0.9, 10, 5)
  with pytest.raises(ValueError, match=r"target_sparsity must satisfy 0.0 <= target_sparsity <= 1.0"):
    pruning.cubic_sparsity(5, 1.5, 0, 10)
  with pytest.raises(ValueError, match=r"batch_size must be an int >= 1; got batch_size=0"):
    pruning.schedule_total_steps(2, 100, 0)
  with pytest.raises(ValueError, match=r"epochs must be an int >= 1"):
    pruning.schedule_total_steps(0.5, 100, 10)
  with pytest.raises(ValueError, match=r"k must be a whole number of weights >= 1"):
    magnitudes.kth_largest_magnitude([params["a"]["kernel"]], 0)   # used to return the largest |w|
  with pytest.raises(ValueError, match=r"k must be a whole number"):
    magnitudes.kth_largest_magnitude([params["a"]["kernel"]], 2.5)  # used to be truncated to 2
  transposed = {"a": {"kernel": jnp.ones((4, 3), bool), "bias": jnp.ones(4, bool)}}
  with pytest.raises(ValueError, match=r"binary_mask has a leaf of shape \(4, 3\) where params has shape \(3, 4\)"):
    pruning.apply_mask(params, transposed)
  # the helpers still work where the arguments are right (and k may be traced under jit)
  assert float(magnitudes.kth_largest_magnitude([params["a"]["kernel"]], 2)) == 5.0
  assert float(jax.jit(lambda k: magnitudes.kth_largest_magnitude([params["a"]["kernel"]], k))(2)) == 5.0
  assert pruning.schedule_total_steps(2, 100, 32) == 8
  assert float(pruning.cubic_sparsity(10, 0.9, 0, 10)) == pytest.approx(0.9)
