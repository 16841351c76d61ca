"""The pieces every training loop shares: devices and processes, workdir, records, checkpoints.

`train.fit` and `gan.fit_gan` are thin clients of one loop, `run_epochs`: they build the
step function, the batches and the epoch-end metrics (`LoopHooks`) and `run_epochs` does
the rest (workdir, restore, records, checkpoints, the non-finite check, progress, resume
bookkeeping). Their configurations extend one frozen `LoopConfig`. The guarantees below
hold for every trainer built this way.

Data parallelism. The mapped axis ("batch") spans the first `num_devices` local devices
of *every* process: with `jax.distributed.initialize()` called first on each process,
`pmap` runs over the global device list, each process feeds its own slice of every
global batch (`process_slice`), and `lax.psum` / `lax.pmean` reduce over all devices of
all processes. A run on P processes x D devices is one synchronised run, equal (up to
float summation order) to a one-process run of the same global batch.

Records. Only process 0 writes records (`log.jsonl`, `steps.jsonl`, `history.json`,
`run_config.json`). JSON-lines records are append-only, one `write` per line; a torn
trailing line (a kill or a full disk mid-write) is dropped with a warning when read, and
every rewrite (resume truncating records past the restored step, `history.json`) goes
through a temporary file and an atomic rename, so a crash at any moment leaves either
the old or the new file, never an empty one.

Workdir. `prepare_workdir` checks, before the first step, that the workdir and its
`checkpoints/` are writable and that the record paths are files; it refuses a fresh run
in a workdir that holds another run (checkpoints or records) unless `resume` or
`overwrite` is given, and on resume it compares the stored `run_config.json` with this
run's and names the first field that differs.

Checkpoints. Orbax, synchronous. The state is replicated, identical on every process
and held on the host, so process 0 writes it and every process restores it; each
process's orbax manager is scoped to that process, so no cross-process barrier sits on
the save path (see `checkpoint_manager`). The workdir must be on a filesystem that
every process sees.

Dead peers. When a peer process dies, the next collective fails on the survivors; the
loops turn that into `PeerLostError`, which names the process and the last checkpoint.
The JAX distributed runtime cannot shut down cleanly once a peer is gone (its shutdown
barrier waits for the dead process until the coordination service aborts), so after
a `PeerLostError` the process ends with exit code 1 at interpreter exit instead of
hanging in that barrier.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from tqdm import tqdm

from sparsejax import _checks, data
from sparsejax.records import append_jsonl, read_jsonl, write_json_atomic, write_jsonl_atomic

__all__ = [
    "AXIS", "PeerLostError", "is_writer", "data_parallel_devices", "map_step", "replicate", "unreplicate",
    "process_slice",
    "prepare_workdir", "checkpoint_manager", "restore_latest", "save_checkpoint", "peer_loss_guard",
    "sync_processes", "latest_checkpoint_step", "last_checkpoint_text", "local_count", "check_same_on_every_process",
    "workdir_path", "show_progress", "PARALLELISMS", "DataParallel", "first_value", "metric_values", "mean_metrics",
    "LoopConfig", "LoopHooks", "LoopResult", "run_epochs", "NonFiniteLossError",
]

AXIS = "batch"
RECORD_FILES = ("log.jsonl", "steps.jsonl", "history.json", "run_config.json")


class PeerLostError(RuntimeError):
  """A peer process of a multi-process run stopped (killed, crashed, preempted)."""


class NonFiniteLossError(FloatingPointError):
  """A training loss or metric became NaN/inf; the message names the last good checkpoint."""


def is_writer() -> bool:
  """True on the process that writes records (process 0)."""
  return jax.process_index() == 0


# ------------------------------------------------------------- devices


def data_parallel_devices(num_devices: int, batch_size: int) -> list:
  """The devices of the mapped axis: the first `num_devices` local devices of every process.

  Args:
    num_devices: devices per process; 0 means all local devices.
    batch_size: the global batch, which must split evenly over all mapped devices.

  Returns:
    The global device list (process 0's devices first), the same on every process.
  """
  _checks.check_int("num_devices", num_devices, 0, f"an int >= 0 (0: all {jax.local_device_count()} local devices)")
  _checks.check_int("batch_size", batch_size, 1, "an int > 0")
  per_process = int(num_devices) or jax.local_device_count()
  if per_process > jax.local_device_count():
    raise ValueError(f"num_devices={num_devices} but only {jax.local_device_count()} local devices; "
                     f"allowed: 0 <= num_devices <= {jax.local_device_count()}.")
  total = per_process * jax.process_count()
  if batch_size % total:
    raise ValueError(f"batch_size={batch_size} must be divisible by the {per_process} devices "
                     f"x {jax.process_count()} processes.")
  if jax.process_count() == 1:
    return jax.local_devices()[:per_process]
  by_process: dict[int, list] = {}
  for device in jax.devices():
    by_process.setdefault(device.process_index, []).append(device)
  return [d for p in sorted(by_process) for d in sorted(by_process[p], key=lambda d: d.id)[:per_process]]


def local_count(devices: list) -> int:
  """How many of `devices` belong to this process (the leading axis of its pmap inputs)."""
  return sum(d.process_index == jax.process_index() for d in devices)


def map_step(step: Callable, devices: list, donate_state: bool = False) -> Callable:
  """`step` mapped over `devices` with axis name "batch".

  pmap over the global device list; on one device of one process the same step under
  jit(shard_map) over a one-device mesh, which has the same collectives and
  dispatches faster than pmap. (Not jit(vmap): under vmap every `lax.cond` whose
  predicate depends on the replicated state becomes a select that runs both branches
  every step, which would make the NNZ controller's selection and GMP's mask update
  run at every step.)
  """
  donate = (0,) if donate_state else ()
  if len(devices) == 1 and jax.process_count() == 1:
    mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
    spec = jax.sharding.PartitionSpec(AXIS)

    def per_device(*args):
      outputs = step(*jax.tree.map(lambda a: a[0], args))
      return jax.tree.map(lambda a: jnp.expand_dims(a, 0), outputs)

    return jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False),
                   donate_argnums=donate)
  return jax.pmap(step, axis_name=AXIS, devices=devices, donate_argnums=donate)


PARALLELISMS = ("pmap", "sharded", "fsdp")
FSDP_AXIS = "fsdp"


def fsdp_spec(shape: tuple[int, ...], shards: int) -> jax.sharding.PartitionSpec:
  """Where a leaf of this shape is split over the "fsdp" mesh axis of `shards` devices.

  Along its largest dimension that `shards` divides (the first such one on ties);
  replicated when none does (scalars, biases of odd width) or `shards` is 1.
  """
  spec = [None] * len(shape)
  candidates = [d for d in range(len(shape)) if shape[d] >= shards and shape[d] % shards == 0]
  if shards > 1 and candidates:
    spec[max(candidates, key=lambda d: (shape[d], -d))] = FSDP_AXIS
  return jax.sharding.PartitionSpec(*spec)


class DataParallel:
  """Where a data-parallel run lives: its compiled step, its state and its batches.

  The step function is written once, per replica, with its collectives over the axis
  "batch" (`lax.psum` of gradients, `lax.pmean` of BatchNorm statistics, global mean
  activations); `parallelism` decides how it is compiled and how arrays are placed:

  * "pmap": `jax.pmap` over the global device list (on one device of one process,
    jit(shard_map) over a one-device mesh; see `map_step`). The state is stacked, one
    replica per local device along a leading axis; a batch is reshaped to
    (local devices, per device, ...).
  * "sharded": one `jax.jit` program over a `jax.sharding.Mesh` of the same devices with
    axis "batch", the body under `jax.shard_map`. The state is one global array per
    leaf, replicated (`NamedSharding(mesh, P())`); a batch is one global array sharded
    along its first axis (`P("batch")`), assembled from every process's slice with
    `jax.make_array_from_process_local_data`. This is JAX's recommended form: the
    compiled program sees the whole mesh, and the arrays are ordinary `jax.Array` values.

  * "fsdp": one `jax.jit` program in the global view, partitioned by XLA (GSPMD) over a
    Mesh ("batch", "fsdp") of shape (devices / fsdp_devices, fsdp_devices). Every
    parameter and optimizer-state leaf is split along its largest dimension that
    fsdp_devices divides (`fsdp_spec`; replicated if none), so each device stores
    1/fsdp_devices of them, and a batch is sharded over both mesh axes. The step
    function runs once on the whole global batch (under `jax.vmap` with a size-1
    axis "batch", so its collectives are identities): it is one replica, and every
    statistic in it (group norms across a split axis, the NNZ controller's and GMP's
    global k-th magnitude, BatchNorm batch statistics, pooled activations) is the
    global one by construction; XLA inserts the all-gathers and reductions. The run
    equals a one-device run of the same global batch up to float summation order
    (dropout included: it has one replica).

  "pmap" and "sharded" give the same run (the same per-replica arithmetic and the same
  collectives).

  XLA:CPU with several devices in one process: an SPMD program holds one worker
  thread per device while it waits in a collective's rendezvous. With asynchronous
  dispatch, the next step's partitions can take the remaining threads while the
  previous step still waits for its partner, and on a machine with as many threads as
  devices both wait forever ("Termination timeout ... all reduce"). The sharded step
  therefore waits for each step's result before returning on CPU with more than one
  local device (a CPU step is compute-bound, so this costs only the lost overlap of
  dispatch); GPUs and TPUs dispatch asynchronously as usual.
  """

  def __init__(self, devices: list, parallelism: str = "pmap", fsdp_devices: int = 0):
    if parallelism not in PARALLELISMS:
      raise ValueError(f"parallelism must be one of {PARALLELISMS}; got {parallelism!r}.")
    self.devices = devices
    self.parallelism = parallelism
    self.local_devices = local_count(devices)
    # replicas of the step function: the penalty of each is split evenly over them
    self.replicas = 1 if parallelism == "fsdp" else len(devices)
    if parallelism == "fsdp":
      shards = fsdp_devices or len(devices)
      if not 1 <= shards <= len(devices) or len(devices) % shards:
        raise ValueError(f"fsdp_devices={fsdp_devices} must divide the {len(devices)} devices of the run "
                         f"(1 <= fsdp_devices <= {len(devices)}; 0: all of them).")
      self.fsdp_devices = shards
      self.mesh = jax.sharding.Mesh(np.asarray(devices).reshape(len(devices) // shards, shards), (AXIS, FSDP_AXIS))
      self.batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec((AXIS, FSDP_AXIS)))
    elif parallelism == "sharded":
      self.mesh = jax.sharding.Mesh(np.asarray(devices), (AXIS,))
      self.batch_sharding = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec(AXIS))
    if parallelism != "pmap":
      self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      self._wait_each_step = devices[0].platform == "cpu" and self.local_devices > 1

  def step(self, fn: Callable, donate_state: bool = False) -> Callable:
    """`fn(state, *batch) -> (state, metrics)` compiled for this placement."""
    if self.parallelism == "pmap":
      return map_step(fn, self.devices, donate_state)
    if self.parallelism == "fsdp":
      return self._fsdp_step(fn, donate_state)
    spec = jax.sharding.PartitionSpec
    compiled: dict[int, Callable] = {}  # one program per number of batch arrays

    def run(state, *batch):
      if len(batch) not in compiled:
        compiled[len(batch)] = jax.jit(
            jax.shard_map(fn, mesh=self.mesh, in_specs=(spec(),) + (spec(AXIS),) * len(batch), out_specs=spec(),
                          check_vma=False),
            donate_argnums=(0,) if donate_state else ())
      outputs = compiled[len(batch)](state, *batch)
      if self._wait_each_step:
        jax.block_until_ready(outputs)
      return outputs

    return run

  def state_sharding(self, leaf: Any) -> jax.sharding.NamedSharding:
    """The sharding of one state leaf: replicated, or (fsdp) split by `fsdp_spec`."""
    if self.parallelism != "fsdp":
      return self.replicated
    return jax.sharding.NamedSharding(self.mesh, fsdp_spec(np.shape(leaf), self.fsdp_devices))

  def _fsdp_step(self, fn: Callable, donate_state: bool) -> Callable:
    compiled: dict[tuple, Callable] = {}  # one program per state structure and number of batch arrays

    def one_replica(state, *batch):
      mapped = jax.vmap(fn, in_axes=(None,) + (0,) * len(batch), axis_name=AXIS, axis_size=1)
      return jax.tree.map(lambda a: a[0], mapped(state, *(b[None] for b in batch)))

    def run(state, *batch):
      key = (jax.tree.structure(state), len(batch))
      if key not in compiled:
        shardings = jax.tree.map(lambda a: a.sharding, state)
        shapes = jax.eval_shape(one_replica, state, *batch)
        if isinstance(shapes, tuple) and len(shapes) == 2 and \
            jax.tree.structure(shapes[0]) == jax.tree.structure(state):  # a train step: the state keeps its layout
          out: Any = (shardings, self.replicated)
        else:                                                               # an eval step: metrics only
          out = self.replicated
        compiled[key] = jax.jit(one_replica, in_shardings=(shardings,) + (self.batch_sharding,) * len(batch),
                                out_shardings=out, donate_argnums=(0,) if donate_state else ())
      outputs = compiled[key](state, *batch)
      if self._wait_each_step:
        jax.block_until_ready(outputs)
      return outputs

    return run

  def put_state(self, tree: Any) -> Any:
    """A host state (the same on every process) placed on the devices."""
    if self.parallelism == "pmap":
      return replicate(tree, self.devices)
    def place(leaf):
      value = np.asarray(leaf)
      return jax.make_array_from_callback(value.shape, self.state_sharding(value), lambda index: value[index])

    return jax.tree.map(place, jax.device_get(tree))

  def host(self, tree: Any) -> Any:
    """The state (or metrics) on the host: the first replica, the local copy of a replicated
    array, or (fsdp) the whole of a split one, gathered from every process."""
    if self.parallelism == "pmap":
      return unreplicate(tree)
    def fetch(a):
      if a.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
      if a.is_fully_addressable:
        return np.asarray(a)
      return np.asarray(multihost_utils.process_allgather(a, tiled=True))

    return jax.tree.map(fetch, tree)

  def put_batch(self, *arrays: np.ndarray) -> tuple:
    """This process's slice of a global batch, placed for the step."""
    if self.parallelism == "pmap":
      return tuple(data.shard(list(arrays), self.local_devices))
    return tuple(jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(a)) for a in arrays)



def first_value(metric: Any) -> float:
  """One replica's value of a replicated metric: a pmap output (leading device axis), a
  replicated global array (also across processes: the local copy), or a host array."""
  if isinstance(metric, jax.Array):
    metric = metric.addressable_data(0)
  return float(np.asarray(metric).reshape(-1)[0])


def metric_values(window: list[dict]) -> dict[str, np.ndarray]:
  """{name: one value per step} of step metrics as a step returns them (replicated or global arrays)."""
  return {k: np.asarray([first_value(m[k]) for m in window]) for k in window[0]}


def mean_metrics(window: list[dict]) -> dict[str, float]:
  """{name: mean over the steps of `window`}: a `LoopHooks.summarize` for metrics that are step means."""
  return {k: float(v.mean()) for k, v in metric_values(window).items()}


def replicate(tree: Any, devices: list) -> Any:
  """One copy per local mapped device along a new leading axis (pmap shards it on the first call)."""
  n = local_count(devices)
  return jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (n, *np.shape(a))).copy(), jax.device_get(tree))


def unreplicate(tree: Any) -> Any:
  """The first replica, on the host."""
  return jax.tree.map(lambda a: np.asarray(a[0]), jax.device_get(tree))


def process_slice(*arrays: np.ndarray) -> tuple:
  """This process's share of each array of a global batch; the whole arrays on one process."""
  count, index = jax.process_count(), jax.process_index()
  if count == 1:
    return arrays
  per = len(arrays[0]) // count
  return tuple(a[index * per:(index + 1) * per] for a in arrays)


def sync_processes(name: str) -> None:
  """A barrier across processes (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def check_same_on_every_process(name: str, values: dict[str, int | str]) -> None:
  """Raises ValueError naming the first field whose value differs between processes.

  Strings (paths) are compared by a CRC-32 of their text; the message then shows this
  process's value.
  """
  if jax.process_count() == 1:
    return
  keys = sorted(values)
  codes = [zlib.crc32(v.encode()) if isinstance(v, str) else int(v) for v in (values[k] for k in keys)]
  gathered = np.asarray(multihost_utils.process_allgather(np.asarray(codes, np.int64)))
  for j, key in enumerate(keys):
    column = gathered[:, j]
    if np.any(column != column[0]):
      shown = (f"this process (process {jax.process_index()}) has {values[key]!r}" if isinstance(values[key], str)
               else f"{column.tolist()} for processes 0..{len(column) - 1}")
      raise ValueError(f"{name}: {key} differs between processes ({shown}); every process must run the same "
                       f"configuration on the same data, in the same workdir.")


def workdir_path(workdir: Any) -> str:
  """`workdir` as an absolute path string; ValueError unless it is a non-empty str or os.PathLike."""
  if not isinstance(workdir, (str, os.PathLike)) or not os.fspath(workdir):
    raise ValueError(f"workdir must be a directory path (a non-empty str or os.PathLike); got workdir={workdir!r}.")
  return os.path.abspath(os.fspath(workdir))


# ------------------------------------------------------------- workdir


def _check_writable_dir(path: str, what: str) -> None:
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"{what} {path!r} exists and is not a directory.")
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_probe.", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as err:
    raise ValueError(f"{what} {path!r} is not writable ({err.strerror or err}); choose another workdir "
                     f"or fix its permissions before training.") from None


def _existing_steps(checkpoint_dir: str) -> list[int]:
  if not os.path.isdir(checkpoint_dir):
    return []
  return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def latest_checkpoint_step(workdir: str) -> int | None:
  """The newest finished checkpoint step in `workdir/checkpoints` (read from disk; None if none)."""
  steps = _existing_steps(os.path.join(workdir, "checkpoints"))
  return steps[-1] if steps else None


def last_checkpoint_text(workdir: str) -> str:
  """"step N in <workdir>/checkpoints": where a resumed run restarts, for error messages."""
  return f"step {latest_checkpoint_step(workdir)} in {os.path.join(workdir, 'checkpoints')}"


def show_progress(progress: bool | None) -> bool:
  """Whether to draw tqdm bars: `progress` if given, else only when stderr is a terminal and this
  process writes (a log file or a pipe gets no bar redraws)."""
  if progress is None:
    progress = bool(getattr(sys.stderr, "isatty", lambda: False)())
  return bool(progress) and is_writer()


def _has_records(workdir: str) -> bool:
  for name in ("log.jsonl", "steps.jsonl", "history.json"):
    path = os.path.join(workdir, name)
    if os.path.isfile(path) and os.path.getsize(path) > 0:
      return True
  return False


def prepare_workdir(workdir: str, run_config: dict, resume: bool, overwrite: bool = False) -> None:
  """Checks the workdir before the first step and records this run's configuration.

  Args:
    workdir: the run's directory (created if needed).
    run_config: JSON-able facts a resumed run must share with the stored one
      (batch size, seed, dataset size, ...), written to `run_config.json`.
    resume: continue the run stored in `workdir`.
    overwrite: delete another run's checkpoints and records first (fresh runs only).

  Raises:
    ValueError: an unwritable workdir or checkpoints/, a record path that is a
      directory, another run's checkpoints/records without resume/overwrite, or a
      stored configuration that differs from this one on resume.
  """
  if resume and overwrite:
    raise ValueError("resume=True and overwrite=True contradict each other: choose one.")
  if is_writer():
    _check_writable_dir(workdir, "workdir")
    for name in RECORD_FILES:
      path = os.path.join(workdir, name)
      if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory; the run writes its records there. Remove it or choose "
                         f"another workdir.")
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    in_use = bool(_existing_steps(checkpoint_dir)) or _has_records(workdir)
    config_path = os.path.join(workdir, "run_config.json")
    if in_use and not resume:
      if not overwrite:
        raise ValueError(
            f"workdir {workdir!r} already holds a run (checkpoints {_existing_steps(checkpoint_dir)} / records); "
            f"pass resume=True to continue it or overwrite=True to replace it, or choose a new workdir.")
      shutil.rmtree(checkpoint_dir, ignore_errors=True)
      for name in RECORD_FILES:
        with contextlib.suppress(FileNotFoundError):
          os.remove(os.path.join(workdir, name))
    if resume and os.path.isfile(config_path):
      with open(config_path) as f:
        try:
          stored = json.load(f)
        except json.JSONDecodeError:
          stored = None
      if stored is not None:
        for key in run_config:
          if key in stored and stored[key] != run_config[key]:
            raise ValueError(
                f"cannot resume the run in {workdir!r}: {key} was {stored[key]!r} there but is {run_config[key]!r} "
                f"now. Resume with the same {key}, or start a new run (new workdir, or overwrite=True).")
    _check_writable_dir(checkpoint_dir, "checkpoint directory")
    write_json_atomic(config_path, run_config)
  sync_processes(f"sparsejax-prepare-{os.path.abspath(workdir)}")


# ------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A synchronous orbax manager for `workdir/checkpoints`, keeping the newest `keep`.

  The trainers' state is replicated and held on the host (numpy), identical on every
  process, so process 0 alone writes it (`save_checkpoint` is a no-op elsewhere) and
  every process reads it on resume. Each process's manager is therefore scoped to
  itself (`MultiprocessingOptions(primary_host=i, active_processes={i})`): orbax then
  places no cross-process barrier on the save path, where a dead peer would block the
  survivor until the coordination service's heartbeat timeout aborts it.
  """
  index = jax.process_index()
  directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
  if is_writer():
    os.makedirs(directory, exist_ok=True)  # prepare_workdir made it already; this is for direct callers
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=False, create=False,
      multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=index, active_processes={index}))
  return ocp.CheckpointManager(directory, options=options)


def _restore(manager: ocp.CheckpointManager, template: Any) -> Any:
  target = flax.serialization.to_state_dict(template)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  try:
    restored = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(abstract))
  except ValueError as err:
    raise ValueError(
        f"the checkpoint at step {manager.latest_step()} in {manager.directory} does not match this run's model "
        f"and optimizer (resume with the same configuration, or use a new workdir): {err}") from None
  return flax.serialization.from_state_dict(template, restored)


def restore_latest(manager: ocp.CheckpointManager, template: Any, resume: bool) -> tuple[Any, int]:
  """(state, step): the latest checkpoint and its step when resuming and one exists, else (template, 0)."""
  step = manager.latest_step()
  if resume and step is not None:
    return _restore(manager, template), int(step)
  return template, 0


def save_checkpoint(manager: ocp.CheckpointManager, step: int, host_state: Any) -> None:
  """Saves a state held on the host (`DataParallel.host`) at `step` (process 0 writes; a no-op elsewhere)."""
  if not is_writer():
    return
  manager.save(step, args=ocp.args.StandardSave(flax.serialization.to_state_dict(host_state)))
  manager.wait_until_finished()


# ------------------------------------------------------------- dead peers

_PEER_FAILURE_MARKERS = ("gloo", "connection reset", "connection closed", "socket closed", "broken pipe",
                         "unavailable", "deadline_exceeded", "heartbeat", "peer", "nccl", "collective")
_exit_after_peer_loss = False


def _end_process_after_peer_loss() -> None:
  if _exit_after_peer_loss:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # the distributed runtime's shutdown barrier would wait for the dead peer


@contextlib.contextmanager
def peer_loss_guard(where: Callable[[], str]) -> Iterator[None]:
  """Turns a failed collective of a multi-process run into `PeerLostError`.

  `where()` describes the position (step, last checkpoint) for the message.
  """
  try:
    yield
  except Exception as err:  # pylint: disable=broad-except
    text = str(err).lower()
    if jax.process_count() == 1 or not any(marker in text for marker in _PEER_FAILURE_MARKERS):
      raise
    global _exit_after_peer_loss
    if not _exit_after_peer_loss:
      _exit_after_peer_loss = True
      atexit.register(_end_process_after_peer_loss)
    raise PeerLostError(
        f"process {jax.process_index()} of {jax.process_count()} lost a peer process {where()}: "
        f"{str(err).splitlines()[0][:300]}. Restart every process with resume=True to continue from the last "
        f"checkpoint; this process will exit with code 1.") from err


# ------------------------------------------------------------- the loop


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  """The fields every trainer's configuration shares (`train.TrainConfig`, `gan.GANConfig` extend it).

  Attributes:
    epochs: passes over the training data (>= 0).
    batch_size: the global batch, split evenly over every mapped device of every process.
    seed: the run's seed: initialisation, the data order of each epoch, dropout keys.
    num_devices: devices per process (0: all local devices).
    parallelism: "pmap" (replicated state, `jax.pmap`), "sharded" (one jit program over a
      device mesh, replicated state) or "fsdp" (params and optimizer state also split over
      `fsdp_devices`); see `DataParallel`.
    fsdp_devices: with "fsdp", the devices each leaf is split over (0: all of them).
    checkpoint: False writes no checkpoints (grid searches, benchmarks).
    checkpoint_every_steps: also checkpoint every N steps (0: only at epoch ends).
    keep_checkpoints: how many checkpoints to keep (>= 1 when checkpointing).
    check_finite_inputs: refuse NaN/inf in the data before the first step.
    log_every_steps: a record of the mean metrics of the last N steps in `steps.jsonl`
      (0: none).
    progress: tqdm bars (None: only when stderr is a terminal).
  """
  epochs: int = 10
  batch_size: int = 128
  seed: int = 0
  num_devices: int = 0
  parallelism: str = "pmap"
  fsdp_devices: int = 0
  checkpoint: bool = True
  checkpoint_every_steps: int = 0
  keep_checkpoints: int = 2
  check_finite_inputs: bool = True
  log_every_steps: int = 0
  progress: bool | None = None

  def int_fields(self) -> list[tuple[str, int, str]]:
    """(field, lower bound, allowed-range text) of every integer field; subclasses add theirs."""
    return [("epochs", 0, "an int >= 0"), ("batch_size", 1, "an int > 0"), ("seed", 0, "an int >= 0"),
            ("num_devices", 0, "an int >= 0 (0: all local devices)"),
            ("fsdp_devices", 0, "an int >= 0 dividing the device count (0: all devices)"),
            ("checkpoint_every_steps", 0, "an int >= 0 (0: only at epoch ends)"),
            ("log_every_steps", 0, "an int >= 0 (0: no step records)")]

  def validate(self) -> None:
    """Raises ValueError naming `Class.field`, its allowed range and the value given, for the first bad field."""
    name = type(self).__name__
    for field, lower, allowed in self.int_fields():
      _checks.check_int(f"{name}.{field}", getattr(self, field), lower, allowed)
    if self.parallelism not in PARALLELISMS:
      raise ValueError(f"{name}.parallelism must be one of {PARALLELISMS}; got {self.parallelism!r}.")
    for field in ("checkpoint", "check_finite_inputs"):
      if not isinstance(getattr(self, field), (bool, np.bool_)):
        raise ValueError(f"{name}.{field} must be True or False; got {getattr(self, field)!r}.")
    if self.progress not in (None, True, False):
      raise ValueError(f"{name}.progress must be None (bars on a terminal only), True or False; got {self.progress!r}.")
    if self.checkpoint:
      _checks.check_int(f"{name}.keep_checkpoints", self.keep_checkpoints, 1,
                        "an int >= 1 when checkpoint=True (0 would keep no checkpoint to resume from)")


@dataclasses.dataclass(frozen=True)
class LoopHooks:
  """What a trainer gives `run_epochs`: its step, its batches and its metrics.

  Attributes:
    step: `step(state, *batch) -> (state, metrics)`, written per replica with its
      collectives over the axis "batch" (compiled by `DataParallel.step`, state donated).
      The state is any pytree (checkpointed whole); the metrics a dict of scalars.
    epoch_batches: `epoch -> [index array, ...]`: the global batches of one epoch, the
      same number every epoch and a function of (seed, epoch) only (exact resume).
    load_batch: `index array -> arrays`: this process's share of one global batch (the
      step's `*batch`).
    summarize: metrics of several steps (as the step returns them) -> record fields
      (floats), for the step records and the non-finite check.
    epoch_summary: metrics of one epoch -> the epoch record's fields (default: `summarize`).
    epoch_end: `(placed state, epoch) -> dict` merged into the epoch record (evaluation,
      size, samples); `placement.host(state)` gives the state on the host.
    progress_keys: record fields shown beside the progress bars.
  """
  step: Callable
  epoch_batches: Callable[[int], Sequence[np.ndarray]]
  load_batch: Callable[[np.ndarray], tuple]
  summarize: Callable[[list], dict]
  epoch_summary: Callable[[list], dict] | None = None
  epoch_end: Callable[[Any, int], dict] | None = None
  progress_keys: tuple[str, ...] = ()


class LoopResult(NamedTuple):
  """What `run_epochs` returns."""
  state: Any                 # the final state on the host (jax arrays, unreplicated)
  history: list[dict]        # one record per epoch (log.jsonl, history.json)
  steps: list[dict]          # step records every `log_every_steps` (steps.jsonl)
  workdir: str


def _check_same_run(trainer: str, config: LoopConfig, run_config: dict, resume: bool, workdir: str) -> None:
  values: dict[str, int | str] = {"epochs": config.epochs, "resume": int(resume), "workdir": workdir}
  for key, value in run_config.items():
    values[key] = value if isinstance(value, (int, str)) else json.dumps(value)
  check_same_on_every_process(trainer, values)


def run_epochs(config: LoopConfig, workdir: str, hooks: LoopHooks, placement: DataParallel, initial_state: Any, *,
               run_config: dict, resume: bool = False, overwrite: bool = False) -> LoopResult:
  """The training loop every trainer runs: restore, epochs of steps, records, checkpoints.

  Before the first step it checks that every process runs the same configuration,
  prepares the workdir (`prepare_workdir`), restores the latest checkpoint when
  resuming and truncates the records past it. Then, epoch by epoch: the steps of
  `hooks.epoch_batches(epoch)` (from the restored step on), a record of the mean
  metrics every `config.log_every_steps` steps, a checkpoint every
  `config.checkpoint_every_steps` steps (not at an epoch's last step: that checkpoint
  follows the epoch's record, so a checkpoint at an epoch boundary always has its
  record), and at the epoch's end the record (`epoch`, `step`, `epoch_time_s`, the
  epoch summary, `resumed_from_step` when the epoch was resumed mid-way, the fields of
  `hooks.epoch_end`) appended to `log.jsonl`, then a checkpoint. A non-finite metric
  raises `NonFiniteLossError` before anything non-finite is checkpointed.

  Args:
    config: the run's `LoopConfig` (or a subclass), already validated.
    workdir: the run's directory (a str or os.PathLike).
    hooks: the trainer's step, batches and metrics.
    placement: where the run lives (`DataParallel`).
    initial_state: the host state of a fresh run (also the template for a restore).
    run_config: JSON-able facts a resumed run must share with the stored one (its
      "trainer" field names the trainer in messages).
    resume: continue from the latest checkpoint in `workdir`.
    overwrite: replace another run's checkpoints and records in `workdir`.

  Returns:
    `LoopResult`. Only process 0 writes records; every process returns them.
  """
  workdir = workdir_path(workdir)
  trainer = str(run_config.get("trainer", "run_epochs"))
  _check_same_run(trainer, config, run_config, resume, workdir)
  prepare_workdir(workdir, run_config, resume, overwrite)
  writer = is_writer()
  manager = checkpoint_manager(workdir, max(config.keep_checkpoints, 1))
  state, start_step = restore_latest(manager, initial_state, resume)
  log_path, steps_path = os.path.join(workdir, "log.jsonl"), os.path.join(workdir, "steps.jsonl")
  history = read_jsonl(log_path, start_step) if resume else []
  step_log = read_jsonl(steps_path, start_step) if resume else []
  if writer:
    write_jsonl_atomic(log_path, history)
    if config.log_every_steps or step_log:
      write_jsonl_atomic(steps_path, step_log)

  compiled_step = placement.step(hooks.step, donate_state=True)
  epoch_summary = hooks.epoch_summary or hooks.summarize
  steps_per_epoch = len(hooks.epoch_batches(0))
  rstate = placement.put_state(state)
  step = start_step
  progress = show_progress(config.progress)

  def where() -> str:
    return f"at step {step} (last checkpoint: {last_checkpoint_text(workdir)})"

  def check_finite(step_reached: int, metrics: list) -> None:
    """Raises on a non-finite summary of `metrics`: the epoch's steps not checked yet."""
    bad = [k for k, v in hooks.summarize(metrics).items() if not np.isfinite(v)] if metrics else []
    if bad:
      raise NonFiniteLossError(
          f"{', '.join(bad)} became non-finite before step {step_reached}; not checkpointed. Last good checkpoint: "
          f"{last_checkpoint_text(workdir)} (resume=True restarts there).")

  def save(step_to_save: int) -> None:
    if config.checkpoint:
      save_checkpoint(manager, step_to_save, placement.host(rstate))

  def shown(record: dict) -> dict:
    return {k: f"{record[k]:.4g}" for k in hooks.progress_keys if k in record}

  epoch_bar = tqdm(range(start_step // max(steps_per_epoch, 1), config.epochs), desc=f"{trainer} epochs",
                   disable=not progress)
  for epoch in epoch_bar:
    start_time = time.time()
    batches = hooks.epoch_batches(epoch)
    first = step - epoch * steps_per_epoch
    epoch_metrics: list = []
    window: list = []
    checked = 0  # epoch_metrics[:checked] were found finite (each step is read once for the check)
    bar = tqdm(batches[first:], desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
    with peer_loss_guard(where):
      for idx in bar:
        rstate, m = compiled_step(rstate, *placement.put_batch(*hooks.load_batch(idx)))
        epoch_metrics.append(m)
        window.append(m)
        step += 1
        if config.log_every_steps and step % config.log_every_steps == 0:
          record = {"step": step, "epoch": step / steps_per_epoch, **hooks.summarize(window)}
          step_log.append(record)
          if writer:
            append_jsonl(steps_path, record)
          bar.set_postfix(shown(record))
          window = []
        if config.checkpoint_every_steps and step % config.checkpoint_every_steps == 0 and \
            step != (epoch + 1) * steps_per_epoch:
          check_finite(step, epoch_metrics[checked:])
          checked = len(epoch_metrics)
          save(step)
      check_finite(step, epoch_metrics[checked:])  # waits for the devices
      record = {"epoch": epoch + 1, "step": step, "epoch_time_s": time.time() - start_time,
                **epoch_summary(epoch_metrics)}
      if first:  # resumed mid-epoch: the epoch's metrics cover the remaining steps only
        record["resumed_from_step"] = epoch * steps_per_epoch + first
      if hooks.epoch_end is not None:
        record.update(hooks.epoch_end(rstate, epoch + 1))
      history.append(record)
      if writer:
        append_jsonl(log_path, record)
      save(step)  # after the record: an interruption before this re-runs the epoch's end on resume
    epoch_bar.set_postfix(shown(record))
  final = jax.tree.map(jnp.asarray, placement.host(rstate))
  if writer:
    write_json_atomic(os.path.join(workdir, "history.json"), history)
  return LoopResult(state=final, history=history, steps=step_log, workdir=workdir)
