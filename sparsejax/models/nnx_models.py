"""Flax NNX versions of the MLP and a small BatchNorm CNN (the API Flax recommends).

They train with `train.fit(module, ...)`, are measured with
`metrics.report(module, input_shape=...)` and compacted with
`compaction.compact(module, input_shape=...)`, like the linen models.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

__all__ = ["NNXMLP", "NNXConvNet"]


class NNXMLP(nnx.Module):
  """Linear layers with ReLU between them (and optional dropout); the last returns logits."""

  def __init__(self, in_features: int, features: Sequence[int], rngs: nnx.Rngs, dropout_rate: float = 0.0):
    sizes = [in_features, *features]
    self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
    self.dropout = nnx.Dropout(dropout_rate, rngs=rngs) if dropout_rate > 0 else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.reshape(x.shape[0], -1)
    for layer in self.layers[:-1]:
      x = nnx.relu(layer(x))
      if self.dropout is not None:
        x = self.dropout(x)
    return self.layers[-1](x)


class NNXConvNet(nnx.Module):
  """conv3x3-BatchNorm-ReLU-maxpool blocks, flatten, Linear logits; for (H, W, C) inputs."""

  def __init__(self, input_shape: Sequence[int], channels: Sequence[int], num_classes: int, rngs: nnx.Rngs):
    h, w, c = input_shape
    self.convs = nnx.List()
    self.norms = nnx.List()
    for width in channels:
      self.convs.append(nnx.Conv(c, width, (3, 3), rngs=rngs))
      self.norms.append(nnx.BatchNorm(width, rngs=rngs))
      c, h, w = width, h // 2, w // 2
    self.head = nnx.Linear(h * w * c, num_classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    for conv, norm in zip(self.convs, self.norms):
      x = nnx.max_pool(nnx.relu(norm(conv(x))), (2, 2), (2, 2))
    return self.head(x.reshape(x.shape[0], -1))
