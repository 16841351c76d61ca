"""Patterns and layer distributions (`patterns`), dynamic sparse training (`dst`) and straight-through training (`ste`)."""

import pickle

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from sparsejax import dst, pattern_prox, patterns, pruning, registry, ste


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"Dense_0": {"kernel": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32), "bias": jnp.zeros(16)},
          "Dense_1": {"kernel": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), "bias": jnp.zeros(8)}}


def _kernels(tree):
  return [tree["Dense_0"]["kernel"], tree["Dense_1"]["kernel"]]


def _grads(params, t):
  return jax.tree.map(lambda x: jax.random.normal(jax.random.key(1000 + t), x.shape, x.dtype), params)


def _run(tx, params, steps, check=None):
  """Applies `steps` random-gradient steps; calls check(t, params, state, old_state) after each."""
  state = tx.init(params)
  step = jax.jit(lambda p, s, g: tx.update(g, s, p))
  for t in range(steps):
    old = state
    updates, state = step(params, state, _grads(params, t))
    params = optax.apply_updates(params, updates)
    if check is not None:
      check(t, params, state, old)
  return params, state


# ------------------------------------------------------------- patterns


def test_top_k_mask_keeps_exactly_k_with_ties_broken_by_position():
  scores = jnp.asarray([1.0, 3.0, 3.0, 3.0, 0.0, np.nan, 2.0])
  for k in range(8):
    keep = np.asarray(patterns.top_k_mask(scores, k))
    assert keep.sum() == k
  np.testing.assert_array_equal(np.asarray(patterns.top_k_mask(scores, 2)), [0, 1, 1, 0, 0, 0, 0])
  assert not np.asarray(patterns.top_k_mask(scores, 6))[5]  # NaN never wins a place before a number
  assert int(jax.jit(patterns.top_k_mask)(scores, jnp.asarray(3)).sum()) == 3  # traced k


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8), (3, 3)])
def test_n_of_m_is_the_exact_projection(n, m):
  rng = np.random.default_rng(n * 10 + m)
  w = rng.normal(size=(3, 3, 8 * m // m * m, 6))  # a conv kernel: groups along its input axis (-2)
  keep = np.asarray(patterns.n_of_m_mask(jnp.abs(jnp.asarray(w)), n, m))
  groups = np.moveaxis(keep, 2, -1).reshape(3, 3, 6, -1, m)
  assert (groups.sum(-1) == n).all()
  # the kept entries are the n largest of their group: the projection onto N:M (max kept norm)
  mags = np.moveaxis(np.abs(w), 2, -1).reshape(3, 3, 6, -1, m)
  best = -np.sort(-mags, axis=-1)[..., :n].sum(-1)
  np.testing.assert_allclose((mags * groups).sum(-1), best, rtol=1e-6)


def test_n_of_m_ties_and_divisibility():
  keep = np.asarray(patterns.n_of_m_mask(jnp.ones((8, 2)), 2, 4))
  assert (keep.reshape(2, 4, 2).sum(1) == 2).all()
  with pytest.raises(ValueError, match="multiple of M=4"):
    patterns.n_of_m_mask(jnp.ones((6, 2)), 2, 4)
  fits = patterns.fitting("2:4")({"conv": {"kernel": np.ones((5, 5, 1, 6))}, "dense": {"kernel": np.ones((8, 3))}})
  assert fits == {"conv": {"kernel": False}, "dense": {"kernel": True}}


def test_blocks_keep_whole_blocks_by_norm_and_tile_partial_edges():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(8, 12))
  keep = np.asarray(patterns.block_mask(jnp.abs(jnp.asarray(w)), (2, 4), 5))
  blocks = keep.reshape(4, 2, 3, 4).transpose(0, 2, 1, 3)
  assert set(np.unique(blocks.reshape(12, 8).sum(1))) <= {0, 8} and blocks.all(axis=(2, 3)).sum() == 5
  norms = (w.reshape(4, 2, 3, 4).transpose(0, 2, 1, 3) ** 2).sum(axis=(2, 3)).ravel()
  assert set(np.flatnonzero(blocks.all(axis=(2, 3)).ravel())) == set(np.argsort(-norms)[:5])
  edge = np.asarray(patterns.block_mask(jnp.arange(30.0).reshape(5, 6), (2, 4), 2))
  np.testing.assert_array_equal(edge, np.r_[np.zeros((2, 6)), np.tile([1, 1, 1, 1, 0, 0], (3, 1))])


@pytest.mark.parametrize("bad", ["2:1", "0:4", "4", "x4", "1x0", 24, None])
def test_bad_patterns_are_named(bad):
  with pytest.raises(ValueError, match="pattern must be"):
    patterns.parse_pattern(bad)


def test_erk_densities_sum_to_the_target_and_cap_small_layers():
  shapes = {"c1": {"kernel": np.zeros((5, 5, 1, 6))}, "c2": {"kernel": np.zeros((5, 5, 6, 16))},
            "d1": {"kernel": np.zeros((256, 120))}, "d2": {"kernel": np.zeros((120, 84))}, "d3": {"kernel": np.zeros((84, 10))},
            "d3b": {"bias": np.zeros(10)}}
  for sparsity in (0.8, 0.9, 0.95, 0.99):
    layer = patterns.layer_sparsities(shapes, sparsity, "erk")
    sizes = {k: v["kernel"].size for k, v in shapes.items() if "kernel" in v}
    kept = sum((1 - layer[k]["kernel"]) * n for k, n in sizes.items())
    assert kept == pytest.approx((1 - sparsity) * sum(sizes.values()), rel=1e-9)
    assert all(0.0 <= layer[k]["kernel"] <= 1.0 for k in sizes) and layer["d3b"]["bias"] is None
    # density proportional to sum(shape)/prod(shape) among the layers that are not capped
    free = [k for k in sizes if layer[k]["kernel"] > 0]
    ratios = [(1 - layer[k]["kernel"]) / (sum(shapes[k]["kernel"].shape) / sizes[k]) for k in free]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
  assert patterns.layer_sparsities(shapes, 0.8, "erk")["c1"]["kernel"] == 0.0  # 150 weights: kept dense


@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
@pytest.mark.parametrize("pattern", ["unstructured", "2x2"])
def test_select_counts_are_exact(distribution, pattern):
  params = _params()
  scores = jax.tree.map(jnp.abs, params)
  keep = patterns.select(scores, 0.75, pattern=pattern, distribution=distribution)
  kernels = _kernels(keep)
  assert np.asarray(keep["Dense_0"]["bias"]).all()
  if distribution == "global":
    unit = 4 if pattern == "2x2" else 1
    assert sum(int(k.sum()) for k in kernels) == unit * round(0.25 * (512 + 128) / unit)
  else:
    layer = patterns.layer_sparsities(params, 0.75, distribution)
    unit = 4 if pattern == "2x2" else 1
    for k, s in zip(kernels, _kernels(layer)):
      assert int(k.sum()) == unit * round((1 - s) * k.size / unit)


def test_check_sparsity_and_distribution_errors():
  assert patterns.check_sparsity(0.0, "2:4") == 0.5 and patterns.check_sparsity(0.75, "1:4") == 0.75
  with pytest.raises(ValueError, match="disagrees with pattern '2:4'"):
    patterns.check_sparsity(0.9, "2:4")
  with pytest.raises(ValueError, match="distribution must be one of"):
    patterns.layer_sparsities(_params(), 0.5, "erdos")
  with pytest.raises(ValueError, match="sparsity must satisfy"):
    patterns.layer_sparsities(_params(), 1.5, "erk")


# ------------------------------------------------------------- one-shot and GMP


def test_one_shot_saliency_keeps_the_largest_weight_times_gradient():
  params = _params(1)
  grads = _grads(params, 0)
  keep = pruning.one_shot_mask(params, 0.9, score="saliency", grads=grads)
  flat = np.concatenate([np.abs(np.asarray(w) * np.asarray(g)).ravel() for w, g in zip(_kernels(params), _kernels(grads))])
  chosen = np.concatenate([np.asarray(k).ravel() for k in _kernels(keep)])
  assert chosen.sum() == round(0.1 * flat.size)
  assert flat[chosen].min() >= flat[~chosen].max()
  with pytest.raises(ValueError, match="needs grads"):
    pruning.one_shot_mask(params, 0.9, score="saliency")
  with pytest.raises(ValueError, match="score must be one of"):
    pruning.one_shot_mask(params, 0.9, score="taylor")


@pytest.mark.parametrize("pattern,distribution,sparsity", [("2:4", None, 0.5), ("1:4", None, 0.75),
                                                           ("unstructured", "erk", 0.8), ("4x4", "uniform", 0.75)])
def test_gmp_patterns_hold_exact_counts_at_every_step(pattern, distribution, sparsity):
  params = _params(2)
  tx = optax.chain(optax.sgd(0.05, momentum=0.9), pruning.gradual_magnitude_pruning(
      sparsity, 2, 12, 2, pattern=pattern, distribution=distribution))
  parsed = patterns.parse_pattern(pattern)

  def check(t, p, state, _):
    mask = state[1].mask
    for w, m in zip(_kernels(p), _kernels(mask)):
      w, m = np.asarray(w), np.asarray(m)
      assert (w[~m] == 0).all()
      if parsed.kind == "n:m":
        per_group = m.reshape(-1, parsed.m, m.shape[-1]).sum(1)
        assert (per_group == per_group.flat[0]).all()  # every group at the same count
    if t >= 12:
      kept = [int(np.asarray(m).sum()) for m in _kernels(mask)]
      if parsed.kind == "n:m":
        assert kept == [512 * parsed.n // parsed.m, 128 * parsed.n // parsed.m]
      elif distribution == "erk":
        layer = patterns.layer_sparsities(p, sparsity, "erk")
        assert kept == [round((1 - s) * n) for s, n in zip(_kernels(layer), (512, 128))]
      else:
        assert kept == [16 * round(0.25 * 32), 16 * round(0.25 * 8)]

  _run(tx, params, 14, check)
  with pytest.raises(ValueError, match="target_sparsity=0.9 disagrees"):
    pruning.gradual_magnitude_pruning(0.9, 0, 10, pattern="2:4")


# ------------------------------------------------------------- dynamic sparse training


@pytest.mark.parametrize("regrow,distribution", [("gradient", "erk"), ("random", "uniform"), ("gradient", "global")])
def test_dynamic_sparse_counts_drops_and_regrowth(regrow, distribution):
  params = _params(3)
  tx = dst.dynamic_sparse(optax.sgd(0.05, momentum=0.9), 0.8, end_step=16, regrow=regrow, distribution=distribution,
                          update_every=4, initial_drop_fraction=0.5)
  expected = None

  def check(t, p, state, old):
    nonlocal expected
    kept = [int(np.asarray(m).sum()) for m in _kernels(state.mask)]
    expected = expected or kept
    if distribution == "global":
      assert sum(kept) == sum(expected) == round(0.2 * 640)
    else:
      assert kept == expected  # per layer, at every step
    for w, m in zip(_kernels(p), _kernels(state.mask)):
      assert (np.asarray(w)[~np.asarray(m)] == 0).all()
    new, before = _kernels(state.mask), _kernels(old.mask)
    grown = [np.asarray(n) & ~np.asarray(b) for n, b in zip(new, before)]
    moved = sum(int(g.sum()) for g in grown)
    if t in (4, 8, 12):
      fraction = float(dst.drop_fraction(t, 0.5, 0, 16))
      if distribution == "global":
        assert moved <= round(fraction * sum(kept))
      else:
        assert [int(g.sum()) for g in grown] == [round(fraction * k) for k in kept] or moved < sum(
            round(fraction * k) for k in kept)  # a dropped weight may be grown back at once
      for w, g in zip(_kernels(p), grown):
        assert (np.asarray(w)[g] == 0).all()  # regrown weights start at exactly 0
      if regrow == "gradient" and distribution != "global":
        grads = _grads(p, t)
        for g_new, grad, n in zip(grown, _kernels(grads), new):
          if g_new.any():
            # grown entries have larger |g| than every entry left out of the new mask
            assert np.abs(np.asarray(grad))[g_new].min() >= np.abs(np.asarray(grad))[~np.asarray(n)].max()
    else:
      assert moved == 0

  _run(tx, params, 18, check)


def test_dynamic_sparse_masks_gradients_before_the_optimizer():
  # Adam's moments of removed weights are never fed, so a regrown weight starts from a fresh moment
  params = _params(4)
  tx = dst.rigl(optax.adam(1e-2), 0.9, end_step=10, update_every=100)
  _, state = _run(tx, params, 3)
  mu = state.inner_state[0].mu
  for m, moment in zip(_kernels(state.mask), _kernels(mu)):
    assert (np.asarray(moment)[~np.asarray(m)] == 0).all()


def test_every_new_transform_resumes_bit_identically():
  params = _params(5)
  for tx in (dst.rigl(optax.sgd(0.05, momentum=0.9), 0.8, end_step=12, update_every=3),
             dst.sparse_evolutionary(optax.adam(1e-2), 0.8, end_step=12, update_every=3),
             dst.ac_dc(optax.sgd(0.05), 0.7, total_steps=12, reset_optimizer=True),
             ste.prox_ste(optax.sgd(0.05, momentum=0.9), "scad", 0.8, end_step=8),
             ste.magnitude_ste(optax.adam(1e-2), 0.5, end_step=8, pattern="2:4", masked_decay=2e-4),
             ste.soft_threshold_ste(optax.sgd(0.05), 0.8, end_step=8, distribution="erk"),
             optax.chain(optax.sgd(0.05, momentum=0.9), pruning.gradual_magnitude_pruning(0.5, 2, 8, 2, pattern="2:4")),
             optax.chain(optax.sgd(0.05), pattern_prox.nm_proximal("mcp", "1:4", total_steps=12))):
    straight, _ = _run(tx, params, 12)
    step = jax.jit(lambda p, s, g, tx=tx: tx.update(g, s, p))
    p, state = params, tx.init(params)
    for t in range(12):
      if t == 6:  # a checkpoint: every array to host and back, as orbax would
        p, state = pickle.loads(pickle.dumps(jax.device_get((p, state))))
      updates, state = step(p, state, _grads(p, t))
      p = optax.apply_updates(p, updates)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(p)):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_ac_dc_phases():
  phases = [bool(dst.ac_dc_phase(t, 4, 3, 5, 20)) for t in range(20)]
  assert phases == [False] * 4 + [True] * 3 + [False] * 3 + [True] * 3 + [False] * 2 + [True] * 5
  params = _params(6)
  tx = dst.ac_dc(optax.sgd(0.05, momentum=0.9), 0.75, total_steps=20, warmup_steps=4, phase_steps=3,
                 final_sparse_steps=5, reset_optimizer=True)

  def check(t, p, state, _):
    kept = [int(np.asarray(m).sum()) for m in _kernels(state.mask)]
    if phases[t]:
      assert sum(kept) == round(0.25 * 640)
      for w, m in zip(_kernels(p), _kernels(state.mask)):
        assert (np.asarray(w)[~np.asarray(m)] == 0).all()
    else:
      assert kept == [512, 128]
      assert sum(int((np.asarray(w) != 0).sum()) for w in _kernels(p)) == 640  # removed weights train again
    if t in (4, 7, 10, 13, 15):  # a phase flip: the momentum was reset, so this step is a plain SGD step
      assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.inner_state))

  final, state = _run(tx, params, 20, check)
  assert sum(int((np.asarray(w) != 0).sum()) for w in _kernels(final)) == round(0.25 * 640)
  with pytest.raises(ValueError, match="warmup_steps \\+ final_sparse_steps"):
    dst.ac_dc(optax.sgd(0.1), 0.5, total_steps=10, warmup_steps=6, final_sparse_steps=6)


def test_ac_dc_reset_restarts_the_momentum_at_a_flip():
  params = _params(7)
  kwargs = dict(total_steps=8, warmup_steps=2, phase_steps=2, final_sparse_steps=2)
  reset = dst.ac_dc(optax.sgd(0.1, momentum=0.9), 0.5, reset_optimizer=True, **kwargs)
  _, state = _run(reset, params, 3)  # step 2 entered the first sparse phase with a fresh trace
  trace = state.inner_state[0].trace
  np.testing.assert_allclose(np.asarray(trace["Dense_0"]["bias"]), np.asarray(_grads(params, 2)["Dense_0"]["bias"]),
                             rtol=1e-6)


# ------------------------------------------------------------- straight-through


def _loss(params, x):
  h = jnp.tanh(x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"])
  return jnp.sum((h @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]) ** 2)


@pytest.mark.parametrize("make,kept", [
    (lambda opt: ste.magnitude_ste(opt, 0.8, end_step=3), 128),
    (lambda opt: ste.magnitude_ste(opt, 0.5, end_step=3, pattern="2:4"), 320),
    (lambda opt: ste.prox_ste(opt, "scad", 0.8, end_step=3), 128),
    (lambda opt: ste.soft_threshold_ste(opt, 0.8, end_step=3, distribution="uniform"), 128),
], ids=["magnitude", "magnitude-2:4", "prox-scad", "st3"])
def test_ste_applies_the_gradient_at_the_sparse_point_to_the_dense_weights(make, kept):
  params = _params(8)
  x = jax.random.normal(jax.random.key(0), (4, 32))
  lr = 0.05
  tx = make(optax.sgd(lr))
  state = tx.init(params)
  p = params
  for _ in range(5):
    grads = jax.grad(_loss)(p, x)  # the gradient at the forward (sparse) params
    dense_before = state.dense
    updates, state = tx.update(grads, state, p)
    p = optax.apply_updates(p, updates)
    for d0, d1, g in zip(jax.tree.leaves(dense_before), jax.tree.leaves(state.dense), jax.tree.leaves(grads)):
      np.testing.assert_allclose(np.asarray(d1), np.asarray(d0) - lr * np.asarray(g), rtol=1e-6, atol=1e-7)
  assert sum(int((np.asarray(w) != 0).sum()) for w in _kernels(p)) == kept


@pytest.mark.parametrize("shape_scale", ["cut", "mean"])
@pytest.mark.parametrize("penalty", ["scad", "mcp", "tl1", "log_sum", "l1", "l0"])
def test_prox_ste_forward_is_the_prox_at_the_count_keeping_strength(penalty, shape_scale):
  params = _params(9)
  tx = ste.prox_ste(optax.sgd(0.0), penalty, 0.9, end_step=0, shape_scale=shape_scale, rescale=False)
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.zeros_like, params), state, params)
  forward = optax.apply_updates(params, updates)
  dense = np.concatenate([np.asarray(w).ravel() for w in _kernels(params)])
  out = np.concatenate([np.asarray(w).ravel() for w in _kernels(forward)])
  keep = round(0.1 * dense.size)
  assert (out != 0).sum() == keep
  order = np.argsort(-np.abs(dense))
  assert (out[order[:keep]] != 0).all() and (out[order[keep:]] == 0).all()
  # the survivors are the penalty's prox of the dense weights at one strength tau
  record = registry.get(penalty)
  kept_w = dense[order[:keep]]
  assert (np.abs(out[order[:keep]]) <= np.abs(kept_w) + 1e-6).all()  # a prox shrinks
  if penalty == "l1":
    tau = np.abs(dense[order[keep]])
    np.testing.assert_allclose(out[order[:keep]], np.sign(kept_w) * (np.abs(kept_w) - tau), rtol=1e-5, atol=1e-6)
  if penalty == "l0":
    np.testing.assert_array_equal(out[order[:keep]], kept_w)
  assert record.threshold is not None
  if penalty == "scad" and shape_scale == "cut":
    # lam = the cut at tau = 1: soft threshold by the cut up to twice it, identity beyond a * cut
    cut = np.abs(dense[order[keep]])
    small = np.abs(kept_w) <= 2 * cut
    np.testing.assert_allclose(out[order[:keep]][small], np.sign(kept_w[small]) * (np.abs(kept_w[small]) - cut),
                               rtol=1e-4, atol=1e-5)
    large = np.abs(kept_w) > 3.7 * cut
    np.testing.assert_allclose(out[order[:keep]][large], kept_w[large], rtol=1e-6)
  # rescaled (the default): the same support, each leaf scaled to its kept dense weights' L2 norm
  tx = ste.prox_ste(optax.sgd(0.0), penalty, 0.9, end_step=0, shape_scale=shape_scale)
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  rescaled = optax.apply_updates(params, updates)
  for w, plain, scaled in zip(_kernels(params), _kernels(forward), _kernels(rescaled)):
    w, plain, scaled = np.asarray(w), np.asarray(plain), np.asarray(scaled)
    np.testing.assert_array_equal(scaled != 0, plain != 0)
    if (plain != 0).any():
      assert np.linalg.norm(scaled) == pytest.approx(np.linalg.norm(w[plain != 0]), rel=1e-5)
      np.testing.assert_allclose(scaled, plain * (np.linalg.norm(scaled) / np.linalg.norm(plain)), rtol=1e-4, atol=1e-7)
  with pytest.raises(ValueError, match="shape_scale must be"):
    ste.prox_ste(optax.sgd(0.1), "scad", 0.9, end_step=0, shape_scale="median")
  with pytest.raises(ValueError, match="no scalar zero threshold"):
    ste.prox_ste(optax.sgd(0.1), "exclusive", 0.9, end_step=0)


def test_sr_ste_decays_the_removed_dense_weights():
  params = _params(10)
  zero = jax.tree.map(jnp.zeros_like, params)
  tx = ste.magnitude_ste(optax.sgd(1.0), 0.5, end_step=0, pattern="2:4", masked_decay=0.1)
  state = tx.init(params)
  updates, state = tx.update(zero, state, params)
  forward = optax.apply_updates(params, updates)
  _, state2 = tx.update(zero, state, forward)
  for w, d, f in zip(_kernels(state.dense), _kernels(state2.dense), _kernels(forward)):
    removed = np.asarray(f) == 0
    np.testing.assert_allclose(np.asarray(d)[removed], 0.9 * np.asarray(w)[removed], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(d)[~removed], np.asarray(w)[~removed])


def test_new_transforms_work_under_nnx_optimizer_and_multisteps():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.a = nnx.Linear(16, 12, rngs=rngs)
      self.b = nnx.Linear(12, 4, rngs=rngs)

    def __call__(self, x):
      return self.b(jax.nn.relu(self.a(x)))

  x = jax.random.normal(jax.random.key(1), (8, 16))
  for tx in (dst.rigl(optax.sgd(0.05, momentum=0.9), 0.75, end_step=6, update_every=2),
             ste.magnitude_ste(optax.adam(1e-2), 0.5, end_step=2, pattern="2:4"),
             optax.MultiSteps(dst.ac_dc(optax.sgd(0.05), 0.75, total_steps=4, warmup_steps=0, phase_steps=1,
                                        final_sparse_steps=2), every_k_schedule=2)):
    model = Net(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer):
      grads = nnx.grad(lambda m: jnp.mean(m(x) ** 2))(model)
      optimizer.update(model, grads)

    for _ in range(8):
      step(model, optimizer)
    kernels = [np.asarray(model.a.kernel[...]), np.asarray(model.b.kernel[...])]
    assert sum(int((k != 0).sum()) for k in kernels) <= 0.5 * (16 * 12 + 12 * 4)
    assert all(np.isfinite(k).all() for k in kernels)


@pytest.mark.integration  # trains with train.fit (the integration tier)
def test_rigl_trains_a_model_end_to_end_with_fit(tmp_path):
  from sparsejax import data, train
  from sparsejax.models import MLP
  (x_train, y_train), (x_test, y_test) = data.load("digits", "train"), data.load("digits", "test")
  steps = pruning.schedule_total_steps(4, len(x_train), 64)
  tx = dst.rigl(optax.sgd(0.1, momentum=0.9), 0.9, end_step=int(0.75 * steps), update_every=10)
  config = train.TrainConfig(epochs=4, batch_size=64, seed=0, progress=False)
  result = train.fit(MLP((64, 10)), tx, (x_train, y_train), (x_test, y_test), config, str(tmp_path))
  kernels = [l for l in jax.tree.leaves(result.state.params) if np.ndim(l) >= 2]
  kept = sum(int((np.asarray(k) != 0).sum()) for k in kernels)
  assert kept <= round(0.1 * sum(k.size for k in kernels))
  assert result.history[-1]["eval_accuracy"] > 0.8


def test_frontier_n_of_m_small_config(tmp_path):
  from experiments import frontier
  args = ["--dataset", "digits", "--seeds", "0", "--epochs", "2", "--batch-size", "32", "--sparsities", "0.5",
          "--pattern", "2:4", "--methods", "gmp", "ste", "scad-auto", "--gmp-frequency", "10", "--no-progress"]
  out = frontier.main(["--workdir", str(tmp_path)] + args)
  assert {r["method"] for r in out["runs"]} == {"gmp", "ste", "scad-auto"}
  for run in out["runs"]:
    assert run["sparsity"] == pytest.approx(0.5, abs=1e-9) and run["accuracy"] > 0.5
  table = (tmp_path / "digits_mlp_2of4" / "table.md").read_text()
  assert "Paired difference to GMP" in table
  rows = out["runs"]
  diffs, ahead = frontier.paired_difference(rows, "ste", "gmp", 0.5)
  by = {r["method"]: r["accuracy"] for r in rows}
  assert diffs == [pytest.approx(100 * (by["ste"] - by["gmp"]))] and ahead == int(by["ste"] > by["gmp"])
  with pytest.raises(ValueError, match="disagrees with pattern"):
    frontier.main(["--workdir", str(tmp_path), "--pattern", "2:4", "--sparsities", "0.9", "--methods", "gmp"])
  with pytest.raises(ValueError, match="has no pattern option"):
    frontier.make_tx("rigl", 0.5, 100, 10, frontier.Config(pattern="2:4"))


# ------------------------------------------------------------- the N:M regulariser


@pytest.mark.parametrize("penalty", ["l1", "scad", "mcp", "tl1"])
def test_group_prox_keeps_n_of_m_at_the_groups_own_strength(penalty):
  from sparsejax import pattern_prox
  rng = np.random.default_rng(11)
  v = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
  out = np.asarray(pattern_prox.group_prox(v, 2, 4, penalty, **({"lam": 0.5} if penalty in ("scad", "mcp") else
                                                                 {"a": 0.5} if penalty == "tl1" else {})))
  groups_v = np.asarray(v).reshape(4, 4, 6)
  groups = out.reshape(4, 4, 6)
  assert ((groups != 0).sum(1) == 2).all()
  record = registry.get(penalty)
  shape = {"lam": 0.5} if penalty in ("scad", "mcp") else {"a": 0.5} if penalty == "tl1" else {}
  for g in range(4):
    for col in range(6):
      vals = groups_v[g, :, col]
      order = np.argsort(-np.abs(vals))
      cut = np.abs(vals[order[2]])
      # the strength tau with T(tau) = cut (bisection in float64 on the host)
      lo, hi = 1e-12, 1e3
      for _ in range(200):
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if float(record.threshold(mid, **shape)) < cut else (lo, mid)
      expected = np.asarray(record.prox(jnp.asarray(vals[order[:2]]), hi, **shape))
      np.testing.assert_allclose(groups[g, order[:2], col], expected, rtol=1e-4, atol=1e-5)
      assert (groups[g, order[2:], col] == 0).all()
  np.testing.assert_array_equal(np.asarray(pattern_prox.group_prox(v, 4, 4, penalty, **shape)), np.asarray(v))


def test_nm_regulariser_ends_exactly_n_of_m_and_refits_without_shrinkage():
  from sparsejax import optimizers
  params = _params(12)
  tx = optimizers.sgd(0.05, penalty="scad", sparsity=0.75, pattern="1:4", total_steps=20)
  seen = []

  def check(t, p, state, old):
    kernels = [np.asarray(k) for k in _kernels(p)]
    per_group = [(k != 0).reshape(-1, 4, k.shape[-1]).sum(1) for k in kernels]
    seen.append(max(int(g.max()) for g in per_group))
    if t >= 5:  # the ramp (steps 2..10) has reached 1 of 4 by step 10; the prox holds it until the refit at 12
      assert all(g.max() <= (1 if t >= 10 else 4) for g in per_group)

  params_final, state = _run(tx, params, 20, check)
  assert seen[0] == 4 and seen[-1] == 1
  mask = state[1].mask
  # refit: the frozen 1:4 support, kept weights move by the plain SGD step (no shrinkage)
  p19, _ = _run(tx, params, 19)
  step = tx.update(_grads(p19, 19), _run(tx, params, 19)[1], p19)[0]
  for w, u, g, m in zip(_kernels(p19), _kernels(step), _kernels(_grads(p19, 19)), _kernels(mask)):
    m = np.asarray(m)
    np.testing.assert_allclose(np.asarray(u)[m], -0.05 * np.asarray(g)[m], rtol=1e-5, atol=1e-7)
    assert (np.asarray(w)[~m] == 0).all()
  with pytest.raises(ValueError, match="needs an 'N:M' pattern"):
    optimizers.sgd(0.1, penalty="scad", sparsity=0.5, pattern="2:4")  # no total_steps
  with pytest.raises(ValueError, match="disagrees with pattern"):
    optimizers.sgd(0.1, penalty="scad", sparsity=0.9, pattern="2:4", total_steps=10)


@pytest.mark.parametrize("kwargs", [dict(pattern="2:4"), dict(pattern="2x2", distribution="uniform"),
                                    dict(distribution="global")], ids=["2:4", "2x2-uniform", "global"])
def test_patterned_gmp_under_inject_hyperparams(kwargs):
  params = {"k": jnp.arange(1.0, 33.0).reshape(8, 4)}
  tx = optax.inject_hyperparams(pruning.gradual_magnitude_pruning)(0.5, 0, 4, 1, **kwargs)
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.tree.map(jnp.zeros_like, p), s, p))
  for _ in range(6):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  assert int((params["k"] != 0).sum()) == 16
  with pytest.raises(ValueError, match="erk' needs a concrete sparsity"):
    jax.jit(lambda s: patterns.layer_sparsities(params, s, "erk"))(0.5)


def test_a_skipped_non_finite_step_leaves_masks_and_weights_alone():
  params = _params(13)
  tx = optax.apply_if_finite(dst.rigl(optax.sgd(0.05, momentum=0.9), 0.8, end_step=10, update_every=1), 3)
  state = tx.init(params)
  updates, state = tx.update(_grads(params, 0), state, params)
  params = optax.apply_updates(params, updates)
  bad = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), _grads(params, 1))
  updates, new_state = tx.update(bad, state, params)
  assert all((np.asarray(u) == 0).all() for u in jax.tree.leaves(updates))
  for a, b in zip(jax.tree.leaves(state.inner_state.mask), jax.tree.leaves(new_state.inner_state.mask)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_line_straight_through_call():
  from sparsejax import optimizers
  params = _params(14)
  x = jax.random.normal(jax.random.key(2), (8, 32))
  tx = optimizers.sgd(0.05, momentum=0.9, penalty="scad", sparsity=0.9, total_steps=20, straight_through=True)
  state = tx.init(params)
  for _ in range(20):
    grads = jax.grad(_loss)(params, x)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert sum(int((np.asarray(k) != 0).sum()) for k in _kernels(params)) == round(0.1 * 640)
  dense = ste.dense_params(state)
  assert sum(int((np.asarray(k) != 0).sum()) for k in _kernels(dense)) == 640  # the dense weights behind them
  for bad in (dict(strength=0.1), dict(sparsity=0.9), dict(sparsity=0.5, total_steps=10, pattern="2:4")):
    with pytest.raises(ValueError, match="straight_through=True needs"):
      optimizers.sgd(0.1, penalty="scad", straight_through=True, **bad)


def test_gradual_saliency_pruning_keeps_the_most_salient_weights():
  params = _params(15)
  tx = pruning.gradual_saliency_pruning(optax.sgd(0.05), 0.75, 0, 0, 1)  # one update, at step 0
  state = tx.init(params)
  grads = _grads(params, 0)
  updates, state = tx.update(grads, state, params)
  new = optax.apply_updates(params, updates)
  keep = [np.asarray(m) for m in _kernels(dst.current_mask(state))]
  scores = np.concatenate([np.abs(np.asarray(w) * np.asarray(g)).ravel() for w, g in zip(_kernels(params), _kernels(grads))])
  chosen = np.concatenate([k.ravel() for k in keep])
  assert chosen.sum() == round(0.25 * 640) and scores[chosen].min() >= scores[~chosen].max()
  for w, m in zip(_kernels(new), keep):
    assert (np.asarray(w)[~m] == 0).all()
  # and it ramps like GMP, holding exact counts, under jit
  tx = pruning.gradual_saliency_pruning(optax.sgd(0.05, momentum=0.9), 0.5, 2, 10, 2, pattern="2:4")

  def check(t, p, state, _):
    kept = [int(np.asarray(m).sum()) for m in _kernels(dst.current_mask(state))]
    if t >= 10:
      assert kept == [256, 64]

  _run(tx, params, 12, check)


def test_gmp_with_an_empty_window_prunes_at_once():
  # begin_step == end_step: the whole target at that step (it used to stay at the initial sparsity)
  params = _params(16)
  assert float(pruning.cubic_sparsity(3, 0.75, 3, 3)) == 0.75 and float(pruning.cubic_sparsity(2, 0.75, 3, 3)) == 0.0
  tx = optax.chain(optax.sgd(0.01), pruning.gradual_magnitude_pruning(0.75, 3, 3, 1))
  final, _ = _run(tx, params, 5)
  assert sum(int((np.asarray(k) != 0).sum()) for k in _kernels(final)) == round(0.25 * 640)


@pytest.mark.integration  # trains with train.fit and orbax checkpoints (the integration tier)
@pytest.mark.parametrize("make", [
    lambda steps: dst.rigl(optax.sgd(0.1, momentum=0.9), 0.9, end_step=steps, update_every=7),
    lambda steps: ste.for_run(optax.sgd(0.1, momentum=0.9), "scad", 0.9, steps),
], ids=["rigl", "prox-ste"])
def test_fit_checkpoint_and_resume_is_bit_identical(make, tmp_path):
  from sparsejax import data, train
  from sparsejax.models import MLP
  x, y = data.load("digits", "train")
  x, y = x[:512], y[:512]
  config = train.TrainConfig(epochs=3, batch_size=64, seed=0, progress=False, checkpoint_every_steps=5)
  steps = pruning.schedule_total_steps(3, len(x), 64)
  full = train.fit(MLP((32, 10)), make(steps), (x, y), None, config, str(tmp_path / "full"))
  workdir = str(tmp_path / "resumed")
  import dataclasses
  train.fit(MLP((32, 10)), make(steps), (x, y), None, dataclasses.replace(config, epochs=2), workdir)
  resumed = train.fit(MLP((32, 10)), make(steps), (x, y), None, config, workdir, resume=True)
  for a, b in zip(jax.tree.leaves((full.state.params, full.state.opt_state)),
                  jax.tree.leaves((resumed.state.params, resumed.state.opt_state))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_grown_weights_start_from_a_fresh_optimizer_state():
  params = _params(17)
  tx = dst.sparse_evolutionary(optax.adam(1e-2), 0.8, end_step=12, update_every=2, initial_drop_fraction=0.9)
  grown_seen = 0

  def check(t, p, state, old):
    nonlocal grown_seen
    adam = state.inner_state[0]
    for new, before, mu, nu in zip(_kernels(state.mask), _kernels(old.mask), _kernels(adam.mu), _kernels(adam.nu)):
      grown = np.asarray(new) & ~np.asarray(before)
      grown_seen += int(grown.sum())
      assert (np.asarray(mu)[grown] == 0).all() and (np.asarray(nu)[grown] == 0).all()

  _run(tx, params, 12, check)
  assert grown_seen > 0


def test_pattern_fixes_the_sparsity_when_given_zero_and_counts_are_exact_with_ties():
  params = _params(18)
  tx = optax.chain(optax.sgd(0.01), pruning.gradual_magnitude_pruning(0.0, 0, 4, 1, pattern="2:4"))
  final, _ = _run(tx, params, 6)
  assert sum(int((np.asarray(k) != 0).sum()) for k in _kernels(final)) == 320
  tied = {"k": jnp.ones((8, 4))}
  for tx in (ste.magnitude_ste(optax.sgd(0.0), 0.5, end_step=0),):
    updates, _ = tx.update({"k": jnp.zeros((8, 4))}, tx.init(tied), tied)
    assert int((optax.apply_updates(tied, updates)["k"] != 0).sum()) == 16
  masks = patterns.top_k_magnitude_masks([jnp.asarray([1.0, 2.0, 2.0]), jnp.asarray([2.0, 0.5])], 2)
  assert [np.asarray(m).tolist() for m in masks] == [[False, True, True], [False, False]]
  assert int(patterns.select({"k": jnp.ones(5)}, 0.9, mask="all")["k"].sum()) == round(0.1 * 5)  # Python's round
  with pytest.raises(ValueError, match="sparsity must satisfy"):
    patterns.select({"k": jnp.ones(5)}, 1.5, mask="all")
  with pytest.raises(ValueError, match="n must satisfy"):
    patterns.n_of_m_mask(jnp.ones((8, 2)), 5, 4)
  with pytest.raises(ValueError, match="block must be two ints"):
    patterns.block_mask(jnp.ones((4, 4)), (0, 2), 1)


def test_bfloat16_params_outside_jit():
  params = {"k": jax.random.normal(jax.random.key(3), (16, 8)).astype(jnp.bfloat16)}
  for tx in (ste.prox_ste(optax.sgd(0.1), "scad", 0.75, end_step=0),
             optax.chain(optax.sgd(0.1), pattern_prox.nm_proximal("scad", "2:4", total_steps=4))):
    state = tx.init(params)
    p = params
    for _ in range(4):
      updates, state = tx.update(jax.tree.map(jnp.ones_like, p), state, p)
      p = optax.apply_updates(p, updates)
    assert p["k"].dtype == jnp.bfloat16 and int((p["k"] != 0).sum()) <= 64
