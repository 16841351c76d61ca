"""Data-parallel training: `TrainState`, pmap train/eval steps, and the `fit` loop.

The train step runs under `jax.pmap` over `num_devices` local devices of every
process (on one device of one process, the same step under jit(shard_map) over a
one-device mesh, which dispatches faster and has the same collectives; see
`runloop.map_step`): the
global batch is sharded over them, each replica computes the gradient of its
share of the *global mean* loss (per-example losses weighted 0 on padding,
divided by the global count of real examples), the gradients are summed with
`lax.psum` (equal to `lax.pmean` of per-device means when shards are equal, and
exact for a padded last batch), and the optax chain, proximal steps included, is
applied on every replica: prox maps are deterministic, so replicas stay
identical.

`fit` adds tqdm progress, per-epoch metrics (loss, accuracy or MSE, sparsity,
neurons removed, FLOPs used) in a JSON-lines log, orbax checkpoints every N
steps and at each epoch end, and exact resume: the data order depends only on
(seed, epoch) and dropout keys on the step, so a resumed run gives the same
parameters as an uninterrupted one.

Multi-process / multi-host: call `jax.distributed.initialize()` first on every
process; `fit` then maps over the first `num_devices` local devices of every
process, gives each process its slice of every global batch (process_index-th of
process_count), and the psum runs over all devices of all processes: one model,
equal to a one-process run of the same global batch up to float summation order.
Only process 0 writes records; see `sparsejax.runloop` for the guarantees.

Dropout keys are indexed by the global example (`_example_keys`): the mask of
example i in a step is the same whichever device holds it, so a run with dropout,
like one without, is the same on 1 or 8 devices, under pmap, sharded or fsdp, and
after a resume on another device count, up to float summation order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from sparsejax import _checks, data, metrics, runloop
from sparsejax._example_keys import example_indexed_key
from sparsejax.models.interface import functional, is_nnx, mode_kwargs
from sparsejax.runloop import AXIS

__all__ = ["TrainState", "TrainConfig", "create_train_state", "make_train_step", "make_eval_step",
           "fit", "FitResult", "evaluate", "validate_config"]

# The loop's errors live in sparsejax.runloop (one home per name).
__getattr__ = _checks.moved_names(__name__, {name: ("sparsejax.runloop", name) for name in
                                             ("NonFiniteLossError", "PeerLostError")})

PenaltyFn = Callable[[Any, Any], jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries: a pytree, checkpointed whole."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any  # non-parameter collections (e.g. batch_stats); {} if none


@dataclasses.dataclass(frozen=True)
class TrainConfig(runloop.LoopConfig):
  """What `fit` runs: the shared loop fields of `runloop.LoopConfig` and the task's.

  Every field is validated before the first step (a ValueError names the field and its
  allowed range). See `runloop.LoopConfig` for epochs, batch size, seed, devices and
  parallelism ("pmap", "sharded", "fsdp"), checkpoints, step records and progress bars.

  Attributes:
    eval_batch_size: examples per evaluation batch (split over the devices).
    task: "classification" (softmax cross-entropy on integer labels; accuracy is
      reported) or "regression" (squared error; MSE is reported).
  """
  eval_batch_size: int = 1000
  task: str = "classification"

  def int_fields(self) -> list[tuple[str, int, str]]:
    """The loop's integer fields and `eval_batch_size`."""
    return super().int_fields() + [("eval_batch_size", 1, "an int > 0")]

  def validate(self) -> None:
    """Raises ValueError naming the first field outside its allowed range (the task included)."""
    super().validate()
    _per_example_loss(self.task)


def create_train_state(model, tx: optax.GradientTransformation, example_input: np.ndarray, seed: int = 0) -> TrainState:
  """Initialises params (and other variable collections) and the optimizer state."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_rng, jnp.asarray(example_input[:1]))
  variables = dict(variables)
  params = variables.pop("params")
  variables.pop("intermediates", None)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, model_state=variables)


LossFn = Callable[[Any, Any], jax.Array]


def _per_example_loss(task: str, loss_fn: LossFn | None = None):
  if loss_fn is not None:
    return loss_fn
  if task == "classification":
    return optax.softmax_cross_entropy_with_integer_labels
  if task == "regression":
    return lambda pred, y: jnp.sum((pred.reshape(y.shape[0], -1) - y.reshape(y.shape[0], -1)) ** 2, axis=-1)
  raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}.")


def _batch_metrics(task, outputs, y, w, loss_sum):
  count = jnp.sum(w)
  out = {"loss_sum": loss_sum, "count": count}
  if task == "classification":
    out["correct"] = jnp.sum((jnp.argmax(outputs, -1) == y) * w)
  return jax.tree.map(lambda v: lax.psum(v, AXIS), out)


def make_train_step(model, tx: optax.GradientTransformation, task: str = "classification",
                    penalty_fn: PenaltyFn | None = None, num_devices: int = 1, loss_fn: LossFn | None = None):
  """The pmap-able train step `(state, x, y, weight) -> (state, metrics)` (axis name "batch").

  Args:
    model: a flax module; called with `train=True` (or `deterministic=False`) when its
      `__call__` takes that argument (`mode_kwargs`).
    tx: the optax chain (e.g. sgd + a proximal transform).
    task: "classification" (softmax cross-entropy) or "regression" (squared error).
    penalty_fn: optional `penalty_fn(params, intermediates) -> scalar` added to
      the loss (activity penalties on sown activations).
    num_devices: replicas in the pmap (the penalty is split evenly over them).
    loss_fn: optional `loss_fn(outputs, targets) -> per-example losses (batch,)`
      replacing the task's loss (accuracy is still reported for "classification").
  """
  per_example = _per_example_loss(task, loss_fn)
  train_mode = mode_kwargs(model, True)

  def train_step(state: TrainState, x, y, w):
    local = x.shape[0]  # dropout keys indexed by the global example: the same run on any device count
    rng = example_indexed_key(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS) * local, local)
    global_count = jnp.maximum(lax.psum(jnp.sum(w), AXIS), 1.0)
    mutable = list(state.model_state) + (["intermediates"] if penalty_fn is not None else [])

    def objective(params):
      variables = {"params": params, **state.model_state}
      outputs, new_vars = model.apply(variables, x, **train_mode, rngs={"dropout": rng}, mutable=mutable)
      loss_sum = jnp.sum(per_example(outputs, y) * w)
      total = loss_sum / global_count
      if penalty_fn is not None:
        total = total + penalty_fn(params, new_vars.get("intermediates", {})) / num_devices
      return total, (loss_sum, outputs, new_vars)

    grads, (loss_sum, outputs, new_vars) = jax.grad(objective, has_aux=True)(state.params)
    grads = lax.psum(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    model_state = {k: lax.pmean(v, AXIS) for k, v in new_vars.items() if k != "intermediates"}
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state)
    return new_state, _batch_metrics(task, outputs, y, w, loss_sum)

  return train_step


def make_eval_step(model, task: str = "classification", loss_fn: LossFn | None = None):
  """`eval_step(state, x, y, w)`: the summed loss and metrics of a batch in eval mode, examples weighted by `w`.

  `w` is 1 for real examples and 0 for the padding of a last partial batch, so sums over
  batches give exact means. Classification adds the count of correct predictions.
  """
  per_example = _per_example_loss(task, loss_fn)
  eval_mode = mode_kwargs(model, False)

  def eval_step(state: TrainState, x, y, w):
    outputs = model.apply({"params": state.params, **state.model_state}, x, **eval_mode)
    return _batch_metrics(task, outputs, y, w, jnp.sum(per_example(outputs, y) * w))

  return eval_step


def _summarize(task: str, totals: dict) -> dict:
  count = max(float(totals["count"]), 1.0)
  out = {"loss": float(totals["loss_sum"]) / count}
  if task == "classification":
    out["accuracy"] = float(totals["correct"]) / count
  else:
    out["mse"] = out["loss"]
  return out


def _sum_metrics(metric_list: list) -> dict:
  return {k: float(np.sum([runloop.first_value(m[k]) for m in metric_list], dtype=np.float64)) for k in metric_list[0]}


def evaluate(model, state: TrainState | Any, x: np.ndarray, y: np.ndarray, *, task: str = "classification",
             batch_size: int = 1000, loss_fn: LossFn | None = None) -> dict:
  """Loss and accuracy/MSE of params (or a TrainState) on (x, y), on the default device.

  `model` may be a linen or NNX module (for NNX, `state` is the `TrainState` of `fit`).
  """
  model = functional(model)
  if not isinstance(state, TrainState):
    state = TrainState(step=jnp.zeros([], jnp.int32), params=state, opt_state=None, rng=jax.random.PRNGKey(0),
                       model_state={})
  # The eval step of `fit`, mapped over a leading axis of size 1 (same collectives, no pmap).
  step = jax.jit(jax.vmap(make_eval_step(model, task, loss_fn), axis_name=AXIS, in_axes=(None, 0, 0, 0)))
  results = [step(state, *(a[None] for a in data.pad_batch(x[i:i + batch_size], y[i:i + batch_size],
                                                          min(batch_size, len(x)))))
             for i in range(0, len(x), batch_size)]
  return _summarize(task, _sum_metrics(results))


@dataclasses.dataclass
class FitResult:
  """What `fit` returns: the final state on the host, the per-epoch history, the workdir, the trained NNX module."""
  state: TrainState          # final state on the host (unreplicated)
  history: list[dict]        # one record per epoch (also in log.jsonl)
  workdir: str
  module: Any = None         # for an NNX model: the trained NNX module


def validate_config(config: TrainConfig) -> None:
  """Raises ValueError naming the first `TrainConfig` field outside its allowed range."""
  if not isinstance(config, TrainConfig):
    raise TypeError(f"config must be a train.TrainConfig; got {type(config).__name__}.")
  config.validate()


def _validate_labels(name: str, y: np.ndarray, num_examples: int, num_outputs: int, task: str,
                     check_finite: bool, custom_loss: bool = False) -> None:
  if len(y) != num_examples:
    raise ValueError(f"{name}: {num_examples} inputs but {len(y)} targets.")
  if custom_loss:
    if check_finite and np.issubdtype(y.dtype, np.floating):
      data.check_finite(np.asarray(y, np.float64).reshape(len(y), -1), f"{name} targets")
    return
  if task == "classification":
    if y.ndim != 1:
      hint = (" (one-hot labels: pass y.argmax(-1))" if y.ndim == 2 and y.shape[1] > 1 else
              " (pass y.reshape(-1))")
      raise ValueError(f"{name}: classification labels must be integer class indices of shape (N,); "
                       f"got shape {y.shape}{hint}.")
    if not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f"{name}: classification labels must have an integer dtype (class indices 0..{num_outputs - 1});"
                       f" got {y.dtype} (convert with y.astype(np.int32) if they are class indices).")
    if len(y) and (y.min() < 0 or y.max() >= num_outputs):
      bad = int(y.min()) if y.min() < 0 else int(y.max())
      raise ValueError(f"{name}: labels must lie in [0, {num_outputs - 1}] for a model with {num_outputs} outputs; "
                       f"got label {bad}.")
  else:
    per_example = int(np.prod(y.shape[1:], dtype=np.int64))
    if per_example == 1 and num_outputs > 1:  # the squared error would broadcast one target over every output
      hint = " (integer class labels: use task='classification')" if np.issubdtype(y.dtype, np.integer) else ""
      raise ValueError(f"{name}: regression targets must have one value per model output ({num_outputs}: shape "
                       f"(N, {num_outputs})); got shape {y.shape}{hint}.")
  if task != "classification" and check_finite:
    if not np.issubdtype(y.dtype, np.number):
      raise ValueError(f"{name}: regression targets must be numeric; got {y.dtype}.")
    data.check_finite(np.asarray(y, np.float64).reshape(len(y), -1), f"{name} targets")


def _validated_data(name: str, pair, input_shape, num_outputs: int, config: TrainConfig, custom_loss: bool = False):
  """(x, y) as numpy arrays, checked before any training step."""
  if not isinstance(pair, (tuple, list)) or len(pair) != 2:
    raise ValueError(f"{name} must be a pair (x, y) of arrays; got {type(pair).__name__}.")
  x, y = np.asarray(pair[0]), np.asarray(pair[1])
  if x.ndim == 0 or len(x) == 0:
    raise ValueError(f"{name} is empty: it needs at least one example.")
  if input_shape is not None and x.shape[1:] != tuple(input_shape):
    raise ValueError(f"{name}: inputs have shape {x.shape[1:]} per example but the training inputs have "
                     f"{tuple(input_shape)}.")
  if not np.issubdtype(x.dtype, np.number) and x.dtype != np.bool_:
    raise ValueError(f"{name}: inputs must be numeric; got {x.dtype}.")
  _validate_labels(name, y, len(x), num_outputs, config.task, config.check_finite_inputs, custom_loss)
  if config.check_finite_inputs:
    data.check_finite(x, f"{name.split('_')[0]} inputs",
                      config.batch_size if name == "train_data" else config.eval_batch_size)
  return x, y


def _num_outputs(model, state: TrainState, example: np.ndarray) -> int:
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, **mode_kwargs(model, False)),
                           {"params": state.params, **state.model_state}, jnp.asarray(example[:1]))
  return int(outputs.shape[-1]) if outputs.ndim >= 2 else 1


def fit(model, tx: optax.GradientTransformation, train_data: tuple[np.ndarray, np.ndarray],
        eval_data: tuple[np.ndarray, np.ndarray] | None, config: TrainConfig, workdir: str, *,
        penalty_fn: PenaltyFn | None = None, resume: bool = False,
        report_fn: Callable[[Any], dict] | None = None, overwrite: bool = False,
        loss_fn: LossFn | None = None) -> FitResult:
  """Trains `model` with `tx` data-parallel over the devices of every process; logs, checkpoints, resumes.

  Args:
    model: a flax linen module (the library's or your own: with or without a
      `train`/`deterministic` argument, with mutable collections such as BatchNorm's
      `batch_stats`) or a flax NNX module (split into parameters and state inside the
      step; BatchNorm statistics and dropout handled; the trained module is
      `FitResult.module`).
    tx: optax chain, e.g. `optax.chain(optax.sgd(lr), transforms.integrated_tl1(lam, lr))`.
    train_data: (x, y) numpy arrays; classification labels are integers in [0, classes).
    eval_data: (x, y) evaluated at every epoch end, or None.
    config: `TrainConfig`.
    workdir: where `log.jsonl`, `checkpoints/`, `run_config.json` and `history.json` go.
    penalty_fn: optional activity penalty `(params, intermediates) -> scalar`.
    resume: continue from the latest checkpoint in `workdir` (bit-identical); the
      batch size, seed, task and data sizes must match the stored run.
    report_fn: `params -> dict` of size metrics per epoch; default `metrics.report`
      (any model; `metrics.summary` if the model cannot be analysed).
    overwrite: replace another run's checkpoints and records in `workdir`.
    loss_fn: optional `loss_fn(outputs, targets) -> per-example losses` replacing the
      task's loss (targets of any shape; accuracy is reported for "classification").

  Multi-process: call `jax.distributed.initialize()` on every process first and give
  every process the same arguments; the processes then train one model (see
  `sparsejax.runloop`). Only process 0 writes records.

  Raises:
    ValueError: before the first step, for any configuration or data outside its
      allowed range (naming it), an unusable or occupied workdir, or a resume whose
      stored configuration differs.
    runloop.NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
    runloop.PeerLostError: a peer process of a multi-process run died.
  """
  validate_config(config)
  workdir = runloop.workdir_path(workdir)
  nnx_model = is_nnx(model)
  if nnx_model and penalty_fn is not None:
    raise ValueError("penalty_fn reads activations a linen model sows into 'intermediates'; an NNX model has none. "
                     "Use a linen model, or put the penalty in the model's output and loss_fn.")
  _checks.check_callable("loss_fn", loss_fn, "a callable (outputs, targets) -> per-example losses", optional=True)
  _checks.check_callable("report_fn", report_fn, "a callable params -> dict of size metrics", optional=True)
  _checks.check_callable("penalty_fn", penalty_fn, "a callable (params, intermediates) -> scalar", optional=True)
  model = functional(model)
  devices = runloop.data_parallel_devices(config.num_devices, config.batch_size)
  if not isinstance(train_data, (tuple, list)) or len(train_data) != 2:
    raise ValueError(f"train_data must be a pair (x, y) of arrays; got {type(train_data).__name__}.")
  x_probe = np.asarray(train_data[0])
  if x_probe.ndim == 0 or len(x_probe) == 0:
    raise ValueError("train_data is empty: it needs at least one example.")
  try:
    initial = create_train_state(model, tx, x_probe, config.seed)
  except (TypeError, ValueError) as err:
    raise ValueError(f"model.init failed on one training input of shape {x_probe.shape[1:]}: {err}") from err
  num_outputs = _num_outputs(model, initial, x_probe)
  x_train, y_train = _validated_data("train_data", train_data, None, num_outputs, config, loss_fn is not None)
  input_shape = x_train.shape[1:]
  if eval_data is not None:
    eval_data = _validated_data("eval_data", eval_data, input_shape, num_outputs, config, loss_fn is not None)

  def size_report(host: TrainState) -> dict:
    if report_fn is not None:
      return report_fn(host.params)
    try:
      return metrics.report(model, {"params": host.params, **host.model_state}, input_shape)
    except ValueError:
      return metrics.summary(host.params)

  placement = runloop.DataParallel(devices, config.parallelism, config.fsdp_devices)
  p_eval = placement.step(make_eval_step(model, config.task, loss_fn))

  def evaluate_placed(rstate) -> dict:
    x_eval, y_eval = eval_data
    size = math.ceil(min(config.eval_batch_size, len(x_eval)) / len(devices)) * len(devices)
    results = []
    for i in range(0, len(x_eval), size):  # the stride is the padded size: no example counted twice
      batch = runloop.process_slice(*data.pad_batch(x_eval[i:i + size], y_eval[i:i + size], size))
      results.append(p_eval(rstate, *placement.put_batch(*batch)))
    return _summarize(config.task, _sum_metrics(results))

  def epoch_end(rstate, epoch: int) -> dict:
    record = {} if eval_data is None else {f"eval_{k}": v for k, v in evaluate_placed(rstate).items()}
    return {**record, **size_report(placement.host(rstate))}

  def train_summary(step_metrics: list) -> dict:
    return {f"train_{k}": v for k, v in _summarize(config.task, _sum_metrics(step_metrics)).items()}

  hooks = runloop.LoopHooks(
      step=make_train_step(model, tx, config.task, penalty_fn, placement.replicas, loss_fn),
      epoch_batches=lambda epoch: data.epoch_batches(len(x_train), config.batch_size, config.seed, epoch),
      load_batch=lambda idx: runloop.process_slice(*data.pad_batch(x_train[idx], y_train[idx], config.batch_size)),
      summarize=train_summary, epoch_end=epoch_end,
      progress_keys=("train_loss", "eval_accuracy", "eval_mse", "weight_sparsity"))
  run_config = {"trainer": "fit", "batch_size": config.batch_size, "seed": config.seed, "task": config.task,
                "num_train_examples": len(x_train), "input_shape": list(input_shape),
                "num_eval_examples": 0 if eval_data is None else len(eval_data[0])}
  result = runloop.run_epochs(config, workdir, hooks, placement, initial, run_config=run_config, resume=resume,
                              overwrite=overwrite)
  final = result.state
  module = model.to_module({"params": final.params, **final.model_state}) if nnx_model else None
  return FitResult(state=final, history=result.history, workdir=workdir, module=module)
