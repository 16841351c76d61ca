"""Tests of `sparsejax.transforms`: exact proximal steps inside optax chains."""


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import masking, optimizers, prox, registry, transforms


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "Dense_0": {"kernel": jnp.asarray(rng.normal(0, 0.3, (6, 5))), "bias": jnp.asarray(rng.normal(0, 0.3, 5))},
      "Dense_1": {"kernel": jnp.asarray(rng.normal(0, 0.3, (5, 4))), "bias": jnp.asarray(rng.normal(0, 0.3, 4))},
  }


def _grads(seed=1):
  return jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(seed).normal(0, 1, p.shape)), _params())


def _step(tx, params, grads, state=None):
  state = tx.init(params) if state is None else state
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


@pytest.mark.parametrize("name,kw", [("l1", {}), ("tl1", {"a": 0.5}), ("l0", {}), ("log_sum", {"eps": 0.1}),
                                     ("scad", {"lam": 0.5}), ("group_lasso", {}), ("exclusive", {})])
@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_sgd_step_equals_prox_of_gradient_step(name, kw):
  params, grads, lr, lam = _params(), _grads(), 0.1, 0.7
  tx = optax.chain(optax.sgd(lr), transforms.proximal(name, lam, lr, mask=masking.weights_only, **kw))
  new, _ = jax.jit(lambda p, g: _step(tx, p, g))(params, grads)
  for layer in params:
    expected = prox.get(name)(params[layer]["kernel"] - lr * grads[layer]["kernel"], lr * lam, **kw)
    np.testing.assert_allclose(new[layer]["kernel"], expected, rtol=1e-14, atol=1e-15)
    np.testing.assert_array_equal(np.asarray(new[layer]["kernel"]) == 0, np.asarray(expected) == 0)
    # Masked leaves (biases) get the plain SGD step.
    np.testing.assert_allclose(new[layer]["bias"], params[layer]["bias"] - lr * grads[layer]["bias"], rtol=1e-15)


def test_l1_proximal_gradient_worked_example():
  params = {"w": jnp.asarray([[0.5, -0.001, 0.02]])}
  grads = {"w": jnp.asarray([[0.1, 0.05, -0.3]])}
  new, _ = _step(optax.chain(optax.sgd(0.1), transforms.l1(0.2, 0.1)), params, grads)
  np.testing.assert_allclose(new["w"], [[0.47, 0.0, 0.03]], atol=1e-12)
  assert float(new["w"][0, 1]) == 0.0


def test_schedules_for_learning_rate_and_strength():
  lr_schedule = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
  strength_schedule = optax.linear_schedule(1.0, 3.0, transition_steps=2)
  tx = optax.chain(optax.sgd(lr_schedule), transforms.proximal(prox.l1, strength_schedule, lr_schedule))
  params, grads = {"w": jnp.linspace(-1, 1, 9).reshape(3, 3)}, {"w": jnp.full((3, 3), 0.2)}
  state = tx.init(params)
  for k in range(3):
    lr, lam = float(lr_schedule(k)), float(strength_schedule(k))
    expected = prox.l1(params["w"] - lr * grads["w"], lr * lam)
    params, state = _step(tx, params, grads, state)
    np.testing.assert_allclose(params["w"], expected, atol=1e-8)  # optax schedules are float32


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_per_layer_strength_pytree_and_none_leaves():
  params, grads, lr = _params(), _grads(), 0.1
  strength = {"Dense_0": {"kernel": 2.0, "bias": None}, "Dense_1": {"kernel": optax.constant_schedule(0.5), "bias": None}}
  new, _ = _step(optax.chain(optax.sgd(lr), transforms.proximal(prox.l1, strength, lr)), params, grads)
  np.testing.assert_allclose(new["Dense_0"]["kernel"], prox.l1(params["Dense_0"]["kernel"] - lr * grads["Dense_0"]["kernel"], 0.2))
  np.testing.assert_allclose(new["Dense_1"]["kernel"], prox.l1(params["Dense_1"]["kernel"] - lr * grads["Dense_1"]["kernel"], 0.05))
  np.testing.assert_allclose(new["Dense_1"]["bias"], params["Dense_1"]["bias"] - lr * grads["Dense_1"]["bias"])


def test_errors():
  with pytest.raises(ValueError, match=r"strength must satisfy 0.0 <= strength < inf; got strength=-1.0"):
    transforms.l1(-1.0, 0.1)
  with pytest.raises(ValueError, match=r"learning_rate must satisfy"):
    transforms.l1(1.0, -0.1)
  # An infinite strength or learning rate would zero (or blow up) every weight without an error.
  with pytest.raises(ValueError, match=r"strength must satisfy 0.0 <= strength < inf; got strength=inf"):
    transforms.proximal("tl1", float("inf"), 0.1)
  with pytest.raises(ValueError, match=r"learning_rate must satisfy 0.0 <= learning_rate < inf; got learning_rate=inf"):
    transforms.l1(1e-3, float("inf"))
  with pytest.raises(ValueError, match=r"strength must satisfy .* < inf; got strength=inf"):
    optimizers.sgd(0.1, penalty="l1", strength=float("inf"))
  with pytest.raises(ValueError, match=r"a must satisfy 0.0 < a"):
    transforms.proximal("tl1", 1.0, 0.1, a=0.0)
  with pytest.raises(ValueError, match=r"a must satisfy 0.0 < a"):
    transforms.integrated_tl1(1.0, 0.1, a=-2.0)
  with pytest.raises(ValueError, match=r"unknown penalty 'tl2'"):
    transforms.proximal("tl2", 1.0, 0.1)
  with pytest.raises(ValueError, match=r"axis=5 is out of range"):
    transforms.proximal("group_lasso", 1.0, 0.1, axis=5).init({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match=r"m must satisfy 0.0 <= m <= 0.5"):
    transforms.cges(1.0, 0.1, m=0.7)
  tx = transforms.proximal(prox.l1, {"a": 1.0, "b": 2.0}, 0.1)
  with pytest.raises(ValueError, match=r"strength is a pytree whose structure does not match params"):
    tx.init({"a": jnp.ones(2), "c": jnp.ones(2)})
  tx = transforms.l1(1.0, 0.1)
  with pytest.raises(ValueError, match=r"needs params"):
    tx.update({"w": jnp.ones((2, 2))}, tx.init({"w": jnp.ones((2, 2))}))
  with pytest.raises(ValueError, match=r"layer_scale has 3 entries but params have 2"):
    transforms.integrated_tl1(1.0, 0.1, layer_scale=[1, 1, 1]).init(_params())


def test_layer_index_is_natural_order():
  params = {f"Dense_{i}": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)} for i in (0, 1, 2, 10)}
  params["Conv_0"] = {"kernel": jnp.ones((3, 3, 1, 2)), "bias": jnp.ones(2)}
  index, num = masking.layer_index(params)
  assert num == 5
  assert index["Conv_0"]["kernel"] == 1 and index["Dense_0"]["kernel"] == 2
  assert index["Dense_2"]["kernel"] == 4 and index["Dense_10"]["kernel"] == 5
  assert index["Dense_1"]["bias"] is None
  np.testing.assert_allclose(transforms.layer_balance(4, 0.2), [0.2, 0.4, 0.6, 0.8])


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_integrated_tl1_step_matches_manual_splitting_and_worked_example():
  lr, lam, a = 0.1, 0.5, 1.0
  w0 = jnp.asarray([[0.30, -0.02, 0.10], [0.01, 0.02, -0.01]])
  params = {"Dense_0": {"kernel": w0, "bias": jnp.zeros(3)},
            "Dense_1": {"kernel": jnp.asarray(np.random.default_rng(2).normal(0, 0.3, (3, 4))), "bias": jnp.zeros(4)}}
  zeros = jax.tree.map(jnp.zeros_like, params)
  tx = optax.chain(optax.sgd(lr), transforms.integrated_tl1(lam, lr, a=a, m=0.2))
  new, _ = _step(tx, params, zeros)
  # Layer 1 has mu = m = 0.2: the paper's worked example.
  np.testing.assert_allclose(new["Dense_0"]["kernel"], [[0.249314, 0, 0.069904], [0, 0, 0]], atol=1e-6)
  # Layer 2 (top) has mu = 1 - m = 0.8.
  w1 = params["Dense_1"]["kernel"]
  manual = prox.tl1(prox.group_lasso(w1, lr * lam * 0.2), lr * lam * 0.8, a=a)
  np.testing.assert_allclose(new["Dense_1"]["kernel"], manual, atol=1e-14)
  # The reverse order is a documented option.
  tx_rev = optax.chain(optax.sgd(lr), transforms.integrated_tl1(lam, lr, a=a, m=0.2, order=("tl1", "group")))
  new_rev, _ = _step(tx_rev, params, zeros)
  np.testing.assert_allclose(new_rev["Dense_1"]["kernel"],
                             prox.group_lasso(prox.tl1(w1, lr * lam * 0.8, a=a), lr * lam * 0.2), atol=1e-14)


@pytest.mark.float64  # compares to float64 references at tight tolerances
def test_cges_and_sparse_group_lasso_steps():
  params, grads, lr, lam = _params(), _grads(), 0.1, 0.8
  new, _ = _step(optax.chain(optax.sgd(lr), transforms.cges(lam, lr, m=0.2, group_scale=[1.0, 0.5],
                                                            exclusive_scale=[1.0, 2.0])), params, grads)
  for layer, mu, g, e in (("Dense_0", 0.2, 1.0, 1.0), ("Dense_1", 0.8, 0.5, 2.0)):
    v = params[layer]["kernel"] - lr * grads[layer]["kernel"]
    manual = prox.cges_exclusive(prox.group_lasso(v, lr * lam * (1 - mu) * g), lr * lam * mu * e)
    np.testing.assert_allclose(new[layer]["kernel"], manual, atol=1e-14)
  new, _ = _step(optax.chain(optax.sgd(lr), transforms.sparse_group_lasso(0.3, 0.4, lr)), params, grads)
  for layer in params:
    v = params[layer]["kernel"] - lr * grads[layer]["kernel"]
    expected = prox.sparse_group_lasso(v, lr * 0.4, l1=0.3 / 0.4, scale_by_group_size=True)
    np.testing.assert_allclose(new[layer]["kernel"], expected, atol=1e-14)


def test_with_adam_lands_on_prox_of_adam_step():
  params, grads, lr = _params(), _grads(), 1e-2
  adam = optax.adam(lr)
  u_adam, _ = adam.update(grads, adam.init(params), params)
  new, _ = _step(optax.chain(optax.adam(lr), transforms.proximal(prox.tl1, 3.0, lr, a=0.5)), params, grads)
  expected = prox.tl1(optax.apply_updates(params, u_adam), lr * 3.0, a=0.5)
  for got, want in zip(jax.tree.leaves(new), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, atol=1e-14)


def test_works_with_flax_nnx_optimizer():
  model = nnx.Sequential(nnx.Linear(8, 6, rngs=nnx.Rngs(0)), nnx.relu, nnx.Linear(6, 3, rngs=nnx.Rngs(1)))
  lr = 0.5
  tx = optax.chain(optax.sgd(lr), transforms.integrated_tl1(0.5, lr, a=0.1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  x, y = jnp.ones((4, 8)), jnp.zeros((4, 3))
  kernel_before = model.layers[2].kernel[...]

  def loss_fn(m):
    return jnp.mean((m(x) - y) ** 2)

  grads = nnx.grad(loss_fn)(model)
  g_kernel = grads["layers"][2]["kernel"][...]
  optimizer.update(model, grads)
  expected = prox.tl1(prox.group_lasso(kernel_before - lr * g_kernel, lr * 0.5 * 0.2), lr * 0.5 * 0.8, a=0.1)
  np.testing.assert_allclose(model.layers[2].kernel[...], expected, rtol=1e-6, atol=1e-7)
  assert int(jnp.sum(model.layers[0].kernel[...] == 0)) > 0


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_l1_proximal_gradient_matches_sklearn_saga_on_digits():
  """Full-batch prox-GD on multinomial logistic regression reaches sklearn's objective (1e-3 rel)."""
  from sklearn.datasets import load_digits
  from sklearn.linear_model import LogisticRegression
  from sklearn.preprocessing import StandardScaler

  x, y = load_digits(return_X_y=True)
  x = StandardScaler().fit_transform(x)
  n, d = x.shape
  c = 0.02
  lam = 1.0 / (c * n)  # sklearn: C * sum(loss) + ||W||_1  <=>  mean(loss) + lam ||W||_1
  clf = LogisticRegression(C=c, l1_ratio=1.0, solver="saga", tol=1e-10, max_iter=20_000, random_state=0).fit(x, y)

  xj, yj = jnp.asarray(x), jax.nn.one_hot(y, 10)

  def objective(params):
    logits = xj @ params["kernel"] + params["bias"]
    return jnp.mean(optax.softmax_cross_entropy(logits, yj)) + lam * jnp.sum(jnp.abs(params["kernel"]))

  sk_params = {"kernel": jnp.asarray(clf.coef_.T), "bias": jnp.asarray(clf.intercept_)}
  lipschitz = 0.5 * np.linalg.norm(x, 2) ** 2 / n
  lr = 1.0 / lipschitz
  tx = optax.chain(optax.sgd(lr), transforms.l1(lam, lr))
  params = {"kernel": jnp.zeros((d, 10)), "bias": jnp.zeros(10)}
  smooth = lambda p: jnp.mean(optax.softmax_cross_entropy(xj @ p["kernel"] + p["bias"], yj))  # noqa: E731

  @jax.jit
  def run(params, state):
    def body(carry, _):
      p, s = carry
      updates, s = tx.update(jax.grad(smooth)(p), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(body, (params, state), None, length=5000)[0]

  params, state = run(params, tx.init(params))
  ours, theirs = float(objective(params)), float(objective(sk_params))
  assert abs(ours - theirs) <= 1e-3 * theirs, (ours, theirs)
  sparsity = float(jnp.mean(params["kernel"] == 0))
  assert 0.2 < sparsity < 0.95, sparsity  # a genuinely sparse solution, exact zeros


class _MixedPrecisionMLP(nn.Module):
  """bf16 compute; parameters in `param_dtype`."""
  param_dtype: object = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Dense(32, dtype=jnp.bfloat16, param_dtype=self.param_dtype)(x))
    return nn.Dense(4, dtype=jnp.bfloat16, param_dtype=self.param_dtype)(x).astype(jnp.float32)


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.parametrize("param_dtype", [jnp.float32, jnp.bfloat16], ids=["bf16_compute", "bf16_params"])
def test_mixed_precision_training_through_every_prox(param_dtype):
  """Every registered penalty, in a jitted training step with bf16 compute (float32 or bf16 params):
  the params keep their dtype, stay finite, and the prox leaves exact zeros."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(64, 16)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 4, 64))
  model = _MixedPrecisionMLP(param_dtype)
  params0 = model.init(jax.random.PRNGKey(0), x)["params"]

  def loss(p):
    return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

  for name in registry.names():
    record = registry.get(name)
    kw = dict(record.examples[0]) if record.examples else {}
    strength = 5.0 if record.grouped else (0.2 if name in ("l1", "elastic_net", "capped_l1", "mcp", "scad")
                                           else 0.02)
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), transforms.proximal(name, strength, 0.1, **kw))

    @jax.jit
    def step(p, s):
      updates, s = tx.update(jax.grad(loss)(p), s, p)
      return optax.apply_updates(p, updates), s

    params, state = params0, tx.init(params0)
    for _ in range(5):
      params, state = step(params, state)
    kernels = [params["Dense_0"]["kernel"], params["Dense_1"]["kernel"]]
    for leaf in jax.tree.leaves(params):
      assert leaf.dtype == param_dtype, (name, leaf.dtype)
      assert bool(jnp.all(jnp.isfinite(leaf))), name
    assert sum(int(jnp.sum(k == 0)) for k in kernels) > 0, name
