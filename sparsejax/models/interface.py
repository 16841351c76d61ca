"""How the trainers and the metrics call a model: linen modules, and NNX modules made functional.

`mode_kwargs(model, train)` tells a model's `__call__` train vs eval mode. NNX modules
are put behind linen's functional `init`/`apply` interface:

`FunctionalNNX(module)` splits an NNX module once into its graph definition, its
parameters (`nnx.Param`), its RNG state and every other variable (BatchNorm
statistics, ...). `init` returns `{"params": ..., "nnx_state": ...}` as plain nested
dicts of arrays (checkpointable, mappable over devices), and `apply(variables, x,
train=..., rngs=..., mutable=...)` merges them back into a module, sets train or
eval mode, reseeds the module's "dropout" stream from `rngs["dropout"]` (so dropout
keys follow the step and the device, as in the linen path) and calls it; with
`mutable`, the updated non-parameter variables are returned too. `to_module`
rebuilds an NNX module from trained variables.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

__all__ = ["FunctionalNNX", "is_nnx", "functional", "mode_kwargs"]


def mode_kwargs(model: Any, train: bool) -> dict:
  """How to tell `model.__call__` train vs eval: `train=`, `deterministic=` (flax's dropout
  convention, the negation), or nothing when its signature takes neither."""
  try:
    parameters = inspect.signature(type(model).__call__).parameters
  except (TypeError, ValueError):
    return {"train": train}
  if "train" in parameters:
    return {"train": train}
  if "deterministic" in parameters:
    return {"deterministic": not train}
  if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    return {"train": train}
  return {}


def is_nnx(model: Any) -> bool:
  """Whether `model` is a flax NNX module (else a linen module is assumed)."""
  return isinstance(model, nnx.Module)


class FunctionalNNX:
  """A functional view of an NNX module (see module docstring)."""

  def __init__(self, module: nnx.Module):
    graphdef, params, rng_state, other = nnx.split(module, nnx.Param, nnx.RngState, ...)
    self._graphdef, self._rng_state = graphdef, rng_state
    self._param_def, self._other_def = jax.tree.structure(params), jax.tree.structure(other)
    self._params, self._other = nnx.to_pure_dict(params), nnx.to_pure_dict(other)
    self._has_rngs = bool(jax.tree.leaves(rng_state))

  def __call__(self, x: Any, train: bool = False) -> Any:  # the signature `train.mode_kwargs` reads
    raise TypeError("call apply(variables, x, train=...) on a FunctionalNNX, or the NNX module itself.")

  def init(self, rng: Any = None, x: Any = None) -> dict:
    """The module's variables as {"params": ..., "nnx_state": ...} (linen-style; `rng` and `x` are ignored)."""
    del rng, x
    return {"params": self._params, "nnx_state": self._other}

  def to_module(self, variables: dict) -> nnx.Module:
    """The NNX module holding `variables` (e.g. the trained ones)."""
    params = jax.tree.unflatten(self._param_def, jax.tree.leaves(variables["params"]))
    other = jax.tree.unflatten(self._other_def, jax.tree.leaves(variables.get("nnx_state", self._other)))
    rng_state = jax.tree.map(lambda a: a, self._rng_state)  # fresh variables in the current trace
    return nnx.merge(self._graphdef, params, rng_state, other)

  def apply(self, variables: dict, x: Any, train: bool = False, rngs: dict | None = None,
            mutable: Any = False) -> Any:
    """The module's output on `x` with `variables`, linen-style.

    Args:
      variables: {"params": ..., "nnx_state": ...} (as `init` returns).
      x: the input batch.
      train: run in training mode (dropout, batch statistics).
      rngs: {"dropout": key} for dropout in training mode.
      mutable: as linen: truthy returns (outputs, {"nnx_state": updated state}).
    """
    module = self.to_module(variables)
    if train:
      module.train()
    else:
      module.eval()
    if train and rngs and "dropout" in rngs and self._has_rngs:
      _reseed_dropout(module, rngs["dropout"])
    out = module(x)
    if not mutable:
      return out
    _, _, _, other = nnx.split(module, nnx.Param, nnx.RngState, ...)
    return out, {"nnx_state": nnx.to_pure_dict(other)}


def _reseed_dropout(module: nnx.Module, key: jax.Array) -> None:
  """Sets every "dropout" and "default" RNG stream of `module` to `key` (split to the stream's shape).

  `nnx.Dropout` draws from the "default" stream when the module was built with
  `nnx.Rngs(seed)` alone, so both are reseeded (a stream reseeded only under "dropout"
  would leave such a model with one fixed mask for every step). Unlike `nnx.reseed`,
  the key's PRNG implementation is kept (the trainer's example-indexed keys).
  """
  for _, stream in nnx.iter_graph(module):
    if isinstance(stream, nnx.RngStream) and stream.key.tag in ("dropout", "default"):
      shape = stream.key.shape
      _set(stream.key, key if shape == () else jax.random.split(key, shape))
      _set(stream.count, jnp.zeros(shape, jnp.uint32))


def _set(variable: Any, value: Any) -> None:
  """`variable.set_value(value)` (flax >= 0.12.x), or the `.value` setter of flax 0.12.0."""
  if hasattr(type(variable), "set_value"):
    variable.set_value(value)
  else:
    variable.value = value


def functional(model: Any) -> Any:
  """`FunctionalNNX(model)` for an NNX module, the model itself otherwise (linen)."""
  return FunctionalNNX(model) if is_nnx(model) else model
