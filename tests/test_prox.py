"""Tests of `sparsejax.prox`: global optimality, worked examples, invariances.

Parametrized over a registry of (penalty, shape parameters) covering both
regimes of every non-convex map, so adding a case adds it to every test.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from scipy import optimize

from sparsejax import penalties, prox, registry, transforms
from tests import reference

pytestmark = pytest.mark.float64  # brute-force optimality and exact worked examples, to ~1e-10

# (name, tau, shape params): every regime and boundary of every elementwise map.
ELEMENTWISE_CASES = [
    ("l1", 0.3, {}),
    ("l1", 1.7, {}),
    ("l0", 0.5, {}),
    ("l0", 2.0, {}),
    ("elastic_net", 0.3, {"l2": 0.5}),
    ("elastic_net", 1.0, {"l2": 3.0}),
    ("tl1", 0.2, {"a": 1.0}),        # sub-critical
    ("tl1", 1e-3, {"a": 0.01}),      # sub-critical, the paper's a
    ("tl1", 0.25, {"a": 1.0}),       # regime boundary
    ("tl1", 0.5, {"a": 0.5}),        # super-critical
    ("tl1", 2.0, {"a": 0.1}),        # deep super-critical
    ("tl1", 0.3, {"a": 30.0}),       # near soft thresholding
    ("log_sum", 0.01, {"eps": 0.1}),  # tau < eps^2: continuous
    ("log_sum", 0.01, {"eps": 0.1 + 1e-12}),
    ("log_sum", 0.0100000001, {"eps": 0.1}),  # just past the boundary
    ("log_sum", 0.05, {"eps": 0.1}),  # jump
    ("log_sum", 1.0, {"eps": 0.1}),
    ("l_half", 1.0, {}),
    ("l_half", 0.1, {}),
    ("l_half", 3.0, {}),
    ("l_two_thirds", 1.0, {}),
    ("l_two_thirds", 0.1, {}),
    ("l_two_thirds", 3.0, {}),
    ("scad", 1.0, {"lam": 1.0, "a": 3.7}),   # convex
    ("scad", 0.5, {"lam": 1.0, "a": 3.7}),
    ("scad", 2.7, {"lam": 1.0, "a": 3.7}),   # boundary tau = a - 1
    ("scad", 3.0, {"lam": 1.0, "a": 3.7}),   # non-convex, a-1 <= tau < a+1
    ("scad", 6.0, {"lam": 0.5, "a": 3.7}),   # non-convex, tau > a+1
    ("scad", 1.5, {"lam": 0.8, "a": 2.2}),
    ("mcp", 1.0, {"lam": 1.0, "gamma": 3.0}),  # firm
    ("mcp", 0.5, {"lam": 1.0, "gamma": 3.0}),
    ("mcp", 2.0, {"lam": 1.0, "gamma": 2.0}),  # boundary tau = gamma
    ("mcp", 3.0, {"lam": 1.0, "gamma": 2.0}),  # hard
    ("capped_l1", 1.0, {"lam": 0.5, "theta": 1.0}),
    ("capped_l1", 1.0, {"lam": 1.0, "theta": 0.2}),  # hard regime
    ("capped_l1", 4.0, {"lam": 1.0, "theta": 2.0}),  # boundary tau lam = 2 theta
]


def case_id(case):
  name, tau, p = case
  return f"{name}-tau{tau}-" + "-".join(f"{k}{v}" for k, v in p.items())


def sample_inputs(name, tau, p, seed=0):
  """Random inputs plus inputs just below/at/above the threshold and jumps."""
  rng = np.random.default_rng(seed)
  t = float(prox.get(name).threshold(tau, **p))
  special = [t, t * (1 - 1e-6), t * (1 + 1e-6), t * (1 - 1e-3), t * (1 + 1e-3), 0.0,
             2 * t, 0.5 * t + 1e-3]
  for key in ("lam", "theta"):
    if key in p:
      special += [p[key], p[key] * 1.001, p[key] * 0.999]
  if name == "scad":
    lam, a = p["lam"], p["a"]
    special += [a * lam, a * lam * 1.001, (1 + tau) * lam, (1 + tau) * lam * 1.001]
  if name == "mcp":
    special += [p["gamma"] * p["lam"] * 1.001, p["gamma"] * p["lam"] * 0.999]
  if name == "capped_l1":
    jump = p["theta"] + 0.5 * tau * p["lam"]
    special += [jump * 0.999, jump * 1.001]
  values = np.concatenate([rng.normal(0, 2.0, 40), rng.uniform(-3 * t - 1, 3 * t + 1, 20),
                           np.array(special), -np.array(special)])
  return values


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_global_optimality_against_brute_force(case):
  name, tau, p = case
  v = sample_inputs(name, tau, p)
  z = np.asarray(prox.get(name)(jnp.asarray(v), tau, **p))
  best_h, _ = reference.brute_force_min(name, v, tau, **p)
  h = reference.objective(name, z, v, tau, **p)
  gap = h - best_h
  assert np.all(gap <= 1e-9), (v[np.argmax(gap)], z[np.argmax(gap)], gap.max())


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_zero_set_is_threshold_and_ties_go_to_zero(case):
  name, tau, p = case
  fn = prox.get(name)
  t = float(fn.threshold(tau, **p))
  v = sample_inputs(name, tau, p, seed=1)
  z = np.asarray(fn(jnp.asarray(v), tau, **p))
  np.testing.assert_array_equal(z == 0, np.abs(v) <= t)
  assert float(fn(jnp.asarray(t), tau, **p)) == 0.0
  assert float(fn(jnp.asarray(-t), tau, **p)) == 0.0


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_threshold_is_inf_of_x_over_2_plus_tau_f_over_x(case):
  """T = inf_{x>0} x/2 + tau f(x)/x (the general zero-threshold identity)."""
  name, tau, p = case
  t = float(prox.get(name).threshold(tau, **p))
  x = np.concatenate([np.geomspace(1e-9, 1e3, 400_001)])
  value = np.min(x / 2 + tau * reference.penalty_values(name, x, **p) / x)
  np.testing.assert_allclose(t, value, rtol=2e-6, atol=1e-9)


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_odd_monotone_zero_preserving(case):
  name, tau, p = case
  fn = prox.get(name)
  v = np.sort(np.concatenate([sample_inputs(name, tau, p), np.linspace(-10, 10, 2001)]))
  z = np.asarray(fn(jnp.asarray(v), tau, **p))
  z_neg = np.asarray(fn(jnp.asarray(-v), tau, **p))
  np.testing.assert_array_equal(z_neg, -z)
  assert np.all(np.diff(z) >= -1e-12), "prox of a separable penalty is nondecreasing"
  assert float(fn(jnp.zeros(()), tau, **p)) == 0.0
  assert np.all(np.abs(z) <= np.abs(v) + 1e-12), "shrinks toward 0"


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_float32_agrees_with_float64(case):
  name, tau, p = case
  fn = prox.get(name)
  v = np.random.default_rng(3).normal(0, 2.0, 20_000)
  t = float(fn.threshold(tau, **p))
  away = np.abs(np.abs(v) - t) > 1e-5 * max(t, 1.0)  # zero pattern may differ at the jump
  z64 = np.asarray(fn(jnp.asarray(v, jnp.float64), tau, **p))
  z32 = fn(jnp.asarray(v, jnp.float32), tau, **p)
  assert z32.dtype == jnp.float32
  z32 = np.asarray(z32, np.float64)
  # The maps are backward stable: float32 rounding acts like a few-ulp change of
  # v, so where the map is steep (TL1 near its triple point) the forward error
  # is |dx/dv| * ulp(v).
  h = 1e-7
  slope = np.abs(np.asarray(fn(jnp.asarray(v + h), tau, **p)) - np.asarray(fn(jnp.asarray(v - h), tau, **p))) / (2 * h)
  tol = 1e-5 * np.abs(z64) + 2e-6 * max(1.0, t) + 8 * np.finfo(np.float32).eps * np.abs(v) * slope
  assert np.all(np.abs(z32 - z64)[away] <= tol[away]), np.max((np.abs(z32 - z64) - tol)[away])
  np.testing.assert_array_equal(z32[away] == 0, z64[away] == 0)


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_derivative_matches_implicit_function_theorem(case):
  """Where x = prox(v) != 0 and f is smooth at x: dx/dv = 1/(1 + tau f''(x))."""
  name, tau, p = case
  fn = prox.get(name)
  v = np.random.default_rng(4).normal(0, 2.0, 400)
  grad = np.asarray(jax.vmap(jax.grad(lambda s: fn(s, tau, **p)))(jnp.asarray(v)))
  assert np.all(np.isfinite(grad))
  h = 1e-6
  fd = (np.asarray(fn(jnp.asarray(v + h), tau, **p)) - np.asarray(fn(jnp.asarray(v - h), tau, **p))) / (2 * h)
  t = float(fn.threshold(tau, **p))
  kinks = [t]
  for key in ("lam", "theta"):
    if key in p:
      kinks += [p[key], (1 + tau) * p[key], p.get("a", 0) * p[key], p.get("gamma", 0) * p[key],
                p.get("theta", 0) + 0.5 * tau * p.get("lam", 0)]
  smooth = np.all(np.abs(np.abs(v)[:, None] - np.array(kinks)[None]) > 1e-3, axis=1)
  np.testing.assert_allclose(grad[smooth], fd[smooth], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", registry.names(grouped=False))
def test_gradients_finite_at_zero_threshold_and_tau_zero(name):
  case = next(c for c in ELEMENTWISE_CASES if c[0] == name)
  _, tau, p = case
  fn = prox.get(name)
  t = float(fn.threshold(tau, **p))
  v = jnp.asarray([0.0, t, -t, 1e-30, 1e30, 3.0])
  for dtype in (jnp.float32, jnp.float64):
    g = jax.grad(lambda s: jnp.sum(fn(s, tau, **p)))(v.astype(dtype))
    assert np.all(np.isfinite(np.asarray(g))), (name, dtype, g)
    g_tau = jax.grad(lambda tt: jnp.sum(fn(v.astype(dtype), tt, **p)))(jnp.asarray(tau, dtype))
    assert np.isfinite(float(g_tau))
  # tau = 0 is the identity.
  np.testing.assert_allclose(np.asarray(fn(v[:4], 0.0, **p)), np.asarray(v[:4]), rtol=1e-12)


def _temp_bytes_after_momentum_step(prox_fn, shape=(1024, 512)):
  """XLA's compiled temporary bytes of `(prox_fn(w - lr (0.9 m + g)), 0.9 m + g)` (w and m donated)."""
  def step(w, m, g):
    m = 0.9 * m + g
    return prox_fn(w - 0.05 * m), m
  x = jnp.zeros(shape, jnp.float32)
  return jax.jit(step, donate_argnums=(0, 1)).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU fusion property")
@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_prox_fuses_into_the_update_without_temporary_buffers(case):
  """A momentum step followed by the prox compiles to loops that store nothing beyond its outputs.

  XLA's compiled memory analysis of `prox(p - lr (0.9 m + g))` must show no temporary
  buffer beyond the step without the prox but scalars (a bisected threshold's loop
  state): a map that XLA splits into two loops stores a weight-sized intermediate
  between them (TL1 and l_half did, at 1.3x the time of a training step of an
  11.6M-weight MLP).
  """
  name, tau, p = case
  fn = prox.get(name)
  extra = _temp_bytes_after_momentum_step(lambda v: fn(v, tau, **p)) - _temp_bytes_after_momentum_step(lambda v: v)
  assert extra < 1024 * 512 * 4 // 100, extra  # under 1 % of one weight-sized buffer


@pytest.mark.skipif(jax.default_backend() != "cpu" or tuple(map(int, jax.__version__.split(".")[:2])) < (0, 8),
                    reason="an XLA:CPU fusion property of jax >= 0.8 (older XLA keeps a temporary; the values are the same)")
@pytest.mark.parametrize("name,kw", [("group_lasso", {}), ("sparse_group_lasso", {"l1": 0.5}), ("cges_exclusive", {})])
@pytest.mark.parametrize("axis", [0, 1, (0, 1)])
def test_group_prox_fuses_into_the_update_without_weight_sized_buffers(name, kw, axis):
  """Traced as the transforms trace it (its in-step form), a group map needs no stored v = p + u.

  A conditional whose branch read v, and a select on ``isfinite`` feeding the rescaling
  max, each made XLA:CPU store v (0.68 parameter-sizes of temporaries in a training
  step of an 11.6M-weight MLP, 1.21x / 1.29x its time), and CGES's conditional and its
  sum over ``abs`` did too. What is left is a few group-sized arrays (the sums, the norms).
  """
  fn = getattr(prox.get(name), "_in_step", prox.get(name))  # CGES has one form
  shape = (1024, 512)
  axes = (axis,) if isinstance(axis, int) else axis
  groups = int(np.prod([n for ax, n in enumerate(shape) if ax not in axes]))
  extra = (_temp_bytes_after_momentum_step(lambda v: fn(v, 0.1, axis=axis, **kw), shape)
           - _temp_bytes_after_momentum_step(lambda v: v, shape))
  assert extra <= 8 * 4 * groups + 4096, (extra, groups)


@pytest.mark.parametrize("name,kw", [("group_lasso", {}), ("sparse_group_lasso", {"l1": 0.5}),
                                     ("group_lasso", {"scale_by_group_size": True})])
@pytest.mark.parametrize("tau", [0.0, 1e-30, 1e-17, 0.1, 3.0, 1e11])
def test_group_maps_give_the_same_bits_traced_fused_or_standalone(name, kw, tau):
  """The fallback sum (overflow, underflow) is unconditional in the in-step form (`_in_step`), under
  `lax.cond` in the public map, and left out in `_in_step(..., tau_range=)` where the static
  range shows it idle: the same numbers every way, on ordinary, huge, tiny, subnormal,
  zero, inf and NaN groups."""
  big, tiny, sub = 3e30, 1e-25, 1e-42
  v = jnp.array([[1.0, -2.0, 0.5], [big, -big, 1.0], [tiny, -tiny, 2 * tiny], [sub, -sub, 0.0],
                 [0.0, 0.0, 0.0], [np.inf, 1.0, 2.0], [np.nan, 1.0, 0.0], [0.05, 0.0, -0.05]], jnp.float32)
  fn = prox.get(name)
  standalone = jax.jit(lambda v: fn(v, tau, axis=-1, **kw))(v)

  fused = jax.jit(lambda v: fn._in_step(v, tau, axis=-1, **kw))(v)
  np.testing.assert_array_equal(np.asarray(standalone), np.asarray(fused))
  with_range = jax.jit(lambda v: fn._in_step(v, tau, axis=-1, tau_range=(0.5 * tau, 2.0 * tau), **kw))(v)
  np.testing.assert_array_equal(np.asarray(standalone), np.asarray(with_range))
  normal_rows = [0, 1, 2, 4, 5]  # (XLA:CPU flushes subnormals, so row 3 may read as zeros)
  if tau == 0.0:
    np.testing.assert_array_equal(np.asarray(standalone)[normal_rows], np.asarray(v)[normal_rows])  # identity
  if tau <= 1e-30 and name == "group_lasso":
    assert np.all(np.asarray(standalone)[2] != 0)  # a group of norm ~1e-25 survives a 1e-30 threshold


@pytest.mark.parametrize("scale_by_group_size", [False, True])
@pytest.mark.parametrize("log2_thr", [-60.0, -59.0, -58.5, -56.0])
def test_group_lasso_on_large_groups_of_underflowing_squares_matches_float64(log2_thr, scale_by_group_size):
  """A group of 4096 entries of 2^-64 has a sum of squares that underflows in float32 (each
  square is subnormal and XLA:CPU flushes it), yet its norm is 2^-58: a threshold between
  2^-63 and that norm must shrink it, not zero it, standalone and in a training step."""
  v = jnp.full((3, 4096), 2.0 ** -64, jnp.float32).at[1].multiply(0.75).at[2].set(0.0)
  tau = 2.0 ** log2_thr / (64.0 if scale_by_group_size else 1.0)
  v64 = np.asarray(v, np.float64)
  w = 64.0 if scale_by_group_size else 1.0
  norm = np.linalg.norm(v64, axis=-1, keepdims=True)
  want = v64 * np.maximum(0.0, 1.0 - tau * w / np.where(norm > 0, norm, 1.0))
  got = [prox.group_lasso(v, tau, axis=-1, scale_by_group_size=scale_by_group_size)]

  def fused(v, tau_range):
    return prox.group_lasso._in_step(v, tau, axis=-1, scale_by_group_size=scale_by_group_size, tau_range=tau_range)

  got += [jax.jit(lambda v: fused(v, None))(v), jax.jit(lambda v: fused(v, (tau, tau)))(v)]
  for out in got:
    np.testing.assert_allclose(np.asarray(out, np.float64), want, rtol=1e-6, atol=0)
  assert np.any(want != 0) == (log2_thr < -58.0)


def test_static_threshold_is_known_only_for_plain_numbers():
  assert transforms.static_threshold(0.1, 3) == pytest.approx(0.3)
  assert transforms.static_threshold(np.float32(0.5), 2.0) == 1.0
  assert transforms.static_threshold(jnp.asarray(0.1), 3.0) is None
  assert transforms.static_threshold(optax.constant_schedule(0.1), 3.0) is None
  with pytest.raises(ValueError, match="tau_range"):
    prox.group_lasso._in_step(jnp.ones((2, 2)), 1.0, tau_range=(1.0, 0.5))


def test_prox_maps_depend_on_their_arguments_only():
  """No hidden trace-time state: the public maps take no context, and the transforms reach the
  in-step form through the map's own `_in_step` attribute (shape parameters carried over)."""
  import functools

  assert not [n for n in dir(prox) if "contextvar" in n.lower() or n == "fused_with_update"]
  bound = functools.partial(prox.group_lasso, axis=0, scale_by_group_size=True)
  step = transforms._in_step_form(bound)
  v = jnp.arange(12.0).reshape(3, 4) - 5.0
  np.testing.assert_array_equal(np.asarray(step(v, 0.7, tau_range=None)), np.asarray(bound(v, 0.7)))
  assert transforms._in_step_form(prox.tl1) is None
  assert transforms._in_step_form(lambda x, t: prox.group_lasso(x, t)) is None


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("lam,a", [(0.2, 1.0), (0.5, 0.5), (1e-3, 0.01), (2.0, 0.1), (0.25, 1.0), (3e-6, 0.01)])
def test_tl1_equals_trigonometric_closed_form(lam, a):
  v = np.concatenate([np.random.default_rng(5).normal(0, 3, 5000), np.geomspace(1e-4, 1e4, 500)])
  np.testing.assert_allclose(np.asarray(prox.tl1(jnp.asarray(v), lam, a=a)),
                             reference.tl1_trig(v, lam, a), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tau", [1.0, 0.1, 3.0, 1e-4])
def test_l_half_and_two_thirds_equal_closed_forms(tau):
  v = np.concatenate([np.random.default_rng(6).normal(0, 3, 5000), np.geomspace(1e-4, 1e6, 500)])
  np.testing.assert_allclose(np.asarray(prox.l_half(jnp.asarray(v), tau)),
                             reference.half_trig(v, tau), rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(np.asarray(prox.l_two_thirds(jnp.asarray(v), tau)),
                             reference.two_thirds_closed(v, tau), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("tau,eps", [(0.01, 0.1), (0.05, 0.1), (1.0, 0.1), (0.02, 0.1), (1e-4, 0.5)])
def test_log_sum_equals_candidate_comparison(tau, eps):
  v = np.random.default_rng(7).normal(0, 2, 20_000)
  t = float(prox.log_sum.threshold(tau, eps))
  away = np.abs(np.abs(v) - t) > 1e-9
  np.testing.assert_allclose(np.asarray(prox.log_sum(jnp.asarray(v), tau, eps=eps))[away],
                             reference.log_sum_candidates(v, tau, eps)[away], rtol=1e-12, atol=1e-13)


def test_tl1_limits_hard_and_soft():
  assert float(prox.tl1.threshold(0.3, a=1e-4)) == pytest.approx(0.774585, abs=1e-6)
  assert float(prox.tl1(1.0, 0.3, a=1e4)) == pytest.approx(0.700012, abs=1e-6)
  v = jnp.linspace(-3, 3, 1001)
  np.testing.assert_allclose(prox.tl1(v, 0.3, a=1e7), prox.l1(v, 0.3), atol=1e-6)
  away = np.abs(np.abs(np.asarray(v)) - np.sqrt(0.6)) > 0.01
  np.testing.assert_allclose(np.asarray(prox.tl1(v, 0.3, a=1e-7))[away],
                             np.asarray(prox.l0(v, 0.3))[away], atol=1e-3)


def test_idempotent_where_it_holds():
  v = jnp.asarray(np.random.default_rng(8).normal(0, 2, 1000))
  for fn, kw in [(prox.l0, {}), (prox.mcp, {"lam": 1.0, "gamma": 2.0}),
                 (prox.capped_l1, {"lam": 1.0, "theta": 0.2})]:
    once = fn(v, 3.0, **kw) if fn is prox.mcp else fn(v, 1.0, **kw)
    twice = fn(once, 3.0, **kw) if fn is prox.mcp else fn(once, 1.0, **kw)
    np.testing.assert_array_equal(once, twice)


# ------------------------------------------- worked examples (float64, docs/penalties.md)


WORKED_EXAMPLES = [
    (prox.l1, 0.3, {}, [0.75, -0.2, 0.3], [0.45, 0, 0]),
    (prox.l0, 0.5, {}, [1.2, 0.9, 1.0], [1.2, 0, 0]),
    (prox.elastic_net, 0.3, {"l2": 0.5 / 0.3}, [1.0], [0.466667]),
    (prox.tl1, 0.2, {"a": 1.0}, [0.3, 0.6, 1.3, -1.3, 10], [0, 0.394224, 1.218746, -1.218746, 9.996692]),
    (prox.tl1, 0.5, {"a": 0.5}, [0.9, 0.97, 0.98, 1.3, 2.0], [0, 0, 0.733560, 1.164677, 1.936850]),
    (prox.log_sum, 0.01, {"eps": 0.1}, [0.2, 0.6], [0.161803, 0.585410]),
    (prox.log_sum, 0.05, {"eps": 0.1}, [0.35, 0.6, -0.6, 1.0], [0, 0.519258, -0.519258, 0.952494]),
    (prox.l_half, 1.0, {}, [1.4, 1.5, 2.0, -3.0], [0, 0, 1.605378, -2.695453]),
    (prox.l_half, 0.1, {}, [0.5], [0.423135]),
    (prox.l_two_thirds, 1.0, {}, [1.4, 2.0, 3.0], [0, 1.404735, 2.509411]),
    (prox.scad, 1.0, {"lam": 1.0, "a": 3.7}, [0.5, 1.5, 2.0, 2.5, 3.0, 4.0], [0, 0.5, 1.0, 1.794118, 2.588235, 4.0]),
    (prox.scad, 0.5, {"lam": 1.0, "a": 3.7}, [1.2, 2.0, 3.0], [0.7, 1.613636, 2.840909]),
    (prox.mcp, 1.0, {"lam": 1.0, "gamma": 3.0}, [0.9, 1.2, 2.0, 3.5], [0, 0.3, 1.5, 3.5]),
    (prox.mcp, 0.5, {"lam": 1.0, "gamma": 3.0}, [1.2, 2.0], [0.84, 1.8]),
    (prox.capped_l1, 1.0, {"lam": 0.5, "theta": 1.0}, [0.3, 1.2, 1.25, 1.26], [0, 0.7, 0.75, 1.26]),
    (prox.capped_l1, 1.0, {"lam": 1.0, "theta": 0.2}, [0.6, 0.64], [0, 0.64]),
    (prox.group_lasso, 2.0, {}, [[3, 4], [1, 1]], [[1.8, 2.4], [0, 0]]),
    (prox.sparse_group_lasso, 1.0, {"l1": 1.0}, [3, -0.5, 1.2], [1.004963, 0, 0.100496]),
    (prox.exclusive, 0.25, {}, [3, -1, 0.5], [2.333333, -0.333333, 0]),
    (prox.exclusive, 0.1, {}, [0.6, -0.3, 0.05, 0.2], [0.515385, -0.215385, 0, 0.115385]),
    (prox.cges_exclusive, 0.25, {}, [3, -1, 0.5], [1.875, 0, 0]),
    (prox.cges_exclusive, 0.1, {}, [0.6, -0.3, 0.05, 0.2], [0.485, -0.185, 0, 0.085]),
]


class MathVectorsTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*[(i,) for i in range(len(WORKED_EXAMPLES))])
  def test_math_table(self, index):
    fn, tau, kw, v, expected = WORKED_EXAMPLES[index]
    for dtype, tol in ((jnp.float64, 1e-6), (jnp.float32, 1e-5)):
      out = self.variant(functools.partial(fn, **kw))(jnp.asarray(v, dtype), tau)
      np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=tol, atol=tol)
      exp = np.asarray(expected)
      np.testing.assert_array_equal(np.asarray(out) == 0, exp == 0)


def test_thresholds_from_math():
  assert float(prox.tl1.threshold(0.5, a=0.5)) == pytest.approx(0.974745, abs=1e-6)
  assert float(prox.tl1.threshold(0.2, a=1.0)) == pytest.approx(0.4, abs=1e-12)
  assert float(prox.log_sum.threshold(0.05, eps=0.1)) == pytest.approx(0.3743360632, abs=1e-9)
  assert float(prox.log_sum.threshold(1.0, eps=0.1)) == pytest.approx(2.5215981209, abs=1e-9)
  assert float(prox.log_sum.threshold(0.02, eps=0.1)) == pytest.approx(0.1865808224, abs=1e-9)
  assert float(prox.l_half.threshold(0.1)) == pytest.approx(0.323165, abs=1e-6)
  assert float(prox.l_half.threshold(1.0)) == pytest.approx(1.5, abs=1e-12)
  assert float(prox.l_two_thirds.threshold(1.0)) == pytest.approx(1.475576, abs=1e-6)
  assert float(prox.mcp.threshold(3.0, lam=1.0, gamma=2.0)) == pytest.approx(np.sqrt(6), abs=1e-12)
  assert float(prox.capped_l1.threshold(1.0, lam=1.0, theta=0.2)) == pytest.approx(0.632456, abs=1e-6)
  assert prox.exclusive.threshold is None and penalties.exclusive.threshold is None
  assert penalties.tl1.threshold is prox.tl1.threshold


def test_igtl_step_worked_example():
  w = jnp.asarray([[0.30, -0.02, 0.10], [0.01, 0.02, -0.01]])
  shrunk = prox.group_lasso(w, 0.1 * 0.5 * (1 - 0.2))
  np.testing.assert_allclose(shrunk, [[0.262128336, -0.017475222, 0.087376112], [0, 0, 0]], atol=1e-9)
  out = prox.tl1(shrunk, 0.1 * 0.5 * 0.2, a=1.0)
  np.testing.assert_allclose(out, [[0.249314, 0, 0.069904], [0, 0, 0]], atol=1e-6)
  assert np.sum(np.asarray(out) == 0) == 4


# ------------------------------------------------------------- group operators


def _minimize(obj, dim, v, restarts=8, seed=0):
  rng = np.random.default_rng(seed)
  best = np.inf
  starts = [np.zeros(dim), np.asarray(v, float)] + [rng.normal(0, 1, dim) for _ in range(restarts)]
  for x0 in starts:
    res = optimize.minimize(obj, x0, method="Powell", options={"xtol": 1e-12, "ftol": 1e-14, "maxiter": 100_000})
    best = min(best, res.fun)
  return best


# (name, shape parameters, f on one group) for every exact group prox, f from the registry.
GROUP_CASES = [
    (name, kw, functools.partial(registry.get(name).value, **kw))
    for name in registry.names(grouped=True) if name != "cges_exclusive"  # not a prox (one-shot operator)
    for kw in registry.get(name).examples
]
@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.parametrize("name,kw,f", GROUP_CASES, ids=[f"{c[0]}{c[1]}" for c in GROUP_CASES])
def test_group_prox_optimal_against_powell(name, kw, f):
  rng = np.random.default_rng(9)
  for trial in range(6):
    v = rng.normal(0, 1.5, 5)
    tau = float(rng.uniform(0.1, 1.5))
    z = np.asarray(prox.get(name)(jnp.asarray(v), tau, **kw))
    penalty = jax.jit(f)  # Powell calls it thousands of times: compiled, not op by op
    obj = lambda x: 0.5 * np.sum((x - v) ** 2) + tau * float(penalty(x))  # noqa: E731
    assert obj(z) <= _minimize(obj, 5, v, seed=trial) + 1e-9


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_exclusive_equals_active_set_loop_and_groups_follow_axis():
  rng = np.random.default_rng(10)
  w = rng.normal(0, 1, (6, 7))
  tau = 0.3
  out = np.asarray(prox.exclusive(jnp.asarray(w), tau, axis=-1))
  ref = np.stack([reference.exclusive_active_set(row, tau) for row in w])
  np.testing.assert_allclose(out, ref, atol=1e-13)
  out0 = np.asarray(prox.exclusive(jnp.asarray(w), tau, axis=0))
  ref0 = np.stack([reference.exclusive_active_set(col, tau) for col in w.T]).T
  np.testing.assert_allclose(out0, ref0, atol=1e-13)
  # A conv kernel (kh, kw, cin, cout) grouped over (0, 1, 3): groups = input channels.
  k = rng.normal(0, 1, (3, 3, 4, 5))
  outk = np.asarray(prox.exclusive(jnp.asarray(k), tau, axis=(0, 1, 3)))
  for c in range(4):
    flat = k[:, :, c, :].ravel()
    np.testing.assert_allclose(outk[:, :, c, :].ravel(), reference.exclusive_active_set(flat, tau), atol=1e-13)


def test_group_lasso_zero_groups_kkt_and_axes():
  rng = np.random.default_rng(11)
  w = rng.normal(0, 0.5, (20, 8))
  tau = 1.0
  out = np.asarray(prox.group_lasso(jnp.asarray(w), tau))
  norms = np.linalg.norm(w, axis=1)
  np.testing.assert_array_equal(np.all(out == 0, axis=1), norms <= tau)
  kept = norms > tau
  # KKT for kept groups: z - v + tau z/||z|| = 0.
  z = out[kept]
  resid = z - w[kept] + tau * z / np.linalg.norm(z, axis=1, keepdims=True)
  np.testing.assert_allclose(resid, 0, atol=1e-12)
  # axis=(0,1,2) on a conv kernel groups by output filter.
  k = rng.normal(0, 0.2, (3, 3, 4, 6))
  outk = np.asarray(prox.group_lasso(jnp.asarray(k), 1.0, axis=(0, 1, 2)))
  fn = np.linalg.norm(k.reshape(-1, 6), axis=0)
  np.testing.assert_array_equal(np.all(outk.reshape(-1, 6) == 0, axis=0), fn <= 1.0)


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_all_zero_group_gives_zero_and_finite_gradient():
  for name in ("group_lasso", "sparse_group_lasso", "exclusive", "cges_exclusive"):
    fn = prox.get(name)
    w = jnp.zeros((3, 4))
    assert np.all(np.asarray(fn(w, 0.5)) == 0)
    g = jax.grad(lambda x: jnp.sum(fn(x, 0.5) ** 2 + fn(x, 0.5)))(w)
    assert np.all(np.isfinite(np.asarray(g))), name
    g = jax.grad(lambda x: jnp.sum(fn(x, 0.5)))(jnp.ones((3, 4)).at[0].set(0.0))
    assert np.all(np.isfinite(np.asarray(g))), name


def test_cges_is_one_shot_operator_and_more_aggressive_than_exact():
  rng = np.random.default_rng(12)
  w = rng.normal(0, 1, (50, 6))
  tau = 0.2
  out = np.asarray(prox.cges_exclusive(jnp.asarray(w), tau))
  alpha = tau * np.abs(w).sum(axis=1, keepdims=True)
  np.testing.assert_allclose(out, np.sign(w) * np.maximum(np.abs(w) - alpha, 0), atol=1e-14)
  exact = np.asarray(prox.exclusive(jnp.asarray(w), tau))
  assert np.all(np.abs(out) <= np.abs(exact) + 1e-14)
  assert (out == 0).sum() > (exact == 0).sum()


# --------------------------------------------------------- pytrees, vmap, dtypes


# Every registered penalty with its first example's shape parameters.
ALL_CALLS = [(name, registry.get(name).examples[0]) for name in registry.names()]


def test_regime_cases_cover_every_elementwise_penalty():
  assert {c[0] for c in ELEMENTWISE_CASES} == set(registry.names(grouped=False))


@pytest.mark.parametrize("name,kw", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_pytree_equals_per_leaf_under_jit(name, kw):
  fn = prox.get(name)
  rng = np.random.default_rng(13)
  tree = {"dense": {"kernel": jnp.asarray(rng.normal(0, 1, (5, 4))), "bias": jnp.asarray(rng.normal(0, 1, (4,)))},
          "conv": [jnp.asarray(rng.normal(0, 1, (3, 3, 2, 4)))]}
  taus = {"dense": {"kernel": 0.3, "bias": 0.0}, "conv": [0.05]}
  out = jax.jit(lambda t, s: fn(t, s, **kw))(tree, taus)
  for path_leaf, path_tau, path_out in zip(jax.tree.leaves(tree), jax.tree.leaves(taus), jax.tree.leaves(out)):
    np.testing.assert_allclose(path_out, fn(path_leaf, path_tau, **kw), rtol=1e-12, atol=1e-14)
  # A single scalar tau broadcasts to every leaf.
  out_scalar = fn(tree, 0.3, **kw)
  np.testing.assert_allclose(out_scalar["conv"][0], fn(tree["conv"][0], 0.3, **kw), rtol=1e-12)


@pytest.mark.parametrize("name,kw", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_vmap_over_batch_and_tau(name, kw):
  fn = prox.get(name)
  x = jnp.asarray(np.random.default_rng(14).normal(0, 1, (6, 5, 4)))
  taus = jnp.linspace(0.0, 0.8, 6)
  batched = jax.vmap(lambda xi, ti: fn(xi, ti, **kw))(x, taus)
  for i in range(6):
    np.testing.assert_allclose(batched[i], fn(x[i], float(taus[i]), **kw), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,kw", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_dtype_preserved_and_half_precision(name, kw):
  fn = prox.get(name)
  x = np.random.default_rng(15).normal(0, 1, (4, 8))
  for dtype in (jnp.float32, jnp.float64, jnp.bfloat16, jnp.float16):
    out = fn(jnp.asarray(x, dtype), 0.2, **kw)
    assert out.dtype == dtype
    assert np.all(np.isfinite(np.asarray(out, np.float64)))
  out_int = fn(jnp.asarray([[3, -2, 0, 1]]), 0.2, **kw)
  assert jnp.issubdtype(out_int.dtype, jnp.floating)


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_per_element_tau_broadcasts():
  x = jnp.asarray(np.random.default_rng(16).normal(0, 1, (3, 5)))
  taus = jnp.asarray([0.0, 0.5, 1.0])[:, None]
  for name in ("l1", "tl1", "log_sum", "l_half", "scad"):
    fn = prox.get(name)
    kw = {"a": 1.0} if name == "tl1" else {"eps": 0.1} if name == "log_sum" else {}
    out = fn(x, taus, **kw)
    for i in range(3):
      np.testing.assert_allclose(out[i], fn(x[i], float(taus[i, 0]), **kw), rtol=1e-12)
  out = prox.group_lasso(x, taus)
  for i in range(3):
    np.testing.assert_allclose(out[i], prox.group_lasso(x[i], float(taus[i, 0])), rtol=1e-12)


def test_exact_zeros_are_exact():
  x = jnp.asarray(np.random.default_rng(17).normal(0, 1, 10_000), jnp.float32)
  for name, kw in ALL_CALLS:
    out = np.asarray(prox.get(name)(x.reshape(100, 100), 0.5, **kw))
    zeros = out[out == 0]
    assert np.all(np.signbit(zeros) == False) or name in ("group_lasso", "sparse_group_lasso")  # noqa: E712


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("call,match", [
    (lambda: prox.l1(jnp.ones(3), -0.1), r"tau must satisfy 0.0 <= tau; got tau=-0.1"),
    (lambda: prox.tl1(jnp.ones(3), 0.1, a=0.0), r"a must satisfy 0.0 < a"),
    (lambda: prox.tl1(jnp.ones(3), 0.1, a=-1.0), r"got a=-1.0"),
    (lambda: prox.log_sum(jnp.ones(3), 0.1, eps=0.0), r"eps must satisfy 0.0 < eps"),
    (lambda: prox.scad(jnp.ones(3), 0.1, lam=1.0, a=2.0), r"a must satisfy 2.0 < a"),
    (lambda: prox.scad(jnp.ones(3), 0.1, lam=0.0), r"lam must satisfy 0.0 < lam"),
    (lambda: prox.mcp(jnp.ones(3), 0.1, gamma=1.0), r"gamma must satisfy 1.0 < gamma"),
    (lambda: prox.capped_l1(jnp.ones(3), 0.1, theta=-2.0), r"theta must satisfy 0.0 < theta"),
    (lambda: prox.elastic_net(jnp.ones(3), 0.1, l2=-1.0), r"l2 must satisfy"),
    (lambda: prox.group_lasso(jnp.ones((3, 4)), 0.1, axis=2), r"axis=2 is out of range for an array of ndim=2"),
    (lambda: prox.exclusive(jnp.ones((3, 4)), 0.1, axis=(0, -2)), r"repeats an axis"),
    (lambda: prox.get("l3"), r"unknown penalty 'l3'; known penalties: \["),
    (lambda: penalties.get("nope"), r"unknown penalty 'nope'"),
    (lambda: prox.l1({"a": jnp.ones(2), "b": jnp.ones(2)}, {"a": 0.1}), r"tau is a pytree whose structure does not match"),
    (lambda: prox.l1(jnp.ones(3), float("nan")), r"tau must satisfy"),
    (lambda: prox.l1({"w": jnp.ones(3)}, {"w": jnp.asarray([0.1, -0.2, 0.3])}), r"got tau=-0.2"),
    # Complex input: a cast to float would drop the imaginary part and return a wrong number.
    (lambda: prox.l1(jnp.array([1 + 1j, 0.05 + 2j]), 0.1), r"x must be real-valued; got an array of dtype complex"),
    (lambda: prox.group_lasso(jnp.ones((2, 2), jnp.complex64), 0.1), r"x must be real-valued"),
    (lambda: penalties.tl1(jnp.ones(3, jnp.complex64)), r"x must be real-valued"),
    (lambda: prox.l1(jnp.ones(3), 0.1 + 0.1j), r"tau must be real"),
])
def test_bad_arguments_raise_clear_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_traced_arguments_are_not_checked_but_work():
  out = jax.jit(lambda x, t, a: prox.tl1(x, t, a=a))(jnp.ones(3), 0.2, 1.0)
  np.testing.assert_allclose(out, prox.tl1(jnp.ones(3), 0.2, a=1.0))


def test_group_lasso_norm_does_not_underflow_when_the_threshold_is_that_small():
  # squares of 1e-30 underflow in float32: the group must not read as 0 (prox at tau 0 is the identity)
  v = jnp.asarray([1e-30, 2e-30], jnp.float32)
  np.testing.assert_array_equal(np.asarray(prox.group_lasso(v, 0.0)), np.asarray(v))
  norm = float(np.sqrt(5.0)) * 1e-30
  np.testing.assert_allclose(np.asarray(prox.group_lasso(v, 1e-31)), np.asarray(v) * (1 - 1e-31 / norm), rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(prox.group_lasso(v, 1e-29)), 0.0)   # norm 2.2e-30 <= tau


@pytest.mark.parametrize("name", ["group_lasso", "sparse_group_lasso"])
def test_constant_step_takes_one_norm_pass_and_the_same_bits_as_a_traced_one(name):
  """With a constant learning rate and strength the group maps know their threshold when the
  step is traced and leave the idle fallback sum out (one sum of squares per leaf, not
  two); `optax.inject_hyperparams` (traced values) keeps both sums. Same outputs."""
  params = {"dense": {"kernel": jax.random.normal(jax.random.PRNGKey(0), (64, 32)), "bias": jnp.zeros(32)}}
  grads = jax.tree.map(lambda p: 0.1 * jnp.cos(p), params)
  constant = transforms.proximal(name, 0.02, 0.1, "weights_only", axis=-1)
  injected = optax.inject_hyperparams(transforms.proximal, static_args=("prox_fn", "mask"))(
      prox_fn=name, strength=0.02, learning_rate=0.1, mask="weights_only", axis=-1)
  outs, reductions = [], []
  for tx in (constant, injected):
    step = jax.jit(lambda g, s, p, tx=tx: tx.update(g, s, p)[0])
    outs.append(step(grads, tx.init(params), params))
    hlo = step.lower(grads, tx.init(params), params).as_text()
    reductions.append(hlo.count("stablehlo.reduce"))
  chex.assert_trees_all_equal(outs[0], outs[1])
  assert reductions[0] + 1 == reductions[1], reductions


def test_a_custom_prox_that_scales_tau_gets_no_static_threshold():
  """Only the library's group maps take the static range: a user's prox may scale tau on its
  way to a group map, past the range's bounds, and must still get exact numbers. Here the
  threshold reaches 1e14 on groups whose sum of squares overflows (norm 8e19), where the
  shrink factor is 1 - 1.25e-6, not 1."""
  scaled = lambda x, tau: prox.group_lasso(x, tau * 1e15, axis=-1)  # noqa: E731
  params = {"kernel": jnp.full((3, 16), 2e19, jnp.float32).at[2].set(1.0)}
  grads = jax.tree.map(jnp.zeros_like, params)
  tx = transforms.proximal(scaled, 0.1, 1.0)
  new = optax.apply_updates(params, jax.jit(tx.update)(grads, tx.init(params), params)[0])
  want = prox.group_lasso(params["kernel"], 1e14, axis=-1)
  np.testing.assert_array_equal(np.asarray(new["kernel"]), np.asarray(want))
  assert float(new["kernel"][0, 0]) < 2e19
