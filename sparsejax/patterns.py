"""Sparsity patterns and layer distributions: which entries a mask keeps, with exact counts.

Every mask method of the library (one-shot and gradual pruning, dynamic sparse
training, straight-through training) chooses its support here, from a pytree of
non-negative *scores* (``|w|`` for magnitude, ``|w * g|`` for saliency, ``|g|`` for
RigL's regrowth):

* **Patterns** (`parse_pattern`):

  - ``"unstructured"``: the k highest scores of a leaf (or of all leaves);
  - ``"N:M"`` (e.g. ``"2:4"``, ``"1:4"``): in every group of M consecutive weights
    along the input axis (axis -2 of a kernel: ``(in, out)`` for Dense, ``(h, w, in,
    out)`` for a convolution) exactly the N highest are kept (Mishra et al. 2021,
    "Accelerating sparse deep neural networks"); the density is N/M whatever the
    sparsity asked for;
  - blocks ``"RxC"`` (e.g. ``"1x4"``, ``"4x4"``): the kernel viewed as a matrix
    ``(fan_in, fan_out)`` (all axes but the last, by the last) is tiled in R x C
    blocks scored by the sum of their squared entry scores (the block's L2 norm for
    magnitude scores); whole blocks are kept or removed. Where R or C does not divide
    the view, the last row or column of blocks is partial (fewer entries, same rule).

* **Layer distributions** (`layer_sparsities`): ``"global"`` (one ranking over all
  selected leaves), ``"uniform"`` (the same sparsity in every layer) and ``"erk"``
  (Erdős–Rényi-Kernel, Evci et al. 2020, "Rigging the lottery"): layer l keeps a
  density proportional to ``sum(shape_l) / prod(shape_l)``, scaled by one factor so
  the kept count over all layers equals the target; layers the factor would make
  denser than 1 are kept dense and the factor is solved again for the rest.

Counts are exact: ties are broken by position (the earlier entry wins), so a mask
keeps exactly ``round((1 - s) * n)`` entries (per layer, or over all layers for
"global"), exactly N of every M, or exactly the block count. The selections are
jit-compatible and accept a traced sparsity (for schedules); they rank with a sort,
so they belong on the steps that change a mask, not on every step.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import _checks, masking
from sparsejax.magnitudes import kth_largest_magnitude

__all__ = ["Pattern", "parse_pattern", "DISTRIBUTIONS", "layer_sparsities", "top_k_mask", "n_of_m_mask",
           "block_mask", "group_ranks", "top_k_magnitude_masks", "leaf_mask", "fitting", "check_sparsity", "select",
           "saliency", "pattern_density"]

DISTRIBUTIONS = ("global", "uniform", "erk")


@dataclasses.dataclass(frozen=True)
class Pattern:
  """A parsed sparsity pattern: kind "unstructured", "n:m" (n of every m) or "block" (rows x cols)."""
  kind: str
  n: int = 0
  m: int = 0
  block: tuple[int, int] = (1, 1)

  def __str__(self) -> str:
    if self.kind == "n:m":
      return f"{self.n}:{self.m}"
    if self.kind == "block":
      return f"{self.block[0]}x{self.block[1]}"
    return "unstructured"


def parse_pattern(pattern: str | Pattern) -> Pattern:
  """"unstructured", "N:M" with 1 <= N <= M (e.g. "2:4"), or blocks "RxC" with R, C >= 1 (e.g. "4x4").

  Raises:
    ValueError: naming `pattern` and the allowed forms.
  """
  if isinstance(pattern, Pattern):
    return pattern
  allowed = "'unstructured', 'N:M' with 1 <= N <= M (e.g. '2:4'), or blocks 'RxC' (e.g. '1x4', '4x4')"
  if not isinstance(pattern, str):
    raise ValueError(f"pattern must be {allowed}; got {pattern!r}.")
  text = pattern.strip().lower()
  if text == "unstructured":
    return Pattern("unstructured")
  found = re.fullmatch(r"(\d+):(\d+)", text)
  if found:
    n, m = int(found.group(1)), int(found.group(2))
    if 1 <= n <= m:
      return Pattern("n:m", n=n, m=m)
  found = re.fullmatch(r"(\d+)x(\d+)", text)
  if found:
    rows, cols = int(found.group(1)), int(found.group(2))
    if rows >= 1 and cols >= 1:
      return Pattern("block", block=(rows, cols))
  raise ValueError(f"pattern must be {allowed}; got {pattern!r}.")


def fitting(pattern: str | Pattern, mask: masking.Mask = "weights_only"):
  """A mask callable: the leaves of `mask` whose input axis M divides (for "N:M"; every leaf otherwise).

  N:M needs the input axis (axis -2 of a kernel) to be a multiple of M, which a first
  convolution on one or three input channels is not; hardware libraries leave such
  layers dense. `mask=patterns.fitting("2:4")` says so explicitly, where the default
  would raise naming the leaf.
  """
  parsed = parse_pattern(pattern)

  def fits(params: Any) -> Any:
    leaves, treedef = jax.tree.flatten(params)
    chosen = masking.mask_leaves(mask, params)
    return jax.tree.unflatten(treedef, [bool(c) and (parsed.kind != "n:m" or np.ndim(leaf) >= 1 and (
        np.shape(leaf)[_input_axis(np.ndim(leaf))] % parsed.m == 0)) for leaf, c in zip(leaves, chosen)])
  return fits


def pattern_density(pattern: str | Pattern) -> float | None:
  """The density a pattern fixes (N/M for "N:M"), or None when the sparsity argument decides it."""
  parsed = parse_pattern(pattern)
  return parsed.n / parsed.m if parsed.kind == "n:m" else None


def check_sparsity(sparsity: float, pattern: str | Pattern, name: str = "sparsity") -> float:
  """The sparsity a run reaches: `sparsity` in [0, 1), or for "N:M" exactly 1 - N/M (`sparsity` must be that or 0).

  Raises:
    ValueError: naming `name` when it is out of range or disagrees with the pattern.
  """
  _checks.check_range(name, sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  fixed = pattern_density(pattern)
  if fixed is None:
    return float(sparsity) if _checks.is_concrete(sparsity) else sparsity
  if not _checks.is_concrete(sparsity):
    return 1.0 - fixed
  if float(sparsity) != 0.0 and abs(float(sparsity) - (1.0 - fixed)) > 1e-6:
    raise ValueError(f"{name}={sparsity!r} disagrees with pattern {str(parse_pattern(pattern))!r}, which keeps "
                     f"{fixed:g} of the weights; allowed: {name}={1.0 - fixed:g} (or 0 to let the pattern decide).")
  return 1.0 - fixed


def _check_distribution(distribution: str) -> None:
  if distribution not in DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {list(DISTRIBUTIONS)}; got {distribution!r}.")


# ------------------------------------------------------------- layer distributions


def _erk_densities(shapes: list[tuple[int, ...]], density: float) -> list[float]:
  """ERK densities: d_l = min(1, eps * sum(shape_l) / prod(shape_l)) with sum_l d_l n_l = density * sum_l n_l."""
  sizes = [float(np.prod(s)) for s in shapes]
  raw = [float(sum(s)) / size for s, size in zip(shapes, sizes)]
  target = density * sum(sizes)
  dense: set[int] = set()
  while True:
    rest = [i for i in range(len(shapes)) if i not in dense]
    budget = target - sum(sizes[i] for i in dense)
    eps = budget / max(sum(raw[i] * sizes[i] for i in rest), 1e-300)
    over = [i for i in rest if eps * raw[i] > 1.0]
    if not over:
      return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
    dense.add(max(over, key=lambda i: raw[i]))


def layer_sparsities(params: Any, sparsity: float, distribution: str = "uniform",
                     mask: masking.Mask = "weights_only") -> Any:
  """Per-leaf sparsities (a pytree like params; None on leaves `mask` leaves out).

  "uniform": every selected leaf gets `sparsity`. "erk": Erdős–Rényi-Kernel (see the
  module docstring); the kept counts ``round((1 - s_l) n_l)`` sum to
  ``round((1 - sparsity) * n)`` within one weight per layer. "global" has no per-layer
  sparsity (one ranking decides): every selected leaf gets None as well, and `select`
  ranks them together. Only shapes are read.

  Raises:
    ValueError: sparsity outside [0, 1], an unknown distribution, or no selected leaf.
  """
  _checks.check_range("sparsity", sparsity, lower=0.0, upper=1.0)
  _check_distribution(distribution)
  leaves, treedef = jax.tree.flatten(params)
  chosen = masking.mask_leaves(mask, params)
  if not any(chosen):
    raise ValueError("layer_sparsities: the mask selects no parameter leaf.")
  if distribution == "global":
    return jax.tree.unflatten(treedef, [None] * len(leaves))
  if distribution == "uniform":
    return jax.tree.unflatten(treedef, [sparsity if c else None for c in chosen])
  if not _checks.is_concrete(sparsity):
    raise ValueError("distribution='erk' needs a concrete sparsity (its layer densities are solved on the host); "
                     "under optax.inject_hyperparams pass the sparsity in static_args.")
  shapes = [tuple(int(d) for d in np.shape(leaf)) for leaf, c in zip(leaves, chosen) if c]
  densities = iter(_erk_densities(shapes, 1.0 - float(sparsity)))
  return jax.tree.unflatten(treedef, [1.0 - next(densities) if c else None for c in chosen])


# ------------------------------------------------------------- exact selections


def _descending_ranks(flat: jax.Array) -> jax.Array:
  """Rank of every entry when sorted by decreasing score, ties by position (0 = highest)."""
  order = jnp.argsort(-flat, stable=True)
  return jnp.zeros(flat.shape, jnp.int32).at[order].set(jnp.arange(flat.size, dtype=jnp.int32))


def _scores(scores: jax.Array) -> jax.Array:
  # NaN never wins a place; -inf marks entries that must not be kept (e.g. pruned for good).
  x = jnp.asarray(scores, jnp.float32 if jnp.asarray(scores).dtype != jnp.float64 else jnp.float64)
  return jnp.where(jnp.isnan(x), -jnp.inf, x)


def top_k_mask(scores: jax.Array, k: chex.Numeric) -> jax.Array:
  """Boolean mask of the k highest scores (exactly min(k, size) entries; ties by position). `k` may be traced."""
  flat = _scores(scores).ravel()
  keep = _descending_ranks(flat) < jnp.clip(jnp.asarray(k, jnp.int32), 0, flat.size)
  return keep.reshape(jnp.shape(scores))


def top_k_magnitude_masks(leaves: list[jax.Array], k: chex.Numeric) -> list[jax.Array]:
  """Masks keeping exactly min(k, n) largest ``|w|`` over all `leaves`, in linear time (no sort).

  The k-th largest magnitude c comes from `magnitudes.kth_largest_magnitude`; every
  ``|w| > c`` is kept, and of the entries tied at c the first ones in flatten order
  (leaf by leaf) fill the count. `k` may be traced.
  """
  k = jnp.asarray(k, jnp.int32)
  cut = kth_largest_magnitude(leaves, jnp.maximum(k, 1))
  above = [jnp.abs(w) > cut.astype(w.dtype) for w in leaves]
  need = k - sum((jnp.sum(a, dtype=jnp.int32) for a in above), jnp.zeros([], jnp.int32))
  out, offset = [], jnp.zeros([], jnp.int32)
  for w, a in zip(leaves, above):
    tie = jnp.abs(w) == cut.astype(w.dtype)
    rank = jnp.cumsum(tie.ravel(), dtype=jnp.int32).reshape(tie.shape) + offset
    out.append((k > 0) & (a | (tie & (rank <= need))))
    offset = offset + jnp.sum(tie, dtype=jnp.int32)
  return out


def _input_axis(ndim: int) -> int:
  return 0 if ndim < 2 else ndim - 2


# Up to this group size, ranks within a group come from m x m comparisons (elementwise,
# fast on every backend); above it from a sort.
_PAIRWISE_MAX_M = 32


def group_ranks(groups: jax.Array) -> jax.Array:
  """Rank of every entry within its group (last axis) by decreasing score, ties by position (0 = highest).

  rank_i = #{j : s_j > s_i} + #{j < i : s_j = s_i}: the order of a stable descending
  sort, by m x m comparisons for small groups (no sort of many short segments).
  """
  m = groups.shape[-1]
  if m > _PAIRWISE_MAX_M:
    return jnp.argsort(jnp.argsort(-groups, axis=-1, stable=True), axis=-1, stable=True).astype(jnp.int32)
  mine, other = groups[..., :, None], groups[..., None, :]
  before = jnp.arange(m)[None, :] < jnp.arange(m)[:, None]  # [i, j]: j comes before i
  return jnp.sum((other > mine) | ((other == mine) & before), axis=-1, dtype=jnp.int32)


def n_of_m_mask(scores: jax.Array, n: chex.Numeric, m: int, axis: int | None = None) -> jax.Array:
  """Keeps exactly n of every m consecutive entries along `axis` (default: the input axis, -2 of a kernel).

  `n` may be traced (0 <= n <= m); the length of `axis` must be a multiple of m.

  Raises:
    ValueError: m < 1, or an axis length that m does not divide.
  """
  _checks.check_int("m", m, 1)
  _checks.check_range("n", n, lower=0, upper=m)
  x = _scores(scores)
  axis = _input_axis(x.ndim) if axis is None else axis % max(x.ndim, 1)
  length = x.shape[axis] if x.ndim else 1
  if length % m:
    raise ValueError(f"pattern N:M needs the input axis (axis {axis} of shape {tuple(x.shape)}) to be a multiple "
                     f"of M={m}; got length {length}. Choose M dividing {length} or leave this leaf out of the mask.")
  moved = jnp.moveaxis(x.reshape(x.shape or (1,)), axis, -1)
  groups = moved.reshape(moved.shape[:-1] + (length // m, m))
  keep = (group_ranks(groups) < jnp.asarray(n, jnp.int32)).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis).reshape(jnp.shape(scores))


def _matrix_view(shape: tuple[int, ...]) -> tuple[int, int]:
  if len(shape) < 2:
    return 1, int(np.prod(shape, dtype=np.int64))
  return int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])


def _block_grid(shape: tuple[int, ...], block: tuple[int, int]) -> tuple[int, int]:
  """Row and column block counts of the (fan_in, fan_out) view; edge blocks may be partial."""
  rows, cols = _matrix_view(shape)
  return -(-rows // block[0]), -(-cols // block[1])


def _block_view(x: jax.Array, block: tuple[int, int], fill: float) -> jax.Array:
  """Scores as (row blocks, col blocks, R, C) of the (fan_in, fan_out) view, padded with `fill` at the edges."""
  rows, cols = _matrix_view(tuple(x.shape))
  r, c = block
  grid_r, grid_c = _block_grid(tuple(x.shape), block)
  padded = jnp.pad(x.reshape(rows, cols), ((0, grid_r * r - rows), (0, grid_c * c - cols)), constant_values=fill)
  return padded.reshape(grid_r, r, grid_c, c).transpose(0, 2, 1, 3)


def _block_scores(scores: jax.Array, block: tuple[int, int]) -> jax.Array:
  x = _scores(scores)
  view = _block_view(jnp.where(jnp.isneginf(x), 0.0, x), block, 0.0)
  summed = jnp.sum(view * view, axis=(2, 3))
  blocked = jnp.any(jnp.isneginf(_block_view(x, block, 0.0)), axis=(2, 3))
  return jnp.where(blocked, -jnp.inf, summed)


def _expand_blocks(keep_blocks: jax.Array, block: tuple[int, int], shape: tuple[int, ...]) -> jax.Array:
  rows, cols = _matrix_view(shape)
  full = jnp.repeat(jnp.repeat(keep_blocks, block[0], axis=0), block[1], axis=1)
  return full[:rows, :cols].reshape(shape)


def block_mask(scores: jax.Array, block: tuple[int, int], k_blocks: chex.Numeric) -> jax.Array:
  """Keeps exactly the k_blocks R x C blocks of highest sum of squared scores (a block holding -inf never wins).

  Blocks tile the (fan_in, fan_out) view (all axes but the last, by the last); edge
  blocks are partial where R or C does not divide it.
  """
  if len(block) != 2 or any(isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1 for b in block):
    raise ValueError(f"block must be two ints >= 1 (rows, cols); got {block!r}.")
  shape = tuple(jnp.shape(scores))
  return _expand_blocks(top_k_mask(_block_scores(scores, block), k_blocks), block, shape)


def _kept_count(sparsity: chex.Numeric, size: int) -> jax.Array:
  """round((1 - s) n): in Python (float64) for a concrete s, as `round` would; traced, in float32 (exact to 2^24)."""
  if _checks.is_concrete(sparsity):
    return jnp.asarray(int(round((1.0 - float(sparsity)) * size)), jnp.int32)
  return jnp.round((1.0 - jnp.asarray(sparsity, jnp.float32)) * size).astype(jnp.int32)


def leaf_mask(scores: jax.Array, sparsity: chex.Numeric, pattern: str | Pattern = "unstructured") -> jax.Array:
  """One leaf's mask at `sparsity` (may be traced): round((1 - s) n) entries, or blocks; N:M ignores `sparsity`."""
  parsed = parse_pattern(pattern)
  if parsed.kind == "n:m":
    return n_of_m_mask(scores, parsed.n, parsed.m)
  if parsed.kind == "block":
    grid_r, grid_c = _block_grid(tuple(jnp.shape(scores)), parsed.block)
    num_blocks = grid_r * grid_c
    return block_mask(scores, parsed.block, _kept_count(sparsity, num_blocks))
  return top_k_mask(scores, _kept_count(sparsity, int(np.size(scores))))


def select(scores: Any, sparsity: chex.Numeric, *, pattern: str | Pattern = "unstructured",
           distribution: str = "global", mask: masking.Mask = "weights_only", fraction: chex.Numeric = 1.0,
           layer_sparsity: Any = None) -> Any:
  """The boolean mask pytree of a pattern and distribution over a pytree of scores (True outside `mask`).

  Args:
    scores: a pytree like params of non-negative scores (``|w|``, `saliency`, ...);
      -inf marks entries that must not be kept.
    sparsity: the target fraction removed, in [0, 1] (ignored by "N:M").
    pattern: "unstructured", "N:M" or "RxC" blocks (`parse_pattern`).
    distribution: "global", "uniform" or "erk" (`layer_sparsities`).
    mask: which leaves are sparsified (default: kernels, ndim >= 2).
    fraction: a multiplier in [0, 1] on every sparsity (a schedule's progress: layer l
      is pruned to ``fraction * s_l``; for N:M the kept count per group goes from M
      down to N). May be traced.
    layer_sparsity: the per-leaf sparsities (`layer_sparsities`), when computed
      once outside a jitted step; default: computed here from `sparsity`.

  Returns:
    A pytree of bools like `scores`: exact counts (see the module docstring).
  """
  parsed = parse_pattern(pattern)
  _check_distribution(distribution)
  _checks.check_range("sparsity", sparsity, lower=0.0, upper=1.0)
  _checks.check_range("fraction", fraction, lower=0.0, upper=1.0)
  leaves, treedef = jax.tree.flatten(scores)
  chosen = masking.mask_leaves(mask, scores)
  if not any(chosen):
    raise ValueError("select: the mask selects no leaf to sparsify.")
  if _checks.is_concrete(fraction) and _checks.is_concrete(sparsity):  # counts in Python, as `round` gives them
    fraction, sparsity = min(max(float(fraction), 0.0), 1.0), float(sparsity)
  else:
    fraction = jnp.clip(jnp.asarray(fraction, jnp.float32), 0.0, 1.0)
  if parsed.kind == "n:m":
    keep_per_group = jnp.round(parsed.m - fraction * (parsed.m - parsed.n)).astype(jnp.int32)
    kept = iter([n_of_m_mask(leaf, keep_per_group, parsed.m) for leaf, c in zip(leaves, chosen) if c])
  elif distribution == "global":
    kept = iter(_global_masks([leaf for leaf, c in zip(leaves, chosen) if c], fraction * sparsity, parsed))
  else:
    if layer_sparsity is None:
      layer_sparsity = layer_sparsities(scores, sparsity, distribution, mask)
    per_leaf = _flatten_like(treedef, layer_sparsity)
    kept = iter([leaf_mask(leaf, fraction * s, parsed) for leaf, s, c in zip(leaves, per_leaf, chosen) if c])
  return jax.tree.unflatten(treedef, [next(kept) if c else jnp.ones(jnp.shape(leaf), bool)
                                      for leaf, c in zip(leaves, chosen)])


def _flatten_like(treedef: Any, tree: Any) -> list:
  return treedef.flatten_up_to(tree)


def _global_masks(picked: list[jax.Array], sparsity: chex.Numeric, parsed: Pattern) -> list[jax.Array]:
  """One ranking over all picked leaves (entries, or blocks for a block pattern)."""
  if parsed.kind == "block":
    units = [_block_scores(leaf, parsed.block) for leaf in picked]
  else:
    units = [_scores(leaf) for leaf in picked]
  flat = jnp.concatenate([u.ravel() for u in units])
  keep = top_k_mask(flat, _kept_count(sparsity, int(flat.size)))
  out, start = [], 0
  for leaf, unit in zip(picked, units):
    part = keep[start:start + unit.size].reshape(unit.shape)
    start += unit.size
    out.append(_expand_blocks(part, parsed.block, tuple(jnp.shape(leaf))) if parsed.kind == "block" else part)
  return out


def saliency(params: Any, grads: Any) -> Any:
  """``|w * g|`` per entry (first-order saliency: the loss change of zeroing w, Molchanov et al. 2017)."""
  treedef: Any = jax.tree.structure(params)
  grad_leaves = treedef.flatten_up_to(grads)
  for p, g in zip(jax.tree.leaves(params), grad_leaves):
    if np.shape(p) != np.shape(g):
      raise ValueError(f"grads must have the shapes of params; got {np.shape(g)} for a leaf of shape {np.shape(p)}.")
  return jax.tree.unflatten(treedef, [jnp.abs(p * g) for p, g in zip(jax.tree.leaves(params), grad_leaves)])

