r"""One-call sparse optimizers: an optax optimizer and the proximal step of a penalty, one schedule.

`optimizers.sgd(learning_rate, penalty="tl1", strength=1e-4, momentum=0.9, a=0.5)`
is `optax.chain(optax.sgd(learning_rate, momentum), transforms.proximal("tl1",
1e-4, learning_rate, a=0.5))` with the learning rate given once, so the prox
step size always equals the optimizer's (also when the rate is a schedule, and
when it is injected with `optax.inject_hyperparams` and changed during training).
With inner updates u the parameters become

.. math::

   w_{t+1} = \operatorname{prox}_{\eta_t \lambda_t f}(w_t + u_t),

one step of (stochastic) proximal gradient for SGD; for Adam/AdamW the prox is
taken with the same step size eta_t after the adaptive update. The composable
transforms (`sparsejax.transforms`) stay for chains of your own.

Give `sparsity` instead of `strength` to hit a fraction of zero weights: the
strength is then set during training by the NNZ controller
(`controller.nnz_controller`, or `nnz_controller_for` for group penalties), from
the same learning rate. With `total_steps` (the run's optimizer steps) the run ends
exactly on the target, e.g.
``optimizers.sgd(0.05, momentum=0.9, penalty="scad", sparsity=0.95, total_steps=300)``.

Example:
  >>> import jax.numpy as jnp, optax
  >>> from sparsejax import optimizers
  >>> tx = optimizers.sgd(0.1, penalty="l1", strength=0.2)
  >>> params = {"kernel": jnp.array([[0.5, -0.001, 0.02]])}
  >>> grads = {"kernel": jnp.array([[0.1, 0.05, -0.3]])}
  >>> updates, _ = tx.update(grads, tx.init(params), params)
  >>> [round(float(w), 6) for w in optax.apply_updates(params, updates)["kernel"][0]]
  [0.47, 0.0, 0.03]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optax

from sparsejax import _hyper, controller, pattern_prox, patterns, ste, transforms
from sparsejax import registry as _registry

__all__ = ["sgd", "adam", "adamw"]


def _with_penalty(inner: optax.GradientTransformation, learning_rate: optax.ScalarOrSchedule,
                  penalty: str | Callable[..., Any] | None, strength: Any, sparsity: Any, total_steps: Any,
                  mask: Any, penalty_kwargs: dict[str, Any], pattern: str = "unstructured",
                  straight_through: bool = False) -> optax.GradientTransformation:
  """`inner` chained with the proximal step of `penalty`: at a fixed `strength`, or at the controller's for `sparsity`."""
  penalty_kwargs = _hyper.shape_kwargs(penalty_kwargs, "penalty_kwargs")
  if straight_through:
    if (not isinstance(penalty, str) or sparsity is None or strength is not None or total_steps is None
        or patterns.parse_pattern(pattern).kind != "unstructured"):
      raise ValueError("straight_through=True needs a penalty name, sparsity=..., total_steps=... and no strength or "
                       f"pattern (`ste.for_run`); got penalty={penalty!r}, strength={strength!r}, sparsity={sparsity!r}, "
                       f"total_steps={total_steps!r}, pattern={pattern!r}.")
    return ste.for_run(inner, penalty, sparsity, total_steps, mask=mask, **penalty_kwargs)
  if patterns.parse_pattern(pattern).kind != "unstructured":
    if (patterns.parse_pattern(pattern).kind != "n:m" or not isinstance(penalty, str) or strength is not None
        or total_steps is None):
      raise ValueError(f"pattern={pattern!r} needs an 'N:M' pattern with a penalty name, sparsity=1 - N/M (or None) "
                       "and total_steps (the N:M regulariser, `pattern_prox.nm_proximal`); got "
                       f"penalty={penalty!r}, strength={strength!r}, total_steps={total_steps!r}.")
    patterns.check_sparsity(0.0 if sparsity is None else sparsity, pattern)
    return optax.chain(inner, pattern_prox.nm_proximal(penalty, pattern, total_steps=total_steps, mask=mask,
                                                       **penalty_kwargs))
  if penalty is None:
    if penalty_kwargs or strength is not None or sparsity is not None:
      given = sorted(penalty_kwargs) + [n for n, v in (("strength", strength), ("sparsity", sparsity)) if v is not None]
      raise ValueError(f"{given} given with penalty=None (the plain optimizer); name a penalty, e.g. penalty='scad'.")
    return inner
  if (strength is None) == (sparsity is None):
    raise ValueError(f"give exactly one of strength (a fixed lambda >= 0) and sparsity (a target fraction of zero "
                     f"weights in (0, 1), set by the NNZ controller); got strength={strength!r}, sparsity={sparsity!r}.")
  if sparsity is None:
    if total_steps is not None:
      raise ValueError("total_steps is the NNZ controller's schedule: it goes with sparsity=..., not strength=.")
    return optax.chain(inner, transforms.proximal(penalty, strength, learning_rate, mask, **penalty_kwargs))
  if isinstance(penalty, str) and _registry.get(penalty).grouped:  # group maps: by bisection
    step = controller.nnz_controller_for(penalty, learning_rate=learning_rate, sparsity=sparsity, mask=mask,
                                         total_steps=total_steps, **penalty_kwargs)
  else:
    step = controller.nnz_controller(penalty, learning_rate=learning_rate, sparsity=sparsity, mask=mask,
                                     total_steps=total_steps, **penalty_kwargs)
  return optax.chain(inner, step)


_COMMON_ARGS = """    penalty: a registered penalty name ("l1", "tl1", "scad", "group_lasso", ...; see
      `sparsejax.registry.names()`), a prox callable, or None for the plain optimizer.
      Under `optax.inject_hyperparams` pass a name.
    strength: lambda >= 0: a scalar, a schedule, or a per-leaf pytree (see
      `transforms.proximal`). Give this or `sparsity`.
    sparsity: the target fraction of zero regularised weights, 0 < sparsity < 1: the
      strength is set by the NNZ controller (`controller.nnz_controller`; group
      penalties: `nnz_controller_for`), with its magnitude parameters relative to the
      kept weights unless given. Give this or `strength`.
    total_steps: with `sparsity`, the run's number of optimizer steps: switches on the
      controller's schedule (target ramp, exact phase, refit), so the run ends exactly
      on the target. Recommended; without it the count wanders around the target.
    pattern: "unstructured" (default) or "N:M" (e.g. "2:4", with sparsity = 1 - N/M and
      total_steps): the run ends with N of every M consecutive input weights kept, the
      penalty's prox at the per-group strength that keeps them (`pattern_prox.nm_proximal`).
    straight_through: with `sparsity` and `total_steps`: prox-STE (`ste.for_run`). The
      optimizer updates dense weights kept in its state, the params are the penalty's
      exact prox of them at the strength that keeps exactly the target count (rescaled to
      the kept weights' norm), and the gradient at the params passes straight through.
      The target follows the cubic ramp over [0.1 T, 0.6 T]. On the frontier this is the
      most accurate call from 90 % up (docs/sparse_training.md)."""


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    penalty: str | Callable[..., Any] | None,
    strength: Any = None,
    sparsity: float | None = None,
    total_steps: int | None = None,
    pattern: str = "unstructured",
    straight_through: bool = False,
    momentum: float | None = None,
    nesterov: bool = False,
    mask: Any = "weights_only",
    **penalty_kwargs: Any,
) -> optax.GradientTransformation:
  """Proximal SGD (with optional momentum): `optax.sgd` then the prox of `penalty` at lr * strength.

  Args:
    learning_rate: step size eta, a scalar or an optax schedule (used by both steps).
{common}
    momentum: heavy-ball momentum (None: plain SGD).
    nesterov: Nesterov momentum.
    mask: which leaves are penalised (default: kernels, ndim >= 2).
    **penalty_kwargs: the penalty's shape parameters (e.g. a=0.5 for TL1).

  Returns:
    An optax `GradientTransformation`; `update` needs `params`.
  """
  return _with_penalty(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), learning_rate, penalty,
                       strength, sparsity, total_steps, mask, penalty_kwargs, pattern, straight_through)


def adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    penalty: str | Callable[..., Any] | None,
    strength: Any = None,
    sparsity: float | None = None,
    total_steps: int | None = None,
    pattern: str = "unstructured",
    straight_through: bool = False,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mask: Any = "weights_only",
    **penalty_kwargs: Any,
) -> optax.GradientTransformation:
  """Adam then the prox of `penalty` at lr * strength (or at the controller's strength for `sparsity`).

  Args:
    learning_rate: step size eta, a scalar or an optax schedule (used by both steps).
{common}
{adam}
    mask: which leaves are penalised (default: kernels, ndim >= 2).
    **penalty_kwargs: the penalty's shape parameters.

  Returns:
    An optax `GradientTransformation`; `update` needs `params`.
  """
  return _with_penalty(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), learning_rate, penalty, strength, sparsity,
                       total_steps, mask, penalty_kwargs, pattern, straight_through)


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    penalty: str | Callable[..., Any] | None,
    strength: Any = None,
    sparsity: float | None = None,
    total_steps: int | None = None,
    pattern: str = "unstructured",
    straight_through: bool = False,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    mask: Any = "weights_only",
    **penalty_kwargs: Any,
) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay) then the prox of `penalty` (or the controller's step for `sparsity`).

  Args:
    learning_rate: step size eta, a scalar or an optax schedule (used by both steps).
{common}
{adam}
    weight_decay: the decoupled weight decay rate.
    weight_decay_mask: the leaves decayed (default: all).
    mask: which leaves are penalised (default: kernels, ndim >= 2).
    **penalty_kwargs: the penalty's shape parameters.

  Returns:
    An optax `GradientTransformation`; `update` needs `params`.
  """
  return _with_penalty(
      optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask),
      learning_rate, penalty, strength, sparsity, total_steps, mask, penalty_kwargs, pattern, straight_through)


_ADAM_ARGS = """    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon."""

for _fn in (sgd, adam, adamw):
  _fn.__doc__ = _fn.__doc__.replace("{common}", _COMMON_ARGS).replace("{adam}", _ADAM_ARGS)  # type: ignore[union-attr]
