"""Every optax transform sparsejax ships, through what users of optax rely on.

Modelled on optax's `contrib/_common_test.py`: each factory below is run under
jit, checked for a stable state structure, wrapped in `optax.inject_hyperparams`
(with every numeric argument injected), `optax.MultiSteps` and
`optax.apply_if_finite`, saved and restored with orbax in the middle of training,
and driven by `flax.nnx.Optimizer`. Adding a factory to `FACTORIES` adds it to
every test.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from sparsejax import controller, optimizers, pattern_prox, pruning, rvsm, transforms

LR = 0.1

def _params():
  rng = np.random.default_rng(0)
  return {"dense": {"kernel": jnp.asarray(rng.normal(0, 1, (6, 5)), jnp.float32),
                    "bias": jnp.asarray(rng.normal(0, 1, 5), jnp.float32)},
          "out": {"kernel": jnp.asarray(rng.normal(0, 1, (5, 3)), jnp.float32),
                  "bias": jnp.zeros(3, jnp.float32)}}

def _grads(step):
  rng = np.random.default_rng(100 + step)
  return jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1, p.shape), jnp.float32), _params())

def _first_layer_mask():
  return {"dense": {"kernel": True, "bias": False}, "out": {"kernel": False, "bias": False}}

def _support(params):
  return jax.tree.map(lambda p: jnp.abs(p) > 0.5, params)

# (id, factory, positional args, keyword args, chain an optimizer before it?)
FACTORIES = [
    ("proximal", transforms.proximal, ("tl1", 0.3, LR), {"a": 0.5}, True),
    ("proximal_schedule", transforms.proximal, ("mcp", optax.linear_schedule(0.1, 0.5, 4), LR),
     {"lam": 1.0, "gamma": 3.0}, True),
    ("l1", transforms.l1, (0.3, LR), {}, True),
    ("sparse_group_lasso", transforms.sparse_group_lasso, (0.1, 0.2, LR), {}, True),
    ("cges", transforms.cges, (0.3, LR), {}, True),
    ("integrated_tl1", transforms.integrated_tl1, (0.3, LR), {"a": 0.5}, True),
    ("coupled_group_lasso", transforms.coupled_group_lasso, (20.0, LR),
     {"groups": [[("dense", "bias"), ("dense", "kernel")], [("out", "kernel")]]}, True),
    ("rvsm", rvsm.rvsm, ("tl1", 0.05, 0.5), {"a": 1.0}, False),
    ("rvsm_schedules", rvsm.rvsm, ("l0", optax.linear_schedule(0.01, 0.05, 4),
                                         optax.exponential_decay(0.5, 2, 2.0)), {}, False),
    ("nnz_controller", controller.nnz_controller, ("l1", 20, LR), {"rate": 0.5, "interval": 2}, True),
    # total_steps switches on the ramp, exact phase and refit phase (steps 2-3 refit)
    ("nnz_controller_scheduled", controller.nnz_controller, ("l1", 20, LR), {"total_steps": 5}, True),
    # the bisection controller on a composite map (group shrink, then TL1)
    ("nnz_controller_for", controller.nnz_controller_for, ("integrated_tl1", 20, LR), {"total_steps": 5, "a": 0.5},
     True),
    ("gmp", pruning.gradual_magnitude_pruning, (0.8, 0, 3), {"frequency": 2}, True),
    ("gmp_blocks", pruning.gradual_magnitude_pruning, (0.5, 0, 3), {"frequency": 1, "pattern": "2x2",
                                                                    "distribution": "uniform"}, True),
    # the N:M regulariser on the first kernel (6 inputs: groups of 3), the one-line call's prox
    ("nm_proximal", pattern_prox.nm_proximal, ("scad", "1:3"), {"total_steps": 5, "mask": _first_layer_mask()}, True),
    ("optimizers.sgd_straight_through", optimizers.sgd, (LR,), {"penalty": "scad", "sparsity": 0.5, "total_steps": 5,
                                                             "straight_through": True, "momentum": 0.9}, False),
    ("fixed_mask", pruning.fixed_mask, (), {"binary_mask": _support(_params())}, True),
    ("sparsify_then_retrain", pruning.sparsify_then_retrain,
     (transforms.l1(0.3, LR), optax.identity(), 2), {}, True),
    ("optimizers.sgd", optimizers.sgd, (LR,), {"penalty": "l1", "strength": 0.3, "momentum": 0.9}, False),
    ("optimizers.sgd_schedule", optimizers.sgd, (optax.linear_schedule(0.1, 0.02, 4),),
     {"penalty": "log_sum", "strength": 0.5, "eps": 0.1}, False),
    ("optimizers.adam", optimizers.adam, (0.05,), {"penalty": "tl1", "strength": 0.3, "a": 0.5}, False),
    ("optimizers.adamw", optimizers.adamw, (0.05,), {"penalty": "mcp", "strength": 3.0, "weight_decay": 1e-2,
                                                      "lam": 1.0, "gamma": 3.0}, False),
]
IDS = [f[0] for f in FACTORIES]

def _build(factory, args, kwargs, chain_sgd, wrap=None):
  make = factory if wrap is None else wrap(factory)
  tx = make(*args, **kwargs)
  return optax.chain(optax.sgd(LR, momentum=0.9), tx) if chain_sgd else tx

def _run(tx, steps=4, jit=True, params=None, state=None, first_step=0):
  params = _params() if params is None else params
  state = tx.init(params) if state is None else state
  update = jax.jit(tx.update) if jit else tx.update
  for step in range(first_step, first_step + steps):
    updates, state = update(_grads(step), state, params)
    params = optax.apply_updates(params, updates)
  return params, state

def _assert_trees_close(a, b, atol=1e-6):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), atol=atol, rtol=1e-5)

@pytest.mark.parametrize("name,factory,args,kwargs,chain_sgd", FACTORIES, ids=IDS)
def test_jit_equals_eager_and_state_structure_is_stable(name, factory, args, kwargs, chain_sgd):
  tx = _build(factory, args, kwargs, chain_sgd)
  eager, _ = _run(tx, jit=False)
  jitted, state = _run(tx)
  _assert_trees_close(eager, jitted)
  initial = tx.init(_params())
  assert jax.tree.structure(initial) == jax.tree.structure(state)
  for before, after in zip(jax.tree.leaves(initial), jax.tree.leaves(state)):
    assert jnp.shape(before) == jnp.shape(after) and jnp.result_type(before) == jnp.result_type(after)

@pytest.mark.float64  # compares to float64 references at tight tolerances
@pytest.mark.parametrize("name,factory,args,kwargs,chain_sgd", FACTORIES, ids=IDS)
def test_inject_hyperparams_equals_plain(name, factory, args, kwargs, chain_sgd):
  plain, _ = _run(_build(factory, args, kwargs, chain_sgd))
  injected_tx = _build(factory, args, kwargs, chain_sgd, wrap=optax.inject_hyperparams)
  injected, state = _run(injected_tx)
  _assert_trees_close(plain, injected)
  # the regularisation really acts: a few kernel entries are exactly zero or masked
  # (nothing silently turned into a no-op by inject_hyperparams)
  inner = state[1] if chain_sgd else state
  assert inner.hyperparams or name == "fixed_mask", "inject_hyperparams injected nothing"
  if name not in ("rvsm", "rvsm_schedules"):
    assert any(int(np.sum(np.asarray(leaf) == 0)) for leaf in jax.tree.leaves(injected) if leaf.ndim == 2)

def test_one_call_optimizer_uses_one_schedule_for_both_steps():
  schedule = optax.linear_schedule(0.1, 0.02, 4)
  got, _ = _run(optimizers.sgd(schedule, penalty="tl1", strength=0.5, momentum=0.9, a=0.5))
  want, _ = _run(optax.chain(optax.sgd(schedule, momentum=0.9),
                             transforms.proximal("tl1", 0.5, schedule, mask="weights_only", a=0.5)))
  _assert_trees_close(got, want, atol=0)


def test_injected_learning_rate_drives_both_steps_of_a_one_call_optimizer():
  tx = optax.inject_hyperparams(optimizers.sgd)(LR, penalty="l1", strength=0.3)
  params = _params()
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(0.01, jnp.float32)
  updates, _ = tx.update(_grads(0), state, params)
  expected = optax.chain(optax.sgd(0.01), transforms.l1(0.3, 0.01))
  want, _ = expected.update(_grads(0), expected.init(params), params)
  _assert_trees_close(updates, want)

@pytest.mark.parametrize("name,factory,args,kwargs,chain_sgd", FACTORIES, ids=IDS)
def test_multisteps_accumulates_like_one_step_on_the_mean(name, factory, args, kwargs, chain_sgd):
  tx = _build(factory, args, kwargs, chain_sgd)
  multi = optax.MultiSteps(tx, every_k_schedule=2)
  params = _params()
  state = multi.init(params)
  first, state = jax.jit(multi.update)(_grads(0), state, params)
  assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(first))
  second, _ = jax.jit(multi.update)(_grads(1), state, params)
  mean = jax.tree.map(lambda a, b: (a + b) / 2, _grads(0), _grads(1))
  want, _ = tx.update(mean, tx.init(params), params)
  _assert_trees_close(second, want)

@pytest.mark.parametrize("name,factory,args,kwargs,chain_sgd", FACTORIES, ids=IDS)
def test_apply_if_finite_skips_a_nan_step(name, factory, args, kwargs, chain_sgd):
  tx = optax.apply_if_finite(_build(factory, args, kwargs, chain_sgd), max_consecutive_errors=3)
  params = _params()
  state = tx.init(params)
  bad = jax.tree.map(lambda g: g.at[0].set(jnp.nan), _grads(0))
  updates, state = jax.jit(tx.update)(bad, state, params)
  assert all(float(jnp.max(jnp.abs(u))) == 0.0 for u in jax.tree.leaves(updates))
  assert int(state.notfinite_count) == 1
  updates, state = jax.jit(tx.update)(_grads(0), state, params)
  plain = _build(factory, args, kwargs, chain_sgd)
  want, _ = plain.update(_grads(0), plain.init(params), params)
  _assert_trees_close(updates, want)

@pytest.mark.parametrize("name,factory,args,kwargs,chain_sgd", FACTORIES, ids=IDS)
def test_orbax_checkpoint_round_trip_resumes_exactly(name, factory, args, kwargs, chain_sgd, tmp_path):
  tx = _build(factory, args, kwargs, chain_sgd)
  straight, _ = _run(tx, steps=4)
  params, state = _run(tx, steps=2)
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(tmp_path / "ckpt", {"params": params, "opt_state": state})
  with ocp.StandardCheckpointer() as checkpointer:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, {"params": params, "opt_state": state})
    restored = checkpointer.restore(tmp_path / "ckpt", abstract)
  resumed, _ = _run(tx, steps=2, params=restored["params"], state=restored["opt_state"], first_step=2)
  _assert_trees_close(straight, resumed, atol=0)

class _TwoLayer(nnx.Module):
  def __init__(self, rngs):
    self.dense = nnx.Linear(6, 5, rngs=rngs)
    self.out = nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.dense(x)))

def _as_pure(state):
  """nnx.as_pure (flax > 0.12.0) or, before it, the state as a pure dict."""
  return nnx.as_pure(state) if hasattr(nnx, "as_pure") else nnx.to_pure_dict(state)


@pytest.mark.parametrize("name,factory,args,kwargs,chain_sgd", FACTORIES, ids=IDS)
def test_flax_nnx_optimizer_matches_the_functional_update(name, factory, args, kwargs, chain_sgd):
  tx = _build(factory, args, kwargs, chain_sgd)
  model = _TwoLayer(nnx.Rngs(0))
  x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (8, 6)), jnp.float32)
  if name == "fixed_mask":
    tx = _build(factory, (), {"binary_mask": _support(_as_pure(nnx.state(model, nnx.Param)))}, chain_sgd)
  if name == "nm_proximal":  # the same first-layer mask, in the structure of the model's state
    first = jax.tree.map(lambda p: jnp.shape(p) == (6, 5), _as_pure(nnx.state(model, nnx.Param)))
    tx = _build(factory, args, {**kwargs, "mask": first}, chain_sgd)
  opt = nnx.Optimizer(model, tx, wrt=nnx.Param)
  loss = lambda m: jnp.mean(m(x) ** 2)  # noqa: E731
  state = tx.init(_as_pure(nnx.state(model, nnx.Param)))
  for _ in range(3):
    grads = nnx.grad(loss)(model)
    pure_params = _as_pure(nnx.state(model, nnx.Param))
    updates, state = tx.update(_as_pure(nnx.state(grads, nnx.Param)), state, pure_params)
    want = optax.apply_updates(pure_params, updates)
    opt.update(model, grads)
    _assert_trees_close(_as_pure(nnx.state(model, nnx.Param)), want)

def test_inject_hyperparams_with_a_callable_mask_needs_static_args():
  # A callable mask would be evaluated as a schedule: the transform refuses instead of
  # silently regularising nothing, and static_args makes it work.
  def first_layer(params):
    return jax.tree.map(lambda p: jnp.ndim(p) == 2 and jnp.shape(p)[0] == 6, params)

  with pytest.raises(ValueError, match="static_args"):
    _run(optax.inject_hyperparams(transforms.l1)(0.3, LR, mask=first_layer))
  wrapped = optax.inject_hyperparams(transforms.l1, static_args=("mask",))(0.3, LR, mask=first_layer)
  got, _ = _run(wrapped)
  want, _ = _run(transforms.l1(0.3, LR, mask=first_layer))
  _assert_trees_close(got, want)

def test_no_params_message_names_the_transform():
  for tx in (transforms.l1(0.1, LR), rvsm.rvsm("l1", 0.1, 1.0), controller.nnz_controller("l1", 3, LR),
             pruning.gradual_magnitude_pruning(0.5, 0, 2)):
    with pytest.raises(ValueError, match="params"):
      tx.update(_grads(0), tx.init(_params()))

