"""The explicit LSES back-propagation formula equals autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import lses
from sparsejax.models import init_mlp


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.float64  # casts the params to float64
@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_explicit_gradient_equals_autodiff(activation):
  rng = np.random.default_rng(0)
  _, params = init_mlp((16, 8, 3), 20, seed=1)
  params = jax.tree.map(lambda p: p.astype(jnp.float64), params)
  params["Dense_1"]["kernel"] = params["Dense_1"]["kernel"].at[0, :3].set(0.0)  # sign(0) = 0 path
  x = jnp.asarray(rng.normal(0, 1, (12, 20)))
  y = jnp.asarray(rng.integers(0, 3, 12))
  kw = dict(alpha=0.01, beta=1e-3, eps_a=0.1, eps_w=0.05, activation=activation)
  auto = jax.grad(lses.objective)(params, x, y, **kw)
  explicit = lses.explicit_gradient(params, x, y, **kw)
  for a, e in zip(jax.tree.leaves(auto), jax.tree.leaves(explicit)):
    np.testing.assert_allclose(e, a, rtol=1e-6, atol=1e-12)


def test_scalar_weight_term():
  # LSES connection term: beta = 1e-3, eps_w = 0.05, w = -0.2 -> dJ/dw contribution -0.004.
  g = jax.grad(lambda w: 1e-3 * jnp.log1p(jnp.abs(w) / 0.05))(-0.2)
  assert float(g) == pytest.approx(-0.004)
