"""Sparse-GAN step (eqs. (14)-(15) penalties on every sown activation) vs the standard DCGAN step, ratio in one run.

  python -m benchmarks.gan [--width 32] [--batch 64] [--repeats 30]

Both steps are the data-parallel `gan.make_gan_train_step` on one device
(jit(vmap)), on the same state and batch: one D update and one G update.
"""

from __future__ import annotations

import argparse
import os

import jax
import numpy as np
import optax

from benchmarks import common
from sparsejax import activity, gan
from sparsejax.models import dcgan
from sparsejax.runloop import AXIS, replicate


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()
  rows = []
  images = np.random.default_rng(0).uniform(size=(1, args.batch, 28, 28, 1)).astype(np.float32)
  k_penalty = lambda k: 3.0 * activity.normal_sparse_rbm(k) + 0.005 * activity.l_half_sum(k, eps=1e-8)  # noqa: E731
  penalty = activity.from_mean_activations(k_penalty, axis_name=AXIS)
  g, d = dcgan.dcgan_28(1, args.width, axis_name=AXIS)
  tx = optax.adam(2e-4, b1=0.5)
  state = replicate(gan.create_gan_state(g, d, tx, tx, (28, 28, 1), 64), jax.devices()[:1])
  times = {}
  for name, pen in (("standard", None), ("sparse", penalty)):
    step = jax.jit(jax.vmap(gan.make_gan_train_step(g, d, tx, tx, 64, d_penalty=pen, g_penalty=pen), axis_name=AXIS))
    times[name] = common.median_time(step, state, images, repeats=args.repeats)
  rows.append({"network": f"DCGAN 28x28 width {args.width}, batch {args.batch}", "device": jax.devices()[0].platform,
               "standard_ms": 1e3 * times["standard"], "sparse_ms": 1e3 * times["sparse"],
               "sparse_over_standard": times["sparse"] / times["standard"]})
  for row in rows:
    print(f"{row['network']} on {row['device']}: standard {row['standard_ms']:.2f} ms, "
          f"sparse {row['sparse_ms']:.2f} ms, ratio {row['sparse_over_standard']:.3f}")
  common.write_rows(args.out, "gan_step", rows, repeats=args.repeats)


if __name__ == "__main__":
  main()
