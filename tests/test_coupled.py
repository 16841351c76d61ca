"""Coupled structured sparsity: channel groups from the jaxpr and the group lasso across leaves.

`metrics.coupled_channels` must find, for any linen or NNX model, the per-channel
vectors that act on one residual stream; `transforms.coupled_group_lasso` must be
the exact prox of the group lasso whose groups are channel c of every leaf of a
coupling (checked against the optimality conditions and against perturbations),
reduce to l1 on a singleton vector, reject bad groups by name, and, trained on a
BatchNorm ResNet, zero stream channels in all writers at once so that the compact
computation drops them.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import compaction, data, metrics, prox, transforms
from sparsejax.models import ResNet


def _prox_once(params, groups, tau):
  """The transform's step from params with zero inner updates (lr 1, strength tau)."""
  tx = transforms.coupled_group_lasso(tau, 1.0, groups)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  return optax.apply_updates(params, updates)


def _objective(x, v, groups_leaves, tau):
  value = 0.5 * sum(float(np.sum((np.asarray(x[k]) - np.asarray(v[k])) ** 2)) for k in v)
  for leaves in groups_leaves:
    squares = sum(np.sum(np.asarray(x[k]).reshape(-1, np.shape(x[k])[-1]) ** 2, axis=0) for k in leaves)
    value += tau * float(np.sum(np.sqrt(squares)))
  return value


@pytest.mark.parametrize("seed", range(6))
def test_the_step_is_the_exact_prox(seed):
  rng = np.random.default_rng(seed)
  v = {"a": jnp.asarray(rng.normal(size=(4, 5)) * rng.uniform(0.1, 2), jnp.float32),
       "b": jnp.asarray(rng.normal(size=5), jnp.float32),
       "c": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
       "free": jnp.asarray(rng.normal(size=(2, 2)), jnp.float32)}
  tau = float(rng.uniform(0.3, 2.5))
  groups = [[("a",), ("b",)], [("c",)]]
  x = _prox_once(v, groups, tau)
  np.testing.assert_array_equal(np.asarray(x["free"]), np.asarray(v["free"]))  # in no coupling
  # optimality: a zero channel has ||v_c|| <= tau; a kept one solves x_c - v_c + tau x_c / ||x_c|| = 0
  for leaves in (["a", "b"], ["c"]):
    vs = np.concatenate([np.asarray(v[k]).reshape(-1, np.shape(v[k])[-1]) for k in leaves])
    xs = np.concatenate([np.asarray(x[k]).reshape(-1, np.shape(x[k])[-1]) for k in leaves])
    for c in range(vs.shape[1]):
      norm_v, norm_x = np.linalg.norm(vs[:, c]), np.linalg.norm(xs[:, c])
      if norm_x == 0:
        assert norm_v <= tau + 1e-5
      else:
        np.testing.assert_allclose(xs[:, c] - vs[:, c] + tau * xs[:, c] / norm_x, 0, atol=1e-5)
  # brute force: no perturbation lowers the objective
  groups_leaves = [["a", "b"], ["c"]]
  best = _objective(x, v, groups_leaves, tau)
  for _ in range(200):
    trial = {k: np.asarray(x[k]) + rng.normal(size=np.shape(x[k])) * 1e-2 for k in ("a", "b", "c")}
    trial["free"] = np.asarray(v["free"])
    assert _objective(trial, v, groups_leaves, tau) >= best - 1e-6


def test_a_singleton_vector_coupling_is_l1():
  v = {"scale": jnp.asarray([0.3, -2.0, 0.05, 1.1], jnp.float32)}
  x = _prox_once(v, [[("scale",)]], 0.5)
  np.testing.assert_allclose(np.asarray(x["scale"]), np.asarray(prox.l1(v["scale"], 0.5)), atol=1e-7)


@pytest.mark.parametrize("groups,match", [
    ([], "non-empty"),
    ([[]], "non-empty"),
    ("scale", "non-empty"),
    ([[("a",), ("a",)]], "more than once"),
    ([[("missing",)]], "lack"),
    ([[("a",), ("c",)]], "last axes differ"),
])
def test_bad_groups_are_named(groups, match):
  params = {"a": jnp.ones((4, 5)), "c": jnp.ones(3)}
  with pytest.raises(ValueError, match=match):
    tx = transforms.coupled_group_lasso(0.1, 0.1, groups)
    tx.init(params)


@pytest.mark.parametrize("strength", [-0.1, {"a": 0.1}, [0.1, 0.2], np.ones(2)])
def test_strength_must_be_one_nonnegative_scalar_or_schedule(strength):
  with pytest.raises(ValueError, match="strength"):
    transforms.coupled_group_lasso(strength, 0.1, [[("a",)]])
  tx = transforms.coupled_group_lasso(optax.linear_schedule(0.0, 1.0, 4), 0.1, [[("a",)]])
  assert tx.init({"a": jnp.ones(3)}).count == 0


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_resnet_streams_are_coupled():
  model = ResNet((2, 1), (8, 16), 10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  groups = metrics.coupled_channels(model, variables, (16, 16, 1))
  assert sorted(map(sorted, groups)) == sorted(map(sorted, [
      [("stem_bn", "scale"), ("stage0_block0", "bn2", "scale"), ("stage0_block1", "bn2", "scale")],
      [("stage0_block0", "bn1", "scale")], [("stage0_block1", "bn1", "scale")], [("stage1_block0", "bn1", "scale")],
      [("stage1_block0", "bn2", "scale"), ("stage1_block0", "shortcut_bn", "scale")]]))
  shifts = metrics.coupled_channels(model, variables, (16, 16, 1), select="bias")
  assert [("stem_bn", "bias"), ("stage0_block0", "bn2", "bias"), ("stage0_block1", "bn2", "bias")] in shifts
  with pytest.raises(ValueError, match="select"):
    metrics.coupled_channels(model, variables, (16, 16, 1), select=3)


class _NNXResidual(nnx.Module):
  """Stem conv + BN, one residual block (conv-BN-relu-conv-BN + identity), mean pool, head."""

  def __init__(self, rngs: nnx.Rngs):
    self.stem, self.stem_bn = nnx.Conv(1, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.conv1, self.bn1 = nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.conv2, self.bn2 = nnx.Conv(8, 8, (3, 3), rngs=rngs), nnx.BatchNorm(8, rngs=rngs)
    self.head = nnx.Linear(8, 3, rngs=rngs)

  def __call__(self, x):
    h = nnx.relu(self.stem_bn(self.stem(x)))
    h = nnx.relu(h + self.bn2(self.conv2(nnx.relu(self.bn1(self.conv1(h))))))
    return self.head(h.mean(axis=(1, 2)))


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_nnx_streams_are_coupled_and_nnx_optimizer_drives_the_penalty():
  module = _NNXResidual(nnx.Rngs(0))
  groups = metrics.coupled_channels(module, input_shape=(8, 8, 1))
  assert sorted(map(sorted, groups)) == [[("bn1", "scale")], [("bn2", "scale"), ("stem_bn", "scale")]]
  tx = optax.chain(optax.sgd(0.1), transforms.coupled_group_lasso(30.0, 0.1, groups))
  optimizer = nnx.Optimizer(module, tx, wrt=nnx.Param)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 8, 8, 1)), jnp.float32)
  grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(module)
  optimizer.update(module, grads)
  np.testing.assert_array_equal(np.asarray(module.stem_bn.scale[...]), 0.0)  # tau 3 > every norm sqrt(2)
  np.testing.assert_array_equal(np.asarray(module.bn2.scale[...]), 0.0)


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_training_a_resnet_removes_stream_channels_from_every_writer():
  x, y = data.load("digits", "train")
  x, y = jnp.asarray(x[:256], jnp.float32), jnp.asarray(y[:256])
  model = ResNet((2,), (16,), 10)
  variables = jax.tree.map(np.array, dict(model.init(jax.random.PRNGKey(0), jnp.zeros((1, *x.shape[1:])))))
  groups = metrics.coupled_channels(model, variables, x.shape[1:])
  stream = next(g for g in groups if len(g) == 3)
  for path in stream:  # channels 0-5 start weak in every writer of the stream
    node = variables["params"]
    for key in path[:-1]:
      node = node[key]
    node[path[-1]][:6] = 0.02
  params, stats = variables["params"], variables["batch_stats"]
  tx = optax.chain(optax.sgd(0.05, momentum=0.9), transforms.coupled_group_lasso(1.0, 0.05, groups))
  state = tx.init(params)

  def loss(p, s):
    logits, new = model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new["batch_stats"]

  @jax.jit
  def step(p, s, opt):
    (_, s), g = jax.value_and_grad(loss, has_aux=True)(p, s)
    updates, opt = tx.update(g, opt, p)
    return optax.apply_updates(p, updates), s, opt

  for _ in range(20):
    params, stats, state = step(params, stats, state)

  def leaf(path):
    node = params
    for key in path:
      node = node[key]
    return np.asarray(node)
  zero_sets = [set(np.flatnonzero(leaf(p) == 0)) for p in stream]
  assert set(range(6)) <= zero_sets[0] and len(zero_sets[0]) < 16
  assert all(z == zero_sets[0] for z in zero_sets)  # whole stream channels, in every writer
  variables = {"params": params, "batch_stats": stats}
  removed = metrics.report(model, variables, x.shape[1:])["neurons_removed"]
  assert removed["stem"] >= len(zero_sets[0])
  small = compaction.compact_any(model, variables, x.shape[1:], channel_multiple=1)
  assert small.params["['params']['stem']['kernel']"].shape[-1] <= 16 - len(zero_sets[0])
  xb = np.asarray(x[:8], np.float32)
  np.testing.assert_allclose(np.asarray(small(xb)), np.asarray(model.apply(variables, xb)), atol=1e-4, rtol=1e-4)


def test_extreme_magnitudes_and_non_finite_values():
  tiny = {"a": jnp.asarray([1e-30, 2e-30, 5.0], jnp.float32), "b": jnp.asarray([1e-30, 0.0, 0.0], jnp.float32)}
  out = _prox_once(tiny, [[("a",), ("b",)]], 0.5)
  np.testing.assert_array_equal(np.asarray(out["a"][:2]), 0.0)       # norms 1e-30 < tau: exact zeros
  np.testing.assert_allclose(float(out["a"][2]), 4.5, rtol=1e-6)
  identity = _prox_once(tiny, [[("a",), ("b",)]], 0.0)                # tau 0: the identity, tiny values kept
  np.testing.assert_array_equal(np.asarray(identity["a"]), np.asarray(tiny["a"]))
  huge = {"a": jnp.asarray([3e30, 4e30], jnp.float32)}
  np.testing.assert_allclose(np.asarray(_prox_once(huge, [[("a",)]], 1e30)["a"]), [2e30, 3e30], rtol=1e-5)
  two = {"a": jnp.asarray([[3e30], [4e30]], jnp.float32)}              # one channel, norm 5e30
  np.testing.assert_allclose(np.asarray(_prox_once(two, [[("a",)]], 1e30)["a"]).ravel(), [2.4e30, 3.2e30], rtol=1e-5)
  bad = {"a": jnp.asarray([np.nan, 1.0], jnp.float32)}
  assert np.isnan(np.asarray(_prox_once(bad, [[("a",)]], 0.5)["a"][0]))
