"""Proximal steps that end exactly on an N:M pattern: the penalty's prox at a per-group strength.

An N:M regulariser. In every group of M consecutive weights along a kernel's input
axis (the groups of `patterns.n_of_m_mask`), the strength is the one at which exactly
k_t of the M survive the prox: with v the optimizer's proposal p + u and c_g the
(k_t + 1)-th largest ``|v|`` of group g, tau_g solves T(tau_g) = c_g for the penalty's
zero threshold T (by bisection, the upper end, so ``|v|`` = c_g is zeroed), and

    p_new = prox_P(v, tau_g) on the k_t largest of the group, 0 on the others.

This is the NNZ controller's exact phase done group by group, with no lag: the count
is exact at every step. `nm_proximal` schedules it like the controller with
``total_steps`` (`controller.RAMP_FRACTIONS`, `controller.REFIT_FRACTION`): dense
until 10 % of the run, k_t falls from M to N along the cubic ramp up to 50 %, the
prox holds N of M until 60 %, and the last 40 % retrains the N:M support found
without shrinkage. Magnitude shape parameters not given (SCAD's lam, TL1's a, ...)
are relative to the mean kept ``|v|`` of the leaf, as the controller's
``relative_shape``.

The one-line call is ``optimizers.sgd(lr, momentum=0.9, penalty="scad", sparsity=0.5,
pattern="2:4", total_steps=T)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sparsejax import _checks, _hyper, _numerics, controller, masking, patterns, pruning
from sparsejax import registry as _registry

__all__ = ["PatternProxState", "group_prox", "nm_proximal"]


class PatternProxState(NamedTuple):
  """State of `nm_proximal`: the step count and the support frozen for the refit (all True before it)."""
  count: chex.Array
  mask: Any


def _group_view(v: jax.Array, m: int) -> jax.Array:
  axis = v.ndim - 2
  moved = jnp.moveaxis(v, axis, -1)
  return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def _ungroup(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  axis = len(shape) - 2
  moved_shape = shape[:axis] + shape[axis + 1:] + (shape[axis],)
  return jnp.moveaxis(g.reshape(moved_shape), -1, axis)


def group_prox(v: jax.Array, keep: chex.Numeric, m: int, penalty: str, **shape: Any) -> jax.Array:
  """The prox of `penalty` at the per-group strength that keeps exactly `keep` of every `m` weights.

  Groups run along the input axis (axis -2) of `v`, whose length m must divide.
  `keep` in [0, m] may be traced; at keep >= m `v` is returned unchanged.

  Args:
    v: a kernel (ndim >= 2).
    keep: survivors per group.
    m: the group size.
    penalty: a registered penalty with a zero threshold.
    **shape: shape parameters; magnitude ones not given are relative to the mean kept ``|v|``.
  """
  record = _registry.get(penalty)
  threshold = _numerics.threshold_or_raise(penalty, "an N:M prox needs a penalty whose prox zeroes |w| <= T(tau)")
  relative = {p.name: p.relative for p in record.shape_params if p.relative is not None and p.name not in shape}
  return _group_prox(v, keep, m, record.prox, threshold, shape, relative)


def _group_prox(v: jax.Array, keep: chex.Numeric, m: int, prox: Callable[..., Any], threshold: Callable[..., Any],
                fixed_shape: dict[str, Any], relative: dict[str, float]) -> jax.Array:
  if v.ndim < 2 or v.shape[-2] % m:
    raise ValueError(f"an N:M prox needs a kernel whose input axis (-2) is a multiple of M={m}; got shape {v.shape}.")
  keep = jnp.clip(jnp.asarray(keep, jnp.int32), 0, m)
  groups = _group_view(v, m)
  mags = jnp.abs(groups).astype(jnp.float32)
  ranks = patterns.group_ranks(mags)
  kept = ranks < keep
  # the (keep + 1)-th largest |v| of each group (the entry of rank `keep`; 0 when keep = m)
  cut = jnp.sum(jnp.where(ranks == keep, mags, 0.0), axis=-1)
  count = jnp.maximum(jnp.sum(kept), 1).astype(jnp.float32)
  scale = jnp.maximum(jnp.sum(jnp.where(kept, mags, 0.0)) / count, jnp.finfo(jnp.float32).tiny)
  step_shape = {**fixed_shape, **{name: factor * scale for name, factor in relative.items()}}
  log_tau = _numerics.bisect_increasing(lambda mid: threshold(jnp.exp(mid), **step_shape), cut,
                                        jnp.full(cut.shape, -60.0, jnp.float32), jnp.full(cut.shape, 20.0, jnp.float32),
                                        60, upper=True)
  tau = jnp.exp(log_tau)[..., None].astype(v.dtype)
  shrunk = jnp.where(kept, prox(groups, tau, **step_shape), jnp.zeros_like(groups))
  out = jnp.where(keep >= m, groups, shrunk)
  return _ungroup(out, tuple(v.shape)).astype(v.dtype)


def nm_proximal(penalty: str, pattern: str, *, total_steps: int, mask: masking.Mask = "weights_only",
                **shape: Any) -> optax.GradientTransformation:
  """The N:M regulariser as a transform placed after the optimizer, on the controller's schedule.

  Args:
    penalty: a registered penalty with a zero threshold ("scad", "mcp", "tl1", "log_sum", "l1", ...).
    pattern: "N:M" (e.g. "2:4", "1:4").
    total_steps: the run's optimizer steps (>= 1).
    mask: which leaves are regularised (default: kernels, ndim >= 2); leaves whose input
      axis M does not divide raise; `patterns.fitting(pattern)` leaves them dense.
    **shape: the penalty's shape parameters.

  Returns:
    A `GradientTransformation` with state `PatternProxState`; the run ends with exactly
    N of every M weights of every regularised leaf nonzero-or-zero by the pattern (at most N nonzero).
  """
  parsed = patterns.parse_pattern(pattern)
  if parsed.kind != "n:m":
    raise ValueError(f"pattern must be 'N:M' (e.g. '2:4') for nm_proximal; got {pattern!r}.")
  _checks.check_int("total_steps", total_steps, 1)
  if not isinstance(penalty, str):
    raise _checks.ArgumentTypeError(f"penalty must be a registered penalty name; got {penalty!r}.")
  record = _registry.get(penalty)
  shape = _hyper.shape_kwargs(shape, "shape")  # also when optax.inject_hyperparams passed them
  record.check_shape(shape)
  threshold = _numerics.threshold_or_raise(penalty, "an N:M prox needs a penalty whose prox zeroes |w| <= T(tau)")
  relative = {p.name: p.relative for p in record.shape_params if p.relative is not None and p.name not in shape}
  begin, end = (_hyper.steps_of_run(f, total_steps) for f in controller.RAMP_FRACTIONS)
  refit = _hyper.steps_of_run(1.0 - controller.REFIT_FRACTION, total_steps, rounded=True)
  n, m = parsed.n, parsed.m

  def init_fn(params):
    chosen = masking.mask_leaves(mask, params)
    for leaf, c in zip(jax.tree.leaves(params), chosen):
      if c and (jnp.ndim(leaf) < 2 or jnp.shape(leaf)[-2] % m):
        raise ValueError(f"pattern {pattern!r} needs every regularised leaf's input axis (-2) to be a multiple of "
                         f"{m}; got a leaf of shape {jnp.shape(leaf)}. Pass mask=patterns.fitting({pattern!r}).")
    return PatternProxState(jnp.zeros([], jnp.int32), jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "nm_proximal")
    treedef: Any = jax.tree.structure(params)
    t = state.count
    chosen = masking.mask_leaves(mask, params)
    fraction = pruning.cubic_sparsity(t, 1.0, begin, end)
    keep = jnp.round(m - fraction * (m - n)).astype(jnp.int32)
    keep = jnp.where(t < begin, m, keep)
    proposal = [p + u for p, u in zip(jax.tree.leaves(params), treedef.flatten_up_to(updates))]
    old_mask = treedef.flatten_up_to(state.mask)

    def regularised():
      return [_group_prox(v, keep, m, record.prox, threshold, shape, relative) if c else v
              for v, c in zip(proposal, chosen)]

    def refitting():
      return [jnp.where(k, v, jnp.zeros_like(v)) for v, k in zip(proposal, old_mask)]

    new = jax.lax.cond(t < refit, regularised, refitting)
    # the support frozen at the switch: the N:M pattern the prox ended on
    new_mask = jax.lax.cond(t == refit - 1, lambda: [(x != 0) if c else jnp.ones(x.shape, bool)
                                                     for x, c in zip(new, chosen)], lambda: list(old_mask))
    out = jax.tree.unflatten(treedef, [(x - p).astype(jnp.result_type(u)) for x, p, u in
                                       zip(new, jax.tree.leaves(params), treedef.flatten_up_to(updates))])
    return out, PatternProxState(optax.safe_increment(t), jax.tree.unflatten(treedef, new_mask))

  return optax.GradientTransformation(init_fn, update_fn)
