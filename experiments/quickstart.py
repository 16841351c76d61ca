"""Quickstart: an MLP on scikit-learn's digits with the integrated TL1 regulariser.

Proximal SGD (`optax.sgd` chained with `sparsejax.transforms.integrated_tl1`)
learns a network whose weights are exactly zero for most connections and whose
hidden neurons are removed whole, with no pruning step.

  python -m experiments.quickstart [--epochs 150] [--strength 3e-3] [--workdir results/quickstart]

Prints accuracy, sparsity and neurons removed, and writes results.json in the
working directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from tqdm import tqdm

from experiments import common
from sparsejax import transforms
from sparsejax.models import init_mlp


@dataclasses.dataclass
class Config:
  hidden: tuple[int, ...] = (128, 64)
  epochs: int = 150
  batch_size: int = 32
  learning_rate: float = 0.1
  strength: float = 3e-3   # lambda
  a: float = 0.01          # TL1 shape (the paper's reference code value)
  m: float = 0.2           # lowest layer balance mu_1
  seed: int = 0


def load_digits_split(seed: int):
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  return train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)


def sparsity_report(params) -> dict:
  """Fraction of zero weights and neurons removed per hidden layer (MLP kernels)."""
  kernels = [params[name]["kernel"] for name in sorted(params, key=lambda n: int(n.split("_")[-1]))]
  total = sum(k.size for k in kernels)
  nonzero = sum(int(jnp.count_nonzero(k)) for k in kernels)
  removed = []
  for incoming, outgoing in zip(kernels[:-1], kernels[1:]):
    dead_in = np.all(np.asarray(incoming) == 0, axis=0)
    dead_out = np.all(np.asarray(outgoing) == 0, axis=1)
    removed.append(int(np.sum(dead_in | dead_out)))
  widths = [k.shape[1] for k in kernels[:-1]]
  return {"weights_total": total, "weights_nonzero": nonzero, "sparsity": 1 - nonzero / total,
          "neurons_removed": removed, "hidden_widths": widths}


def train_and_evaluate(config: Config, workdir: str) -> dict:
  x_train, x_test, y_train, y_test = load_digits_split(config.seed)
  model, params = init_mlp((*config.hidden, 10), x_train.shape[1], seed=config.seed)
  tx = optax.chain(optax.sgd(config.learning_rate),
                   transforms.integrated_tl1(config.strength, config.learning_rate, a=config.a, m=config.m))
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, x, y):
    def loss_fn(p):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(model.apply({"params": params}, x), -1) == y)

  rng = np.random.default_rng(config.seed)
  start = time.time()
  for _ in (bar := tqdm(range(config.epochs), desc="epochs")):
    order = rng.permutation(len(x_train))
    for i in range(0, len(order), config.batch_size):
      idx = order[i:i + config.batch_size]
      params, opt_state, loss = train_step(params, opt_state, x_train[idx], y_train[idx])
    bar.set_postfix(loss=f"{float(loss):.3f}", sparsity=f"{sparsity_report(params)['sparsity']:.2f}")
  results = {"config": dataclasses.asdict(config),
             "test_accuracy": float(accuracy(params, x_test, y_test)),
             "train_accuracy": float(accuracy(params, x_train, y_train)),
             "wall_time_s": time.time() - start, **sparsity_report(params)}
  common.write_json(os.path.join(workdir, "results.json"), results)
  return results


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  common.add_config_flags(parser, Config)
  parser.add_argument("--workdir", default=os.path.join("results", "quickstart"))
  args = parser.parse_args(argv)
  r = train_and_evaluate(common.config_from_args(Config, args), args.workdir)
  print(f"test accuracy {r['test_accuracy']:.4f} (train {r['train_accuracy']:.4f})")
  print(f"nonzero weights {r['weights_nonzero']}/{r['weights_total']} "
        f"({100 * (1 - r['sparsity']):.1f}% of parameters used, {100 * r['sparsity']:.1f}% exact zeros)")
  print("neurons removed per hidden layer: " +
        ", ".join(f"{n}/{w}" for n, w in zip(r["neurons_removed"], r["hidden_widths"])))
  print(f"wall time {r['wall_time_s']:.1f} s; results in {os.path.join(args.workdir, 'results.json')}")
  return r


if __name__ == "__main__":
  main()
