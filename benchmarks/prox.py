"""Prox speed as ratios measured in one run.

1. Every elementwise prox on 2^24 float32 elements under jit, relative to a plain
   elementwise copy `x * c` of the same array (fastest of `--repeats` interleaved rounds:
   `benchmarks.common.interleaved_times`).
2. sparsejax vs jaxopt where they overlap (lasso, elastic net, row-group lasso).
3. One prox-SGD training step vs one plain SGD step for an MLP 784-300-100-10,
   batch 128.

Usage:
  python -m benchmarks.prox [--log2-size 24] [--repeats 9] [--out benchmarks/results]

Writes prox_<platform>.json and .csv beside a printed Markdown table.
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import common
from sparsejax import masking, prox, registry, transforms
from sparsejax.models import init_mlp

# (name, tau, shape params, regime label): the regimes where the cost differs.
ELEMENTWISE = [
    ("l1", 0.3, {}, ""),
    ("l0", 0.3, {}, ""),
    ("elastic_net", 0.3, {"l2": 0.5}, ""),
    ("tl1", 0.2, {"a": 1.0}, "sub-critical"),
    ("tl1", 0.5, {"a": 0.5}, "super-critical"),
    ("log_sum", 0.01, {"eps": 0.1}, "tau <= eps^2"),
    ("log_sum", 0.05, {"eps": 0.1}, "tau > eps^2"),
    ("l_half", 0.3, {}, ""),
    ("l_two_thirds", 0.3, {}, ""),
    ("scad", 1.0, {"lam": 0.5, "a": 3.7}, "convex"),
    ("scad", 3.0, {"lam": 0.5, "a": 3.7}, "non-convex"),
    ("mcp", 1.0, {"lam": 0.5, "gamma": 3.0}, ""),
    ("capped_l1", 1.0, {"lam": 0.5, "theta": 1.0}, ""),
]
# Every other registered elementwise penalty (e.g. one a user registered), at its examples.
ELEMENTWISE += [(name, 0.3, kw, "") for name in registry.names(grouped=False)
                if name not in {row[0] for row in ELEMENTWISE} for kw in registry.get(name).examples]


def bench_elementwise(x, repeats):
  calls = {("copy (x*c)", ""): (jax.jit(lambda v: v * 2.0), x)}
  for name, tau, kw, regime in ELEMENTWISE:
    calls[(name, regime)] = (jax.jit(functools.partial(prox.get(name), tau=tau, **kw)), x)
  times = common.interleaved_times(calls, rounds=repeats)
  t_copy = times[("copy (x*c)", "")]
  return [{"section": "elementwise", "name": name, "regime": regime, "ms": 1e3 * t, "ratio": t / t_copy,
           "baseline": "copy"} for (name, regime), t in times.items()]


def bench_jaxopt(x, repeats):
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      from jaxopt import prox as jaxopt_prox  # deprecated upstream, still the reference
  except ImportError:
    print("jaxopt not installed (pip install jaxopt): skipping the jaxopt comparison.")
    return []
  side = int(np.sqrt(x.size))
  matrix = x[: side * side].reshape(side, side)
  cases = [
      ("l1 vs prox_lasso", x, lambda v: prox.l1(v, 0.3), lambda v: jaxopt_prox.prox_lasso(v, 0.3)),
      ("elastic_net vs prox_elastic_net", x, lambda v: prox.elastic_net(v, 0.3, l2=0.5),
       lambda v: jaxopt_prox.prox_elastic_net(v, (0.3, 0.5))),
      ("group_lasso (rows) vs vmap(prox_group_lasso)", matrix, lambda m: prox.group_lasso(m, 0.3),
       jax.vmap(lambda r: jaxopt_prox.prox_group_lasso(r, 0.3))),
  ]
  rows = []
  for label, arr, ours, theirs in cases:
    ours_j, theirs_j = jax.jit(ours), jax.jit(theirs)
    np.testing.assert_allclose(np.asarray(ours_j(arr)), np.asarray(theirs_j(arr)), rtol=2e-5, atol=2e-6)
    times = common.interleaved_times({"ours": (ours_j, arr), "theirs": (theirs_j, arr)}, rounds=repeats)
    t_ours, t_theirs = times["ours"], times["theirs"]
    rows.append({"section": "jaxopt", "name": label, "regime": "", "ms": 1e3 * t_ours,
                 "ratio": t_ours / t_theirs, "baseline": f"jaxopt {1e3 * t_theirs:.2f} ms"})
  return rows


def bench_training_step(repeats, steps=100, batch=128):
  model, params = init_mlp((300, 100, 10), 784, seed=0)
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(0, 1, (batch, 784)), jnp.float32)
  y = jnp.asarray(rng.integers(0, 10, batch))
  lr = 0.05

  def loss_fn(p):
    logits = model.apply({"params": p}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  def make_steps(tx):
    @jax.jit
    def run(p, s):
      def body(_, carry):
        p, s = carry
        updates, s = tx.update(jax.grad(loss_fn)(p), s, p)
        return optax.apply_updates(p, updates), s
      return jax.lax.fori_loop(0, steps, body, (p, s))
    return run

  txs = {
      "sgd": optax.sgd(lr),
      "sgd + l1": optax.chain(optax.sgd(lr), transforms.l1(1e-4, lr)),
      "sgd + tl1": optax.chain(optax.sgd(lr), transforms.proximal("tl1", 1e-4, lr, masking.weights_only, a=1.0)),
      "sgd + integrated_tl1": optax.chain(optax.sgd(lr), transforms.integrated_tl1(1e-4, lr, a=0.01)),
      "sgd + cges": optax.chain(optax.sgd(lr), transforms.cges(1e-4, lr)),
  }
  calls = {name: (make_steps(tx), params, tx.init(params)) for name, tx in txs.items()}
  times = {name: t / steps for name, t in common.interleaved_times(calls, rounds=repeats).items()}
  return [{"section": "train step (MLP 784-300-100-10, batch 128)", "name": name, "regime": "",
           "ms": 1e3 * t, "ratio": t / times["sgd"], "baseline": "sgd step"} for name, t in times.items()]


def main():
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--log2-size", type=int, default=24)
  parser.add_argument("--repeats", type=int, default=9)
  parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
  args = parser.parse_args()

  x = jnp.asarray(np.random.default_rng(0).normal(0, 1, 2**args.log2_size).astype(np.float32))
  rows = bench_elementwise(x, args.repeats) + bench_jaxopt(x, args.repeats) + bench_training_step(args.repeats)

  device = jax.devices()[0]
  header = (f"device: {device.platform} ({device.device_kind}), {jax.local_device_count()} device(s); "
            f"jax {jax.__version__}; array 2^{args.log2_size} float32; fastest of {args.repeats} interleaved rounds")
  print(header)
  section = None
  for row in rows:
    if row["section"] != section:
      section = row["section"]
      print(f"\n### {section}\n\n| op | regime | ms | ratio | vs |\n|---|---|---:|---:|---|")
    print(f"| {row['name']} | {row['regime']} | {row['ms']:.2f} | {row['ratio']:.2f}x | {row['baseline']} |")

  common.write_rows(args.out, f"prox_{device.platform}", rows, header=header,
                    machine=platform.processor() or platform.machine())


if __name__ == "__main__":
  main()
