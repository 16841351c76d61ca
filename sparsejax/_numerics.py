"""Numerical helpers shared by strength selection and the NNZ controller (private module)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sparsejax import registry as _registry


def threshold_or_raise(prox_fn: Callable[..., Any] | str, remedy: str) -> Callable[..., Any]:
  """The zero threshold of a penalty name or prox; ValueError (ending with `remedy`) if it has none."""
  threshold = _registry.threshold_of(prox_fn)
  if threshold is None:
    name = prox_fn if isinstance(prox_fn, str) else getattr(prox_fn, "__name__", prox_fn)
    raise ValueError(f"{name!r} has no scalar zero threshold; {remedy}.")
  return threshold


def bisect_increasing(fn: Callable[[Any], Any], target: Any, lo: Any, hi: Any, iterations: int, xp: Any = jnp,
                      upper: bool = False):
  """The midpoint of the final bracket [lo, hi] of fn(x) = target, fn increasing (elementwise).

  With `upper`, the bracket's upper end instead, where fn(x) >= target holds (when it
  held at the initial `hi`). With `xp=np` on the host (a Python loop, float64
  bounds), with `xp=jnp` as a `lax.fori_loop` (jit-friendly).
  """
  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    below = fn(mid) < target
    return xp.where(below, mid, lo), xp.where(below, hi, mid)

  bounds = (lo, hi)
  if xp is np:
    for i in range(iterations):
      bounds = body(i, bounds)
  else:
    bounds = jax.lax.fori_loop(0, iterations, body, bounds)
  return bounds[1] if upper else 0.5 * (bounds[0] + bounds[1])
