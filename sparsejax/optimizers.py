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

from sparsejax import _hyper, transforms

__all__ = ["sgd", "adam", "adamw"]


def _with_penalty(inner: optax.GradientTransformation, learning_rate: optax.ScalarOrSchedule,
                  penalty: str | Callable[..., Any] | None, strength: Any, mask: Any,
                  penalty_kwargs: dict[str, Any]) -> optax.GradientTransformation:
  if penalty is None:
    if penalty_kwargs:
      raise ValueError(f"penalty shape parameters {sorted(penalty_kwargs)} given with penalty=None.")
    return inner
  return optax.chain(inner, transforms.proximal(penalty, strength, learning_rate, mask, **penalty_kwargs))


def sgd(
    learning_rate: optax.ScalarOrSchedule,
    *,
    penalty: str | Callable[..., Any] | None,
    strength: Any,
    momentum: float | None = None,
    nesterov: bool = False,
    mask: Any = "weights_only",
    **penalty_kwargs: Any,
) -> optax.GradientTransformation:
  """Proximal SGD (with optional momentum): `optax.sgd` then the prox of `penalty` at lr * strength.

  Args:
    learning_rate: step size eta, a scalar or an optax schedule (used by both steps).
    penalty: a registered penalty name ("l1", "tl1", "mcp", ...; see
      `sparsejax.registry.names()`), a prox callable, or None for the plain optimizer.
      Under `optax.inject_hyperparams` pass a name.
    strength: lambda >= 0: a scalar, a schedule, or a per-leaf pytree (see
      `transforms.proximal`).
    momentum: heavy-ball momentum (None: plain SGD).
    nesterov: Nesterov momentum.
    mask: which leaves are penalised (default: kernels, ndim >= 2).
    **penalty_kwargs: the penalty's shape parameters (e.g. a=0.5 for TL1).

  Returns:
    An optax `GradientTransformation`; `update` needs `params`.
  """
  return _with_penalty(optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov), learning_rate, penalty,
                       strength, mask, _hyper.shape_kwargs(penalty_kwargs, "penalty_kwargs"))


def adam(
    learning_rate: optax.ScalarOrSchedule,
    *,
    penalty: str | Callable[..., Any] | None,
    strength: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    mask: Any = "weights_only",
    **penalty_kwargs: Any,
) -> optax.GradientTransformation:
  """Adam then the prox of `penalty` at lr * strength (arguments as `sgd`, plus Adam's b1, b2, eps)."""
  return _with_penalty(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps), learning_rate, penalty, strength, mask,
                       _hyper.shape_kwargs(penalty_kwargs, "penalty_kwargs"))


def adamw(
    learning_rate: optax.ScalarOrSchedule,
    *,
    penalty: str | Callable[..., Any] | None,
    strength: Any,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    weight_decay_mask: Any = None,
    mask: Any = "weights_only",
    **penalty_kwargs: Any,
) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay on `weight_decay_mask`, default all leaves) then the prox of `penalty`."""
  return _with_penalty(
      optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=weight_decay_mask),
      learning_rate, penalty, strength, mask, _hyper.shape_kwargs(penalty_kwargs, "penalty_kwargs"))
