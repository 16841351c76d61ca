"""GAN training, standard or with activity sparsity (Zhang et al. 2017, eqs. (13)-(15); signs in `docs/methods.md`).

With D(x) = sigmoid(logit(x)) and z ~ U(-1, 1)^latent, the two minimised losses are

  L_D = -E log D(x) - E log(1 - D(G(z))) + penalty_D(D's activations)
  L_G = generator loss + penalty_G(G's activations),

the generator loss being the non-saturating -E log D(G(z)) (the default, as in
most DCGAN code) or the saturating E log(1 - D(G(z))) the paper writes. The
penalties are the paper's local + global sparsity on mean activations (see
`activity.from_mean_activations`); for D they are averaged over its real and
fake passes. The paper adds them to a maximised objective, which would reward
density; here they are added to the minimised losses.

Every step makes one discriminator update and then `g_steps` generator updates
with the same z. Like `train.fit`, the step runs data-parallel under pmap (one
device: jit(shard_map)) with axis name "batch": each replica takes its shard of the
real batch and its slice of one global z draw, gradients are averaged with
`lax.pmean`, and batch norm and the mean activations k use global-batch
statistics when the models are built with `axis_name="batch"`; the run is then
the same on any number of devices. `fit_gan` adds tqdm progress, a loss log
every `log_every_steps` (steps.jsonl), per-epoch records (log.jsonl,
history.json) with an optional `epoch_fn` (sample grids, scores), orbax
checkpoints and bit-identical resume.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import _checks, data, runloop
from sparsejax.runloop import AXIS

__all__ = ["GANState", "GANConfig", "GANResult", "discriminator_loss", "generator_loss", "create_gan_state",
           "make_gan_train_step", "fit_gan", "generate", "sample_latents", "GENERATOR_LOSSES"]

GENERATOR_LOSSES = ("non_saturating", "saturating")
ActivityPenalty = Callable[[Any], jax.Array]


@flax.struct.dataclass
class GANState:
  """Generator and discriminator parameters, batch-norm statistics and optimizer states; a pytree."""
  step: jax.Array
  g_params: Any
  d_params: Any
  g_batch_stats: Any
  d_batch_stats: Any
  g_opt_state: Any
  d_opt_state: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class GANConfig(runloop.LoopConfig):
  """What `fit_gan` runs: the shared loop fields of `runloop.LoopConfig` and the GAN's.

  Every field is validated before the first step (a ValueError names the field and its
  allowed range). See `runloop.LoopConfig` for the seed, devices and parallelism
  ("pmap", "sharded", "fsdp"), checkpoints and progress bars.

  Attributes:
    epochs: passes over the images (default 5).
    batch_size: real images per step (default 64); the last incomplete batch of an
      epoch is dropped.
    latent_dim: size of z ~ U(-1, 1)^latent_dim.
    generator_loss: "non_saturating" (-E log D(G(z)), the default) or "saturating"
      (the paper's E log(1 - D(G(z)))).
    g_steps: generator updates per discriminator update.
    log_every_steps: a loss record every N steps in `steps.jsonl` (default 10).
  """
  epochs: int = 5
  batch_size: int = 64
  latent_dim: int = 64
  generator_loss: str = "non_saturating"
  g_steps: int = 1
  log_every_steps: int = 10

  def int_fields(self) -> list[tuple[str, int, str]]:
    """The loop's integer fields, `latent_dim` and `g_steps`."""
    return super().int_fields() + [("latent_dim", 1, "an int > 0"), ("g_steps", 1, "an int >= 1")]

  def validate(self) -> None:
    """Raises ValueError naming the first field outside its allowed range (the generator loss included)."""
    super().validate()
    if self.generator_loss not in GENERATOR_LOSSES:
      raise ValueError(f"GANConfig.generator_loss must be one of {list(GENERATOR_LOSSES)}; "
                       f"got {self.generator_loss!r}.")


def discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array) -> jax.Array:
  """-E log D(x) - E log(1 - D(G(z))) from logits (softplus form, stable for any logit)."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def generator_loss(fake_logits: jax.Array, kind: str = "non_saturating") -> jax.Array:
  """-E log D(G(z)) ("non_saturating") or E log(1 - D(G(z))) ("saturating"), from logits."""
  if kind == "non_saturating":
    return jnp.mean(jax.nn.softplus(-fake_logits))
  if kind == "saturating":
    return -jnp.mean(jax.nn.softplus(fake_logits))
  raise ValueError(f"generator_loss must be one of {list(GENERATOR_LOSSES)}; got {kind!r}.")


def sample_latents(rng: jax.Array, num: int, latent_dim: int) -> jax.Array:
  """z ~ U(-1, 1)^latent_dim, shape (num, latent_dim)."""
  return jax.random.uniform(rng, (num, latent_dim), jnp.float32, minval=-1.0, maxval=1.0)


def _split_variables(variables) -> tuple[Any, Any]:
  variables = dict(variables)
  return variables["params"], variables.get("batch_stats", {})


def create_gan_state(generator, discriminator, g_tx: optax.GradientTransformation,
                     d_tx: optax.GradientTransformation, image_shape: tuple[int, ...], latent_dim: int,
                     seed: int = 0) -> GANState:
  """Initialises both networks (batch norm in inference mode, so no mapped axis is needed) and optimizers."""
  g_key, d_key, rng = jax.random.split(jax.random.PRNGKey(seed), 3)
  g_variables = generator.clone(axis_name=None).init(g_key, jnp.zeros((1, latent_dim)), train=False)
  fake = jax.eval_shape(lambda v: generator.clone(axis_name=None).apply(v, jnp.zeros((1, latent_dim)), train=False),
                        g_variables)
  if tuple(fake.shape[1:]) != tuple(image_shape):
    raise ValueError(f"the generator makes images of shape {tuple(fake.shape[1:])} but the data's images have shape "
                     f"{tuple(image_shape)}; give a generator for this image size (e.g. dcgan.dcgan_28 for 28x28, "
                     f"dcgan.dcgan_64 for 64x64) or resize the images.")
  g_params, g_stats = _split_variables(g_variables)
  d_params, d_stats = _split_variables(discriminator.clone(axis_name=None).init(
      d_key, jnp.zeros((1, *image_shape)), train=False))
  return GANState(step=jnp.zeros([], jnp.int32), g_params=g_params, d_params=d_params, g_batch_stats=g_stats,
                  d_batch_stats=d_stats, g_opt_state=g_tx.init(g_params), d_opt_state=d_tx.init(d_params), rng=rng)


def make_gan_train_step(generator, discriminator, g_tx: optax.GradientTransformation,
                        d_tx: optax.GradientTransformation, latent_dim: int, *, num_devices: int = 1,
                        kind: str = "non_saturating", g_steps: int = 1,
                        d_penalty: ActivityPenalty | None = None, g_penalty: ActivityPenalty | None = None):
  """The pmap-able step `(state, real) -> (state, metrics)`; `real` is this replica's images in [0, 1].

  Args:
    generator, discriminator: flax modules (e.g. `models.dcgan.dcgan_28(axis_name="batch")`).
    g_tx, d_tx: optax chains of the two players.
    latent_dim: size of z.
    num_devices: replicas over all processes (z is drawn for the global batch and sliced).
    kind: generator loss, "non_saturating" or "saturating".
    g_steps: generator updates per discriminator update.
    d_penalty, g_penalty: `fn(intermediates) -> scalar` on sown activations
      (e.g. `activity.from_mean_activations(...)`), or None for the standard GAN.
  """
  generator_loss(jnp.zeros(1), kind)  # validates `kind` at build time
  if g_steps < 1:
    raise ValueError(f"g_steps must be >= 1; got {g_steps}.")
  d_mutable = ["batch_stats"] + (["intermediates"] if d_penalty is not None else [])
  g_mutable = ["batch_stats"] + (["intermediates"] if g_penalty is not None else [])

  def step(state: GANState, real):
    real = 2.0 * real - 1.0
    local = real.shape[0]
    z_all = sample_latents(jax.random.fold_in(state.rng, state.step), local * num_devices, latent_dim)
    z = lax.dynamic_slice_in_dim(z_all, lax.axis_index(AXIS) * local, local)

    fake, _ = generator.apply({"params": state.g_params, "batch_stats": state.g_batch_stats}, z, train=True,
                              mutable=["batch_stats"])
    fake = lax.stop_gradient(fake)

    def d_objective(d_params):
      real_logits, real_vars = discriminator.apply({"params": d_params, "batch_stats": state.d_batch_stats}, real,
                                                   train=True, mutable=d_mutable)
      fake_logits, fake_vars = discriminator.apply({"params": d_params, "batch_stats": real_vars["batch_stats"]},
                                                   fake, train=True, mutable=d_mutable)
      loss = discriminator_loss(real_logits, fake_logits)
      penalty = jnp.zeros(())
      if d_penalty is not None:
        penalty = 0.5 * (d_penalty(real_vars["intermediates"]) + d_penalty(fake_vars["intermediates"]))
      aux = (loss, penalty, fake_vars["batch_stats"], jnp.mean(jax.nn.sigmoid(real_logits)),
             jnp.mean(jax.nn.sigmoid(fake_logits)))
      return loss + penalty, aux

    d_grads, (d_loss, d_pen, d_stats, d_real, d_fake) = jax.grad(d_objective, has_aux=True)(state.d_params)
    d_updates, d_opt_state = d_tx.update(lax.pmean(d_grads, AXIS), state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)
    d_stats = lax.pmean(d_stats, AXIS)

    def g_objective(g_params, g_stats):
      images, g_vars = generator.apply({"params": g_params, "batch_stats": g_stats}, z, train=True,
                                       mutable=g_mutable)
      logits, _ = discriminator.apply({"params": d_params, "batch_stats": d_stats}, images, train=True,
                                      mutable=["batch_stats"])
      loss = generator_loss(logits, kind)
      penalty = g_penalty(g_vars["intermediates"]) if g_penalty is not None else jnp.zeros(())
      return loss + penalty, (loss, penalty, g_vars["batch_stats"])

    g_params, g_stats, g_opt_state = state.g_params, state.g_batch_stats, state.g_opt_state
    for _ in range(g_steps):
      g_grads, (g_loss, g_pen, new_stats) = jax.grad(g_objective, has_aux=True)(g_params, g_stats)
      g_updates, g_opt_state = g_tx.update(lax.pmean(g_grads, AXIS), g_opt_state, g_params)
      g_params = optax.apply_updates(g_params, g_updates)
      g_stats = lax.pmean(new_stats, AXIS)

    new_state = state.replace(step=state.step + 1, g_params=g_params, d_params=d_params, g_batch_stats=g_stats,
                              d_batch_stats=d_stats, g_opt_state=g_opt_state, d_opt_state=d_opt_state)
    step_metrics = {"d_loss": d_loss, "g_loss": g_loss, "d_penalty": d_pen, "g_penalty": g_pen,
                    "d_real": d_real, "d_fake": d_fake}
    return new_state, lax.pmean(step_metrics, AXIS)

  return step


def generate(generator, state: GANState, z: jax.Array, batch_statistics: bool = False) -> np.ndarray:
  """Images in [0, 1] from latents `z` with the state's generator (host arrays, unreplicated state).

  `batch_statistics=False` uses batch norm's running averages (inference);
  True normalises with the statistics of `z`'s batch, as in training.
  """
  module = generator.clone(axis_name=None)
  variables = {"params": state.g_params, "batch_stats": state.g_batch_stats}
  if batch_statistics:
    images, _ = module.apply(variables, z, train=True, mutable=["batch_stats"])
  else:
    images = module.apply(variables, z, train=False)
  return np.asarray((images + 1.0) / 2.0)


@dataclasses.dataclass
class GANResult:
  """What `fit_gan` returns: the final state on the host, the per-epoch history and the step records."""
  state: GANState            # final state on the host (unreplicated)
  history: list[dict]        # one record per epoch (also log.jsonl / history.json)
  steps: list[dict]          # loss records every `log_every_steps` (also steps.jsonl)
  workdir: str


def _mean_and_std(window: list[dict]) -> dict:
  out = {}
  for k, v in runloop.metric_values(window).items():
    out[k] = float(v.mean())
    out[f"{k}_std"] = float(v.std())
  return out


def fit_gan(generator, discriminator, g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation,
            images: np.ndarray, config: GANConfig, workdir: str, *, d_penalty: ActivityPenalty | None = None,
            g_penalty: ActivityPenalty | None = None, resume: bool = False,
            epoch_fn: Callable[[GANState, int], dict] | None = None, overwrite: bool = False) -> GANResult:
  """Trains a GAN data-parallel over local devices on `images` (N, H, W, C) in [0, 1].

  Args:
    generator, discriminator: flax modules; build them with `axis_name="batch"`
      for synchronised batch norm (device-count independent runs).
    g_tx, d_tx: optax chains (DCGAN: `optax.adam(2e-4, b1=0.5)`).
    images: training images in [0, 1]; the last incomplete batch of an epoch is dropped.
    config: `GANConfig`.
    workdir: where steps.jsonl, log.jsonl, history.json and checkpoints/ go.
    d_penalty, g_penalty: activity penalties (sparse GAN) or None (standard).
    resume: continue from the latest checkpoint in `workdir` (bit-identical); the
      batch size, seed and data must match the stored run.
    overwrite: replace another run's checkpoints and records in `workdir`.
    epoch_fn: `(host_state, epoch) -> dict` run at each epoch end (sample grids,
      scores); its dict is merged into the epoch record.

  Raises:
    ValueError: bad batch size or device count, non-finite or out-of-range images.
    runloop.NonFiniteLossError: a loss became NaN/inf; the last good checkpoint is kept.
  """
  if not isinstance(config, GANConfig):
    raise TypeError(f"config must be a gan.GANConfig; got {type(config).__name__}.")
  config.validate()
  for name, fn in (("d_penalty", d_penalty), ("g_penalty", g_penalty)):
    _checks.check_callable(name, fn, "a callable intermediates -> scalar", optional=True)
  _checks.check_callable("epoch_fn", epoch_fn, "a callable (host_state, epoch) -> dict", optional=True)
  workdir = runloop.workdir_path(workdir)
  images = np.asarray(images, np.float32)
  if images.ndim != 4:
    raise ValueError(f"images must have shape (N, H, W, C); got {images.shape}.")
  devices = runloop.data_parallel_devices(config.num_devices, config.batch_size)
  steps_per_epoch = len(images) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"images: {len(images)} examples is fewer than one batch of {config.batch_size}.")
  if config.check_finite_inputs:
    data.check_finite(images, "images", config.batch_size)
    if images.min() < 0.0 or images.max() > 1.0:
      raise ValueError(f"images must lie in [0, 1]; got range [{images.min():.3g}, {images.max():.3g}].")
  initial = create_gan_state(generator, discriminator, g_tx, d_tx, images.shape[1:], config.latent_dim, config.seed)
  placement = runloop.DataParallel(devices, config.parallelism, config.fsdp_devices)

  def epoch_end(rstate, epoch: int) -> dict:
    return {} if epoch_fn is None else epoch_fn(jax.tree.map(jnp.asarray, placement.host(rstate)), epoch)

  hooks = runloop.LoopHooks(
      step=make_gan_train_step(generator, discriminator, g_tx, d_tx, config.latent_dim, num_devices=placement.replicas,
                               kind=config.generator_loss, g_steps=config.g_steps, d_penalty=d_penalty,
                               g_penalty=g_penalty),
      epoch_batches=lambda epoch: data.epoch_batches(len(images), config.batch_size, config.seed,
                                                     epoch)[:steps_per_epoch],
      load_batch=lambda idx: (images[runloop.process_slice(idx)[0]],),
      summarize=runloop.mean_metrics, epoch_summary=_mean_and_std, epoch_end=epoch_end,
      progress_keys=("d_loss", "g_loss", "fid"))
  run_config = {"trainer": "fit_gan", "batch_size": config.batch_size, "seed": config.seed,
                "num_images": len(images), "image_shape": list(images.shape[1:]), "latent_dim": config.latent_dim}
  result = runloop.run_epochs(config, workdir, hooks, placement, initial, run_config=run_config, resume=resume,
                              overwrite=overwrite)
  return GANResult(state=result.state, history=result.history, steps=result.steps, workdir=workdir)
