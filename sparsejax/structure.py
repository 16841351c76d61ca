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

__all__ = ["ParamOp", "Structure", "analyze"]

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
  x_spec = jax.ShapeDtypeStruct((1, *tuple(int(d) for d in input_shape)), dtype)
  closed = jax.make_jaxpr(fn)(variables, x_spec)
  var_leaves, _ = jax.tree_util.tree_flatten_with_path(variables)
  x_leaves = jax.tree.leaves(x_spec)
  names = [jax.tree_util.keystr(p) for p, _ in var_leaves]
  param_ids = {id(leaf) for leaf in jax.tree.leaves(params if params is not None else variables)}
  is_param = [id(leaf) in param_ids for _, leaf in var_leaves]

  counter = iter(range(1 << 62))
  eqns: list[_Eqn] = []
  const_values: dict[int, np.ndarray] = {}
  in_ids = [next(counter) for _ in range(len(var_leaves) + len(x_leaves))]
  outs = _flatten(closed.jaxpr, closed.consts, in_ids, counter, eqns, const_values)

  val: dict[int, np.ndarray] = dict(const_values)
  unk: dict[int, np.ndarray] = {vid: np.zeros(v.shape, bool) for vid, v in const_values.items()}
  leaf_of: dict[int, int] = {}  # var -> the single variable leaf it is (a view of)
  for i, (vid, (_, leaf)) in enumerate(zip(in_ids, var_leaves)):
    val[vid] = np.asarray(leaf)
    unk[vid] = np.zeros(np.shape(leaf), bool)
    leaf_of[vid] = i
  for vid, spec in zip(in_ids[len(var_leaves):], x_leaves):
    val[vid] = np.zeros(spec.shape, spec.dtype)
    unk[vid] = np.ones(spec.shape, bool)

  def value(a):
    return a[1] if isinstance(a, tuple) else val[a]

  def unknown(a):
    return np.zeros(np.shape(a[1]), bool) if isinstance(a, tuple) else unk[a]

  def known(a):
    return not unknown(a).any()

  def is_param_leaf(a) -> bool:
    return not isinstance(a, tuple) and a in leaf_of and is_param[leaf_of[a]]

  ops: list[ParamOp] = []
  op_of_eqn: dict[int, ParamOp] = {}
  tied: dict[int, tuple[int, int]] = {}  # leaf -> (var, axis) it is broadcast along
  leaf_source: dict[int, set[int]] = {vid: {i} for vid, i in leaf_of.items()}

  # ---- forward: known values
  for index, eqn in enumerate(eqns):
    name = eqn.prim.name
    kernel_at = _known_kernel_op(eqn, known, is_param_leaf)
    if kernel_at is not None:
      act, ker = eqn.ins[1 - kernel_at], eqn.ins[kernel_at]
      a_val = np.where(unknown(act), 0, np.asarray(value(act)))
      k_val = np.asarray(value(ker))
      ins = [a_val, k_val] if kernel_at == 1 else [k_val, a_val]
      out = np.asarray(eqn.prim.bind(*map(jnp.asarray, ins), **eqn.params))
      masks = [unknown(act).astype(np.float32), (k_val != 0).astype(np.float32)]
      if kernel_at == 0:
        masks = masks[::-1]
      reach = np.asarray(eqn.prim.bind(*map(jnp.asarray, masks), **eqn.params)) > 0
      val[eqn.outs[0]], unk[eqn.outs[0]] = out, reach
      if is_param_leaf(ker) and np.ndim(k_val) >= 2:
        op = _param_op(eqn, kernel_at, names[leaf_of[ker]], k_val, out.shape)
        if op is not None:
          op._out_var = eqn.outs[0]
          ops.append(op)
          op_of_eqn[index] = op
      continue
    all_known = all(known(a) for a in eqn.ins)
    try:
      result = eqn.prim.bind(*[jnp.asarray(np.where(unknown(a), 0, value(a)) if not known(a) else value(a))
                               for a in eqn.ins], **eqn.params)
      results = list(result) if eqn.prim.multiple_results else [result]
    except Exception:  # pylint: disable=broad-except  # an op we cannot run on host values: all unknown
      results = None
    masks = None if all_known or results is None else _unknown_outputs(
        eqn, [unknown(a) for a in eqn.ins], [np.asarray(value(a)) for a in eqn.ins])
    for j, vid in enumerate(eqn.outs):
      shape = eqn.out_shapes[j]
      if results is None:
        val[vid], unk[vid] = np.zeros(shape, np.float32), np.ones(shape, bool)
      elif all_known:
        val[vid], unk[vid] = np.asarray(results[j]), np.zeros(shape, bool)
      else:
        u = masks[j] if masks is not None else np.ones(shape, bool)
        val[vid], unk[vid] = np.asarray(results[j]), u
    # views of one leaf (reshape/broadcast/convert of a parameter vector)
    srcs = set().union(*[leaf_source.get(a, set()) for a in eqn.ins if not isinstance(a, tuple)]) \
        if eqn.ins else set()
    if all_known and srcs:
      for vid in eqn.outs:
        leaf_source[vid] = srcs
      if name in ("reshape", "broadcast_in_dim", "convert_element_type", "squeeze", "expand_dims", "copy") \
          and len(srcs) == 1:
        (leaf,) = srcs
        for vid in eqn.outs:
          leaf_of[vid] = leaf
    if name in _ELEMENTWISE and not all_known and len(eqn.outs) == 1:
      out_shape = np.shape(val[eqn.outs[0]])
      for a in eqn.ins:
        if isinstance(a, tuple) or not known(a):
          continue
        shape = np.shape(value(a))
        if len(shape) == len(out_shape) and shape and shape[-1] == out_shape[-1] > 1 and \
            all(n == 1 for n in shape[:-1]):
          for leaf in leaf_source.get(a, set()):
            if is_param[leaf] and np.size(var_leaves[leaf][1]) == out_shape[-1]:
              tied.setdefault(leaf, (eqn.outs[0], len(out_shape) - 1))

  # ---- backward: use
  used: dict[int, np.ndarray] = {}

  def use(a, mask):
    if isinstance(a, tuple):
      return
    mask = np.broadcast_to(mask, np.shape(val[a])) if mask.shape != np.shape(val[a]) else mask
    used[a] = used[a] | mask if a in used else mask.copy()

  for a in outs:
    if not isinstance(a, tuple):
      use(a, np.ones(np.shape(val[a]), bool))
  for index in range(len(eqns) - 1, -1, -1):
    eqn = eqns[index]
    out_used = [used.get(v, np.zeros(np.shape(val[v]), bool)) for v in eqn.outs]
    if not any(u.any() for u in out_used):
      continue
    if all(known(a) for a in eqn.ins):
      for a in eqn.ins:
        if not isinstance(a, tuple):
          use(a, np.ones(np.shape(val[a]), bool))
      continue
    _backward(eqn, out_used, use, value, unknown, known, op_of_eqn.get(index), val)

  # ---- units and counts
  for op in ops:
    out_used = used.get(op._out_var, np.zeros(np.shape(val[op._out_var]), bool))
    if op.units_removable is not None:
      op.units_removable = ~out_used.reshape(-1, out_used.shape[-1]).any(axis=0)
      if not unk[op._out_var].any():  # a constant layer: nothing of it is computed
        op.units_removable[:] = True
        if op.inputs_used is not None:
          op.inputs_used[:] = False
  flops_dense = flops_sparse = params_used = 0
  kernel_leaves: set[int] = set()
  for op in ops:
    kept_weights = op.nonzero_kept()
    flops_dense += 2 * op.kernel.size * op.positions
    flops_sparse += 2 * kept_weights * op.positions
    params_used += kept_weights
    kernel_leaves.add(names.index(op.name))
  params_dense = 0
  for i, (_, leaf) in enumerate(var_leaves):
    if not is_param[i]:
      continue
    params_dense += int(np.size(leaf))
    if i in kernel_leaves:
      continue
    if i in tied:
      var, axis = tied[i]
      mask = used.get(var)
      channel_used = np.ones(np.size(leaf), bool) if mask is None else np.moveaxis(mask, axis, -1).reshape(
          -1, np.size(leaf)).any(axis=0)
      params_used += int(channel_used.sum())
    else:
      params_used += int(np.size(leaf))
  trace = _Trace(eqns, outs, val, unk, used, op_of_eqn, in_ids[len(var_leaves):])
  return Structure(ops, int(flops_dense), int(flops_sparse), int(params_dense), int(params_used), trace)


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


def _kept(used: np.ndarray | None, shape: tuple) -> np.ndarray | None:
  """Indices along the last axis that some used entry has; None when that is all of them."""
  if not shape:
    return None
  if used is None:
    return np.zeros(0, np.int64)
  return _full_or(np.flatnonzero(used.reshape(-1, shape[-1]).any(axis=0)), shape[-1])


def _full_or(keep: np.ndarray, size: int) -> np.ndarray | None:
  """`keep`, or None when it is every index of an axis of `size`."""
  return None if len(keep) == size else keep


def compile_compact(found: Structure) -> tuple[dict, Callable[[dict, jax.Array], Any]]:
  """The smaller computation: (kernels sliced to kept inputs/units, `apply(kernels, x)` for a batch).

  Every Dense/conv runs on its used input features and kept units only; constant
  inputs it no longer reads are folded exactly (their contribution, computed once,
  is added: a bias for Dense, a per-position map for convolutions); everything known
  in advance (normalisation with fixed statistics, biases) is a constant; other ops
  run on their used channels, or at full width with unused channels at 0 where their
  layout needs it. Outputs equal the original model's up to float rounding.
  """
  t = found.trace
  if t is None:
    raise ValueError("this Structure has no trace; build it with structure.analyze.")
  kernels: dict[str, np.ndarray] = {}
  plans: dict[int, tuple] = {}
  for index, op in t.op_of_eqn.items():
    eqn = t.eqns[index]
    if op.units_removable is None or op.inputs_used is None or all(_all_known(t, a) for a in eqn.ins):
      continue  # not sliceable, or a constant layer (computed once, as a known value)
    keep_in = np.flatnonzero(op.inputs_used)
    keep_out = np.flatnonzero(~op.units_removable)
    sliced_in, sliced_out = _full_or(keep_in, op.inputs_used.size), _full_or(keep_out, op.units_removable.size)
    act = eqn.ins[0]  # sliceable ops have the kernel second
    kernels[op.name] = op.kept_kernel()
    # constant inputs no longer read: their exact contribution, computed once
    a_val = np.where(t.unk[act], 0, np.asarray(t.val[act]))
    dropped = np.asarray(a_val).copy()
    dropped[..., keep_in] = 0
    full_k = np.take(op.kernel, keep_out, axis=op.out_axis)
    fold = np.asarray(eqn.prim.bind(jnp.asarray(dropped), jnp.asarray(full_k), **eqn.params))
    plans[index] = (act, sliced_in, sliced_out, op.name, fold if np.any(fold) else None, op.in_axis,
                    op.inputs_used.size)

  def run_one(kernel_args: dict, x1: jax.Array):
    env: dict[int, tuple] = {}
    for vid in t.input_ids:
      env[vid] = (x1, None)

    def full(a):
      if isinstance(a, tuple):
        return jnp.asarray(a[1])
      if a not in env:
        return jnp.asarray(t.val[a])
      arr, keep = env[a]
      if keep is None:
        return arr
      return _moved(arr, keep, None, np.where(t.unk[a], 0, t.val[a]))

    def aligned(a, keep):
      if keep is None:
        return full(a)
      if isinstance(a, tuple):
        return jnp.asarray(a[1])
      if a not in env:  # known: take its columns when it spans the last axis
        v = np.asarray(t.val[a])
        return jnp.asarray(v[..., keep] if v.ndim and v.shape[-1] > 1 else v)
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
      return moved + jnp.asarray(fill, arr.dtype) if fill.any() else moved

    for index, eqn in enumerate(t.eqns):
      if all(_all_known(t, a) for a in eqn.ins):
        continue
      out_shapes = eqn.out_shapes
      wanted = [t.used.get(v) for v in eqn.outs]
      if not any(w is not None and w.any() for w in wanted):
        continue
      if index in plans:
        act, keep_in, keep_out, name, fold, in_axis, size = plans[index]
        kernel = jnp.asarray(kernel_args[name])
        have = env.get(act, (None, None))[1] if not isinstance(act, tuple) else None
        have_all = np.arange(size) if have is None else have
        need = np.arange(size) if keep_in is None else keep_in
        if act in env and np.isin(need, have_all).all():
          # read the input as it is (no gather): the kernel gets zero rows for the
          # channels the input carries but this layer does not need
          x = env[act][0]
          if len(need) != len(have_all) or not np.array_equal(need, have_all):
            rows = jnp.moveaxis(kernel, in_axis, 0)
            rows = jnp.zeros((len(have_all), *rows.shape[1:]), rows.dtype).at[np.searchsorted(have_all, need)].set(rows)
            kernel = jnp.moveaxis(rows, 0, in_axis)
        else:
          x = aligned(act, keep_in)
        out = eqn.prim.bind(x, kernel.astype(x.dtype), **eqn.params)
        if fold is not None:
          out = out + jnp.asarray(fold).astype(out.dtype)
        env[eqn.outs[0]] = (out, keep_out)
        continue
      if eqn.prim.name in _ELEMENTWISE and len(eqn.outs) == 1 and out_shapes[0]:
        keep = _kept(wanted[0], out_shapes[0])
        args = []
        for a in eqn.ins:
          if isinstance(a, tuple) or np.ndim(t.val[a]) == 0:
            args.append(jnp.asarray(a[1] if isinstance(a, tuple) else t.val[a]))
          elif np.shape(t.val[a])[-1] == 1:
            args.append(full(a))
          else:
            args.append(aligned(a, keep))
        env[eqn.outs[0]] = (eqn.prim.bind(*args, **eqn.params), keep)
        continue
      results = eqn.prim.bind(*[full(a) for a in eqn.ins], **eqn.params)
      results = list(results) if eqn.prim.multiple_results else [results]
      for vid, res in zip(eqn.outs, results):
        env[vid] = (res, None)
    outputs = [full(a) for a in t.outs]
    return outputs

  def apply(kernel_args: dict, x: jax.Array):
    outputs = jax.vmap(lambda xi: run_one(kernel_args, xi[None]))(x)
    outputs = [o[:, 0] for o in outputs]
    return outputs[0] if len(outputs) == 1 else outputs

  return kernels, apply


def _all_known(t: _Trace, a) -> bool:
  return isinstance(a, tuple) or not t.unk[a].any()


_MOVES_OR_MAX = {"reshape", "transpose", "broadcast_in_dim", "squeeze", "expand_dims", "slice", "pad",
                 "concatenate", "rev", "reduce_sum", "reduce_max", "reduce_window_sum", "reduce_window_max",
                 "cumsum", "cummax", "reduce_or", "copy", "copy_p"}
_MIN_LIKE = {"reduce_min", "reduce_window_min", "cummin"}


def _unknown_outputs(eqn: _Eqn, unknowns: list, values: list) -> list | None:
  """Unknown masks of the outputs: exact for elementwise ops, data movement and reductions; None: all.

  A product with a known 0 is a known 0 (e.g. a BatchNorm scale driven to 0).
  """
  name = eqn.prim.name
  shapes = eqn.out_shapes
  if name in _ELEMENTWISE:
    out = np.zeros(shapes[0], bool)
    for u in unknowns:
      out = out | np.broadcast_to(u, shapes[0]) if np.ndim(u) in (0, len(shapes[0])) else np.ones(shapes[0], bool)
    if name == "mul":
      for u, v in zip(unknowns, values):
        if np.ndim(u) in (0, len(shapes[0])):
          out = out & ~np.broadcast_to(~u & (v == 0), shapes[0])
    return [out]
  if name in _MOVES_OR_MAX or name in _MIN_LIKE:
    sign = -1.0 if name in _MIN_LIKE else 1.0
    masks = [jnp.asarray(sign * u.astype(np.float32)) for u in unknowns]
    try:
      out = eqn.prim.bind(*masks, **eqn.params)
    except Exception:  # pylint: disable=broad-except
      return None
    outs = list(out) if eqn.prim.multiple_results else [out]
    return [np.asarray(o) * sign > 0 for o in outs]
  return None


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


def _backward(eqn: _Eqn, out_used: list, use, value, unknown, known, op: ParamOp | None, val) -> None:
  """Marks the entries of `eqn`'s inputs that its used outputs depend on."""
  name = eqn.prim.name
  ou = out_used[0]
  any_used = any(u.any() for u in out_used)

  def all_inputs():
    for a in eqn.ins:
      if not isinstance(a, tuple) and not known(a):
        use(a, np.ones(np.shape(val[a]), bool))

  if name in ("dot_general", "conv_general_dilated") and op is not None and op.units_removable is not None:
    act = eqn.ins[0]  # sliceable ops have the kernel second
    k = op.kernel
    out_units = ou.reshape(-1, ou.shape[-1]).any(axis=0)
    k_in_out = np.moveaxis(np.moveaxis(k, op.in_axis, 0), op.out_axis if op.out_axis > op.in_axis
                           else op.out_axis + 1, -1)
    feeds = (k_in_out.reshape(k_in_out.shape[0], -1, k_in_out.shape[-1]) != 0).any(axis=1)[:, out_units].any(axis=1)
    a_unk = unknown(act)
    feature_unknown = a_unk.reshape(-1, a_unk.shape[-1]).any(axis=0)
    # A constant input is folded: its exact contribution is computed once (a bias for a
    # Dense or VALID conv; a per-position map for a padded conv, whose borders see the padding).
    needed = feeds & feature_unknown
    op.inputs_used = needed
    use(act, np.broadcast_to(needed, np.shape(val[act])))
    return
  if name in ("add", "sub", "add_any"):
    # An operand that is a known 0 where the result is not known (e.g. a residual branch
    # writing 0 into a stream that carries data) is not needed there. Where the result is
    # a known constant, the channel must still be carried, so every operand stays used.
    out_unknown = unknown(eqn.outs[0])
    for a in eqn.ins:
      if isinstance(a, tuple):
        continue
      zero = np.broadcast_to(~unknown(a) & (np.asarray(value(a)) == 0), ou.shape) & out_unknown
      use(a, _unbroadcast(ou & ~zero, np.shape(val[a])))
    return
  if name in _ELEMENTWISE:
    for a in eqn.ins:
      if not isinstance(a, tuple) and not known(a):
        use(a, _unbroadcast(ou, np.shape(val[a])))
    return
  a = eqn.ins[0] if eqn.ins else None
  if a is None or isinstance(a, tuple) or known(a):
    all_inputs()
    return
  in_shape = np.shape(val[a])
  if name in ("reshape", "squeeze", "expand_dims") and np.size(ou) == int(np.prod(in_shape)):
    use(a, ou.reshape(in_shape))
  elif name == "transpose":
    use(a, np.transpose(ou, np.argsort(eqn.params["permutation"])))
  elif name == "broadcast_in_dim":
    dims = eqn.params["broadcast_dimensions"]
    reduce_axes = tuple(d for d in range(ou.ndim) if d not in dims)
    m = ou.any(axis=reduce_axes) if reduce_axes else ou
    use(a, _unbroadcast(m, in_shape) if m.shape != in_shape else m)
  elif name in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_and", "reduce_or", "argmax",
                "argmin"):
    axes = tuple(eqn.params["axes"])
    use(a, np.broadcast_to(np.expand_dims(ou, axes), in_shape))
  elif name in ("reduce_window_sum", "reduce_window_max", "reduce_window_min", "reduce_window") and len(in_shape) \
      == ou.ndim:
    channels = ou.reshape(-1, ou.shape[-1]).any(axis=0)
    use(a, np.broadcast_to(channels, in_shape))
  elif name == "concatenate":
    dim, start = eqn.params["dimension"], 0
    for b in eqn.ins:
      size = np.shape(value(b))[dim]
      if not isinstance(b, tuple) and not known(b):
        use(b, np.take(ou, np.arange(start, start + size), axis=dim))
      start += size
  elif name == "slice" and eqn.params.get("strides") in (None, (1,) * len(in_shape)):
    m = np.zeros(in_shape, bool)
    m[tuple(slice(s, e) for s, e in zip(eqn.params["start_indices"], eqn.params["limit_indices"]))] = ou
    use(a, m)
  elif name == "pad" and all(lo >= 0 and hi >= 0 and it == 0 for lo, hi, it in eqn.params["padding_config"]):
    use(a, ou[tuple(slice(lo, ou.shape[d] - hi) for d, (lo, hi, _) in enumerate(eqn.params["padding_config"]))])
    for b in eqn.ins[1:]:
      if not isinstance(b, tuple) and not known(b):
        use(b, np.ones(np.shape(val[b]), bool))
  elif any_used:
    all_inputs()
