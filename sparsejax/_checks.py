"""Argument validation and pytree broadcasting shared by `penalties` and `prox`.

Imports only jax (and numpy, which jax ships with). Checks run on concrete values (Python numbers, numpy or
committed jax arrays) at call time, before any tracing; traced values are not
checked (they cannot be inspected without a host round-trip).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ArgumentTypeError",
    "check_callable",
    "moved_names",
    "check_range",
    "normalize_axes",
    "map_leaves",
    "as_float_array",
    "check_broadcast",
    "check_int",
    "check_count",
]


class ArgumentTypeError(TypeError, ValueError):
  """An argument of the wrong kind (e.g. a non-callable where a callable is required).

  A TypeError, as Python raises for a wrong kind of argument; also a ValueError, so code
  written against the library's earlier ValueError keeps catching it.
  """


def check_callable(name: str, value: Any, what: str, optional: bool = False) -> None:
  """Raises `ArgumentTypeError` naming `name` unless `value` is callable (or None when `optional`)."""
  if value is None and optional:
    return
  if not callable(value):
    raise ArgumentTypeError(f"{name} must be {what}{' or None' if optional else ''}; got {value!r}.")


def _concrete_values(value: Any):
  """Returns the leaves of `value` as host arrays, or None if any is traced."""
  leaves = jax.tree.leaves(value)
  if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
    return None
  return [jax.device_get(leaf) for leaf in leaves if not callable(leaf)]


def check_range(
    name: str,
    value: Any,
    *,
    lower: float | None = None,
    upper: float | None = None,
    lower_inclusive: bool = True,
    upper_inclusive: bool = True,
) -> None:
  """Raises ValueError if a concrete `value` (or any pytree leaf) is out of range.

  Args:
    name: the argument's name, used in the message.
    value: a number, array or pytree of them. Traced values are skipped.
    lower: lower bound, or None.
    upper: upper bound, or None.
    lower_inclusive: whether `value == lower` is allowed.
    upper_inclusive: whether `value == upper` is allowed.

  Raises:
    ValueError: naming the argument, the offending value and the allowed range.
  """
  leaves = _concrete_values(value)
  if leaves is None:
    return
  for leaf in leaves:
    try:
      host = np.asarray(leaf)
    except TypeError:
      raise ValueError(f"{name} must be numeric, got {leaf!r}.") from None
    if not (np.issubdtype(host.dtype, np.number) or host.dtype == np.bool_ or jnp.issubdtype(host.dtype, jnp.floating)):
      raise ValueError(f"{name} must be numeric, got {leaf!r}.")
    if np.iscomplexobj(host):
      raise ValueError(f"{name} must be real, got a complex value {leaf!r}.")
    host = host.astype(np.float64)
    bad = host != host  # NaN
    if lower is not None:
      bad = bad | ((host < lower) if lower_inclusive else (host <= lower))
    if upper is not None:
      bad = bad | ((host > upper) if upper_inclusive else (host >= upper))
    if bad.any():
      shown = float(host[bad].ravel()[0] if host.ndim else host)
      lo = "" if lower is None else (f"{lower} <= " if lower_inclusive else f"{lower} < ")
      hi = "" if upper is None else (f" <= {upper}" if upper_inclusive else f" < {upper}")
      raise ValueError(
          f"{name} must satisfy {lo}{name}{hi}; got {name}={shown!r}."
      )


def is_concrete(value: Any) -> bool:
  """False for a traced value (inside jit), whose Python truth value cannot be taken."""
  return _concrete_values(value) is not None


def check_int(name: str, value: Any, lower: int, allowed: str | None = None) -> None:
  """Raises ValueError unless `value` is an int (not a bool) >= `lower`.

  The message is "{name} must be {allowed}; got {name}={value!r}.", with `allowed`
  defaulting to "an int >= {lower}".
  """
  if isinstance(value, jax.core.Tracer):
    return  # a traced value (e.g. from optax.inject_hyperparams inside jit) cannot be checked
  if isinstance(value, (jax.Array, np.ndarray)) and value.ndim == 0 and np.issubdtype(value.dtype, np.integer):
    value = int(value)  # optax.inject_hyperparams turns int hyperparameters into arrays
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lower:
    raise ValueError(f"{name} must be {allowed or f'an int >= {lower}'}; got {name}={value!r}.")


def check_count(name: str, value: Any) -> None:
  """Raises ValueError unless a concrete `value` is a whole number >= 1 (an int or an integral float).

  A count of weights, not a fraction: 0.95 (a sparsity) or 851.2 (0.05 * n) would be
  truncated or taken literally without a word. Traced values are skipped.
  """
  leaves = _concrete_values(value)
  if leaves is None:
    return
  for leaf in leaves:
    host = np.asarray(leaf)
    if host.dtype == np.bool_ or not np.issubdtype(host.dtype, np.number) or np.iscomplexobj(host):
      raise ValueError(f"{name} must be a whole number of weights >= 1; got {name}={leaf!r}.")
    host = host.astype(np.float64)
    bad = ~np.isfinite(host) | (host < 1) | (host != np.round(host))
    if bad.any():
      shown = float(host[bad].ravel()[0])
      raise ValueError(f"{name} must be a whole number of weights >= 1 (a count, not a fraction); "
                       f"got {name}={shown!r}.")


NAMED_AXES = ("input_units",)


def normalize_axes(axis: int | Sequence[int] | str, ndim: int, name: str = "axis") -> tuple[int, ...]:
  """Returns `axis` as a sorted tuple of non-negative ints, validated for `ndim`.

  `axis="input_units"` names every axis but the second-to-last: one group per input
  unit of a Dense `(in, out)` kernel (its outgoing weights, as axis=-1) and per input
  channel of a conv `(kh, kw, in, out)` kernel (all its outgoing weights, every
  spatial tap), so one setting serves models mixing Dense and conv layers. A 1-D
  leaf is one group.

  Raises:
    ValueError: if an axis is outside [-ndim, ndim) or repeated, or an unknown name.
  """
  if isinstance(axis, str):
    if axis != "input_units":
      raise ValueError(f"{name}={axis!r} is not a known axis name; allowed: {list(NAMED_AXES)}, an int or a "
                       "tuple of ints.")
    return tuple(d for d in range(ndim) if d != ndim - 2) if ndim >= 2 else tuple(range(ndim))
  try:
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
  except TypeError:
    raise ValueError(f"{name} must be an int, a tuple of ints or 'input_units'; got {name}={axis!r}.") from None
  if not axes:
    raise ValueError(f"{name} must name at least one axis; got {axis!r}.")
  out = []
  for ax in axes:
    if not isinstance(ax, (int, np.integer)) or isinstance(ax, (bool, np.bool_)):
      raise ValueError(f"{name} must be an int or a tuple of ints; got {axis!r}.")
    if not -ndim <= ax < ndim:
      raise ValueError(
          f"{name}={axis!r} is out of range for an array of ndim={ndim}; "
          f"allowed: {-ndim} <= {name} < {ndim}."
      )
    out.append(int(ax) % ndim)
  if len(set(out)) != len(out):
    raise ValueError(f"{name}={axis!r} repeats an axis.")
  return tuple(sorted(out))


def check_broadcast(name: str, shape: Sequence[int], target: Sequence[int],
                    what: str = "the input's shape") -> None:
  """Raises ValueError unless an array of `shape` broadcasts to `target` without widening it.

  A parameter of shape (2, 4) against a (4,) leaf would silently widen the result to
  (2, 4); that is always a mistake here.
  """
  shape, target = tuple(shape), tuple(target)
  try:
    ok = np.broadcast_shapes(shape, target) == target
  except ValueError:
    ok = False
  if not ok:
    raise ValueError(f"{name} has shape {shape}, which does not broadcast to {what} {target}; "
                     f"allowed: a scalar or a shape that broadcasts to {target} (one value per leaf, "
                     f"element or group).")


def as_float_array(x: Any, name: str = "x") -> jax.Array:
  """`x` as a jax array with a floating dtype (ints promote to the default float).

  Raises:
    ValueError: if `x` is complex (casting would drop the imaginary part silently).
  """
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    raise ValueError(f"{name} must be real-valued; got an array of dtype {x.dtype} (the penalties and "
                     "their proxes are defined for real arrays only).")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.result_type(float))
  return x


def _per_leaf(name: str, value: Any, treedef, num_leaves: int) -> list:
  """Broadcasts `value` to a list with one entry per leaf of `treedef`.

  `value` is either one scalar/array shared by all leaves, or a pytree with the
  same structure as the target (one entry per leaf; None entries allowed).
  """
  if value is None or callable(value):
    return [value] * num_leaves
  value_treedef: Any = jax.tree.structure(value, is_leaf=lambda v: v is None)
  if value_treedef.num_leaves == 1 and value_treedef.num_nodes == 1:
    return [value] * num_leaves
  if value_treedef != treedef:
    raise ValueError(
        f"{name} is a pytree whose structure does not match the input: "
        f"got {value_treedef}, expected a scalar/array or {treedef}."
    )
  return treedef.flatten_up_to(value)


def map_leaves(
    leaf_fn: Callable[..., jax.Array],
    x: Any,
    per_leaf_args: dict[str, Any],
    static_kwargs: dict[str, Any] | None = None,
) -> Any:
  """Applies `leaf_fn(leaf, **args_for_leaf, **static_kwargs)` over the leaves of `x`.

  Each entry of `per_leaf_args` is a scalar/array broadcast to every leaf, or a
  pytree with the structure of `x` giving one value per leaf.
  """
  leaves, treedef = jax.tree.flatten(x)
  per_leaf = {
      name: _per_leaf(name, value, treedef, len(leaves))
      for name, value in per_leaf_args.items()
  }
  static_kwargs = static_kwargs or {}
  out = [
      leaf_fn(leaf, **{k: v[i] for k, v in per_leaf.items()}, **static_kwargs)
      for i, leaf in enumerate(leaves)
  ]
  return jax.tree.unflatten(treedef, out)


NO_PARAMS_MSG = "{} needs params: call tx.update(updates, state, params)."


def require_params(params: Any, transform: str) -> None:
  """Raises ValueError (the one message, as optax's NO_PARAMS_MSG) when a transform that reads params got None."""
  if params is None:
    raise ValueError(NO_PARAMS_MSG.format(transform))


def one_state(opt_state: Any, kinds: type | tuple[type, ...], what: str) -> Any:
  """The one state of type `kinds` inside an optax (chain) state; ValueError naming `what` if not exactly one."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, kinds)) if isinstance(s, kinds)]
  if len(found) != 1:
    raise ValueError(f"expected one {what} in the optimizer state, found {len(found)}.")
  return found[0]


def moved_names(module: str, homes: dict[str, tuple[str, str]]) -> Callable[[str], Any]:
  """A module `__getattr__` serving names that moved to their home module, with a DeprecationWarning.

  Args:
    module: the old module's name (for messages), e.g. "sparsejax.selection".
    homes: old name -> (home module, name there), e.g. {"nnz_controller": ("sparsejax.controller", "nnz_controller")}.
  """
  def __getattr__(name: str) -> Any:
    if name not in homes:
      raise AttributeError(f"module {module!r} has no attribute {name!r}")
    home, new_name = homes[name]
    warnings.warn(f"{module}.{name} is deprecated: import it from its home, {home}.{new_name}.", DeprecationWarning,
                  stacklevel=2)
    return getattr(importlib.import_module(home), new_name)
  return __getattr__
