"""Sparsity penalty values f(x; shape) and their zero thresholds.

Every function `NAME(x, **shape)` returns the scalar f(x) summed over all
elements (or groups) of every leaf of the pytree `x`. Shape parameters are
scalars, arrays broadcasting against each leaf, or pytrees with the structure of
`x` (one value per leaf). `docs/penalties.md` states every formula.

Every penalty with a scalar zero threshold carries it as `NAME.threshold(tau,
**shape)`: the largest ``|v|`` that `prox.NAME(v, tau, **shape)` maps to zero (the
zero set is ``|v|`` <= threshold; ties go to zero). Equivalently, threshold =
inf_{x>0} x/2 + tau f(x)/x. Group penalties give the threshold on the group's
norm; `exclusive` and `cges_exclusive` have none (`threshold is None`): their
zero level depends on the whole group.

Gradients are finite everywhere: at x = 0 the non-smooth penalties use the
subgradient 0 (double-where), never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sparsejax import _checks
from sparsejax import registry as _registry

__all__ = [
    "l1", "l0", "elastic_net", "tl1", "log_sum", "l_half", "l_two_thirds",
    "scad", "mcp", "capped_l1", "group_lasso", "sparse_group_lasso",
    "exclusive", "cges_exclusive", "PENALTIES", "get", "abs_zero_subgradient", "from_leaf_function",
]

Axis = int | Sequence[int]


def _sum_over_leaves(leaf_value: Callable[..., jax.Array], x: Any, per_leaf: dict,
                     static: dict | None = None) -> jax.Array:
  def leaf_total(leaf, **kw):
    v = _checks.as_float_array(leaf)
    # A NaN entry makes the value NaN for every penalty (comparisons alone would
    # send it to a finite branch, e.g. SCAD's constant), with gradient 0 elsewhere.
    return leaf_value(v, **kw) + jnp.sum(jnp.where(jnp.isnan(v), v, jnp.zeros_like(v)))

  values = _checks.map_leaves(leaf_total, x, per_leaf, static)
  return sum(jax.tree.leaves(values), start=jnp.zeros(()))


def abs_zero_subgradient(x: jax.Array) -> jax.Array:
  r"""``|x|`` whose gradient at 0 is the subgradient 0 (``jnp.abs`` gives 1 there).
  """
  return jnp.where(x != 0, jnp.abs(x), 0.0)


def _safe_abs_power(x: jax.Array, power: float) -> jax.Array:
  """``|x|``**power with gradient 0 (not inf/NaN) at x = 0."""
  ax = jnp.abs(x)
  nonzero = ax > 0
  safe = jnp.where(nonzero, ax, 1.0)
  return jnp.where(nonzero, safe**power, 0.0)


def group_norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
  """Euclidean norm over `axes` (keepdims) with a finite gradient at 0."""
  return group_norm_from_squares(jnp.sum(x * x, axis=axes, keepdims=True))


def group_norm_from_squares(sq: jax.Array) -> jax.Array:
  """sqrt(sq) with a finite gradient at 0 (and 0, not NaN, where sq is 0 or NaN)."""
  nonzero = sq > 0
  return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, sq, 1.0)), 0.0)


def _group_size(x: jax.Array, axes: tuple[int, ...]) -> int:
  size = 1
  for ax in axes:
    size *= x.shape[ax]
  return size


# ---------------------------------------------------------------- thresholds


def _as_float(v):
  return _checks.as_float_array(v)


def l1_threshold(tau) -> jax.Array:
  """Zero threshold of prox_{tau|.|}: tau."""
  _checks.check_range("tau", tau, lower=0.0)
  return _as_float(tau)


def l0_threshold(tau) -> jax.Array:
  """Zero threshold of hard thresholding: sqrt(2 tau)."""
  _checks.check_range("tau", tau, lower=0.0)
  return jnp.sqrt(2.0 * _as_float(tau))


def elastic_net_threshold(tau, l2=0.0) -> jax.Array:
  """Zero threshold of the elastic-net prox: tau (independent of l2)."""
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("elastic_net", l2=l2)
  return _as_float(tau) + 0.0 * _as_float(l2)


def tl1_threshold(tau, a=1.0) -> jax.Array:
  """Zero threshold of the TL1 prox (Zhang & Xin 2017).

  t* = tau (a+1)/a            if tau <= a^2/(2(a+1))   (sub-critical),
  t* = sqrt(2 tau (a+1)) - a/2  otherwise               (super-critical).
  """
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("tl1", a=a)
  tau, a = _as_float(tau), _as_float(a)
  sub = tau <= a * a / (2.0 * (a + 1.0))
  return jnp.where(sub, tau * (a + 1.0) / a, jnp.sqrt(2.0 * tau * (a + 1.0)) - 0.5 * a)


def log_sum_root(u, tau, eps):
  """The only candidate local minimiser r+ > 0 of the log-sum prox (0 if none).

  Returns (r+, disc) where disc has the sign of the discriminant
  D = (u + eps)^2 - 4 tau; D is never formed, so nothing overflows for ``|v|`` up to the
  dtype's max: with p = u + eps and q = 2 sqrt(tau)/p, sqrt(D) = p sqrt((1-q)(1+q)).
  """
  m = u - eps
  p = u + eps
  q = 2.0 * jnp.sqrt(tau) / jnp.where(p > 0, p, 1.0)
  disc = (1.0 - q) * (1.0 + q)
  real = disc > 0
  sqrt_d = jnp.where(real, p * jnp.sqrt(jnp.where(real, disc, 1.0)), 0.0)
  # r+ = (m + sqrt(D))/2, in the cancellation-free form 2(u eps - tau)/(sqrt(D) - m)
  # when m < 0 (where sqrt(D) - m > 0).
  big = m >= 0
  r = jnp.where(big, 0.5 * m + 0.5 * sqrt_d, 2.0 * (u * eps - tau) / jnp.where(big, 1.0, sqrt_d - m))
  return jnp.maximum(r, 0.0), disc


def log_sum_threshold(tau, eps=1.0, num_bisections: int = 64) -> jax.Array:
  """Zero threshold of the log-sum prox.

  T = tau/eps if tau <= eps^2; otherwise the unique root in [2 sqrt(tau) - eps,
  tau/eps] of Delta(u) = h_u(r+(u)) - u^2/2, found by bisection (the map jumps at
  T; at the tie the prox returns 0).
  """
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("log_sum", eps=eps)
  tau, eps = jnp.broadcast_arrays(_as_float(tau), _as_float(eps))
  lo0 = jnp.maximum(2.0 * jnp.sqrt(tau) - eps, 0.0)
  hi0 = tau / eps

  def zero_is_better(u):
    r, d = log_sum_root(u, tau, eps)
    h_r = 0.5 * (r - u) ** 2 + tau * jnp.log1p(r / eps)
    return (d < 0) | (r <= 0) | (h_r >= 0.5 * u * u)

  def body(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    zero = zero_is_better(mid)
    return jnp.where(zero, mid, lo), jnp.where(zero, hi, mid)

  _, hi = lax.fori_loop(0, num_bisections, body, (lo0, hi0))
  return jnp.where(tau <= eps * eps, tau / eps, hi)


def l_half_threshold(tau) -> jax.Array:
  """Zero threshold of half thresholding (Xu et al. 2012): (3/2) tau^(2/3)."""
  _checks.check_range("tau", tau, lower=0.0)
  return 1.5 * _as_float(tau) ** (2.0 / 3.0)


def l_two_thirds_threshold(tau) -> jax.Array:
  """Zero threshold of the l_{2/3} prox (Cao et al. 2013): 2 (2 tau/3)^(3/4)."""
  _checks.check_range("tau", tau, lower=0.0)
  q = jnp.sqrt(jnp.sqrt((2.0 / 3.0) * _as_float(tau)))  # the prox uses this same expression
  return 2.0 * (q * q * q)


def scad_threshold(tau, lam=1.0, a=3.7) -> jax.Array:
  """Zero threshold of the SCAD prox (both regimes).

  T = min(tau lam, P3), P3 = inf_{x >= a lam} x/2 + tau lam^2 (a+1)/(2x), which
  is below tau lam only in the non-convex regime tau > a + 1.
  """
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("scad", lam=lam, a=a)
  tau, lam, a = _as_float(tau), _as_float(lam), _as_float(a)
  root = jnp.sqrt(tau * (a + 1.0))
  p3 = jnp.where(root >= a, lam * root, 0.5 * a * lam + tau * lam * (a + 1.0) / (2.0 * a))
  return jnp.minimum(tau * lam, p3)


def mcp_threshold(tau, lam=1.0, gamma=3.0) -> jax.Array:
  """Zero threshold of the MCP prox: tau lam if tau < gamma else sqrt(tau gamma) lam."""
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("mcp", lam=lam, gamma=gamma)
  tau, lam, gamma = _as_float(tau), _as_float(lam), _as_float(gamma)
  return jnp.where(tau < gamma, tau * lam, jnp.sqrt(tau * gamma) * lam)


def capped_l1_threshold(tau, lam=1.0, theta=1.0) -> jax.Array:
  """Zero threshold of the capped-l1 prox: tau lam if tau lam <= 2 theta, else sqrt(2 tau lam theta)."""
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("capped_l1", lam=lam, theta=theta)
  tl = _as_float(tau) * _as_float(lam)
  theta = _as_float(theta)
  return jnp.where(tl <= 2.0 * theta, tl, jnp.sqrt(2.0 * tl * theta))


def group_lasso_threshold(tau, group_size: int = 1, scale_by_group_size: bool = False) -> jax.Array:
  """Zero threshold on the group norm ||v_g||_2: tau * (sqrt(``|g|``) if scaled else 1)."""
  _checks.check_range("tau", tau, lower=0.0)
  scale = jnp.sqrt(float(group_size)) if scale_by_group_size else 1.0
  return _as_float(tau) * scale


def sparse_group_lasso_threshold(tau, l1=1.0) -> jax.Array:
  """Elementwise threshold of SGL: entries with ``|v|`` <= tau*l1 are always zero.

  (A whole group is also zeroed when ||S_{tau l1}(v_g)||_2 <= tau w_g.)
  """
  _checks.check_range("tau", tau, lower=0.0)
  _registry.check_shape("sparse_group_lasso", l1=l1)
  return _as_float(tau) * _as_float(l1)


# ---------------------------------------------------------------- penalties


def l1(x: Any) -> jax.Array:
  r"""The l1 norm, :math:`f(x) = \sum_i |x_i|` over every element of every leaf.

  Args:
    x: an array or any pytree of arrays.

  Returns:
    The scalar penalty (gradient 0 at x = 0).
  """
  return _sum_over_leaves(lambda v: jnp.sum(abs_zero_subgradient(v)), x, {})


def l0(x: Any) -> jax.Array:
  r"""The number of nonzero elements, :math:`f(x) = \#\{i : x_i \ne 0\}`, as a float.
  """
  return _sum_over_leaves(lambda v: jnp.sum((v != 0).astype(v.dtype)), x, {})


def elastic_net(x: Any, l2=0.0) -> jax.Array:
  r"""The elastic net, :math:`f(x) = \sum_i |x_i| + \tfrac{l_2}{2} x_i^2` (l2 >= 0).
  """
  _registry.check_shape("elastic_net", l2=l2)
  return _sum_over_leaves(
      lambda v, l2: jnp.sum(abs_zero_subgradient(v)) + 0.5 * jnp.sum(l2 * v * v), x, {"l2": l2})


def tl1(x: Any, a=1.0) -> jax.Array:
  r"""Transformed l1, :math:`f(x) = \sum_i (a + 1)|x_i| / (a + |x_i|)`, a > 0 (Zhang & Xin 2017).

  It tends to the l0 count as a -> 0 and to the l1 norm as a -> inf.
  """
  _registry.check_shape("tl1", a=a)
  return _sum_over_leaves(
      lambda v, a: jnp.sum((a + 1.0) * abs_zero_subgradient(v) / (a + abs_zero_subgradient(v))), x, {"a": a})


def log_sum(x: Any, eps=1.0) -> jax.Array:
  r"""Log-sum, :math:`f(x) = \sum_i \log(1 + |x_i|/\varepsilon)`, eps > 0 (Candes, Wakin & Boyd 2008).
  """
  _registry.check_shape("log_sum", eps=eps)
  return _sum_over_leaves(lambda v, eps: jnp.sum(jnp.log1p(abs_zero_subgradient(v) / eps)), x, {"eps": eps})


def l_half(x: Any) -> jax.Array:
  r"""The l_{1/2} quasi-norm, :math:`f(x) = \sum_i |x_i|^{1/2}` (gradient 0 at 0).
  """
  return _sum_over_leaves(lambda v: jnp.sum(_safe_abs_power(v, 0.5)), x, {})


def l_two_thirds(x: Any) -> jax.Array:
  r"""The l_{2/3} quasi-norm, :math:`f(x) = \sum_i |x_i|^{2/3}` (gradient 0 at 0).
  """
  return _sum_over_leaves(lambda v: jnp.sum(_safe_abs_power(v, 2.0 / 3.0)), x, {})


def _scad_elementwise(v, lam, a):
  av = abs_zero_subgradient(v)
  mid = (2.0 * a * lam * av - av * av - lam * lam) / (2.0 * (a - 1.0))
  return jnp.where(av <= lam, lam * av, jnp.where(av <= a * lam, mid, 0.5 * lam * lam * (a + 1.0)))


def scad(x: Any, lam=1.0, a=3.7) -> jax.Array:
  r"""SCAD (Fan & Li 2001), lam > 0, a > 2; the penalty contains lam.

  .. math::

     p(x) = \begin{cases} \lambda|x| & |x| \le \lambda \\
       \frac{2a\lambda|x| - x^2 - \lambda^2}{2(a - 1)} & \lambda < |x| \le a\lambda \\
       \frac{\lambda^2 (a + 1)}{2} & |x| > a\lambda \end{cases}

  summed over every element.
  """
  _registry.check_shape("scad", lam=lam, a=a)
  return _sum_over_leaves(lambda v, lam, a: jnp.sum(_scad_elementwise(v, lam, a)), x,
                          {"lam": lam, "a": a})


def _mcp_elementwise(v, lam, gamma):
  av = abs_zero_subgradient(v)
  return jnp.where(av <= gamma * lam, lam * av - av * av / (2.0 * gamma), 0.5 * gamma * lam * lam)


def mcp(x: Any, lam=1.0, gamma=3.0) -> jax.Array:
  r"""MCP (Zhang 2010), lam > 0, gamma > 1.

  .. math::

     p(x) = \begin{cases} \lambda|x| - \frac{x^2}{2\gamma} & |x| \le \gamma\lambda \\
       \frac{\gamma\lambda^2}{2} & \text{otherwise} \end{cases}

  summed over every element.
  """
  _registry.check_shape("mcp", lam=lam, gamma=gamma)
  return _sum_over_leaves(lambda v, lam, gamma: jnp.sum(_mcp_elementwise(v, lam, gamma)), x,
                          {"lam": lam, "gamma": gamma})


def capped_l1(x: Any, lam=1.0, theta=1.0) -> jax.Array:
  r"""Capped l1 (Zhang 2010), :math:`f(x) = \sum_i \lambda \min(|x_i|, \theta)`, lam, theta > 0.
  """
  _registry.check_shape("capped_l1", lam=lam, theta=theta)
  return _sum_over_leaves(lambda v, lam, theta: jnp.sum(lam * jnp.minimum(abs_zero_subgradient(v), theta)), x,
                          {"lam": lam, "theta": theta})


def group_weight(v, axes, scale_by_group_size):
  """w_g of the group lasso: sqrt(group size) if `scale_by_group_size`, else 1."""
  if not isinstance(scale_by_group_size, (bool, np.bool_)):
    raise ValueError(f"scale_by_group_size must be True or False; got {scale_by_group_size!r}.")
  return jnp.sqrt(float(_group_size(v, axes))) if scale_by_group_size else 1.0


def _group_lasso_leaf(v, axis, scale_by_group_size):
  axes = _checks.normalize_axes(axis, v.ndim)
  return group_weight(v, axes, scale_by_group_size) * jnp.sum(group_norm(v, axes))


def group_lasso(x: Any, axis: Axis = -1, scale_by_group_size: bool = False) -> jax.Array:
  r"""Group lasso, :math:`f(x) = \sum_g w_g \|x_g\|_2` with :math:`w_g = \sqrt{|g|}` if scaled, else 1.

  Groups are the slices reduced over `axis`; with the default axis=-1 a Dense
  kernel (in, out) has one group per input unit (its outgoing weights).
  """
  return _sum_over_leaves(_group_lasso_leaf, x, {},
                          {"axis": axis, "scale_by_group_size": scale_by_group_size})


def sparse_group_lasso(x: Any, l1=1.0, axis: Axis = -1, scale_by_group_size: bool = False) -> jax.Array:
  r"""Sparse group lasso, :math:`f(x) = l_1 \sum_i |x_i| + \sum_g w_g \|x_g\|_2` (Simon et al. 2013).
  """
  _registry.check_shape("sparse_group_lasso", l1=l1)
  return _sum_over_leaves(
      lambda v, l1, axis, scale_by_group_size: l1 * jnp.sum(abs_zero_subgradient(v))
      + _group_lasso_leaf(v, axis, scale_by_group_size),
      x, {"l1": l1}, {"axis": axis, "scale_by_group_size": scale_by_group_size})


def _exclusive_leaf(v, axis):
  axes = _checks.normalize_axes(axis, v.ndim)
  return 0.5 * jnp.sum(jnp.sum(abs_zero_subgradient(v), axis=axes) ** 2)


def exclusive(x: Any, axis: Axis = -1) -> jax.Array:
  r"""Exclusive sparsity, the (1, 2) mixed norm, :math:`f(x) = \tfrac12 \sum_g \|x_g\|_1^2`.
  """
  return _sum_over_leaves(_exclusive_leaf, x, {}, {"axis": axis})


def cges_exclusive(x: Any, axis: Axis = -1) -> jax.Array:
  r"""The exclusive penalty :math:`\tfrac12 \sum_g \|x_g\|_1^2` that the CGES one-shot operator targets.
  """
  return exclusive(x, axis=axis)


def from_leaf_function(leaf_value: Callable[..., jax.Array], name: str | None = None,
                       static: Sequence[str] = ()) -> Callable[..., jax.Array]:
  """Lifts `leaf_value(v, **shape)` (a scalar for one array) to a penalty summed over a pytree's leaves.

  Shape parameters may be scalars, arrays broadcasting against each leaf or pytrees
  with one value per leaf; `static` names structural ones (e.g. "axis"). With `name`
  (the registry name) every call validates the shape parameters against the record.
  Use it to register a penalty of your own (`sparsejax.registry.register`).
  """
  static_names = frozenset(static)

  def value(x: Any, **shape: Any) -> jax.Array:
    if name is not None:
      _registry.check_shape(name, **shape)
    numeric = {k: v for k, v in shape.items() if k not in static_names}
    fixed = {k: v for k, v in shape.items() if k in static_names}
    return _sum_over_leaves(leaf_value, x, numeric, fixed)

  value.__name__ = getattr(leaf_value, "__name__", "value")
  value.__doc__ = leaf_value.__doc__
  return value


PENALTIES = _registry.RegistryView("value")
"""name -> penalty value function, for every registered penalty (read-only, live)."""


def get(name: str) -> Callable[..., jax.Array]:
  """Returns the penalty called `name`; ValueError listing the known names otherwise."""
  return _registry.get(name).value
