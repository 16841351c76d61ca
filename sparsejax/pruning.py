"""Magnitude-pruning baselines as optax transforms, and exact O(n) magnitude selection.

The baselines a sparsity method has to beat, in the same trainer and with the same
schedule as the regularisers:

* `gradual_magnitude_pruning` (GMP; Zhu & Gupta 2017, "To prune, or not to prune"): the
  sparsity ramps from `initial_sparsity` to `target_sparsity` along the cubic schedule
  s_t = s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3; every `frequency` steps the
  smallest-magnitude kernel weights are masked (globally over all regularised leaves,
  or per layer), and the mask is held between updates.
* `fixed_mask`: training with a given binary mask (fine-tuning after one-shot pruning,
  random pruning, or retraining the support a penalty found: `support_mask`).
* `one_shot_magnitude_mask` and `random_mask`: the masks of one-shot magnitude pruning
  and of random pruning at given per-layer densities (a sanity floor).
* `sparsify_then_retrain`: a penalty finds the support, then the surviving weights are
  retrained without shrinkage inside that frozen support.

Every transform is placed *after* the optimizer, like the proximal steps: it turns the
optimizer's proposal p + u into (p + u) * mask, so masked weights are exactly zero
after every step whatever momentum or Adam state the optimizer carries.

Selection is exact and linear (`magnitudes.kth_largest_magnitude`: counting passes over
the bit patterns of ``|w|``, no sort and no `top_k`). In GMP it runs only on the steps
that update the mask, under `lax.cond`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import _checks, masking, patterns
from sparsejax.magnitudes import kth_largest_magnitude

__all__ = [
    "cubic_sparsity", "MaskState", "gradual_magnitude_pruning", "SaliencyPruningState", "gradual_saliency_pruning", "fixed_mask",
    "one_shot_magnitude_mask", "one_shot_mask", "SCORES", "random_mask", "support_mask", "apply_mask", "mask_density",
    "schedule_total_steps", "TwoPhaseState", "sparsify_then_retrain",
]

Mask = Any


def _selected(mask: Mask, params: Any) -> list[bool]:
  """One bool per leaf: which leaves are pruned (default: kernels, ndim >= 2)."""
  return masking.mask_leaves("weights_only" if mask is None else mask, params)


def cubic_sparsity(step: chex.Numeric, target_sparsity: float, begin_step: int, end_step: int,
                   initial_sparsity: float = 0.0) -> jax.Array:
  """Zhu & Gupta's schedule: s_f + (s_i - s_f)(1 - (t - t_0)/(t_1 - t_0))^3, clipped to [t_0, t_1].

  Sparsities lie in [0, 1] and 0 <= begin_step <= end_step (checked where concrete).
  """
  _checks.check_range("target_sparsity", target_sparsity, lower=0.0, upper=1.0)
  _checks.check_range("initial_sparsity", initial_sparsity, lower=0.0, upper=1.0)
  if _checks.is_concrete(begin_step) and _checks.is_concrete(end_step):
    _checks.check_int("begin_step", begin_step, 0)
    _checks.check_int("end_step", end_step, int(begin_step), f"an int >= begin_step={int(begin_step)}")
  span = jnp.maximum(jnp.asarray(end_step - begin_step, jnp.float32), 1.0)
  progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / span, 0.0, 1.0)
  progress = jnp.where(jnp.asarray(step) >= end_step, 1.0, progress)  # begin_step == end_step: the target at once
  return target_sparsity + (initial_sparsity - target_sparsity) * (1.0 - progress) ** 3


# ------------------------------------------------------------- masks


def _keep_largest(leaves: list[jax.Array], keep: chex.Numeric) -> list[jax.Array]:
  """Boolean masks keeping the `keep` largest ``|w|`` over `leaves` (ties at the threshold kept)."""
  threshold = kth_largest_magnitude(leaves, jnp.maximum(keep, 1))
  return [jnp.where(keep > 0, jnp.abs(leaf) >= threshold.astype(leaf.dtype), False) for leaf in leaves]


def one_shot_magnitude_mask(params: Any, sparsity: float, scope: str = "global", mask: Mask = None) -> Any:
  """Boolean mask pytree keeping the largest-magnitude (1 - sparsity) of the regularised weights.

  Args:
    params: the trained parameters.
    sparsity: fraction of the regularised weights to remove, in [0, 1).
    scope: "global" (one threshold over all regularised leaves) or "layer" (the same
      fraction in every leaf).
    mask: which leaves are pruned (default: kernels); other leaves get True.
  """
  _checks.check_range("sparsity", sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _check_scope(scope)
  leaves, treedef = jax.tree.flatten(params)
  chosen = _selected(mask, params)
  picked = [jnp.asarray(leaf) for leaf, c in zip(leaves, chosen) if c]
  if scope == "global":
    total = sum(p.size for p in picked)
    kept = iter(_keep_largest(picked, int(round((1.0 - sparsity) * total))))
  else:
    kept = iter([_keep_largest([p], int(round((1.0 - sparsity) * p.size)))[0] for p in picked])
  return jax.tree.unflatten(treedef, [next(kept) if c else jnp.ones(jnp.shape(leaf), bool)
                                      for leaf, c in zip(leaves, chosen)])


SCORES = ("magnitude", "saliency")


def one_shot_mask(params: Any, sparsity: float, *, score: str = "magnitude", grads: Any = None,
                  pattern: str = "unstructured", distribution: str = "global", mask: Mask = None) -> Any:
  """Boolean mask pytree of one-shot pruning with any score, pattern and layer distribution; exact counts.

  Args:
    params: the trained parameters.
    sparsity: fraction of the regularised weights removed, in [0, 1) (for "N:M" it
      must be 1 - N/M or 0: the pattern fixes it).
    score: "magnitude" (``|w|``) or "saliency" (``|w * g|``, needs `grads`, e.g. the
      mean gradient over some calibration batches; Molchanov et al. 2017).
    grads: gradients like params (for "saliency").
    pattern: "unstructured", "N:M" (e.g. "2:4") or blocks "RxC" (`sparsejax.patterns`).
    distribution: "global", "uniform" or "erk" (`patterns.layer_sparsities`); N:M
      keeps N of every M in every layer whatever the distribution.
    mask: which leaves are pruned (default: kernels); other leaves get True.

  Returns:
    A pytree of bools like params keeping exactly round((1 - sparsity) n) weights
    (per layer for "uniform"/"erk", over all for "global"), N of every M, or whole blocks.
  """
  scores = _scores(params, score, grads)
  sparsity = patterns.check_sparsity(sparsity, pattern, "sparsity")
  return patterns.select(scores, sparsity, pattern=pattern, distribution=distribution,
                         mask="weights_only" if mask is None else mask)


def _scores(params: Any, score: str, grads: Any) -> Any:
  if score not in SCORES:
    raise ValueError(f"score must be one of {list(SCORES)}; got {score!r}.")
  if score == "saliency":
    if grads is None:
      raise ValueError("score='saliency' needs grads (gradients like params, e.g. averaged over calibration batches).")
    return patterns.saliency(params, grads)
  return jax.tree.map(jnp.abs, params)


def random_mask(params: Any, densities: Any, seed: int = 0, mask: Mask = None) -> Any:
  """Boolean mask pytree keeping a uniformly random `density` fraction of each regularised leaf.

  `densities` is one fraction for every regularised leaf, or a pytree like params with
  one per leaf (e.g. `mask_density(one_shot_mask)` to match another method per layer).
  """
  leaves, treedef = jax.tree.flatten(params)
  treedef_any: Any = treedef
  chosen = _selected(mask, params)
  if isinstance(densities, (int, float)):
    per_leaf = [float(densities)] * len(leaves)
  else:
    per_leaf = treedef_any.flatten_up_to(densities)
  rng = np.random.default_rng(seed)
  out = []
  for leaf, c, d in zip(leaves, chosen, per_leaf):
    if not c:
      out.append(jnp.ones(jnp.shape(leaf), bool))
      continue
    _checks.check_range("density", d, lower=0.0, upper=1.0)
    size = int(np.size(leaf))
    keep = np.zeros(size, bool)
    keep[rng.permutation(size)[:int(round(float(d) * size))]] = True
    out.append(jnp.asarray(keep.reshape(np.shape(leaf))))
  return jax.tree.unflatten(treedef, out)


def support_mask(params: Any, mask: Mask = None) -> Any:
  """True where a regularised weight is nonzero (the support a penalty found); True on other leaves."""
  leaves, treedef = jax.tree.flatten(params)
  chosen = _selected(mask, params)
  return jax.tree.unflatten(treedef, [jnp.asarray(leaf) != 0 if c else jnp.ones(jnp.shape(leaf), bool)
                                      for leaf, c in zip(leaves, chosen)])


def mask_density(binary_mask: Any) -> Any:
  """Fraction of True entries per leaf (a pytree of floats)."""
  return jax.tree.map(lambda m: float(np.mean(np.asarray(m))), binary_mask)


def apply_mask(params: Any, binary_mask: Any) -> Any:
  """params * mask (exact zeros where the mask is False); the mask has params' leaves and shapes."""
  _check_mask_structure(binary_mask, params)
  return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, binary_mask)


def _leaf_mask(mask: Mask) -> Mask:
  return "weights_only" if mask is None else mask


def _check_scope(scope: str) -> None:
  if scope not in ("global", "layer"):
    raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}.")


# ------------------------------------------------------------- transforms


class MaskState(NamedTuple):
  """State of the masking transforms: the step count and the current binary mask (a params-like pytree)."""
  count: chex.Array
  mask: Any


def _masked_updates(updates: Any, params: Any, binary_mask: Any) -> Any:
  """Updates that land params on (params + updates) * mask."""
  leaves_p = jax.tree.leaves(params)
  treedef: Any = jax.tree.structure(params)
  leaves_u = treedef.flatten_up_to(updates)
  out = [(jnp.where(m, p + u, jnp.zeros_like(p)) - p).astype(jnp.result_type(u))
         for p, u, m in zip(leaves_p, leaves_u, jax.tree.leaves(binary_mask))]
  return jax.tree.unflatten(treedef, out)


def fixed_mask(binary_mask: Any) -> optax.GradientTransformation:
  """Keeps training inside a fixed support: params_new = (params + u) * mask.

  Place after the optimizer: `optax.chain(optax.sgd(lr, momentum=0.9), fixed_mask(m))`.
  Masked weights are exactly zero after every step (also when they were nonzero before).
  """
  def init_fn(params):
    _check_mask_structure(binary_mask, params)
    # stored in the structure of params (e.g. flax.nnx's Variable-wrapped state)
    return MaskState(jnp.zeros([], jnp.int32), jax.tree.unflatten(
        jax.tree.structure(params), [jnp.asarray(m, bool) for m in jax.tree.leaves(binary_mask)]))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "fixed_mask")
    return _masked_updates(updates, params, state.mask), MaskState(optax.safe_increment(state.count), state.mask)

  return optax.GradientTransformation(init_fn, update_fn)


def _check_mask_structure(binary_mask: Any, params: Any) -> None:
  # Leaves in flatten order: the same nesting may come wrapped differently (plain dicts,
  # or flax.nnx State with Variable nodes).
  if len(jax.tree.leaves(binary_mask)) != len(jax.tree.leaves(params)):
    raise ValueError("binary_mask must have the structure of params (one boolean array per leaf); got "
                     f"{jax.tree.structure(binary_mask)} for params {jax.tree.structure(params)}.")
  for m, p in zip(jax.tree.leaves(binary_mask), jax.tree.leaves(params)):
    if np.shape(m) != np.shape(p):
      raise ValueError(f"binary_mask has a leaf of shape {np.shape(m)} where params has shape {np.shape(p)}; "
                       "allowed: the same shape as each parameter.")


def gradual_magnitude_pruning(
    target_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    initial_sparsity: float = 0.0,
    scope: str = "global",
    mask: Mask = None,
    *,
    pattern: str = "unstructured",
    distribution: str | None = None,
) -> optax.GradientTransformation:
  """Gradual magnitude pruning (Zhu & Gupta 2017) as a transform placed after the optimizer.

  On steps t in [begin_step, end_step] with (t - begin_step) % frequency == 0 (and at
  end_step), the mask is recomputed to remove the s_t (cubic schedule,
  `cubic_sparsity`) smallest-magnitude regularised weights of the proposal params + u,
  among the weights still unmasked (pruned weights do not regrow); between updates it
  is held. params_new = (params + u) * mask every step.

  Args:
    target_sparsity: final fraction of regularised weights removed, in [0, 1).
    begin_step, end_step: the pruning window (0 <= begin_step <= end_step).
    frequency: steps between mask updates (>= 1).
    initial_sparsity: sparsity at begin_step.
    scope: "global" (one threshold over all regularised leaves) or "layer".
    mask: which leaves are pruned (default: kernels, ndim >= 2); a pytree of bools,
      a callable, or a mask name.
    pattern: "unstructured", "N:M" (e.g. "2:4": target_sparsity must be 1 - N/M; the
      kept count per group of M falls from M to N along the schedule) or blocks "RxC"
      (`sparsejax.patterns`). Patterned masks keep exact counts (ties by position).
    distribution: "global", "uniform" or "erk" (`patterns.layer_sparsities`): layer l
      is pruned to s_t / s_f times its own final sparsity. None: from `scope`
      ("layer" is "uniform"). With the default pattern and distribution the mask is
      the threshold of the k-th largest magnitude (linear time; ties kept).

  Returns:
    An optax transform with state `MaskState` (the current mask is `state.mask`).
  """
  init_fn, update_fn = _gradual_pruning(target_sparsity, begin_step, end_step, frequency, initial_sparsity, scope, mask,
                                        pattern, distribution)
  return optax.GradientTransformation(init_fn, update_fn)


def _gradual_pruning(target_sparsity, begin_step, end_step, frequency, initial_sparsity, scope, mask, pattern,
                     distribution):
  """GMP's (init_fn, update_fn); update_fn(updates, state, params, score_leaves=None) ranks by |p + u| or by the scores."""
  _checks.check_range("target_sparsity", target_sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _checks.check_range("initial_sparsity", initial_sparsity, lower=0.0, upper=target_sparsity)
  _checks.check_int("begin_step", begin_step, 0)
  _checks.check_int("end_step", end_step, begin_step)
  _checks.check_int("frequency", frequency, 1)
  _check_scope(scope)
  if patterns.pattern_density(pattern) is not None:  # N:M fixes the sparsity (0: let the pattern decide)
    target_sparsity = patterns.check_sparsity(target_sparsity, pattern, "target_sparsity")
  patterned = patterns.parse_pattern(pattern).kind != "unstructured" or distribution is not None
  distribution = distribution or ("global" if scope == "global" else "uniform")
  if distribution not in patterns.DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {list(patterns.DISTRIBUTIONS)} or None; got {distribution!r}.")

  def init_fn(params):
    leaves = jax.tree.leaves(params)
    chosen = _selected(mask, params)
    if not any(chosen):
      raise ValueError("gradual_magnitude_pruning: the mask selects no parameter leaf to prune.")
    return MaskState(jnp.zeros([], jnp.int32),
                     jax.tree.unflatten(jax.tree.structure(params), [jnp.ones(jnp.shape(l), bool) for l in leaves]))

  def new_patterned_mask(score_leaves, mask_leaves_now, treedef, sparsity):
    scores = [jnp.where(m, s, -jnp.inf) for s, m in zip(score_leaves, mask_leaves_now)]
    scores_tree = jax.tree.unflatten(treedef, scores)
    target = jnp.asarray(target_sparsity, jnp.float32)  # an array under optax.inject_hyperparams
    fraction = jnp.where(target > 0, sparsity / jnp.maximum(target, 1e-12), 0.0)
    kept = patterns.select(scores_tree, target_sparsity, pattern=pattern, distribution=distribution,
                           mask=_leaf_mask(mask), fraction=fraction)
    return [k & m for k, m in zip(treedef.flatten_up_to(kept), mask_leaves_now)]

  def new_mask(proposal_leaves, mask_leaves_now, chosen, sparsity):
    picked = [jnp.where(m, p, jnp.zeros_like(p)) for p, m, c in zip(proposal_leaves, mask_leaves_now, chosen) if c]
    if scope == "global":
      total = sum(p.size for p in picked)
      keep = jnp.round((1.0 - sparsity) * total).astype(jnp.int32)
      kept = _keep_largest(picked, keep)
    else:
      kept = [_keep_largest([p], jnp.round((1.0 - sparsity) * p.size).astype(jnp.int32))[0] for p in picked]
    kept = iter(kept)
    return [(next(kept) & m) if c else m for m, c in zip(mask_leaves_now, chosen)]

  def update_fn(updates, state, params=None, score_leaves=None):
    _checks.require_params(params, "gradual_magnitude_pruning")
    leaves_p, treedef = jax.tree.flatten(params)
    leaves_u = treedef.flatten_up_to(updates)
    leaves_m = treedef.flatten_up_to(state.mask)
    chosen = _selected(mask, params)
    proposal = [p + u for p, u in zip(leaves_p, leaves_u)]
    t = state.count
    in_window = (t >= begin_step) & (t <= end_step)
    due = in_window & (((t - begin_step) % frequency == 0) | (t == end_step))
    sparsity = cubic_sparsity(t, target_sparsity, begin_step, end_step, initial_sparsity)
    if score_leaves is not None or patterned:
      scores = [jnp.abs(p) for p in proposal] if score_leaves is None else score_leaves
      leaves_m = lax.cond(due, lambda: new_patterned_mask(scores, leaves_m, treedef, sparsity), lambda: list(leaves_m))
    else:
      leaves_m = lax.cond(due, lambda: new_mask(proposal, leaves_m, chosen, sparsity), lambda: list(leaves_m))
    binary_mask = jax.tree.unflatten(treedef, leaves_m)
    return (_masked_updates(updates, params, binary_mask),
            MaskState(optax.safe_increment(state.count), binary_mask))

  return init_fn, update_fn


class SaliencyPruningState(NamedTuple):
  """State of `gradual_saliency_pruning`: the optimizer's state and GMP's `MaskState`."""
  inner_state: Any
  mask_state: MaskState


def gradual_saliency_pruning(
    optimizer: optax.GradientTransformation,
    target_sparsity: float,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    *,
    initial_sparsity: float = 0.0,
    pattern: str = "unstructured",
    distribution: str = "global",
    mask: Mask = None,
) -> optax.GradientTransformation:
  """GMP ranked by saliency ``|w * g|`` instead of ``|w|``, around `optimizer` (it takes raw gradients).

  The same schedule, window, patterns, distributions and held mask as
  `gradual_magnitude_pruning`; on the steps that update the mask the weights kept are
  those with the largest first-order saliency ``|w_t * g_t|`` (the loss change of
  removing w to first order, Molchanov et al. 2017; g_t this step's gradient) among the
  weights still kept, with exact counts (`patterns.select`). The saliency needs the
  gradient, which a transform chained after the optimizer does not see, so this one
  wraps the optimizer.

  Returns:
    A `GradientTransformation` with state `SaliencyPruningState`.
  """
  _checks.check_range("target_sparsity", target_sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _checks.check_range("initial_sparsity", initial_sparsity, lower=0.0, upper=target_sparsity)
  _checks.check_int("begin_step", begin_step, 0)
  _checks.check_int("end_step", end_step, begin_step)
  _checks.check_int("frequency", frequency, 1)
  if patterns.pattern_density(pattern) is not None:  # N:M fixes the sparsity (0: let the pattern decide)
    target_sparsity = patterns.check_sparsity(target_sparsity, pattern, "target_sparsity")
  if distribution not in patterns.DISTRIBUTIONS:
    raise ValueError(f"distribution must be one of {list(patterns.DISTRIBUTIONS)}; got {distribution!r}.")
  mask_init, mask_update = _gradual_pruning(target_sparsity, begin_step, end_step, frequency, initial_sparsity,
                                            "global", mask, pattern, distribution)

  def init_fn(params):
    return SaliencyPruningState(optimizer.init(params), mask_init(params))

  def update_fn(grads, state, params=None):
    _checks.require_params(params, "gradual_saliency_pruning")
    updates, inner_state = optimizer.update(grads, state.inner_state, params)
    treedef: Any = jax.tree.structure(params)
    scores = [jnp.abs(p * g) for p, g in zip(jax.tree.leaves(params), treedef.flatten_up_to(grads))]
    updates, mask_state = mask_update(updates, state.mask_state, params, scores)
    return updates, SaliencyPruningState(inner_state, mask_state)

  return optax.GradientTransformation(init_fn, update_fn)


def schedule_total_steps(epochs: int, num_examples: int, batch_size: int) -> int:
  """Optimizer steps of `train.fit` for a run: epochs x ceil(num_examples / batch_size) (each an int >= 1)."""
  for name, value in (("epochs", epochs), ("num_examples", num_examples), ("batch_size", batch_size)):
    _checks.check_int(name, value, 1)
  return int(epochs) * -(-int(num_examples) // int(batch_size))



class TwoPhaseState(NamedTuple):
  """State of `sparsify_then_retrain`: step count, both inner states, and the frozen support."""
  count: chex.Array
  sparsify_state: Any
  retrain_state: Any
  mask: Any


def sparsify_then_retrain(sparsify: optax.GradientTransformation, retrain: optax.GradientTransformation,
                          switch_step: int, mask: Mask = None,
                          support_fn: Callable[[Any], Any] | None = None) -> optax.GradientTransformation:
  """Find a support with a penalty, then retrain the surviving weights without shrinkage.

  Steps t < switch_step use `sparsify` (e.g. `optax.chain(optax.sgd(lr), nnz_controller(...))`
  or any proximal chain). At t = switch_step the support is frozen: the nonzero
  regularised weights (`support_mask`; leaves outside `mask` stay free). Steps
  t >= switch_step use `retrain` (e.g. the same optimizer without the penalty) with
  params_new = (params + u) * support, so the zero set never changes again while the
  kept weights lose the shrinkage bias the penalty put on them (a "debiasing" phase).

  Args:
    sparsify: the transform of the first phase (must leave exact zeros).
    retrain: the transform of the second phase (typically the plain optimizer).
    switch_step: the first step of the second phase (>= 0).
    mask: which leaves have their support frozen (default: kernels, ndim >= 2).
    support_fn: params -> binary mask computed at the switch (jit-traceable); default
      `support_mask(params, mask)`. One-shot magnitude pruning with fine-tuning is
      `sparsify_then_retrain(opt, opt, switch, support_fn=lambda p:
      one_shot_magnitude_mask(p, sparsity))`.
  """
  if support_fn is None:
    support_fn = lambda params: support_mask(params, mask)  # noqa: E731
  _checks.check_int("switch_step", switch_step, 0)

  def init_fn(params):
    return TwoPhaseState(jnp.zeros([], jnp.int32), sparsify.init(params), retrain.init(params),
                         jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "sparsify_then_retrain")

    def first():
      new_updates, sparsify_state = sparsify.update(updates, state.sparsify_state, params)
      new_updates = jax.tree.map(lambda n, u: n.astype(jnp.result_type(u)), new_updates, updates)
      return new_updates, sparsify_state, state.retrain_state, state.mask

    def second():
      support = jax.lax.cond(state.count == switch_step, lambda: support_fn(params), lambda: state.mask)
      new_updates, retrain_state = retrain.update(updates, state.retrain_state, params)
      new_updates = jax.tree.map(lambda n, u: n.astype(jnp.result_type(u)), new_updates, updates)
      return _masked_updates(new_updates, params, support), state.sparsify_state, retrain_state, support

    new_updates, sparsify_state, retrain_state, support = jax.lax.cond(state.count < switch_step, first, second)
    return new_updates, TwoPhaseState(optax.safe_increment(state.count), sparsify_state, retrain_state, support)

  return optax.GradientTransformation(init_fn, update_fn)
