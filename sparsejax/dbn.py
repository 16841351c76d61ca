"""RBM and greedy DBN training through the run loop: data-parallel, checkpointed, resumable.

`fit_rbm(data, num_hidden, tx, config, workdir)` trains a Bernoulli RBM
(`models.rbm`) by contrastive divergence (CD-k; persistent chains with
`persistent=True`) as a client of `runloop.run_epochs`, so it runs under
`parallelism="pmap"|"sharded"|"fsdp"`, over several processes, with orbax
checkpoints, bit-identical resume, JSON-lines records and progress bars, like
`train.fit` and `gan.fit_gan`.

One step, per replica holding examples [f, f + b) of the global batch V0 (B examples):

  grad = pmean( CD-k(W; V0_replica) ) + d/d(W, b) penalty(k),   k = mean_{global batch} P(h | V0),

the CD-k estimate of the negative log-likelihood's gradient (Hinton 2010; see
`models.rbm.cd_gradient`) averaged over replicas (the global-batch mean, shards
being equal), plus the exact gradient of the optional sparsity penalty on the
*global* mean hidden activation k: k is the pmean of the replicas' means, and
each replica's chain-rule term (v^T (sigma'(z) * dpenalty/dk) / b) is averaged the
same way. The update then goes through `tx`: any optax chain, e.g.
`optax.sgd(lr, momentum)`, weight decay, or a proximal transform on the kernel
(`optimizers.sgd(lr, penalty="l1", strength=...)`). The Gibbs samples are drawn
with keys indexed by the global example (`_example_keys`), and a persistent chain
is one global array whose rows follow their examples' positions in the batch, so a
run is the same on any number of devices up to float summation order.

Records: every `log_every_steps` steps the mean reconstruction error, hidden
activation and penalty of the steps (`steps.jsonl`); at each epoch end
(`log.jsonl`, `history.json`), on a fixed monitor set (the first
`monitor_examples` training examples) and on `eval_data` if given: the mean-field
reconstruction error, the stochastic pseudo-log-likelihood, the mean hidden
activation, the fraction of activations below 0.05, units that never switch on
(max activation < 0.01), the kernel's sparsity, and the free-energy gap
mean F(eval) - mean F(monitor) (Hinton's overfitting check: it grows when the
model fits the training data better than held-out data). At the end, beside the
records: `filters.png` (the kernel's columns as images when `image_shape` is
known) and `hidden_activity.png` (the histogram of each unit's mean activation).

`fit_dbn(data, layers, tx, config, workdir)` trains a greedy stack: layer l is an
RBM trained on the hidden probabilities of layer l - 1 (Hinton, Osindero & Teh
2006), each in `workdir/layer_<l>` and each resumable; `DBNResult.features(x)` gives
the top layer's hidden probabilities for a downstream classifier.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import _checks, data, plotting, runloop
from sparsejax._example_keys import example_indexed_key
from sparsejax.models import rbm
from sparsejax.runloop import AXIS

__all__ = ["RBMConfig", "RBMState", "RBMResult", "DBNResult", "create_rbm_state", "make_rbm_train_step",
           "rbm_monitor", "fit_rbm", "fit_dbn"]

HiddenPenalty = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class RBMConfig(runloop.LoopConfig):
  """What `fit_rbm` / `fit_dbn` run: the shared loop fields of `runloop.LoopConfig` and the RBM's.

  Every field is validated before the first step (a ValueError names the field and its
  allowed range). The last incomplete batch of an epoch is dropped (every epoch
  reshuffles, so every example is used).

  Attributes:
    epochs: passes over the data (default 10).
    batch_size: examples per step (default 100, the sparse-RBM paper's).
    k: Gibbs steps of CD-k (>= 1).
    persistent: persistent contrastive divergence: the negative chain continues from
      the previous step's hidden samples (one chain per batch position) instead of
      restarting at the data.
    sample_visible: sample binary visibles in the negative phase (default: their
      probabilities, as for grey-level intensities).
    binary: require the data to be exactly 0/1 (else any values in [0, 1], read as
      probabilities).
    init_scale: standard deviation of the initial kernel.
    monitor_examples: training examples the epoch-end metrics use (the first ones).
    log_every_steps: a record every N steps in `steps.jsonl` (default 10; 0: none).
  """
  epochs: int = 10
  batch_size: int = 100
  k: int = 1
  persistent: bool = False
  sample_visible: bool = False
  binary: bool = False
  init_scale: float = 0.01
  monitor_examples: int = 2000
  log_every_steps: int = 10

  def int_fields(self) -> list[tuple[str, int, str]]:
    """The loop's integer fields, `k` and `monitor_examples`."""
    return super().int_fields() + [("k", 1, "an int >= 1 (Gibbs steps of CD-k)"),
                                   ("monitor_examples", 1, "an int >= 1")]

  def validate(self) -> None:
    """Raises ValueError naming the first field outside its allowed range."""
    super().validate()
    for field in ("persistent", "sample_visible", "binary"):
      if not isinstance(getattr(self, field), (bool, np.bool_)):
        raise ValueError(f"RBMConfig.{field} must be True or False; got {getattr(self, field)!r}.")
    _checks.check_range("RBMConfig.init_scale", self.init_scale, lower=0.0, lower_inclusive=False)


@flax.struct.dataclass
class RBMState:
  """An RBM run's state (a pytree, checkpointed whole).

  `chain` holds the persistent negative chain's hidden samples, one row per position
  of the global batch (unused, and zeros, without `persistent`).
  """
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  chain: jax.Array


def create_rbm_state(num_visible: int, num_hidden: int, tx: optax.GradientTransformation, config: RBMConfig) -> RBMState:
  """Initial parameters (kernel ~ N(0, init_scale^2), zero biases), optimizer state and an empty chain."""
  init_key, rng = jax.random.split(jax.random.PRNGKey(config.seed))
  params = rbm.RBM(num_hidden, init_scale=config.init_scale).init(init_key, jnp.zeros((1, num_visible)))["params"]
  params = jax.tree.map(jnp.asarray, dict(params))
  return RBMState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params), rng=rng,
                  chain=jnp.zeros((config.batch_size, num_hidden), jnp.float32))


def make_rbm_train_step(tx: optax.GradientTransformation, config: RBMConfig,
                        hidden_penalty: HiddenPenalty | None = None) -> Callable:
  """The per-replica step `(state, v0) -> (state, metrics)` (axis name "batch"); `v0` is this replica's shard.

  See the module docstring for the gradient. Metrics (replica means, so global means):
  `recon_error` (mean-field reconstruction of V0), `hidden_activation` (mean of
  P(h | V0)) and `penalty` (the sparsity penalty at the global k, 0 without one).
  """
  def step(state: RBMState, v0: jax.Array):
    local = v0.shape[0]
    first = lax.axis_index(AXIS) * local
    key = example_indexed_key(jax.random.fold_in(state.rng, state.step), first, local)
    chain = None
    if config.persistent:
      rows = lax.dynamic_slice_in_dim(state.chain, first, local)
      h0 = rbm.hidden_probabilities(state.params, v0)
      start = jax.random.bernoulli(jax.random.fold_in(key, 1), h0).astype(v0.dtype)
      chain = jnp.where(state.step == 0, start, rows.astype(v0.dtype))  # the first step starts at the data
    grads, aux = rbm.cd_gradient(state.params, v0, key, k=config.k, chain=chain,
                                 sample_visible=config.sample_visible)
    grads = lax.pmean(grads, AXIS)
    penalty = jnp.zeros((), v0.dtype)
    if hidden_penalty is not None:
      local_mean, pullback = jax.vjp(lambda w, b: jnp.mean(jax.nn.sigmoid(v0 @ w + b), axis=0),
                                     state.params["kernel"], state.params["hidden_bias"])
      mean_activation = lax.pmean(local_mean, AXIS)
      penalty, dk = jax.value_and_grad(hidden_penalty)(mean_activation)
      dw, db = lax.pmean(pullback(dk.astype(local_mean.dtype)), AXIS)
      grads = {**grads, "kernel": grads["kernel"] + dw, "hidden_bias": grads["hidden_bias"] + db}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_chain = state.chain
    if config.persistent:
      new_chain = lax.all_gather(aux.chain.astype(state.chain.dtype), AXIS, tiled=True)
    recon = rbm.visible_probabilities(state.params, aux.h0)
    metrics = {"recon_error": jnp.mean((v0 - recon) ** 2), "hidden_activation": jnp.mean(aux.h0),
               "penalty": penalty.astype(v0.dtype)}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, chain=new_chain)
    return new_state, lax.pmean(metrics, AXIS)

  return step


def rbm_monitor(params: Any, monitor: np.ndarray, eval_data: np.ndarray | None, seed: int = 0) -> dict:
  """Epoch-end metrics of an RBM on the monitor set (and `eval_data`): see the module docstring."""
  def measures(v: jax.Array, prefix: str) -> tuple[dict, np.ndarray]:
    h = np.asarray(rbm.hidden_probabilities(params, v))
    return {f"{prefix}recon_error": float(rbm.reconstruction_error(params, v)),
            f"{prefix}pseudo_likelihood": float(rbm.pseudo_likelihood(params, v, jax.random.PRNGKey(seed))),
            f"{prefix}hidden_activation": float(h.mean()),
            f"{prefix}fraction_activations_below_0.05": float(np.mean(h < 0.05))}, h

  v = jnp.asarray(monitor)
  out, h = measures(v, "train_")
  kernel = np.asarray(params["kernel"])
  out.update({"dead_units": int(np.sum(h.max(axis=0) < 0.01)), "weight_sparsity": float(np.mean(kernel == 0)),
              "hidden_units_without_weights": int(np.sum(~np.any(kernel != 0, axis=0)))})
  if eval_data is not None:
    ve = jnp.asarray(eval_data)
    out.update(measures(ve, "eval_")[0])
    out["free_energy_gap"] = float(jnp.mean(rbm.free_energy(params, ve)) - jnp.mean(rbm.free_energy(params, v)))
  return out


@dataclasses.dataclass
class RBMResult:
  """What `fit_rbm` returns: the trained parameters and state on the host, the records, the workdir."""
  params: Any                # {"kernel": (visible, hidden), "visible_bias", "hidden_bias"}
  state: RBMState
  history: list[dict]        # one record per epoch (also log.jsonl / history.json)
  steps: list[dict]          # step records every `log_every_steps` (also steps.jsonl)
  workdir: str

  def features(self, x: Any) -> np.ndarray:
    """P(h | x): the hidden probabilities of examples `x` (flattened to the visible size)."""
    return _features([self.params], x)


@dataclasses.dataclass
class DBNResult:
  """What `fit_dbn` returns: one `RBMResult` per layer, bottom first."""
  layers: list[RBMResult]

  @property
  def stack(self) -> list[Any]:
    """The layers' parameters, bottom first (what `models.rbm.dbn_features` takes)."""
    return [layer.params for layer in self.layers]

  def features(self, x: Any) -> np.ndarray:
    """The top layer's hidden probabilities of `x`, each layer fed the previous layer's probabilities."""
    return _features(self.stack, x)


def _features(stack: Sequence[Any], x: Any) -> np.ndarray:
  v = np.asarray(x, np.float32)
  v = v.reshape(len(v), -1)
  visible = int(np.shape(stack[0]["kernel"])[0])
  if v.shape[1] != visible:
    raise ValueError(f"x has {v.shape[1]} values per example but the RBM has {visible} visible units.")
  return np.asarray(rbm.dbn_features(stack, jnp.asarray(v)))


def _validated_data(name: str, values: Any, binary: bool, check_finite: bool, visible: int | None = None) -> np.ndarray:
  """(N, visible) float32 in [0, 1] (exactly 0/1 when `binary`), images flattened."""
  try:
    v = np.asarray(values)
  except (TypeError, ValueError) as err:
    raise ValueError(f"{name} must be an array of shape (N, visible) or (N, H, W[, C]); {err}") from None
  if v.ndim < 2 or len(v) == 0:
    raise ValueError(f"{name} must be an array of shape (N, visible) or (N, H, W[, C]) with N >= 1; got shape "
                     f"{v.shape}.")
  if not (np.issubdtype(v.dtype, np.number) or v.dtype == np.bool_) or np.issubdtype(v.dtype, np.complexfloating):
    raise ValueError(f"{name} must be real numbers; got {v.dtype}.")
  v = v.reshape(len(v), -1).astype(np.float32)
  if visible is not None and v.shape[1] != visible:
    raise ValueError(f"{name} has {v.shape[1]} values per example but the training data has {visible}.")
  if check_finite:
    data.check_finite(v, name)
  finite = v[np.isfinite(v)]
  if finite.size and (finite.min() < 0.0 or finite.max() > 1.0):
    raise ValueError(f"{name} must lie in [0, 1] (Bernoulli visible units; rescale, e.g. x / 255); got range "
                     f"[{finite.min():.3g}, {finite.max():.3g}].")
  if binary and np.any((v != 0.0) & (v != 1.0)):
    bad = v[(v != 0.0) & (v != 1.0)][0]
    raise ValueError(f"{name} must be binary (0 or 1) with RBMConfig(binary=True); got the value {bad:.4g} "
                     f"(threshold it, e.g. (x > 0.5), or use binary=False to read values as probabilities).")
  return v


def _image_shape(values: Any, image_shape: Sequence[int] | None) -> tuple[int, ...] | None:
  if image_shape is not None:
    return tuple(int(d) for d in image_shape)
  shape = np.shape(values)
  return tuple(shape[1:3]) if len(shape) >= 3 else None


def _figures(params: Any, monitor: np.ndarray, image_shape: tuple[int, ...] | None, workdir: str) -> None:
  kernel = np.asarray(params["kernel"])
  if image_shape is not None and int(np.prod(image_shape[:2])) == kernel.shape[0]:
    plotting.first_layer_filters(kernel, os.path.join(workdir, "filters.png"), image_shape=image_shape[:2],
                                 max_filters=64, title="RBM filters (kernel columns)")
  activity = np.asarray(rbm.hidden_probabilities(params, jnp.asarray(monitor))).mean(axis=0)
  plotting.histogram({"hidden units": activity}, os.path.join(workdir, "hidden_activity.png"),
                     xlabel="mean activation of a hidden unit over the monitor set", ylabel="hidden units",
                     value_range=(0.0, 1.0))


def fit_rbm(train_data: Any, num_hidden: int, tx: optax.GradientTransformation, config: RBMConfig, workdir: str, *,
            hidden_penalty: HiddenPenalty | None = None, eval_data: Any = None, resume: bool = False,
            overwrite: bool = False, image_shape: Sequence[int] | None = None) -> RBMResult:
  """Trains a Bernoulli RBM by CD-k data-parallel over the devices of every process; logs, checkpoints, resumes.

  Args:
    train_data: (N, visible) values in [0, 1] (or images (N, H, W[, C]), flattened).
    num_hidden: hidden units.
    tx: the optax chain for the CD gradient, e.g. `optax.sgd(0.1, momentum=0.5)`, or
      with a proximal step on the kernel (`optimizers.sgd(0.1, penalty="l1", strength=1e-4)`).
    config: `RBMConfig`.
    workdir: where log.jsonl, steps.jsonl, history.json, checkpoints/ and the figures go.
    hidden_penalty: `penalty(k) -> scalar` on the global mean hidden activation k,
      e.g. `functools.partial(activity.local_global, lambda_local=3.0, lambda_global=0.005)`.
    eval_data: held-out examples for the epoch-end metrics and the free-energy gap.
    resume: continue from the latest checkpoint in `workdir` (bit-identical).
    overwrite: replace another run's checkpoints and records in `workdir`.
    image_shape: (H, W) for `filters.png` (default: from image-shaped `train_data`).

  Raises:
    ValueError: before the first step, for a configuration or data outside its allowed
      range (values outside [0, 1], non-binary values with `binary=True`, NaN, a shape
      that disagrees), naming it.
    TypeError: `tx` is not an optax GradientTransformation or `hidden_penalty` not callable.
    runloop.NonFiniteLossError: a metric became NaN/inf; the last good checkpoint is kept.
  """
  if not isinstance(config, RBMConfig):
    raise TypeError(f"config must be a dbn.RBMConfig; got {type(config).__name__}.")
  config.validate()
  _checks.check_int("num_hidden", num_hidden, 1, "an int >= 1")
  if not isinstance(tx, optax.GradientTransformation):
    raise _checks.ArgumentTypeError(f"tx must be an optax.GradientTransformation; got {type(tx).__name__}.")
  _checks.check_callable("hidden_penalty", hidden_penalty, "a callable k -> scalar", optional=True)
  v = _validated_data("train_data", train_data, config.binary, config.check_finite_inputs)
  held_out = None if eval_data is None else _validated_data("eval_data", eval_data, config.binary,
                                                             config.check_finite_inputs, v.shape[1])
  steps_per_epoch = len(v) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"train_data: {len(v)} examples is fewer than one batch of {config.batch_size}.")
  devices = runloop.data_parallel_devices(config.num_devices, config.batch_size)
  placement = runloop.DataParallel(devices, config.parallelism, config.fsdp_devices)
  initial = create_rbm_state(v.shape[1], int(num_hidden), tx, config)
  monitor = v[:config.monitor_examples]

  def epoch_end(rstate, epoch: int) -> dict:
    params = jax.tree.map(jnp.asarray, placement.host(rstate).params)
    return rbm_monitor(params, monitor, held_out, seed=config.seed + epoch)

  hooks = runloop.LoopHooks(
      step=make_rbm_train_step(tx, config, hidden_penalty),
      epoch_batches=lambda epoch: data.epoch_batches(len(v), config.batch_size, config.seed, epoch)[:steps_per_epoch],
      load_batch=lambda idx: (v[runloop.process_slice(idx)[0]],),
      summarize=runloop.mean_metrics, epoch_end=epoch_end,
      progress_keys=("recon_error", "hidden_activation", "train_recon_error"))
  run_config = {"trainer": "fit_rbm", "batch_size": config.batch_size, "seed": config.seed,
                "num_examples": len(v), "num_visible": int(v.shape[1]), "num_hidden": int(num_hidden),
                "k": config.k, "persistent": int(config.persistent)}
  result = runloop.run_epochs(config, workdir, hooks, placement, initial, run_config=run_config, resume=resume,
                              overwrite=overwrite)
  if runloop.is_writer():
    _figures(result.state.params, monitor, _image_shape(train_data, image_shape), result.workdir)
  return RBMResult(params=result.state.params, state=result.state, history=result.history, steps=result.steps,
                   workdir=result.workdir)


def fit_dbn(train_data: Any, layers: Sequence[int], tx: optax.GradientTransformation | Sequence[Any],
            config: RBMConfig | Sequence[RBMConfig], workdir: str, *,
            hidden_penalty: HiddenPenalty | Sequence[HiddenPenalty | None] | None = None, eval_data: Any = None,
            resume: bool = False, overwrite: bool = False, image_shape: Sequence[int] | None = None) -> DBNResult:
  """Greedy layer-wise DBN training: layer l is an RBM trained (`fit_rbm`) on layer l - 1's hidden probabilities.

  Args:
    train_data: (N, visible) values in [0, 1] (or images), as for `fit_rbm`.
    layers: hidden units of each layer, bottom first (e.g. (500, 500, 2000)).
    tx: one optax chain for every layer, or one per layer.
    config: one `RBMConfig` for every layer, or one per layer (layers above the first
      read probabilities, so `binary` applies to the first layer only).
    workdir: layer l runs in `workdir/layer_<l>` (each resumable on its own).
    hidden_penalty: one sparsity penalty for every layer, or one (or None) per layer.
    eval_data: held-out examples, propagated through the stack like the training data.
    resume: continue every layer from its checkpoints (finished layers are restored,
      not retrained).
    overwrite: replace earlier runs in the layers' workdirs.
    image_shape: (H, W) for the first layer's `filters.png`.

  Returns:
    `DBNResult`: `layers[l]` is layer l's `RBMResult`; `features(x)` the top layer's
    hidden probabilities.
  """
  if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
    raise _checks.ArgumentTypeError(f"layers must be a sequence of hidden sizes, e.g. (500, 500); got {layers!r}.")
  if len(layers) == 0:
    raise ValueError("layers must list at least one hidden size, e.g. (500, 500).")
  for level, hidden in enumerate(layers):
    _checks.check_int(f"layers[{level}]", hidden, 1, "an int >= 1 (hidden units)")
  depth = len(layers)

  def per_layer(name: str, value: Any, single: Callable[[Any], bool]) -> list:
    if single(value):
      return [value] * depth
    values = list(value)
    if len(values) != depth:
      raise ValueError(f"{name}: one for every layer or one per layer ({depth}); got {len(values)}.")
    return values

  txs = per_layer("tx", tx, lambda t: isinstance(t, optax.GradientTransformation))
  configs = per_layer("config", config, lambda c: isinstance(c, RBMConfig))
  penalties = per_layer("hidden_penalty", hidden_penalty, lambda p: p is None or callable(p))
  workdir = runloop.workdir_path(workdir)
  v, held_out = train_data, eval_data
  results: list[RBMResult] = []
  for level, hidden in enumerate(layers):
    layer_config = configs[level] if level == 0 else dataclasses.replace(configs[level], binary=False)
    result = fit_rbm(v, hidden, txs[level], layer_config, os.path.join(workdir, f"layer_{level}"),
                     hidden_penalty=penalties[level], eval_data=held_out, resume=resume, overwrite=overwrite,
                     image_shape=image_shape if level == 0 else None)
    results.append(result)
    v = result.features(v)
    held_out = None if held_out is None else result.features(held_out)
  return DBNResult(layers=results)
