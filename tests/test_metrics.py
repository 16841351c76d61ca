"""Tests of `sparsejax.metrics` and `sparsejax.compaction`."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import compaction, metrics
from sparsejax.models import MLP, ConvNet, ConvSpec, init_mlp, init_model, lenet5


def _sparsify(params, seed=0, frac_dead=0.3):
  rng = np.random.default_rng(seed)
  out = {}
  for name, leaf in params.items():
    k, b = np.array(leaf["kernel"]), np.array(leaf["bias"]) + rng.normal(0, 0.5, leaf["bias"].shape)
    k[np.abs(k) < np.quantile(np.abs(k), 0.6)] = 0
    k[..., rng.random(k.shape[-1]) < frac_dead] = 0
    out[name] = {"kernel": jnp.asarray(k), "bias": jnp.asarray(b)}
  return out


def test_counts_on_a_hand_made_mlp():
  model = MLP((3, 2))
  params = {"Dense_0": {"kernel": jnp.asarray([[1.0, 0.0, 0.0], [2.0, 0.0, 3.0]]), "bias": jnp.asarray([0.1, -0.5, 0.2])},
            "Dense_1": {"kernel": jnp.asarray([[1.0, 0.0], [4.0, 5.0], [0.0, 0.0]]), "bias": jnp.zeros(2)}}
  # Unit 1: zero incoming, relu(-0.5) = 0 -> removed. Unit 2: zero outgoing -> removed.
  assert metrics.neurons_removed(model, params, (2,)) == {"Dense_0": {"removed": 2, "total": 3}}
  fp = metrics.flops_and_params(model, params, (2,))
  assert fp["flops_dense"] == 2 * (2 * 3 + 3 * 2)
  assert fp["flops_sparse"] == 2 * (2 + 1)  # kept unit 0: 2 incoming, 1 outgoing nonzero
  assert fp["params_dense"] == 6 + 3 + 6 + 2
  assert fp["params_used"] == (2 + 1) + (1 + 2)  # nonzero kept weights + kept biases
  assert metrics.summary(params)["nonzero"] == 3 + 3 + 3  # kernel 0, bias 0, kernel 1 (bias 1 is zero)


def test_flops_hand_count_on_a_tiny_convnet():
  net = ConvNet((ConvSpec(2, 3, "SAME", 2), ConvSpec(3, 3, "VALID", 1)), (4,))
  params = init_model(net, (6, 6, 1))
  fp = metrics.flops_and_params(net, params, (6, 6, 1))
  conv0 = 2 * (3 * 3 * 1 * 2) * (6 * 6)     # SAME: 6x6 outputs, then pool -> 3x3
  conv1 = 2 * (3 * 3 * 2 * 3) * (1 * 1)     # VALID on 3x3 -> 1x1
  dense = 2 * (1 * 1 * 3) * 4
  assert fp["flops_dense"] == conv0 + conv1 + dense
  assert fp["flops_sparse"] == fp["flops_dense"]  # random init has no zeros
  assert fp["params_dense"] == sum(p.size for p in jax.tree.leaves(params))


@pytest.mark.parametrize("make", [
    lambda: (MLP((40, 30, 10)), (12,)),
    lambda: (lenet5(), (28, 28, 1)),
    lambda: (ConvNet((ConvSpec(8, 3, "SAME"), ConvSpec(12, 3, "VALID"), ConvSpec(10, 3, "SAME")), (16, 10)), (28, 28, 1)),
])
@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
def test_compact_model_equals_sparse_model(make):
  net, shape = make()
  params = _sparsify(init_model(net, shape), seed=1)
  x = jnp.asarray(np.random.default_rng(2).random((32, *shape)), jnp.float32)
  cm = compaction.compact(net, params, shape)
  small, small_params, kept = cm.module, cm.variables["params"], cm.kept_units
  np.testing.assert_allclose(np.asarray(cm(x)), np.asarray(small.apply({"params": small_params}, x)), atol=1e-6)
  diff = np.max(np.abs(np.asarray(net.apply({"params": params}, x)) - np.asarray(small.apply({"params": small_params}, x))))
  assert diff <= 1e-5
  removed = metrics.neurons_removed(net, params, shape)
  assert sum(v["removed"] for v in removed.values()) > 0
  for name, info in removed.items():
    assert len(kept[name]) == info["total"] - info["removed"]
  # The compact network has no dead units left and the same used parameters.
  again = metrics.neurons_removed(small, small_params, shape)
  assert all(v["removed"] == 0 for v in again.values())
  assert metrics.flops_and_params(small, small_params, shape)["flops_sparse"] == \
      metrics.flops_and_params(net, params, shape)["flops_sparse"]


def test_constant_filter_before_same_conv_is_kept():
  net = ConvNet((ConvSpec(3, 3, "SAME", 1), ConvSpec(2, 3, "SAME", 1)), (2,))
  params = jax.tree.map(np.array, init_model(net, (5, 5, 1)))
  params["Conv_0"]["kernel"][..., 0] = 0.0
  params["Conv_0"]["bias"][0] = 0.7  # constant 0.7 map: padding makes it position-dependent downstream
  params = jax.tree.map(jnp.asarray, params)
  assert metrics.neurons_removed(net, params, (5, 5, 1))["Conv_0"]["removed"] == 0
  cm = compaction.compact(net, params, (5, 5, 1))
  small, small_params = cm.module, cm.params
  assert small.convs[0].features == 3
  x = jnp.ones((2, 5, 5, 1))
  np.testing.assert_allclose(net.apply({"params": params}, x), small.apply({"params": small_params}, x), atol=1e-6)


def test_all_dead_layer_keeps_one_inert_unit():
  model, params = init_mlp((4, 3), 5)
  params = jax.tree.map(np.array, params)
  params["Dense_0"]["kernel"][:] = 0.0
  params = jax.tree.map(jnp.asarray, params)
  cm = compaction.compact(model, params, (5,))
  small, small_params = cm.module, cm.params
  assert small.features == (1, 3)
  x = jnp.ones((3, 5))
  np.testing.assert_allclose(model.apply({"params": params}, x), small.apply({"params": small_params}, x), atol=1e-6)


def test_unsupported_model_is_a_clear_error():
  with pytest.raises(ValueError, match="layer list is defined for MLP and ConvNet"):
    metrics.layers(object(), {}, (3,))
  with pytest.raises(ValueError, match="cannot take inputs of shape"):
    metrics.report(object(), {"w": np.ones(3)}, (3,))


def test_report_is_a_documented_json_ready_result():
  model, params = init_mlp((6, 3), 5)
  params = jax.tree.map(np.array, params)
  params["Dense_0"]["kernel"][:, :2] = 0.0  # two dead units
  r = metrics.report(model, jax.tree.map(jnp.asarray, params), (5,))
  assert isinstance(r, metrics.SizeReport)
  plain = r.to_dict()
  assert json.loads(json.dumps(plain)) == plain  # plain Python types only (no numpy scalars)
  assert set(plain) == {f.name for f in dataclasses.fields(metrics.SizeReport)}
  for key, value in plain.items():
    assert type(value) in (int, float, dict), key
    if isinstance(value, dict):
      assert all(type(k) is str and type(v) in (int, float) for k, v in value.items()), key
  assert r["neurons_removed"] == r.neurons_removed == {"Dense_0": 2}  # hidden layers
  assert dict(r) == plain and {**r}["weights_total"] == 5 * 6 + 6 * 3
  with pytest.raises(KeyError):
    r["nope"]
  with pytest.raises(dataclasses.FrozenInstanceError):
    r.weights_total = 0
