"""Exact selection by magnitude in linear time: the k-th largest ``|w|`` and blocked counts.

The numerics that the pruning baselines (`sparsejax.pruning`) and the NNZ controllers
(`sparsejax.controller`) share. The k-th largest ``|w|`` is found by a search over the
bit patterns of ``|w|`` (for non-negative IEEE floats the integer order of the bits is
the numeric order): counting passes only, 8-20 of them by guarded interpolation up to
2^20 weights, 31 (float32) or 63 (float64) by bisection above, with no sort and no
`top_k`. `blocked_sum` counts or sums a function of the weights block by block, so
XLA:CPU does not store a weight-sized predicate first.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import _checks

__all__ = ["kth_largest_magnitude", "blocked_sum"]


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
