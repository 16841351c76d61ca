"""Sparsity metrics: nonzeros, neurons removed, parameters used and FLOPs.

Counting conventions (every experiment reports these):
  * a hidden unit (Dense output or conv filter) is *removed* when all its
    outgoing weights are zero, or all its incoming weights are zero and its
    constant output relu(b) is 0 or can be folded into the next layer's bias
    (next layer Dense or VALID conv); output units are never removed. This is
    exactly what `compact` removes;
  * FLOPs = 2 x multiply-accumulates of the Dense/conv layers of one example
    (bias adds, activations and pooling are not counted). Dense FLOPs use every
    weight; sparse FLOPs count only nonzero weights between units that are not
    removed, times the output positions of a conv;
  * parameters used = nonzero weights between kept units + biases of kept units.

`compact` (in `sparsejax.compaction`) removes dead units physically.

Any other model (a linen module of your own, with BatchNorm, residual additions,
attention; or a flax NNX module) is measured from its jaxpr by
`sparsejax.structure`, with the same conventions: `report(model, params,
input_shape)` for linen (`params` may also be the full `variables` dict, e.g. with
`batch_stats`), `report(module, input_shape=...)` for NNX (the parameters and
statistics come from the module). The built-in MLP and ConvNet keep their layer-list
path, and the jaxpr path gives the same counts on them (tested), except that it also
removes units that only feed removed units, and constant units feeding a padded conv
(folded exactly as a per-position map by `compaction.compact_any`, where the built-in
compaction folds constants into biases only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import _checks, structure
from sparsejax.models.cnn import ConvNet
from sparsejax.models.interface import FunctionalNNX, is_nnx, mode_kwargs
from sparsejax.models.mlp import MLP

__all__ = ["nnz", "sparsity_per_leaf", "summary", "Layer", "layers", "alive_units", "neurons_removed", "SizeReport",
           "flops_and_params", "report", "check_params_match", "analyze_model", "layer_name", "BUILTIN_MODELS",
           "coupled_channels"]


def nnz(tree: Any) -> int:
  """Number of nonzero entries over all leaves."""
  return int(sum(np.count_nonzero(np.asarray(leaf)) for leaf in jax.tree.leaves(tree)))


def sparsity_per_leaf(params: Any) -> dict[str, dict]:
  """{path: {"size", "nonzero", "zero_fraction"}} for every leaf."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    arr = np.asarray(leaf)
    nz = int(np.count_nonzero(arr))
    out[jax.tree_util.keystr(path)] = {"size": int(arr.size), "nonzero": nz,
                                       "zero_fraction": 1.0 - nz / max(arr.size, 1)}
  return out


def summary(params: Any) -> dict:
  """Total size, nonzeros and fraction of exact zeros over all leaves."""
  size = int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))
  nz = nnz(params)
  return {"size": size, "nonzero": nz, "sparsity": 1.0 - nz / max(size, 1)}


class Layer(NamedTuple):
  """One Dense or conv layer in input-to-output order.

  `positions` is the number of output positions per example (H*W before
  pooling for a conv, 1 for Dense); `input_channels_period` is C when the
  layer's input is a flattened (H, W, C) feature map (rows r belong to channel
  r % C), else None.
  """
  name: str
  kind: str
  kernel: np.ndarray
  bias: np.ndarray
  positions: int
  input_channels_period: int | None = None
  padding: str | None = None


def _expected_params(model: Any, shape: tuple, input_dtype: Any) -> Any:
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, *shape), input_dtype)))
  return expected.get("params", {}) if isinstance(expected, dict) or hasattr(expected, "get") else expected


def _input_error(model: Any, shape: tuple, input_dtype: Any, err: Exception, hint: str = "") -> ValueError:
  """The error for inputs of `shape` and `input_dtype` that `model` cannot take."""
  return ValueError(f"{type(model).__name__} cannot take inputs of shape {shape} and dtype "
                    f"{jnp.dtype(input_dtype).name} (input_shape, input_dtype): {str(err).splitlines()[0]}{hint}")


def _batch_axis_hint(model: Any, params: Any, shape: tuple, input_dtype: Any) -> str:
  """A hint when `shape` would fit without its first axis (a batch shape given as input_shape)."""
  if len(shape) < 2:
    return ""
  try:
    expected = _expected_params(model, shape[1:], input_dtype)
  except Exception:  # pylint: disable=broad-except
    return ""
  same = jax.tree.structure(expected) == jax.tree.structure(params) and all(
      tuple(np.shape(g)) == tuple(w.shape) for g, w in zip(jax.tree.leaves(params), jax.tree.leaves(expected)))
  return (f" input_shape is one example's shape, without the batch axis: these params fit input_shape="
          f"{shape[1:]}.") if same else ""


def check_params_match(model: Any, params: Any, input_shape: Sequence[int], input_dtype: Any = jnp.float32) -> None:
  """Raises ValueError unless `params` are `model`'s parameters for inputs of `input_shape`.

  Compares the pytree structure and every leaf's shape with what `model.init` would
  create (traced abstractly, no computation), naming the first difference.
  """
  shape = tuple(int(d) for d in input_shape)
  try:
    expected = _expected_params(model, shape, input_dtype)
  except Exception as err:  # pylint: disable=broad-except
    raise _input_error(model, shape, input_dtype, err, _batch_axis_hint(model, params, shape, input_dtype)) from None
  got_leaves, got_def = jax.tree_util.tree_flatten_with_path(params)
  want_leaves, want_def = jax.tree_util.tree_flatten_with_path(expected)
  if got_def != want_def:
    got_paths = {jax.tree_util.keystr(p) for p, _ in got_leaves}
    want_paths = {jax.tree_util.keystr(p) for p, _ in want_leaves}
    detail = sorted(want_paths - got_paths)[:3] or sorted(got_paths - want_paths)[:3]
    raise ValueError(f"params do not belong to this {type(model).__name__}: their structure differs "
                     f"(e.g. {detail}).")
  for (path, got), (_, want) in zip(got_leaves, want_leaves):
    if tuple(np.shape(got)) != tuple(want.shape):
      raise ValueError(f"params do not match this {type(model).__name__} for input_shape {shape}: "
                       f"{jax.tree_util.keystr(path)} has shape {tuple(np.shape(got))}, the model expects "
                       f"{tuple(want.shape)}.{_batch_axis_hint(model, params, shape, input_dtype)}")


def layers(model: Any, params: Any, input_shape: Sequence[int]) -> list[Layer]:
  """The layer sequence of an `MLP` or `ConvNet` for inputs of `input_shape` (no batch axis).

  Raises:
    ValueError: another kind of model, or params/input_shape that do not fit it.
  """
  if not isinstance(model, (MLP, ConvNet)):
    raise ValueError(f"the layer list is defined for MLP and ConvNet models; got {type(model).__name__} "
                     "(report, neurons_removed and flops_and_params take any model).")
  if _is_variables(params):
    params = params["params"]
  check_params_match(model, params, input_shape)
  if isinstance(model, MLP):
    names = [f"Dense_{i}" for i in range(len(model.features))]
    return [Layer(n, "dense", np.asarray(params[n]["kernel"]), np.asarray(params[n]["bias"]), 1) for n in names]
  if not isinstance(model, ConvNet):
    raise ValueError(f"metrics support MLP and ConvNet models; got {type(model).__name__}.")
  shape = tuple(input_shape) if len(input_shape) == 3 else (*input_shape, 1)
  h, w = shape[0], shape[1]
  out = []
  for i, spec in enumerate(model.convs):
    if spec.padding == "VALID":
      h, w = h - spec.kernel + 1, w - spec.kernel + 1
    name = f"Conv_{i}"
    out.append(Layer(name, "conv", np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"]), h * w,
                     padding=spec.padding))
    if spec.pool > 1:
      h, w = h // spec.pool, w // spec.pool
  period = model.convs[-1].features if model.convs else None
  for i in range(len(model.dense)):
    name = f"Dense_{i}"
    out.append(Layer(name, "dense", np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"]), 1,
                     period if i == 0 else None))
  return out


def _incoming_zero(layer: Layer) -> np.ndarray:
  k = layer.kernel
  return np.all(k.reshape(-1, k.shape[-1]) == 0, axis=0)


def outgoing_zero(next_layer: Layer, units: int) -> np.ndarray:
  """Per input unit of `next_layer`: True where all its outgoing weights are exactly zero."""
  k = next_layer.kernel
  if next_layer.kind == "conv":  # (kh, kw, cin, cout): unit c feeds k[:, :, c, :]
    return np.all(np.moveaxis(k, 2, 0).reshape(units, -1) == 0, axis=1)
  if next_layer.input_channels_period:  # flattened (H, W, C) rows
    per_channel = k.reshape(-1, next_layer.input_channels_period, k.shape[-1])
    return np.all(np.moveaxis(per_channel, 1, 0).reshape(units, -1) == 0, axis=1)
  return np.all(k == 0, axis=1)


def constant_units(layer_list: list[Layer], index: int) -> np.ndarray:
  """Units of layer `index` with all-zero incoming weights whose constant output relu(b) is nonzero."""
  layer = layer_list[index]
  return _incoming_zero(layer) & (np.maximum(layer.bias, 0) != 0)


def alive_units(layer_list: list[Layer]) -> list[np.ndarray]:
  """Boolean mask of kept units per layer (the output layer keeps all); see module docstring."""
  masks = []
  for i, layer in enumerate(layer_list):
    units = layer.kernel.shape[-1]
    if i == len(layer_list) - 1:
      masks.append(np.ones(units, bool))
      continue
    nxt = layer_list[i + 1]
    foldable = nxt.kind == "dense" or nxt.padding == "VALID"
    removable_input = _incoming_zero(layer) & (foldable | ~constant_units(layer_list, i))
    masks.append(~(removable_input | outgoing_zero(nxt, units)))
  return masks


def neurons_removed(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
                    input_dtype: Any = jnp.float32) -> dict[str, dict]:
  """{layer: {"removed", "total"}} for every hidden layer (any model: see the module docstring)."""
  if not _builtin(model):
    return _generic_neurons(analyze_model(model, params, input_shape, input_dtype=input_dtype))
  layer_list = layers(model, params, input_shape)
  return _neurons_removed(layer_list, alive_units(layer_list))


def _neurons_removed(layer_list: list[Layer], masks: list[np.ndarray]) -> dict[str, dict]:
  return {l.name: {"removed": int((~m).sum()), "total": int(m.size)} for l, m in zip(layer_list[:-1], masks[:-1])}


def _input_mask(layer: Layer, prev_alive: np.ndarray | None) -> np.ndarray:
  rows = layer.kernel.shape[-2] if layer.kind == "conv" else layer.kernel.shape[0]
  if prev_alive is None:
    return np.ones(rows, bool)
  if layer.input_channels_period:
    return np.tile(prev_alive, rows // layer.input_channels_period)
  return prev_alive


def flops_and_params(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
                     input_dtype: Any = jnp.float32) -> dict:
  """Dense vs sparse FLOPs per example and parameter counts (see module docstring)."""
  if not _builtin(model):
    return _generic_counts(analyze_model(model, params, input_shape, input_dtype=input_dtype))
  layer_list = layers(model, params, input_shape)
  return _flops_and_params(layer_list, alive_units(layer_list))


def _flops_and_params(layer_list: list[Layer], masks: list[np.ndarray]) -> dict:
  dense_flops = sparse_flops = dense_params = used_params = 0
  prev = None
  for layer, alive in zip(layer_list, masks):
    k = layer.kernel
    dense_flops += 2 * k.size * layer.positions
    dense_params += k.size + layer.bias.size
    in_mask = _input_mask(layer, prev)
    kept = k[..., in_mask, :][..., alive]
    nz = int(np.count_nonzero(kept))
    sparse_flops += 2 * nz * layer.positions
    used_params += nz + int(alive.sum())
    prev = alive
  return {"flops_dense": int(dense_flops), "flops_sparse": int(sparse_flops),
          "flops_fraction": sparse_flops / max(dense_flops, 1),
          "params_dense": int(dense_params), "params_used": int(used_params),
          "params_fraction": used_params / max(dense_params, 1)}


@dataclasses.dataclass(frozen=True)
class SizeReport(Mapping):
  """What `report` measures about a (sparse) network, in plain Python types (JSON-ready).

  It is also a read-only mapping (``r["weight_sparsity"]``, ``{**r}``); `to_dict` gives a
  plain dict for `json.dump`.

  Attributes:
    weights_total: kernel entries (Dense/conv weights; biases and scales not counted).
    weights_nonzero: nonzero kernel entries.
    weight_sparsity: 1 - weights_nonzero / weights_total.
    layer_sparsity: {layer: fraction of its kernel entries that are zero}.
    layer_nonzero: {layer: nonzero kernel entries}.
    neurons_removed: {layer: units (Dense outputs, conv filters) removable without changing the outputs}.
    neurons_total: {layer: units}.
    flops_dense: multiply-adds per example of the dense network (Dense/conv ops).
    flops_sparse: the same with only nonzero weights between units that stay.
    flops_fraction: flops_sparse / flops_dense.
    params_dense: parameters of the dense network's Dense/conv ops (kernels and biases).
    params_used: those that a compacted network keeps and that are nonzero.
    params_fraction: params_used / params_dense.
  """
  weights_total: int
  weights_nonzero: int
  weight_sparsity: float
  layer_sparsity: dict[str, float]
  layer_nonzero: dict[str, int]
  neurons_removed: dict[str, int]
  neurons_total: dict[str, int]
  flops_dense: int
  flops_sparse: int
  flops_fraction: float
  params_dense: int
  params_used: int
  params_fraction: float

  def __getitem__(self, key: str) -> Any:
    if key not in _REPORT_FIELDS:
      raise KeyError(key)
    return getattr(self, key)

  def __iter__(self) -> Iterator[str]:
    return iter(_REPORT_FIELDS)

  def __len__(self) -> int:
    return len(_REPORT_FIELDS)

  def to_dict(self) -> dict[str, Any]:
    """A plain dict of every field (nested dicts copied)."""
    return {k: dict(v) if isinstance(v, dict) else v for k, v in self.items()}


_REPORT_FIELDS = tuple(f.name for f in dataclasses.fields(SizeReport))


def _size_report(values: dict) -> SizeReport:
  """A SizeReport of `values` with every number a Python int/float and every key a str."""
  def plain(v, kind):
    return {str(k): kind(x) for k, x in v.items()} if isinstance(v, dict) else kind(v)
  kinds = {f.name: (int if "int" in str(f.type) else float) for f in dataclasses.fields(SizeReport)}
  return SizeReport(**{k: plain(values[k], kinds[k]) for k in _REPORT_FIELDS})


def report(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
           input_dtype: Any = jnp.float32) -> SizeReport:
  """Everything an experiment reports about a (sparse) network's size, for any linen or NNX model.

  Args:
    model: the built-in MLP/ConvNet, any linen module (with params or full variables),
      or an NNX module (params None).
    params: its parameters (see `analyze_model`).
    input_shape: one example's shape (no batch axis).
    input_dtype: the input's dtype (e.g. jnp.int32 for token ids).

  Returns:
    A `SizeReport` (nonzeros, sparsity per layer, neurons removable, FLOPs and
    parameters used); a read-only mapping too.
  """
  if not _builtin(model):
    found = analyze_model(model, params, input_shape, input_dtype=input_dtype)
    kernels = {layer_name(op.name): op.kernel for op in found.ops}
    removed = _generic_neurons(found)
    return _size_report({**_generic_counts(found), **_kernel_counts(kernels),
                         "neurons_removed": {k: v["removed"] for k, v in removed.items()},
                         "neurons_total": {k: v["total"] for k, v in removed.items()}})
  layer_list = layers(model, params, input_shape)
  masks = alive_units(layer_list)
  removed = _neurons_removed(layer_list, masks)
  kernels = {l.name: l.kernel for l in layer_list}
  return _size_report({**_flops_and_params(layer_list, masks), **_kernel_counts(kernels),
                       "neurons_removed": {k: v["removed"] for k, v in removed.items()},
                       "neurons_total": {k: v["total"] for k, v in removed.items()}})


def _kernel_counts(kernels: dict) -> dict:
  total = int(sum(k.size for k in kernels.values()))
  return {"weights_total": total, "weights_nonzero": nnz(kernels),
          "weight_sparsity": 1.0 - nnz(kernels) / max(total, 1),
          "layer_sparsity": {k: 1.0 - np.count_nonzero(v) / max(v.size, 1) for k, v in kernels.items()},
          "layer_nonzero": {k: int(np.count_nonzero(v)) for k, v in kernels.items()}}


# ------------------------------------------------------------ any model (jaxpr)


BUILTIN_MODELS = (MLP, ConvNet)


def _builtin(model: Any) -> bool:
  return isinstance(model, BUILTIN_MODELS)


def analyze_model(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
                  model_state: Any = None, input_dtype: Any = jnp.float32) -> structure.Structure:
  """`structure.analyze` for a linen module with its params (or full variables) or an NNX module.

  Args:
    model: a linen module, an NNX module, or a `models.nnx_support.FunctionalNNX`.
    params: linen: the "params" collection or the whole variables dict; NNX: None
      (taken from the module) or trained params of a `FunctionalNNX`.
    input_shape: one example's shape (no batch axis); required.
    model_state: other variable collections (e.g. {"batch_stats": ...}) when `params`
      holds only the parameters.
    input_dtype: the dtype of the model's input (e.g. jnp.int32 for token ids that an
      embedding looks up; default float32).

  Raises:
    ValueError: no input_shape, params that do not match the model, or an input shape
      the model cannot take.
  """
  if input_shape is None:
    raise ValueError("input_shape (one example's shape, without the batch axis) is required.")
  shape = tuple(int(d) for d in input_shape)
  if is_nnx(model) or isinstance(model, FunctionalNNX):
    functional = model if isinstance(model, FunctionalNNX) else FunctionalNNX(model)
    variables = functional.init()
    if params is not None and _is_variables(params):
      variables = {"params": params["params"], "nnx_state": params.get("nnx_state", variables["nnx_state"])}
      check_params_match(functional, variables["params"], shape, input_dtype)
    elif params is not None:
      check_params_match(functional, params, shape, input_dtype)
      variables = {"params": params, "nnx_state": variables["nnx_state"] if model_state is None
                   else model_state.get("nnx_state", model_state)}
    apply_fn = lambda v, x: functional.apply(v, x)  # noqa: E731
  else:
    if params is None:
      raise ValueError(f"params are required for a linen module ({type(model).__name__}).")
    variables = dict(params) if _is_variables(params) else {"params": params, **(model_state or {})}
    check_params_match(model, variables["params"], shape, input_dtype)
    mode = mode_kwargs(model, False)
    apply_fn = lambda v, x: model.apply(v, x, **mode)  # noqa: E731
  try:
    return structure.analyze(apply_fn, variables, shape, params=variables["params"], dtype=input_dtype)
  except (TypeError, ValueError) as err:
    raise _input_error(model, shape, input_dtype, err) from None


def coupled_channels(model: Any, params: Any = None, input_shape: Sequence[int] | None = None,
                     select: str | Callable[[tuple], bool] = "scale", model_state: Any = None,
                     input_dtype: Any = jnp.float32) -> list[list[tuple[str, ...]]]:
  """Groups of per-channel parameter vectors that act on the same channels, from the jaxpr.

  Channel c of a residual stream is written by the stem and by every block of its
  stage (and a projection shortcut); it can be removed only when every writer drops
  it. This returns, for any linen or NNX model, the vectors that act on one stream
  (or on one value) as a group, e.g. for a ResNet the BatchNorm scales
  [stem_bn, stage0_block0/bn2, stage0_block1/bn2], [stage0_block0/bn1], ...: pass
  them to `transforms.coupled_group_lasso` so the penalty removes stream channels
  from all writers at once.

  Args:
    model: a linen module, an NNX module or a `FunctionalNNX` (as for `analyze_model`).
    params: its params or full variables (NNX: None).
    input_shape: one example's shape (no batch axis).
    select: the vectors to group: a leaf name matched against the last key of each
      path (default "scale": normalisation scales), or a callable on the path.
    model_state: other variable collections when `params` holds only the parameters.
    input_dtype: the model's input dtype.

  Returns:
    Lists of paths (tuples of key names inside the params tree, e.g.
    ("stage0_block0", "bn2", "scale")), singletons included.
  """
  if isinstance(select, str):
    name = select
    select = lambda path: path[-1] == name  # noqa: E731
  elif not callable(select):
    raise _checks.ArgumentTypeError(f"select must be a leaf name or a callable on paths; got {select!r}.")
  found = analyze_model(model, params, input_shape, model_state=model_state, input_dtype=input_dtype)
  groups = structure.coupled_channel_vectors(found, lambda path: path[0] == "params" and select(path[1:]))
  return [[path[1:] for path in group] for group in groups]


def _is_variables(tree: Any) -> bool:
  return hasattr(tree, "keys") and "params" in tree and all(not hasattr(v, "shape") for v in tree.values())


def layer_name(path: str) -> str:
  """A readable layer name from a kernel's path: "['params']['stage0_block0']['conv1']['kernel']" -> "stage0_block0/conv1"."""
  keys = [k.strip("'\"") for k in path.strip("[]").split("][")]
  keys = [k for k in keys if k not in ("params",)]
  if keys and keys[-1] in ("kernel", "w", "weight"):
    keys = keys[:-1]
  return "/".join(keys) or path


def _generic_neurons(found: structure.Structure) -> dict[str, dict]:
  hidden = [op for op in found.ops[:-1] if op.units_removable is not None]
  return {layer_name(op.name): {"removed": int(op.units_removable.sum()), "total": int(op.units_removable.size)}
          for op in hidden}


def _generic_counts(found: structure.Structure) -> dict:
  return {"flops_dense": found.flops_dense, "flops_sparse": found.flops_sparse,
          "flops_fraction": found.flops_sparse / max(found.flops_dense, 1),
          "params_dense": found.params_dense, "params_used": found.params_used,
          "params_fraction": found.params_used / max(found.params_dense, 1)}
