"""The structure of any model, read from its jaxpr: layers, removable units, FLOPs and parameters.

`analyze(fn, variables, input_shape)` traces `fn(variables, x)` once for one example
and interprets the jaxpr twice:

1. **Forward, constants.** Every value carries its concrete entries where they are
   the same for every input (parameters, batch statistics, and everything computed
   from them only) and an "unknown" mask elsewhere (the input is unknown). Ops run on
   the concrete arrays with NaN in unknown places, so unknowns spread exactly as data
   flows: elementwise ops, bias adds, normalisation with known statistics,
   activations, pooling, reshapes and residual adds keep a channel known when its
   inputs are; anything that mixes channels (attention scores, softmax or LayerNorm
   over features) makes its outputs unknown. A Dense or conv whose kernel is known
   multiplies only through nonzero weights, so a unit whose incoming weights are all
   zero outputs a known constant (its bias, after BatchNorm and the activation).
2. **Backward, use.** Starting from the model's outputs, a value's entries are
   *used* if some used output entry depends on them. Through a Dense or conv an input
   feature is used only if it has a nonzero weight into a used output unit and is not
   a constant: a constant input is folded, its exact contribution computed once (a
   bias for a Dense or VALID conv; for a padded conv a per-position map, since the
   padding makes the contribution differ at the borders). An operand of an add that is a
   known 0 is not used. Data movement (reshape, flatten, transpose, slicing,
   concatenation, padding, broadcasting, reductions, pooling) maps use exactly; any
   other op uses all of its inputs.

A *unit* (output channel of a Dense or conv) is removable when none of its outputs
is used: its outgoing weights are all zero, or it is a foldable constant, or it only
feeds removed units. A channel of a residual stream stays as long as any branch that
reads it uses it, and a branch's unit that writes a nonzero constant into a stream
that is used is kept. Counting conventions are those of `sparsejax.metrics`: FLOPs
are 2 x multiply-accumulates of the Dense/conv ops for one example (dense: every
weight; sparse: nonzero weights between used inputs and kept units, times output
positions); parameters used = those nonzero kernel weights + the entries of
per-channel vectors (biases, normalisation scales and shifts) of used channels +
every other parameter leaf whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from sparsejax.masking import path_names

__all__ = ["ParamOp", "Structure", "analyze", "compile_compact", "coupled_channel_vectors"]

_MOVES_OR_MAX = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "pad",
                 "concatenate", "rev", "reduce_sum", "reduce_max", "reduce_window_sum", "reduce_window_max",
                 "cumsum", "cummax", "reduce_or", "copy", "copy_p"}
_MIN_LIKE = {"reduce_min", "reduce_window_min", "cummin"}
# The view-like ops through which a value stays "the same leaf" (a reshaped or broadcast parameter vector).
_VIEWS = {"reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims", "copy"}
# Call-like primitives whose body is inlined ("pjit" is "jit" before JAX 0.7).
_INLINE = {"pjit", "jit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr",
           "remat", "checkpoint", "custom_lin", "remat2"}
_ELEMENTWISE = {
    "add", "sub", "mul", "div", "max", "min", "neg", "exp", "exp2", "log", "log1p", "expm1", "tanh", "logistic",
    "rsqrt", "sqrt", "cbrt", "abs", "sign", "pow", "integer_pow", "select_n", "convert_element_type", "erf", "erfc",
    "erf_inv", "sin", "cos", "tan", "square", "clamp", "stop_gradient", "copy", "copy_p", "floor", "ceil", "round",
    "nextafter", "rem", "atan2", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh", "is_finite",
    "eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "xor", "reduce_precision", "optimization_barrier",
}


@dataclasses.dataclass
class ParamOp:
  """One Dense (`dot_general`) or conv (`conv_general_dilated`) with a parameter kernel.

  Attributes:
    name: the kernel's path in the variables (e.g. "['params']['Dense_0']['kernel']").
    kind: "dense" or "conv".
    kernel: the kernel (host array).
    in_axis, out_axis: the kernel's input-feature and output-unit axes.
    positions: output positions per example (1 for a Dense on vectors, H*W for a conv).
    units_removable: per output unit, True if removable (None when the op's layout does
      not allow unit removal, e.g. a kernel with several output axes).
    inputs_used: per input feature, True if used (None as above).
  """
  name: str
  kind: str
  kernel: np.ndarray
  in_axis: int
  out_axis: int
  positions: int
  units_removable: np.ndarray | None = None
  inputs_used: np.ndarray | None = None
  _out_var: int = -1

  def kept_kernel(self) -> np.ndarray:
    """The kernel restricted to used inputs and kept units (layout unchanged)."""
    return np.take(np.take(self.kernel, np.flatnonzero(self.inputs_used), axis=self.in_axis),
                   np.flatnonzero(~self.units_removable), axis=self.out_axis)

  def nonzero_kept(self) -> int:
    """Nonzero weights the compacted layer keeps (all nonzeros when its units cannot be removed)."""
    if self.units_removable is None or self.inputs_used is None:
      return int(np.count_nonzero(self.kernel))
    return int(np.count_nonzero(self.kept_kernel()))


@dataclasses.dataclass
class Structure:
  """The result of `analyze`: the parameter ops in execution order and the size counts."""
  ops: list[ParamOp]
  flops_dense: int
  flops_sparse: int
  params_dense: int
  params_used: int
  trace: Any = dataclasses.field(default=None, repr=False)  # the interpreted jaxpr (for compaction)



# ------------------------------------------------------------------ the jaxpr


@dataclasses.dataclass
class _Eqn:
  prim: Any
  ins: list  # var ids (int) or ("lit", value)
  outs: list[int]
  params: dict
  out_shapes: list[tuple]


def _sub_jaxpr(eqn) -> tuple[Any, list] | None:
  for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
    sub = eqn.params.get(key)
    if sub is None:
      continue
    if isinstance(sub, jex_core.ClosedJaxpr):
      return sub.jaxpr, list(sub.consts)
    if isinstance(sub, jex_core.Jaxpr):
      return sub, []
  return None


def _flatten(jaxpr, consts, in_atoms, counter, eqns, const_values) -> list:
  """Inlines call-like sub-jaxprs; returns the atoms of the jaxpr's outputs."""
  env: dict[Any, Any] = {}
  for var, value in zip(jaxpr.constvars, consts):
    vid = next(counter)
    const_values[vid] = np.asarray(value)
    env[var] = vid
  for var, atom in zip(jaxpr.invars, in_atoms):
    env[var] = atom

  def read(atom):
    if isinstance(atom, jex_core.Literal):
      return ("lit", np.asarray(atom.val))
    return env[atom]

  for eqn in jaxpr.eqns:
    ins = [read(a) for a in eqn.invars]
    sub = _sub_jaxpr(eqn) if eqn.primitive.name in _INLINE else None
    if sub is not None:
      outs = _flatten(sub[0], sub[1], ins[len(ins) - len(sub[0].invars):], counter, eqns, const_values)
      for var, atom in zip(eqn.outvars, outs):
        env[var] = atom
      continue
    out_ids = []
    for var in eqn.outvars:
      vid = next(counter)
      env[var] = vid
      out_ids.append(vid)
    eqns.append(_Eqn(eqn.primitive, ins, out_ids, dict(eqn.params),
                     [tuple(getattr(v.aval, "shape", ())) for v in eqn.outvars]))
  return [read(a) for a in jaxpr.outvars]


# ------------------------------------------------------------- the analysis


def _unbroadcast(mask: np.ndarray, shape: tuple) -> np.ndarray:
  """OR-reduces a mask of a broadcast result back to an operand of `shape`."""
  if mask.shape == tuple(shape):
    return mask
  extra = mask.ndim - len(shape)
  m = mask.any(axis=tuple(range(extra))) if extra else mask
  axes = tuple(i for i, n in enumerate(shape) if n == 1 and m.shape[i] != 1)
  return m.any(axis=axes, keepdims=True) if axes else m


def _known_kernel_op(eqn: _Eqn, known, is_param_leaf) -> int | None:
  """Index (0 or 1) of the kernel of a dot_general/conv: its fully known operand when the other
  is not, or a parameter kernel second when both are known (a layer fed only constants)."""
  if eqn.prim.name not in ("dot_general", "conv_general_dilated") or len(eqn.ins) != 2:
    return None
  k = [known(a) for a in eqn.ins]
  if k[1] and not k[0]:
    return 1
  if k[0] and not k[1] and eqn.prim.name == "dot_general":
    return 0
  if k[0] and k[1] and is_param_leaf(eqn.ins[1]):
    return 1
  return None


class _Values:
  """What the interpreter knows about every value: its concrete entries, which are unknown, which are used.

  Values are var ids (int) or literals ("lit", value). `val[v]` holds the entries that
  are the same for every input (NaN-free: unknown places hold 0 or whatever the op
  computed from 0), `unk[v]` marks the entries that depend on the input, and `used[v]`
  (filled by the backward pass) the entries some used model output depends on.
  """

  def __init__(self, val: dict[int, np.ndarray], unk: dict[int, np.ndarray]):
    self.val, self.unk = val, unk
    self.used: dict[int, np.ndarray] = {}

  def value(self, a) -> np.ndarray:
    return a[1] if isinstance(a, tuple) else self.val[a]

  def unknown(self, a) -> np.ndarray:
    return np.zeros(np.shape(a[1]), bool) if isinstance(a, tuple) else self.unk[a]

  def known(self, a) -> bool:
    return not self.unknown(a).any()

  def shape(self, a) -> tuple:
    return np.shape(self.value(a))

  def use(self, a, mask: np.ndarray) -> None:
    """Marks the entries `mask` of `a` as used (literals are ignored)."""
    if isinstance(a, tuple):
      return
    mask = np.broadcast_to(mask, np.shape(self.val[a])) if mask.shape != np.shape(self.val[a]) else mask
    self.used[a] = self.used[a] | mask if a in self.used else mask.copy()

  def used_of(self, a) -> np.ndarray:
    return self.used.get(a, np.zeros(np.shape(self.val[a]), bool))


@dataclasses.dataclass
class _Leaves:
  """The variables' leaves: names, which are parameters, and which values are views of one leaf."""
  leaves: list                  # (path, leaf) of every variable leaf
  names: list[str]
  is_param: list[bool]
  leaf_of: dict[int, int]       # var id -> the single leaf it is (a view of)

  def is_param_leaf(self, a) -> bool:
    return not isinstance(a, tuple) and a in self.leaf_of and self.is_param[self.leaf_of[a]]


def analyze(fn: Callable[[Any, jax.Array], Any], variables: Any, input_shape: Sequence[int],
            params: Any | None = None, dtype=jnp.float32) -> Structure:
  """Traces `fn(variables, x)` for one example of `input_shape` and finds its structure.

  Args:
    fn: the forward pass in evaluation mode, e.g. `lambda v, x: model.apply(v, x)`.
    variables: every array the forward pass reads (params and e.g. batch statistics).
    input_shape: one example's shape (no batch axis).
    params: the subtree of `variables` counted as parameters (default: all of them).
    dtype: the input dtype.

  Returns:
    A `Structure`.
  """
  example_shape = tuple(int(d) for d in input_shape)
  var_leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  x_leaves = jax.tree.leaves(jax.ShapeDtypeStruct((1, *example_shape), dtype))
  param_ids = {id(leaf) for leaf in jax.tree.leaves(params if params is not None else variables)}

  def flat_jaxpr(batch: int) -> tuple[list[_Eqn], list, dict[int, np.ndarray], list[int]]:
    closed = jax.make_jaxpr(fn)(variables, jax.ShapeDtypeStruct((batch, *example_shape), dtype))
    counter = iter(range(1 << 62))
    eqns: list[_Eqn] = []
    const_values: dict[int, np.ndarray] = {}
    in_ids = [next(counter) for _ in range(len(var_leaves) + len(x_leaves))]
    outs = _flatten(closed.jaxpr, closed.consts, in_ids, counter, eqns, const_values)
    return eqns, outs, const_values, in_ids

  eqns, outs, const_values, in_ids = flat_jaxpr(1)
  leaves = _Leaves(var_leaves, [jax.tree_util.keystr(p) for p, _ in var_leaves],
                   [id(leaf) in param_ids for _, leaf in var_leaves],
                   {vid: i for i, vid in enumerate(in_ids[:len(var_leaves)])})
  values = _Values(dict(const_values), {vid: np.zeros(v.shape, bool) for vid, v in const_values.items()})
  for vid, (_, leaf) in zip(in_ids, var_leaves):
    values.val[vid], values.unk[vid] = np.asarray(leaf), np.zeros(np.shape(leaf), bool)
  for vid, spec in zip(in_ids[len(var_leaves):], x_leaves):
    values.val[vid], values.unk[vid] = np.zeros(spec.shape, spec.dtype), np.ones(spec.shape, bool)

  ops, op_of_eqn, tied = _forward(eqns, values, leaves)
  _backward_pass(eqns, outs, values, op_of_eqn)
  _mark_units(ops, values)
  structure = _count(ops, values, leaves, tied)
  structure.trace = _Trace(eqns, outs, values.val, values.unk, values.used, op_of_eqn, in_ids[len(var_leaves):],
                           flat_jaxpr, {path_names(var_leaves[leaf][0]): var for leaf, (var, _) in tied.items()})
  return structure


def _forward(eqns: list[_Eqn], values: _Values, leaves: _Leaves) -> tuple[list[ParamOp], dict, dict]:
  """The forward pass: known values and unknown masks of every value, the parameter ops, and the
  parameter vectors tied to a channel axis (leaf -> (value, axis) an elementwise op broadcasts it along)."""
  ops: list[ParamOp] = []
  op_of_eqn: dict[int, ParamOp] = {}
  tied: dict[int, tuple[int, int]] = {}
  leaf_source: dict[int, set[int]] = {vid: {i} for vid, i in leaves.leaf_of.items()}
  for index, eqn in enumerate(eqns):
    kernel_at = _known_kernel_op(eqn, values.known, leaves.is_param_leaf)
    if kernel_at is not None:
      op = _forward_kernel_op(eqn, kernel_at, values, leaves)
      if op is not None:
        ops.append(op)
        op_of_eqn[index] = op
      continue
    all_known = _forward_op(eqn, values)
    # views of one leaf (reshape/broadcast/convert of a parameter vector)
    srcs = set().union(*[leaf_source.get(a, set()) for a in eqn.ins if not isinstance(a, tuple)]) \
        if eqn.ins else set()
    if all_known and srcs:
      for vid in eqn.outs:
        leaf_source[vid] = srcs
      if eqn.prim.name in _VIEWS and len(srcs) == 1:
        (leaf,) = srcs
        for vid in eqn.outs:
          leaves.leaf_of[vid] = leaf
    if eqn.prim.name in _ELEMENTWISE and not all_known and len(eqn.outs) == 1:
      _tie_channel_vectors(eqn, values, leaves, leaf_source, tied)
  return ops, op_of_eqn, tied


def _forward_kernel_op(eqn: _Eqn, kernel_at: int, values: _Values, leaves: _Leaves) -> ParamOp | None:
  """A Dense/conv with a known kernel: multiplies only through nonzero weights (see the module docstring)."""
  act, ker = eqn.ins[1 - kernel_at], eqn.ins[kernel_at]
  a_val = np.where(values.unknown(act), 0, np.asarray(values.value(act)))
  k_val = np.asarray(values.value(ker))
  ins = [a_val, k_val] if kernel_at == 1 else [k_val, a_val]
  out = np.asarray(eqn.prim.bind(*map(jnp.asarray, ins), **eqn.params))
  masks = [values.unknown(act).astype(np.float32), (k_val != 0).astype(np.float32)]
  if kernel_at == 0:
    masks = masks[::-1]
  reach = np.asarray(eqn.prim.bind(*map(jnp.asarray, masks), **eqn.params)) > 0
  values.val[eqn.outs[0]], values.unk[eqn.outs[0]] = out, reach
  if not (leaves.is_param_leaf(ker) and np.ndim(k_val) >= 2):
    return None
  op = _param_op(eqn, kernel_at, leaves.names[leaves.leaf_of[ker]], k_val, out.shape)
  if op is not None:
    op._out_var = eqn.outs[0]
  return op


def _forward_op(eqn: _Eqn, values: _Values) -> bool:
  """Any other op, run on the host values (0 in unknown places); returns whether all its inputs are known."""
  all_known = all(values.known(a) for a in eqn.ins)
  try:
    result = eqn.prim.bind(*[jnp.asarray(values.value(a) if values.known(a) else
                                         np.where(values.unknown(a), 0, values.value(a))) for a in eqn.ins],
                           **eqn.params)
    results = list(result) if eqn.prim.multiple_results else [result]
  except Exception:  # pylint: disable=broad-except  # an op we cannot run on host values: all unknown
    results = None
  masks = None
  if not all_known and results is not None:
    rule = _UNKNOWN_RULES.get(eqn.prim.name)
    masks = rule(eqn, [values.unknown(a) for a in eqn.ins], [np.asarray(values.value(a)) for a in eqn.ins]) \
        if rule is not None else None
  for j, vid in enumerate(eqn.outs):
    shape = eqn.out_shapes[j]
    if results is None:
      values.val[vid], values.unk[vid] = np.zeros(shape, np.float32), np.ones(shape, bool)
    else:
      values.val[vid] = np.asarray(results[j])
      values.unk[vid] = np.zeros(shape, bool) if all_known else (masks[j] if masks is not None else
                                                                  np.ones(shape, bool))
  return all_known


def _tie_channel_vectors(eqn: _Eqn, values: _Values, leaves: _Leaves, leaf_source: dict, tied: dict) -> None:
  """Records the parameter vectors (biases, norm scales) an elementwise op broadcasts along its last axis."""
  out_shape = np.shape(values.val[eqn.outs[0]])
  for a in eqn.ins:
    if isinstance(a, tuple) or not values.known(a):
      continue
    shape = np.shape(values.value(a))
    if len(shape) == len(out_shape) and shape and shape[-1] == out_shape[-1] > 1 and all(n == 1 for n in shape[:-1]):
      for leaf in leaf_source.get(a, set()):
        if leaves.is_param[leaf] and np.size(leaves.leaves[leaf][1]) == out_shape[-1]:
          tied.setdefault(leaf, (eqn.outs[0], len(out_shape) - 1))


def _backward_pass(eqns: list[_Eqn], outs: list, values: _Values, op_of_eqn: dict) -> None:
  """The backward pass: from the model's outputs, the entries every used entry depends on (`values.used`)."""
  for a in outs:
    if not isinstance(a, tuple):
      values.use(a, np.ones(np.shape(values.val[a]), bool))
  for index in range(len(eqns) - 1, -1, -1):
    eqn = eqns[index]
    out_used = [values.used_of(v) for v in eqn.outs]
    if not any(u.any() for u in out_used):
      continue
    if all(values.known(a) for a in eqn.ins):  # a constant: every input of it is used whole
      for a in eqn.ins:
        if not isinstance(a, tuple):
          values.use(a, np.ones(np.shape(values.val[a]), bool))
      continue
    op = op_of_eqn.get(index)
    if op is not None and op.units_removable is not None:
      _use_through_kernel(eqn, out_used[0], values, op)
      continue
    rule = _USE_RULES.get(eqn.prim.name)
    if rule is None or not rule(eqn, out_used[0], values):
      _use_every_input(eqn, values)


def _mark_units(ops: list[ParamOp], values: _Values) -> None:
  """A unit is removable when none of its outputs is used; a layer computing a constant removes every unit."""
  for op in ops:
    if op.units_removable is None:
      continue
    out_used = values.used_of(op._out_var)
    op.units_removable = ~out_used.reshape(-1, out_used.shape[-1]).any(axis=0)
    if not values.unk[op._out_var].any():  # a constant layer: nothing of it is computed
      op.units_removable[:] = True
      if op.inputs_used is not None:
        op.inputs_used[:] = False


def _count(ops: list[ParamOp], values: _Values, leaves: _Leaves, tied: dict) -> Structure:
  """FLOPs and parameters, dense and used (conventions in the module docstring)."""
  flops_dense = flops_sparse = params_used = params_dense = 0
  kernel_leaves: set[int] = set()
  for op in ops:
    kept_weights = op.nonzero_kept()
    flops_dense += 2 * op.kernel.size * op.positions
    flops_sparse += 2 * kept_weights * op.positions
    params_used += kept_weights
    kernel_leaves.add(leaves.names.index(op.name))
  for i, (_, leaf) in enumerate(leaves.leaves):
    if not leaves.is_param[i]:
      continue
    params_dense += int(np.size(leaf))
    if i in kernel_leaves:
      continue
    if i in tied:
      var, axis = tied[i]
      mask = values.used.get(var)
      channel_used = np.ones(np.size(leaf), bool) if mask is None else np.moveaxis(mask, axis, -1).reshape(
          -1, np.size(leaf)).any(axis=0)
      params_used += int(channel_used.sum())
    else:
      params_used += int(np.size(leaf))
  return Structure(ops, int(flops_dense), int(flops_sparse), int(params_dense), int(params_used))


@dataclasses.dataclass
class _Trace:
  """What `analyze` computed, for `compile_compact`."""
  eqns: list
  outs: list
  val: dict
  unk: dict
  used: dict
  op_of_eqn: dict
  input_ids: list
  flat_jaxpr: Callable[[int], tuple] | None = None  # batch -> the same jaxpr traced for that batch size
  channel_vectors: dict = dataclasses.field(default_factory=dict)  # leaf path -> the value it scales/shifts


def coupled_channel_vectors(found: Structure, select: Callable[[tuple], bool] | None = None) -> list[list[tuple]]:
  """Per-channel parameter vectors grouped by the channels they act on together.

  A parameter vector that an elementwise op broadcasts along the channel axis (a
  BatchNorm scale or shift, a bias) acts on one value; values that elementwise ops
  combine (a residual stream: the stem's BatchNorm, every block's last BatchNorm, the
  projection shortcut's BatchNorm, each add and ReLU) share their channels. Channel c
  of a stream can only be removed when it is removed in every writer, so the vectors
  of one stream form one coupled group (see `transforms.coupled_group_lasso`).

  Args:
    found: the result of `analyze`.
    select: which vectors to return, from their path (tuple of key names in the
      analysed variables, e.g. ("params", "stem_bn", "scale")); default all.

  Returns:
    The groups (lists of paths, in execution order of the values they act on), one per
    stream or single value, singletons included.
  """
  t = found.trace
  if t is None:
    raise ValueError("this Structure has no trace; build it with structure.analyze.")
  find = _channel_classes(t, _sliceable(t))[0]
  groups: dict[int, list[tuple]] = {}
  for path, var in sorted(t.channel_vectors.items(), key=lambda item: item[1]):
    if select is None or select(path):
      groups.setdefault(find(var), []).append(path)
  return list(groups.values())


def _constant(value, shape: Sequence[int] | None = None) -> jax.Array:
  """A known array as a traced constant in its smallest broadcastable form.

  Known operands (BatchNorm factors broadcast over positions, zero maps, folds) are
  usually constant along most axes; embedding them at full size makes XLA read a
  literal as large as the activation, so each axis along which every entry is equal
  is stored with size 1 and broadcast back inside the computation (XLA fuses the
  broadcast into the consumer).

  Args:
    value: the known array.
    shape: the shape to broadcast it to (default its own; only axes of size 1 may grow).
  """
  v = np.asarray(value)
  small = v
  for axis in range(v.ndim):
    if small.shape[axis] > 1:
      first = np.take(small, [0], axis=axis)
      if np.array_equal(small, np.broadcast_to(first, small.shape), equal_nan=np.issubdtype(v.dtype, np.inexact)):
        small = first
  shape = v.shape if shape is None else tuple(shape)
  array = jnp.asarray(small)
  return array if small.shape == shape else jnp.broadcast_to(array, shape)


def _full_or(keep: np.ndarray, size: int) -> np.ndarray | None:
  """`keep`, or None when it is every index of an axis of `size`."""
  return None if len(keep) == size else keep


def _keeps_channels(eqn: _Eqn, t: _Trace) -> bool:
  """True when output channel c (last axis) is computed from input channel c only, same width:
  reductions and windows over the other axes (global pooling, max pooling), padding of them."""
  name, a = eqn.prim.name, eqn.ins[0] if eqn.ins else None
  if a is None or isinstance(a, tuple) or len(eqn.outs) != 1 or _all_known(t, a):
    return False
  in_shape, out_shape = np.shape(t.val[a]), eqn.out_shapes[0]
  if not in_shape or not out_shape or in_shape[-1] != out_shape[-1] or in_shape[-1] <= 1:
    return False
  p = eqn.params
  if name in ("reduce_sum", "reduce_max", "reduce_min"):
    return len(eqn.ins) == 1 and len(in_shape) - 1 not in tuple(p["axes"])
  if name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min"):
    return (len(eqn.ins) == 1 and p["window_dimensions"][-1] == 1 and p["window_strides"][-1] == 1
            and tuple(p["padding"][-1]) == (0, 0) and p["base_dilation"][-1] == 1 and p["window_dilation"][-1] == 1)
  if name == "pad":
    return tuple(p["padding_config"][-1]) == (0, 0, 0) and _all_known(t, eqn.ins[1])
  return False


def _padded(channels: np.ndarray, size: int, multiple: int) -> np.ndarray | None:
  """`channels` (sorted) grown with the lowest absent indices to a multiple of `multiple`; None: all."""
  target = min(size, -(-len(channels) // multiple) * multiple) if len(channels) else min(size, multiple)
  if target > len(channels):
    extra = np.setdiff1d(np.arange(size), channels)[:target - len(channels)]
    channels = np.sort(np.concatenate([channels, extra]))
  return _full_or(channels, size)


def _sliceable(t: _Trace) -> set[int]:
  """Equations of the Dense/conv ops the compact computation slices (not constant layers)."""
  return {index for index, op in t.op_of_eqn.items()
          if op.units_removable is not None and op.inputs_used is not None
          and not all(_all_known(t, a) for a in t.eqns[index].ins)}


def _channel_classes(t: _Trace, sliceable: set[int]) -> tuple[Callable[[int], int], set[int], set[int]]:
  """Union-find of the values that share channels: (representative of a value, the values
  whose producers can emit any layout, every value in a class). See `_channel_layouts`."""
  parent: dict[int, int] = {}

  def find(v: int) -> int:
    root = v
    while parent.get(root, root) != root:
      root = parent[root]
    while v != root:
      parent[v], v = root, parent[v]
    return root

  def join(a: int, b: int) -> None:
    ra, rb = find(a), find(b)
    if ra != rb:
      parent[ra] = rb

  def channel_axis(a) -> bool:
    return not isinstance(a, tuple) and not _all_known(t, a) and len(np.shape(t.val[a])) > 0 and \
        np.shape(t.val[a])[-1] > 1

  members: set[int] = set()
  for index, eqn in enumerate(t.eqns):
    if all(_all_known(t, a) for a in eqn.ins) or len(eqn.outs) != 1 or not channel_axis(eqn.outs[0]):
      continue
    out = eqn.outs[0]
    if index in sliceable:
      members.add(out)
    elif eqn.prim.name in _ELEMENTWISE:
      members.add(out)
      for a in eqn.ins:
        if channel_axis(a) and np.shape(t.val[a]) == np.shape(t.val[out]):
          join(a, out)
    elif _keeps_channels(eqn, t):
      members.add(out)
      join(eqn.ins[0], out)
  # operands joined in (model inputs, outputs of other ops) count for the demand, carry all channels
  return find, members, members | set(parent)


def _channel_layouts(t: _Trace, sliceable: set[int], multiple: int) -> dict[int, np.ndarray | None]:
  """The channels (last axis) each computed value carries in the compact computation.

  Values that an elementwise op combines (an activation, a BatchNorm, a residual add
  and both of its operands), or that a channel-preserving op maps (pooling), form one
  class that carries one layout: the union of the channels any member uses, grown to
  a multiple of `multiple` (channel counts that are multiples of 8 run markedly faster
  on XLA's CPU and GPU convolutions). Producers that can emit any layout (sliced
  Dense/conv ops, elementwise and channel-preserving ops) emit exactly it, so the
  members of a residual stream never need to be re-laid out at an add. Values made by
  any other op, and the model's inputs, carry all channels (absent from the result).
  """
  find, free, members = _channel_classes(t, sliceable)
  demand: dict[int, np.ndarray] = {}
  sizes: dict[int, int] = {}
  for v in members:
    root, size = find(v), np.shape(t.val[v])[-1]
    used = t.used.get(v)
    channels = np.zeros(size, bool) if used is None else used.reshape(-1, size).any(axis=0)
    demand[root] = demand[root] | channels if root in demand else channels
    sizes[root] = size
  layout = {root: _padded(np.flatnonzero(channels), sizes[root], multiple) for root, channels in demand.items()}
  return {v: layout[find(v)] for v in free}


def check_channel_multiple(channel_multiple: Any) -> None:
  """Raises ValueError unless `channel_multiple` is an integer >= 1."""
  if isinstance(channel_multiple, bool) or not isinstance(channel_multiple, (int, np.integer)) or channel_multiple < 1:
    raise ValueError(f"channel_multiple must be an integer >= 1; got {channel_multiple!r}.")


def compile_compact(found: Structure, channel_multiple: int = 8) -> tuple[dict, Callable[[dict, jax.Array], Any]]:
  """The smaller computation: (kernels sliced to kept inputs/units, `apply(kernels, x)` for a batch).

  Every Dense/conv reads the channels its input carries (zero weights on those it does
  not use) and computes the channels its output's class carries (see
  `_channel_layouts`: values combined elementwise share one layout, the union of
  what its members use grown to a multiple of `channel_multiple`; units the layer
  removed among them get zero weights); constant inputs it no longer reads are folded exactly
  (their contribution, computed once, is added: a bias for Dense, a per-position map
  for convolutions); everything known in advance (normalisation with fixed
  statistics, biases) is a constant; other ops run at full width with the channels a
  value does not carry filled with their known values. Outputs equal the original
  model's up to float rounding.

  Args:
    found: the result of `analyze`.
    channel_multiple: channel counts are grown to a multiple of this (1: the fewest).
  """
  t = found.trace
  if t is None:
    raise ValueError("this Structure has no trace; build it with structure.analyze.")
  check_channel_multiple(channel_multiple)
  sliceable = _sliceable(t)
  layouts = _channel_layouts(t, sliceable, int(channel_multiple))

  def carried(a) -> np.ndarray | None:
    return layouts.get(a) if not isinstance(a, tuple) else None

  kernels: dict[str, np.ndarray] = {}
  plans: dict[int, tuple] = {}
  for index in sorted(sliceable):
    op, eqn = t.op_of_eqn[index], t.eqns[index]
    act = eqn.ins[0]  # sliceable ops have the kernel second
    rows = carried(act)
    cols = carried(eqn.outs[0])
    in_idx = np.arange(op.inputs_used.size) if rows is None else rows
    out_idx = np.arange(op.units_removable.size) if cols is None else cols
    kernel = np.take(np.take(op.kernel, in_idx, axis=op.in_axis), out_idx, axis=op.out_axis).copy()
    kernel_rows = np.moveaxis(kernel, op.in_axis, 0)
    kernel_rows[~op.inputs_used[in_idx]] = 0  # carried, not read: a constant (folded) or no weights
    columns = np.moveaxis(kernel, op.out_axis, 0)
    columns[op.units_removable[out_idx]] = 0  # computed only to keep the layout of its class
    kernels[op.name] = kernel
    # constant inputs no longer read: their exact contribution, computed once
    dropped = np.where(t.unk[act], 0, np.asarray(t.val[act])).copy()
    dropped[..., op.inputs_used] = 0
    # (with every carried unit's weights: a removed unit that is a known constant then has its
    # exact value, so known entries are exact everywhere in the compact computation)
    full_k = np.take(op.kernel, out_idx, axis=op.out_axis)
    fold = np.asarray(eqn.prim.bind(jnp.asarray(dropped), jnp.asarray(full_k), **eqn.params))
    plans[index] = (act, rows, cols, op.name, fold if np.any(fold) else None)
  # Known entries of a channel that is unknown elsewhere and that nothing reads (a removed
  # unit's border under padding): the compact computation may carry other numbers there,
  # so where an elementwise op combines such a value they are put back.
  stale: dict[int, tuple[np.ndarray, np.ndarray]] = {}
  for v, keep in layouts.items():
    unknown = t.unk[v]
    partly = unknown.reshape(-1, unknown.shape[-1]).any(axis=0)
    mask = ~unknown & ~t.used.get(v, np.zeros(np.shape(t.val[v]), bool)) & partly
    mask = mask if keep is None else mask[..., keep]
    if mask.any():
      stale[v] = (mask, np.asarray(t.val[v]) if keep is None else np.asarray(t.val[v])[..., keep])

  def run(kernel_args: dict, x: jax.Array, eqns: list, shape_of: Callable[[int], tuple]):
    """Replays `eqns` (t.eqns, or the same jaxpr traced at x's batch size) on the compact layouts."""
    env: dict[int, tuple] = {}
    for vid in t.input_ids:
      env[vid] = (x, None)

    def known_value(a, keep=None):
      v = np.where(t.unk[a], 0, t.val[a])
      shape = shape_of(a)
      if keep is not None and v.ndim and v.shape[-1] > 1:
        v, shape = v[..., keep], (*shape[:-1], len(keep))
      return _constant(v, shape)

    def full(a):
      if isinstance(a, tuple):
        return jnp.asarray(a[1])
      if a not in env:
        return known_value(a)
      arr, keep = env[a]
      if keep is None:
        return arr
      return _moved(arr, keep, None, np.where(t.unk[a], 0, t.val[a]))

    def aligned(a, keep):
      if keep is None:
        return full(a)
      if isinstance(a, tuple):
        return jnp.asarray(a[1])
      if a not in env:  # known (or not computed): its known values, on its columns when it spans the last axis
        return known_value(a, keep)
      arr, have = env[a]
      if have is not None and len(have) == len(keep) and np.array_equal(have, keep):
        return arr
      return _moved(arr, have, keep, np.where(t.unk[a], 0, t.val[a]))

    def _moved(arr, have, keep, known_values):
      """arr (channels `have`) laid out on channels `keep`: one small matmul with a 0/1 matrix
      (no scatter/gather), plus the known values of channels it does not carry."""
      size = known_values.shape[-1]
      have = np.arange(size) if have is None else have
      keep = np.arange(size) if keep is None else keep
      select = (have[:, None] == keep[None, :]).astype(np.float32)
      moved = jnp.matmul(arr, jnp.asarray(select, arr.dtype))
      fill = np.array(np.broadcast_to(known_values, known_values.shape), np.float32)[..., keep]
      fill[..., np.isin(keep, have)] = 0.0
      return moved + _constant(fill.astype(arr.dtype), moved.shape) if fill.any() else moved

    for index, eqn in enumerate(eqns):
      if all(_all_known(t, a) for a in eqn.ins):
        continue
      wanted = [t.used.get(v) for v in eqn.outs]
      if not any(w is not None and w.any() for w in wanted):
        continue
      if index in plans:
        act, rows, cols, name, fold = plans[index]
        x_in = aligned(act, rows) if rows is not None else full(act)
        kernel = jnp.asarray(kernel_args[name])
        out = eqn.prim.bind(x_in, kernel.astype(x_in.dtype), **eqn.params)
        if fold is not None:
          out = out + _constant(np.asarray(fold, out.dtype), out.shape)
        env[eqn.outs[0]] = (out, cols)
        continue
      out_var = eqn.outs[0]
      if out_var in layouts and eqn.prim.name in _ELEMENTWISE:
        keep = layouts[out_var]
        args = []
        for a in eqn.ins:
          if isinstance(a, tuple) or np.ndim(t.val[a]) == 0:
            args.append(jnp.asarray(a[1]) if isinstance(a, tuple) else known_value(a))
          elif np.shape(t.val[a])[-1] == 1:
            args.append(full(a))
          else:
            arg = aligned(a, keep)
            if a in stale and a in env:
              mask, values = stale[a]
              arg = jnp.where(_constant(mask, arg.shape), _constant(values.astype(arg.dtype), arg.shape), arg)
            args.append(arg)
        env[out_var] = (eqn.prim.bind(*args, **eqn.params), keep)
        continue
      if out_var in layouts:  # channel-preserving: pooling, reductions over positions, padding
        keep = layouts[out_var]
        rest = [jnp.asarray(a[1]) if isinstance(a, tuple) else known_value(a) for a in eqn.ins[1:]]
        env[out_var] = (eqn.prim.bind(aligned(eqn.ins[0], keep), *rest, **eqn.params), keep)
        continue
      results = eqn.prim.bind(*[full(a) for a in eqn.ins], **eqn.params)
      results = list(results) if eqn.prim.multiple_results else [results]
      for vid, res in zip(eqn.outs, results):
        env[vid] = (res, None)
    return [full(a) for a in t.outs]

  batch_eqns: dict[int, tuple | None] = {}

  def apply(kernel_args: dict, x: jax.Array):
    try:
      batch = int(x.shape[0])
    except Exception:  # pylint: disable=broad-except  # a symbolic batch size (jax.export, shape polymorphic)
      batch = -1
    if batch not in batch_eqns:
      batch_eqns[batch] = _batch_replay(t, layouts, batch) if batch > 0 else None
    replay = batch_eqns[batch]
    if replay is not None:  # the whole batch at once, as the model runs
      outputs = run(kernel_args, x, *replay)
    else:  # one example at a time, on the analysed jaxpr itself
      outputs = jax.vmap(lambda xi: run(kernel_args, xi[None], t.eqns, lambda a: np.shape(t.val[a])))(x)
      outputs = [o[:, 0] for o in outputs]
    return outputs[0] if len(outputs) == 1 else outputs

  return kernels, apply


def _batch_replay(t: _Trace, layouts: dict, batch: int) -> tuple[list, Callable[[int], tuple]] | None:
  """The model's jaxpr for `batch` examples, when it is the analysed one-example jaxpr with every
  value's shape grown only along axes of size 1 (so each mask and constant of the analysis
  broadcasts to it) and no channel axis changed; None otherwise (e.g. an iota over the batch)."""
  if batch == 1 or t.flat_jaxpr is None:
    return (t.eqns, lambda a: np.shape(t.val[a])) if batch == 1 else None
  try:
    eqns, outs, const_values, in_ids = t.flat_jaxpr(batch)
  except Exception:  # pylint: disable=broad-except  # a model that cannot be traced at this batch size
    return None
  def same(a: list, b: list) -> bool:  # the same variables (literals: at the same places)
    return len(a) == len(b) and all(isinstance(u, tuple) == isinstance(v, tuple) and (isinstance(u, tuple) or u == v)
                                    for u, v in zip(a, b))

  if len(eqns) != len(t.eqns) or not same(outs, t.outs) or not same(in_ids[-len(t.input_ids):], t.input_ids):
    return None
  shapes: dict[int, tuple] = {vid: np.shape(v) for vid, v in const_values.items()}

  def grows(one: tuple, many: tuple) -> bool:
    return len(one) == len(many) and all(a == b or a == 1 for a, b in zip(one, many))

  for mine, theirs in zip(t.eqns, eqns):
    if mine.prim.name != theirs.prim.name or mine.outs != theirs.outs or not same(mine.ins, theirs.ins):
      return None
    if mine.prim.name == "iota" and mine.out_shapes != theirs.out_shapes:
      return None
    for vid, one, many in zip(mine.outs, mine.out_shapes, theirs.out_shapes):
      if not grows(tuple(one), tuple(many)) or (vid in layouts and one[-1] != many[-1]):
        return None
      shapes[vid] = tuple(many)
  x_shape = (batch, *np.shape(t.val[t.input_ids[0]])[1:])

  def shape_of(a) -> tuple:
    if a in shapes:
      return shapes[a]
    return x_shape if a in t.input_ids else np.shape(t.val[a])
  return eqns, shape_of


def _all_known(t: _Trace, a) -> bool:
  return isinstance(a, tuple) or not t.unk[a].any()


def _param_op(eqn: _Eqn, kernel_at: int, name: str, kernel: np.ndarray, out_shape: tuple) -> ParamOp | None:
  if eqn.prim.name == "dot_general":
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    k_contract = rc if kernel_at == 1 else lc
    k_batch = rb if kernel_at == 1 else lb
    a_contract = lc if kernel_at == 1 else rc
    free = [d for d in range(kernel.ndim) if d not in k_contract and d not in k_batch]
    positions = int(np.prod(out_shape[1:-1])) if len(out_shape) > 2 else 1
    op = ParamOp(name, "dense", kernel, k_contract[0] if len(k_contract) == 1 else -1,
                 free[0] if len(free) == 1 else -1, positions)
    act_ndim = len(out_shape) - len(free) + len(a_contract)
    standard = (kernel_at == 1 and len(k_contract) == 1 and len(free) == 1 and not k_batch
                and a_contract[0] == act_ndim - 1)
    if standard:
      op.units_removable = np.zeros(kernel.shape[free[0]], bool)
      op.inputs_used = np.ones(kernel.shape[k_contract[0]], bool)
    else:
      op.positions = int(np.prod(out_shape)) // max(int(np.prod([kernel.shape[d] for d in free])), 1)
    return op
  dn = eqn.params["dimension_numbers"]
  lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
  positions = int(np.prod([out_shape[d] for d in out_spec[2:]]))
  op = ParamOp(name, "conv", kernel, rhs_spec[1], rhs_spec[0], positions)
  standard = (eqn.params.get("feature_group_count", 1) == 1 and eqn.params.get("batch_group_count", 1) == 1
              and out_spec[1] == len(out_shape) - 1 and lhs_spec[1] == len(out_shape) - 1)
  if standard:
    op.units_removable = np.zeros(kernel.shape[rhs_spec[0]], bool)
    op.inputs_used = np.ones(kernel.shape[rhs_spec[1]], bool)
  return op


# ------------------------------------------------------------- the rules, one per primitive (family)
#
# Forward (`_UNKNOWN_RULES`): which output entries are unknown, given the inputs' unknown
# masks and values. Backward (`_USE_RULES`): which input entries the used output entries
# depend on; a rule returns False when it does not apply to this use of the primitive.
# A primitive with no rule gets the conservative rule in each direction: every output
# entry unknown (`_forward_op`), every entry of every unknown input used
# (`_use_every_input`). That is always correct, it only keeps more: an op the analysis
# does not know never makes a unit removable that the model needs.


def _unknown_elementwise(eqn: _Eqn, unknowns: list, values: list) -> list:
  """Unknown where any operand is; a product with a known 0 is a known 0 (e.g. a BatchNorm scale driven to 0)."""
  shape = eqn.out_shapes[0]
  out = np.zeros(shape, bool)
  for u in unknowns:
    out = out | np.broadcast_to(u, shape) if np.ndim(u) in (0, len(shape)) else np.ones(shape, bool)
  if eqn.prim.name == "mul":
    for u, v in zip(unknowns, values):
      if np.ndim(u) in (0, len(shape)):
        out = out & ~np.broadcast_to(~u & (v == 0), shape)
  return [out]


def _unknown_moved(sign: float) -> Callable[[_Eqn, list, list], list | None]:
  """Data movement and max-like reductions: the op itself applied to the masks (min-like: to -mask)."""
  def rule(eqn: _Eqn, unknowns: list, values: list) -> list | None:
    del values
    try:
      out = eqn.prim.bind(*[jnp.asarray(sign * u.astype(np.float32)) for u in unknowns], **eqn.params)
    except Exception:  # pylint: disable=broad-except
      return None
    return [np.asarray(o) * sign > 0 for o in (list(out) if eqn.prim.multiple_results else [out])]
  return rule


def _use_every_input(eqn: _Eqn, values: _Values) -> None:
  """The conservative rule: every entry of every unknown input is used."""
  for a in eqn.ins:
    if not isinstance(a, tuple) and not values.known(a):
      values.use(a, np.ones(np.shape(values.val[a]), bool))


def _use_through_kernel(eqn: _Eqn, ou: np.ndarray, values: _Values, op: ParamOp) -> None:
  """A Dense/conv: an input feature is used if it is unknown and has a nonzero weight into a used unit.

  A constant input is folded: its exact contribution is computed once (a bias for a
  Dense or VALID conv; a per-position map for a padded conv, whose borders see the padding).
  """
  act = eqn.ins[0]  # sliceable ops have the kernel second
  out_units = ou.reshape(-1, ou.shape[-1]).any(axis=0)
  k_in_out = np.moveaxis(np.moveaxis(op.kernel, op.in_axis, 0), op.out_axis if op.out_axis > op.in_axis
                         else op.out_axis + 1, -1)
  feeds = (k_in_out.reshape(k_in_out.shape[0], -1, k_in_out.shape[-1]) != 0).any(axis=1)[:, out_units].any(axis=1)
  a_unk = values.unknown(act)
  op.inputs_used = feeds & a_unk.reshape(-1, a_unk.shape[-1]).any(axis=0)
  values.use(act, np.broadcast_to(op.inputs_used, np.shape(values.val[act])))


def _use_sum(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  """add/sub: an operand that is a known 0 where the result is unknown (a residual branch writing 0
  into a stream that carries data) is not used there; where the result is a known constant the
  channel must still be carried, so every operand stays used."""
  out_unknown = values.unknown(eqn.outs[0])
  for a in eqn.ins:
    if isinstance(a, tuple):
      continue
    zero = np.broadcast_to(~values.unknown(a) & (np.asarray(values.value(a)) == 0), ou.shape) & out_unknown
    values.use(a, _unbroadcast(ou & ~zero, np.shape(values.val[a])))
  return True


def _use_elementwise(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  """Where the result is a known constant (a product with a known 0), no unknown operand entry affects it."""
  ou_unknown = ou & np.broadcast_to(values.unknown(eqn.outs[0]), ou.shape)
  for a in eqn.ins:
    if not isinstance(a, tuple) and not values.known(a):
      values.use(a, _unbroadcast(ou_unknown, np.shape(values.val[a])))
  return True


def _moved_operand(eqn: _Eqn, values: _Values):
  """The first operand when it is an unknown value (the rules below move it), else None."""
  a = eqn.ins[0] if eqn.ins else None
  return None if a is None or isinstance(a, tuple) or values.known(a) else a


def _use_reshape(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  if a is None or np.size(ou) != int(np.prod(values.shape(a))):
    return False
  values.use(a, ou.reshape(values.shape(a)))
  return True


def _use_transpose(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  if a is None:
    return False
  values.use(a, np.transpose(ou, np.argsort(eqn.params["permutation"])))
  return True


def _use_broadcast(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  if a is None:
    return False
  in_shape = values.shape(a)
  reduce_axes = tuple(d for d in range(ou.ndim) if d not in eqn.params["broadcast_dimensions"])
  m = ou.any(axis=reduce_axes) if reduce_axes else ou
  values.use(a, _unbroadcast(m, in_shape) if m.shape != in_shape else m)
  return True


def _use_reduction(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  if a is None:
    return False
  values.use(a, np.broadcast_to(np.expand_dims(ou, tuple(eqn.params["axes"])), values.shape(a)))
  return True


def _use_pooling(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  """Windowed reductions (pooling): a channel is used wherever its output is (windows mix positions only)."""
  a = _moved_operand(eqn, values)
  if a is None or len(values.shape(a)) != ou.ndim:
    return False
  values.use(a, np.broadcast_to(ou.reshape(-1, ou.shape[-1]).any(axis=0), values.shape(a)))
  return True


def _use_concatenate(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  if _moved_operand(eqn, values) is None:
    return False
  dim, start = eqn.params["dimension"], 0
  for b in eqn.ins:
    size = np.shape(values.value(b))[dim]
    if not isinstance(b, tuple) and not values.known(b):
      values.use(b, np.take(ou, np.arange(start, start + size), axis=dim))
    start += size
  return True


def _use_rev(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  if a is None:
    return False
  values.use(a, np.flip(ou, axis=tuple(eqn.params["dimensions"])))
  return True


def _use_slice(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  if a is None or eqn.params.get("strides") not in (None, (1,) * len(values.shape(a))):
    return False
  m = np.zeros(values.shape(a), bool)
  m[tuple(slice(s, e) for s, e in zip(eqn.params["start_indices"], eqn.params["limit_indices"]))] = ou
  values.use(a, m)
  return True


def _use_pad(eqn: _Eqn, ou: np.ndarray, values: _Values) -> bool:
  a = _moved_operand(eqn, values)
  config = eqn.params["padding_config"]
  if a is None or not all(lo >= 0 and hi >= 0 and interior == 0 for lo, hi, interior in config):
    return False
  values.use(a, ou[tuple(slice(lo, ou.shape[d] - hi) for d, (lo, hi, _) in enumerate(config))])
  for b in eqn.ins[1:]:  # the padding value
    if not isinstance(b, tuple) and not values.known(b):
      values.use(b, np.ones(np.shape(values.val[b]), bool))
  return True


_UNKNOWN_RULES: dict[str, Callable[[_Eqn, list, list], list | None]] = {
    **{name: _unknown_elementwise for name in _ELEMENTWISE},
    **{name: _unknown_moved(1.0) for name in _MOVES_OR_MAX},
    **{name: _unknown_moved(-1.0) for name in _MIN_LIKE},
}
_USE_RULES: dict[str, Callable[[_Eqn, np.ndarray, _Values], bool]] = {
    **{name: _use_elementwise for name in _ELEMENTWISE},
    "add": _use_sum, "sub": _use_sum, "add_any": _use_sum,
    "reshape": _use_reshape, "squeeze": _use_reshape, "expand_dims": _use_reshape,
    "transpose": _use_transpose, "rev": _use_rev,
    "broadcast_in_dim": _use_broadcast,
    **{name: _use_reduction for name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and",
                                         "reduce_or", "argmax", "argmin")},
    **{name: _use_pooling for name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window")},
    "concatenate": _use_concatenate,
    "slice": _use_slice,
    "pad": _use_pad,
}
