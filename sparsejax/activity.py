"""Sparsity penalties on activations (hidden responses).

Two families, all pure jnp and differentiable (finite gradients everywhere):

* Penalties on a batch of responses `a` (n, units): `log_sum_responses`
  (LSES-DNN: (1/n) sum_samples sum_j log(1 + ``|a_j|``/eps)) and `l1_responses`.
  `from_intermediates` applies one of them to every activation a flax model
  sowed into "intermediates", so it plugs into `train.fit(..., penalty_fn=...)`.
  `from_mean_activations` applies a penalty on mean activations k to every
  sown map (conv maps pooled per channel), e.g. the sparse DCGAN's eqs.
  (14)-(15).

* Penalties on the mean activation k_j = (1/m) sum_l P(h_j = 1 | v_l) of hidden
  unit j (Zhang et al.): `sparse_rbm` (Lee et al. 2008),
  `normal_sparse_rbm` (nsRBM, Keyvanrad & Homayounpour 2015), `l1_mean`
  (rate-distortion), `lq_global` (eq. (5): ``(sum_j |k_j|^q)^(1/q)``, q = 1/2 by
  default), `l_half_sum` (Xu form sum_j sqrt(k_j)), and `local_global`
  (nsRBM + lambda2 * L_{1/2}, eq. (6)). `mean_activation` computes k.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from sparsejax import _checks
from sparsejax.penalties import abs_zero_subgradient

__all__ = ["log_sum_responses", "l1_responses", "from_intermediates", "from_mean_activations", "mean_activation",
           "sparse_rbm",
           "normal_sparse_rbm", "l1_mean", "lq_global", "l_half_sum", "local_global"]


def log_sum_responses(a: jax.Array, eps: float = 0.1) -> jax.Array:
  """(1/n) sum over samples and units of log(1 + ``|a|``/eps), n = a.shape[0]."""
  _checks.check_range("eps", eps, lower=0.0, lower_inclusive=False)
  return jnp.sum(jnp.log1p(abs_zero_subgradient(a) / eps)) / a.shape[0]


def l1_responses(a: jax.Array) -> jax.Array:
  """(1/n) sum over samples and units of ``|a|``."""
  return jnp.sum(abs_zero_subgradient(a)) / a.shape[0]


def from_intermediates(penalty: Callable[[jax.Array], jax.Array], strength: float,
                       select: Callable[[str], bool] | None = None) -> Callable[[Any, Any], jax.Array]:
  """A `penalty_fn(params, intermediates)` for `train.fit`: strength * sum of `penalty` over sown activations.

  Args:
    penalty: e.g. `functools.partial(log_sum_responses, eps=0.1)`.
    strength: its weight (alpha of LSES-DNN).
    select: which sown names to include (default: all).
  """
  _checks.check_range("strength", strength, lower=0.0, upper=float("inf"), upper_inclusive=False)

  def penalty_fn(params, intermediates):
    del params
    return strength * sum((penalty(value) for value in _sown(intermediates, select)), jnp.zeros(()))

  return penalty_fn


def _sown(intermediates: Any, select: Callable[[str], bool] | None) -> list[jax.Array]:
  """The sown arrays whose "/"-joined path passes `select` (all when None)."""
  out = []
  for path, value in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    if select is None or select(name):
      out.append(value)
  return out


POOLS = ("channel", "unit")


def from_mean_activations(k_penalty: Callable[[jax.Array], jax.Array], pool: str = "channel",
                          axis_name: str | None = None,
                          select: Callable[[str], bool] | None = None) -> Callable[[Any], jax.Array]:
  """`fn(intermediates)`: sum over sown activation maps of `k_penalty(k)`, k the mean activation per unit.

  For a map a of shape (n, ..., c): with `pool="channel"`, k_c is the mean of
  a[..., c] over the batch and every spatial position (one "hidden unit" per
  conv filter); with `pool="unit"`, k is the batch mean of every position and
  channel (eq. (4) per neuron). Inside pmap/vmap, `axis_name` averages k over
  the mapped axis, so k is the mean over the global batch.

  Args:
    k_penalty: e.g. `lambda k: 3 * normal_sparse_rbm(k) + 0.005 * l_half_sum(k, eps=1e-8)`.
    pool: "channel" or "unit".
    axis_name: the pmap/vmap axis of the data-parallel step, or None.
    select: which sown names to include (default: all).
  """
  if pool not in POOLS:
    raise ValueError(f"pool must be one of {list(POOLS)}; got {pool!r}.")

  def mean_of(a):
    k = jnp.mean(a.reshape(-1, a.shape[-1]), axis=0) if pool == "channel" else jnp.mean(a, axis=0)
    return jax.lax.pmean(k, axis_name) if axis_name is not None else k

  def penalty_fn(intermediates):
    return sum((k_penalty(mean_of(a)) for a in _sown(intermediates, select)), jnp.zeros(()))

  return penalty_fn


def mean_activation(hidden_probabilities: jax.Array) -> jax.Array:
  """k_j = mean over the batch of P(h_j = 1 | v), eq. (4)."""
  return jnp.mean(hidden_probabilities, axis=0)


def sparse_rbm(k: jax.Array, p: float = 0.1) -> jax.Array:
  """Lee et al. (2008), eq. (2): sum_j (p - k_j)^2."""
  return jnp.sum((p - k) ** 2)


def normal_sparse_rbm(k: jax.Array, p: float = 0.0, sigma: float = 1.0) -> jax.Array:
  """nsRBM, eq. (3): -sum_j N(k_j; p, sigma^2)."""
  _checks.check_range("sigma", sigma, lower=0.0, lower_inclusive=False)
  return -jnp.sum(jnp.exp(-((k - p) ** 2) / (2.0 * sigma**2)) / (sigma * jnp.sqrt(2.0 * jnp.pi)))


def l1_mean(k: jax.Array) -> jax.Array:
  """Rate-distortion L1 (Ji et al. 2014): sum_j ``|k_j|``."""
  return jnp.sum(abs_zero_subgradient(k))


def _safe_power(k, q, eps):
  """(``|k|`` + eps)^q with a finite gradient at 0."""
  return (abs_zero_subgradient(k) + eps) ** q


def lq_global(k: jax.Array, q: float = 0.5, eps: float = 0.0) -> jax.Array:
  """Global sparsity, eq. (5): ``(sum_j |k_j|^q)^(1/q)``; q = 1/2 gives (sum_j sqrt(k_j))^2.

  `eps` > 0 regularises the q < 1 singularity at k_j = 0 (ReLU/GAN use; sigmoid
  units have k_j > 0). Default 0 reproduces the formula exactly.
  """
  _checks.check_range("q", q, lower=0.0, upper=1.0, lower_inclusive=False)
  _checks.check_range("eps", eps, lower=0.0)
  return jnp.sum(_safe_power(k, q, eps)) ** (1.0 / q)


def l_half_sum(k: jax.Array, eps: float = 0.0) -> jax.Array:
  """Xu-form global sparsity: sum_j sqrt(``|k_j|``)."""
  _checks.check_range("eps", eps, lower=0.0)
  return jnp.sum(_safe_power(k, 0.5, eps))


def local_global(k: jax.Array, lambda_local: float = 3.0, lambda_global: float = 0.005, p: float = 0.0,
                 sigma: float = 1.0, q: float = 0.5, eps: float = 0.0) -> jax.Array:
  """The combined regulariser of eq. (6): lambda1 * nsRBM(k) + lambda2 * L_q(k) (paper: 3, 0.005, p = 0, sigma = 1)."""
  return lambda_local * normal_sparse_rbm(k, p, sigma) + lambda_global * lq_global(k, q, eps)
