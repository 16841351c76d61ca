"""Tests of `sparsejax.penalties`: values, pytrees, finite gradients, registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import penalties, registry
from tests import reference

pytestmark = pytest.mark.float64  # brute-force optimality and exact worked examples, to ~1e-10

# Every elementwise penalty of the registry, with each of its example shape parameters.
SEPARABLE = [(name, kw) for name in registry.names(grouped=False) for kw in registry.get(name).examples]


@pytest.mark.parametrize("name,kw", SEPARABLE, ids=[f"{c[0]}{c[1]}" for c in SEPARABLE])
def test_values_match_reference_and_sum_over_pytree(name, kw):
  rng = np.random.default_rng(0)
  a, b = rng.normal(0, 2, (4, 5)), rng.normal(0, 2, 7)
  a[0, :2] = 0.0
  fn = penalties.get(name)
  expected = reference.penalty_values(name, a, **kw).sum() + reference.penalty_values(name, b, **kw).sum()
  got = fn({"a": jnp.asarray(a), "b": [jnp.asarray(b)]}, **kw)
  assert got.shape == ()
  np.testing.assert_allclose(float(got), expected, rtol=1e-12)


@pytest.mark.parametrize("name,kw", SEPARABLE, ids=[f"{c[0]}{c[1]}" for c in SEPARABLE])
def test_gradient_finite_at_zero(name, kw):
  g = jax.grad(lambda x: penalties.get(name)(x, **kw))(jnp.asarray([0.0, 0.5, -2.0]))
  assert np.all(np.isfinite(np.asarray(g)))
  assert float(g[0]) == 0.0 or name in ("elastic_net",)


def test_shape_invariant_values():
  assert float(penalties.tl1(jnp.asarray([1e9]), a=1.0)) == pytest.approx(2.0, rel=1e-8)  # -> a+1
  assert float(penalties.scad(jnp.asarray([100.0]), lam=1.0, a=3.7)) == pytest.approx(4.7 / 2)
  assert float(penalties.mcp(jnp.asarray([100.0]), lam=1.0, gamma=3.0)) == pytest.approx(1.5)


def test_group_penalties():
  w = jnp.asarray([[3.0, 4.0], [0.0, 0.0], [1.0, -1.0]])
  assert float(penalties.group_lasso(w)) == pytest.approx(5 + np.sqrt(2))
  assert float(penalties.group_lasso(w, scale_by_group_size=True)) == pytest.approx(np.sqrt(2) * (5 + np.sqrt(2)))
  assert float(penalties.group_lasso(w, axis=0)) == pytest.approx(np.sqrt(10) + np.sqrt(17))
  assert float(penalties.sparse_group_lasso(w, l1=0.5)) == pytest.approx(0.5 * 9 + 5 + np.sqrt(2))
  assert float(penalties.exclusive(w)) == pytest.approx(0.5 * (49 + 0 + 4))
  assert float(penalties.cges_exclusive(w)) == float(penalties.exclusive(w))
  g = jax.grad(penalties.group_lasso)(w)
  assert np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(g[1], 0.0)


def test_validation_and_registry():
  with pytest.raises(ValueError, match=r"a must satisfy 0.0 < a; got a=0.0"):
    penalties.tl1(jnp.ones(2), a=0.0)
  with pytest.raises(ValueError, match=r"eps must satisfy"):
    penalties.log_sum(jnp.ones(2), eps=-1.0)
  with pytest.raises(ValueError, match=r"axis=3 is out of range"):
    penalties.group_lasso(jnp.ones((2, 2)), axis=3)
  with pytest.raises(ValueError, match=r"tau must satisfy 0.0 <= tau"):
    penalties.tl1.threshold(-1.0, a=1.0)
  assert set(penalties.PENALTIES) == {
      "l1", "l0", "elastic_net", "tl1", "log_sum", "l_half", "l_two_thirds", "scad", "mcp",
      "capped_l1", "group_lasso", "sparse_group_lasso", "exclusive", "cges_exclusive"}
