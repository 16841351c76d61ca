"""The NNZ controller: a proximal step whose strength keeps a target number of nonzero weights.

`nnz_controller` is an optax transform placed after any optimizer. Every
`interval` steps it finds lambda*, the strength at which exactly the target count
of regularised weights survives this step's prox (from the (target+1)-th largest
``|w + u|``, found exactly by a search on the float bit patterns, and the penalty's
zero threshold T inverted: T(lr lambda*) = that magnitude), and moves log lambda
toward log lambda* at `rate`. It cannot wind up: lambda never overshoots the
quantile that keeps the target, so no unit is killed for good. The algorithm,
its cost and the accuracy trade-offs are written up in `docs/pruning_and_controller.md`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import _checks, _hyper, _numerics, magnitudes, masking, pruning, transforms
from sparsejax import registry as _registry

__all__ = ["ControllerState", "ControllerSchedule", "nnz_controller", "nnz_controller_for", "schedule_defaults"]




class ControllerState(NamedTuple):
  """The controller's state.

  Attributes:
    count: optimizer steps taken.
    log_strength: log(lambda) of the last step.
    nnz: nonzero regularised weights after the last step that updated lambda (every
      step at `interval` 1 and in the exact phase). It is counted only on those steps,
      so the others cost no counting pass; in the refit phase, where lambda is not
      updated, the support is frozen and this stays its size.
    scale: the weights' scale that ``relative_shape`` multiplies: the mean kept
      magnitude, the mean of the `keep` largest ``|w + u|`` at the last update (a 0
      keeps the previous value). It starts at the mean of the target_nnz largest
      ``|w|`` of the initial params (1 if that is 0) and stays there without
      ``relative_shape``.
  """
  count: chex.Array
  log_strength: chex.Array
  nnz: chex.Array
  scale: chex.Array


def _state_dtype():
  """The float dtype of log lambda: float64 when jax_enable_x64 is on, else float32."""
  return jnp.asarray(0.0).dtype


def _invert_threshold(threshold_fn, value, learning_rate, shape, iterations: int = 60):
  """The smallest log(lambda) found with threshold_fn(learning_rate * lambda) >= value (jit-friendly).

  The upper end of the bracket, so that a weight with ``|v|`` = value is zeroed (ties go
  to 0) and the step keeps exactly the weights above it.
  """
  return _numerics.bisect_increasing(lambda mid: threshold_fn(learning_rate * jnp.exp(mid), **shape), value,
                                     jnp.asarray(-60.0, _state_dtype()), jnp.asarray(20.0, _state_dtype()), iterations,
                                     upper=True)  # in the state's dtype, so exp(log_strength) is this value


# The schedule that `total_steps` switches on, as fractions of the run (measured on the
# Fashion-MNIST frontier, docs/pruning_and_controller.md): the target falls along the
# cubic ramp over [0.1, 0.5] of the run, the strength is exact at every step for the
# last 5 % (at most 200 steps) before the refit, and the last 40 % refits the support.
RAMP_FRACTIONS = (0.1, 0.5)
REFIT_FRACTION = 0.4
EXACT_FRACTION, EXACT_MAX_STEPS = 0.05, 200


def _steps(total_steps: Any, fraction: float) -> Any:
  if _checks.is_concrete(total_steps):
    return int(round(fraction * int(total_steps)))
  return jnp.round(fraction * total_steps).astype(jnp.int32)


def schedule_defaults(total_steps: Any, rate: Any = None, interval: Any = None, exact_final_steps: Any = None,
                      ramp: Any = "auto", debias_steps: Any = None) -> tuple[Any, Any, Any, Any, Any]:
  """The controller's (rate, interval, exact_final_steps, ramp, debias_steps), defaults filled in.

  Without `total_steps`: rate 0.05 and interval 1 (lambda follows lambda* slowly, every
  step), no ramp, no exact phase, no refit: the target holds from step 0. With
  `total_steps` = T: rate 1 every 10 steps, the cubic target ramp over
  [0.1 T, 0.5 T], an exact phase of min(200, 0.05 T) steps (at least 1), then a refit
  phase over the last 0.4 T steps. Values given explicitly are kept.
  """
  scheduled = total_steps is not None
  if rate is None:
    rate = 1.0 if scheduled else 0.05
  if interval is None:
    interval = 10 if scheduled else 1
  if debias_steps is None:
    debias_steps = _steps(total_steps, REFIT_FRACTION) if scheduled else 0
  if exact_final_steps is None:
    if not scheduled:
      exact_final_steps = 0
    elif _checks.is_concrete(total_steps):
      exact_final_steps = max(1, min(EXACT_MAX_STEPS, _steps(total_steps, EXACT_FRACTION)))
    else:
      exact_final_steps = jnp.clip(_steps(total_steps, EXACT_FRACTION), 1, EXACT_MAX_STEPS)
  if isinstance(ramp, str):
    if ramp != "auto":
      raise ValueError(f"ramp must be (begin_step, end_step), 'auto' or None; got {ramp!r}.")
    ramp = (_steps(total_steps, RAMP_FRACTIONS[0]), _steps(total_steps, RAMP_FRACTIONS[1])) if scheduled else None
  return rate, interval, exact_final_steps, ramp, debias_steps


@dataclasses.dataclass(frozen=True)
class ControllerSchedule:
  """When the NNZ controllers move lambda and toward which count: one frozen object.

  Every field left None takes its default from `schedule_defaults` (`resolved`): without
  `total_steps` the target holds from step 0 and lambda follows lambda* at rate 0.05 every
  step; with it, the cubic target ramp over [0.1 T, 0.5 T], lambda = lambda* every 10
  steps and every step of the exact phase, then the refit phase over the last 0.4 T.

  Attributes:
    total_steps: the run's optimizer steps (None: no schedule).
    rate: fraction of the log-distance to lambda* moved per update, in (0, 1].
    interval: steps between updates of lambda (>= 1).
    exact_final_steps: steps before the refit phase with lambda = lambda* every step.
    ramp: (begin_step, end_step) of the cubic target ramp, "auto" or None.
    debias_steps: length of the final refit phase (0: none).
  """
  total_steps: Any = None
  rate: Any = None
  interval: Any = None
  exact_final_steps: Any = None
  ramp: Any = "auto"
  debias_steps: Any = None

  def resolved(self) -> ControllerSchedule:
    """This schedule with every default filled in and every field validated (ValueError names the field)."""
    if self.total_steps is not None:
      _checks.check_int("total_steps", self.total_steps, 1)
    rate, interval, exact, window, debias = schedule_defaults(self.total_steps, self.rate, self.interval,
                                                              self.exact_final_steps, self.ramp, self.debias_steps)
    _checks.check_range("rate", rate, lower=0.0, upper=1.0, lower_inclusive=False)
    _checks.check_int("interval", interval, 1)
    _checks.check_int("exact_final_steps", exact, 0)
    _checks.check_int("debias_steps", debias, 0)
    needed = exact + debias
    total = self.total_steps
    if _checks.is_concrete(needed) and needed and (total is None or (_checks.is_concrete(total) and total < needed)):
      given = " and ".join(f"{n}={v}" for n, v in (("exact_final_steps", exact), ("debias_steps", debias)) if v)
      raise ValueError(f"{given} need{'s' if ' and ' not in given else ''} total_steps >= exact_final_steps + "
                       f"debias_steps (the run's optimizer steps, here at least {needed}); got total_steps={total!r}.")
    if window is not None and not (isinstance(window, tuple) and len(window) == 2 and
                                   not all(_checks.is_concrete(v) for v in window)):
      if len(window) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in window) \
          or not 0 <= window[0] <= window[1]:
        raise ValueError(f"ramp must be (begin_step, end_step) with 0 <= begin_step <= end_step, 'auto' or None; "
                         f"got {self.ramp!r}.")
    return dataclasses.replace(self, rate=rate, interval=interval, exact_final_steps=exact, ramp=window,
                               debias_steps=debias)

  @property
  def refits(self) -> bool:
    """Whether a (resolved) schedule may have a refit phase."""
    return not _checks.is_concrete(self.debias_steps) or self.debias_steps > 0

  def phases(self, count: Any) -> tuple[Any, Any]:
    """(exact phase, refit phase) at optimizer step `count` of a resolved schedule (traced booleans)."""
    if self.total_steps is None:
      return jnp.asarray(False), jnp.asarray(False)
    refit_from = self.total_steps - self.debias_steps
    refitting = (self.debias_steps > 0) & (count >= refit_from)
    exact = (self.exact_final_steps > 0) & (count >= refit_from - self.exact_final_steps) & ~refitting
    return exact, refitting

  def keep(self, count: Any, target: Any, total: int) -> Any:
    """The count to keep at step `count`: `target`, or on the ramp from `total` down to it."""
    if self.ramp is None:
      return jnp.asarray(target)
    remaining = 1.0 - pruning.cubic_sparsity(count, 1.0, self.ramp[0], self.ramp[1])  # 1 -> 0 along the ramp
    return jnp.round(target + (total - target) * remaining).astype(jnp.int32)


class _StepInputs(NamedTuple):
  """What one controller step sees: the learning rate, the step count and the flat leaves."""
  lr: Any
  count: Any
  leaves_p: list
  leaves_u: list
  masks: list[bool]
  treedef: Any


class _Rules(NamedTuple):
  """How a controller finds lambda* and takes its step (the rest is `_controller`).

  Attributes:
    log_strength_for: (inputs, keep, scale) -> (log lambda* keeping `keep` weights, new scale).
    step_with: (inputs, log_strength, scale) -> the new update leaves.
    check_params: params -> None (raises) at init, or None.
    nonzeros_after: (inputs, log_strength, scale) -> regularised nonzeros after the step,
      without forming it; None counts them on `step_with`'s result.
  """
  log_strength_for: Callable[..., Any]
  step_with: Callable[..., list]
  check_params: Callable[[Any], None] | None = None
  nonzeros_after: Callable[..., Any] | None = None


def _schedule_from(schedule: ControllerSchedule | None, total_steps: Any, rate: Any, interval: Any,
                   exact_final_steps: Any, ramp: Any, debias_steps: Any) -> ControllerSchedule:
  """The schedule object of a controller call: `schedule`, or one made of the keyword arguments (not both)."""
  if schedule is None:
    return ControllerSchedule(total_steps, rate, interval, exact_final_steps, ramp, debias_steps)
  if not isinstance(schedule, ControllerSchedule):
    raise TypeError(f"schedule must be a controller.ControllerSchedule; got {type(schedule).__name__}.")
  defaults = all(v is None for v in (total_steps, rate, interval, exact_final_steps, debias_steps))
  if not (defaults and isinstance(ramp, str) and ramp == "auto"):
    raise ValueError("give the schedule either as schedule=ControllerSchedule(...) or as keyword arguments "
                     "(total_steps, rate, interval, exact_final_steps, ramp, debias_steps), not both.")
  return schedule


def nnz_controller(
    prox_fn: Callable[..., Any] | str,
    target_nnz: int | None = None,
    learning_rate: Any = None,
    initial_strength: float = 1e-4,
    *,
    rate: float | None = None,
    interval: int | None = None,
    mask: Any = None,
    total_steps: int | None = None,
    exact_final_steps: int | None = None,
    ramp: tuple[int, int] | str | None = "auto",
    debias_steps: int | None = None,
    relative_shape: bool | None = None,
    sparsity: float | None = None,
    schedule: ControllerSchedule | None = None,
    **prox_kwargs: Any,
) -> optax.GradientTransformation:
  """A proximal step whose strength tracks, during one run, the lambda that keeps `target_nnz` weights.

  The target is a count (`target_nnz`) or a fraction (`sparsity`: the count is then
  ``round((1 - sparsity) n)`` for the n regularised weights, read from the params at
  `init`; see `masking.regularised_size`); give exactly one.

  Every `interval` steps, with v = params + updates over the regularised
  leaves and q the (target_nnz + 1)-th largest ``|v|``, lambda* solves
  T(lr lambda*) = q for the penalty's zero threshold T (lambda* = q/lr for l1),
  i.e. the strength at which this prox step would keep exactly `target_nnz`
  weights; then log lambda += rate (log lambda* - log lambda). rate = 1 is
  exact top-k soft thresholding every step; smaller rates give a slowly
  varying strength, so the run ends near a stationary point of L + lambda f
  with about `target_nnz` nonzeros. The current lambda is
  `exp(state.log_strength)`.

  Cost: q is found exactly by a search on the bit patterns of ``|v|``
  (`magnitudes.kth_largest_magnitude`: 8-20 counting passes, no sort or top_k), and
  only on the steps that update lambda (under `lax.cond`), together with the count
  of nonzeros in `ControllerState.nnz`; so `interval` amortises both: the step costs
  a plain proximal step, plus writing u out for the conditional, plus about
  20/interval passes over the regularised weights.

  Give `total_steps` (the run's optimizer steps): the defaults then follow a
  schedule that ends the run exactly on the target and does not leave the penalty's
  shrinkage on the survivors (`schedule_defaults`; each part can be set or switched
  off on its own):

  * ramp: the target count falls from all regularised weights to `target_nnz`
    along Zhu & Gupta's cubic schedule over steps [0.1 T, 0.5 T], so weights are
    removed at the pace of gradual magnitude pruning (a target imposed from step 0
    removes them almost at initialisation, which costs accuracy: random-mask level);
  * lambda = lambda* (rate 1) every 10 steps, and every step during an exact phase of
    min(200, 0.05 T) steps, so the support holds exactly `target_nnz` weights (up to
    ties in ``|v|``) when
  * the refit phase begins: for the last 0.4 T steps the support is frozen and the
    survivors are trained without the penalty (params_new = (params + u) where
    params != 0, else 0), in the same optimizer state. The penalty chose which
    weights survive; this removes the shrinkage it put on them (a debiasing phase,
    as in the relaxed lasso). The count cannot grow in it, so the run ends on the
    target.

  Without `total_steps` the target holds from step 0 and lambda moves toward
  lambda* at rate 0.05 every step, so the count wanders around the target with the
  mini-batch noise; there is no exact end.

  Args:
    prox_fn: a `sparsejax.prox` function with a `threshold` (l1, tl1, log_sum, mcp, ...), or its name.
    target_nnz: the wanted number of nonzero regularised weights (or give `sparsity`).
    learning_rate: the inner optimizer's step size (scalar or schedule); required.
    initial_strength: lambda at step 0 (> 0).
    rate: fraction of the log-distance to lambda* moved per update, 0 < rate <= 1
      (default 1 with `total_steps`, else 0.05).
    interval: steps between updates of lambda (default 10 with `total_steps`, else 1).
    mask: regularised leaves (default: kernels, ndim >= 2).
    total_steps: the run's number of optimizer steps; switches on the schedule above.
    exact_final_steps: this many steps before the refit phase (or before the end)
      lambda = lambda* every step (default min(200, 0.05 T), at least 1; 0 without
      `total_steps`).
    ramp: (begin_step, end_step) of the cubic target ramp, "auto" (the default:
      (0.1 T, 0.5 T) with `total_steps`, none without) or None (the target holds from
      step 0). Use rate = 1 to follow a ramp exactly at every update.
    debias_steps: length of the final refit phase (default 0.4 T with `total_steps`,
      else 0; 0 switches it off).
    relative_shape: whether the penalty's magnitude parameters (TL1's a, log-sum's
      eps, MCP's and SCAD's lam, capped-l1's theta: those with a
      `registry.ShapeParam.relative` default) are multiples of
      `ControllerState.scale`, the mean magnitude of the kept weights at the last
      update, instead of constants. An omitted one then takes its relative default:
      TL1 a = 0.1 s, log-sum eps = 0.03 s, MCP lam = 0.2 s, SCAD lam = 0.1 s,
      capped-l1 theta = 0.3 s. The penalty has the same shape at every scale of the
      weights and every point of the ramp, with no tuning to the model (the step on
      c w, c u is c times the step on w, u). None (the default) means True when
      the penalty has a magnitude parameter and none is given in `prox_kwargs`, so
      ``nnz_controller("tl1", ...)`` follows the weights and
      ``nnz_controller("tl1", ..., a=0.02)`` keeps a = 0.02. True for a penalty with
      no magnitude parameter (l1, l0, l_half, ...; scale-free already) is an error.
    sparsity: the wanted fraction of zero regularised weights, 0 < sparsity < 1 (or
      give `target_nnz`).
    schedule: the schedule as one `ControllerSchedule` instead of the keyword
      arguments total_steps, rate, interval, exact_final_steps, ramp, debias_steps.
    **prox_kwargs: penalty shape parameters (e.g. a=0.02). Non-convex penalties
      select best when their shape sits at the scale of the surviving weights
      (e.g. tl1 a = 0.02, log_sum eps = 0.01 for an MLP whose kept weights are
      0.05-0.3, which the relative shape finds by itself): with a constant a = 1
      or eps = 1 they shrink like 2 l1 or l1 there.
  """
  prox_kwargs = _hyper.shape_kwargs(prox_kwargs)
  threshold = _numerics.threshold_or_raise(prox_fn, "the controller needs one to invert")
  fn, record = _registry.resolve_prox(prox_fn, prox_kwargs)
  if record is not None and record.grouped:
    raise ValueError(f"nnz_controller inverts an elementwise zero threshold; {record.name!r} zeroes whole groups: "
                     f"use controller.nnz_controller_for({record.name!r}, ...) (or optimizers.*(penalty="
                     f"{record.name!r}, sparsity=...), which picks it).")
  if relative_shape is None:  # an omitted magnitude parameter follows the weights
    magnitude_params = _magnitude_params(record)
    relative_shape = bool(magnitude_params) and not any(p.name in prox_kwargs for p in magnitude_params)
  elif not isinstance(relative_shape, (bool, np.bool_)):
    raise ValueError(f"relative_shape must be True, False or None (the default: True when the penalty has a "
                     f"magnitude parameter and none is given); got {relative_shape!r}.")
  relative = _relative_shape(prox_fn, record, prox_kwargs) if relative_shape else {}
  if relative and record is not None:
    fn = record.prox  # the magnitude parameters are bound at each step

  def shape_at(scale):
    return {**prox_kwargs, **{name: value * scale for name, value in relative.items()}}

  def log_strength_for(inputs: _StepInputs, keep, scale):
    # The proposal p + u as (p, u) pairs: the selection forms the sums one block at a
    # time inside each count, so the branch stores nothing weight-sized for them.
    proposal: list[Any] = [(p, u) for p, u, m in zip(inputs.leaves_p, inputs.leaves_u, inputs.masks) if m]
    quantile = magnitudes.kth_largest_magnitude(proposal, keep + 1)
    if relative:  # the mean kept magnitude: the cut itself falls to the size of u once the support is set
      kept = _mean_of_largest(proposal, keep, quantile)
      scale = jnp.where(kept > 0, kept, scale).astype(scale.dtype)
    return _invert_threshold(threshold, quantile, inputs.lr, shape_at(scale)), scale

  def step_fn_at(scale):
    return functools.partial(fn, **shape_at(scale)) if relative else fn

  def step_with(inputs: _StepInputs, log_strength, scale):
    tau = transforms.step_threshold(inputs.lr, jnp.exp(log_strength))
    return transforms.proximal_step_leaves(step_fn_at(scale), inputs.leaves_p, inputs.leaves_u,
                                           [tau if m else None for m in inputs.masks])

  scalar_shape = all(np.ndim(v) == 0 for v in prox_kwargs.values())

  def nonzeros_after(inputs: _StepInputs, log_strength, scale):
    # The elementwise step again, block by block inside the count (`magnitudes.blocked_sum`),
    # exactly as the update forms it: p + (prox(p + u) - p) in u's dtype, cast to p's.
    tau = transforms.step_threshold(inputs.lr, jnp.exp(log_strength))
    step_fn = step_fn_at(scale)

    def nonzero(p, u):
      step = transforms.proximal_step_leaves(step_fn, [p], [u], [tau])[0]
      return (p + step).astype(p.dtype) != 0
    return sum((magnitudes.blocked_sum(nonzero, p, u).astype(jnp.float32)
                for p, u, m in zip(inputs.leaves_p, inputs.leaves_u, inputs.masks) if m), jnp.zeros([], jnp.float32))

  rules = _Rules(log_strength_for, step_with, nonzeros_after=nonzeros_after if scalar_shape else None)
  return _controller(rules, _Target(target_nnz, sparsity), learning_rate, initial_strength, mask,
                     _schedule_from(schedule, total_steps, rate, interval, exact_final_steps, ramp, debias_steps))


def _mean_of_largest(leaves: list[tuple], keep: Any, cut: Any) -> jax.Array:
  """The mean of the `keep` largest ``|w|`` over `leaves`, given the (keep+1)-th largest `cut`.

  Each leaf is a tuple of arrays standing for their sum (as in
  `magnitudes.kth_largest_magnitude`), summed block by block. Entries above the cut are
  summed; ties at the cut fill the rest of the `keep`.
  """
  def magnitude(*parts):
    return jnp.abs(functools.reduce(jnp.add, parts))

  def above_cut(*parts):
    v = magnitude(*parts)
    return jnp.where(v > cut, v, 0).astype(jnp.float32)

  above = sum((magnitudes.blocked_sum(above_cut, *leaf, dtype=jnp.float32) for leaf in leaves),
              jnp.zeros([], jnp.float32))
  count = sum((magnitudes.blocked_sum(lambda *parts: magnitude(*parts) > cut, *leaf) for leaf in leaves),
              jnp.zeros([], jnp.int32))
  keep = jnp.maximum(jnp.asarray(keep, jnp.float32), 1.0)
  return (above + (keep - count.astype(jnp.float32)) * cut.astype(jnp.float32)) / keep


def _magnitude_params(record: Any) -> tuple:
  """The shape parameters of a penalty record (None: an unregistered prox) that are magnitudes of the weights."""
  return () if record is None else tuple(p for p in record.shape_params if p.relative is not None)


def _relative_shape(prox_fn: Any, record: Any, prox_kwargs: dict[str, Any]) -> dict[str, Any]:
  """The magnitude parameters of `relative_shape=True`: name -> multiple of the scale."""
  params = _magnitude_params(record)
  if not params:
    name = prox_fn if isinstance(prox_fn, str) else getattr(prox_fn, "__name__", prox_fn)
    scaled = [n for n in _registry.names() if _magnitude_params(_registry.get(n))]
    raise ValueError(f"relative_shape=True needs a registered penalty with a magnitude shape parameter (one of "
                     f"{scaled}); {name!r} has none: it is scale-free already, use relative_shape=False.")
  return {p.name: prox_kwargs.get(p.name, p.relative) for p in params}


class _Target(NamedTuple):
  """The controller's target: a count of nonzero weights or a fraction of zeros (one of them None)."""
  nnz: Any
  sparsity: Any

  def check(self) -> None:
    if (self.nnz is None) == (self.sparsity is None):
      raise ValueError(f"give exactly one of target_nnz (a count of nonzero weights) and sparsity (a fraction "
                       f"of zeros in (0, 1)); got target_nnz={self.nnz!r}, sparsity={self.sparsity!r}.")
    if self.nnz is not None:
      _checks.check_count("target_nnz", self.nnz)
    else:
      _checks.check_range("sparsity", self.sparsity, lower=0.0, upper=1.0, lower_inclusive=False,
                          upper_inclusive=False)
      if _checks.is_concrete(self.sparsity) and np.ndim(self.sparsity):
        raise ValueError(f"sparsity must be one number in (0, 1); got sparsity={self.sparsity!r}.")

  def count(self, total: int) -> Any:
    """The target count of nonzero weights among `total` regularised ones (traced when injected)."""
    if self.nnz is not None:
      if not _checks.is_concrete(self.nnz):  # under optax.inject_hyperparams
        return self.nnz
      if self.nnz >= total:
        raise ValueError(f"target_nnz={self.nnz} must be below the {total} regularised weights.")
      return int(self.nnz)
    if not _checks.is_concrete(self.sparsity):
      return jnp.clip(jnp.round((1.0 - self.sparsity) * total), 1, total - 1).astype(jnp.int32)
    keep = int(round((1.0 - float(self.sparsity)) * total))
    if not 1 <= keep < total:
      raise ValueError(f"sparsity={self.sparsity!r} keeps {keep} of the {total} regularised weights; it must keep "
                       f"between 1 and {total - 1} (sparsity in [{1 / total:.3g}, {1 - 1 / total:.6g}]).")
    return keep


def _controller(rules: _Rules, target: _Target, learning_rate: Any, initial_strength: Any, mask: Any,
                schedule: ControllerSchedule) -> optax.GradientTransformation:
  """The controller around `rules` (how lambda* is found and the step taken): validation, the
  schedule's phases, the conditional update of lambda, the step, and the refit phase."""
  target.check()
  if learning_rate is None:
    raise ValueError("learning_rate is required: the inner optimizer's step size (a scalar or an optax schedule).")
  _checks.check_range("initial_strength", initial_strength, lower=0.0, lower_inclusive=False,
                      upper=float("inf"), upper_inclusive=False)
  _hyper.check_positive("learning_rate", learning_rate)
  schedule = schedule.resolved()
  mask = masking.weights_only if mask is None else mask

  def init_fn(params):
    masks = masking.mask_leaves(mask, params)
    total = masking.regularised_size(params, mask)
    target_nnz = target.count(total)
    if rules.check_params is not None:
      rules.check_params(params)
    # the scale of the weights the target keeps, until the first update measures it
    kernels = [(p,) for p, m in zip(jax.tree.leaves(params), masks) if m]
    kept = _mean_of_largest(kernels, target_nnz, magnitudes.kth_largest_magnitude(kernels, target_nnz + 1))
    scale = jnp.where(kept > 0, kept, 1.0).astype(_state_dtype())
    return ControllerState(jnp.zeros([], jnp.int32), jnp.asarray(math.log(initial_strength), _state_dtype()),
                           jnp.asarray(total, jnp.float32), scale)

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "nnz_controller")
    leaves_p, treedef = jax.tree.flatten(params)
    inputs = _StepInputs(_hyper.evaluate(learning_rate, state.count), state.count, leaves_p,
                         treedef.flatten_up_to(updates), masking.mask_leaves(mask, params), treedef)
    total = masking.regularised_size(params, mask)
    keep = schedule.keep(state.count, target.count(total), total)
    exact, refitting = schedule.phases(state.count)
    adjust = (state.count % schedule.interval == 0) | exact
    step_rate = jnp.where(exact, 1.0, schedule.rate)

    def nonzeros(new_u):
      return sum((jnp.count_nonzero(p + u).astype(jnp.float32)
                  for p, u, m in zip(inputs.leaves_p, new_u, inputs.masks) if m), jnp.zeros([], jnp.float32))

    def updated_strength():
      log_target, scale = rules.log_strength_for(inputs, keep, state.scale)
      moved = state.log_strength + step_rate * (log_target - state.log_strength)
      # at rate 1 land on log_target itself: old + (target - old) may round off it
      log_strength = jnp.where(step_rate == 1.0, log_target, moved).astype(state.log_strength.dtype)
      # the count after this step, in the branch: a count on every step costs 0.1-0.2x a
      # training step on XLA:CPU (benchmarks/sparsity_steps.py)
      if rules.nonzeros_after is not None:
        return log_strength, rules.nonzeros_after(inputs, log_strength, scale), scale
      return log_strength, nonzeros(rules.step_with(inputs, log_strength, scale)), scale

    log_strength, nnz, scale = jax.lax.cond(adjust & ~refitting, updated_strength,
                                            lambda: (state.log_strength, state.nnz, state.scale))
    # The step again outside the conditional, on update steps too: returning it from the
    # branches (weight-sized outputs) stops XLA:CPU fusing it into the update and was
    # measured slower at intervals 1, 10 and 100 (2.85x -> 3.30x, 1.28x -> 1.52x, 1.14x -> 1.34x).
    new_u = rules.step_with(inputs, log_strength, scale)
    if schedule.refits:
      # Refit phase: the support is frozen (zeros stay zero) and the survivors take the
      # optimizer's step unshrunk. A select, not a conditional, so the step stays one
      # fused pass over the weights.
      new_u = [jnp.where(refitting, jnp.where(p != 0, u, -p).astype(n.dtype), n) if m else n
               for p, u, n, m in zip(inputs.leaves_p, inputs.leaves_u, new_u, inputs.masks)]
    return (jax.tree.unflatten(treedef, new_u),
            ControllerState(optax.safe_increment(state.count), log_strength, nnz, scale))

  return optax.GradientTransformation(init_fn, update_fn)


# Library proximal transforms with the signature (strength, learning_rate, **shape) that
# `nnz_controller_for` builds by name; any registered prox name is built with
# `transforms.proximal`.
COMPOSITE_TRANSFORMS = ("integrated_tl1", "cges")


def _transform_factory(transform: Any, learning_rate: Any, mask: Any, kwargs: dict) -> Callable[[Any], Any]:
  if callable(transform):
    if kwargs:
      raise ValueError(f"shape arguments {sorted(kwargs)} go inside make_transform when it is a function.")
    return transform
  if not isinstance(transform, str):
    raise ValueError(f"transform must be a name ({', '.join(COMPOSITE_TRANSFORMS)}, or a prox such as 'group_lasso') "
                     f"or a function strength -> GradientTransformation; got {transform!r}.")
  if transform in COMPOSITE_TRANSFORMS:
    factory = getattr(transforms, transform)
    return lambda strength: factory(strength, learning_rate, mask="weights_only" if mask is None else mask, **kwargs)
  _registry.get(transform)  # raises, naming the known penalties
  return lambda strength: transforms.proximal(transform, strength, learning_rate,
                                              masking.weights_only if mask is None else mask, **kwargs)


def nnz_controller_for(
    transform: str | Callable[[Any], optax.GradientTransformation],
    target_nnz: int | None = None,
    learning_rate: Any = None,
    initial_strength: float = 1e-4,
    *,
    rate: float | None = None,
    interval: int | None = None,
    mask: Any = None,
    total_steps: int | None = None,
    exact_final_steps: int | None = None,
    ramp: tuple[int, int] | str | None = "auto",
    debias_steps: int | None = None,
    bisection_steps: int = 48,
    sparsity: float | None = None,
    schedule: ControllerSchedule | None = None,
    **transform_kwargs: Any,
) -> optax.GradientTransformation:
  """`nnz_controller` for any proximal step of the library (group and composite ones too), by bisection.

  `transform` names the step: "integrated_tl1" or "cges" (`transforms.<name>(strength,
  learning_rate, mask=mask, **transform_kwargs)`), or any registered prox, such as
  "group_lasso" (`transforms.proximal(name, strength, learning_rate, mask,
  **transform_kwargs)`). It can also be a function strength -> GradientTransformation whose state holds
  only step counts. Under `optax.inject_hyperparams`, pass a function through
  `static_args`; a name is static already.

  Group and composite maps have no single zero threshold to invert. So every
  `interval` steps lambda* is found by bisection on log lambda over [e^-60, e^20]: the
  smallest lambda whose step leaves at most `keep` nonzero regularised weights.
  There are `bisection_steps` halvings, each one pass of the step and one count over
  the regularised weights, under `lax.cond`.

  The library's maps give a count that does not increase with lambda. So the step
  keeps exactly `keep` weights unless several weights leave the support at the same
  lambda. A whole group does: a group lasso lands on a group boundary at or below
  the target.

  For an elementwise prox this matches `nnz_controller(name, ...)` (tested on l1: the
  same strength and weights). The schedule, ramp, exact phase and refit are those of
  `nnz_controller`.

  Args:
    transform: the proximal step's name, or a function strength -> GradientTransformation.
    target_nnz: the wanted number of nonzero regularised weights (or give `sparsity`).
    learning_rate: the inner optimizer's step size (scalar or schedule), also given to a named step; required.
    initial_strength: lambda at step 0 (> 0).
    rate: as in `nnz_controller`.
    interval: as in `nnz_controller`.
    total_steps: as in `nnz_controller` (switches on its schedule).
    exact_final_steps: as in `nnz_controller`.
    ramp: as in `nnz_controller`.
    debias_steps: as in `nnz_controller`.
    mask: the regularised leaves, counted and passed to a named step (default: kernels, ndim >= 2).
    bisection_steps: halvings of the log-strength bracket per update (>= 1).
    sparsity: the wanted fraction of zero regularised weights, 0 < sparsity < 1 (or give `target_nnz`).
    schedule: as in `nnz_controller`.
    **transform_kwargs: shape arguments of a named step (e.g. a=0.02, m=0.2), constants (this
      controller has no relative shape: give the magnitudes at the scale of the kept weights).
  """
  _checks.check_int("bisection_steps", bisection_steps, 1)
  make_transform = _transform_factory(transform, learning_rate, mask, _hyper.shape_kwargs(transform_kwargs, "transform_kwargs"))

  def inner_state(params, count):
    template = make_transform(initial_strength).init(params)
    return jax.tree.map(lambda leaf: jnp.asarray(count, jnp.asarray(leaf).dtype), template)

  def check_params(params):
    template = make_transform(initial_strength).init(params)
    leaves = jax.tree.leaves(template)
    if not all(np.ndim(leaf) == 0 and jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.integer) for leaf in leaves):
      raise ValueError("transform must be a stateless proximal step (a state of step counts only, as every "
                       f"sparsejax.transforms proximal step has); its state is {template!r}.")

  def step_with(inputs: _StepInputs, log_strength, scale):
    params = jax.tree.unflatten(inputs.treedef, inputs.leaves_p)
    updates = jax.tree.unflatten(inputs.treedef, inputs.leaves_u)
    new_updates, _ = make_transform(jnp.exp(log_strength)).update(updates, inner_state(params, inputs.count), params)
    return inputs.treedef.flatten_up_to(new_updates)

  def log_strength_for(inputs: _StepInputs, keep, scale):
    def survivors(log_strength):
      new_u = step_with(inputs, log_strength, scale)
      return sum((jnp.count_nonzero(p + u) for p, u, m in zip(inputs.leaves_p, new_u, inputs.masks) if m),
                 jnp.zeros([], jnp.int32))

    # -count is non-decreasing in log lambda: the upper end of the bracket where -count >= -keep
    return _numerics.bisect_increasing(lambda mid: -survivors(mid), -keep, jnp.asarray(-60.0, _state_dtype()),
                                       jnp.asarray(20.0, _state_dtype()), bisection_steps, upper=True), scale

  return _controller(_Rules(log_strength_for, step_with, check_params), _Target(target_nnz, sparsity), learning_rate,
                     initial_strength, mask,
                     _schedule_from(schedule, total_steps, rate, interval, exact_final_steps, ramp, debias_steps))
