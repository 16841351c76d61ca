"""DCGAN generator and discriminator (flax.linen), Radford et al. 2016's sparse DCGAN.

Generator: z -> Dense to a `base_size` x `base_size` x features[0] map -> batch
norm -> ReLU, then for every further width a 4x4 stride-2 `ConvTranspose` ->
batch norm -> ReLU (each doubling the side), then a last 4x4 stride-2
`ConvTranspose` to `channels` with tanh, so images are in [-1, 1] and have side
base_size * 2**len(features). Discriminator: the mirror image, 4x4 stride-2
convs -> batch norm (not on the first layer) -> LeakyReLU(0.2), then one Dense
logit. Layers followed by batch norm have no bias (it would be cancelled).
The post-activation maps of both are sown into "intermediates" as
`activation_i`, so the activity penalties of eqs. (14)-(15) can read them.

Batch norm uses batch statistics in training (`train=True`) and running
averages otherwise. With `axis_name` set, training statistics are averaged over
that pmap/vmap axis (synchronised batch norm), so a data-parallel step equals
the single-device step on the global batch; outside a mapped function use
`module.clone(axis_name=None)`.

Factories: `dcgan_64` is the paper's CelebA network (G widths 1024, 512, 256,
128, 3 on 4x4 -> 64x64; D 128, 256, 512, 1024); `dcgan_28` the scaled network
for 28x28 MNIST/Fashion-MNIST (G 2w, w on 7x7 -> 28x28; D w, 2w).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["Generator", "Discriminator", "dcgan_64", "dcgan_28"]

# DCGAN initialisation: N(0, 0.02) weights, BN scales N(1, 0.02).
_WEIGHT_INIT = nn.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def _batch_norm(train: bool, axis_name: str | None, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init,
                      axis_name=axis_name if train else None, name=name)


class Generator(nn.Module):
  """z (n, latent) -> images (n, side, side, channels) in [-1, 1], side = base_size * 2**len(features).

  Attributes:
    features: widths of the hidden maps, from the projected base map up.
    channels: output image channels.
    base_size: side of the map z is projected to.
    kernel: transposed-convolution kernel side.
    axis_name: mapped axis for synchronised batch norm (None: per-device).
  """

  features: Sequence[int] = (1024, 512, 256, 128)
  channels: int = 3
  base_size: int = 4
  kernel: int = 4
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    side, width = self.base_size, self.features[0]
    x = nn.Dense(side * side * width, use_bias=False, kernel_init=_WEIGHT_INIT, name="Dense_0")(
        z.reshape(z.shape[0], -1))
    x = nn.relu(_batch_norm(train, self.axis_name, "BatchNorm_0")(x.reshape(-1, side, side, width)))
    self.sow("intermediates", "activation_0", x)
    conv = functools.partial(nn.ConvTranspose, kernel_size=(self.kernel, self.kernel), strides=(2, 2),
                             padding="SAME", kernel_init=_WEIGHT_INIT)
    for i, width in enumerate(self.features[1:], start=1):
      x = conv(width, use_bias=False, name=f"ConvTranspose_{i - 1}")(x)
      x = nn.relu(_batch_norm(train, self.axis_name, f"BatchNorm_{i}")(x))
      self.sow("intermediates", f"activation_{i}", x)
    x = conv(self.channels, name=f"ConvTranspose_{len(self.features) - 1}")(x)
    return jnp.tanh(x)


class Discriminator(nn.Module):
  """images (n, side, side, channels) in [-1, 1] -> logits (n,) of "real".

  Attributes:
    features: widths of the stride-2 conv layers, input side first.
    kernel: convolution kernel side.
    axis_name: mapped axis for synchronised batch norm (None: per-device).
  """

  features: Sequence[int] = (128, 256, 512, 1024)
  kernel: int = 4
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    if x.ndim == 3:
      x = x[..., None]
    for i, width in enumerate(self.features):
      x = nn.Conv(width, (self.kernel, self.kernel), strides=(2, 2), padding="SAME", use_bias=i == 0,
                  kernel_init=_WEIGHT_INIT, name=f"Conv_{i}")(x)
      if i > 0:
        x = _batch_norm(train, self.axis_name, f"BatchNorm_{i}")(x)
      x = nn.leaky_relu(x, 0.2)
      self.sow("intermediates", f"activation_{i}", x)
    return nn.Dense(1, kernel_init=_WEIGHT_INIT, name="Dense_0")(x.reshape(x.shape[0], -1))[:, 0]


def dcgan_64(channels: int = 3, axis_name: str | None = None) -> tuple[Generator, Discriminator]:
  """The paper's CelebA DCGAN: G 4x4x1024 -> 512 -> 256 -> 128 -> 64x64x`channels`; D the mirror."""
  return (Generator((1024, 512, 256, 128), channels, 4, axis_name=axis_name),
          Discriminator((128, 256, 512, 1024), axis_name=axis_name))


def dcgan_28(channels: int = 1, width: int = 64, axis_name: str | None = None) -> tuple[Generator, Discriminator]:
  """DCGAN scaled to 28x28: G 7x7x(2w) -> 14x14xw -> 28x28x`channels`; D w -> 2w -> logit."""
  if width < 1:
    raise ValueError(f"width must be >= 1; got {width}.")
  return (Generator((2 * width, width), channels, 7, axis_name=axis_name),
          Discriminator((width, 2 * width), axis_name=axis_name))
