"""Tests of `sparsejax.selection`: the bracket/median rule, target hitting, controller."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import controller, data, magnitudes, prox, pruning, selection, transforms
from sparsejax.models import MLP


def test_math_worked_example_lower_median():
  history = [(1e-2, 100), (1e-7, 5000)]  # bracket (1e-7, 1e-2) for a target in between
  g = np.array([5e-8, 2e-5, 3e-4, 4e-3, 2e-2, 0.5, 6e-3])
  assert selection.bracket(history, 2000) == (1e-7, 1e-2)
  assert selection.next_strength(history, 2000, g) == pytest.approx(3e-4)
  assert float(np.median(g[(g > 1e-7) & (g < 1e-2)])) == pytest.approx(2.15e-3)  # numpy's median differs


def test_bracket_rules_on_hand_histories():
  # Smallest NNZ >= target is 300 (reached by 0.1 and 0.2): low = the largest, 0.2.
  # Largest NNZ <= target is 150 (reached by 0.5 and 0.4): up = the smallest, 0.4.
  history = [(0.01, 900), (0.1, 300), (0.2, 300), (0.4, 150), (0.5, 150), (1.0, 10)]
  assert selection.bracket(history, 200) == (0.2, 0.4)
  assert selection.bracket([(0.1, 500)], 200) == (0.1, math.inf)
  assert selection.bracket([(0.1, 50)], 200) == (0.0, 0.1)
  assert selection.next_strength([(0.1, 500), (0.3, 50)], 200, np.array([1.0, 2.0])) == pytest.approx(0.2)
  assert selection.next_strength([(0.1, 500)], 200, np.array([0.05, 0.1000001])) == pytest.approx(1.0)  # open: x10
  # A candidate equal to a tried lambda falls back to the midpoint.
  assert selection.next_strength([(0.1, 500), (0.3, 50)], 200, np.array([0.1 * (1 + 1e-12)])) == pytest.approx(0.2)


def _lasso_problem(seed=0, n=200, d=60, informative=15):
  rng = np.random.default_rng(seed)
  x = rng.normal(0, 1, (n, d))
  w = np.zeros(d)
  w[:informative] = rng.normal(0, 2, informative)
  y = x @ w + 0.1 * rng.normal(0, 1, n)
  return jnp.asarray(x), jnp.asarray(y)


def _make_lasso_train_fn(x, y, steps=3000):
  lr = 1.0 / float(jnp.linalg.norm(x, 2) ** 2 / x.shape[0])

  def loss(params):
    return 0.5 * jnp.mean((x @ params["kernel"][:, 0] - y) ** 2)

  @jax.jit
  def solve(strength):
    params = {"kernel": jnp.zeros((x.shape[1], 1))}
    def body(p, _):
      g = jax.grad(loss)(p)
      return {"kernel": prox.l1(p["kernel"] - lr * g["kernel"], lr * strength)}, None
    return jax.lax.scan(body, params, None, length=steps)[0]

  def train_fn(strength):
    params = solve(strength)
    return selection.TrainOutcome(params, selection.count_nonzero(params),
                                  selection.gradient_magnitudes(loss, params), {"loss": float(loss(params))})

  return train_fn


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_single_strength_reaches_target_in_few_trainings(tmp_path):
  x, y = _lasso_problem()
  path = str(tmp_path / "history.jsonl")
  result = selection.select_strength(_make_lasso_train_fn(x, y), target_nnz=10, r=0.05, history_path=path)
  assert result.converged and result.nnz == 10
  assert result.trainings <= 12
  with open(path) as f:
    lines = [json.loads(l) for l in f]
  assert len(lines) == result.trainings and lines[-1]["nnz"] == 10
  assert [h["strength"] for h in result.history[:2]] == [1e-3, 1e-7]


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_layer_strengths_meet_every_layer_target():
  x, y = data.mackey_glass(400)
  x, y = jnp.asarray(x), jnp.asarray(y)
  model = MLP((24, 16, 1))
  init = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  lr = 0.05

  def loss(p):
    return jnp.mean((model.apply({"params": p}, x) - y) ** 2)

  @jax.jit
  def solve(strengths):
    tx = optax.chain(optax.sgd(lr), transforms.proximal(prox.l1, {
        "Dense_0": {"kernel": strengths[0], "bias": None}, "Dense_1": {"kernel": strengths[1], "bias": None},
        "Dense_2": {"kernel": strengths[2], "bias": None}}, lr))
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.lax.scan(body, (init, tx.init(init)), None, length=1500)[0][0]

  def train_fn(strengths):
    params = solve(jnp.asarray(strengths))
    return selection.TrainOutcome(params, selection.count_nonzero(params, per_layer=True),
                                  selection.gradient_magnitudes(loss, params, per_layer=True))

  targets = [60, 150, 10]
  result = selection.select_layer_strengths(train_fn, targets, r=0.1, max_trainings=40)
  assert result.converged, result.history[-1]
  for n, t in zip(result.nnz, targets):
    assert abs(n - t) <= 0.1 * t


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_threshold_inverse():
  g = np.array([1e-4, 3e-3, 0.2])
  np.testing.assert_allclose(selection.threshold_inverse("l1", 0.1)(g), g, rtol=1e-9)
  lam = selection.threshold_inverse("tl1", 0.1, a=0.5)(g)
  np.testing.assert_allclose(np.asarray(prox.tl1.threshold(0.1 * lam, a=0.5)), 0.1 * g, rtol=1e-9)
  with pytest.raises(ValueError, match="no scalar zero threshold"):
    selection.threshold_inverse("exclusive", 0.1)


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_controller_meets_target_in_one_run():
  (x, y), _ = data.load("digits", "train"), None
  x = jnp.asarray(x.reshape(len(x), -1))
  y = jnp.asarray(y)
  model = MLP((64, 10))
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  lr, target = 0.1, 800

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  # started far below the strength that meets the target, so the test sees it adapt
  tx = optax.chain(optax.sgd(lr), controller.nnz_controller("l1", target, lr, initial_strength=1e-6, rate=0.02))

  @jax.jit
  def run(p, s):
    def body(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), jnp.exp(s[1].log_strength)
    return jax.lax.scan(body, (p, s), None, length=3000)

  (params, state), strengths = run(params, tx.init(params))
  nnz = selection.count_nonzero(params)
  assert abs(nnz - target) <= 0.05 * target, nnz
  assert float(state[1].nnz) == nnz
  acc = float(jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y))
  assert acc > 0.9
  assert np.isfinite(float(strengths[-1])) and abs(math.log(float(strengths[-1]) / 1e-6)) > math.log(2)  # adapted


def test_bad_input_and_nan_keep_history(tmp_path):
  x, y = _lasso_problem()
  train_fn = _make_lasso_train_fn(x, y, steps=200)
  with pytest.raises(ValueError, match=r"r must satisfy 0.0 < r < 1.0; got r=1.5"):
    selection.select_strength(train_fn, 10, r=1.5)
  with pytest.raises(ValueError, match=r"target_nnz=500 exceeds the 60 regularised weights"):
    selection.select_strength(train_fn, 500, r=0.1)
  with pytest.raises(ValueError, match=r"target_nnz must be a whole number of weights >= 1"):
    selection.select_strength(train_fn, 0, r=0.1)
  with pytest.raises(ValueError, match=r"a count, not a fraction\); got target_nnz=0.95"):
    selection.select_strength(train_fn, 0.95, r=0.1)   # a sparsity passed as the count
  calls = []

  def flaky(strength):
    calls.append(strength)
    outcome = train_fn(strength)
    if len(calls) == 3:
      return outcome._replace(extras={"loss": float("nan")})
    return outcome

  path = str(tmp_path / "h.jsonl")
  with pytest.raises(selection.SelectionError, match=r"training 3 .* non-finite") as err:
    selection.select_strength(flaky, 10, r=0.01, history_path=path)
  assert len(err.value.history) == 3
  with open(path) as f:
    assert len(f.readlines()) == 3
  with pytest.raises(ValueError, match=r"target_nnz=10000 must be below the 100 regularised weights"):
    controller.nnz_controller("l1", 10_000, 0.1).init({"w": jnp.ones((10, 10))})
  with pytest.raises(ValueError, match=r"no scalar zero threshold"):
    controller.nnz_controller("exclusive", 10, 0.1)


def test_controller_with_tl1_tracks_the_quantile_exactly_at_rate_one():
  params = {"w": jnp.asarray(np.random.default_rng(0).normal(0, 1, (20, 10)))}
  tx = controller.nnz_controller("tl1", 37, 0.1, rate=1.0, a=0.5)
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  assert int(jnp.count_nonzero(new["w"])) == 37 and float(state.nnz) == 37


def _random_layers(seed=0):
  rng = np.random.default_rng(seed)
  params = {"a": {"kernel": jnp.asarray(rng.standard_normal((40, 30)), jnp.float32), "bias": jnp.zeros(30)},
            "b": {"kernel": jnp.asarray(rng.standard_normal((30, 5)), jnp.float32), "bias": jnp.zeros(5)}}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape) * 0.1, p.dtype), params)
  return params, grads


def _mean_of_largest(values, k):
  return float(np.sort(np.abs(np.concatenate([np.ravel(v) for v in values])))[::-1][:k].mean())


@pytest.mark.parametrize("name, magnitude, relative", [("tl1", "a", 0.1), ("log_sum", "eps", 0.03),
                                                        ("mcp", "lam", 0.2), ("scad", "lam", 0.1),
                                                        ("capped_l1", "theta", 0.3)])
@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_controller_shape_follows_the_weights_when_omitted(name, magnitude, relative):
  params, grads = _random_layers()
  params = jax.tree.map(lambda p: 0.05 * p, params)  # weights far below the registry's a = eps = lam = 1
  lr, keep = 0.1, 123
  tx = controller.nnz_controller(name, keep, lr, rate=1.0)  # no shape: relative_shape=None -> True
  state = tx.init(params)
  kernels = [params["a"]["kernel"], params["b"]["kernel"]]
  assert float(state.scale) == pytest.approx(_mean_of_largest(kernels, keep), rel=1e-5)
  updates = jax.tree.map(lambda g: -lr * g, grads)
  new_updates, state = tx.update(updates, state, params)
  new = optax.apply_updates(params, new_updates)
  proposal = [params[k]["kernel"] + updates[k]["kernel"] for k in ("a", "b")]
  scale = _mean_of_largest(proposal, keep)
  assert float(state.scale) == pytest.approx(scale, rel=1e-5)
  assert sum(int(jnp.count_nonzero(new[k]["kernel"])) for k in ("a", "b")) == keep == float(state.nnz)
  # the step is the penalty's prox at the found strength with the magnitude parameter = relative x scale
  shape = {magnitude: relative * float(state.scale)}
  tau = lr * float(jnp.exp(state.log_strength))
  for k in ("a", "b"):
    expected = prox.get(name)(proposal[["a", "b"].index(k)], tau, **shape)
    np.testing.assert_allclose(np.asarray(new[k]["kernel"]), np.asarray(expected), rtol=1e-5, atol=1e-7)
  # the weakest survivor is above the cut and the strongest removed weight is at or below it
  threshold = float(prox.get(name).threshold(tau, **shape))
  magnitudes = np.abs(np.concatenate([np.ravel(v) for v in proposal]))
  survivors = np.concatenate([np.ravel(new[k]["kernel"]) for k in ("a", "b")]) != 0
  assert magnitudes[survivors].min() > threshold >= magnitudes[~survivors].max()


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.parametrize("name", ["tl1", "log_sum", "mcp"])
def test_relative_shape_makes_the_controller_step_scale_equivariant(name):
  # With the shape tied to the weights' scale, scaling weights and updates by c scales
  # the step's output by c (powers of two: the same weights cross the cut).
  params, grads = _random_layers(1)
  updates = jax.tree.map(lambda g: -0.1 * g, grads)

  def step(c, relative_shape, **shape):
    tx = controller.nnz_controller(name, 200, 0.1, rate=1.0, relative_shape=relative_shape, **shape)
    p, u = jax.tree.map(lambda v: c * v, params), jax.tree.map(lambda v: c * v, updates)
    new_u, _ = tx.update(u, tx.init(p), p)
    return optax.apply_updates(p, new_u)

  base = step(1.0, None)
  for c in (0.125, 8.0):
    scaled = step(c, None)
    for k in ("a", "b"):
      np.testing.assert_allclose(np.asarray(scaled[k]["kernel"]) / c, np.asarray(base[k]["kernel"]), rtol=2e-5,
                                 atol=1e-6)
  # a fixed shape is not: the registry's magnitude 1 is l1-like on small weights, l0-like on large ones
  magnitude = {"tl1": "a", "log_sum": "eps", "mcp": "lam"}[name]
  fixed_small, fixed_large = step(0.125, False, **{magnitude: 1.0}), step(8.0, False, **{magnitude: 1.0})
  gap = max(float(jnp.max(jnp.abs(fixed_small[k]["kernel"] / 0.125 - fixed_large[k]["kernel"] / 8.0)))
            for k in ("a", "b"))
  assert gap > 1e-2


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_relative_shape_explicit_values_and_bad_inputs():
  params, grads = _random_layers()
  updates = jax.tree.map(lambda g: -0.1 * g, grads)
  # an explicit magnitude parameter is a constant (as before) unless relative_shape=True
  fixed = controller.nnz_controller("tl1", 100, 0.1, rate=1.0, a=0.5)
  explicit = controller.nnz_controller("tl1", 100, 0.1, rate=1.0, a=0.5, relative_shape=False)
  state0 = fixed.init(params)
  u1, s1 = fixed.update(updates, state0, params)
  u2, s2 = explicit.update(updates, explicit.init(params), params)
  assert float(s1.scale) == float(state0.scale)  # not measured without relative_shape
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # relative_shape=True with a given value: that value is the multiple of the scale
  rel = controller.nnz_controller("tl1", 100, 0.1, rate=1.0, a=0.5, relative_shape=True)
  _, s3 = rel.update(updates, rel.init(params), params)
  assert float(s3.scale) != float(state0.scale)
  with pytest.raises(ValueError, match=r"relative_shape=True needs .* 'l1' has none"):
    controller.nnz_controller("l1", 10, 0.1, relative_shape=True)
  with pytest.raises(ValueError, match=r"relative_shape must be True, False or None"):
    controller.nnz_controller("tl1", 10, 0.1, relative_shape="yes")
  # l1 by default: nothing to scale, the step is unchanged
  l1 = controller.nnz_controller("l1", 100, 0.1, rate=1.0)
  _, s4 = l1.update(updates, l1.init(params), params)
  assert float(s4.scale) == float(l1.init(params).scale)


def test_relative_shape_under_jit_and_inject_hyperparams():
  params, grads = _random_layers()
  updates = jax.tree.map(lambda g: -0.1 * g, grads)
  plain = controller.nnz_controller("tl1", 100, 0.1, rate=1.0)
  injected = optax.inject_hyperparams(controller.nnz_controller, static_args=("prox_fn",))(
      "tl1", 100, 0.1, rate=1.0)
  u1, s1 = jax.jit(plain.update)(updates, jax.jit(plain.init)(params), params)
  u2, s2 = jax.jit(injected.update)(updates, injected.init(params), params)
  for a, b in zip(jax.tree.leaves(u1), jax.tree.leaves(u2)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert float(s1.scale) == pytest.approx(float(s2.inner_state.scale))


def test_bisection_controller_equals_the_threshold_controller_on_l1():
  params, grads = _random_layers()
  results = []
  for tx in (controller.nnz_controller("l1", 321, 0.1, rate=1.0, interval=1),
             controller.nnz_controller_for("l1", 321, 0.1, rate=1.0, interval=1)):
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
    results.append((optax.apply_updates(params, updates), state))
  (p1, s1), (p2, s2) = results
  assert selection.count_nonzero(p1) == selection.count_nonzero(p2) == 321
  assert float(s2.log_strength) == pytest.approx(float(s1.log_strength), abs=1e-5)
  for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_bisection_controller_on_integrated_tl1_keeps_exactly_the_target_at_the_found_strength():
  params, grads = _random_layers(1)
  tx = controller.nnz_controller_for("integrated_tl1", 250, 0.1, rate=1.0, interval=1, a=0.5)
  updates, state = jax.jit(tx.update)(grads, tx.init(params), params)
  assert selection.count_nonzero(optax.apply_updates(params, updates)) == 250
  # lambda* is the smallest strength that keeps <= 250: a slightly weaker step keeps more
  strength = float(jnp.exp(state.log_strength))
  weaker = transforms.integrated_tl1(strength * (1 - 1e-3), 0.1, a=0.5)
  more, _ = weaker.update(grads, weaker.init(params), params)
  assert selection.count_nonzero(optax.apply_updates(params, more)) > 250
  # and the step at lambda* is the integrated TL1 step itself
  same = transforms.integrated_tl1(strength, 0.1, a=0.5)
  want, _ = same.update(grads, same.init(params), params)
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_bisection_controller_on_group_lasso_stops_on_a_group_boundary():
  params, grads = _random_layers(2)
  tx = controller.nnz_controller_for("group_lasso", 500, 0.1, rate=1.0, interval=1)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  nnz = selection.count_nonzero(new)
  kept_rows = [int(np.sum(np.any(np.asarray(k) != 0, axis=1))) for k in selection.weight_leaves(new)]
  assert nnz <= 500 and nnz == 30 * kept_rows[0] + 5 * kept_rows[1]   # whole rows (groups) only
  assert nnz > 500 - 30, "the largest group count at or below the target"


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_bisection_controller_run_ends_exactly_on_target_with_integrated_tl1(tmp_path):
  from sparsejax import train
  (x, y), test = data.load("digits", "train"), data.load("digits", "test")
  steps = pruning.schedule_total_steps(5, len(x), 64)
  tx = optax.chain(optax.sgd(0.05, momentum=0.9),
                   controller.nnz_controller_for("integrated_tl1", 300, 0.05, total_steps=steps, a=0.02))
  config = train.TrainConfig(epochs=5, batch_size=64, checkpoint=False, progress=False, num_devices=1)
  result = train.fit(MLP((32, 10)), tx, (x, y), test, config, str(tmp_path), report_fn=lambda p: {})
  assert selection.count_nonzero(result.state.params) == 300
  assert result.history[-1]["eval_accuracy"] > 0.5


def test_bisection_controller_bad_inputs():
  params, grads = _random_layers()
  with pytest.raises(ValueError, match="bisection_steps"):
    controller.nnz_controller_for("l1", 10, 0.1, bisection_steps=0)
  with pytest.raises(ValueError, match="transform must be a name"):
    controller.nnz_controller_for(3.0, 10, 0.1)
  with pytest.raises(ValueError, match="unknown|known"):
    controller.nnz_controller_for("no_such_penalty", 10, 0.1)
  with pytest.raises(ValueError, match="go inside make_transform"):
    controller.nnz_controller_for(lambda s: transforms.l1(s, 0.1), 10, 0.1, a=1.0)
  with pytest.raises(ValueError, match="stateless proximal step"):
    controller.nnz_controller_for(lambda s: optax.adam(s), 10, 0.1).init(params)
  with pytest.raises(ValueError, match="target_nnz"):
    controller.nnz_controller_for("l1", -1, 0.1)


@pytest.mark.parametrize("learning_rate", [-0.1, 0.0, float("nan"), float("inf")])
def test_controllers_reject_a_learning_rate_that_is_not_positive_and_finite(learning_rate):
  # The controller inverts the threshold at tau = lr * strength: lr <= 0 or NaN made it
  # run with a meaningless strength and no error.
  match = r"learning_rate must satisfy 0.0 < learning_rate < inf"
  with pytest.raises(ValueError, match=match):
    controller.nnz_controller("l1", 10, learning_rate, total_steps=100)
  with pytest.raises(ValueError, match=match):
    controller.nnz_controller_for("group_lasso", 10, learning_rate, total_steps=100)
  with pytest.raises(ValueError, match=r"initial_strength must satisfy 0.0 < initial_strength < inf"):
    controller.nnz_controller("l1", 10, 0.1, initial_strength=float("inf"), total_steps=100)


@pytest.mark.parametrize("name", ["l1", "scad"])
def test_controller_holds_no_weight_sized_buffer_but_the_update(name, monkeypatch):
  """Above 2^20 weights the selection counts p + u block by block (on one CPU device; the
  suite runs 2, so the blocked loop is forced on): XLA's memory analysis of a controller
  step shows one stored update (the conditional's operand) and no other weight-sized
  temporary (before: 3.0 and 4.0 kernel-sizes above the l1 step)."""
  monkeypatch.setattr(magnitudes, "_blocks_help", lambda: True)
  params = {"dense": {"kernel": jnp.zeros((1100, 1000), jnp.float32), "bias": jnp.zeros((1000,), jnp.float32)}}

  def temp_bytes(tx):
    def step(p, o, g):
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), params).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  plain = temp_bytes(optax.chain(optax.sgd(0.1, momentum=0.9), transforms.l1(1e-4, 0.1)))
  controlled = temp_bytes(optax.chain(optax.sgd(0.1, momentum=0.9),
                                      controller.nnz_controller(name, 50_000, 0.1, total_steps=1000)))
  assert (controlled - plain) / (1100 * 1000 * 4) < 1.5


@pytest.mark.parametrize("target", [0.95, 851.2, 0, -3, float("nan"), float("inf"), True])
def test_controllers_take_a_whole_count_not_a_fraction(target):
  """0.95 (a sparsity) or 0.05 * n used to be taken as a count: a target of 0.95 weights, no error."""
  for make in (lambda: controller.nnz_controller("l1", target, 0.1),
               lambda: controller.nnz_controller_for("group_lasso", target, 0.1)):
    with pytest.raises(ValueError, match=r"target_nnz must be a whole number of weights >= 1"):
      make()
  assert controller.nnz_controller("l1", 851.0, 0.1) is not None   # an integral float is a count
