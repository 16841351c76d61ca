"""Multilayer perceptron (flax.linen)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["MLP", "dense_stack", "init_mlp"]


def dense_stack(module: nn.Module, x: jax.Array, features: Sequence[int], dropout_rate: float,
                train: bool) -> jax.Array:
  """Dense layers `Dense_i` with ReLU (sown as `activation_i`) and dropout between them.

  Call from inside a `@nn.compact` method of `module`; the last layer has no
  activation (logits).
  """
  for i, width in enumerate(features[:-1]):
    x = nn.relu(nn.Dense(width, name=f"Dense_{i}")(x))
    module.sow("intermediates", f"activation_{i}", x)
    if dropout_rate > 0:
      x = nn.Dropout(dropout_rate, deterministic=not train)(x)
  return nn.Dense(features[-1], name=f"Dense_{len(features) - 1}")(x)


class MLP(nn.Module):
  """Dense layers with ReLU between them; the last layer returns logits.

  Hidden activations (after ReLU) are sown into the "intermediates" collection
  as `activation_i`, so activity penalties can read them with
  `model.apply(..., mutable=["intermediates"])`.

  Attributes:
    features: output widths of every Dense layer, the last one being the
      number of outputs, e.g. (300, 100, 10).
    dropout_rate: dropout after each hidden activation (0 disables it).
  """

  features: Sequence[int]
  dropout_rate: float = 0.0

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    return dense_stack(self, x.reshape((x.shape[0], -1)), self.features, self.dropout_rate, train)


def init_mlp(features: Sequence[int], input_dim: int, seed: int = 0):
  """Returns (model, params) for an MLP on flat inputs of size `input_dim`."""
  model = MLP(tuple(features))
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, input_dim)))["params"]
  return model, params
