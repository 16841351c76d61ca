"""Relaxed variable splitting (RVSM; Dinh & Xin 2018, Xue & Xin 2019), with schedules for lambda and beta.

Augmented objective L_beta(w, u) = f(w) + lambda P(u) + (beta/2)||w - u||^2 with
a dense working weight w and its sparse copy u. Each step:

  1. u <- prox_{(lambda/beta) P}(w)          (exact, global: l1, l0, TL1, ...)
  2. w <- w - eta [grad f(w) + beta (w - u)]

`rvsm(...)` is an optax transform placed *before* the optimizer: it receives
grad f(w), stores u = prox_{lambda/beta}(w) in its state and passes on
grad f(w) + beta (w - u); `optax.chain(rvsm(...), optax.sgd(eta))` is exactly
the algorithm above, and any other optimizer (momentum, Adam) can follow.
Inference and export use u: `sparse_params(opt_state, params)`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import chex
import jax
import jax.numpy as jnp
import optax

from sparsejax import _checks, _hyper, masking
from sparsejax import registry as _registry

__all__ = ["RVSMState", "rvsm", "sparse_copy", "sparse_params", "find_rvsm_state"]


class RVSMState(NamedTuple):
  """State of `rvsm`: step count and the sparse copy u (None on leaves that are not split)."""
  count: chex.Array
  u: Any


def _split_leaves(mask, params):
  return masking.mask_leaves(masking.weights_only if mask is None else mask, params)


def sparse_copy(params: Any, prox_fn: Callable[..., Any] | str, strength: Any, beta: Any, mask: Any = None,
                **prox_kwargs: Any) -> Any:
  """u = prox_{(strength/beta) P}(w) on the split leaves; other leaves unchanged."""
  fn, _ = _registry.resolve_prox(prox_fn, prox_kwargs)
  leaves, treedef = jax.tree.flatten(params)
  split = _split_leaves(mask, params)
  out = [fn(w, strength / beta) if s else w for w, s in zip(leaves, split)]
  return jax.tree.unflatten(treedef, out)


def rvsm(
    prox_fn: Callable[..., Any] | str,
    strength: optax.ScalarOrSchedule,
    beta: optax.ScalarOrSchedule,
    mask: Any = None,
    **prox_kwargs: Any,
) -> optax.GradientTransformation:
  r"""Relaxed variable splitting: adds beta (w - u) to the gradient, u = prox_{(strength/beta) P}(w).

  .. math::

     u = \operatorname{prox}_{(\lambda/\beta) P}(w), \qquad
     g \leftarrow \nabla f(w) + \beta (w - u)

  Args:
    prox_fn: the penalty's prox (`prox.l0`, `prox.l1`, `prox.tl1`, ...) or its name.
      Under `optax.inject_hyperparams` pass the name (or `static_args=("prox_fn",)`).
    strength: lambda >= 0, a scalar or an optax schedule of the step count.
    beta: splitting weight > 0, a scalar or a schedule (e.g. increasing, as in
      continuation methods).
    mask: which leaves are split (pytree of bools, a prefix, callable, or a mask name;
      default: kernels, ndim >= 2). The paper splits only the FC layer, e.g.
      `mask=lambda p: {k: {"kernel": k == "Dense_0", "bias": False} for k in p}`.
    **prox_kwargs: penalty shape parameters (e.g. a=1.0 for TL1).

  Returns:
    An optax transform with state `RVSMState`; chain it *before* the optimizer:
    `optax.chain(rvsm(prox.l0, 1e-5, 5e-2), optax.sgd(lr))`.

  References:
    Dinh & Xin, "Convergence of a relaxed variable splitting method for learning
    sparse neural networks via l1, l0, and transformed-l1 penalties", 2018;
    Xue & Xin, "Learning sparse neural networks via l0 and Tl1 by a relaxed
    variable splitting method with application to multi-scale curve
    classification", 2019.
  """
  _hyper.check_nonnegative("strength", strength)
  _hyper.check_positive("beta", beta)
  prox_kwargs = _hyper.shape_kwargs(prox_kwargs)
  fn, _ = _registry.resolve_prox(prox_fn, prox_kwargs)

  def init_fn(params):
    u = sparse_copy(params, fn, _hyper.evaluate(strength, 0), _hyper.evaluate(beta, 0), mask)
    split = _split_leaves(mask, params)
    leaves, treedef = jax.tree.flatten(u)
    return RVSMState(jnp.zeros([], jnp.int32), jax.tree.unflatten(treedef, [
        leaf if s else None for leaf, s in zip(leaves, split)]))

  def update_fn(updates, state, params=None):
    _checks.require_params(params, "rvsm")
    lam, b = _hyper.evaluate(strength, state.count), _hyper.evaluate(beta, state.count)
    u = sparse_copy(params, fn, lam, b, mask)
    split = _split_leaves(mask, params)
    w_leaves, treedef = jax.tree.flatten(params)
    g_leaves = treedef.flatten_up_to(updates)
    u_leaves = jax.tree.leaves(u)
    new_g = [(g + b * (w - uu)).astype(jnp.result_type(g)) if s else g
             for g, w, uu, s in zip(g_leaves, w_leaves, u_leaves, split)]
    stored = jax.tree.unflatten(treedef, [uu if s else None for uu, s in zip(u_leaves, split)])
    return jax.tree.unflatten(treedef, new_g), RVSMState(optax.safe_increment(state.count), stored)

  return optax.GradientTransformation(init_fn, update_fn)


def find_rvsm_state(opt_state: Any) -> RVSMState:
  """The `RVSMState` inside an optax (chain) state."""
  return _checks.one_state(opt_state, RVSMState, "RVSMState")


def sparse_params(opt_state: Any, params: Any) -> Any:
  """params with every split leaf replaced by its sparse copy u from the optimizer state (for evaluation/export)."""
  u_leaves = jax.tree.leaves(find_rvsm_state(opt_state).u, is_leaf=lambda x: x is None)
  leaves, treedef = jax.tree.flatten(params)
  if len(u_leaves) != len(leaves):
    raise ValueError("the RVSM state does not match params (different pytree structure).")
  return jax.tree.unflatten(treedef, [w if uu is None else uu for w, uu in zip(leaves, u_leaves)])
