"""Convolutional networks (flax.linen) as one configurable `ConvNet`.

Every block is conv -> ReLU -> optional max-pool; then flatten and Dense layers
with ReLU between them. Layers are named `Conv_i` / `Dense_i`, so
`masking.layer_index` orders them input to output. Post-activation feature
maps are sown into "intermediates" as `conv_activation_i` / `activation_i`.

Factories give the networks of the seed papers:
  * `cnn_2conv_mnist`: conv5x5x32, pool, conv5x5x64, pool, FC 1024, FC 10
    (integrated TL1 / CGES MNIST network, dropout 0.5 before the last layer);
  * `lenet5`: conv 6@5x5 (SAME), pool, conv 16@5x5 (VALID), pool, FC 120, 84, 10;
  * `rvsm_cnn`: 3 x (conv 3x3 + max-pool) + one FC layer (Xue & Xin 2019);
  * `cnn8`: conv3x3 32/64/128 with 2x2 max-pool (28->14->7->3), FC 1152->512->10
    (Shen et al. 2024).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sparsejax.models.mlp import dense_stack

__all__ = ["ConvSpec", "ConvNet", "cnn_2conv_mnist", "lenet5", "rvsm_cnn", "cnn8", "init_model"]


class ConvSpec(NamedTuple):
  """One conv block: `features` filters of `kernel` x `kernel`, then max-pool `pool` (1 = none)."""
  features: int
  kernel: int = 3
  padding: str = "SAME"
  pool: int = 2


class ConvNet(nn.Module):
  """conv blocks -> flatten -> Dense layers; the last Dense returns logits."""

  convs: Sequence[ConvSpec]
  dense: Sequence[int]
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    for i, spec in enumerate(self.convs):
      x = nn.relu(nn.Conv(spec.features, (spec.kernel, spec.kernel), padding=spec.padding, name=f"Conv_{i}")(x))
      if spec.pool > 1:
        x = nn.max_pool(x, (spec.pool, spec.pool), strides=(spec.pool, spec.pool))
      self.sow("intermediates", f"conv_activation_{i}", x)
    return dense_stack(self, x.reshape((x.shape[0], -1)), self.dense, self.dropout_rate, train)


def cnn_2conv_mnist(num_classes: int = 10, dropout_rate: float = 0.5) -> ConvNet:
  """conv5x5x32-pool-conv5x5x64-pool-FC1024-FC`num_classes`, dropout before the last layer (the MNIST CNN of Ma et al. 2019)."""
  return ConvNet((ConvSpec(32, 5), ConvSpec(64, 5)), (1024, num_classes), dropout_rate)


def lenet5(num_classes: int = 10) -> ConvNet:
  """LeNet-5: conv5x5x6 (SAME)-pool-conv5x5x16 (VALID)-pool-FC120-FC84-FC`num_classes` (61,706 weights on 28x28x1)."""
  return ConvNet((ConvSpec(6, 5, "SAME"), ConvSpec(16, 5, "VALID")), (120, 84, num_classes))


def rvsm_cnn(num_classes: int = 2, width: int = 16) -> ConvNet:
  """Three 3x3 conv-pool stages of `width`, 2 `width`, 2 `width` channels and a Dense output (the RVSM paper's CNN)."""
  return ConvNet((ConvSpec(width), ConvSpec(2 * width), ConvSpec(2 * width)), (num_classes,))


def cnn8(num_classes: int = 10) -> ConvNet:
  """conv3x3x32-pool-conv3x3x64-pool-conv3x3x128-pool-FC512-FC`num_classes` (687,392 weights on 28x28x1)."""
  return ConvNet((ConvSpec(32), ConvSpec(64), ConvSpec(128)), (512, num_classes))


def init_model(model: nn.Module, input_shape: Sequence[int], seed: int = 0):
  """Parameters of `model` for inputs of shape `input_shape` (without the batch axis)."""
  return model.init(jax.random.PRNGKey(seed), jnp.zeros((1, *input_shape)))["params"]
