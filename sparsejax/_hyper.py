"""Hyperparameters of the optax transforms: schedules, and what `optax.inject_hyperparams` passes.

Private helpers shared by `transforms`, `rvsm`, `selection` and `optimizers`.
"""

from __future__ import annotations

from typing import Any

import chex
import jax.numpy as jnp
from optax import ScalarOrSchedule  # noqa: F401  (the type alias optax uses: float, array or schedule)

from sparsejax import _checks


def evaluate(value: Any, count: chex.Array) -> Any:
  """`value(count)` for a schedule, `value` otherwise."""
  return value(count) if callable(value) else value


def check_nonnegative(name: str, value: Any) -> None:
  """Range check of a scalar-or-schedule hyperparameter, 0 <= value < inf (schedules are checked when they run)."""
  if not callable(value):
    _checks.check_range(name, value, lower=0.0, upper=float("inf"), upper_inclusive=False)


def check_positive(name: str, value: Any) -> None:
  """Range check of a scalar-or-schedule hyperparameter, 0 < value < inf."""
  if not callable(value):
    _checks.check_range(name, value, lower=0.0, lower_inclusive=False, upper=float("inf"), upper_inclusive=False)


def shape_kwargs(kwargs: dict[str, Any], name: str = "prox_kwargs") -> dict[str, Any]:
  """The penalty shape parameters given as `**kwargs`, also when `optax.inject_hyperparams` passed them.

  `inject_hyperparams` binds a factory's `**prox_kwargs` as one argument and calls the
  factory again with `prox_kwargs={...}`; no penalty has a shape parameter called
  `prox_kwargs`, so that form is unwrapped here.
  """
  if set(kwargs) == {name} and isinstance(kwargs[name], dict):
    return dict(kwargs[name])
  return dict(kwargs)


def steps_of_run(fraction: float, total_steps: Any, rounded: bool = False) -> Any:
  """int(fraction * T) (or round), a Python int, or a traced int32 when T is traced (optax.inject_hyperparams)."""
  if _checks.is_concrete(total_steps):
    exact = fraction * int(total_steps)
    return int(round(exact)) if rounded else int(exact)
  traced = fraction * jnp.asarray(total_steps, jnp.float32)
  return (jnp.round(traced) if rounded else jnp.floor(traced)).astype(jnp.int32)
