"""Trainer overhead, data-parallel scaling and compaction speed-up, as ratios in one run.

1. Epoch time of `sparsejax.train.fit` (pmap, 1 device, no checkpoints/eval)
   vs a minimal hand-written `jax.jit` SGD loop on the same model and data:
   MLP 784-300-100-10 and LeNet-5 on 28x28 inputs, batch 128.
2. Training samples/s of `fit` on 1 vs 2 devices, pmap vs sharded (one jit program
   over a Mesh) vs fsdp (params and optimizer state split over the devices), and the
   bytes of train state each device holds; fake CPU devices here, which share the same
   2 cores, so the CPU rows measure the overhead of each placement, not a speed-up
   (real devices on a GPU host).
3. Inference time of a sparse MLP vs its `compaction.compact` version.

Usage: python -m benchmarks.train [--examples 8192] [--epochs 3] [--out benchmarks/results]
Run it with XLA_FLAGS=--xla_force_host_platform_device_count=2 on CPU for part 2.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from sparsejax import compaction, prox, runloop, train, transforms
from sparsejax.models import MLP, lenet5


def synthetic(n, seed=0):
  rng = np.random.default_rng(seed)
  return rng.random((n, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, n).astype(np.int32)


def hand_written_epoch_time(model, tx, x, y, batch, epochs):
  """The minimal jit loop: same batches (no padding needed: n % batch == 0)."""
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb), yb).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  times = []
  for epoch in range(epochs + 1):
    order = np.random.default_rng([0, epoch]).permutation(len(x))
    start = time.perf_counter()
    for i in range(0, len(x), batch):
      idx = order[i:i + batch]
      params, opt_state = step(params, opt_state, x[idx], y[idx])
    jax.block_until_ready(params)
    times.append(time.perf_counter() - start)
  return float(np.median(times[1:]))  # first epoch compiles


def fit_epoch_time(model, tx, x, y, batch, epochs, num_devices, parallelism="pmap"):
  with tempfile.TemporaryDirectory() as workdir:
    config = train.TrainConfig(epochs=epochs + 1, batch_size=batch, num_devices=num_devices, progress=False,
                               check_finite_inputs=False, keep_checkpoints=1, parallelism=parallelism)
    result = train.fit(model, tx, (x, y), None, config, workdir, report_fn=lambda p: {})
  return float(np.median([r["epoch_time_s"] for r in result.history[1:]]))


def state_bytes_per_device(model, tx, x, num_devices, parallelism) -> int:
  """Bytes of the train state that the first device stores under this placement."""
  placement = runloop.DataParallel(jax.local_devices()[:num_devices], parallelism)
  state = placement.put_state(train.create_train_state(model, tx, x[:1]))
  if parallelism == "pmap":  # host arrays stacked one replica a device: each device holds one whole replica
    return int(sum(np.asarray(leaf[0]).nbytes for leaf in jax.tree.leaves(state)))
  first = jax.local_devices()[0]
  total = 0
  for leaf in jax.tree.leaves(state):
    shards = leaf.addressable_shards if isinstance(leaf, jax.Array) else []
    total += sum(s.data.nbytes for s in shards if s.device == first)
  return int(total)


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--examples", type=int, default=8192)
  parser.add_argument("--epochs", type=int, default=3)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()
  x, y = synthetic(args.examples)
  lr = 0.05
  rows = []
  for name, model in (("MLP 784-300-100-10", MLP((300, 100, 10))), ("LeNet-5", lenet5())):
    tx = optax.chain(optax.sgd(lr), transforms.integrated_tl1(1e-4, lr, a=0.01))
    base = hand_written_epoch_time(model, tx, x, y, args.batch_size, args.epochs)
    ours = fit_epoch_time(model, tx, x, y, args.batch_size, args.epochs, num_devices=1)
    rows.append({"benchmark": "fit epoch vs hand-written jit loop (1 device)", "model": name,
                 "value": ours / base, "unit": "ratio", "detail": f"{ours:.3f}s vs {base:.3f}s"})
    for devices in sorted({1, min(2, jax.local_device_count())}):
      for parallelism in ("pmap", "sharded", "fsdp"):
        t = fit_epoch_time(model, tx, x, y, args.batch_size, args.epochs, num_devices=devices,
                           parallelism=parallelism)
        rows.append({"benchmark": f"fit samples/s on {devices} device(s), {parallelism}", "model": name,
                     "value": len(x) / t, "unit": "samples/s", "detail": jax.devices()[0].device_kind})
        rows.append({"benchmark": f"state bytes held by one device, {devices} device(s), {parallelism}",
                     "model": name, "value": state_bytes_per_device(model, tx, x, devices, parallelism),
                     "unit": "bytes", "detail": "params + optimizer state (+ step, rng)"})

  # Compaction: a 784-1024-1024-10 MLP with 90% of the hidden units removed.
  model = MLP((1024, 1024, 10))
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  keep = np.random.default_rng(1).random(1024) < 0.1
  params = jax.tree.map(np.array, params)
  params["Dense_0"]["kernel"][:, ~keep] = 0.0
  params["Dense_1"]["kernel"] = np.asarray(prox.l1(params["Dense_1"]["kernel"], 0.02))
  cm = compaction.compact(model, params, (28, 28, 1))
  small, small_params = cm.module, cm.params
  xb = jnp.asarray(x[:1024])
  full_fn = jax.jit(lambda p, v: model.apply({"params": p}, v))
  small_fn = jax.jit(lambda p, v: small.apply({"params": p}, v))
  assert float(jnp.max(jnp.abs(full_fn(params, xb) - small_fn(small_params, xb)))) < 1e-4

  def timed(fn, p):
    fn(p, xb).block_until_ready()
    ts = []
    for _ in range(20):
      start = time.perf_counter()
      fn(p, xb).block_until_ready()
      ts.append(time.perf_counter() - start)
    return float(np.median(ts))

  t_full, t_small = timed(full_fn, params), timed(small_fn, small_params)
  rows.append({"benchmark": "compact inference speed-up (batch 1024)", "model": f"MLP 784-1024-1024-10 -> {small.features}",
               "value": t_full / t_small, "unit": "x faster", "detail": f"{1e3 * t_full:.2f} ms -> {1e3 * t_small:.2f} ms"})

  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}), {jax.local_device_count()} local device(s); "
        f"{args.examples} examples, batch {args.batch_size}\n")
  print("| benchmark | model | value | unit | detail |\n|---|---|---:|---|---|")
  for r in rows:
    print(f"| {r['benchmark']} | {r['model']} | {r['value']:.3g} | {r['unit']} | {r['detail']} |")
  common.write_rows(args.out, f"train_{device.platform}", rows, device=device.device_kind,
                    local_devices=jax.local_device_count())


if __name__ == "__main__":
  main()
