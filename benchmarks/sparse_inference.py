"""Inference speed of unstructured vs structured sparsity on this machine: what to expect from a sparse model.

One Dense layer y = x W (W: `--size` x `--size`, float32) at each sparsity s, timed
round-robin in one run (`common.interleaved_times`), as ratios to the dense matmul:

- ``dense_zeros``: the same dense matmul on a W with a fraction s of random zeros
  (what a sparse model trained by any penalty costs as it is: zeros are multiplied);
- ``bcoo``: `jax.experimental.sparse.BCOO` holding only the nonzeros (unstructured
  sparsity executed sparsely);
- ``structured``: the dense matmul on the W of a model with the same number of nonzeros
  in whole units, i.e. W[:, :k] with k = (1 - s) n columns (what `compaction.compact` gives
  when a group penalty removes whole units).

Usage: ``python -m benchmarks.sparse_inference [--size 2048] [--batches 1 128] [--repeats 30]``;
writes benchmarks/results/sparse_inference_<backend>.json/.csv.
"""

from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import sparse

from benchmarks import common


def main(argv: list[str] | None = None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", type=int, default=2048)
  parser.add_argument("--batches", type=int, nargs="+", default=[1, 128])
  parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98, 0.99])
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args(argv)
  rng = np.random.default_rng(0)
  n = args.size
  dense_matmul = jax.jit(lambda x, w: x @ w)
  sparse_matmul = jax.jit(lambda x, w: x @ w)  # BCOO operands dispatch to a sparse dot
  rows = []
  for batch in args.batches:
    x = jnp.asarray(rng.normal(size=(batch, n)), jnp.float32)
    w = rng.normal(size=(n, n)).astype(np.float32)
    for s in args.sparsities:
      w_zeros = np.where(rng.random((n, n)) < s, 0.0, w).astype(np.float32)
      w_bcoo = sparse.BCOO.fromdense(jnp.asarray(w_zeros))
      kept = max(1, int(round((1 - s) * n)))
      w_small = jnp.asarray(w[:, :kept])
      np.testing.assert_allclose(np.asarray(sparse_matmul(x, w_bcoo)), np.asarray(dense_matmul(x, jnp.asarray(w_zeros))),
                                 rtol=2e-3, atol=2e-3)
      times = common.interleaved_times({"dense": (dense_matmul, x, jnp.asarray(w)),
                                        "dense_zeros": (dense_matmul, x, jnp.asarray(w_zeros)),
                                        "bcoo": (sparse_matmul, x, w_bcoo),
                                        "structured": (dense_matmul, x, w_small)}, args.repeats)
      row = {"batch": batch, "size": n, "sparsity": s, "ms_dense": round(1e3 * times["dense"], 4),
             **{f"{k}_vs_dense": round(times[k] / times["dense"], 3) for k in ("dense_zeros", "bcoo", "structured")}}
      rows.append(row)
      print(row)
  common.write_rows(args.out, f"sparse_inference_{jax.default_backend()}", rows, device=str(jax.devices()[0]),
                    jax_version=jax.__version__)
  return rows


if __name__ == "__main__":
  main()
