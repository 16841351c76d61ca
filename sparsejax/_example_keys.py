"""Dropout keys indexed by the global example: a run is the same on any number of devices.

A data-parallel step gives each replica a shard of the global batch. With one key per
replica (a key folded with the device index), the dropout mask of an example depends
on which device holds it, so a run with dropout changes with the device count and the
parallelism, and a resume on another device count continues a different run.

`example_indexed_key(key, first_example, num_examples)` returns a typed PRNG key of a
small PRNG implementation whose random bits at element (i, j) of a requested shape
(i: the leading, batch axis; j: the flat index within the example) are

  threefry2x32(key, (first_example * m + i, j)),    m = shape[0] // num_examples,

when shape[0] is a multiple of `num_examples` (a batch-leading activation, or one with
the batch folded into its leading axis, e.g. (batch * tokens, features)), and
threefry2x32(key, (i, j)) otherwise (e.g. a mask broadcast over the batch, shape[0] = 1,
which is the same on every replica anyway). A replica holding examples
[first, first + n) therefore draws exactly rows [first, first + n) of the mask that one
device draws for the whole batch: flax's `nn.Dropout` and `nnx.Dropout`, and any layer
that calls `jax.random.bernoulli` / `uniform` / `normal` on a batch-leading shape, give
the same per-example randomness under pmap, shard_map and one device. `split` and
`fold_in` act on the threefry key and keep the example offset, so module-path folding
(flax's `make_rng`, NNX's stream counters) keeps the property.

Both counter words are 32-bit: up to 2^32 rows (examples x m) and 2^32 elements per
row. The bits are a different stream from `jax.random.PRNGKey`'s threefry (same
generator, different counters); a given run is reproducible and independent of the
device layout, but not equal to a run that used per-device keys.
"""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
from jax import lax

__all__ = ["example_indexed_key"]


def _seed(seed: jax.Array) -> jax.Array:
  return jnp.concatenate([jax.random.PRNGKey(seed), jnp.zeros(2, jnp.uint32)])


def _split(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  count = math.prod(shape)
  keys = jax.random.split(key[:2], count)
  offsets = jnp.broadcast_to(key[2:], (count, 2))
  return jnp.concatenate([keys, offsets], axis=1).reshape(*shape, 4)


def _fold_in(key: jax.Array, data: jax.Array) -> jax.Array:
  return jnp.concatenate([jax.random.fold_in(key[:2], data), key[2:]])


def _random_bits(key: jax.Array, bit_width: int, shape: tuple[int, ...]) -> jax.Array:
  rows = shape[0] if shape else 1
  per_row = math.prod(shape[1:]) if shape else 1
  first, examples = key[2], jnp.maximum(key[3], 1)
  aligned = (key[3] > 0) & (jnp.uint32(rows) % examples == 0)
  row_offset = jnp.where(aligned, first * (jnp.uint32(rows) // examples), jnp.uint32(0))
  row = lax.broadcasted_iota(jnp.uint32, (rows, per_row), 0) + row_offset
  col = lax.broadcasted_iota(jnp.uint32, (rows, per_row), 1)
  high, low = jex_random.threefry2x32_p.bind(key[0], key[1], row, col)
  if bit_width == 64:
    bits = (high.astype(jnp.uint64) << 32) | low.astype(jnp.uint64)
  elif bit_width == 32:
    bits = high
  else:
    bits = (high >> (32 - bit_width)).astype(jnp.dtype(f"uint{bit_width}"))
  return bits.reshape(shape)


EXAMPLE_INDEXED = jex_random.define_prng_impl(key_shape=(4,), seed=_seed, split=_split, random_bits=_random_bits,
                                              fold_in=_fold_in, name="example_indexed", tag="ex")


def example_indexed_key(key: jax.Array, first_example: jax.Array | int, num_examples: int) -> jax.Array:
  """A typed key whose draws on batch-leading shapes are indexed by the global example (see module docstring).

  Args:
    key: a raw threefry key (uint32[2], as `jax.random.PRNGKey` makes) or a typed threefry key.
    first_example: global index of this replica's first example (e.g. `axis_index * num_examples`).
    num_examples: examples in this replica's batch (its leading dimension).
  """
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  words = jnp.stack([jnp.asarray(first_example, jnp.uint32), jnp.asarray(num_examples, jnp.uint32)])
  return jax.random.wrap_key_data(jnp.concatenate([key.astype(jnp.uint32), words]), impl=EXAMPLE_INDEXED)
