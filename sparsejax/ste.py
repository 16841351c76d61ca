"""Straight-through sparse training: the forward pass sees a sparsified copy of dense weights.

The transforms wrap an optimizer and take raw gradients; hyperparameters to change during
training belong to the inner optimizer (``optax.inject_hyperparams(optax.sgd)(...)``).
The dense weights w live in the optimizer state; the params the model runs with are
their sparse image s(w). Every step the gradient g = dL/dp at the sparse params
p = s(w) is applied to the dense weights unchanged (the straight-through estimator,
Bengio et al. 2013): w <- w + optimizer(g), then p <- s(w). Because the params *are*
the forward weights, nothing in the model changes: the transform replaces the
optimizer in any loop (`train.fit`, `nnx.Optimizer`, a hand-written step), evaluation
and compaction see exactly sparse params, and `dense_params(opt_state)` returns w.

Forward maps s (layer sparsity s_t follows the cubic ramp of `pruning.cubic_sparsity`
from 0 at `begin_step` to the target at `end_step`):

* `magnitude_ste`: s(w) = w * mask, the mask of the largest ``|w|`` in any pattern
  ("unstructured", "N:M", blocks) and distribution; with ``masked_decay`` > 0 the
  gradient of the dense weights gets + decay * (1 - mask) * w, SR-STE's sparse-refined
  term (Zhou et al. 2021, "Learning N:M fine-grained structured sparse neural networks
  from scratch").
* `prox_ste`: s(w) = prox_{P}(w, tau) for any registered penalty with a zero threshold
  (SCAD, MCP, TL1, log-sum, l1, ...), tau chosen every step so that the target count
  survives: the (k+1)-th largest ``|w|`` is the penalty's zero threshold T(tau) (at most
  k nonzero when magnitudes tie at the cut, exactly k otherwise).
  The strength is the one the NNZ controller converges to, without its lag. Magnitude
  shape parameters (TL1's a, SCAD's lam, ...) not given are tied to the cut (SCAD: lam
  = the cut at tau = 1, a continuous map), and each layer is rescaled so its kept
  weights keep their dense L2 norm (both defaults measured, docs/sparse_training.md).
* `soft_threshold_ste`: ST-3 (Vanderschueren & De Vleeschouwer 2023): `prox_ste` with
  l1, i.e. s(w) = sign(w) (``|w|`` - tau)_+ at the k-th magnitude, rescaled per layer so
  the L2 norm of the kept weights is that of their dense values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sparsejax import _checks, _hyper, _numerics, masking, patterns
from sparsejax import registry as _registry
from sparsejax.magnitudes import kth_largest_magnitude
from sparsejax.pruning import cubic_sparsity

__all__ = ["StraightThroughState", "straight_through", "magnitude_ste", "prox_ste", "soft_threshold_ste",
           "dense_params", "for_run", "RAMP_FRACTIONS"]


class StraightThroughState(NamedTuple):
  """State of the straight-through transforms: step count, the optimizer's state and the dense weights (like params)."""
  count: chex.Array
  inner_state: Any
  dense: Any


ForwardFn = Callable[[Any, chex.Array], Any]


def straight_through(optimizer: optax.GradientTransformation, forward_fn: ForwardFn,
                     gradient_fn: Callable[[Any, Any, Any], Any] | None = None) -> optax.GradientTransformation:
  """The straight-through core: dense weights in the state, params = forward_fn(dense, step).

  Args:
    optimizer: the optax optimizer of the dense weights.
    forward_fn: (dense params, t) -> forward params for step t (same structure;
      jit-traceable). The update of step t - 1 calls it with t.
    gradient_fn: optional (grads, dense, params) -> grads fed to the optimizer (e.g.
      SR-STE's decay of the masked weights).

  Returns:
    A `GradientTransformation` taking gradients at the forward params; its updates
    land params on forward_fn(dense_new, t) (zeros exactly; other entries up to the
    rounding of p + (f - p)).
  """
  _checks.check_callable("forward_fn", forward_fn, "a callable (dense params, step) -> forward params")
  _checks.check_callable("gradient_fn", gradient_fn, "a callable (grads, dense, params) -> grads", optional=True)

  def init_fn(params):
    dense = jax.tree.map(jnp.asarray, params)
    return StraightThroughState(jnp.zeros([], jnp.int32), optimizer.init(dense), dense)

  def update_fn(grads, state, params=None):
    _checks.require_params(params, "straight_through")
    if gradient_fn is not None:
      grads = gradient_fn(grads, state.dense, params)
    updates, inner_state = optimizer.update(grads, state.inner_state, state.dense)
    dense = optax.apply_updates(state.dense, updates)
    forward = forward_fn(dense, optax.safe_increment(state.count))  # the params of the next step
    treedef: Any = jax.tree.structure(params)
    new_updates = jax.tree.unflatten(treedef, [
        (f - p).astype(jnp.result_type(u)) for f, p, u in zip(treedef.flatten_up_to(forward), jax.tree.leaves(params),
                                                              treedef.flatten_up_to(updates))])
    return new_updates, StraightThroughState(optax.safe_increment(state.count), inner_state, dense)

  return optax.GradientTransformation(init_fn, update_fn)


def dense_params(opt_state: Any) -> Any:
  """The dense weights held by the one `StraightThroughState` inside an optimizer state."""
  return _checks.one_state(opt_state, StraightThroughState, "StraightThroughState").dense


def _check_window(begin_step: int, end_step: int) -> None:
  _checks.check_int("begin_step", begin_step, 0)
  _checks.check_int("end_step", end_step, begin_step, f"an int >= begin_step={begin_step}")


def _groups(picked: list[int], distribution: str) -> list[list[int]]:
  return [picked] if distribution == "global" else [[i] for i in picked]


def _unstructured_keep(leaves: list[jax.Array], group: list[int], keep: jax.Array) -> list[jax.Array]:
  """Masks of exactly the `keep` largest |w| over the group (linear time; ties at the cut by position)."""
  return patterns.top_k_magnitude_masks([leaves[i] for i in group], keep)


def _layer_targets(params: Any, sparsity: float, distribution: str, mask: masking.Mask) -> list:
  treedef: Any = jax.tree.structure(params)
  return treedef.flatten_up_to(patterns.layer_sparsities(params, sparsity, distribution, mask))


def magnitude_ste(
    optimizer: optax.GradientTransformation,
    sparsity: float,
    *,
    end_step: int,
    begin_step: int = 0,
    pattern: str = "unstructured",
    distribution: str = "global",
    masked_decay: float = 0.0,
    mask: masking.Mask = "weights_only",
) -> optax.GradientTransformation:
  """Magnitude STE: the forward keeps the largest ``|w|`` of the dense weights (any pattern), gradients pass through.

  Args:
    optimizer: the optax optimizer of the dense weights.
    sparsity: final fraction removed, in [0, 1) (for "N:M" it must be 1 - N/M or 0).
    end_step: the step where the target is reached (cubic ramp from begin_step).
    begin_step: the forward is dense before it.
    pattern: "unstructured", "N:M" or blocks "RxC".
    distribution: "global", "uniform" or "erk".
    masked_decay: SR-STE's lambda_W >= 0: g <- g + lambda_W (1 - mask) w on the dense
      weights, pulling the removed ones toward 0 (Zhou et al. 2021 use 2e-4).
    mask: which leaves are sparsified (default: kernels, ndim >= 2).
  """
  sparsity = patterns.check_sparsity(sparsity, pattern)
  _check_window(begin_step, end_step)
  _checks.check_range("masked_decay", masked_decay, lower=0.0)
  parsed = patterns.parse_pattern(pattern)
  if distribution not in patterns.DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {list(patterns.DISTRIBUTIONS)}; got {distribution!r}.")

  def forward_fn(dense, step):
    s_t = cubic_sparsity(step, sparsity, begin_step, end_step)
    leaves, treedef = jax.tree.flatten(dense)
    chosen = masking.mask_leaves(mask, dense)
    if parsed.kind != "unstructured":
      scores = jax.tree.unflatten(treedef, [jnp.abs(w) for w in leaves])
      keep = patterns.select(scores, sparsity, pattern=parsed, distribution=distribution, mask=mask,
                             fraction=s_t / sparsity if sparsity > 0 else 0.0)
      return jax.tree.map(lambda w, m: jnp.where(m, w, jnp.zeros_like(w)), dense, keep)
    picked = [i for i, c in enumerate(chosen) if c]
    out = list(leaves)
    targets = _layer_targets(dense, sparsity, distribution, mask)
    for group in _groups(picked, distribution):
      layer_s = s_t if distribution == "global" else s_t / max(sparsity, 1e-12) * targets[group[0]]
      size = sum(leaves[i].size for i in group)
      keep_count = jnp.round((1.0 - layer_s) * size).astype(jnp.int32)
      for i, m in zip(group, _unstructured_keep(leaves, group, keep_count)):
        out[i] = jnp.where(m, leaves[i], jnp.zeros_like(leaves[i]))
    return jax.tree.unflatten(treedef, out)

  gradient_fn = None
  if masked_decay > 0:
    def gradient_fn(grads, dense, params):
      chosen = masking.mask_leaves(mask, params)
      treedef: Any = jax.tree.structure(params)
      return jax.tree.unflatten(treedef, [
          g + masked_decay * jnp.where(p == 0, w, jnp.zeros_like(w)).astype(g.dtype) if c else g
          for g, w, p, c in zip(treedef.flatten_up_to(grads), treedef.flatten_up_to(dense), jax.tree.leaves(params),
                                chosen)])

  return straight_through(optimizer, forward_fn, gradient_fn)


def prox_ste(
    optimizer: optax.GradientTransformation,
    penalty: str,
    sparsity: float,
    *,
    end_step: int,
    begin_step: int = 0,
    distribution: str = "global",
    rescale: bool = True,
    shape_scale: str = "cut",
    mask: masking.Mask = "weights_only",
    **shape: Any,
) -> optax.GradientTransformation:
  """Prox-STE: the forward is the exact prox of `penalty` at the strength that keeps the target count.

  For each group (all selected leaves for "global", each leaf otherwise) with kept
  count k_t = round((1 - s_t) n): the support is exactly the k_t largest ``|w|`` (ties
  by position); cut = the (k_t + 1)-th largest ``|w|``; tau solves T(tau) = cut for the
  penalty's zero threshold T (bisection, the upper end); forward = prox(w, tau) on the
  support, 0 elsewhere. A continuous map (l1, SCAD, MCP, ...) sends ``|w|`` = cut to 0,
  so when weights tie across the cut the nonzero count is below k_t (at most k_t
  always; exactly k_t unless the k_t-th and (k_t + 1)-th magnitudes are equal).

  Args:
    optimizer: the optax optimizer of the dense weights.
    penalty: a registered penalty with a scalar zero threshold ("scad", "mcp", "tl1",
      "log_sum", "l1", "l0", ...).
    sparsity: final fraction removed, in [0, 1).
    end_step, begin_step: the cubic ramp's window.
    distribution: "global", "uniform" or "erk".
    rescale: multiply each leaf's forward by the L2 norm of its kept dense weights over
      the L2 norm of the forward (ST-3's rescaling: the kept weights keep their dense norm). On by default: without it the
      shrinkage costs 0.7 (90 %) to 1.5 (99 %) points with SCAD on the Fashion-MNIST
      MLP (docs/sparse_training.md).
    mask: which leaves are sparsified (default: kernels, ndim >= 2).
    shape_scale: how magnitude shape parameters not given (TL1's a, SCAD's and MCP's
      lam, log-sum's eps, ...) are set at each step: "cut" (default) equal to the cut,
      so SCAD and MCP run at tau = 1 with lam = the threshold (a continuous map: soft
      up to 2 lam for SCAD, firm up to gamma lam for MCP, identity beyond); "mean" the
      registry's relative default times the mean kept ``|w|`` (the controller's
      ``relative_shape``; for SCAD/MCP this puts tau in the nonconvex regime, where the
      map jumps like a hard threshold).
    **shape: the penalty's shape parameters (absolute values).
  """
  _checks.check_range("sparsity", sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _check_window(begin_step, end_step)
  if distribution not in patterns.DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {list(patterns.DISTRIBUTIONS)}; got {distribution!r}.")
  if not isinstance(penalty, str):
    raise _checks.ArgumentTypeError(f"penalty must be a registered penalty name; got {penalty!r}.")
  record = _registry.get(penalty)
  threshold = _numerics.threshold_or_raise(penalty, "prox_ste needs a penalty whose prox zeroes |w| <= T(tau)")
  if shape_scale not in ("cut", "mean"):
    raise ValueError(f"shape_scale must be 'cut' or 'mean'; got {shape_scale!r}.")
  relative = {p.name: (1.0 if shape_scale == "cut" else p.relative) for p in record.shape_params
              if p.relative is not None and p.name not in shape}
  fixed_shape = dict(shape)
  record.check_shape(fixed_shape)

  def forward_group(leaves: list[jax.Array], keep: jax.Array) -> list[jax.Array]:
    kept_masks = patterns.top_k_magnitude_masks(leaves, keep)  # exactly `keep` (ties by position)
    cut = kth_largest_magnitude(leaves, keep + 1).astype(jnp.float32)  # T(tau) = cut: the prox zeroes |w| <= cut
    kept_sum = sum(jnp.sum(jnp.where(m, jnp.abs(w), 0.0)).astype(jnp.float32) for w, m in zip(leaves, kept_masks))
    scale = cut if shape_scale == "cut" else kept_sum / jnp.maximum(keep.astype(jnp.float32), 1.0)
    scale = jnp.maximum(scale, jnp.finfo(jnp.float32).tiny)  # a dense layer (cut 0) is returned as is below
    step_shape = {**fixed_shape, **{name: factor * scale for name, factor in relative.items()}}
    tau = _numerics.bisect_increasing(lambda log_tau: threshold(jnp.exp(log_tau), **step_shape), cut,
                                      jnp.asarray(-60.0, jnp.float32), jnp.asarray(20.0, jnp.float32), 60, upper=True)
    out = []
    for w, m in zip(leaves, kept_masks):
      shrunk = jnp.where(m, record.prox(w, jnp.exp(tau).astype(jnp.float32), **step_shape).astype(w.dtype),
                         jnp.zeros_like(w))
      if rescale:
        ratio = jnp.linalg.norm(jnp.where(m, w, 0.0)) / jnp.maximum(jnp.linalg.norm(shrunk), 1e-30)
        shrunk = shrunk * ratio.astype(w.dtype)
      out.append(jnp.where(keep > 0, shrunk, jnp.zeros_like(w)))
    return out

  def forward_fn(dense, step):
    s_t = cubic_sparsity(step, sparsity, begin_step, end_step)
    leaves, treedef = jax.tree.flatten(dense)
    chosen = masking.mask_leaves(mask, dense)
    targets = _layer_targets(dense, sparsity, distribution, mask)
    picked = [i for i, c in enumerate(chosen) if c]
    out = list(leaves)
    for group in _groups(picked, distribution):
      layer_s = s_t if distribution == "global" else s_t / max(sparsity, 1e-12) * targets[group[0]]
      size = sum(leaves[i].size for i in group)
      keep = jnp.round((1.0 - layer_s) * size).astype(jnp.int32)
      for i, f in zip(group, forward_group([leaves[i] for i in group], keep)):
        out[i] = jnp.where(keep >= size, leaves[i], f)
    return jax.tree.unflatten(treedef, out)

  return straight_through(optimizer, forward_fn)


def soft_threshold_ste(optimizer: optax.GradientTransformation, sparsity: float, *, end_step: int,
                       rescale: bool = True, **kwargs: Any) -> optax.GradientTransformation:
  """ST-3-style training: `prox_ste` with l1 (soft threshold at the k-th magnitude), rescaled by default."""
  return prox_ste(optimizer, "l1", sparsity, end_step=end_step, rescale=rescale, **kwargs)


# The ramp of the one-line call with straight_through=True (`optimizers.sgd(..., total_steps=T,
# straight_through=True)`), as fractions of the run: GMP's window on the frontier.
RAMP_FRACTIONS = (0.1, 0.6)


def for_run(optimizer: optax.GradientTransformation, penalty: str, sparsity: float, total_steps: int,
            mask: masking.Mask = "weights_only", **shape: Any) -> optax.GradientTransformation:
  """`prox_ste` on the schedule of a run of `total_steps` steps: the cubic ramp over [0.1 T, 0.6 T]."""
  _checks.check_int("total_steps", total_steps, 1)
  begin, end = (_hyper.steps_of_run(f, total_steps) for f in RAMP_FRACTIONS)
  return prox_ste(optimizer, penalty, sparsity, begin_step=begin, end_step=end, mask=mask, **shape)
