"""A small pre-norm transformer encoder for sequences or image rows (flax.linen).

Tokens (N, T, F) are embedded by a Dense layer, get a learned position embedding,
and pass `num_layers` blocks x <- x + MHA(LN(x)); x <- x + MLP(LN(x)) (MLP: Dense,
GELU, Dense); the mean token goes through a final LayerNorm and a Dense head.
Images (N, H, W) or (N, H, W, 1) are read as H tokens of W features.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["EncoderBlock", "TransformerClassifier"]


class EncoderBlock(nn.Module):
  """A pre-norm transformer block: x + attention(LayerNorm(x)), then x + MLP(LayerNorm(x)) (GELU)."""

  dim: int
  heads: int
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.LayerNorm(name="ln1")(x)
    x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, name="attention")(y, y)
    y = nn.LayerNorm(name="ln2")(x)
    y = nn.Dense(self.mlp_dim, name="mlp_in")(y)
    y = nn.gelu(y)
    return x + nn.Dense(self.dim, name="mlp_out")(y)


class TransformerClassifier(nn.Module):
  """A sequence classifier: a Dense embedding of each position plus a learned position embedding,
  `num_layers` blocks (`EncoderBlock`), mean pooling over positions, LayerNorm and a Dense head. Inputs are
  (N, positions, features); images (N, H, W, 1) are read as H positions of W features."""

  num_layers: int = 2
  dim: int = 64
  heads: int = 4
  mlp_dim: int = 128
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    if x.ndim == 4:
      x = x[..., 0]
    x = nn.Dense(self.dim, name="embed")(x)
    x = x + self.param("position", nn.initializers.normal(0.02), (1, x.shape[1], self.dim))
    for i in range(self.num_layers):
      x = EncoderBlock(self.dim, self.heads, self.mlp_dim, name=f"block{i}")(x)
    x = nn.LayerNorm(name="ln_final")(jnp.mean(x, axis=1))
    return nn.Dense(self.num_classes, name="head")(x)
