"""A small residual network with BatchNorm (flax.linen), ResNet-20 style (He et al. 2016).

A 3x3 stem conv, then stages of basic blocks (conv3x3-BN-ReLU-conv3x3-BN, added to
the shortcut, ReLU); the first block of a stage after the first halves the spatial
size and uses a 1x1 conv + BN projection shortcut. Global average pooling and one
Dense layer give the logits. For 28x28 or 32x32 inputs; `resnet20` is the CIFAR
ResNet-20 (3 stages of 3 blocks, widths 16/32/64).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

__all__ = ["BasicBlock", "ResNet", "resnet20"]


class BasicBlock(nn.Module):
  """conv-BN-ReLU-conv-BN + shortcut, ReLU."""
  features: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    norm = lambda name: nn.BatchNorm(use_running_average=not train, momentum=0.9, name=name)  # noqa: E731
    y = nn.Conv(self.features, (3, 3), (self.stride, self.stride), use_bias=False, name="conv1")(x)
    y = nn.relu(norm("bn1")(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False, name="conv2")(y)
    y = norm("bn2")(y)
    if self.stride != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), (self.stride, self.stride), use_bias=False, name="shortcut")(x)
      x = norm("shortcut_bn")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """Stem, `stage_sizes` basic blocks per stage of `widths` channels, global average pool, Dense."""
  stage_sizes: Sequence[int] = (3, 3, 3)
  widths: Sequence[int] = (16, 32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False, name="stem")(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, name="stem_bn")(x))
    for s, (blocks, width) in enumerate(zip(self.stage_sizes, self.widths)):
      for b in range(blocks):
        x = BasicBlock(width, 2 if (s > 0 and b == 0) else 1, name=f"stage{s}_block{b}")(x, train)
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def resnet20(num_classes: int = 10) -> ResNet:
  """ResNet-20 (He et al. 2016, CIFAR): three stages of three basic blocks, 16/32/64 channels."""
  return ResNet((3, 3, 3), (16, 32, 64), num_classes)
