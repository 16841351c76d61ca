"""Which leaves of a params pytree a penalty acts on, and their layer order.

A mask is a pytree of bools (or a prefix of one), a callable params -> such a
pytree, a name in `NAMED_MASKS`, or None (every leaf), as in `optax.masked`.
The ready-made transforms default to the name "weights_only": kernels (ndim >= 2)
are regularised, biases and normalisation scales are not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Mask", "NAMED_MASKS", "weights_only", "mask_leaves", "regularised_size", "layer_index", "path_names"]

Mask: TypeAlias = Any  # pytree of bools (or a prefix), callable params -> such a pytree, a name, or None


def weights_only(params: Any) -> Any:
  """Default mask of the ready-made chains: True for kernels (ndim >= 2), False for biases/scales."""
  return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


NAMED_MASKS = {"weights_only": weights_only, "all": None}


def mask_leaves(mask: Mask, params: Any) -> list[bool]:
  """One bool per leaf of params (flatten order).

  `mask` is a pytree of bools, a prefix of one, a callable params -> such a pytree,
  a name in `NAMED_MASKS` ("weights_only": kernels, ndim >= 2; "all"), or None (all).
  The ready-made chains default to the *name* "weights_only", not the function:
  `optax.inject_hyperparams` takes every callable argument for a schedule and would
  call the function with the step count.

  Raises:
    ValueError: an unknown name, a structure that does not match params, or a mask
      leaf that is an array, which is what a callable mask becomes when
      `optax.inject_hyperparams` evaluates it as a schedule (it would silently
      regularise nothing).
  """
  treedef: Any = jax.tree.structure(params)
  if isinstance(mask, str):
    if mask not in NAMED_MASKS:
      raise ValueError(f"unknown mask name {mask!r}; allowed: {sorted(NAMED_MASKS)}, a pytree of bools or a callable.")
    mask = NAMED_MASKS[mask]
  if mask is None:
    return [True] * treedef.num_leaves
  mask_tree = mask(params) if callable(mask) else mask
  try:
    full = jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask_tree, params)
  except ValueError as err:
    raise ValueError(f"mask does not match the structure of params: {err}") from None
  leaves = treedef.flatten_up_to(full)
  if any(isinstance(m, (jax.Array, np.ndarray)) and not isinstance(m, np.bool_) for m in leaves):
    raise ValueError(
        "mask holds arrays, not Python bools. A callable mask passed through optax.inject_hyperparams is "
        "evaluated as a schedule (mask(step_count)); pass static_args=('mask',) to inject_hyperparams, or a "
        "mask name such as 'weights_only'.")
  for m in leaves:
    if not isinstance(m, (bool, np.bool_)):
      raise ValueError(f"mask leaves must be True or False (whether a leaf is regularised); got {m!r}.")
  return [bool(m) for m in leaves]


def regularised_size(params: Any, mask: Mask = "weights_only") -> int:
  """The number of entries in the leaves of `params` that `mask` selects (default: kernels, ndim >= 2).

  This is the count a sparsity fraction refers to: `sparsity=0.95` keeps
  ``round(0.05 * regularised_size(params, mask))`` weights. Only shapes are read,
  so `params` may be arrays or `jax.ShapeDtypeStruct`s (e.g. from `jax.eval_shape`).

  Example:
    >>> import numpy as np
    >>> regularised_size({"Dense_0": {"kernel": np.zeros((784, 100)), "bias": np.zeros(100)}})
    78400
  """
  return int(sum(int(np.prod(np.shape(p), dtype=np.int64)) for p, m in zip(jax.tree.leaves(params),
                                                                             mask_leaves(mask, params)) if m))


def path_names(path: Sequence[Any]) -> tuple[str, ...]:
  """A pytree key path as a tuple of names: dict keys, sequence indices, attribute names.

  Examples:
    >>> path, _ = jax.tree_util.tree_flatten_with_path({"Dense_0": {"kernel": 1}})[0][0]
    >>> path_names(path)
    ('Dense_0', 'kernel')
  """
  names = []
  for key in path:
    for attribute in ("key", "idx", "name"):
      if hasattr(key, attribute):
        names.append(str(getattr(key, attribute)))
        break
    else:
      names.append(str(key))
  return tuple(names)


def _natural_key(path) -> list:
  text = jax.tree_util.keystr(path)
  return [int(tok) if tok.isdigit() else tok for tok in re.split(r"(\d+)", text)]


def layer_index(params: Any, mask: Mask = "weights_only") -> Any:
  """1-based layer number l of every regularised leaf (None elsewhere), and L.

  Layers are the masked-in leaves ordered by their path with numbers compared
  numerically ("Dense_2" before "Dense_10"; "Conv_*" before "Dense_*"), which is
  input-to-output order for flax's auto-named layers.

  Returns:
    (pytree of int-or-None with the structure of params, number of layers L).
  """
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(params)
  masks = mask_leaves(mask, params)
  chosen = sorted((i for i, m in enumerate(masks) if m),
                  key=lambda i: _natural_key(leaves_with_path[i][0]))
  index: list[int | None] = [None] * len(masks)
  for rank, i in enumerate(chosen):
    index[i] = rank + 1
  return jax.tree.unflatten(treedef, index), len(chosen)


