"""Sparse training with masks that change during the run: RigL, SET and AC/DC.

Each method wraps an optax optimizer and holds a binary mask over the regularised
leaves (kernels by default) in its state. Every step:

  1. the gradient is masked, g <- g * mask, before the optimizer sees it (so momentum
     and Adam moments of removed weights are not fed);
  2. the optimizer proposes p + u;
  3. on the steps that change the mask, the new mask is chosen from the proposal;
  4. params_new = (p + u) * mask, and weights that enter the mask start at exactly 0,
     with their optimizer state (momentum, Adam moments) zeroed.

So the kept weights are exactly the mask's and the count of kept weights is exact at
every step (per layer for "uniform"/"erk", over all layers for "global"). The wrapped
transform takes raw gradients: ``tx = dst.rigl(optax.sgd(lr, momentum=0.9), 0.9,
end_step=...)`` replaces the optimizer in any training loop (`train.fit`, an
`nnx.Optimizer`, a hand-written step).

* **Dynamic sparse training** (`dynamic_sparse`, `rigl`, `sparse_evolutionary`):
  sparse from the first step (a random mask at the layer densities of `distribution`,
  "erk" by default); every `update_every` steps until `end_step`, in every layer the
  fraction f_t of its kept weights with the smallest ``|w|`` is dropped and as many
  are grown where they are not kept: by largest ``|g|`` of the dense gradient (RigL;
  Evci et al. 2020, "Rigging the lottery") or uniformly at random (SET; Mocanu et al.
  2018). f_t = (f_0 / 2)(1 + cos(pi (t - begin) / (end - begin))) ("cosine", RigL) or
  f_0 ("constant", SET).
* **AC/DC** (`ac_dc`; Peste et al. 2021, "AC/DC: alternating compressed/decompressed
  training"): a dense warm-up, then sparse and dense phases alternating (a sparse phase
  starts with the top-k magnitude mask of the weights and holds it; a dense phase lets
  every weight train again, the removed ones from 0), and a final sparse phase to the
  end. Optionally the optimizer state is reset at every phase flip.

The wrappers take raw gradients; to change a hyperparameter during training inject it
into the inner optimizer (``dst.rigl(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1),
...)``). The first forward pass sees the params as given (dense, unless the caller masks them:
`pruning.apply_mask(params, dst.current_mask(opt_state))`); every later one is sparse.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax
from jax import lax

from sparsejax import _checks, masking, patterns
from sparsejax.pruning import MaskState

__all__ = ["DynamicSparseState", "dynamic_sparse", "rigl", "sparse_evolutionary", "drop_fraction",
           "ACDCState", "ac_dc", "ac_dc_phase", "current_mask"]

REGROW = ("gradient", "random")
DROP_SCHEDULES = ("cosine", "constant")


class DynamicSparseState(NamedTuple):
  """State of `dynamic_sparse`: step count, the optimizer's state, the mask (a params-like pytree) and a PRNG key."""
  count: chex.Array
  inner_state: Any
  mask: Any
  key: chex.Array


class ACDCState(NamedTuple):
  """State of `ac_dc`: step count, the optimizer's state and the mask (all True in dense phases)."""
  count: chex.Array
  inner_state: Any
  mask: Any


def current_mask(opt_state: Any) -> Any:
  """The mask held by the one `DynamicSparseState`/`ACDCState`/`pruning.MaskState` inside an optimizer state."""
  kinds = (DynamicSparseState, ACDCState, MaskState)
  return _checks.one_state(opt_state, kinds, "mask-holding state (DynamicSparseState, ACDCState or MaskState)").mask


def drop_fraction(step: chex.Numeric, initial_fraction: float, begin_step: int, end_step: int,
                  schedule: str = "cosine") -> jax.Array:
  """f_t: (f_0 / 2)(1 + cos(pi (t - begin) / (end - begin))) for "cosine", f_0 for "constant"; 0 outside [begin, end)."""
  span = max(end_step - begin_step, 1)
  progress = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / span, 0.0, 1.0)
  value = (initial_fraction * 0.5 * (1.0 + jnp.cos(math.pi * progress)) if schedule == "cosine"
           else jnp.asarray(initial_fraction, jnp.float32))
  inside = (jnp.asarray(step) >= begin_step) & (jnp.asarray(step) < end_step)
  return jnp.where(inside, value, 0.0)


def _chosen(mask: masking.Mask, params: Any) -> list[bool]:
  return masking.mask_leaves(mask, params)


def _masked_gradients(grads: Any, binary_mask: Any, treedef: Any) -> Any:
  g_leaves = treedef.flatten_up_to(grads)
  m_leaves = treedef.flatten_up_to(binary_mask)
  return jax.tree.unflatten(treedef, [jnp.where(m, g, jnp.zeros_like(g)) for g, m in zip(g_leaves, m_leaves)])


def _landing_updates(params: Any, updates: Any, binary_mask: Any, zero_mask: Any, treedef: Any) -> Any:
  """Updates landing params on (p + u) where `binary_mask` and `zero_mask`, else exactly 0."""
  out = []
  for p, u, m, z in zip(jax.tree.leaves(params), treedef.flatten_up_to(updates), treedef.flatten_up_to(binary_mask),
                        treedef.flatten_up_to(zero_mask)):
    out.append((jnp.where(m & z, p + u, jnp.zeros_like(p)) - p).astype(jnp.result_type(u)))
  return jax.tree.unflatten(treedef, out)


def _groups(leaves: list[jax.Array], global_: bool) -> list[list[int]]:
  return [list(range(len(leaves)))] if global_ else [[i] for i in range(len(leaves))]


def _flat(leaves: list[jax.Array], group: list[int]) -> jax.Array:
  return jnp.concatenate([leaves[i].ravel().astype(jnp.float32) for i in group])


def _split(flat: jax.Array, leaves: list[jax.Array], group: list[int]) -> list[jax.Array]:
  out, start = [], 0
  for i in group:
    out.append(flat[start:start + leaves[i].size].reshape(leaves[i].shape))
    start += leaves[i].size
  return out


def _drop_and_grow(weights: list[jax.Array], grow_scores: list[jax.Array], masks: list[jax.Array],
                   fraction: jax.Array, global_: bool) -> list[jax.Array]:
  """Per group: drop round(f * kept) smallest |w| among kept, grow as many of the highest scores elsewhere."""
  new_masks: list[jax.Array] = [jnp.zeros(()) for _ in masks]
  for group in _groups(masks, global_):
    mask = _flat(masks, group) > 0
    kept = jnp.sum(mask, dtype=jnp.int32)
    moved = jnp.round(fraction * kept).astype(jnp.int32)
    survivors = patterns.top_k_mask(jnp.where(mask, jnp.abs(_flat(weights, group)), -jnp.inf), kept - moved)
    grown = patterns.top_k_mask(jnp.where(survivors, -jnp.inf, _flat(grow_scores, group)), moved)
    for i, part in zip(group, _split(survivors | grown, masks, group)):
      new_masks[i] = part
  return new_masks


def dynamic_sparse(
    optimizer: optax.GradientTransformation,
    sparsity: float,
    *,
    end_step: int,
    regrow: str = "gradient",
    distribution: str = "erk",
    update_every: int = 100,
    initial_drop_fraction: float = 0.3,
    drop_schedule: str = "cosine",
    begin_step: int = 0,
    mask: masking.Mask = "weights_only",
    seed: int = 0,
) -> optax.GradientTransformation:
  """Dynamic sparse training (RigL or SET) around `optimizer`; takes raw gradients.

  Args:
    optimizer: the optax optimizer of the kept weights (e.g. `optax.sgd(lr, momentum=0.9)`).
    sparsity: fraction of the regularised weights removed, in [0, 1), from the first step.
    end_step: the last mask update is before this step (RigL: 75 % of the run), > begin_step.
    regrow: "gradient" (RigL: largest ``|g|``) or "random" (SET).
    distribution: "erk", "uniform" or "global" (`patterns.layer_sparsities`); with
      "global" drops and growths are ranked over all layers (the total count is exact,
      layers may trade weights).
    update_every: steps between mask updates (>= 1); updates fall on t > begin_step
      with (t - begin_step) % update_every == 0 and t < end_step.
    initial_drop_fraction: f_0 in [0, 1], the fraction of each layer's kept weights moved.
    drop_schedule: "cosine" (RigL) or "constant" (SET).
    begin_step: first step of the update window (>= 0).
    mask: which leaves are sparse (default: kernels, ndim >= 2).
    seed: seed of the initial random mask and of SET's regrowth.

  Returns:
    A `GradientTransformation` with state `DynamicSparseState`.
  """
  _checks.check_range("sparsity", sparsity, lower=0.0, upper=1.0, upper_inclusive=False)
  _checks.check_int("begin_step", begin_step, 0)
  _checks.check_int("end_step", end_step, begin_step + 1, f"an int > begin_step={begin_step}")
  _checks.check_int("update_every", update_every, 1)
  _checks.check_int("seed", seed, 0)
  _checks.check_range("initial_drop_fraction", initial_drop_fraction, lower=0.0, upper=1.0)
  _check_choice("regrow", regrow, REGROW)
  _check_choice("drop_schedule", drop_schedule, DROP_SCHEDULES)
  _check_choice("distribution", distribution, patterns.DISTRIBUTIONS)

  def init_fn(params):
    key, init_key = jax.random.split(jax.random.key(seed))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(init_key, len(leaves))
    random_scores = jax.tree.unflatten(treedef, [jax.random.uniform(k, jnp.shape(p)) for k, p in zip(keys, leaves)])
    binary_mask = patterns.select(random_scores, sparsity, distribution=distribution, mask=mask)
    return DynamicSparseState(jnp.zeros([], jnp.int32), optimizer.init(params), binary_mask, jax.random.key_data(key))

  def update_fn(grads, state, params=None):
    _checks.require_params(params, "dynamic_sparse")
    treedef: Any = jax.tree.structure(params)
    updates, inner_state = optimizer.update(_masked_gradients(grads, state.mask, treedef), state.inner_state, params)
    chosen = _chosen(mask, params)
    t = state.count
    due = (t > begin_step) & ((t - begin_step) % update_every == 0) & (t < end_step)
    key, grow_key = jax.random.split(jax.random.wrap_key_data(state.key))
    old = treedef.flatten_up_to(state.mask)

    def changed_mask():
      proposal = [p + u for p, u in zip(jax.tree.leaves(params), treedef.flatten_up_to(updates))]
      if regrow == "gradient":
        scores = [jnp.abs(g) for g in treedef.flatten_up_to(grads)]
      else:
        scores = [jax.random.uniform(k, jnp.shape(p)) for k, p in zip(jax.random.split(grow_key, len(old)), proposal)]
      picked = [i for i, c in enumerate(chosen) if c]
      fraction = drop_fraction(t, initial_drop_fraction, begin_step, end_step, drop_schedule)
      new = _drop_and_grow([proposal[i] for i in picked], [scores[i] for i in picked], [old[i] for i in picked],
                           fraction, distribution == "global")
      out = list(old)
      for i, m in zip(picked, new):
        out[i] = m
      return out

    new_leaves = lax.cond(due, changed_mask, lambda: list(old))
    new_mask = jax.tree.unflatten(treedef, new_leaves)
    stayed = jax.tree.unflatten(treedef, [n & o for n, o in zip(new_leaves, old)])  # grown weights start at 0
    grown = jax.tree.unflatten(treedef, [n & ~o for n, o in zip(new_leaves, old)])
    # a grown weight starts from a fresh optimizer state too (momentum, Adam moments), as in RigL's reference code
    inner_state = optax.tree_utils.tree_map_params(
        optimizer, lambda s, g: jnp.where(g, jnp.zeros_like(s), s) if jnp.shape(s) == jnp.shape(g) else s,
        inner_state, grown, transform_non_params=lambda s: s)
    return (_landing_updates(params, updates, new_mask, stayed, treedef),
            DynamicSparseState(optax.safe_increment(t), inner_state, new_mask, jax.random.key_data(key)))

  return optax.GradientTransformation(init_fn, update_fn)


def rigl(optimizer: optax.GradientTransformation, sparsity: float, *, end_step: int, **kwargs: Any
         ) -> optax.GradientTransformation:
  """RigL (Evci et al. 2020): `dynamic_sparse` with gradient regrowth, ERK and the cosine drop schedule."""
  return dynamic_sparse(optimizer, sparsity, end_step=end_step, regrow="gradient", **kwargs)


def sparse_evolutionary(optimizer: optax.GradientTransformation, sparsity: float, *, end_step: int,
                        **kwargs: Any) -> optax.GradientTransformation:
  """SET (Mocanu et al. 2018): `dynamic_sparse` with random regrowth and a constant drop fraction."""
  kwargs.setdefault("drop_schedule", "constant")
  return dynamic_sparse(optimizer, sparsity, end_step=end_step, regrow="random", **kwargs)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
  if value not in allowed:
    raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")


# ------------------------------------------------------------- AC/DC


def ac_dc_phase(step: chex.Numeric, warmup_steps: int, phase_steps: int, final_sparse_steps: int,
                total_steps: int) -> jax.Array:
  """True where step t is in a sparse (compressed) phase of AC/DC.

  Dense for t < warmup_steps; sparse for t >= total_steps - final_sparse_steps; between,
  phases of `phase_steps` alternate starting with a sparse one: sparse where
  ((t - warmup_steps) // phase_steps) is even, except a sparse phase that would end at or
  after the final phase's start, which is dense (at least one dense step comes before the
  final sparse phase, whose mask is chosen at its first step).
  """
  t = jnp.asarray(step, jnp.int32)
  final_start = total_steps - final_sparse_steps
  phase = (t - warmup_steps) // phase_steps
  # a sparse phase that would run into the final one is dense, so the final mask is chosen at its start
  alternating = (phase % 2 == 0) & (warmup_steps + (phase + 1) * phase_steps < final_start)
  return (t >= final_start) | ((t >= warmup_steps) & alternating)


def ac_dc(
    optimizer: optax.GradientTransformation,
    sparsity: float,
    *,
    total_steps: int,
    warmup_steps: int | None = None,
    phase_steps: int | None = None,
    final_sparse_steps: int | None = None,
    pattern: str = "unstructured",
    distribution: str = "global",
    reset_optimizer: bool = False,
    mask: masking.Mask = "weights_only",
) -> optax.GradientTransformation:
  """AC/DC (Peste et al. 2021) around `optimizer`: dense warm-up, alternating sparse/dense phases, sparse finish.

  At the first step of every sparse phase the mask is the top-k magnitude selection
  (`patterns.select` with `pattern` and `distribution`) of the proposal p + u, held to
  the phase's end: params_new = (p + u) * mask and gradients of removed weights are
  not fed to the optimizer. Dense phases train every weight (removed ones restart
  from 0). The run ends in a sparse phase, so the final params have exactly the mask.

  Args:
    optimizer: the optax optimizer.
    sparsity: fraction of the regularised weights removed in sparse phases, in [0, 1).
    total_steps: the run's length (>= 1).
    warmup_steps: dense warm-up (default: 10 % of the run).
    phase_steps: length of each alternating phase (default: 5 % of the run, >= 1).
    final_sparse_steps: the final sparse phase (default: 15 % of the run).
    pattern: "unstructured", "N:M" or blocks "RxC" (`sparsejax.patterns`).
    distribution: "global", "uniform" or "erk".
    reset_optimizer: reinitialise the optimizer state at every phase flip.
    mask: which leaves are sparsified (default: kernels, ndim >= 2).

  Returns:
    A `GradientTransformation` with state `ACDCState`.
  """
  _checks.check_int("total_steps", total_steps, 1)
  warmup_steps = int(round(0.1 * total_steps)) if warmup_steps is None else warmup_steps
  phase_steps = max(1, int(round(0.05 * total_steps))) if phase_steps is None else phase_steps
  final_sparse_steps = max(1, int(round(0.15 * total_steps))) if final_sparse_steps is None else final_sparse_steps
  _checks.check_int("warmup_steps", warmup_steps, 0)
  _checks.check_int("phase_steps", phase_steps, 1)
  _checks.check_int("final_sparse_steps", final_sparse_steps, 1)
  if warmup_steps + final_sparse_steps > total_steps:
    raise ValueError(f"warmup_steps + final_sparse_steps must be <= total_steps={total_steps}; got "
                     f"{warmup_steps} + {final_sparse_steps}.")
  sparsity = patterns.check_sparsity(sparsity, pattern)
  _check_choice("distribution", distribution, patterns.DISTRIBUTIONS)

  def sparse_at(t):
    return ac_dc_phase(t, warmup_steps, phase_steps, final_sparse_steps, total_steps)

  def init_fn(params):
    return ACDCState(jnp.zeros([], jnp.int32), optimizer.init(params),
                     jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params))

  def update_fn(grads, state, params=None):
    _checks.require_params(params, "ac_dc")
    treedef: Any = jax.tree.structure(params)
    t = state.count
    sparse_now = sparse_at(t)
    flipped = (t > 0) & (sparse_now != sparse_at(t - 1))
    inner_state = state.inner_state
    if reset_optimizer:
      inner_state = lax.cond(flipped, lambda: optimizer.init(params), lambda: inner_state)
    entering = sparse_now & ((t == 0) | flipped)
    # In a sparse phase the gradient of removed weights is not fed (the mask of this phase
    # is chosen below from the proposal, so on its first step every gradient is used).
    grads_in = lax.cond(sparse_now & ~entering, lambda: _masked_gradients(grads, state.mask, treedef), lambda: grads)
    updates, inner_state = optimizer.update(grads_in, inner_state, params)

    def new_mask():
      proposal = jax.tree.unflatten(treedef, [jnp.abs(p + u) for p, u in zip(jax.tree.leaves(params),
                                                                            treedef.flatten_up_to(updates))])
      return patterns.select(proposal, sparsity, pattern=pattern, distribution=distribution, mask=mask)

    all_true = jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)
    binary_mask = lax.cond(entering, new_mask, lambda: lax.cond(sparse_now, lambda: state.mask, lambda: all_true))
    return (_landing_updates(params, updates, binary_mask, all_true, treedef),
            ACDCState(optax.safe_increment(t), inner_state, binary_mask))

  return optax.GradientTransformation(init_fn, update_fn)
