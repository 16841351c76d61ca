"""Cost of a training step with each sparsification method, as ratios to a plain step, in one run.

Model: MLP 784-300-100-10 (266,200 kernel weights), batch 128, momentum SGD, one jitted
step (forward, backward, optimizer, sparsification); each case runs 100 consecutive steps per
timing, round-robin with the others, and the fastest of `--repeats` rounds is kept.
Rows: the plain SGD step; a proximal l1 step; the NNZ controller with `interval` 1, 10
and 100 (exact k-th largest |w| by a search on its bit patterns, under `lax.cond`), with the schedule
that `total_steps` switches on, and in its refit phase; the same controller
with a global `lax.top_k` every step (how it was computed before, for reference); GMP
(mask update every 100 steps, global); the bisection controller (`nnz_controller_for`) on
integrated TL1 at interval 10. Ratios are to the proximal l1 step (controller rows), to
the proximal integrated TL1 step (its controller) or to the plain SGD step.

Usage: python -m benchmarks.sparsity_steps [--repeats 200] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from sparsejax import controller, pruning, transforms
from sparsejax.models import MLP


def top_k_controller(target_nnz: int, learning_rate: float, rate: float = 0.05):
  """The controller as computed before (global lax.top_k every step), for the reference row."""
  def init_fn(params):
    return jnp.asarray(np.log(1e-4), jnp.float32)

  def update_fn(updates, log_strength, params):
    leaves = [p + u for p, u in zip(jax.tree.leaves(params), jax.tree.leaves(updates))]
    kernels = [v for v in leaves if v.ndim >= 2]
    q = jax.lax.top_k(jnp.concatenate([jnp.abs(v).ravel() for v in kernels]), target_nnz + 1)[0][-1]
    log_strength = log_strength + rate * (jnp.log(q / learning_rate) - log_strength)
    tau = learning_rate * jnp.exp(log_strength)
    new = [jnp.where(v.ndim >= 2, v - jnp.clip(v, -tau, tau), v) if v.ndim >= 2 else v for v in leaves]
    return jax.tree.unflatten(jax.tree.structure(params),
                              [n - p for n, p in zip(new, jax.tree.leaves(params))]), log_strength

  return optax.GradientTransformation(init_fn, update_fn)


def step_runner(model, tx, x, y, steps_per_timing: int = 100):
  """A call that runs `steps_per_timing` consecutive jitted steps of `tx` (time it; divide by the steps).

  The optimizer state is carried from one call to the next, so work done every
  `interval` steps is amortised as in training.
  """
  params = model.init(jax.random.PRNGKey(0), x[:1])["params"]
  carry = [params, tx.init(params)]

  @jax.jit
  def step(params, opt_state, xb, yb):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xb), yb).mean()
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def run():
    for _ in range(steps_per_timing):
      carry[0], carry[1] = step(carry[0], carry[1], x, y)
    return carry[0]

  return run


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--batch-size", type=int, default=128)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((args.batch_size, 28, 28, 1), dtype=np.float32))
  y = jnp.asarray(rng.integers(0, 10, args.batch_size).astype(np.int32))
  model, lr, target = MLP((300, 100, 10)), 0.05, 13_310  # 95% sparsity of 266,200 kernel weights
  sgd = optax.sgd(lr, momentum=0.9)
  cases = {
      "sgd": sgd,
      "proximal l1": optax.chain(sgd, transforms.l1(1e-4, lr)),
      "nnz_controller interval 1": optax.chain(sgd, controller.nnz_controller("l1", target, lr, interval=1)),
      "nnz_controller interval 10": optax.chain(sgd, controller.nnz_controller("l1", target, lr, interval=10)),
      "nnz_controller interval 100": optax.chain(sgd, controller.nnz_controller("l1", target, lr, interval=100)),
      # total_steps switches on the schedule (rate 1 every 10 steps); the timings stay in its first phase
      "nnz_controller scheduled (total_steps)": optax.chain(sgd, controller.nnz_controller(
          "l1", target, lr, total_steps=10**7)),
      # a run of 10 steps: every timed step after the first 10 is in the refit phase
      "nnz_controller refit phase": optax.chain(sgd, controller.nnz_controller("l1", target, lr, total_steps=10)),
      # TL1 with a constant a, and with a tied to the kept weights (one more pass per update)
      "proximal tl1": optax.chain(sgd, transforms.proximal("tl1", 1e-4, lr, a=0.02)),
      "nnz_controller tl1 a=0.02 interval 10": optax.chain(sgd, controller.nnz_controller(
          "tl1", target, lr, interval=10, a=0.02)),
      "nnz_controller tl1 relative shape interval 10": optax.chain(sgd, controller.nnz_controller(
          "tl1", target, lr, interval=10)),
      "top_k controller every step (before)": optax.chain(sgd, top_k_controller(target, lr)),
      "GMP, mask every 100 steps": optax.chain(sgd, pruning.gradual_magnitude_pruning(0.95, 0, 10**6, 100)),
      "proximal integrated_tl1": optax.chain(sgd, transforms.integrated_tl1(1e-4, lr, a=0.02)),
      "nnz_controller_for integrated_tl1 interval 10": optax.chain(sgd, controller.nnz_controller_for(
          "integrated_tl1", target, lr, interval=10, a=0.02)),
  }
  steps_per_timing = 100
  calls = {name: (step_runner(model, tx, x, y, steps_per_timing),) for name, tx in cases.items()}
  times = {name: t / steps_per_timing for name, t in common.interleaved_times(calls, rounds=args.repeats).items()}
  rows = []
  for name, t in times.items():
    base = ("proximal integrated_tl1" if "integrated_tl1" in name and "controller" in name
            else "proximal tl1" if "tl1" in name and "controller" in name
            else "proximal l1" if "controller" in name else "sgd")
    rows.append({"step": name, "ms": 1e3 * t, "ratio": t / times[base], "relative_to": base})
  device = jax.devices()[0]
  print(f"device: {device.platform} ({device.device_kind}); MLP 784-300-100-10, batch {args.batch_size}\n")
  print("| step | ms | ratio | relative to |\n|---|---:|---:|---|")
  for r in rows:
    print(f"| {r['step']} | {r['ms']:.3f} | {r['ratio']:.3f} | {r['relative_to']} |")
  common.write_rows(args.out, f"sparsity_steps_{device.platform}", rows, device=device.device_kind)
  return rows


if __name__ == "__main__":
  main()
