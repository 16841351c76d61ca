"""Proximal steps as optax `GradientTransformation` objects.

`proximal(prox_fn, strength, learning_rate)` placed after any optax optimizer
turns it into a (stochastic) proximal-gradient method: if the inner optimizer
proposes updates u, the chain's updates become prox_{lr*strength}(params + u) -
params, so `optax.apply_updates` lands on the prox output (exact zeros
included). Ready-made chains reproduce the papers' regularisers: `l1`,
`sparse_group_lasso`, `cges` and `integrated_tl1`; `rvsm` (relaxed variable
splitting, in `sparsejax.rvsm`) is chained before the optimizer instead.

`learning_rate` must be the step size the inner optimizer used (the prox step is
prox_{eta f} for the same eta); both it and `strength` may be optax schedules.

Example:
  >>> import optax, jax.numpy as jnp
  >>> from sparsejax import transforms
  >>> tx = optax.chain(optax.sgd(0.1), transforms.l1(strength=0.2, learning_rate=0.1))
  >>> params = {"kernel": jnp.array([[0.5, -0.001, 0.02]])}
  >>> grads = {"kernel": jnp.array([[0.1, 0.05, -0.3]])}
  >>> updates, _ = tx.update(grads, tx.init(params), params)
  >>> [round(float(w), 6) for w in optax.apply_updates(params, updates)["kernel"][0]]
  [0.47, 0.0, 0.03]

Masking: `mask` (a pytree of bools, a prefix of one, or a callable params ->
such a pytree) behaves as in `optax.masked`: leaves marked False get the inner
updates unchanged. It is applied inside the transform rather than by wrapping in
`optax.masked`, so a per-leaf `strength` pytree always lines up with `params`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax import ScalarOrSchedule

from sparsejax import _checks, _hyper
from sparsejax import masking as _masking
from sparsejax import prox as _prox
from sparsejax import registry as _registry
from sparsejax.masking import path_names

__all__ = [
    "ProximalState", "proximal", "proximal_step_leaves", "step_threshold", "static_threshold", "layer_balance",
    "l1", "sparse_group_lasso", "cges", "integrated_tl1", "coupled_group_lasso",
]

# Masks live in sparsejax.masking and relaxed variable splitting in sparsejax.rvsm (one home per name).
__getattr__ = _checks.moved_names(__name__, {
    "weights_only": ("sparsejax.masking", "weights_only"), "mask_leaves": ("sparsejax.masking", "mask_leaves"),
    "layer_index": ("sparsejax.masking", "layer_index"), "rvsm": ("sparsejax.rvsm", "rvsm"),
    "RVSMState": ("sparsejax.rvsm", "RVSMState"), "rvsm_sparse_params": ("sparsejax.rvsm", "sparse_params")})

ProxFn: TypeAlias = Callable[..., Any] | str
Mask: TypeAlias = Any  # see sparsejax.masking


class ProximalState(NamedTuple):
  """State of `proximal`: the step count that schedules are evaluated at."""
  count: chex.Array


def _strength_leaves(strength: Any, params: Any, treedef) -> list:
  """One strength (number, schedule or None) per leaf of params."""
  leaf_or_none = lambda s: s is None  # noqa: E731
  strength_def: Any = jax.tree.structure(strength, is_leaf=leaf_or_none)
  if strength_def.num_nodes == 1:  # one scalar, array or schedule for every leaf
    return [strength] * treedef.num_leaves
  if strength_def != jax.tree.structure(params, is_leaf=leaf_or_none):
    raise ValueError(
        "strength is a pytree whose structure does not match params: got "
        f"{strength_def}, expected a scalar, a schedule, or {treedef}.")
  return jax.tree.leaves(strength, is_leaf=leaf_or_none)


def step_threshold(learning_rate: chex.Numeric, strength: chex.Numeric) -> chex.Numeric:
  """tau = learning_rate * strength, or NaN if either is NaN or negative.

  Values that come from a schedule inside jit cannot be checked at construction; a
  NaN or negative one must not silently zero (or, with both negative, silently pass)
  the regularised weights, so it makes the update NaN, which `optax.apply_if_finite`
  and the trainers' non-finite checks catch.
  """
  valid = (jnp.asarray(learning_rate) >= 0) & (jnp.asarray(strength) >= 0)
  return jnp.where(valid, learning_rate * strength, jnp.nan)


def static_threshold(learning_rate: Any, strength: Any) -> float | None:
  """learning_rate * strength as a Python float when both are plain numbers, else None.

  Plain Python or NumPy scalars are known when the step is traced (arrays, tracers,
  schedules and `optax.inject_hyperparams` values are not); the value lets
  `proximal_step_leaves` tell the group maps their threshold statically.
  """
  numbers = (int, float, np.integer, np.floating)
  if isinstance(learning_rate, numbers) and isinstance(strength, numbers):
    return float(learning_rate) * float(strength)
  return None


def proximal_step_leaves(prox_fn: Callable[..., Any], param_leaves: list, update_leaves: list,
                         taus: list, static_taus: list | None = None) -> list:
  """The proximal step on flat leaves: prox_fn(p + u, tau) - p where tau is not None, u elsewhere.

  The one implementation of the step that `proximal`, the ready-made chains and
  `controller.nnz_controller` apply; `optax.apply_updates` then lands on the prox
  output (exact zeros included). A prox that offers an in-step form (the library's
  group maps: `prox_fn._in_step`, see `_in_step_form`) is called in it: the same
  numbers, traced so that XLA fuses the update into the map without storing p + u.
  `static_taus` (optional, one per leaf) holds each leaf's tau as a Python float where
  it is known when the step is traced (`static_threshold`), else None; an in-step form
  then skips a pass over the weights that cannot change its output.
  """
  out = []
  in_step = _in_step_form(prox_fn)
  static_taus = static_taus or [None] * len(param_leaves)
  for p, u, tau, static_tau in zip(param_leaves, update_leaves, taus, static_taus):
    if tau is not None and not jnp.issubdtype(jnp.result_type(p), jnp.floating):
      raise ValueError(f"a proximal step needs floating-point weights; a regularised leaf of shape {jnp.shape(p)} has "
                       f"dtype {jnp.result_type(p)} (its update would round to 0). Cast it to float, or leave it "
                       "out with mask=.")
    if tau is None:
      out.append(u)
      continue
    if in_step is None:
      new = prox_fn(p + u, tau)
    else:
      # The static value is the float32 product within a rounding: a factor-2 range holds it.
      tau_range = None if static_tau is None or not static_tau >= 0 else (0.5 * static_tau, 2.0 * static_tau)
      new = in_step(p + u, tau, tau_range=tau_range)
    out.append((new - p).astype(jnp.result_type(u)))
  return out


def _in_step_form(prox_fn: Callable[..., Any]) -> Callable[..., Any] | None:
  """The in-step form of `prox_fn` (its `_in_step` attribute, shape parameters bound as in
  `prox_fn`), or None for a map that has none.

  An in-step form takes the same arguments plus `tau_range` and gives the same numbers;
  it hands tau to its group norms unchanged, so a static learning_rate * strength bounds
  their threshold. Any other callable (a user's prox that may scale tau before a group map
  sees it) is called as it is, and gets no static range.
  """
  bound: list[functools.partial] = []
  base = prox_fn
  while isinstance(base, functools.partial):
    bound.append(base)
    base = base.func
  step = getattr(base, "_in_step", None)
  if step is None:
    return None
  for partial in reversed(bound):  # innermost first, as the partials were applied
    step = functools.partial(step, *partial.args, **partial.keywords)
  return step


def _proximal_from_leaf_strengths(
    prox_fn: Callable[..., Any],
    strengths_for: Callable[[Any, Any], list],
    learning_rate: ScalarOrSchedule,
    mask: Mask,
) -> optax.GradientTransformation:
  """The proximal step with per-leaf strengths computed from the params' structure."""
  static_taus_apply = _in_step_form(prox_fn) is not None

  def init_fn(params):
    leaves, treedef = jax.tree.flatten(params)
    # Validate before any training step: strength/mask structure, and the prox
    # on every regularised leaf's shape (e.g. a group axis out of range).
    strengths = strengths_for(params, treedef)
    masks = _masking.mask_leaves(mask, params)
    if not any(m and s is not None for m, s in zip(masks, strengths)):
      raise ValueError(
          "this proximal step regularises no parameter: its mask and strength select no leaf of params, so it "
          "would silently do nothing. Check mask/strength; if the transform is wrapped in "
          "optax.inject_hyperparams with a callable mask, pass static_args=('mask',) (inject_hyperparams calls "
          "callables as schedules).")
    for leaf, s, m in zip(leaves, strengths, masks):
      if m and s is not None:
        jax.eval_shape(lambda x: prox_fn(x, 0.0), jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf)))
    return ProximalState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "sparsejax.transforms.proximal")
    param_leaves, treedef = jax.tree.flatten(params)
    update_leaves = treedef.flatten_up_to(updates)
    strengths = strengths_for(params, treedef)
    masks = _masking.mask_leaves(mask, params)
    lr = _hyper.evaluate(learning_rate, state.count)
    taus = [step_threshold(lr, _hyper.evaluate(s, state.count)) if m and s is not None else None
            for s, m in zip(strengths, masks)]
    static_taus = [static_threshold(learning_rate, s) for s in strengths] if static_taus_apply else None
    new_updates = proximal_step_leaves(prox_fn, param_leaves, update_leaves, taus, static_taus)
    return (jax.tree.unflatten(treedef, new_updates),
            ProximalState(count=optax.safe_increment(state.count)))

  return optax.GradientTransformation(init_fn, update_fn)


def _check_strength_and_lr(strength: Any, learning_rate: ScalarOrSchedule) -> None:
  _checks.check_range("strength", strength, lower=0.0, upper=float("inf"), upper_inclusive=False)
  _hyper.check_nonnegative("learning_rate", learning_rate)


def proximal(
    prox_fn: ProxFn,
    strength: Any,
    learning_rate: ScalarOrSchedule,
    mask: Mask = None,
    **prox_kwargs: Any,
) -> optax.GradientTransformation:
  r"""The proximal step of a penalty, after any optax optimizer.

  Given inner updates u, returns

  .. math::

     \operatorname{prox}_{\eta_t \lambda_t f}(w + u) - w,\qquad
     \operatorname{prox}_{\tau f}(v) = \arg\min_x \tfrac12 \|x - v\|^2 + \tau f(x),

  so that `optax.apply_updates` gives w_new = prox(w + u): one step of
  (stochastic) proximal gradient when the inner optimizer is SGD (Parikh & Boyd,
  "Proximal algorithms", 2014).

  Args:
    prox_fn: a `sparsejax.prox` function (or any `prox(x, tau, **shape)`), or a
      penalty name such as "tl1".
    strength: regularisation strength lambda >= 0: a scalar, an optax schedule,
      or a pytree with the structure of params whose leaves are scalars,
      schedules or None (None leaves are not regularised): per-layer lambdas.
    learning_rate: the inner optimizer's step size (scalar or schedule).
    mask: which leaves to regularise (see module docstring); None = all.
    **prox_kwargs: shape parameters of the penalty (e.g. a=1.0 for TL1).

  Returns:
    An optax `GradientTransformation` with state `ProximalState`.

  Raises:
    ValueError: negative strength or learning rate, invalid shape parameters,
      or an unknown penalty name (at construction); a strength pytree that does
      not match params (at init); params not passed to update.
  """
  _check_strength_and_lr(strength, learning_rate)
  fn, _ = _registry.resolve_prox(prox_fn, _hyper.shape_kwargs(prox_kwargs))
  return _proximal_from_leaf_strengths(
      fn, lambda params, treedef: _strength_leaves(strength, params, treedef), learning_rate, mask)


# ----------------------------------------------------------- layer balance


def layer_balance(num_layers: int, m: float) -> list[float]:
  """mu_l = m + (1 - 2m)(l - 1)/(L - 1), l = 1..L (CGES / integrated TL1 layer schedule).

  mu_1 = m and mu_L = 1 - m; a single layer gets mu = 1/2.
  """
  _checks.check_range("m", m, lower=0.0, upper=0.5)
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1; got {num_layers}.")
  if num_layers == 1:
    return [0.5]
  return [m + (1.0 - 2.0 * m) * (l - 1) / (num_layers - 1) for l in range(1, num_layers + 1)]


def _scaled(strength: ScalarOrSchedule, factor: float) -> ScalarOrSchedule:
  if callable(strength):
    return lambda count: strength(count) * factor
  return strength * factor


def _layer_strengths(strength, m, weight_of_mu, layer_scale, mask, scale_name: str = "layer_scale"):
  """strengths_for(params, treedef) giving strength * weight_of_mu(mu_l) * c_l per layer."""

  def strengths_for(params, treedef):
    index_tree, num_layers = _masking.layer_index(params, mask)
    mus = layer_balance(num_layers, m) if num_layers else []
    scales = [1.0] * num_layers if layer_scale is None else list(layer_scale)
    if len(scales) != num_layers:
      raise ValueError(
          f"{scale_name} has {len(scales)} entries but params have {num_layers} regularised layers; "
          f"give one per layer (or None for all 1).")
    out = []
    for l in treedef.flatten_up_to(index_tree):
      out.append(None if l is None else _scaled(strength, weight_of_mu(mus[l - 1]) * scales[l - 1]))
    return out

  return strengths_for


def coupled_group_lasso(strength: Any, learning_rate: ScalarOrSchedule,
                        groups: Sequence[Sequence[Sequence[str]]]) -> optax.GradientTransformation:
  r"""Group lasso whose groups span several leaves: channel c of every leaf of one coupling.

  For couplings G_1, ..., G_K (each a set of leaves with the same last-axis size C)
  the penalty is

  .. math::

     f(w) = \sum_k \sum_{c=1}^{C_k} \Big(\sum_{v \in G_k} \|w_v[\dots, c]\|_2^2\Big)^{1/2},

  and its exact prox with tau = learning_rate * strength is the block soft
  threshold w_v[..., c] <- w_v[..., c] max(0, 1 - tau / n_kc), n_kc the norm above
  (`prox.group_lasso` of the stacked channels): channel c of a coupling is kept or
  zeroed in all its leaves at once, and a channel holding a NaN is NaN. With the
  BatchNorm scales of every writer of a residual stream as one coupling
  (`metrics.coupled_channels`), this is network slimming (Liu et al. 2017) that
  removes stream channels instead of leaving their union alive; a singleton coupling
  of a vector is plain l1 on it. Leaves in no coupling keep the inner updates.

  Args:
    strength: lambda >= 0 (scalar or optax schedule).
    learning_rate: the inner optimizer's step size (scalar or schedule).
    groups: the couplings: each a list of leaf paths (tuples of key names in the
      params tree, e.g. ("stage0_block0", "bn2", "scale")), as returned by
      `metrics.coupled_channels`.

  Returns:
    An optax `GradientTransformation` with state `ProximalState`.

  Raises:
    ValueError: negative strength or learning rate, or `groups` that is empty, names
      a leaf params lack or twice, or couples leaves of different last-axis sizes
      (the last at init).
  """
  _check_strength_and_lr(strength, learning_rate)
  if not callable(strength) and (isinstance(strength, (dict, list, tuple)) or jnp.ndim(strength) != 0):
    raise ValueError("strength must be one scalar or an optax schedule (one lambda for every coupling); "
                     f"got {strength!r}.")
  if isinstance(groups, (str, bytes)) or not isinstance(groups, Sequence) or not groups or any(
      isinstance(g, (str, bytes)) or not isinstance(g, Sequence) or not g for g in groups):
    raise ValueError("groups must be a non-empty list of non-empty lists of leaf paths (tuples of key names), "
                     f"e.g. metrics.coupled_channels(...); got {groups!r}.")
  couplings = [[tuple(str(k) for k in ((path,) if isinstance(path, str) else path)) for path in g] for g in groups]
  flat = [path for g in couplings for path in g]
  if len(set(flat)) != len(flat):
    raise ValueError(f"groups names a leaf more than once: {sorted(p for p in set(flat) if flat.count(p) > 1)}.")

  def positions(params) -> list[list[int]]:
    paths = [path_names(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    leaves = jax.tree.leaves(params)
    index = {path: i for i, path in enumerate(paths)}
    # nnx.State leaves end in a "value" step (nnx.Optimizer): their paths match without it
    index.update({path[:-1]: i for i, path in enumerate(paths) if path[-1:] == ("value",) and path[:-1] not in index})
    out = []
    for g in couplings:
      missing = [path for path in g if path not in index]
      if missing:
        raise ValueError(f"groups names leaves that params lack: {missing}; params have e.g. {paths[:4]}.")
      sizes = {path: (jnp.shape(leaves[index[path]]) or (1,))[-1] for path in g}
      if len(set(sizes.values())) != 1:
        raise ValueError(f"groups couples leaves whose last axes differ: {sizes}.")
      out.append([index[path] for path in g])
    return out

  def init_fn(params):
    positions(params)
    return ProximalState(count=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "sparsejax.transforms.coupled_group_lasso")
    param_leaves, treedef = jax.tree.flatten(params)
    new_updates = treedef.flatten_up_to(updates)
    tau = step_threshold(_hyper.evaluate(learning_rate, state.count), _hyper.evaluate(strength, state.count))
    for members in positions(params):
      moved = [param_leaves[i] + new_updates[i] for i in members]
      # channel c of every member, stacked into one column: the group lasso of the columns
      # (prox.group_lasso: exact zeros, no overflow or underflow of the norm, NaN groups NaN)
      rows = [v.reshape(-1, jnp.shape(v)[-1] if jnp.ndim(v) else 1) for v in moved]
      stacked = jnp.concatenate([r.astype(jnp.result_type(*rows)) for r in rows], axis=0)
      shrunk = _prox.group_lasso(stacked, tau, axis=0)
      start = 0
      for i, v, r in zip(members, moved, rows):
        new_v = shrunk[start:start + r.shape[0]].reshape(jnp.shape(v)).astype(v.dtype)
        new_updates[i] = (new_v - param_leaves[i]).astype(jnp.result_type(new_updates[i]))
        start += r.shape[0]
    return jax.tree.unflatten(treedef, new_updates), ProximalState(count=optax.safe_increment(state.count))

  return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------- ready-made chains


def l1(strength: Any, learning_rate: ScalarOrSchedule, mask: Mask = "weights_only") -> optax.GradientTransformation:
  """Proximal l1 (soft thresholding at lr*strength) on the kernels: the L1 baseline.

  Example: `optax.chain(optax.sgd(lr), transforms.l1(1e-4, lr))`.
  """
  return proximal(_prox.l1, strength, learning_rate, mask)


def sparse_group_lasso(
    l1_strength: Any,
    group_strength: Any,
    learning_rate: ScalarOrSchedule,
    axis: int | Sequence[int] = (-1,),
    scale_by_group_size: bool = True,
    mask: Mask = "weights_only",
) -> optax.GradientTransformation:
  """Exact prox of l1_strength*sum|w| + group_strength*sum_g sqrt(``|g|``)||w_g|| (Scardapane et al. 2017).

  Soft thresholding followed by group shrinkage, which is the exact prox of the
  sum. Groups reduce over `axis` (default: outgoing weights of a
  unit).
  """
  _check_strength_and_lr(group_strength, learning_rate)
  return optax.chain(
      proximal(_prox.l1, l1_strength, learning_rate, mask),
      proximal(_prox.group_lasso, group_strength, learning_rate, mask,
               axis=axis, scale_by_group_size=scale_by_group_size),
  )


def _group_then(second_prox: Callable[..., Any], strength, learning_rate, m, group_scale,
                second_scale, axis, mask, order=("group", "second"),
                scale_names=("layer_scale", "layer_scale")) -> optax.GradientTransformation:
  _check_strength_and_lr(strength, learning_rate)
  _checks.check_range("m", m, lower=0.0, upper=0.5)
  group = _proximal_from_leaf_strengths(
      functools.partial(_prox.group_lasso, axis=axis),
      _layer_strengths(strength, m, lambda mu: 1.0 - mu, group_scale, mask, scale_names[0]), learning_rate, mask)
  second = _proximal_from_leaf_strengths(
      second_prox, _layer_strengths(strength, m, lambda mu: mu, second_scale, mask, scale_names[1]),
      learning_rate, mask)
  steps = {"group": group, "second": second}
  return optax.chain(*(steps[name] for name in order))


def cges(
    strength: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    m: float = 0.2,
    group_scale: Sequence[float] | None = None,
    exclusive_scale: Sequence[float] | None = None,
    axis: int | Sequence[int] = (-1,),
    exact_exclusive: bool = False,
    mask: Mask = "weights_only",
) -> optax.GradientTransformation:
  r"""Combined group and exclusive sparsity (Yoon & Hwang 2017).

  .. math::

     \Omega(W) = \sum_l (1 - \mu_l) \sum_g \|w^l_g\|_2 + \frac{\mu_l}{2} \sum_g \|w^l_g\|_1^2.

  Per layer l (input to output, `layer_index`): group shrink with threshold
  lr*strength*(1 - mu_l)*g_l, then the CGES exclusive operator with
  tau = lr*strength*mu_l*e_l, mu_l = m + (1 - 2m)(l - 1)/(L - 1).

  Args:
    strength: lambda (scalar or schedule).
    learning_rate: the inner optimizer's step size.
    m: lowest layer balance (CGES code: 0.2).
    group_scale: per-layer g_l (CGES code: [1, 1, 1/15, 1/144]); default all 1.
    exclusive_scale: per-layer e_l (CGES code: [1, 1, 15, 144]); default all 1.
    axis: group axes (default -1: outgoing weights of each input unit).
    exact_exclusive: use the exact exclusive prox instead of the CGES one-shot
      operator.
    mask: regularised leaves (default: kernels).
  """
  op = _prox.exclusive if exact_exclusive else _prox.cges_exclusive
  return _group_then(functools.partial(op, axis=axis), strength, learning_rate, m,
                     group_scale, exclusive_scale, axis, mask, scale_names=("group_scale", "exclusive_scale"))


def integrated_tl1(
    strength: ScalarOrSchedule,
    learning_rate: ScalarOrSchedule,
    a: float = 1.0,
    m: float = 0.2,
    layer_scale: Sequence[float] | None = None,
    axis: int | Sequence[int] = (-1,),
    order: tuple[str, str] = ("group", "tl1"),
    mask: Mask = "weights_only",
) -> optax.GradientTransformation:
  r"""Integrated transformed-l1 regulariser (Ma, Miao, Niu & Zhang 2019).

  .. math::

     R_l(W) = \mu_l \sum_{ij} \rho_a(w_{ij}) + (1 - \mu_l) \sum_g \|w_g\|_2,\qquad
     \mu_l = m + (1 - 2m) \frac{l - 1}{L - 1}.

  Group sparsity dominates the lower layers, TL1 the top. Each step applies, per layer, the group shrink with threshold
  lr*strength*(1 - mu_l)*c_l and then the exact TL1 prox with
  tau = lr*strength*mu_l*c_l (sequential splitting, the reference code's order;
  `order=("tl1", "group")` reverses it). The TL1 regime is re-evaluated every
  step.

  Args:
    strength: lambda (scalar or schedule).
    learning_rate: the inner optimizer's step size (scalar or schedule).
    a: TL1 shape parameter, a > 0 (reference code: 0.01).
    m: lowest layer balance (reference code: 0.2).
    layer_scale: per-layer constants c_l (reference code: [1, 1, 1/15, 1/144]).
    axis: group axes (default -1: outgoing weights of each input unit).
    order: ("group", "tl1") or ("tl1", "group").
    mask: regularised leaves (default: kernels; biases are not regularised).

  Example:
    `optax.chain(optax.sgd(0.05), transforms.integrated_tl1(3e-4, 0.05, a=0.01))`
  """
  _registry.check_shape("tl1", a=a)
  if sorted(order) != ["group", "tl1"]:
    raise ValueError(f"order must be ('group', 'tl1') or ('tl1', 'group'); got {order!r}.")
  return _group_then(functools.partial(_prox.tl1, a=a), strength, learning_rate, m,
                     layer_scale, layer_scale, axis, mask,
                     order=tuple("second" if o == "tl1" else o for o in order))
