"""Batches of one epoch (deterministic in seed and epoch), padding, pmap sharding, finiteness checks."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

__all__ = ["epoch_batches", "pad_batch", "shard", "check_finite", "iterate"]



def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int,
                  shuffle: bool = True) -> list[np.ndarray]:
  """Index arrays of one epoch; the last batch keeps the remainder (no data dropped).

  The order depends only on (seed, epoch), so a resumed run sees the same batches.
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0; got {batch_size}.")
  order = (np.random.default_rng([seed, epoch]).permutation(num_examples) if shuffle
           else np.arange(num_examples))
  return [order[i:i + batch_size] for i in range(0, num_examples, batch_size)]


def pad_batch(x: np.ndarray, y: np.ndarray, batch_size: int):
  """Pads a (possibly short) batch to `batch_size`; returns (x, y, weight) with weight 0 on padding."""
  n = len(x)
  if n > batch_size:
    raise ValueError(f"batch of {n} examples exceeds batch_size={batch_size}.")
  weight = np.zeros(batch_size, np.float32)
  weight[:n] = 1.0
  if n == batch_size:
    return x, y, weight
  pad = batch_size - n
  x = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)])
  y = np.concatenate([y, np.zeros((pad, *y.shape[1:]), y.dtype)])
  return x, y, weight


def shard(tree: Any, num_devices: int) -> Any:
  """Reshapes every leaf's leading axis B into (num_devices, B // num_devices) for pmap."""
  def split(a):
    if a.shape[0] % num_devices:
      raise ValueError(f"batch of {a.shape[0]} is not divisible by {num_devices} devices.")
    return a.reshape(num_devices, a.shape[0] // num_devices, *a.shape[1:])
  return jax.tree.map(split, tree)


def check_finite(x: np.ndarray, name: str = "x", batch_size: int | None = None) -> None:
  """Raises ValueError naming the first example (and its batch) holding NaN/inf."""
  finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
  if not finite.all():
    first = int(np.argmin(finite))
    where = f" (batch {first // batch_size})" if batch_size else ""
    raise ValueError(f"{name} has non-finite values: example {first}{where}, "
                     f"{int((~finite).sum())} bad examples in all.")


def iterate(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int, epoch: int,
            shuffle: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """Padded batches `(x, y, weight)` of one epoch."""
  for idx in epoch_batches(len(x), batch_size, seed, epoch, shuffle):
    yield pad_batch(x[idx], y[idx], batch_size)


