"""Compaction speed-up vs FLOPs removed: inference of the compacted computation vs the sparse network.

For an MLP 784-300-100-10, LeNet-5 and a ResNet (stages (1, 1, 1), widths 16/32/64,
BatchNorm), a fraction f of the hidden units (MLP, LeNet) or of the channels inside
every residual block (`resnet_1_1_1`) is made dead by zeroing their outgoing weights,
as a group penalty would. `resnet_bn_slimmed` zeroes instead f of the scales of every
BatchNorm (shifts kept), as network slimming does: each writer of a residual stream
then loses different channels, so the stream keeps their union. The network is
compacted (`compaction.compact`, which for the ResNets is the jaxpr path
`compact_any`, with `--channel-multiple`) and inference on one batch is timed for
both, in one run on one machine (fastest of `--repeats` rounds, the two calls
interleaved).

  python -m benchmarks.compaction [--batch 256] [--repeats 30] [--fractions 0 0.5 0.75 0.9] [--channel-multiple 8]

Writes benchmarks/results/compaction_<platform>.json/.csv.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from sparsejax import compaction, metrics
from sparsejax.models import MLP, ResNet, lenet5


def _kill(params, fraction, rng, layers):
  """Zero the outgoing weights of `fraction` of the units of each (producer, consumer) pair in `layers`."""
  params = jax.tree.map(lambda a: np.array(a), params)
  for producer_units, consumer in layers:
    kernel = consumer(params)
    dead = rng.choice(producer_units, int(round(fraction * producer_units)), replace=False)
    kernel[..., dead, :] = 0.0
  return params


def cases(fraction: float, seed: int = 0):
  rng = np.random.default_rng(seed)
  mlp = MLP((300, 100, 10))
  p = mlp.init(jax.random.PRNGKey(0), jnp.zeros((1, 784)))["params"]
  p = _kill(p, fraction, rng, [(300, lambda q: q["Dense_1"]["kernel"]), (100, lambda q: q["Dense_2"]["kernel"])])
  yield "mlp_784_300_100_10", mlp, {"params": p}, (784,)
  lenet = lenet5()
  p = lenet.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))["params"]
  p = _kill(p, fraction, rng, [(6, lambda q: q["Conv_1"]["kernel"]), (120, lambda q: q["Dense_1"]["kernel"]),
                               (84, lambda q: q["Dense_2"]["kernel"])])
  yield "lenet5", lenet, {"params": p}, (28, 28, 1)
  resnet = ResNet((1, 1, 1), (16, 32, 64), 10)
  v = resnet.init(jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
  blocks = [(w, lambda q, b=b: q[b]["conv2"]["kernel"])
            for b, w in (("stage0_block0", 16), ("stage1_block0", 32), ("stage2_block0", 64))]
  p = _kill(v["params"], fraction, rng, blocks)
  yield "resnet_1_1_1", resnet, {"params": p, "batch_stats": v["batch_stats"]}, (28, 28, 1)
  yield "resnet_bn_slimmed", resnet, {"params": _slim(v["params"], fraction, rng),
                                      "batch_stats": v["batch_stats"]}, (28, 28, 1)


def _slim(params, fraction, rng):
  """Zero `fraction` of the scales of every BatchNorm (its shift becomes a constant channel)."""
  params = jax.tree.map(lambda a: np.array(a), params)

  def walk(tree):
    for value in tree.values():
      if isinstance(value, dict) and "scale" in value:
        value["scale"][rng.choice(value["scale"].size, int(round(fraction * value["scale"].size)), replace=False)] = 0
        value["bias"][:] = rng.normal(size=value["bias"].size) * 0.1
      elif isinstance(value, dict):
        walk(value)
  walk(params)
  return params


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--fractions", type=float, nargs="+", default=[0.0, 0.5, 0.75, 0.9])
  parser.add_argument("--channel-multiple", type=int, default=8)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  rows = []
  for fraction in args.fractions:
    for name, model, variables, shape in cases(fraction):
      x = np.random.default_rng(1).normal(size=(args.batch, *shape)).astype(np.float32)
      report = metrics.report(model, variables, shape)
      dense = jax.jit(lambda v, b, m=model: m.apply(v, b))
      small = compaction.compact(model, variables if name.startswith("resnet") else variables["params"], shape,
                                 channel_multiple=args.channel_multiple)
      run_small, small_args = small.apply, (small.params, x)
      difference = float(np.max(np.abs(np.asarray(run_small(*small_args)) - np.asarray(dense(variables, x)))))
      times = common.interleaved_times({"sparse": (dense, variables, x), "compact": (run_small, *small_args)},
                                       args.repeats)
      t_dense, t_small = times["sparse"], times["compact"]
      rows.append({"model": name, "dead_fraction": fraction, "flops_fraction": round(report["flops_fraction"], 4),
                   "ms_sparse_network": round(1e3 * t_dense, 3), "ms_compacted": round(1e3 * t_small, 3),
                   "speedup": round(t_dense / t_small, 3), "flops_ratio": round(1 / max(report["flops_fraction"], 1e-9), 3),
                   "max_output_difference": difference})
      print(rows[-1], flush=True)
  platform = jax.devices()[0].platform
  common.write_rows(args.out, f"compaction_{platform}", rows, batch=args.batch, repeats=args.repeats,
                    channel_multiple=args.channel_multiple, device=str(jax.devices()[0]))


if __name__ == "__main__":
  main()
