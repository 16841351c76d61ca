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
import errno
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import export as jax_export

from sparsejax import metrics, structure
from sparsejax.models.mlp import MLP

__all__ = ["compact", "compact_any", "CompactModel", "load"]

FORMAT = "sparsejax.CompactModel/1"  # the `format` entry of a saved file's metadata


@dataclasses.dataclass(repr=False)
class CompactModel:
  """The compacted computation of a model: `compaction.compact` returns one for every model.

  Call it on a batch (`cm(x)`), read what was kept, and `save` it: `compaction.load`
  gives back a `CompactModel` in any process, without the model's class, with
  outputs equal to this one's at any batch size.

  Attributes:
    params: the arrays `apply` takes: for the built-in MLP/ConvNet the smaller
      module's parameters ({layer: {"kernel", "bias"}}); for any other model
      {kernel path: sliced kernel} (the only arrays that change size; biases and
      normalisation statistics are constants of `apply`).
    apply: `apply(params, x) -> outputs` for a batch `x`.
    kept_units: {layer: indices of the units kept}.
    kernel_sizes: (original, compacted) number of kernel entries; the compacted
      kernels include the zero rows and columns that align channel counts.
    input_shape: one example's shape (no batch axis).
    input_dtype: the input's dtype name (e.g. "float32", "int32").
    module: the smaller flax module where one exists (the built-in MLP/ConvNet),
      else None; `module.apply(variables, x)` equals `cm(x)`.
    variables: `{"params": params}` for `module`, else None.
  """
  params: dict
  apply: Callable[[dict, Any], Any]
  kept_units: dict
  kernel_sizes: tuple[int, int]
  input_shape: tuple[int, ...] | None = None
  input_dtype: str = "float32"
  module: Any = None
  variables: dict | None = None

  def __call__(self, x: Any) -> Any:
    return self.apply(self.params, x)

  def __repr__(self) -> str:
    kept = {name: int(np.size(units)) for name, units in self.kept_units.items()}
    module = "" if self.module is None else f", module={type(self.module).__name__}"
    return (f"CompactModel(input_shape={self.input_shape}, input_dtype={self.input_dtype!r}, "
            f"kernel_sizes={tuple(self.kernel_sizes)}, kept_units={kept}{module})")

  def save(self, path: str | os.PathLike) -> int:
    """Writes the model to one file (an `.npz` archive) that `compaction.load` reads in any process.

    The computation is stored as a `jax.export` artifact with a symbolic batch size,
    so the loaded model takes any batch; no Python class is needed to load it. Each
    parameter array is stored as its nonzero values and their flat indices where that
    is smaller than the dense array (unstructured zeros cost nothing), else dense.
    The file is written next to `path` and renamed into place, so a failed write
    (e.g. a full disk) leaves no partial file at `path`.

    Args:
      path: the file to write (any name; `.npz` is a good suffix).

    Returns:
      The number of bytes written.

    Raises:
      ValueError: the model has no `input_shape`, or its computation cannot be
        exported with a symbolic batch size.
      OSError: the file cannot be written.
    """
    if self.input_shape is None:
      raise ValueError("this CompactModel has no input_shape, which saving needs (build it with "
                       "compaction.compact(model, params, input_shape)).")
    arrays, leaves = _encode_params(self.params)
    arrays["exported"] = np.frombuffer(_export(self.apply, self.params, self.input_shape, self.input_dtype), np.uint8)
    meta = {"format": FORMAT, "input_shape": list(self.input_shape), "input_dtype": self.input_dtype,
            "kernel_sizes": [int(n) for n in self.kernel_sizes], "leaves": leaves,
            "kept_units": {str(k): [int(i) for i in np.asarray(v).ravel()] for k, v in self.kept_units.items()}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    handle, tmp = tempfile.mkstemp(prefix=".compact-", suffix=".tmp", dir=folder)
    try:
      with os.fdopen(handle, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(tmp, 0o666 & ~umask)  # as open() would create it (mkstemp makes it 0600)
      os.replace(tmp, path)
    except BaseException:
      if os.path.exists(tmp):
        os.remove(tmp)
      raise
    return os.path.getsize(path)


def _export(apply: Callable, params: dict, input_shape: Sequence[int], input_dtype: str) -> bytes:
  """`apply(params, x)` serialised by `jax.export` for x of shape (b, *input_shape), b symbolic."""
  (batch,) = jax_export.symbolic_shape("b")
  x_spec = jax.ShapeDtypeStruct((batch, *input_shape), jnp.dtype(input_dtype))
  p_spec = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), jnp.asarray(a).dtype), params)
  fn = jax.jit(apply)
  try:
    exported = jax_export.export(fn, platforms=("cpu", "cuda"))(p_spec, x_spec)
  except Exception:  # pylint: disable=broad-except  # a jaxlib that cannot lower for CUDA: this platform only
    try:
      exported = jax_export.export(fn)(p_spec, x_spec)
    except Exception as err:  # pylint: disable=broad-except
      raise ValueError(f"this model's compact computation cannot be exported with a symbolic batch size: "
                       f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
  return bytes(exported.serialize())


def _key_path(path: tuple) -> list[str]:
  keys = []
  for key in path:
    if not isinstance(key, jax.tree_util.DictKey) or not isinstance(key.key, str):
      raise ValueError(f"CompactModel.params must be nested dicts with string keys; got the key {key!r}.")
    keys.append(key.key)
  return keys


def _encode_params(params: dict) -> tuple[dict[str, np.ndarray], list[dict]]:
  """The arrays of `params` for an archive (sparse where smaller) and their metadata, leaf by leaf."""
  arrays: dict[str, np.ndarray] = {}
  leaves = []
  for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(params)[0]):
    value = np.asarray(leaf)
    raw = value.reshape(-1).view(f"u{value.dtype.itemsize}")  # bit patterns: any dtype (bfloat16 too)
    index_dtype = np.int32 if value.size < 2**31 else np.int64
    nonzero = np.flatnonzero(value.reshape(-1) != 0)
    sparse = nonzero.size * (value.dtype.itemsize + np.dtype(index_dtype).itemsize) < value.nbytes
    if sparse:
      arrays[f"leaf{i}_values"] = raw[nonzero]
      arrays[f"leaf{i}_indices"] = nonzero.astype(index_dtype)
    else:
      arrays[f"leaf{i}"] = raw
    leaves.append({"path": _key_path(path), "shape": list(value.shape), "dtype": jnp.dtype(value.dtype).name,
                   "storage": "sparse" if sparse else "dense"})
  return arrays, leaves


def _decode_params(archive: Any, leaves: list[dict]) -> dict:
  params: dict = {}
  for i, leaf in enumerate(leaves):
    dtype = jnp.dtype(leaf["dtype"])
    size = int(np.prod(leaf["shape"], dtype=np.int64))
    if leaf["storage"] == "sparse":
      raw = np.zeros(size, f"u{dtype.itemsize}")
      raw[archive[f"leaf{i}_indices"]] = archive[f"leaf{i}_values"]
    else:
      raw = archive[f"leaf{i}"]
    node = params
    for key in leaf["path"][:-1]:
      node = node.setdefault(key, {})
    node[leaf["path"][-1]] = jnp.asarray(raw.view(dtype).reshape(leaf["shape"]))
  return params


def load(path: str | os.PathLike) -> CompactModel:
  """The `CompactModel` that `CompactModel.save` wrote to `path`, in any process.

  The model's class is not needed: the computation comes from the file (`jax.export`).
  The loaded model takes any batch size; inputs are cast to the saved `input_dtype`
  and must have the saved `input_shape` after the batch axis. Its `module` and
  `variables` are None.

  Raises:
    ValueError: the file is not a saved CompactModel, or an input of the wrong shape
      is given to the loaded model.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(errno.ENOENT, "no saved CompactModel here", path)
  try:
    with np.load(path, allow_pickle=False) as archive:
      meta = json.loads(archive["meta"].tobytes().decode())
      fmt = meta.get("format") if isinstance(meta, dict) else None
      if fmt == FORMAT:
        params = _decode_params(archive, meta["leaves"])
        exported = jax.export.deserialize(bytearray(archive["exported"].tobytes()))
  except KeyError as err:
    raise ValueError(f"{path!r} is not a saved CompactModel (an .npz archive without the entry {err}).") from err
  except (ValueError, UnicodeDecodeError, OSError, EOFError) as err:  # JSONDecodeError is a ValueError
    raise ValueError(f"{path!r} is not a saved CompactModel (it cannot be read as the .npz archive that "
                     f"CompactModel.save writes).") from err
  if fmt != FORMAT:
    raise ValueError(f"{path!r} is not a saved CompactModel (format {fmt!r}, expected {FORMAT!r}).")
  input_shape = tuple(int(d) for d in meta["input_shape"])
  input_dtype = meta["input_dtype"]

  def apply(p: dict, x: Any) -> Any:
    x = jnp.asarray(x, input_dtype)
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape:
      raise ValueError(f"x must have shape (batch, *{input_shape}) for this model; got {tuple(x.shape)}.")
    return exported.call(p, x)

  kept = {name: np.asarray(units, np.int64) for name, units in meta["kept_units"].items()}
  return CompactModel(params, apply, kept, tuple(meta["kernel_sizes"]), input_shape, input_dtype)


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
  return CompactModel(small, jax.jit(apply_fn), kept, (original, int(sum(k.size for k in kernels.values()))),
                      tuple(int(d) for d in input_shape), jnp.dtype(input_dtype).name)


def compact(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
            input_dtype: Any = jnp.float32, channel_multiple: int = 8) -> CompactModel:
  """The smaller network computing the same function as `model`, as a `CompactModel` (every model).

  For the built-in `MLP`/`ConvNet` the result also holds the smaller flax module
  (`.module`, `.variables`): exactly the kept units, with constants of dropped units
  folded into the next bias. Any other model (your linen or NNX module, a ResNet, a
  transformer) goes through the jaxpr analysis (`compact_any`).

  Args:
    model: any linen module (with its params or full variables) or NNX module.
    params: its (sparse) parameters (None for an NNX module: taken from it).
    input_shape: one example's shape (no batch axis).
    input_dtype: the input's dtype (e.g. jnp.int32 for token ids; default float32).
    channel_multiple: for a model other than `MLP`/`ConvNet`, see `compact_any`
      (the built-in models get exactly their kept units).

  Returns:
    A `CompactModel`: `cm(x)` equals the sparse model's outputs; `cm.save(path)`
    keeps it for `compaction.load`.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from sparsejax import compaction
    >>> from sparsejax.models import MLP
    >>> model = MLP((16, 3))
    >>> params = model.init(jax.random.key(0), jnp.ones((1, 4)))["params"]
    >>> params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[:, 8:].set(0.0)  # 8 dead units
    >>> cm = compaction.compact(model, params, (4,))
    >>> cm.module.features, cm(jnp.ones((5, 4))).shape
    ((8, 3), (5, 3))
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
  sizes = (int(sum(l.kernel.size for l in layer_list)), int(sum(p["kernel"].size for p in new_params.values())))

  def apply(p: dict, x: Any) -> Any:
    return new_model.apply({"params": p}, x)
  return CompactModel(new_params, jax.jit(apply), kept_indices, sizes, tuple(int(d) for d in input_shape),
                      "float32", new_model, {"params": new_params})
