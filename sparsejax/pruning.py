"""Magnitude-pruning baselines as optax transforms, and exact O(n) magnitude selection.

The baselines a sparsity method has to beat, in the same trainer and with the same
schedule as the regularisers:

* `gradual_magnitude_pruning` (GMP; Zhu & Gupta 2017, "To prune, or not to prune"): the
  sparsity ramps from `initial_sparsity` to `target_sparsity` along the cubic schedule
  s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3; every `frequency` steps the
  smallest-magnitude kernel weights are masked (globally over all regularised leaves,
  or per layer), and the mask is held between updates.
* `fixed_mask`: training with a given binary mask (fine-tuning after one-shot pruning,
  random pruning, or retraining the support a penalty found: `support_mask`).
* `one_shot_magnitude_mask` and `random_mask`: the masks of one-shot magnitude pruning
  and of random pruning at given per-layer densities (a sanity floor).
* `sparsify_then_retrain`: a penalty finds the support, then the surviving weights are
  retrained without shrinkage inside that frozen support.

Every transform is placed *after* the optimizer, like the proximal steps: it turns the
optimizer's proposal p + u into (p + u) * mask, so masked weights are exactly zero
after every step whatever momentum or Adam state the optimizer carries.

Selection is exact and linear: the k-th largest ``|w|`` is found by a search over the
bit patterns of ``|w|`` (for non-negative IEEE floats the integer order of the bits is
the numeric order): counting passes only, 8-20 of them by guarded interpolation up to
2^20 weights, 31 (float32) or 63 (float64) by bisection above, with no sort and no
`top_k` (`kth_largest_magnitude`). In GMP it runs only on the steps that update the
mask, under `lax.cond`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import _checks, masking

__all__ = [
    "kth_largest_magnitude", "blocked_sum", "cubic_sparsity", "MaskState", "gradual_magnitude_pruning", "fixed_mask",
    "one_shot_magnitude_mask", "random_mask", "support_mask", "apply_mask", "mask_density",
    "schedule_total_steps", "TwoPhaseState", "sparsify_then_retrain",
]

Mask = Any


def _selected(mask: Mask, params: Any) -> list[bool]:
  """One bool per leaf: which leaves are pruned (default: kernels, ndim >= 2)."""
  return masking.mask_leaves("weights_only" if mask is None else mask, params)


# ------------------------------------------------------------- exact selection


# Above this many weights, kth_largest_magnitude unrolls its passes (no stored copy of them).
_ROLLED_MAX_ELEMENTS = 1 << 20


def _magnitude_bits(x: jax.Array) -> jax.Array:
  """``|x|`` as unsigned integers whose order is the order of ``|x|`` (NaN sorts above inf)."""
  ax = jnp.abs(x.astype(jnp.float64 if x.dtype == jnp.float64 else jnp.float32))
  utype = jnp.uint64 if ax.dtype == jnp.float64 else jnp.uint32
  return lax.bitcast_convert_type(ax, utype)


def kth_largest_magnitude(leaves: Sequence[jax.Array], k: chex.Numeric) -> jax.Array:
  """The k-th largest ``|w|`` over all `leaves` (k >= 1, counted with multiplicity); 0 if k > size.

  Exact, in O(passes x n), no sort and no top_k over the weights: a search over the bit
  patterns of ``|w|`` (their integer order is the order of ``|w|``), each step one
  counting pass. Up to 2^20 weights it is a guarded interpolation search
  (`_interpolated_kth_bits`, 8-20 passes on trained weights); above, 31 (float32) or 63 (float64)
  unrolled bisection passes, each counted block by block (`blocked_sum`).
  Jit-compatible; `k` may be traced.

  A leaf may also be a tuple of arrays of one shape, standing for their sum (e.g.
  ``(p, u)`` for the proposal p + u of an optimizer step): above 2^20 weights the sum
  is then formed one block at a time inside each count and never stored.
  """
  _checks.check_count("k", k)
  terms = [_leaf_terms(leaf) for leaf in leaves]
  float64 = any(jnp.result_type(t) == jnp.float64 for leaf in terms for t in leaf)
  utype = jnp.uint64 if float64 else jnp.uint32
  width = 64 if float64 else 32
  k = jnp.asarray(k, jnp.int64 if width == 64 else jnp.int32)
  total = sum(int(np.size(leaf[0])) for leaf in terms)
  if float64:
    terms = [tuple(t.astype(jnp.float64) for t in leaf) for leaf in terms]
  if total == 0:
    return jnp.zeros((), jnp.float64 if width == 64 else jnp.float32)
  if total > _ROLLED_MAX_ELEMENTS:
    # Unrolled passes, each a blocked count over the terms themselves: nothing
    # parameter-sized is stored; compiling the passes takes seconds, small beside the
    # compile time of a model this large.
    t = _bisected_kth_bits(lambda candidate: _count_at_least(terms, candidate, k.dtype), k, utype, width,
                           unroll=True)
  else:
    t = _interpolated_kth_bits([functools.reduce(jnp.add, leaf) for leaf in terms], k, total, utype, width)
  value = lax.bitcast_convert_type(t, jnp.float64 if width == 64 else jnp.float32)
  return jnp.where(k <= total, value, 0.0)


# Block length of `blocked_sum`: 2^17 elements (512 KB of float32) stay in cache.
_SUM_BLOCK = 1 << 17


def _blocks_help() -> bool:
  """Whether `blocked_sum` loops over blocks: on XLA:CPU with one device.

  Elsewhere it is one fused reduction, as XLA's GPU and TPU backends fuse the
  elementwise producer into it (a loop would launch one small kernel per block), and
  with several devices the weights may be sharded, where slicing a flattened
  array would gather it onto every device instead of summing each shard in place.
  """
  return jax.default_backend() == "cpu" and jax.device_count() == 1


def blocked_sum(fn: Callable[..., jax.Array], *arrays: jax.Array, dtype: Any = jnp.int32) -> jax.Array:
  """sum_i fn(a_1[i], ..., a_m[i]) for arrays of one shape and an elementwise `fn`, in `dtype`.

  With a boolean `fn` it is a count. Above two blocks of 2^17 elements, on XLA:CPU with
  one device, the sum runs block by block in a loop over the flattened arrays, so fn's
  operands (e.g. p + u) and its values are formed one block at a time: XLA:CPU
  otherwise stores a weight-sized array of them before it reduces. Elsewhere (GPU, TPU,
  several devices, where the arrays may be sharded) it is one reduction. On an 8.4M-weight kernel,
  ``blocked_sum(lambda p, u: abs(p + u) >= t, p, u)`` took 2.2 ms against 14.9 ms
  whole, with 0.02 instead of 1.0 kernel-sizes of temporary memory. Integer sums are
  exact either way; float sums are added in another order (per block, then blocks).

  Args:
    fn: maps blocks of the arrays (all the same shape) to values, elementwise.
    *arrays: arrays of one shape.
    dtype: the dtype the values are summed in.

  Returns:
    The sum, a scalar of `dtype`.
  """
  shape = jnp.shape(arrays[0])
  if any(jnp.shape(a) != shape for a in arrays):
    raise ValueError(f"blocked_sum needs arrays of one shape; got {[jnp.shape(a) for a in arrays]}.")
  blocks = math.prod(shape) // _SUM_BLOCK

  def block_sum(*parts):
    return jnp.sum(fn(*parts), dtype=dtype)

  if blocks < 2 or not _blocks_help():
    return block_sum(*arrays)
  flat = [jnp.ravel(a) for a in arrays]

  def add_block(i, total):
    return total + block_sum(*(lax.dynamic_slice_in_dim(f, i * _SUM_BLOCK, _SUM_BLOCK) for f in flat))

  total = lax.fori_loop(0, blocks, add_block, jnp.zeros((), dtype))
  return total + block_sum(*(f[blocks * _SUM_BLOCK:] for f in flat))


def _leaf_terms(leaf: Any) -> tuple:
  """A leaf of `kth_largest_magnitude` as the tuple of arrays whose sum it is."""
  return tuple(leaf) if isinstance(leaf, (tuple, list)) else (leaf,)


def _count_at_least(leaves: Sequence[Any], threshold: jax.Array, dtype: Any) -> jax.Array:
  """#{w : bits(|w|) >= threshold} over all leaves (a tuple leaf is the sum of its arrays)."""
  def at_least(*terms):
    return _magnitude_bits(functools.reduce(jnp.add, terms)) >= threshold
  return sum((blocked_sum(at_least, *_leaf_terms(leaf), dtype=dtype) for leaf in leaves), jnp.zeros((), dtype))


def _bisected_kth_bits(count_at_least: Callable[[jax.Array], jax.Array], k: jax.Array, utype: Any, width: int,
                       unroll: bool) -> jax.Array:
  """The largest t with count_at_least(t) >= k, built bit by bit from the top: width - 1 passes.

  `k` may hold several ranks; `count_at_least` maps candidates of its shape to counts.
  """
  def body(i, t):
    # the sign bit of |w| is 0, so the search starts one bit below it
    candidate = t | (jnp.asarray(1, utype) << (width - 1 - i).astype(utype))
    return jnp.where(count_at_least(candidate) >= k, candidate, t)

  return lax.fori_loop(1, width, body, jnp.zeros(jnp.shape(k), utype), unroll=unroll)


# Sample size of the first bracket of `_interpolated_kth_bits`, and its width in
# binomial standard deviations of the sample rank.
_SAMPLE_SIZE = 2048
_SAMPLE_MARGIN = 2.5


def _interpolated_kth_bits(leaves: list[jax.Array], k: jax.Array, total: int, utype: Any, width: int) -> jax.Array:
  """The largest t with C(t) = count(bits(|w|) >= t) >= k (k <= total), by a guarded interpolation search.

  Invariant: C(lo) >= k > C(hi). The first bracket comes from a strided sample of about
  `_SAMPLE_SIZE` weights: its order statistics at rank k n_s / n -/+ 2.5 binomial
  standard deviations (by bisection on the sample's bits), counted exactly over all
  weights (and t = 1, which settles ties at 0 in one pass).
  Then each pass counts one pivot, placed by linear interpolation of C between lo and
  hi (Illinois variant: an end kept twice has its residual halved), or at the midpoint
  when the bracket did not halve over the last two passes (so at most about twice the
  passes of bisection; 8-20 in all on trained MLP weights, against 31). The search
  stops when C(lo) = k (t is the smallest bit pattern >= lo), C(hi) = k - 1 (the largest < hi) or hi = lo + 1
  (lo); the first two cost one more max pass. The weights travel in the loop's carry
  through a barrier tied to the loop-varying pivot, so XLA cannot hoist their bit
  patterns out of the loop: they are stored once in the loop's state, cheap at this size.
  """
  count_dtype = k.dtype
  k = jnp.clip(k, 1, total)  # k > total is answered by the caller; the search keeps C(lo) >= k
  fdtype = jnp.float64 if width == 64 else jnp.float32
  top = jnp.asarray(1 << (width - 1), utype)  # above every |w| pattern, NaN included: C = 0
  ones_mask = jnp.asarray((1 << width) - 1, utype)

  stride = max(1, total // _SAMPLE_SIZE)
  sample = jnp.concatenate([_magnitude_bits(leaf).ravel()[::stride] for leaf in leaves])
  size = sample.shape[0]
  rank = k.astype(fdtype) * (size / total)  # expected rank of the k-th largest in the sample, from the top
  spread = _SAMPLE_MARGIN * jnp.sqrt(jnp.maximum(rank * (1.0 - rank / size), 1.0)) + 1.0
  ranks = jnp.stack([jnp.floor(rank + spread), jnp.ceil(rank - spread)])  # a lower, then a higher value
  ranks = jnp.clip(ranks, 1, size).astype(count_dtype)
  # the two order statistics of the sample by bisection on its bits (a sort of it costs ~3 passes)
  low_pivot, high_pivot = _bisected_kth_bits(
      lambda candidates: jnp.sum(sample[None, :] >= candidates[:, None], axis=1, dtype=count_dtype), ranks, utype,
      width, unroll=False)

  lo, hi = jnp.zeros((), utype), top
  c_lo, c_hi = jnp.asarray(total, count_dtype), jnp.zeros((), count_dtype)
  for pivot in (low_pivot, high_pivot + 1, jnp.ones((), utype)):
    c = _count_at_least(leaves, pivot, count_dtype)
    raise_lo = (c >= k) & (pivot > lo)
    lower_hi = (c < k) & (pivot < hi)
    lo, c_lo = jnp.where(raise_lo, pivot, lo), jnp.where(raise_lo, c, c_lo)
    hi, c_hi = jnp.where(lower_hi, pivot, hi), jnp.where(lower_hi, c, c_hi)

  def searching(carry):
    lo, hi, c_lo, c_hi = carry[:4]
    return (hi - lo > 1) & (c_lo != k) & (c_hi != k - 1)

  aim = k.astype(fdtype) - 0.5  # a pivot between the k-th and (k+1)-th largest counts k or k - 1

  def step(carry):
    lo, hi, c_lo, c_hi, f_lo, f_hi, side, width_before, width_last, weights = carry
    span = hi - lo
    interpolated = lo + (f_lo / (f_lo - f_hi) * span.astype(fdtype)).astype(utype)
    pivot = jnp.where(span.astype(fdtype) <= 0.5 * width_before, interpolated, lo + span // 2)
    pivot = jnp.clip(pivot, lo + 1, hi - 1)
    weights, pivot = lax.optimization_barrier((weights, pivot))
    c = _count_at_least(weights, pivot, count_dtype)
    at_least = c >= k
    f = c.astype(fdtype) - aim
    # Illinois: an end kept twice in a row has its residual halved, so the next pivot
    # moves toward it instead of creeping along the other side
    f_lo, f_hi = jnp.where(at_least, f, jnp.where(side < 0, 0.5 * f_lo, f_lo)), \
        jnp.where(at_least, jnp.where(side > 0, 0.5 * f_hi, f_hi), f)
    side = jnp.where(at_least, 1, -1).astype(jnp.int32)
    return (jnp.where(at_least, pivot, lo), jnp.where(at_least, hi, pivot), jnp.where(at_least, c, c_lo),
            jnp.where(at_least, c_hi, c), f_lo, f_hi, side, width_last, span.astype(fdtype), weights)

  unbounded = jnp.asarray(np.inf, fdtype)
  carry = (lo, hi, c_lo, c_hi, c_lo.astype(fdtype) - aim, c_hi.astype(fdtype) - aim, jnp.zeros((), jnp.int32),
           unbounded, unbounded, leaves)
  lo, hi, c_lo, c_hi, *_ = lax.while_loop(searching, step, carry)
  # C(lo) = k: the smallest pattern >= lo; otherwise (C(hi) = k - 1) the largest below hi.
  # One max pass for either (the first as the max of the complements).
  from_below = c_lo == k
  def candidates(leaf):
    bits = _magnitude_bits(leaf)
    chosen = jnp.where(from_below, bits >= lo, bits < hi)
    return jnp.max(jnp.where(chosen, jnp.where(from_below, ones_mask - bits, bits), 0), initial=0)
  best = functools.reduce(jnp.maximum, [candidates(leaf) for leaf in leaves])
  found = jnp.where(from_below, ones_mask - best, best)
  return jnp.where(hi - lo == 1, lo, found)


def cubic_sparsity(step: chex.Numeric, target_sparsity: float, begin_step: int, end_step: int,
                   initial_sparsity: float = 0.0) -> jax.Array:
  """Zhu & Gupta's schedule: s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3, clipped to [t_0, t_1].

  Sparsities lie in [0, 1] and 0 <= begin_step <= end_step (checked where concrete).
  """
  _checks.check_range("target_sparsity", target_sparsity, lower=0.0, upper=1.0)
  _checks.check_range("initial_sparsity", initial_sparsity, lower=0.0, upper=1.0)
  if _checks.is_concrete(begin_step) and _checks.is_concrete(end_step):
    _checks.check_int("begin_step", begin_step, 0)
    _checks.check_int("end_step", end_step, int(begin_step), f"an int >= begin_step={int(begin_step)}")
  span = jnp.maximum(jnp.asarray(end_step - begin_step, jnp.float32), 1.0)
  progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / span, 0.0, 1.0)
  return target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress) ** 3


# ------------------------------------------------------------- masks


def _keep_largest(leaves: list[jax.Array], keep: chex.Numeric) -> list[jax.Array]:
  """Boolean masks keeping the `keep` largest ``|w|`` over `leaves` (ties at the threshold kept)."""
  threshold = kth_largest_magnitude(leaves, jnp.maximum(keep, 1))
  return [jnp.where(keep > 0, jnp.abs(leaf) >= threshold.astype(leaf.dtype), False) for leaf in leaves]


def one_shot_magnitude_mask(params: Any, sparsity: float, scope: str = "global", mask: Mask = None) -> Any:
  """Boolean mask pytree keeping the largest-magnitude (1 - sparsity) of the regularised weights.

  Args:
    params: the trained parameters.
    sparsity: fraction of the regularised weights to remove, in [0, 1).
    scope: "global" (one threshold over all regularised leaves) or "layer" (the same
      fraction in every leaf).
    mask: which leaves are pruned (default: kernels); other leaves get True.
  """
  _checks.check_range("sparsity", sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _check_scope(scope)
  leaves, treedef = jax.tree.flatten(params)
  chosen = _selected(mask, params)
  picked = [jnp.asarray(leaf) for leaf, c in zip(leaves, chosen) if c]
  if scope == "global":
    total = sum(p.size for p in picked)
    kept = iter(_keep_largest(picked, int(round((1.0 - sparsity) * total))))
  else:
    kept = iter([_keep_largest([p], int(round((1.0 - sparsity) * p.size)))[0] for p in picked])
  return jax.tree.unflatten(treedef, [next(kept) if c else jnp.ones(jnp.shape(leaf), bool)
                                      for leaf, c in zip(leaves, chosen)])


def random_mask(params: Any, densities: Any, seed: int = 0, mask: Mask = None) -> Any:
  """Boolean mask pytree keeping a uniformly random `density` fraction of each regularised leaf.

  `densities` is one fraction for every regularised leaf, or a pytree like params with
  one per leaf (e.g. `mask_density(one_shot_mask)` to match another method per layer).
  """
  leaves, treedef = jax.tree.flatten(params)
  treedef_any: Any = treedef
  chosen = _selected(mask, params)
  if isinstance(densities, (int, float)):
    per_leaf = [float(densities)] * len(leaves)
  else:
    per_leaf = treedef_any.flatten_up_to(densities)
  rng = np.random.default_rng(seed)
  out = []
  for leaf, c, d in zip(leaves, chosen, per_leaf):
    if not c:
      out.append(jnp.ones(jnp.shape(leaf), bool))
      continue
    _checks.check_range("density", d, lower=0.0, upper=1.0)
    size = int(np.size(leaf))
    keep = np.zeros(size, bool)
    keep[rng.permutation(size)[:int(round(float(d) * size))]] = True
    out.append(jnp.asarray(keep.reshape(np.shape(leaf))))
  return jax.tree.unflatten(treedef, out)


def support_mask(params: Any, mask: Mask = None) -> Any:
  """True where a regularised weight is nonzero (the support a penalty found); True on other leaves."""
  leaves, treedef = jax.tree.flatten(params)
  chosen = _selected(mask, params)
  return jax.tree.unflatten(treedef, [jnp.asarray(leaf) != 0 if c else jnp.ones(jnp.shape(leaf), bool)
                                      for leaf, c in zip(leaves, chosen)])


def mask_density(binary_mask: Any) -> Any:
  """Fraction of True entries per leaf (a pytree of floats)."""
  return jax.tree.map(lambda m: float(np.mean(np.asarray(m))), binary_mask)


def apply_mask(params: Any, binary_mask: Any) -> Any:
  """params * mask (exact zeros where the mask is False); the mask has params' leaves and shapes."""
  _check_mask_structure(binary_mask, params)
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, binary_mask)


def _check_scope(scope: str) -> None:
  if scope not in ("global", "layer"):
    raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}.")


# ------------------------------------------------------------- transforms


class MaskState(NamedTuple):
  """State of the masking transforms: the step count and the current binary mask (a params-like pytree)."""
  count: chex.Array
  mask: Any


def _masked_updates(updates: Any, params: Any, binary_mask: Any) -> Any:
  """Updates that land params on (params + updates) * mask."""
  leaves_p = jax.tree.leaves(params)
  treedef: Any = jax.tree.structure(params)
  leaves_u = treedef.flatten_up_to(updates)
  out = [(jnp.where(m, p + u, jnp.zeros_like(p)) - p).astype(jnp.result_type(u))
         for p, u, m in zip(leaves_p, leaves_u, jax.tree.leaves(binary_mask))]
  return jax.tree.unflatten(treedef, out)


def fixed_mask(binary_mask: Any) -> optax.GradientTransformation:
  """Keeps training inside a fixed support: params_new = (params + u) * mask.

  Place after the optimizer: `optax.chain(optax.sgd(lr, momentum=0.9), fixed_mask(m))`.
  Masked weights are exactly zero after every step (also when they were nonzero before).
  """
  def init_fn(params):
    _check_mask_structure(binary_mask, params)
    # stored in the structure of params (e.g. flax.nnx's Variable-wrapped state)
    return MaskState(jnp.zeros([], jnp.int32), jax.tree.unflatten(
        jax.tree.structure(params), [jnp.asarray(m, bool) for m in jax.tree.leaves(binary_mask)]))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "fixed_mask")
    return _masked_updates(updates, params, state.mask), MaskState(optax.safe_increment(state.count), state.mask)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_mask_structure(binary_mask: Any, params: Any) -> None:
  # Leaves in flatten order: the same nesting may come wrapped differently (plain dicts,
  # or flax.nnx State with Variable nodes).
  if len(jax.tree.leaves(binary_mask)) != len(jax.tree.leaves(params)):
    raise ValueError("binary_mask must have the structure of params (one boolean array per leaf); got "
                     f"{jax.tree.structure(binary_mask)} for params {jax.tree.structure(params)}.")
  for m, p in zip(jax.tree.leaves(binary_mask), jax.tree.leaves(params)):
    if np.shape(m) != np.shape(p):
      raise ValueError(f"binary_mask has a leaf of shape {np.shape(m)} where params has shape {np.shape(p)}; "
                       "allowed: the same shape as each parameter.")


def gradual_magnitude_pruning(
    target_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    scope: str = "global",
    mask: Mask = None,
) -> optax.GradientTransformation:
  """Gradual magnitude pruning (Zhu & Gupta 2017) as a transform placed after the optimizer.

  On steps t in [begin_step, end_step] with (t - begin_step) % frequency == 0 (and at
  end_step), the mask is recomputed to remove the s_t (cubic schedule,
  `cubic_sparsity`) smallest-magnitude regularised weights of the proposal params + u,
  among the weights still unmasked (pruned weights do not regrow); between updates it
  is held. params_new = (params + u) * mask every step.

  Args:
    target_sparsity: final fraction of regularised weights removed, in [0, 1).
    begin_step, end_step: the pruning window (0 <= begin_step <= end_step).
    frequency: steps between mask updates (>= 1).
    initial_sparsity: sparsity at begin_step.
    scope: "global" (one threshold over all regularised leaves) or "layer".
    mask: which leaves are pruned (default: kernels, ndim >= 2); a pytree of bools,
      a callable, or a mask name.

  Returns:
    An optax transform with state `MaskState` (the current mask is `state.mask`).
  """
  _checks.check_range("target_sparsity", target_sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _checks.check_range("initial_sparsity", initial_sparsity, lower=0.0, upper=target_sparsity)
  _checks.check_int("begin_step", begin_step, 0)
  _checks.check_int("end_step", end_step, begin_step)
  _checks.check_int("frequency", frequency, 1)
  _check_scope(scope)

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    chosen = _selected(mask, params)
    if not any(chosen):
      raise ValueError("gradual_magnitude_pruning: the mask selects no parameter leaf to prune.")
    return MaskState(jnp.zeros([], jnp.int32),
                     jax.tree.unflatten(jax.tree.structure(params), [jnp.ones(jnp.shape(l), bool) for l in leaves]))

  def new_mask(proposal_leaves, mask_leaves_now, chosen, sparsity):
    picked = [jnp.where(m, p, jnp.zeros_like(p)) for p, m, c in zip(proposal_leaves, mask_leaves_now, chosen) if c]
    if scope == "global":
      total = sum(p.size for p in picked)
      keep = jnp.round((1.0 - sparsity) * total).astype(jnp.int32)
      kept = _keep_largest(picked, keep)
    else:
      kept = [_keep_largest([p], jnp.round((1.0 - sparsity) * p.size).astype(jnp.int32))[0] for p in picked]
    kept = iter(kept)
    return [(next(kept) & m) if c else m for m, c in zip(mask_leaves_now, chosen)]

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "gradual_magnitude_pruning")
    leaves_p, treedef = jax.tree.flatten(params)
    leaves_u = treedef.flatten_up_to(updates)
    leaves_m = treedef.flatten_up_to(state.mask)
    chosen = _selected(mask, params)
    proposal = [p + u for p, u in zip(leaves_p, leaves_u)]
    t = state.count
    in_window = (t >= begin_step) & (t <= end_step)
    due = in_window & (((t - begin_step) % frequency == 0) | (t == end_step))
    sparsity = cubic_sparsity(t, target_sparsity, begin_step, end_step, initial_sparsity)
    leaves_m = lax.cond(due, lambda: new_mask(proposal, leaves_m, chosen, sparsity), lambda: list(leaves_m))
    binary_mask = jax.tree.unflatten(treedef, leaves_m)
    return (_masked_updates(updates, params, binary_mask),
            MaskState(optax.safe_increment(state.count), binary_mask))

  return optax.GradientTransformation(init_fn, update_fn)


def schedule_total_steps(epochs: int, num_examples: int, batch_size: int) -> int:
  """Optimizer steps of `train.fit` for a run: epochs x ceil(num_examples / batch_size) (each an int >= 1)."""
  for name, value in (("epochs", epochs), ("num_examples", num_examples), ("batch_size", batch_size)):
    _checks.check_int(name, value, 1)
  return int(epochs) * -(-int(num_examples) // int(batch_size))



class TwoPhaseState(NamedTuple):
  """State of `sparsify_then_retrain`: step count, both inner states, and the frozen support."""
  count: chex.Array
  sparsify_state: Any
  retrain_state: Any
  mask: Any


def sparsify_then_retrain(sparsify: optax.GradientTransformation, retrain: optax.GradientTransformation,
                          switch_step: int, mask: Mask = None,
                          support_fn: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
  """Find a support with a penalty, then retrain the surviving weights without shrinkage.

  Steps t < switch_step use `sparsify` (e.g. `optax.chain(optax.sgd(lr), nnz_controller(...))`
  or any proximal chain). At t = switch_step the support is frozen: the nonzero
  regularised weights (`support_mask`; leaves outside `mask` stay free). Steps
  t >= switch_step use `retrain` (e.g. the same optimizer without the penalty) with
  params_new = (params + u) * support, so the zero set never changes again while the
  kept weights lose the shrinkage bias the penalty put on them (a "debiasing" phase).

  Args:
    sparsify: the transform of the first phase (must leave exact zeros).
    retrain: the transform of the second phase (typically the plain optimizer).
    switch_step: the first step of the second phase (>= 0).
    mask: which leaves have their support frozen (default: kernels, ndim >= 2).
    support_fn: params -> binary mask computed at the switch (jit-traceable); default
      `support_mask(params, mask)`. One-shot magnitude pruning with fine-tuning is
      `sparsify_then_retrain(opt, opt, switch, support_fn=lambda p:
      one_shot_magnitude_mask(p, sparsity))`.
  """
  if support_fn is None:
    support_fn = lambda params: support_mask(params, mask)  # noqa: E731
  _checks.check_int("switch_step", switch_step, 0)

  def init_fn(params):
    return TwoPhaseState(jnp.zeros([], jnp.int32), sparsify.init(params), retrain.init(params),
                         jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "sparsify_then_retrain")

    def first():
      new_updates, sparsify_state = sparsify.update(updates, state.sparsify_state, params)
      new_updates = jax.tree.map(lambda n, u: n.astype(jnp.result_type(u)), new_updates, updates)
      return new_updates, sparsify_state, state.retrain_state, state.mask

    def second():
      support = jax.lax.cond(state.count == switch_step, lambda: support_fn(params), lambda: state.mask)
      new_updates, retrain_state = retrain.update(updates, state.retrain_state, params)
      new_updates = jax.tree.map(lambda n, u: n.astype(jnp.result_type(u)), new_updates, updates)
      return _masked_updates(new_updates, params, support), state.sparsify_state, retrain_state, support

    new_updates, sparsify_state, retrain_state, support = jax.lax.cond(state.count < switch_step, first, second)
    return new_updates, TwoPhaseState(optax.safe_increment(state.count), sparsify_state, retrain_state, support)

  return optax.GradientTransformation(init_fn, update_fn)
