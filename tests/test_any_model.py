"""Models the library did not write: structure from the jaxpr, and training linen/NNX models.

The jaxpr analysis (`sparsejax.structure`, behind `metrics.report`) must agree with
the built-in layer-list path on MLP and ConvNet, match hand counts on a ResNet and a
transformer, find units planted dead inside and across residual blocks (and keep a
channel that another branch still uses), and give the same report for an NNX and a
linen version of one network. `train.fit` must train an NNX module, a BatchNorm
ResNet and a model without a `train` argument, and take a user loss.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn
from flax import nnx

from sparsejax import compaction, metrics, structure, train, transforms
from sparsejax.models import MLP, NNXMLP, ConvNet, ConvSpec, NNXConvNet, lenet5
from sparsejax.models.interface import functional
from sparsejax.models.resnet import ResNet, resnet20
from sparsejax.models.transformer import TransformerClassifier

pytestmark = pytest.mark.integration  # trains models: the integration tier (see README)

COUNTS = ("flops_dense", "flops_sparse", "params_dense", "params_used")


def _host(tree):
  return jax.tree.map(lambda a: np.array(a, np.float32), tree)


def _sparsify(params, rng, kill_in=2, kill_out=2, fraction=0.3):
  """Zero a few units' incoming and outgoing weights and `fraction` of the other weights."""
  params = _host(params)
  for layer in params.values():
    k = layer["kernel"]
    k[rng.random(k.shape) < fraction] = 0.0
    k[..., rng.choice(k.shape[-1], kill_in, replace=False)] = 0.0
    flat = np.moveaxis(k, -2, 0)
    flat[rng.choice(flat.shape[0], min(kill_out, flat.shape[0] - 1), replace=False)] = 0.0
  return params


@pytest.mark.parametrize("model,shape", [
    (MLP((20, 16, 5)), (12,)),
    (lenet5(), (28, 28, 1)),
    (ConvNet((ConvSpec(6, 3, "SAME"), ConvSpec(8, 3, "VALID", pool=1), ConvSpec(5, 3, "SAME")), (12, 4)), (14, 14, 1)),
], ids=["mlp", "lenet5", "mixed_padding_convnet"])
def test_jaxpr_analysis_equals_the_builtin_layer_path(model, shape):
  rng = np.random.default_rng(0)
  params = _sparsify(model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape)))["params"], rng)
  names = list(params)
  for i, name in enumerate(names[:-1]):
    # one constant unit folds, one is relu(-0.5) = 0; a nonzero constant into a padded conv
    # the built-in path keeps (it folds into biases only), so none is planted there
    feeds_padded_conv = isinstance(model, ConvNet) and i + 1 < len(model.convs) and \
        model.convs[i + 1].padding == "SAME"
    params[name]["bias"][:2] = [0.0, -0.5] if feeds_padded_conv else [0.5, -0.5]
  builtin = metrics.report(model, params, shape)
  found = metrics.analyze_model(model, params, shape)
  generic = metrics._generic_counts(found)
  for key in COUNTS:
    assert generic[key] == builtin[key], key
  removed = {metrics.layer_name(op.name): int(op.units_removable.sum()) for op in found.ops[:-1]}
  assert removed == builtin["neurons_removed"]


def test_jaxpr_analysis_also_removes_units_that_only_feed_removed_units():
  model = MLP((6, 5, 3))
  params = _host(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4)))["params"])
  params["Dense_2"]["kernel"][2] = 0.0           # unit 2 of Dense_1 feeds nobody
  params["Dense_1"]["kernel"][1] = 0.0           # unit 1 of Dense_0 feeds only ...
  params["Dense_1"]["kernel"][1, 2] = 0.7        # ... unit 2 of Dense_1, which is removed
  builtin = metrics.report(model, params, (4,))
  generic = metrics._generic_counts(metrics.analyze_model(model, params, (4,)))
  found = metrics.analyze_model(model, params, (4,))
  assert list(np.flatnonzero(found.ops[0].units_removable)) == [1]
  assert builtin["neurons_removed"] == {"Dense_0": 0, "Dense_1": 1}
  assert generic["flops_sparse"] == builtin["flops_sparse"] - 2 * 4  # unit 1's 4 incoming weights


def test_constant_into_a_padded_conv_is_folded_by_the_jaxpr_path_only():
  model = ConvNet((ConvSpec(4, 3, "SAME", pool=1), ConvSpec(3, 3, "SAME", pool=1)), (2,))
  params = _host(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6, 6, 1)))["params"])
  params["Conv_0"]["kernel"][..., 1] = 0.0
  params["Conv_0"]["bias"][1] = 0.7                 # constant relu(0.7) into a SAME conv
  assert metrics.report(model, params, (6, 6, 1))["neurons_removed"]["Conv_0"] == 0   # built-in: bias folds only
  found = metrics.analyze_model(model, params, (6, 6, 1))
  assert list(np.flatnonzero(found.ops[0].units_removable)) == [1]
  small = compaction.compact_any(model, {"params": params}, (6, 6, 1))
  x = np.random.default_rng(0).normal(size=(3, 6, 6, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model.apply({"params": params}, x)), atol=1e-5)


def test_zero_batchnorm_scale_makes_a_removable_constant_channel():
  # network slimming: a BatchNorm scale driven to 0 turns the channel into its shift, a constant
  model = ResNet((1,), (8,), 10)
  variables = _host(dict(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 1)))))
  variables["params"]["stage0_block0"]["bn1"]["scale"][[2, 5]] = 0.0
  variables["params"]["stage0_block0"]["bn1"]["bias"][2] = 0.4       # relu(0.4): folded as a constant map
  assert metrics.report(model, variables, (12, 12, 1))["neurons_removed"]["stage0_block0/conv1"] == 2
  small = compaction.compact_any(model, variables, (12, 12, 1))
  x = np.random.default_rng(0).normal(size=(4, 12, 12, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model.apply(variables, x)), atol=1e-5)


def test_resnet_counts_equal_hand_counts():
  model = ResNet((1, 1), (8, 16), 10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  r = metrics.report(model, variables, (28, 28, 1))
  convs = [(9 * 1 * 8, 784), (9 * 8 * 8, 784), (9 * 8 * 8, 784), (9 * 8 * 16, 196), (9 * 16 * 16, 196),
           (8 * 16, 196)]
  assert r["flops_dense"] == 2 * (sum(k * p for k, p in convs) + 16 * 10)
  leaves = jax.tree.leaves(variables["params"])
  assert r["params_dense"] == sum(leaf.size for leaf in leaves) == r["params_used"]
  assert r["neurons_total"] == {"stem": 8, "stage0_block0/conv1": 8, "stage0_block0/conv2": 8,
                                "stage1_block0/conv1": 16, "stage1_block0/conv2": 16, "stage1_block0/shortcut": 16}
  # ResNet-20 (3 stages of 3 blocks, 16/32/64 channels, 32x32 inputs): random variables of
  # the init's shapes (its init compiles for ~20 s on CPU); MACs per stage by hand
  shapes = jax.eval_shape(resnet20().init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  rng = np.random.default_rng(0)
  variables20 = {"params": jax.tree.map(lambda s: rng.normal(size=s.shape).astype(s.dtype), shapes["params"]),
                 "batch_stats": jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes["batch_stats"])}
  r20 = metrics.report(resnet20(), variables20, (32, 32, 3))
  macs = (27 * 16 * 1024 + 6 * 144 * 16 * 1024 + 144 * 32 * 256 + 5 * 288 * 32 * 256 + 16 * 32 * 256
          + 288 * 64 * 64 + 5 * 576 * 64 * 64 + 32 * 64 * 64 + 64 * 10)
  assert r20["flops_dense"] == 2 * macs
  assert sum(r20["neurons_total"].values()) == 16 + 6 * 16 + (6 * 32 + 32) + (6 * 64 + 64)


def _planted_resnet():
  model = ResNet((2, 1), (8, 16), 10)
  variables = _host(dict(model.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 1)))))
  p, s = variables["params"], variables["batch_stats"]
  b0 = p["stage0_block0"]
  # (a) conv1 unit 3 dead inside block 0: zero incoming weights, BN shift -1 -> relu gives 0
  b0["conv1"]["kernel"][..., 3] = 0.0
  b0["bn1"]["bias"][3] = -1.0
  s["stage0_block0"]["bn1"]["mean"][3] = 0.0
  # (b) conv1 unit 5: zero incoming weights, BN shift +1 -> the constant relu(1) = 1 feeds a padded conv:
  # removed, its contribution folded exactly as a per-position map (checked by the compaction test)
  b0["conv1"]["kernel"][..., 5] = 0.0
  b0["bn1"]["bias"][5] = 1.0
  s["stage0_block0"]["bn1"]["mean"][5] = 0.0
  # (c) conv2 unit 6 writes 0 into the residual stream (zero weights, BN shift 0): removable
  b0["conv2"]["kernel"][..., 6] = 0.0
  b0["bn2"]["bias"][6] = 0.0
  s["stage0_block0"]["bn2"]["mean"][6] = 0.0
  # (d) stream channel 2 is dead in block 1's branch (conv2 writes 0) but the stem still writes it and
  # block 1's conv1 reads it: the stem unit is kept
  b1 = p["stage0_block1"]
  b1["conv2"]["kernel"][..., 2] = 0.0
  b1["bn2"]["bias"][2] = 0.0
  s["stage0_block1"]["bn2"]["mean"][2] = 0.0
  # (e) stem unit 7 is read by nobody: zero outgoing weights in block 0's conv1, block 1's conv1 and
  # stage 1's conv1/shortcut; and every writer of stream channel 7 writes 0 (block convs dead)
  for block in ("stage0_block0", "stage0_block1"):
    p[block]["conv1"]["kernel"][:, :, 7, :] = 0.0
    p[block]["conv2"]["kernel"][..., 7] = 0.0
    p[block]["bn2"]["bias"][7] = 0.0
    s[block]["bn2"]["mean"][7] = 0.0
  p["stage1_block0"]["conv1"]["kernel"][:, :, 7, :] = 0.0
  p["stage1_block0"]["shortcut"]["kernel"][:, :, 7, :] = 0.0
  return model, variables


def test_resnet_planted_dead_units_inside_and_across_residual_blocks():
  model, variables = _planted_resnet()
  found = {metrics.layer_name(op.name): op for op in metrics.analyze_model(model, variables, (16, 16, 1)).ops}
  removed = {name: set(np.flatnonzero(op.units_removable)) for name, op in found.items()}
  assert removed["stage0_block0/conv1"] == {3, 5}         # (a) and (b)
  assert 6 in removed["stage0_block0/conv2"]              # (c)
  assert 2 in removed["stage0_block1/conv2"] and 2 not in removed["stem"]   # (d)
  assert {7} <= removed["stem"] and 7 in removed["stage0_block0/conv2"] and 7 in removed["stage0_block1/conv2"]
  assert removed["head"] == set()


def test_transformer_counts_and_dead_mlp_units():
  model = TransformerClassifier(num_layers=1, dim=16, heads=2, mlp_dim=32, num_classes=10)
  variables = _host(dict(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28)))))
  r = metrics.report(model, variables, (28, 28))
  tokens = 28
  hand = 2 * tokens * (28 * 16 + 3 * 16 * 16 + 16 * 16 + 16 * 32 + 32 * 16) + 2 * 16 * 10
  assert r["flops_dense"] == hand
  mlp = variables["params"]["block0"]
  mlp["mlp_in"]["kernel"][:, [1, 4]] = 0.0       # zero incoming weights, bias 0: gelu(0) = 0
  mlp["mlp_in"]["bias"][[1, 4]] = 0.0
  mlp["mlp_out"]["kernel"][9] = 0.0              # zero outgoing weights
  mlp["mlp_in"]["bias"][11] = 0.3                # zero incoming, constant gelu(0.3) folds into mlp_out's bias
  mlp["mlp_in"]["kernel"][:, 11] = 0.0
  r = metrics.report(model, variables, (28, 28))
  assert r["neurons_removed"]["block0/mlp_in"] == 4
  assert r["neurons_removed"]["embed"] == 0      # the residual stream goes through LayerNorm: never constant
  # zeroed: 3 columns of mlp_in and 1 row of mlp_out (64 weights); removed besides: unit 9's 16 incoming
  # weights and the 3 x 16 outgoing weights of units 1, 4, 11 (64 more)
  assert r["flops_sparse"] == hand - 2 * tokens * (64 + 64)


class _NNXMLP(nnx.Module):
  def __init__(self, sizes, rngs):
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
    return self.layers[-1](x)


class _NNXCNN(nnx.Module):
  def __init__(self, rngs):
    self.conv = nnx.Conv(1, 6, (3, 3), rngs=rngs)
    self.bn = nnx.BatchNorm(6, rngs=rngs)
    self.dense = nnx.Linear(6 * 7 * 7, 10, rngs=rngs)

  def __call__(self, x):
    x = nnx.max_pool(nnx.relu(self.bn(self.conv(x))), (2, 2), (2, 2))
    return self.dense(x.reshape(x.shape[0], -1))


def test_nnx_and_linen_versions_give_the_same_report():
  nnx_model = _NNXMLP((12, 20, 16, 5), nnx.Rngs(0))
  linen_model = MLP((20, 16, 5))
  params = {f"Dense_{i}": {"kernel": layer.kernel[...], "bias": layer.bias[...]}
            for i, layer in enumerate(nnx_model.layers)}
  params = _sparsify(params, np.random.default_rng(1))
  for i, layer in enumerate(nnx_model.layers):
    layer.kernel[...] = params[f"Dense_{i}"]["kernel"]
  a = metrics.report(nnx_model, input_shape=(12,))
  b = metrics.report(linen_model, params, (12,))
  for key in (*COUNTS, "weights_nonzero"):
    assert a[key] == b[key], key
  assert list(a["neurons_removed"].values()) == list(b["neurons_removed"].values())
  cnn = _NNXCNN(nnx.Rngs(0))
  cnn.conv.kernel[..., 2] = 0.0
  cnn.bn.bias[2] = -1.0   # dead after BatchNorm and ReLU
  r = metrics.report(cnn, input_shape=(14, 14, 1))
  assert r["neurons_removed"] == {"conv": 1}


def test_wrong_params_or_input_shape_is_a_clear_error():
  model = ResNet((1,), (8,), 10)
  other = ResNet((1,), (4,), 10).init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  with pytest.raises(ValueError, match="params do not match"):
    metrics.report(model, other, (16, 16, 1))
  with pytest.raises(ValueError, match="input_shape"):
    metrics.report(MLP((4, 2)), MLP((4, 2)).init(jax.random.PRNGKey(0), jnp.zeros((1, 6)))["params"], (7,))
  with pytest.raises(ValueError, match="input_shape"):
    metrics.report(_NNXMLP((12, 5), nnx.Rngs(0)))


def test_a_batch_shape_given_as_input_shape_is_named_in_the_error():
  model = MLP((4, 2))
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 6)))["params"]
  with pytest.raises(ValueError, match=r"without the batch axis: these params fit input_shape=\(6,\)"):
    metrics.report(model, params, (32, 6))


class _TokenModel(nn.Module):
  """Token ids -> embedding -> Dense -> mean over positions -> Dense: integer inputs."""

  @nn.compact
  def __call__(self, tokens):
    h = nn.relu(nn.Dense(12)(nn.Embed(30, 8)(tokens)))
    return nn.Dense(3)(h.mean(axis=1))


class _DepthwiseUpsampling(nn.Module):
  """Layers the library's models do not use: depthwise conv, GroupNorm, ConvTranspose."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.Conv(8, (3, 3), feature_group_count=8)(x)
    x = nn.gelu(nn.GroupNorm(num_groups=2)(x))
    x = nn.ConvTranspose(4, (2, 2), strides=(2, 2))(x)
    return nn.Dense(5)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("kind", ["tokens", "depthwise_upsampling"])
def test_models_with_integer_inputs_or_other_layers_report_and_compact_exactly(kind):
  rng = np.random.default_rng(5)
  if kind == "tokens":
    model, shape, dtype = _TokenModel(), (7,), jnp.int32
    x = rng.integers(0, 30, size=(4, 7)).astype(np.int32)
  else:
    model, shape, dtype = _DepthwiseUpsampling(), (6, 6, 3), jnp.float32
    x = rng.normal(size=(4, 6, 6, 3)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape), dtype))
  params = _host(dict(variables["params"]))
  for name, layer in params.items():
    if "kernel" in layer and name != list(params)[-1]:
      layer["kernel"][..., :3] = 0.0  # three dead output units or channels
      layer["bias"][:3] = 0.0
  variables = {"params": params}
  if kind == "tokens":  # float inputs cannot index an embedding: the error names input_dtype
    with pytest.raises(ValueError, match="input_dtype"):
      metrics.report(model, variables, shape)
  r = metrics.report(model, variables, shape, input_dtype=dtype)
  assert r["weights_nonzero"] < r["weights_total"] and r["flops_sparse"] < r["flops_dense"]
  small = compaction.compact(model, variables, shape, input_dtype=dtype, channel_multiple=1)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model.apply(variables, x)), atol=1e-5, rtol=1e-5)
  assert small.kernel_sizes[1] < small.kernel_sizes[0]


def _digits(n=512):
  from sparsejax import data
  x, y = data.load("digits", "train")
  return x[:n], y[:n]


def test_fit_trains_an_nnx_module_and_returns_it(tmp_path):
  x, y = _digits()
  module = _NNXMLP((64, 32, 10), nnx.Rngs(0))
  before = train.evaluate(module, functional(module).init()["params"], x, y)
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), transforms.l1(1e-3, 0.1))
  result = train.fit(module, tx, (x, y), (x, y), train.TrainConfig(epochs=4, batch_size=64, progress=False,
                                                                     checkpoint=False), str(tmp_path))
  assert result.history[-1]["eval_accuracy"] > max(0.8, before["accuracy"] + 0.3)
  assert isinstance(result.module, nnx.Module)
  np.testing.assert_allclose(np.asarray(result.module(jnp.asarray(x[:8]))),
                             np.asarray(functional(module).apply({"params": result.state.params,
                                                                        **result.state.model_state}, x[:8])),
                             rtol=1e-5, atol=1e-6)
  assert "neurons_removed" in result.history[-1] and result.history[-1]["weights_nonzero"] < 64 * 32 + 32 * 10


def test_fit_nnx_batchnorm_statistics_are_trained(tmp_path):
  x, y = _digits(256)
  module = _NNXCNN(nnx.Rngs(0))
  x = np.asarray(x).reshape(-1, 8, 8, 1)
  x = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
  result = train.fit(module, optax.adam(1e-2), (x, y), None,
                     train.TrainConfig(epochs=2, batch_size=64, progress=False, checkpoint=False), str(tmp_path))
  assert not np.allclose(np.asarray(result.module.bn.mean[...]), 0.0)


def test_fit_linen_resnet_with_batchnorm_and_a_model_without_train_argument(tmp_path):
  x, y = _digits(256)
  x = np.asarray(x).reshape(-1, 8, 8, 1)
  result = train.fit(ResNet((1,), (8,), 10), optax.adam(1e-2), (x, y), (x, y),
                     train.TrainConfig(epochs=2, batch_size=64, progress=False, checkpoint=False), str(tmp_path / "r"))
  assert "batch_stats" in result.state.model_state
  assert result.history[-1]["neurons_total"]["stem"] == 8

  class NoTrainArg(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(10)(nn.relu(nn.Dense(16)(x.reshape(x.shape[0], -1))))

  result = train.fit(NoTrainArg(), optax.adam(1e-2), (x, y), (x, y),
                     train.TrainConfig(epochs=10, batch_size=32, progress=False, checkpoint=False), str(tmp_path / "n"))
  assert result.history[-1]["eval_accuracy"] > 0.8
  assert result.history[-1]["neurons_total"] == {"Dense_1": 16}  # flax names Dense(10) first: built first


def test_fit_with_a_user_loss(tmp_path):
  x, y = _digits(256)
  targets = np.eye(10, dtype=np.float32)[y] * 0.9 + 0.01  # soft labels: a loss the tasks do not offer

  def soft_cross_entropy(logits, t):
    return optax.softmax_cross_entropy(logits, t)

  result = train.fit(MLP((32, 10)), optax.adam(1e-2), (x, targets), None,
                     train.TrainConfig(epochs=3, batch_size=64, task="regression", progress=False, checkpoint=False),
                     str(tmp_path), loss_fn=soft_cross_entropy)
  losses = [h["train_loss"] for h in result.history]
  assert losses[-1] < losses[0] and np.isfinite(losses).all()
  with pytest.raises(ValueError, match="loss_fn"):
    train.fit(MLP((4,)), optax.sgd(0.1), (x, y), None, train.TrainConfig(epochs=1), str(tmp_path / "b"),
              loss_fn="mse")


def test_structure_ops_in_execution_order():
  model = ResNet((1,), (8,), 10)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1)))
  found = structure.analyze(lambda v, x: model.apply(v, x), variables, (16, 16, 1), params=variables["params"])
  assert [metrics.layer_name(op.name) for op in found.ops] == [
      "stem", "stage0_block0/conv1", "stage0_block0/conv2", "head"]


# ---------------------------------------------------------------- compaction


def _dead_transformer():
  model = TransformerClassifier(num_layers=1, dim=16, heads=2, mlp_dim=32, num_classes=10)
  variables = _host(dict(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28)))))
  mlp = variables["params"]["block0"]
  mlp["mlp_in"]["kernel"][:, [1, 4, 11]] = 0.0
  mlp["mlp_in"]["bias"][[1, 4]] = 0.0
  mlp["mlp_in"]["bias"][11] = 0.3        # a nonzero constant, folded into mlp_out
  mlp["mlp_out"]["kernel"][9] = 0.0
  return model, variables, (28, 28)


def _sparse_linen(model, shape, seed):
  params = _sparsify(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *shape)))["params"],
                     np.random.default_rng(seed))
  for layer in list(params.values())[:-1]:
    layer["bias"][:2] = [0.5, -0.5]
  return model, {"params": params}, shape


CASES = {
    "mlp": lambda: _sparse_linen(MLP((20, 16, 5)), (12,), 0),
    "lenet5": lambda: _sparse_linen(lenet5(), (28, 28, 1), 1),
    "mixed_padding_convnet": lambda: _sparse_linen(
        ConvNet((ConvSpec(6, 3, "SAME"), ConvSpec(8, 3, "VALID", pool=1), ConvSpec(5, 3, "SAME")), (12, 4)),
        (14, 14, 1), 2),
    "resnet_planted": lambda: (*_planted_resnet(), (16, 16, 1)),
    "transformer_mlp_block": _dead_transformer,
}


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("case", sorted(CASES))
def test_compacted_computation_equals_the_sparse_model(case, multiple):
  model, variables, shape = CASES[case]()
  small = compaction.compact_any(model, variables, shape, channel_multiple=multiple)
  x = np.random.default_rng(3).normal(size=(6, *shape)).astype(np.float32)
  want = np.asarray(model.apply(variables, x))
  np.testing.assert_allclose(np.asarray(small(x)), want, atol=1e-5, rtol=1e-5)
  if multiple == 1:
    assert small.kernel_sizes[1] < small.kernel_sizes[0]
  else:  # every computed channel count is a multiple of 8 or the layer's full width
    found = metrics.analyze_model(model, variables, shape)
    for op in found.ops:
      if op.name in small.params:
        for axis in (op.in_axis, op.out_axis):
          width = small.params[op.name].shape[axis]
          assert width % multiple == 0 or width == op.kernel.shape[axis], (op.name, axis, width)
  removed = metrics.report(model, variables, shape)["neurons_removed"]
  for name, count in removed.items():
    total = {op_name: None for op_name in small.kept_units}
    assert name in total and len(small.kept_units[name]) + count == metrics.report(
        model, variables, shape)["neurons_total"][name]


def test_compact_of_nnx_modules_and_export():
  nnx_mlp = _NNXMLP((12, 20, 16, 5), nnx.Rngs(0))
  nnx_mlp.layers[0].kernel[:, 3] = 0.0
  nnx_mlp.layers[0].bias[3] = -1.0
  nnx_mlp.layers[1].kernel[7] = 0.0
  cnn = _NNXCNN(nnx.Rngs(1))
  cnn.conv.kernel[..., 2] = 0.0
  cnn.bn.bias[2] = -1.0
  for module, shape in ((nnx_mlp, (12,)), (cnn, (14, 14, 1))):
    small = compaction.compact(module, input_shape=shape, channel_multiple=1)
    x = np.random.default_rng(4).normal(size=(3, *shape)).astype(np.float32)
    module.eval()
    np.testing.assert_allclose(np.asarray(small(x)), np.asarray(module(x)), atol=1e-5, rtol=1e-5)
    assert small.kernel_sizes[1] < small.kernel_sizes[0]
  exported = jax.export.export(small.apply)(small.params, jax.ShapeDtypeStruct((3, 14, 14, 1), jnp.float32))
  np.testing.assert_allclose(np.asarray(exported.call(small.params, x)), np.asarray(small(x)), atol=1e-6)
  assert "stablehlo" in exported.mlir_module() or "func.func" in exported.mlir_module()


def test_compact_keeps_builtin_models_on_the_flax_module_path():
  model, variables, shape = CASES["mlp"]()
  cm = compaction.compact(model, variables["params"], shape)
  new_model, new_params = cm.module, cm.variables["params"]
  assert isinstance(new_model, MLP) and isinstance(cm, compaction.CompactModel)
  x = np.random.default_rng(5).normal(size=(4, *shape)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(new_model.apply({"params": new_params}, x)),
                             np.asarray(model.apply(variables, x)), atol=1e-5)


def test_library_nnx_and_transformer_models_go_through_fit_report_and_compact(tmp_path):
  x, y = _digits(384)
  images = np.asarray(x).reshape(-1, 8, 8, 1)
  config = train.TrainConfig(epochs=6, batch_size=64, progress=False, checkpoint=False)
  tx = optax.chain(optax.adam(1e-2), transforms.proximal("l1", 0.1, 1e-2, mask="weights_only"))
  for name, module, data_x in (("mlp", NNXMLP(64, (32, 10), nnx.Rngs(0), dropout_rate=0.1), x),
                               ("cnn", NNXConvNet((8, 8, 1), (8, 16), 10, nnx.Rngs(0)), images),
                               ("transformer", TransformerClassifier(1, 16, 2, 32, 10), images[..., 0])):
    result = train.fit(module, tx, (data_x, y), (data_x, y), config, str(tmp_path / name))
    assert result.history[-1]["eval_accuracy"] > 0.6, name
    trained = result.module if result.module is not None else module
    variables = None if result.module is not None else {"params": result.state.params, **result.state.model_state}
    small = compaction.compact(trained, variables, data_x.shape[1:])
    if result.module is not None:
      trained.eval()
      want = trained(jnp.asarray(data_x[:16]))
    else:
      want = module.apply(variables, data_x[:16])
    np.testing.assert_allclose(np.asarray(small(data_x[:16])), np.asarray(want), atol=1e-4, rtol=1e-4)
    assert result.history[-1]["weights_nonzero"] < result.history[-1]["weights_total"], name
