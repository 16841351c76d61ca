"""LSES-DNN (Qiao et al. 2020): log-sum sparsity on responses and connections.

For an MLP with z^l = a^{l-1} W^l + b^l, a^l = sigma(z^l) (l < L) and
softmax cross-entropy E on the logits z^L, averaged over the n samples:

  J = E + alpha sum_{l<L} (1/n) sum_samples sum_j log(1 + ``|a^l_j|``/eps_a)
        + beta sum_l sum_ij log(1 + ``|W^l_ij|``/eps_w).

`objective` is J (differentiate it with jax.grad); `explicit_gradient` is the
paper's back-propagation formula, written for the (in, out) kernel layout:

  delta^L = dE/dz^L = (softmax(z^L) - onehot)/n
  delta^l = [delta^{l+1} (W^{l+1})^T + (alpha/n) sign(a^l)/(eps_a + ``|a^l|``)] * sigma'(z^l)
  dJ/dW^l = (a^{l-1})^T delta^l + beta sign(W^l)/(eps_w + ``|W^l|``),   dJ/db^l = sum_samples delta^l

with sign(0) = 0. Parameters are a flax `MLP`'s params {"Dense_i": {"kernel", "bias"}}.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sparsejax.penalties import abs_zero_subgradient

__all__ = ["objective", "explicit_gradient", "ACTIVATIONS"]

ACTIVATIONS = {
    "relu": (jax.nn.relu, lambda z: (z > 0).astype(z.dtype)),
    "sigmoid": (jax.nn.sigmoid, lambda z: jax.nn.sigmoid(z) * (1.0 - jax.nn.sigmoid(z))),
}


def _layers(params: Any) -> list:
  names = sorted(params, key=lambda n: int(n.split("_")[-1]))
  return [(params[n]["kernel"], params[n]["bias"]) for n in names]


def _sign(x):
  return jnp.sign(x)  # sign(0) = 0




def objective(params: Any, x: jax.Array, y: jax.Array, alpha: float, beta: float, eps_a: float = 0.1,
              eps_w: float = 0.05, activation: str = "relu") -> jax.Array:
  """J(params) on a batch (x, integer labels y)."""
  act, _ = ACTIVATIONS[activation]
  layers = _layers(params)
  a = x.reshape(x.shape[0], -1)
  response_penalty: Any = 0.0
  for w, b in layers[:-1]:
    a = act(a @ w + b)
    response_penalty += jnp.sum(jnp.log1p(abs_zero_subgradient(a) / eps_a)) / x.shape[0]
  w, b = layers[-1]
  logits = a @ w + b
  ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))
  weight_penalty = sum(jnp.sum(jnp.log1p(abs_zero_subgradient(w) / eps_w)) for w, _ in layers)
  return ce + alpha * response_penalty + beta * weight_penalty


def explicit_gradient(params: Any, x: jax.Array, y: jax.Array, alpha: float, beta: float, eps_a: float = 0.1,
                      eps_w: float = 0.05, activation: str = "relu") -> Any:
  """dJ/dparams by the explicit back-propagation recursion (same pytree as params)."""
  act, act_prime = ACTIVATIONS[activation]
  names = sorted(params, key=lambda n: int(n.split("_")[-1]))
  layers = _layers(params)
  n = x.shape[0]
  inputs, pre, post = [x.reshape(n, -1)], [], []
  for w, b in layers[:-1]:
    z = inputs[-1] @ w + b
    a = act(z)
    pre.append(z)
    post.append(a)
    inputs.append(a)
  w_last, b_last = layers[-1]
  logits = inputs[-1] @ w_last + b_last
  delta = (jax.nn.softmax(logits) - jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)) / n
  grads: list[Any] = [None] * len(layers)
  for l in range(len(layers) - 1, -1, -1):
    w, _ = layers[l]
    grads[l] = {"kernel": inputs[l].T @ delta + beta * _sign(w) / (eps_w + jnp.abs(w)),
                "bias": jnp.sum(delta, axis=0)}
    if l > 0:
      a = post[l - 1]
      delta = (delta @ w.T + (alpha / n) * _sign(a) / (eps_a + jnp.abs(a))) * act_prime(pre[l - 1])
  return {name: g for name, g in zip(names, grads)}
