"""What sparsity costs at realistic size: proximal and pruning steps vs the plain optimizer step.

For models where the matmuls or convolutions dominate (an MLP of 11.6M kernel weights,
CNN8 on 28x28, ResNet-20 with BatchNorm on 32x32), batch 128 and 256, one jitted
training step (forward, backward, momentum SGD, then the sparsification) is timed as
the median of `--repeats` timings of `--steps` consecutive steps (state carried over;
the variants are timed round robin, so machine noise falls on all of them alike), and
compiled with XLA's memory analysis. Every row is a ratio to the plain momentum-SGD
step of the same model and batch, measured in the same run:

  time ratio        step time / plain step time
  temp bytes ratio  XLA's temporary buffer bytes of the step / the plain step's
  extra temp / params  (temp bytes - plain temp bytes) / bytes of the parameters:
                    0 means the sparsification adds no parameter-sized buffer

Families: l1 (soft threshold), tl1, log_sum, mcp, l_half (non-convex, closed forms),
group_lasso and the sparse group lasso over each input unit's outgoing weights, integrated TL1 (group then TL1),
the NNZ controller with the schedule of a run of known length (interval 10), GMP (mask
every 100 steps). On CPU the step runs on 2 cores; on a GPU the same script gives the
GPU table.

Usage: python -m benchmarks.sparsity_cost [--models mlp cnn8 resnet20] [--batch-sizes 128 256]
       [--steps 5] [--repeats 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from sparsejax import controller, pruning, selection, transforms
from sparsejax.models import MLP, cnn8, resnet20

LR = 0.05
MODELS = {"mlp": (lambda: MLP((4096, 2048, 10)), (28, 28, 1)), "cnn8": (cnn8, (28, 28, 1)),
          "resnet20": (resnet20, (32, 32, 3))}


def sparsifiers(num_kernel_weights: int) -> dict:
  target = max(1, num_kernel_weights // 20)
  return {
      "plain": optax.identity(),
      "l1": transforms.l1(1e-5, LR),
      "tl1": transforms.proximal("tl1", 1e-5, LR, a=0.02),
      "log_sum": transforms.proximal("log_sum", 1e-5, LR, eps=0.01),
      "mcp": transforms.proximal("mcp", 1e-5, LR, lam=0.02, gamma=3.0),
      "l_half": transforms.proximal("l_half", 1e-6, LR),
      "group_lasso": transforms.proximal("group_lasso", 1e-5, LR, axis="input_units"),
      "sparse_group_lasso": transforms.proximal("sparse_group_lasso", 1e-5, LR, l1=0.5, axis="input_units"),
      "integrated_tl1": transforms.integrated_tl1(1e-5, LR, a=0.02),
      "nnz_controller": controller.nnz_controller("l1", target, LR, total_steps=10**7),
      "gmp": pruning.gradual_magnitude_pruning(0.95, 0, 10**7, 100),
  }


def make_step(model, tx, has_state: bool):
  def step(params, model_state, opt_state, x, y):
    def loss_fn(p):
      if has_state:
        logits, new_vars = model.apply({"params": p, **model_state}, x, train=True, mutable=list(model_state))
      else:
        logits, new_vars = model.apply({"params": p}, x, train=True), model_state
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new_vars
    grads, new_vars = jax.grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_vars, opt_state
  return jax.jit(step, donate_argnums=(0, 2))


def prepare(model, input_shape, sparsifier, batch) -> dict:
  """The jitted step of one sparsifier, its carried state, and XLA's memory analysis."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((batch, *input_shape), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))
  variables = model.init(jax.random.PRNGKey(0), x[:1])
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}
  tx = optax.chain(optax.sgd(LR, momentum=0.9), sparsifier)
  opt_state = tx.init(params)
  step = make_step(model, tx, bool(model_state))
  memory = step.lower(params, model_state, opt_state, x, y).compile().memory_analysis()
  param_bytes = sum(int(np.size(p)) * np.dtype(p.dtype).itemsize for p in jax.tree.leaves(params))
  return {"step": step, "carry": [params, model_state, opt_state], "x": x, "y": y, "times": [],
          "temp_bytes": int(getattr(memory, "temp_size_in_bytes", 0)) if memory is not None else 0,
          "param_bytes": param_bytes}


def time_steps(case: dict, steps: int) -> float:
  """Seconds per step over `steps` consecutive steps (the state carried from call to call)."""
  carry = case["carry"]
  start = time.perf_counter()
  for _ in range(steps):
    carry[0], carry[1], carry[2] = case["step"](carry[0], carry[1], carry[2], case["x"], case["y"])
  jax.block_until_ready(carry[0])
  return (time.perf_counter() - start) / steps


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 256])
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=7)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  rows = []
  started = time.time()
  for model_name in args.models:
    build, input_shape = MODELS[model_name]
    model = build()
    params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *input_shape)))["params"]
    kernels = sum(int(np.size(k)) for k in selection.weight_leaves(params))
    for batch in args.batch_sizes:
      cases = {name: prepare(model, input_shape, s, batch) for name, s in sparsifiers(kernels).items()}
      for case in cases.values():
        time_steps(case, 1)  # compile and warm up
      for _ in range(args.repeats):  # round robin: machine noise spreads over every variant alike
        for case in cases.values():
          case["times"].append(time_steps(case, args.steps))
      plain = cases["plain"]
      plain_ms = 1e3 * float(np.median(plain["times"]))
      for name, case in cases.items():
        ms = 1e3 * float(np.median(case["times"]))
        rows.append({"model": model_name, "kernel_weights": kernels, "batch": batch, "sparsifier": name,
                     "ms": ms, "time_ratio": ms / plain_ms,
                     "temp_bytes_ratio": case["temp_bytes"] / max(plain["temp_bytes"], 1),
                     "extra_temp_over_params": (case["temp_bytes"] - plain["temp_bytes"]) / case["param_bytes"]})
        print(f"{model_name} b{batch} {name}: {ms:.2f} ms, x{rows[-1]['time_ratio']:.3f}, "
              f"extra temp / params {rows[-1]['extra_temp_over_params']:+.3f}", flush=True)
  device = jax.devices()[0]
  print(f"\ndevice: {device.platform} ({device.device_kind}); {time.time() - started:.0f} s\n")
  print("| model | batch | sparsifier | ms | time ratio | extra temp / params |\n|---|---:|---|---:|---:|---:|")
  for r in rows:
    print(f"| {r['model']} | {r['batch']} | {r['sparsifier']} | {r['ms']:.2f} | {r['time_ratio']:.3f} | "
          f"{r['extra_temp_over_params']:+.3f} |")
  common.write_rows(args.out, f"sparsity_cost_{device.platform}", rows, device=device.device_kind)
  return rows


if __name__ == "__main__":
  main()
