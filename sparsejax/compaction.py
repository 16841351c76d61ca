"""Physical removal of dead units: a smaller network with the same outputs.

A hidden unit is dropped when its outgoing weights are all zero (it has no
effect), or when its incoming weights are all zero: it then outputs the
constant relu(b), whose contribution is folded into the next layer's bias
(exact for a Dense next layer, and for a VALID conv or flatten-to-Dense after a
conv, where a constant map stays constant under max-pooling). A zero-input conv
filter with relu(b) > 0 feeding a SAME-padded conv is kept, since padding
makes its contribution position-dependent. Inputs of the first layer and the
outputs of the last are never changed, so the compact model is a drop-in
replacement.

Any other model (your linen module, a ResNet with BatchNorm and residual adds, a
transformer, an NNX module) goes through `compact_any`: the jaxpr analysis of
`sparsejax.structure` finds the removable units, and the result is a smaller
parameter pytree (every Dense/conv kernel sliced to its used inputs and kept units)
plus a jitted callable evaluating it, with the same outputs; it can be exported
with `jax.export`. How that computation is laid out decides whether it is faster:

- values that elementwise ops combine share one channel layout: a residual stream
  (the stem, every branch's last BatchNorm, each add and ReLU) carries the union of
  the channels any of its members uses, and each layer writes straight into it, so
  no activation is re-laid out at an add;
- channel counts are grown to a multiple of `channel_multiple` (default 8) with zero
  weights: XLA's convolutions are markedly slower on odd counts (on CPU, 27 channels
  take 1.7x the time of 32);
- the model's jaxpr is traced again at the caller's batch size and replayed whole
  (a per-example `vmap` of the analysed jaxpr costs about 20 % on a ResNet); a model
  whose jaxpr changes with the batch size otherwise (an iota over the batch) is
  replayed one example at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import metrics, structure
from sparsejax.models.mlp import MLP

__all__ = ["compact", "compact_any", "CompactModel"]


@dataclasses.dataclass
class CompactModel:
  """The compacted computation of any model.

  Attributes:
    params: {kernel path: sliced kernel} (the only arrays that change size).
    apply: `apply(params, x) -> outputs` for a batch `x`, jitted.
    kept_units: {layer: indices of the units kept}.
    kernel_sizes: (original, compacted) number of kernel entries; the compacted
      kernels include the zero rows and columns that align channel counts.
  """
  params: dict
  apply: Callable[[dict, Any], Any]
  kept_units: dict
  kernel_sizes: tuple[int, int]

  def __call__(self, x: Any) -> Any:
    return self.apply(self.params, x)


def _fold_constant(next_layer: metrics.Layer, next_bias: np.ndarray, unit: int, value: float) -> None:
  """Adds the effect of unit `unit` outputting the constant `value` to `next_bias` in place."""
  k = next_layer.kernel
  if next_layer.kind == "conv":
    next_bias += value * k[:, :, unit, :].sum(axis=(0, 1))
  elif next_layer.input_channels_period:
    period = next_layer.input_channels_period
    next_bias += value * k.reshape(-1, period, k.shape[-1])[:, unit, :].sum(axis=0)
  else:
    next_bias += value * k[unit]


def compact_any(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
                input_dtype: Any = jnp.float32, channel_multiple: int = 8) -> CompactModel:
  """The smaller computation of any linen or NNX model (see the module docstring).

  Args:
    model: a linen module (with `params` or its full variables) or an NNX module
      (`params` None: taken from the module).
    params: see `metrics.analyze_model`.
    input_shape: one example's shape (no batch axis).
    input_dtype: the input's dtype (e.g. jnp.int32 for token ids; default float32).
    channel_multiple: every channel layout is grown to a multiple of this, with
      zero weights (default 8: XLA's convolutions run markedly faster on such
      counts, e.g. 27 channels take 1.7x the time of 32 on CPU); 1 keeps the fewest.

  Raises:
    ValueError: params that do not belong to the model, a wrong input shape, or a
      `channel_multiple` that is not an integer >= 1.
  """
  found = metrics.analyze_model(model, params, input_shape, input_dtype=input_dtype)
  kernels, apply_fn = structure.compile_compact(found, channel_multiple)
  kept = {metrics.layer_name(op.name): np.flatnonzero(~op.units_removable)
          for op in found.ops if op.units_removable is not None}
  original = int(sum(op.kernel.size for op in found.ops if op.name in kernels))
  small = {name: jnp.asarray(k) for name, k in kernels.items()}
  return CompactModel(small, jax.jit(apply_fn), kept, (original, int(sum(k.size for k in kernels.values()))))


def compact(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
            input_dtype: Any = jnp.float32, channel_multiple: int = 8):
  """Returns `(compact_model, compact_params, kept)` computing the same function as `model`.

  For a model other than `MLP`/`ConvNet` this returns `compact_any(...)` (a
  `CompactModel`: smaller params and a callable), since no smaller flax module of an
  arbitrary class can be written down.

  Args:
    model: an `MLP` or `ConvNet` (or any model: see above).
    params: its (sparse) parameters.
    input_shape: one example's shape (no batch axis).
    input_dtype: the input's dtype, for a model other than `MLP`/`ConvNet` (e.g.
      jnp.int32 for token ids; default float32).
    channel_multiple: for a model other than `MLP`/`ConvNet`, see `compact_any`
      (the built-in models get exactly their kept units).

  Returns:
    The smaller model, its parameters (numpy -> jax arrays), and per layer the
    indices of the units kept.
  """
  structure.check_channel_multiple(channel_multiple)
  if not isinstance(model, metrics.BUILTIN_MODELS):
    return compact_any(model, params, input_shape, input_dtype, channel_multiple)
  layer_list = metrics.layers(model, params, input_shape)
  biases = [np.array(l.bias, np.float64) for l in layer_list]
  keep = metrics.alive_units(layer_list)
  for i in range(len(layer_list) - 1):
    # Dropped units with a constant nonzero output: fold it into the next bias.
    for unit in np.flatnonzero(~keep[i] & metrics.constant_units(layer_list, i)):
      if not metrics.outgoing_zero(layer_list[i + 1], keep[i].size)[unit]:
        _fold_constant(layer_list[i + 1], biases[i + 1], unit, float(np.maximum(biases[i][unit], 0)))
    if not keep[i].any():  # keep one (now inert) unit so every layer has a width
      keep[i][0] = True
      biases[i][0] = 0.0  # its constant (if any) was folded above; its outgoing weights are zero otherwise

  new_params, prev = {}, None
  for layer, kept, bias in zip(layer_list, keep, biases):
    k = layer.kernel
    if prev is not None:
      rows = np.tile(prev, k.shape[0] // prev.size) if layer.input_channels_period else prev
      k = k[..., rows, :] if layer.kind == "conv" else k[rows]
    k = k[..., kept]
    dtype = layer.kernel.dtype
    new_params[layer.name] = {"kernel": jnp.asarray(k, dtype), "bias": jnp.asarray(bias[kept], dtype)}
    prev = kept

  widths = [int(m.sum()) for m in keep]
  if isinstance(model, MLP):
    new_model = model.clone(features=tuple(widths))
  else:
    n_conv = len(model.convs)
    convs = tuple(spec._replace(features=w) for spec, w in zip(model.convs, widths[:n_conv]))
    new_model = model.clone(convs=convs, dense=tuple(widths[n_conv:]))
  kept_indices = {layer.name: np.flatnonzero(m) for layer, m in zip(layer_list, keep)}
  return new_model, new_params, kept_indices
