"""DCGAN models, GAN losses and the data-parallel GAN trainer (standard and sparse, eqs. (14)-(15))."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sparsejax import activity, gan
from sparsejax.models import dcgan
from sparsejax.runloop import AXIS, NonFiniteLossError

pytestmark = [pytest.mark.integration,  # the integration tier: pytest -m integration (see README)
              pytest.mark.float64]  # equalities to 1e-10..1e-12


def _images(n=96, side=28, seed=0):
  """Blobs: bright discs at random places on a dark background, in [0, 1]."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:side, :side]
  centres = rng.uniform(6, side - 6, (n, 2))
  radii = rng.uniform(3, 6, n)
  discs = (yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
  return (discs < radii[:, None, None] ** 2).astype(np.float32)[..., None]


def _k_penalty(k):
  return 3.0 * activity.normal_sparse_rbm(k) + 0.005 * activity.l_half_sum(k, eps=1e-8)


def _config(**kw):
  base = dict(epochs=2, batch_size=32, latent_dim=8, log_every_steps=1, progress=False, checkpoint=False)
  base.update(kw)
  return gan.GANConfig(**base)


def _fit(workdir, num_devices, sparse=False, images=None, resume=False, epoch_fn=None, **kw):
  g, d = dcgan.dcgan_28(1, width=4, axis_name=AXIS)
  pen = activity.from_mean_activations(_k_penalty, axis_name=AXIS) if sparse else None
  tx = optax.adam(2e-3, b1=0.5)
  images = _images() if images is None else images
  return gan.fit_gan(g, d, tx, tx, images, _config(num_devices=num_devices, **kw), str(workdir),
                     d_penalty=pen, g_penalty=pen, resume=resume, epoch_fn=epoch_fn)


# ------------------------------------------------------------------ models


def test_dcgan_28_shapes_range_and_sown_activations():
  g, d = dcgan.dcgan_28(1, width=8)
  z = jnp.ones((3, 16)) * 0.3
  g_vars = g.init(jax.random.PRNGKey(0), z, train=False)
  images, sown = g.apply(g_vars, z, train=True, mutable=["batch_stats", "intermediates"])
  assert images.shape == (3, 28, 28, 1) and float(jnp.max(jnp.abs(images))) <= 1.0
  assert set(sown["intermediates"]) == {"activation_0", "activation_1"}
  assert sown["intermediates"]["activation_0"][0].shape == (3, 7, 7, 16)
  assert sown["intermediates"]["activation_1"][0].shape == (3, 14, 14, 8)
  assert float(jnp.min(sown["intermediates"]["activation_1"][0])) >= 0.0, "ReLU maps"
  d_vars = d.init(jax.random.PRNGKey(1), images, train=False)
  logits, d_sown = d.apply(d_vars, images, train=True, mutable=["batch_stats", "intermediates"])
  assert logits.shape == (3,)
  assert d_sown["intermediates"]["activation_1"][0].shape == (3, 7, 7, 16)
  assert "BatchNorm_0" not in d_vars["params"], "no batch norm on D's first layer (DCGAN)"


def test_dcgan_64_is_the_papers_network():
  g, d = dcgan.dcgan_64()
  z = jnp.zeros((2, 64))
  shapes = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False))
  assert shapes["params"]["Dense_0"]["kernel"].shape == (64, 4 * 4 * 1024)
  widths = [shapes["params"][f"ConvTranspose_{i}"]["kernel"].shape[-1] for i in range(4)]
  assert widths == [512, 256, 128, 3]
  out = jax.eval_shape(lambda: g.apply(g.init(jax.random.PRNGKey(0), z, train=False), z, train=False))
  assert out.shape == (2, 64, 64, 3)
  d_shapes = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), jnp.zeros((2, 64, 64, 3)), train=False))
  assert [d_shapes["params"][f"Conv_{i}"]["kernel"].shape[-1] for i in range(4)] == [128, 256, 512, 1024]
  assert d_shapes["params"]["Dense_0"]["kernel"].shape == (4 * 4 * 1024, 1)
  with pytest.raises(ValueError, match="width"):
    dcgan.dcgan_28(width=0)


# ------------------------------------------------------------------ losses


def test_losses_equal_their_log_forms():
  r = jnp.array([-3.0, 0.2, 4.0])
  f = jnp.array([1.5, -2.0, 0.0])
  sig = jax.nn.sigmoid
  expected_d = -jnp.mean(jnp.log(sig(r))) - jnp.mean(jnp.log(1 - sig(f)))
  np.testing.assert_allclose(gan.discriminator_loss(r, f), expected_d, rtol=1e-10)
  np.testing.assert_allclose(gan.generator_loss(f), -jnp.mean(jnp.log(sig(f))), rtol=1e-10)
  np.testing.assert_allclose(gan.generator_loss(f, "saturating"), jnp.mean(jnp.log(1 - sig(f))), rtol=1e-10)
  assert np.isfinite(gan.discriminator_loss(jnp.array([-800.0]), jnp.array([800.0])))
  with pytest.raises(ValueError, match="generator_loss"):
    gan.generator_loss(f, "wasserstein")


def test_mean_activation_penalty_pools_and_averages_over_the_mapped_axis():
  a = jax.random.uniform(jax.random.PRNGKey(0), (4, 3, 3, 5))
  sown = {"activation_0": (a,), "activation_1": (a[:, 0, 0, :2],)}
  fn = activity.from_mean_activations(lambda k: jnp.sum(k ** 2), pool="channel")
  expected = jnp.sum(jnp.mean(a, axis=(0, 1, 2)) ** 2) + jnp.sum(jnp.mean(a[:, 0, 0, :2], axis=0) ** 2)
  np.testing.assert_allclose(fn(sown), expected, rtol=1e-12)
  unit = activity.from_mean_activations(lambda k: jnp.sum(k), pool="unit",
                                        select=lambda name: name.startswith("activation_0"))
  np.testing.assert_allclose(unit(sown), jnp.sum(jnp.mean(a, axis=0)), rtol=1e-12)
  # Inside vmap with the axis name, k is the mean over the whole (global) batch.
  mapped = activity.from_mean_activations(lambda k: jnp.sum(k ** 2), axis_name="i")
  halves = jax.vmap(lambda x: mapped({"a": (x,)}), axis_name="i")(a.reshape(2, 2, 3, 3, 5))
  np.testing.assert_allclose(halves, jnp.sum(jnp.mean(a, axis=(0, 1, 2)) ** 2) * jnp.ones(2), rtol=1e-12)
  with pytest.raises(ValueError, match="pool"):
    activity.from_mean_activations(jnp.sum, pool="spatial")


def test_sparse_penalty_gradient_equals_global_batch_gradient_under_vmap():
  """pmean of per-replica gradients of penalty(pmean k) equals the gradient on the whole batch."""
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 6))
  w = jax.random.normal(jax.random.PRNGKey(1), (6, 4))

  def loss(w, xs, axis_name=None):
    h = jax.nn.relu(xs @ w)
    return activity.from_mean_activations(_k_penalty, axis_name=axis_name)({"h": (h,)})

  whole = jax.grad(loss)(w, x)
  per = jax.vmap(lambda xs: jax.lax.pmean(jax.grad(loss)(w, xs, "i"), "i"), axis_name="i")(x.reshape(2, 4, 6))
  np.testing.assert_allclose(per[0], whole, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ training


def test_two_devices_equal_one_and_losses_are_finite(tmp_path):
  assert jax.local_device_count() >= 2
  one = _fit(tmp_path / "one", 1, sparse=True)
  two = _fit(tmp_path / "two", 2, sparse=True)
  for key in ("d_loss", "g_loss", "d_penalty", "g_penalty"):
    values = [r[key] for r in two.history]
    assert np.all(np.isfinite(values))
    np.testing.assert_allclose(values, [r[key] for r in one.history], rtol=2e-4, atol=2e-4)
  for a, b in zip(jax.tree.leaves(one.state.g_params), jax.tree.leaves(two.state.g_params)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
  assert len(two.steps) == two.history[-1]["step"] == 2 * (96 // 32)
  assert two.history[-1]["d_penalty"] != 0.0 and one.history[-1]["g_penalty"] != 0.0


def test_standard_run_has_no_penalty_and_differs_from_sparse(tmp_path):
  standard = _fit(tmp_path / "standard", 2)
  sparse = _fit(tmp_path / "sparse", 2, sparse=True)
  assert all(r["d_penalty"] == 0.0 and r["g_penalty"] == 0.0 for r in standard.history)
  diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves(standard.state.g_params), jax.tree.leaves(sparse.state.g_params)))
  assert diff > 1e-4


def test_sparse_penalty_lowers_generator_activations(tmp_path):
  """The global sqrt(k) term (made strong) drives G's mean activations down; the standard run does not."""
  g, d = dcgan.dcgan_28(1, width=4, axis_name=AXIS)
  tx = optax.adam(2e-3, b1=0.5)
  strong = activity.from_mean_activations(lambda k: 5.0 * activity.l_half_sum(k, eps=1e-8), axis_name=AXIS)
  z = gan.sample_latents(jax.random.PRNGKey(5), 64, 8)
  means = {}
  for name, pen in (("standard", None), ("sparse", strong)):
    result = gan.fit_gan(g, d, tx, tx, _images(), _config(epochs=3, num_devices=2), str(tmp_path / name),
                         g_penalty=pen)
    _, sown = g.clone(axis_name=None).apply({"params": result.state.g_params,
                                             "batch_stats": result.state.g_batch_stats},
                                            z, train=False, mutable=["intermediates"])
    means[name] = float(np.mean([jnp.mean(a) for a in jax.tree.leaves(sown)]))
  assert means["sparse"] < 0.5 * means["standard"]


def test_resume_mid_epoch_is_bit_identical(tmp_path):
  full = _fit(tmp_path / "full", 2, sparse=True, epochs=2, checkpoint=True)

  def interrupt(state, epoch):
    raise RuntimeError("interrupted")

  with pytest.raises(RuntimeError, match="interrupted"):
    _fit(tmp_path / "part", 2, sparse=True, checkpoint=True, checkpoint_every_steps=2, epoch_fn=interrupt)
  resumed = _fit(tmp_path / "part", 2, sparse=True, checkpoint=True, resume=True)
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in resumed.steps] == [r["step"] for r in full.steps]
  with open(tmp_path / "part" / "history.json") as f:
    assert [r["epoch"] for r in json.load(f)] == [1, 2]


def test_generate_and_epoch_fn_records(tmp_path):
  seen = []

  def epoch_fn(state, epoch):
    z = gan.sample_latents(jax.random.PRNGKey(0), 5, 8)
    g, _ = dcgan.dcgan_28(1, width=4, axis_name=AXIS)
    images = gan.generate(g, state, z)
    batch_images = gan.generate(g, state, z, batch_statistics=True)
    seen.append(epoch)
    return {"image_min": float(images.min()), "image_max": float(images.max()),
            "batch_vs_running": float(np.abs(images - batch_images).max())}

  g, d = dcgan.dcgan_28(1, width=4, axis_name=AXIS)
  tx = optax.adam(2e-3, b1=0.5)
  result = gan.fit_gan(g, d, tx, tx, _images(), _config(num_devices=2), str(tmp_path), epoch_fn=epoch_fn)
  assert seen == [1, 2]
  assert all(0.0 <= r["image_min"] <= r["image_max"] <= 1.0 for r in result.history)
  assert result.history[-1]["batch_vs_running"] > 0.0
  with open(tmp_path / "steps.jsonl") as f:
    assert len(f.readlines()) == len(result.steps) == 6


def test_bad_inputs_raise_clear_errors(tmp_path):
  images = _images()
  bad = images.copy()
  bad[40, 3, 3, 0] = np.nan
  with pytest.raises(ValueError, match="images has non-finite values: example 40 \\(batch 1\\)"):
    _fit(tmp_path, 2, images=bad)
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    _fit(tmp_path, 2, images=images * 255)
  with pytest.raises(ValueError, match="batch_size=33"):
    _fit(tmp_path, 2, batch_size=33)
  with pytest.raises(ValueError, match="fewer than one batch"):
    _fit(tmp_path, 2, images=images[:10])
  with pytest.raises(ValueError, match="shape"):
    _fit(tmp_path, 2, images=images[..., 0])
  with pytest.raises(ValueError, match="generator_loss"):
    _fit(tmp_path, 2, generator_loss="hinge")
  with pytest.raises(ValueError, match="g_steps"):
    _fit(tmp_path, 2, g_steps=0)


def test_diverging_run_raises_non_finite_loss(tmp_path):
  g, d = dcgan.dcgan_28(1, width=4, axis_name=AXIS)
  nan_penalty = activity.from_mean_activations(lambda k: jnp.sum(jnp.log(k - 10.0)), axis_name=AXIS)
  tx = optax.adam(2e-3, b1=0.5)
  with pytest.raises(NonFiniteLossError, match="non-finite"):
    gan.fit_gan(g, d, tx, tx, _images(), _config(num_devices=2, checkpoint=True), str(tmp_path),
                d_penalty=nan_penalty)


# ------------------------------------------------------------------ sample quality


def test_frechet_distance_closed_forms_and_reference():
  from scipy import linalg

  from sparsejax import sample_quality
  rng = np.random.default_rng(0)
  a = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
  assert sample_quality.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
  shift = rng.normal(size=6)
  assert sample_quality.frechet_distance(a, a + shift) == pytest.approx(np.sum(shift ** 2), rel=1e-9)
  centred = a - a.mean(0)
  # S_b = 4 S_a: tr(S + 4S - 2 * 2S) = tr(S).
  assert sample_quality.frechet_distance(centred, 2 * centred) == pytest.approx(np.trace(np.cov(a.T)), rel=1e-9)
  b = rng.normal(size=(400, 6)) * 1.7 + 0.3
  ca, cb = np.cov(a.T), np.cov(b.T)
  reference = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
  assert sample_quality.frechet_distance(a, b) == pytest.approx(reference, rel=1e-7)
  with pytest.raises(ValueError, match="features_b has 5"):
    sample_quality.frechet_distance(a, b[:, :5])
  with pytest.raises(ValueError, match="features_a"):
    sample_quality.frechet_distance(a[:1], b)


def test_inception_score_bounds():
  from sparsejax import sample_quality
  assert sample_quality.inception_score(np.full((10, 4), 0.25)) == pytest.approx(1.0)
  assert sample_quality.inception_score(np.eye(4)[np.arange(20) % 4]) == pytest.approx(4.0)
  assert 1.0 < sample_quality.inception_score(np.eye(4)[np.arange(20) % 2] * 0.9 + 0.025) < 2.0
  with pytest.raises(ValueError, match="probability distributions"):
    sample_quality.inception_score(np.ones((3, 4)))


def test_classifier_score_ranks_real_above_noise():
  from sparsejax import sample_quality
  from sparsejax.models import cnn
  x = _images(200, seed=1)
  model = cnn.ConvNet((cnn.ConvSpec(4),), (16, 2))
  params = cnn.init_model(model, (28, 28, 1))
  scorer = sample_quality.ClassifierScore(model, params, x[:100], batch_size=64)
  assert scorer.real_features.shape == (100, 16)
  real = scorer(x[100:])
  noise = scorer(np.random.default_rng(0).uniform(size=(100, 28, 28, 1)).astype(np.float32))
  assert real["fid"] < noise["fid"]
  assert 1.0 <= real["inception_score"] <= 2.0 and 0.0 <= real["class_entropy"] <= np.log(2) + 1e-9


def test_64x64_rgb_architecture_trains_with_sparse_penalties(tmp_path):
  """The paper's CelebA layout (4 stride-2 layers each way, 4x4 -> 64x64 RGB), narrowed to stay fast."""
  g = dcgan.Generator((32, 16, 8, 4), channels=3, base_size=4, axis_name=AXIS)
  d = dcgan.Discriminator((4, 8, 16, 32), axis_name=AXIS)
  images = np.random.default_rng(0).uniform(size=(32, 64, 64, 3)).astype(np.float32)
  pen = activity.from_mean_activations(_k_penalty, axis_name=AXIS)
  tx = optax.adam(2e-4, b1=0.5)
  result = gan.fit_gan(g, d, tx, tx, images, _config(epochs=1, batch_size=16, num_devices=2), str(tmp_path),
                       d_penalty=pen, g_penalty=pen)
  assert len(result.steps) == 2 and all(np.isfinite(s["d_loss"]) and np.isfinite(s["g_loss"]) for s in result.steps)
  assert gan.generate(g, result.state, gan.sample_latents(jax.random.PRNGKey(0), 3, 8)).shape == (3, 64, 64, 3)
