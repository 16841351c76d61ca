"""LSES-DNN: the paper's explicit back-propagation gradient vs jax.grad, time per gradient (ratio in one run).

  python -m benchmarks.lses_gradient [--features 2000] [--samples 160] [--repeats 50]
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from sparsejax import lses
from sparsejax.models import init_mlp


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--features", type=int, default=2000)
  parser.add_argument("--samples", type=int, default=160)
  parser.add_argument("--repeats", type=int, default=50)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()
  rows = []
  for hidden in ((64, 32), (512, 256)):
    _, params = init_mlp((*hidden, 2), args.features)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(0, 1, (args.samples, args.features)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 2, args.samples))
    kw = dict(alpha=0.01, beta=1e-3, eps_a=0.1, eps_w=0.05, activation="relu")
    auto = jax.jit(jax.grad(lambda p, x, y, kw=kw: lses.objective(p, x, y, **kw)))
    explicit = jax.jit(lambda p, x, y, kw=kw: lses.explicit_gradient(p, x, y, **kw))
    for a, e in zip(jax.tree.leaves(auto(params, x, y)), jax.tree.leaves(explicit(params, x, y))):
      np.testing.assert_allclose(np.asarray(e), np.asarray(a), rtol=2e-4, atol=1e-7)
    t_auto = common.median_time(auto, params, x, y, repeats=args.repeats)
    t_explicit = common.median_time(explicit, params, x, y, repeats=args.repeats)
    net = f"{args.features}-{'-'.join(map(str, hidden))}-2, batch {args.samples}"
    rows.append({"network": net, "autodiff_ms": 1e3 * t_auto, "explicit_ms": 1e3 * t_explicit,
                 "explicit_over_autodiff": t_explicit / t_auto})
  print(f"device: {jax.devices()[0].platform}; median of {args.repeats}\n")
  print("| network | jax.grad (ms) | explicit formula (ms) | explicit / autodiff |\n|---|---:|---:|---:|")
  for r in rows:
    print(f"| {r['network']} | {r['autodiff_ms']:.3f} | {r['explicit_ms']:.3f} | {r['explicit_over_autodiff']:.2f}x |")
  common.write_rows(args.out, f"lses_gradient_{jax.devices()[0].platform}", rows)


if __name__ == "__main__":
  main()
