"""Quickstart: an MLP on scikit-learn's digits with the integrated TL1 regulariser.

Proximal SGD (`optax.sgd` chained with `sparsejax.transforms.integrated_tl1`)
learns a network whose weights are exactly zero for most connections and whose
hidden neurons are removed whole, with no pruning step. The sparse network is
then physically compacted; its outputs are unchanged.

  python -m experiments.quickstart [--epochs 150] [--strength 5e-3] [--workdir results/quickstart]

Writes, in the working directory: results.json, log.jsonl (one line per epoch),
checkpoints/, training_curves.png, sparsity_per_layer.png, first_layer.png.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
import optax

from experiments import common
from sparsejax import compaction, data, metrics, plotting, train, transforms
from sparsejax.models import MLP


@dataclasses.dataclass
class Config:
  hidden: tuple[int, ...] = (128, 64)
  epochs: int = 150
  batch_size: int = 32
  learning_rate: float = 0.1  # peak of a cosine decay
  strength: float = 5e-3   # lambda
  a: float = 0.01          # TL1 shape (the paper's reference code value)
  m: float = 0.2           # lowest layer balance mu_1
  seed: int = 0
  num_devices: int = 1     # digits is tiny: one device is fastest


def train_and_evaluate(config: Config, workdir: str, progress: bool | None = None) -> dict:
  x_train, y_train = data.load("digits", "train")
  x_test, y_test = data.load("digits", "test")
  model = MLP((*config.hidden, 10))
  steps = config.epochs * -(-len(x_train) // config.batch_size)
  # Cosine decay of the step size; the proximal step uses the same schedule.
  learning_rate = optax.cosine_decay_schedule(config.learning_rate, steps, alpha=0.05)
  tx = optax.chain(optax.sgd(learning_rate),
                   transforms.integrated_tl1(config.strength, learning_rate, a=config.a, m=config.m))
  train_config = train.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                   num_devices=config.num_devices, progress=progress)
  start = time.time()
  result = train.fit(model, tx, (x_train, y_train), (x_test, y_test), train_config, workdir,
                       overwrite=True)
  wall = time.time() - start  # training only (the whole command also imports and compiles)
  params = result.state.params
  shape = x_train.shape[1:]
  report = metrics.report(model, params, shape)

  small = compaction.compact(model, params, shape)
  dense_out = model.apply({"params": params}, x_test)
  small_out = small(x_test)
  small.save(os.path.join(workdir, "compact_model.npz"))  # compaction.load(path) in any process
  results = {"config": dataclasses.asdict(config), "wall_time_s": wall,
             "test_accuracy": result.history[-1]["eval_accuracy"],
             "train_accuracy": result.history[-1]["train_accuracy"], **report,
             "compact_hidden_widths": list(small.module.features[:-1]),
             "compact_max_abs_output_difference": float(np.max(np.abs(np.asarray(dense_out - small_out))))}
  common.write_json(os.path.join(workdir, "results.json"), results)
  plotting.training_curves(result.history, os.path.join(workdir, "training_curves.png"),
                           title="integrated TL1 MLP on digits")
  plotting.sparsity_per_layer(report, os.path.join(workdir, "sparsity_per_layer.png"))
  plotting.first_layer_filters(jax.device_get(params["Dense_0"]["kernel"]), os.path.join(workdir, "first_layer.png"),
                               image_shape=(8, 8), title="first-layer weights (blank = removed)")
  return results



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--epochs", "40"]

def main(argv=None):
  config, workdir = common.parse_config(Config, __doc__, os.path.join("results", "quickstart"), argv)
  r = train_and_evaluate(config, workdir)
  hidden = [k for k in r["neurons_total"]]
  print(f"test accuracy {r['test_accuracy']:.4f} (train {r['train_accuracy']:.4f})")
  print(f"nonzero weights {r['weights_nonzero']}/{r['weights_total']} ({100 * r['weight_sparsity']:.1f}% exact zeros); "
        f"{100 * r['params_fraction']:.1f}% of parameters and {100 * r['flops_fraction']:.1f}% of FLOPs used")
  print("neurons removed: " + ", ".join(f"{k} {r['neurons_removed'][k]}/{r['neurons_total'][k]}" for k in hidden))
  print(f"compacted hidden widths {r['compact_hidden_widths']} (max output difference "
        f"{r['compact_max_abs_output_difference']:.1e})")
  print(f"training {r['wall_time_s']:.1f} s; results, plots and the compact model (compact_model.npz) in {workdir}/")
  return r


if __name__ == "__main__":
  main()
