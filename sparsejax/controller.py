"""The NNZ controller: a proximal step whose strength keeps a target number of nonzero weights.

`nnz_controller` is an optax transform placed after any optimizer. Every
`interval` steps it finds lambda*, the strength at which exactly the target count
of regularised weights survives this step's prox (from the (target+1)-th largest
``|w + u|``, found exactly by bisection on the float bit patterns, and the penalty's
zero threshold T inverted: T(lr lambda*) = that magnitude), and moves log lambda
toward log lambda* at `rate`. It cannot wind up: lambda never overshoots the
quantile that keeps the target, so no unit is killed for good. The algorithm,
its cost and the accuracy trade-offs are written up in `docs/pruning_and_controller.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sparsejax import _checks, _hyper, _numerics, masking, pruning, transforms
from sparsejax import registry as _registry

__all__ = ["ControllerState", "nnz_controller"]




class ControllerState(NamedTuple):
  count: chex.Array
  log_strength: chex.Array   # current log(lambda)
  nnz: chex.Array            # nonzeros after the last step


def _invert_threshold(threshold_fn, value, learning_rate, shape, iterations: int = 60):
  """log(lambda) with threshold_fn(learning_rate * lambda) = value (jit-friendly)."""
  return _numerics.bisect_increasing(lambda mid: threshold_fn(learning_rate * jnp.exp(mid), **shape), value,
                            jnp.asarray(-60.0), jnp.asarray(20.0), iterations)


def nnz_controller(
    prox_fn: Callable[..., Any] | str,
    target_nnz: int,
    learning_rate: Any,
    initial_strength: float = 1e-4,
    rate: float = 0.05,
    interval: int = 1,
    mask: Any = None,
    total_steps: int | None = None,
    exact_final_steps: int = 0,
    ramp: tuple[int, int] | None = None,
    **prox_kwargs: Any,
) -> optax.GradientTransformation:
  """A proximal step whose strength tracks, during one run, the lambda that keeps `target_nnz` weights.

  Every `interval` steps, with v = params + updates over the regularised
  leaves and q the (target_nnz + 1)-th largest ``|v|``, lambda* solves
  T(lr lambda*) = q for the penalty's zero threshold T (lambda* = q/lr for l1),
  i.e. the strength at which this prox step would keep exactly `target_nnz`
  weights; then log lambda += rate (log lambda* - log lambda). rate = 1 is
  exact top-k soft thresholding every step; smaller rates give a slowly
  varying strength, so the run ends near a stationary point of L + lambda f
  with about `target_nnz` nonzeros. The current lambda is
  `exp(state.log_strength)`.

  Cost: q is found exactly by bisection on the bit patterns of ``|v|``
  (`pruning.kth_largest_magnitude`: 32 counting passes in float32, no sort or
  top_k), and only on the steps that update lambda (under `lax.cond`), so
  `interval` amortises it: the step costs a plain proximal step plus 32/interval
  passes over the regularised weights.

  Hitting the target exactly: with mini-batch noise, a slowly moving lambda lets the
  count wander around the target (rate sets how far: larger rates follow the target
  more closely but change the penalty, and so the weights, more abruptly). Give
  `total_steps` and `exact_final_steps` = E to move lambda all the way to lambda*
  (rate 1, every step) during the last E steps: the run then ends with exactly
  `target_nnz` nonzeros (up to ties in ``|v|``), after E steps of training at the
  final support's strength. A few hundred steps (a fraction of an epoch) is enough.

  Args:
    prox_fn: a `sparsejax.prox` function with a `threshold` (l1, tl1, log_sum, mcp, ...), or its name.
    target_nnz: the wanted number of nonzero regularised weights.
    learning_rate: the inner optimizer's step size (scalar or schedule).
    initial_strength: lambda at step 0 (> 0).
    rate: fraction of the log-distance to lambda* moved per update, 0 < rate <= 1.
    interval: steps between updates of lambda.
    mask: regularised leaves (default: kernels, ndim >= 2).
    total_steps: the run's number of optimizer steps (needed for exact_final_steps).
    exact_final_steps: in the last this many steps lambda = lambda* every step.
    ramp: (begin_step, end_step): the target count falls from all regularised weights
      to `target_nnz` along Zhu & Gupta's cubic schedule between these steps (as
      gradual magnitude pruning does) instead of being `target_nnz` from step 0; the
      strength follows the moving target (use rate = 1 to follow it exactly at
      every update).
    **prox_kwargs: penalty shape parameters (e.g. a=1.0).
  """
  _checks.check_range("target_nnz", target_nnz, lower=0.0, lower_inclusive=False)
  _checks.check_range("initial_strength", initial_strength, lower=0.0, lower_inclusive=False)
  _checks.check_range("rate", rate, lower=0.0, upper=1.0, lower_inclusive=False)
  _checks.check_int("interval", interval, 1)
  _checks.check_int("exact_final_steps", exact_final_steps, 0)
  if _checks.is_concrete(exact_final_steps) and exact_final_steps and (
      total_steps is None or (_checks.is_concrete(total_steps) and total_steps < exact_final_steps)):
    raise ValueError(f"exact_final_steps={exact_final_steps} needs total_steps >= exact_final_steps (the run's "
                     f"optimizer steps); got total_steps={total_steps!r}.")
  if ramp is not None:
    if len(ramp) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in ramp) \
        or not 0 <= ramp[0] <= ramp[1]:
      raise ValueError(f"ramp must be (begin_step, end_step) with 0 <= begin_step <= end_step; got {ramp!r}.")
  prox_kwargs = _hyper.shape_kwargs(prox_kwargs)
  threshold = _numerics.threshold_or_raise(prox_fn, "the controller needs one to invert")
  fn, _ = _registry.resolve_prox(prox_fn, prox_kwargs)
  mask = masking.weights_only if mask is None else mask
  k = target_nnz

  def init_fn(params):
    masks = masking.mask_leaves(mask, params)
    total = sum(int(np.size(p)) for p, m in zip(jax.tree.leaves(params), masks) if m)
    if target_nnz >= total:
      raise ValueError(f"target_nnz={target_nnz} must be below the {total} regularised weights.")
    return ControllerState(jnp.zeros([], jnp.int32), jnp.asarray(math.log(initial_strength), jnp.float32),
                           jnp.asarray(total, jnp.float32))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("nnz_controller needs params: call tx.update(updates, state, params).")
    lr = _hyper.evaluate(learning_rate, state.count)
    masks = masking.mask_leaves(mask, params)
    leaves_p, treedef = jax.tree.flatten(params)
    leaves_u = treedef.flatten_up_to(updates)
    if total_steps is None:
      final = jnp.asarray(False)
    else:
      final = (exact_final_steps > 0) & (state.count >= total_steps - exact_final_steps)
    adjust = (state.count % interval == 0) | final
    step_rate = jnp.where(final, 1.0, rate)

    if ramp is None:
      keep = jnp.asarray(k)
    else:
      total = sum(int(np.size(p)) for p, m in zip(leaves_p, masks) if m)
      remaining = 1.0 - pruning.cubic_sparsity(state.count, 1.0, ramp[0], ramp[1])  # 1 -> 0 along the ramp
      keep = jnp.round(k + (total - k) * remaining).astype(jnp.int32)

    def moved_log_strength():
      # p + u is formed again inside the branch: capturing the sums would make XLA
      # materialise them every step just to pass them to the conditional.
      proposal = [p + u for p, u, m in zip(leaves_p, leaves_u, masks) if m]
      quantile = pruning.kth_largest_magnitude(proposal, keep + 1)
      log_target = _invert_threshold(threshold, quantile, lr, prox_kwargs)
      return (state.log_strength + step_rate * (log_target - state.log_strength)).astype(jnp.float32)

    log_strength = jax.lax.cond(adjust, moved_log_strength, lambda: state.log_strength.astype(jnp.float32))
    tau = transforms.step_threshold(lr, jnp.exp(log_strength))
    new_u = transforms.proximal_step_leaves(fn, leaves_p, leaves_u, [tau if m else None for m in masks])
    nnz = sum((jnp.count_nonzero(p + u).astype(jnp.float32) for p, u, m in zip(leaves_p, new_u, masks) if m),
              jnp.zeros([], jnp.float32))
    return (jax.tree.unflatten(treedef, new_u),
            ControllerState(optax.safe_increment(state.count), log_strength.astype(jnp.float32), nnz))

  return optax.GradientTransformation(init_fn, update_fn)
