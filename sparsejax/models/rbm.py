"""Bernoulli RBM (flax.linen) trained by contrastive divergence, and a greedy DBN stack.

Energy E(v, h) = -v W h - a.v - b.h; P(h_j = 1 | v) = sigma(b_j + v W[:, j]),
P(v_i = 1 | h) = sigma(a_i + W[i, :] h).

`cd_gradient` returns a *gradient estimate of the negative log-likelihood*
(CD-k, or persistent CD with a chain), as a pytree shaped like the params, so
the update goes through any optax chain (`optax.sgd(lr, momentum)`, weight
decay, proximal transforms):

  dW = -(V0^T H0 - Vk^T Hk)/m,  da = -mean(V0 - Vk),  db = -mean(H0 - Hk),

with H = P(h | v) probabilities (Hinton 2010). A sparsity term
`penalty(k)` on the mean hidden activation k = mean_batch P(h | V0) adds its
exact gradient w.r.t. W and b (visible biases get nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["RBM", "CDAux", "cd_gradient", "free_energy", "reconstruction_error", "pseudo_likelihood",
           "hidden_probabilities", "dbn_features"]


class RBM(nn.Module):
  """Parameters: kernel W (visible, hidden), visible_bias a, hidden_bias b."""
  num_hidden: int
  init_scale: float = 0.01

  @nn.compact
  def __call__(self, v: jax.Array) -> jax.Array:
    w = self.param("kernel", nn.initializers.normal(self.init_scale), (v.shape[-1], self.num_hidden))
    self.param("visible_bias", nn.initializers.zeros, (v.shape[-1],))
    b = self.param("hidden_bias", nn.initializers.zeros, (self.num_hidden,))
    return jax.nn.sigmoid(v @ w + b)


def hidden_probabilities(params: Any, v: jax.Array) -> jax.Array:
  """P(h_j = 1 | v) = sigmoid(b_j + v W[:, j]) for a batch of visibles `v` (N, visible)."""
  return jax.nn.sigmoid(v @ params["kernel"] + params["hidden_bias"])


def visible_probabilities(params: Any, h: jax.Array) -> jax.Array:
  """P(v_i = 1 | h) = sigmoid(a_i + W[i, :] h) for a batch of hiddens `h` (N, hidden)."""
  return jax.nn.sigmoid(h @ params["kernel"].T + params["visible_bias"])


def free_energy(params: Any, v: jax.Array) -> jax.Array:
  """F(v) = -a.v - sum_j softplus(b_j + v W[:, j]), per example."""
  return -v @ params["visible_bias"] - jnp.sum(jax.nn.softplus(v @ params["kernel"] + params["hidden_bias"]), -1)


class CDAux(NamedTuple):
  """What one CD-k step computed besides the gradient: the positive and negative phases."""
  h0: jax.Array          # P(h | V0)
  vk: jax.Array          # negative-phase visibles
  hk: jax.Array          # P(h | Vk)
  chain: jax.Array       # hidden samples to continue a persistent chain


def cd_gradient(params: Any, v0: jax.Array, rng: jax.Array, k: int = 1, chain: jax.Array | None = None,
                sample_visible: bool = False, penalty: Callable[[jax.Array], jax.Array] | None = None):
  """CD-k (or PCD when `chain` holds hidden samples) gradient estimate of the NLL, plus an optional sparsity term.

  Args:
    params: RBM params.
    v0: data batch (m, visible), values in [0, 1].
    rng: PRNG key.
    k: Gibbs steps.
    chain: persistent hidden samples (m, hidden) for PCD; None for CD.
    sample_visible: sample binary visibles in the negative phase (default:
      use probabilities, as for MNIST intensities).
    penalty: `penalty(k_mean) -> scalar` on the mean hidden activation of the
      batch, e.g. `functools.partial(activity.local_global, lambda_local=3., ...)`.

  Returns:
    (grads pytree like params, CDAux).
  """
  m = v0.shape[0]
  h0 = hidden_probabilities(params, v0)
  keys = jax.random.split(rng, 2 * k + 1)
  h_sample = jax.random.bernoulli(keys[0], h0).astype(v0.dtype) if chain is None else chain
  vk = hk = None
  for step in range(k):
    vk = visible_probabilities(params, h_sample)
    if sample_visible:
      vk = jax.random.bernoulli(keys[2 * step + 1], vk).astype(v0.dtype)
    hk = hidden_probabilities(params, vk)
    h_sample = jax.random.bernoulli(keys[2 * step + 2], hk).astype(v0.dtype)
  grads = {"kernel": -(v0.T @ h0 - vk.T @ hk) / m,
           "visible_bias": -jnp.mean(v0 - vk, axis=0),
           "hidden_bias": -jnp.mean(h0 - hk, axis=0)}
  if penalty is not None:
    sparse = jax.grad(lambda w, b: penalty(jnp.mean(jax.nn.sigmoid(v0 @ w + b), axis=0)), argnums=(0, 1))(
        params["kernel"], params["hidden_bias"])
    grads = {**grads, "kernel": grads["kernel"] + sparse[0], "hidden_bias": grads["hidden_bias"] + sparse[1]}
  return grads, CDAux(h0, vk, hk, h_sample)


def reconstruction_error(params: Any, v: jax.Array) -> jax.Array:
  """Mean squared error of the mean-field reconstruction P(v ``| P(h |`` v))."""
  return jnp.mean((v - visible_probabilities(params, hidden_probabilities(params, v))) ** 2)


def pseudo_likelihood(params: Any, v: jax.Array, rng: jax.Array) -> jax.Array:
  """Stochastic pseudo-log-likelihood per example: n_vis * log sigma(F(v~) - F(v)), one random bit flipped."""
  vb = (v > 0.5).astype(v.dtype)
  idx = jax.random.randint(rng, (v.shape[0],), 0, v.shape[1])
  flipped = vb.at[jnp.arange(v.shape[0]), idx].set(1.0 - vb[jnp.arange(v.shape[0]), idx])
  return jnp.mean(v.shape[1] * jax.nn.log_sigmoid(free_energy(params, flipped) - free_energy(params, vb)))


def dbn_features(stack: Sequence[Any], v: jax.Array) -> jax.Array:
  """Hidden probabilities of the top RBM of a greedy stack (each layer fed the previous layer's probabilities)."""
  for params in stack:
    v = hidden_probabilities(params, v)
  return v
