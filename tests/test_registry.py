"""Generic tests of every registered penalty, and of registering one from user code.

Each `check_*` function takes a registry name and shape parameters and asserts a
property every penalty must have. The parametrisations below run them on every
built-in penalty and every example of its record; `test_user_penalty_*` registers
a penalty the library does not ship (the reverse Huber, "berhu") and runs the same
checks on it, plus every API that takes a penalty by name.
"""

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from sparsejax import controller, optimizers, penalties, prox, registry, selection, transforms
from sparsejax.rvsm import rvsm

pytestmark = pytest.mark.float64  # brute-force optimality and exact worked examples, to ~1e-10

TAUS = (0.05, 0.3, 1.0, 3.0)
CASES = [(name, kw) for name in registry.names() for kw in registry.get(name).examples]
ELEMENTWISE = [(n, kw) for n, kw in CASES if not registry.get(n).grouped]
GROUPED = [(n, kw) for n, kw in CASES if registry.get(n).grouped]
EXACT_GROUPED = [(n, kw) for n, kw in GROUPED if n != "cges_exclusive"]  # cges: one-shot operator, not a prox


def case_id(case):
  name, kw = case
  return name + "".join(f"-{k}{v}" for k, v in kw.items())


# ------------------------------------------------------------------ checks


def _inputs(threshold):
  v = np.concatenate([np.linspace(-4.0, 4.0, 161), [0.0, 1e-8, -1e-8]])
  if threshold is not None:
    t = float(threshold)
    v = np.concatenate([v, t * np.array([1 - 1e-3, 1 + 1e-3, 1 + 1e-2, -(1 + 1e-2)])])
  return v


def check_elementwise_prox_is_global_minimiser(name, kw):
  """No point of a fine grid (nor 0, nor v) has a lower prox objective than prox(v)."""
  spec = registry.get(name)
  grid = np.concatenate([np.linspace(-6.0, 6.0, 24001), [0.0]])
  f_grid = np.asarray(jax.vmap(lambda z: spec.value(z, **kw))(jnp.asarray(grid)))
  for tau in TAUS:
    threshold = None if spec.threshold is None else spec.threshold(tau, **kw)
    v = _inputs(threshold)
    z = np.asarray(spec.prox(jnp.asarray(v), tau, **kw))
    f_z = np.asarray(jax.vmap(lambda x: spec.value(x, **kw))(jnp.asarray(z)))
    h_z = 0.5 * (z - v) ** 2 + tau * f_z
    h_grid = 0.5 * (grid[None, :] - v[:, None]) ** 2 + tau * f_grid[None, :]
    worst = np.max(h_z - h_grid.min(axis=1))
    assert worst <= 1e-9, f"{name}{kw} tau={tau}: a grid point beats the prox by {worst:.3g}"


def check_threshold_is_the_zero_set(name, kw):
  """|v| <= T maps to exactly 0 and |v| > T does not (elementwise maps with a threshold)."""
  spec = registry.get(name)
  if spec.threshold is None:
    return
  for tau in TAUS:
    t = float(spec.threshold(tau, **kw))
    below = t * np.array([0.0, 0.3, 0.9, 1 - 1e-6])
    above = t * np.array([1 + 1e-4, 1.5, 3.0]) + 1e-12
    for sign in (1.0, -1.0):
      assert np.all(np.asarray(spec.prox(jnp.asarray(sign * below), tau, **kw)) == 0.0), (name, kw, tau)
      assert np.all(np.asarray(spec.prox(jnp.asarray(sign * above), tau, **kw)) != 0.0), (name, kw, tau)


def _powell_min(obj, v, starts=4, seed=0):
  rng = np.random.default_rng(seed)
  best = min(obj(np.zeros_like(v)), obj(v))
  for x0 in [np.zeros_like(v), v] + [rng.normal(0, 1, v.shape) for _ in range(starts)]:
    res = optimize.minimize(obj, x0, method="Powell", options={"xtol": 1e-12, "ftol": 1e-14, "maxiter": 50_000})
    best = min(best, res.fun)
  return best


def check_group_prox_is_global_minimiser(name, kw):
  """No local search from several starts finds a lower objective than the group prox."""
  spec = registry.get(name)
  rng = np.random.default_rng(1)
  for trial in range(3):
    v = rng.normal(0, 1.5, 4)
    tau = float(rng.uniform(0.1, 1.5))
    value = jax.jit(lambda x: spec.value(x, **kw))  # Powell calls it thousands of times: compiled
    f = lambda x: float(value(jnp.asarray(x)))  # noqa: E731
    obj = lambda x: 0.5 * float(np.sum((x - v) ** 2)) + tau * f(x)  # noqa: E731
    z = np.asarray(spec.prox(jnp.asarray(v), tau, **kw))
    assert obj(z) <= _powell_min(obj, v, seed=trial) + 1e-9, (name, kw, trial)


def check_pytrees_dtypes_and_jit(name, kw):
  """Leaves are mapped independently, dtypes kept (bf16 and float32), jit equals eager."""
  spec = registry.get(name)
  rng = np.random.default_rng(2)
  tree = {"a": jnp.asarray(rng.normal(0, 2, (3, 4)), jnp.float32), "b": [jnp.asarray(rng.normal(0, 2, 5), jnp.float32)]}
  out = spec.prox(tree, 0.5, **kw)
  assert jax.tree.structure(out) == jax.tree.structure(tree)
  for leaf_in, leaf_out in zip(jax.tree.leaves(tree), jax.tree.leaves(out)):
    assert leaf_out.dtype == jnp.float32 and leaf_out.shape == leaf_in.shape
    np.testing.assert_array_equal(np.asarray(spec.prox(leaf_in, 0.5, **kw)), np.asarray(leaf_out))
  jitted = jax.jit(lambda t: spec.prox(t, 0.5, **kw))(tree)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(jitted)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
  half = spec.prox(tree["a"].astype(jnp.bfloat16), 0.5, **kw)
  assert half.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(half)))


def check_nan_is_never_a_zero(name, kw):
  spec = registry.get(name)
  v = jnp.asarray([[0.5, jnp.nan, 3.0], [0.1, 0.2, 4.0]])
  out = np.asarray(spec.prox(v, 0.3, **kw))
  assert np.isnan(out[0, 1])
  assert np.all(np.isfinite(out[1]))  # the other group / entries are unaffected
  assert np.isnan(float(spec.value(v, **kw)))


def check_value_gradient_finite_at_zero(name, kw):
  spec = registry.get(name)
  g = jax.grad(lambda x: spec.value(x, **kw))(jnp.asarray([0.0, 0.5, -2.0]))
  assert np.all(np.isfinite(np.asarray(g)))


def check_shape_parameters_are_validated(name, kw):
  """An unknown shape parameter, or one outside its range, raises ValueError naming it."""
  spec = registry.get(name)
  with pytest.raises(ValueError, match="zzz"):
    transforms.proximal(name, 0.1, 0.1, zzz=1.0)
  for param in spec.shape_params:
    if param.static or param.lower is None:
      continue
    bad = {**kw, param.name: param.lower - 1.0}
    for call in (lambda: spec.prox(jnp.ones(3), 0.1, **bad), lambda: spec.value(jnp.ones(3), **bad),
                 lambda: transforms.proximal(name, 0.1, 0.1, **bad)):
      with pytest.raises(ValueError, match=param.name):
        call()
    if spec.threshold is not None:
      with pytest.raises(ValueError, match=param.name):
        spec.threshold(0.1, **bad)


def check_training_step_by_name(name, kw):
  """transforms.proximal and optimizers.sgd by name give params = prox(params - lr g, lr lambda)."""
  spec = registry.get(name)
  rng = np.random.default_rng(3)
  params = {"dense": {"kernel": jnp.asarray(rng.normal(0, 1, (4, 3))), "bias": jnp.asarray(rng.normal(0, 1, 3))}}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1, p.shape)), params)
  lr, lam = 0.1, 0.7
  expected_kernel = spec.prox(params["dense"]["kernel"] - lr * grads["dense"]["kernel"], lr * lam, **kw)
  for tx in (optax.chain(optax.sgd(lr), transforms.proximal(name, lam, lr, mask="weights_only", **kw)),
             optimizers.sgd(lr, penalty=name, strength=lam, **kw)):
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(new["dense"]["kernel"]), np.asarray(expected_kernel), atol=1e-12)
    np.testing.assert_allclose(np.asarray(new["dense"]["bias"]),
                               np.asarray(params["dense"]["bias"] - lr * grads["dense"]["bias"]), atol=1e-12)


def check_controller_hits_target(name, kw):
  """With rate 1 the NNZ controller's first step keeps exactly the target count (threshold needed)."""
  if registry.get(name).threshold is None or registry.get(name).grouped:
    return
  rng = np.random.default_rng(4)
  params = {"kernel": jnp.asarray(rng.normal(0, 1, (20, 30)))}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 0.1, p.shape)), params)
  tx = optax.chain(optax.sgd(0.1), controller.nnz_controller(name, 123, 0.1, rate=1.0, **kw))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  nnz = int(np.count_nonzero(np.asarray(optax.apply_updates(params, updates)["kernel"])))
  assert abs(nnz - 123) <= 1, (name, kw, nnz)


ELEMENTWISE_CHECKS = [check_elementwise_prox_is_global_minimiser, check_threshold_is_the_zero_set,
                      check_pytrees_dtypes_and_jit, check_nan_is_never_a_zero, check_value_gradient_finite_at_zero,
                      check_shape_parameters_are_validated, check_training_step_by_name, check_controller_hits_target]
GROUP_CHECKS = [check_pytrees_dtypes_and_jit, check_nan_is_never_a_zero, check_value_gradient_finite_at_zero,
                check_shape_parameters_are_validated, check_training_step_by_name]


# ------------------------------------------------------- built-in penalties


@pytest.mark.parametrize("check", ELEMENTWISE_CHECKS, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("case", ELEMENTWISE, ids=case_id)
def test_elementwise_penalty(case, check):
  check(*case)


@pytest.mark.parametrize("check", GROUP_CHECKS, ids=lambda c: c.__name__[6:])
@pytest.mark.parametrize("case", GROUPED, ids=case_id)
def test_group_penalty(case, check):
  check(*case)


@pytest.mark.parametrize("case", EXACT_GROUPED, ids=case_id)
def test_group_prox_is_global_minimiser(case):
  check_group_prox_is_global_minimiser(*case)


def test_views_follow_the_registry():
  assert list(prox.PROX) == list(registry.names()) == list(penalties.PENALTIES)
  for name in registry.names():
    record = registry.get(name)
    assert prox.get(name) is record.prox is getattr(prox, name)
    assert penalties.get(name) is record.value is getattr(penalties, name)
    assert registry.find(record.prox) is record
    assert prox.get(name).threshold is record.threshold


def test_registry_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown penalty 'nope'.*known penalties"):
    registry.get("nope")
  with pytest.raises(ValueError, match="unknown penalty 'nope'"):
    transforms.proximal("nope", 0.1, 0.1)
  with pytest.raises(ValueError, match="already registered"):
    registry.register(registry.get("l1"))
  with pytest.raises(ValueError, match="identifier"):
    registry.register(registry.Penalty("not a name", penalties.l1, prox.l1))
  with pytest.raises(ValueError, match="callable"):
    registry.register(registry.Penalty("broken", penalties.l1, None))


# ------------------------------------------------------------ a user penalty


def _berhu_value_leaf(v, c):
  """Reverse Huber: |v| for |v| <= c, (v^2 + c^2)/(2c) beyond."""
  a = jnp.abs(v)
  return jnp.sum(jnp.where(a <= c, jnp.where(v != 0, a, 0.0), (a * a + c * c) / (2.0 * c)))


def _berhu_prox_leaf(v, tau, c):
  a = jnp.abs(v)
  return jnp.where(a <= c + tau, v - jnp.clip(v, -tau, tau), v / (1.0 + tau / c))


def _berhu_threshold(tau, c=1.0):
  registry.check_shape("berhu", c=c)
  return jnp.asarray(tau)


@contextlib.contextmanager
def _berhu_registered():
  record = registry.register(registry.Penalty(
      name="berhu", value=penalties.from_leaf_function(_berhu_value_leaf, "berhu"),
      prox=prox.from_leaf_function(_berhu_prox_leaf, "berhu"), threshold=_berhu_threshold,
      shape_params=(registry.ShapeParam("c", 1.0, lower=0.0, lower_inclusive=False),),
      examples=({"c": 1.0}, {"c": 0.2}), reference="Owen 2007"))
  try:
    yield record
  finally:
    registry.unregister("berhu")


@pytest.mark.parametrize("check", ELEMENTWISE_CHECKS, ids=lambda c: c.__name__[6:])
def test_user_penalty_passes_every_generic_check(check):
  with _berhu_registered() as record:
    for kw in record.examples:
      check("berhu", kw)
  assert "berhu" not in registry.names()


def test_user_penalty_works_by_name_everywhere():
  with _berhu_registered():
    params = {"kernel": jnp.asarray(np.random.default_rng(5).normal(0, 1, (6, 5)))}
    grads = jax.tree.map(jnp.ones_like, params)
    assert "berhu" in prox.PROX and "berhu" in penalties.PENALTIES
    tx = optax.chain(rvsm("berhu", 0.1, 1.0, c=0.5), optax.sgd(0.1))
    updates, state = tx.update(grads, tx.init(params), params)
    u = state[0].u["kernel"]
    np.testing.assert_allclose(np.asarray(u), np.asarray(prox.get("berhu")(params["kernel"], 0.1, c=0.5)))
    inverse = selection.threshold_inverse("berhu", 0.1, c=0.5)
    np.testing.assert_allclose(inverse(np.array([0.3, 2.0])), [0.3, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="c must satisfy"):
      optimizers.adam(0.1, penalty="berhu", strength=0.1, c=-1.0)
