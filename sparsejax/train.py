"""Data-parallel training: `TrainState`, pmap train/eval steps, and the `fit` loop.

The train step runs under `jax.pmap` over `num_devices` local devices (on a
single device, the same step under `jax.jit(jax.vmap(...))`, which dispatches
faster and has the same collectives): the
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

Multi-host: call `jax.distributed.initialize()` first on every host; `fit`
then gives each process its slice of every global batch (process_index-th of
process_count) and the psum runs over all devices of all hosts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax import lax
from tqdm import tqdm

from sparsejax import data, metrics

__all__ = ["TrainState", "TrainConfig", "create_train_state", "make_train_step", "make_eval_step",
           "fit", "FitResult", "evaluate", "NonFiniteLossError"]

AXIS = "batch"
PenaltyFn = Callable[[Any, Any], jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a training run carries: a pytree, checkpointed whole."""
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array
  model_state: Any  # non-parameter collections (e.g. batch_stats); {} if none


@dataclasses.dataclass
class TrainConfig:
  epochs: int = 10
  batch_size: int = 128
  eval_batch_size: int = 1000
  seed: int = 0
  task: str = "classification"  # or "regression" (MSE)
  num_devices: int = 0           # 0: all local devices
  checkpoint: bool = True         # False: no checkpoints (grid searches, benchmarks)
  checkpoint_every_steps: int = 0  # 0: only at epoch ends
  keep_checkpoints: int = 2
  check_finite_inputs: bool = True
  progress: bool = True


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN/inf; the message names the last good checkpoint."""


def create_train_state(model, tx: optax.GradientTransformation, example_input: np.ndarray, seed: int = 0) -> TrainState:
  """Initialises params (and other variable collections) and the optimizer state."""
  init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
  variables = model.init(init_rng, jnp.asarray(example_input[:1]))
  variables = dict(variables)
  params = variables.pop("params")
  variables.pop("intermediates", None)
  return TrainState(step=jnp.zeros([], jnp.int32), params=params, opt_state=tx.init(params),
                    rng=train_rng, model_state=variables)


def _per_example_loss(task: str):
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
                    penalty_fn: PenaltyFn | None = None, num_devices: int = 1):
  """The pmap-able train step `(state, x, y, weight) -> (state, metrics)` (axis name "batch").

  Args:
    model: a flax module called as `model.apply(variables, x, train=True)`.
    tx: the optax chain (e.g. sgd + a proximal transform).
    task: "classification" (softmax cross-entropy) or "regression" (squared error).
    penalty_fn: optional `penalty_fn(params, intermediates) -> scalar` added to
      the loss (activity penalties on sown activations).
    num_devices: replicas in the pmap (the penalty is split evenly over them).
  """
  per_example = _per_example_loss(task)

  def train_step(state: TrainState, x, y, w):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))
    global_count = jnp.maximum(lax.psum(jnp.sum(w), AXIS), 1.0)
    mutable = list(state.model_state) + (["intermediates"] if penalty_fn is not None else [])

    def objective(params):
      variables = {"params": params, **state.model_state}
      outputs, new_vars = model.apply(variables, x, train=True, rngs={"dropout": rng}, mutable=mutable)
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


def make_eval_step(model, task: str = "classification"):
  per_example = _per_example_loss(task)

  def eval_step(state: TrainState, x, y, w):
    outputs = model.apply({"params": state.params, **state.model_state}, x, train=False)
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
  stacked = jax.device_get(metric_list)
  return {k: float(np.sum([m[k][0] for m in stacked], dtype=np.float64)) for k in stacked[0]}


def _process_slice(*arrays):
  """This process's share of each array of a global batch (multi-host); the whole arrays on one host."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return arrays
  per = len(arrays[0]) // count
  return tuple(a[index * per:(index + 1) * per] for a in arrays)


def _data_parallel_devices(num_devices: int, batch_size: int) -> list:
  """The local devices of a data-parallel run (`num_devices` 0: all); the global batch must split evenly."""
  num_devices = num_devices or jax.local_device_count()
  if num_devices > jax.local_device_count():
    raise ValueError(f"num_devices={num_devices} but only {jax.local_device_count()} local devices.")
  if batch_size <= 0:
    raise ValueError(f"batch_size must be > 0; got {batch_size}.")
  if batch_size % (num_devices * jax.process_count()):
    raise ValueError(f"batch_size={batch_size} must be divisible by the {num_devices} devices "
                     f"x {jax.process_count()} processes.")
  return jax.local_devices()[:num_devices]


def _map_step(step, devices: list, donate_state: bool = False):
  """`step` mapped over `devices` with axis name "batch": pmap, or on one device (and one process) the same
  step under jit(vmap), which has the same collectives and dispatches faster than pmap."""
  donate = (0,) if donate_state else ()
  if len(devices) == 1 and jax.process_count() == 1:
    return jax.jit(jax.vmap(step, axis_name=AXIS), donate_argnums=donate)
  return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=donate)


def _replicate(tree, devices):
  """One copy per device along a new leading axis (pmap shards it on the first call)."""
  return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (len(devices), *np.shape(a))).copy(),
                      jax.device_get(tree))


def _unreplicate(tree):
  return jax.tree.map(lambda a: np.asarray(a[0]), jax.device_get(tree))


def evaluate(model, state: TrainState | Any, x: np.ndarray, y: np.ndarray, task: str = "classification",
             batch_size: int = 1000) -> dict:
  """Loss and accuracy/MSE of params (or a TrainState) on (x, y), on the default device."""
  if not isinstance(state, TrainState):
    state = TrainState(step=jnp.zeros([], jnp.int32), params=state, opt_state=None, rng=jax.random.PRNGKey(0),
                       model_state={})
  # The eval step of `fit`, mapped over a leading axis of size 1 (same collectives, no pmap).
  step = jax.jit(jax.vmap(make_eval_step(model, task), axis_name=AXIS, in_axes=(None, 0, 0, 0)))
  results = [step(state, *(a[None] for a in data.pad_batch(x[i:i + batch_size], y[i:i + batch_size],
                                                          min(batch_size, len(x)))))
             for i in range(0, len(x), batch_size)]
  return _summarize(task, _sum_metrics(results))


@dataclasses.dataclass
class FitResult:
  state: TrainState          # final state on the host (unreplicated)
  history: list[dict]        # one record per epoch (also in log.jsonl)
  workdir: str


def _checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=True)
  return ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")), options=options)


def _restore(manager: ocp.CheckpointManager, template: TrainState) -> TrainState:
  target = flax.serialization.to_state_dict(template)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
  except ValueError as err:
    raise ValueError(
        f"the checkpoint at step {manager.latest_step()} in {manager.directory} does not match this run's model "
        f"and optimizer (resume with the same configuration, or use a new workdir): {err}") from None
  return flax.serialization.from_state_dict(template, restored)


def _restore_latest(manager: ocp.CheckpointManager, template, resume: bool):
  """(state, step): the latest checkpoint when resuming and one exists, else (template, 0)."""
  if resume and manager.latest_step() is not None:
    state = _restore(manager, template)
    return state, int(state.step)
  return template, 0


def _save_checkpoint(manager: ocp.CheckpointManager, step: int, replicated_state) -> None:
  manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(_unreplicate(replicated_state))))
  manager.wait_until_finished()


def _write_jsonl(path: str, records: list[dict]) -> None:
  """Rewrites `path` with one JSON record per line."""
  with open(path, "w") as f:
    for record in records:
      f.write(json.dumps(record, default=float) + "\n")


def _append_jsonl(path: str, record: dict) -> None:
  with open(path, "a") as f:
    f.write(json.dumps(record, default=float) + "\n")


def _read_log(path: str, upto_step: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if r.get("step", 0) <= upto_step]


def fit(model, tx: optax.GradientTransformation, train_data: tuple[np.ndarray, np.ndarray],
        eval_data: tuple[np.ndarray, np.ndarray] | None, config: TrainConfig, workdir: str,
        penalty_fn: PenaltyFn | None = None, resume: bool = False,
        report_fn: Callable[[Any], dict] | None = None) -> FitResult:
  """Trains `model` with `tx` data-parallel over local devices; logs, checkpoints, resumes.

  Args:
    model: a flax module (`MLP`, `ConvNet`, or any `apply(variables, x, train=...)`).
    tx: optax chain, e.g. `optax.chain(optax.sgd(lr), transforms.integrated_tl1(lam, lr))`.
    train_data: (x, y) numpy arrays.
    eval_data: (x, y) evaluated at every epoch end, or None.
    config: `TrainConfig`.
    workdir: where `log.jsonl`, `checkpoints/` and `history.json` go.
    penalty_fn: optional activity penalty `(params, intermediates) -> scalar`.
    resume: continue from the latest checkpoint in `workdir` (bit-identical).
    report_fn: `params -> dict` of size metrics per epoch; default
      `metrics.report` for MLP/ConvNet, `metrics.summary` otherwise.

  Raises:
    ValueError: batch size not divisible by the devices, non-finite inputs
      (when `config.check_finite_inputs`), mismatched x/y.
    NonFiniteLossError: the loss became NaN/inf; the last good checkpoint is kept.
  """
  x_train, y_train = train_data
  if len(x_train) != len(y_train):
    raise ValueError(f"train_data: {len(x_train)} inputs but {len(y_train)} targets.")
  devices = _data_parallel_devices(config.num_devices, config.batch_size)
  num_devices = len(devices)
  if config.check_finite_inputs:
    data.check_finite(x_train, "train inputs", config.batch_size)
    if eval_data is not None:
      data.check_finite(eval_data[0], "eval inputs", config.eval_batch_size)
  input_shape = x_train.shape[1:]
  if report_fn is None:
    def report_fn(params):
      try:
        return metrics.report(model, params, input_shape)
      except ValueError:
        return metrics.summary(params)

  os.makedirs(workdir, exist_ok=True)
  log_path = os.path.join(workdir, "log.jsonl")
  manager = _checkpoint_manager(workdir, config.keep_checkpoints)
  state, start_step = _restore_latest(manager, create_train_state(model, tx, x_train, config.seed), resume)
  history = _read_log(log_path, start_step) if resume else []
  _write_jsonl(log_path, history)

  train_step = make_train_step(model, tx, config.task, penalty_fn, num_devices * jax.process_count())
  eval_step = make_eval_step(model, config.task)
  p_train = _map_step(train_step, devices, donate_state=True)
  p_eval = _map_step(eval_step, devices)
  rstate = _replicate(state, devices)
  steps_per_epoch = math.ceil(len(x_train) / config.batch_size)
  step = start_step

  def save(step_to_save: int, pending: list) -> None:
    if pending and not np.isfinite(_sum_metrics(pending)["loss_sum"]):
      raise NonFiniteLossError(
          f"training loss became non-finite before step {step_to_save}; not checkpointed. Last good checkpoint: "
          f"step {manager.latest_step()} in {os.path.join(workdir, 'checkpoints')} (resume=True restarts there).")
    if not config.checkpoint:
      return
    _save_checkpoint(manager, step_to_save, rstate)

  epoch_bar = tqdm(range(start_step // steps_per_epoch, config.epochs), desc="epochs", disable=not config.progress)
  for epoch in epoch_bar:
    start_time = time.time()
    batches = data.epoch_batches(len(x_train), config.batch_size, config.seed, epoch)
    first = step - epoch * steps_per_epoch
    epoch_metrics = []
    bar = tqdm(batches[first:], desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress, leave=False)
    for idx in bar:
      x, y, w = _process_slice(*data.pad_batch(x_train[idx], y_train[idx], config.batch_size))
      rstate, m = p_train(rstate, *data.shard((x, y, w), num_devices))
      epoch_metrics.append(m)
      step += 1
      if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0:
        save(step, epoch_metrics)
    train_summary = _summarize(config.task, _sum_metrics(epoch_metrics))  # waits for the devices
    epoch_time = time.time() - start_time
    if not np.isfinite(train_summary["loss"]):
      save(step, epoch_metrics)  # raises NonFiniteLossError, keeps the last good checkpoint
    record = {"epoch": epoch + 1, "step": step, "epoch_time_s": epoch_time,
              **{f"train_{k}": v for k, v in train_summary.items()}}
    if first:  # resumed mid-epoch: the train metrics cover the remaining batches only
      record["resumed_from_step"] = step - len(batches) + first
    host_state = _unreplicate(rstate)
    if eval_data is not None:
      results = []
      for i in range(0, len(eval_data[0]), config.eval_batch_size):
        size = math.ceil(min(config.eval_batch_size, len(eval_data[0])) / num_devices) * num_devices
        xb, yb, wb = data.pad_batch(eval_data[0][i:i + size], eval_data[1][i:i + size], size)
        results.append(p_eval(rstate, *data.shard((xb, yb, wb), num_devices)))
      record.update({f"eval_{k}": v for k, v in _summarize(config.task, _sum_metrics(results)).items()})
    record.update(report_fn(host_state.params))
    history.append(record)
    _append_jsonl(log_path, record)
    save(step, epoch_metrics)
    shown = {k: record[k] for k in ("train_loss", "eval_accuracy", "eval_mse", "weight_sparsity") if k in record}
    epoch_bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()})
  final = jax.tree.map(jnp.asarray, _unreplicate(rstate))
  with open(os.path.join(workdir, "history.json"), "w") as f:
    json.dump(history, f, indent=1, default=float)
  return FitResult(state=final, history=history, workdir=workdir)
