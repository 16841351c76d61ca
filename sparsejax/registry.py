"""The one registry of sparsity penalties.

Each penalty is one `Penalty` record: its value f(x; shape), its exact proximal
map prox(x, tau; shape) = argmin_z 1/2 ||z - x||^2 + tau f(z; shape), its zero
threshold (if it has a scalar one), its shape parameters with their allowed
ranges, whether it acts on groups, and example shape parameters covering its
regimes. Everything that takes a penalty by name reads this registry:
`prox.get`/`prox.PROX`, `penalties.get`/`penalties.PENALTIES`, the optax
transforms, RVSM, the NNZ controller, strength selection, the benchmarks and the
generic tests (`tests/test_registry.py` checks every registered penalty, built-in
or not, for global optimality against brute-force minimisation, its threshold,
pytrees, dtypes, non-finite inputs and its use in a training step).

A user-defined penalty is registered the same way the built-in ones are:

  >>> import jax.numpy as jnp
  >>> from sparsejax import registry
  >>> def berhu_value(x, c=1.0):
  ...   a = jnp.abs(x)
  ...   return jnp.sum(jnp.where(a <= c, a, (a * a + c * c) / (2 * c)))
  >>> def berhu_prox(x, tau, c=1.0):
  ...   a = jnp.abs(x)
  ...   small = jnp.sign(x) * jnp.maximum(a - tau, 0.0)
  ...   return jnp.where(a <= c + tau, small, x / (1.0 + tau / c))
  >>> _ = registry.register(registry.Penalty(
  ...     name="doc_berhu", value=berhu_value, prox=berhu_prox, threshold=lambda tau, c=1.0: tau,
  ...     shape_params=(registry.ShapeParam("c", 1.0, lower=0.0, lower_inclusive=False),),
  ...     examples=({"c": 0.5},)), replace=True)
  >>> from sparsejax import prox
  >>> [round(float(z), 6) for z in prox.get("doc_berhu")(jnp.array([0.2, -0.9, 3.0]), 0.5, c=1.0)]
  [0.0, -0.4, 2.0]
  >>> registry.unregister("doc_berhu")

Built-in penalties are registered when `sparsejax.prox` is imported (importing
any part of `sparsejax` does so).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sparsejax import _checks

__all__ = ["ShapeParam", "Penalty", "register", "unregister", "get", "names", "find", "resolve_prox",
           "threshold_of", "check_shape", "RegistryView"]


@dataclasses.dataclass(frozen=True)
class ShapeParam:
  """A shape parameter of a penalty and its allowed range.

  Attributes:
    name: the keyword name (e.g. "a" for TL1).
    default: the default value of the keyword.
    lower: lower bound, or None.
    upper: upper bound, or None.
    lower_inclusive: whether the value may equal `lower`.
    upper_inclusive: whether the value may equal `upper`.
    static: True for structural parameters (group `axis`, `scale_by_group_size`) that
      are Python values, not numbers to range-check or to broadcast.
    relative: for a parameter that is a magnitude compared with ``|w|`` (TL1's a,
      log-sum's eps, MCP's and SCAD's lam, capped-l1's theta), its default in units of
      the weights' scale, the mean kept magnitude of `controller.nnz_controller` with
      ``relative_shape``; None for a dimensionless parameter.
  """
  name: str
  default: Any
  lower: float | None = None
  upper: float | None = None
  lower_inclusive: bool = True
  upper_inclusive: bool = True
  static: bool = False
  relative: float | None = None

  def check(self, value: Any) -> None:
    """Raises ValueError naming the parameter and its range if a concrete `value` is outside it."""
    if not self.static:
      _checks.check_range(self.name, value, lower=self.lower, upper=self.upper,
                          lower_inclusive=self.lower_inclusive, upper_inclusive=self.upper_inclusive)


@dataclasses.dataclass(frozen=True)
class Penalty:
  """One penalty: value, exact prox, zero threshold, shape parameters, examples.

  Attributes:
    name: the registry key (a Python identifier), e.g. "tl1".
    value: `value(x, **shape)`, the scalar f(x) summed over every element (or group)
      of every leaf of the pytree `x`.
    prox: `prox(x, tau, **shape)`, the global minimiser of
      1/2 ||z - x||^2 + tau f(z) for each leaf of `x` (exact zeros).
    threshold: `threshold(tau, **shape)`, the largest ``|v|`` that `prox` maps to 0
      (elementwise penalties; for group penalties the bound on the group norm or
      on each entry, see the function), or None when there is no scalar one.
    grouped: True if f couples the entries of a group (reduced over `axis`).
    shape_params: the keyword parameters of `value`, `prox` and `threshold`.
    examples: shape parameters covering the penalty's regimes; every generic test
      runs on each.
    reference: the paper the penalty or its prox comes from (authors, year).
  """
  name: str
  value: Callable[..., Any]
  prox: Callable[..., Any]
  threshold: Callable[..., Any] | None = None
  grouped: bool = False
  shape_params: tuple[ShapeParam, ...] = ()
  examples: tuple[dict[str, Any], ...] = ({},)
  reference: str = ""

  def check_shape(self, shape: Mapping[str, Any]) -> None:
    """Raises ValueError for an unknown shape parameter or a value out of its range."""
    known = {p.name: p for p in self.shape_params}
    unknown = sorted(set(shape) - set(known))
    if unknown:
      raise ValueError(f"unknown shape parameter(s) {unknown} for penalty {self.name!r}; "
                       f"allowed: {sorted(known) or 'none'}.")
    for key, value in shape.items():
      known[key].check(value)

  @property
  def defaults(self) -> dict[str, Any]:
    """The default value of every shape parameter."""
    return {p.name: p.default for p in self.shape_params}


_REGISTRY: dict[str, Penalty] = {}


def register(penalty: Penalty, *, replace: bool = False) -> Penalty:
  """Adds `penalty` to the registry, so every name-taking API and generic test knows it.

  Args:
    penalty: the record.
    replace: allow replacing a penalty already registered under the same name.

  Returns:
    `penalty`.

  Raises:
    ValueError: a name that is not an identifier or is taken (without `replace`),
      non-callable parts, or examples using unknown shape parameters.
  """
  if not isinstance(penalty, Penalty):
    raise ValueError(f"register takes a sparsejax.registry.Penalty; got {type(penalty).__name__}.")
  if not isinstance(penalty.name, str) or not penalty.name.isidentifier():
    raise ValueError(f"penalty name must be a Python identifier; got {penalty.name!r}.")
  if penalty.name in _REGISTRY and not replace:
    raise ValueError(f"a penalty named {penalty.name!r} is already registered; pass replace=True to replace it.")
  for part in ("value", "prox"):
    _checks.check_callable(f"Penalty.{part}", getattr(penalty, part), "callable")
  _checks.check_callable("Penalty.threshold", penalty.threshold, "callable", optional=True)
  if not penalty.examples:
    raise ValueError("Penalty.examples must hold at least one dict of shape parameters (it may be {}).")
  for example in penalty.examples:
    penalty.check_shape(example)
  _REGISTRY[penalty.name] = penalty
  return penalty


def unregister(name: str) -> None:
  """Removes a penalty (e.g. one a test registered)."""
  get(name)
  del _REGISTRY[name]


def get(name: str) -> Penalty:
  """The record called `name`; ValueError listing the known names otherwise."""
  try:
    return _REGISTRY[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown penalty {name!r}; known penalties: {sorted(_REGISTRY)}.") from None


def names(grouped: bool | None = None) -> tuple[str, ...]:
  """Registered names in registration order (only grouped, or only elementwise, if asked)."""
  return tuple(n for n, p in _REGISTRY.items() if grouped is None or p.grouped == grouped)


def find(prox_fn: Any) -> Penalty | None:
  """The record whose `prox` is `prox_fn` (None if it is not a registered prox)."""
  for penalty in _REGISTRY.values():
    if penalty.prox is prox_fn:
      return penalty
  return None


def check_shape(name: str, **shape: Any) -> None:
  """Validates shape parameters of the registered penalty `name` (the built-in maps call this)."""
  get(name).check_shape(shape)


def resolve_prox(prox_fn: Callable[..., Any] | str, shape: Mapping[str, Any],
                 argument: str = "prox_fn") -> tuple[Callable[..., Any], Penalty | None]:
  """The prox `x, tau -> prox(x, tau, **shape)` for a penalty name or a prox callable.

  Registered penalties have their shape parameters validated here (at construction
  of a transform, not at its first step).

  Returns:
    (the prox with `shape` bound, the penalty's record or None for an unregistered callable).

  Raises:
    ValueError: an unknown name, a non-callable, or invalid shape parameters.
  """
  if isinstance(prox_fn, str):
    penalty: Penalty | None = get(prox_fn)
  elif callable(prox_fn):
    penalty = find(prox_fn)
  else:
    raise _checks.ArgumentTypeError(f"{argument} must be a callable prox(x, tau, **shape) or a penalty name "
                     f"(one of {sorted(_REGISTRY)}); got {prox_fn!r}.")
  if penalty is not None:
    penalty.check_shape(shape)
    fn = penalty.prox
  else:
    fn = prox_fn  # type: ignore[assignment]
  return (functools.partial(fn, **shape) if shape else fn), penalty


def threshold_of(prox_fn: Callable[..., Any] | str) -> Callable[..., Any] | None:
  """The zero threshold of a penalty name or prox (a registered record's, or a `.threshold` attribute)."""
  if isinstance(prox_fn, str):
    return get(prox_fn).threshold
  penalty = find(prox_fn)
  if penalty is not None:
    return penalty.threshold
  return getattr(prox_fn, "threshold", None)


class RegistryView(Mapping):
  """A live read-only mapping name -> one part of each record (`prox.PROX`, `penalties.PENALTIES`)."""

  def __init__(self, part: str):
    self._part = part

  def __getitem__(self, name: str) -> Callable[..., Any]:
    if name not in _REGISTRY:
      raise KeyError(name)
    return getattr(_REGISTRY[name], self._part)

  def __iter__(self) -> Iterator[str]:
    return iter(list(_REGISTRY))

  def __len__(self) -> int:
    return len(_REGISTRY)

  def __repr__(self) -> str:
    return f"RegistryView({self._part!r}: {sorted(_REGISTRY)})"
