"""NaN in, NaN out; +-inf and float32 extremes; parameters that would widen the input.

A NaN must never come out of a prox or a transform as a "sparse" zero: it would hide a
diverged run behind a plausible sparsity number. These tests pin the non-finite
contract of every map and of the transforms, and extend the optimality checks to the
float32 extremes (|v| up to the dtype's max), where overflow used to give inf or a
flipped sign.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import controller, prox, registry, transforms
from sparsejax.rvsm import rvsm
from tests import reference
from tests.test_prox import ALL_CALLS, ELEMENTWISE_CASES, case_id

pytestmark = pytest.mark.float64  # brute-force optimality and exact worked examples, to ~1e-10

GROUPED = ("group_lasso", "sparse_group_lasso", "exclusive", "cges_exclusive")
F32_MAX = float(np.finfo(np.float32).max)


@pytest.mark.parametrize("name,kw", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_nan_in_nan_out(name, kw, dtype):
  fn = prox.get(name)
  v = jnp.asarray([[jnp.nan, 1.0, 0.01], [2.0, -3.0, 0.02]], dtype)
  z = np.asarray(fn(v, 0.2, **kw))
  if name in GROUPED:  # groups are rows (axis=-1): the NaN row is NaN, the other row finite
    assert np.all(np.isnan(z[0])), z
    assert np.all(np.isfinite(z[1])), z
  else:
    assert np.isnan(z[0, 0]) and np.all(np.isfinite(z.ravel()[1:])), z
  # the finite row/elements are unchanged by the NaN elsewhere
  np.testing.assert_array_equal(z[1], np.asarray(fn(v[1:], 0.2, **kw))[0])


@pytest.mark.parametrize("name", registry.names(grouped=False))
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64, jnp.bfloat16])
def test_elementwise_inf_maps_to_inf(name, dtype):
  kw = next(c[1] for c in ALL_CALLS if c[0] == name)
  z = np.asarray(prox.get(name)(jnp.asarray([jnp.inf, -jnp.inf], dtype), 0.3, **kw), np.float64)
  np.testing.assert_array_equal(z, [np.inf, -np.inf])


@pytest.mark.parametrize("case", ELEMENTWISE_CASES, ids=case_id)
def test_float32_extremes_match_float64_and_are_optimal(case):
  """At |v| up to float32's max the float32 map equals the float64 map (itself brute-force checked)."""
  name, tau, p = case
  fn = prox.get(name)
  v = np.array([1e3, 1e6, 1e10, 2e19, 1e30, 1e37, 3e38, F32_MAX])
  v = np.concatenate([v, -v])
  z32 = np.asarray(fn(jnp.asarray(v, jnp.float32), tau, **p), np.float64)
  z64 = np.asarray(fn(jnp.asarray(np.float32(v).astype(np.float64)), tau, **p))
  assert np.all(np.isfinite(z32)), z32
  assert np.all(np.sign(z32) == np.sign(v)), "no sign flip"
  np.testing.assert_allclose(z32, z64, rtol=2e-7)
  # float64 optimality at large |v|: z beats 0 and its float neighbours (the objective is
  # smooth there), measured relative to the objective (h - h(z) below float64 noise).
  vv = np.float32(v).astype(np.float64)
  for other in (np.zeros_like(vv), np.nextafter(z64, np.inf), np.nextafter(z64, -np.inf), vv):
    gap = reference.objective(name, z64, vv, tau, **p) - reference.objective(name, other, vv, tau, **p)
    scale = np.maximum(1.0, np.abs(vv)) * np.finfo(np.float64).eps * np.abs(vv)
    assert np.all(gap <= 4 * scale + 1e-9), (name, gap)


@pytest.mark.parametrize("name", ["exclusive", "cges_exclusive", "group_lasso", "sparse_group_lasso"])
def test_group_maps_at_float32_max_are_homogeneous(name):
  """Group maps are positively homogeneous of degree 1 in (v, tau*scale): no overflow to 0/inf."""
  kw = {"l1": 0.5} if name == "sparse_group_lasso" else {}
  fn = prox.get(name)
  base = np.array([[3.0, 1.0, 0.0, -0.5]])
  c = 1e38
  small = np.asarray(fn(jnp.asarray(base, jnp.float64), 0.25, **kw))
  # l1-type maps (exclusive, cges) are 1-homogeneous at fixed tau; norm-type ones at tau*c.
  tau = 0.25 if name in ("exclusive", "cges_exclusive") else 0.25 * c
  big = np.asarray(fn(jnp.asarray(base * c, jnp.float32), tau, **kw), np.float64)
  assert np.all(np.isfinite(big)), big
  np.testing.assert_allclose(big, small * c, rtol=1e-5)


@pytest.mark.parametrize("name", ["group_lasso", "sparse_group_lasso"])
@pytest.mark.parametrize("c", [1e38, 1e30, 1e-25, 1e-33])
@pytest.mark.parametrize("axis", [0, 1])
def test_group_norm_maps_beyond_the_float32_sum_of_squares_are_homogeneous(name, c, axis):
  """prox_{c tau}(c v) = c prox_tau(v) in float32 where the sum of squares overflows (a group norm
  above the float32 maximum included: 3 * 3e38 per entry squared) or underflows; ordinary rows
  beside them keep their plain result."""
  kw = {"l1": 0.5} if name == "sparse_group_lasso" else {}  # the l1 part's threshold is tau * l1
  fn = prox.get(name)
  base = np.array([[3.0, 3.0, -3.0, 0.5], [1.0, 0.0, -2.0, 0.25], [0.1, 0.2, 0.0, 0.0]])
  if axis == 0:
    base = base.T
  for tau in (0.5, 2.0, 6.0, 20.0):
    if tau * c > float(np.finfo(np.float32).max):  # the strength itself would overflow to inf
      continue
    small = np.asarray(fn(jnp.asarray(base, jnp.float64), tau, axis=axis, **kw))
    big = np.asarray(fn(jnp.asarray(base * c, jnp.float32), jnp.float32(tau * c), axis=axis, **kw), np.float64)
    assert np.all(np.isfinite(big)), big
    np.testing.assert_allclose(big, small * c, rtol=2e-6, atol=0.0)
    np.testing.assert_array_equal(big == 0, small == 0)


def test_group_infinite_entry_keeps_inf_and_zeros_the_rest():
  for name in ("exclusive", "cges_exclusive"):
    z = np.asarray(prox.get(name)(jnp.asarray([[np.inf, 1.0, -2.0], [1.0, 2.0, 3.0]]), 0.1))
    np.testing.assert_array_equal(z[0], [np.inf, 0.0, 0.0])
    assert np.all(np.isfinite(z[1]))


def test_infinite_shape_parameters_and_tau():
  v = jnp.asarray([3.0, -1.0, 0.5])
  np.testing.assert_array_equal(np.asarray(prox.exclusive(v, jnp.inf)), [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(np.asarray(prox.log_sum(v, 0.1, eps=jnp.inf)), np.asarray(v))


@pytest.mark.integration  # compiles or trains for many seconds: the integration tier
def test_empty_inputs():
  for name, kw in ALL_CALLS:
    for shape in [(0,), (3, 0), (0, 4)]:
      z = prox.get(name)(jnp.zeros(shape), 0.5, **kw)
      assert z.shape == shape, (name, shape)


@pytest.mark.parametrize("name,kw", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
def test_tau_that_would_widen_the_input_raises(name, kw):
  with pytest.raises(ValueError, match="tau has shape"):
    prox.get(name)(jnp.ones(4), jnp.full((2, 4), 0.1), **kw)


def test_shape_parameter_that_would_widen_the_input_raises():
  with pytest.raises(ValueError, match="a has shape"):
    prox.tl1(jnp.ones(4), 0.1, a=jnp.ones((2, 4)))
  with pytest.raises(ValueError, match="group-reduced"):
    prox.group_lasso(jnp.ones((3, 4)), jnp.ones((3, 4)))
  # per-group tau (the group-reduced shape) is allowed
  z = prox.group_lasso(jnp.ones((3, 4)), jnp.asarray([[0.0], [1.0], [4.0]]))
  np.testing.assert_allclose(np.asarray(z)[:, 0], [1.0, 0.5, 0.0])


@pytest.mark.parametrize("name,kw", ALL_CALLS, ids=[c[0] for c in ALL_CALLS])
@pytest.mark.parametrize("bad_tau", [np.nan, -0.1])
def test_traced_nan_or_negative_tau_gives_nan(name, kw, bad_tau):
  """Inside jit tau cannot be checked: a bad value must poison the output, not zero it."""
  z = jax.jit(lambda v, t: prox.get(name)(v, t, **kw))(jnp.ones((2, 3)), bad_tau)
  assert np.all(np.isnan(np.asarray(z)))


def _params():
  return {"Dense_0": {"kernel": jnp.asarray([[0.5, -0.2], [0.01, 2.0]]), "bias": jnp.zeros(2)}}


TRANSFORMS = {
    "proximal_tl1": lambda lr: transforms.proximal("tl1", 0.1, lr, a=1.0),
    "l1": lambda lr: transforms.l1(0.1, lr),
    "sparse_group_lasso": lambda lr: transforms.sparse_group_lasso(0.1, 0.1, lr),
    "cges": lambda lr: transforms.cges(0.1, lr),
    "integrated_tl1": lambda lr: transforms.integrated_tl1(0.1, lr),
    "nnz_controller": lambda lr: controller.nnz_controller("l1", 2, lr, initial_strength=0.1),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_transforms_nan_gradient_gives_nan_update_and_apply_if_finite_skips(name):
  params = _params()
  tx = optax.chain(optax.sgd(0.1), TRANSFORMS[name](0.1))
  grads = jax.tree.map(jnp.zeros_like, params)
  grads["Dense_0"]["kernel"] = grads["Dense_0"]["kernel"].at[0, 0].set(jnp.nan)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert np.isnan(np.asarray(updates["Dense_0"]["kernel"])[0, 0])
  safe = optax.apply_if_finite(tx, max_consecutive_errors=3)
  state = safe.init(params)
  updates, state = jax.jit(safe.update)(grads, state, params)
  assert int(state.notfinite_count) == 1
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(np.asarray(new["Dense_0"]["kernel"]), np.asarray(params["Dense_0"]["kernel"]))


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize("bad_lr", [np.nan, -0.1])
def test_bad_learning_rate_schedule_inside_jit_gives_nan_not_zeros(name, bad_lr):
  params = _params()
  schedule = lambda count: jnp.asarray(bad_lr) + 0.0 * count  # noqa: E731
  tx = optax.chain(optax.sgd(0.1), TRANSFORMS[name](schedule))
  grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  assert np.all(np.isnan(np.asarray(updates["Dense_0"]["kernel"])))


def test_negative_strength_schedule_gives_nan():
  params = _params()
  tx = optax.chain(optax.sgd(0.1), transforms.proximal("l1", lambda c: -0.5 + 0.0 * c, 0.1))
  updates, _ = jax.jit(tx.update)(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert np.all(np.isnan(np.asarray(updates["Dense_0"]["kernel"])))


def test_rvsm_nan_weight_propagates():
  params = _params()
  params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[1, 1].set(jnp.nan)
  tx = optax.chain(rvsm("tl1", 1e-3, 0.1, a=1.0), optax.sgd(0.1))
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  assert np.isnan(np.asarray(updates["Dense_0"]["kernel"])[1, 1])
  assert np.isnan(np.asarray(state[0].u["Dense_0"]["kernel"])[1, 1])
