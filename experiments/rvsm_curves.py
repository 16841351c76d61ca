"""RVSM with l0 / TL1 on a CNN that tells shaky from regular handwriting (Xue & Xin 2019).

The paper's claim: RVSM with l0 on the FC layer of a 3-conv + max-pool + FC CNN
gives > 99% test accuracy with > 86% of the FC weights exactly zero; TL1 is
comparable. Data: `sparsejax.data.shaky_curves` (regular vs tremor/micrographia
pen strokes, 6,000 train / 2,000 test), plus a real-data check on MNIST or
Fashion-MNIST.

Methods (FC layer regularised, conv layers dense, SGD with momentum 0.9):
  * plain: no regulariser;
  * rvsm_l0 / rvsm_tl1: `rvsm.rvsm` (beta (w - u) added to the gradient,
    u = prox_{lambda/beta}(w)); accuracy and sparsity are measured on u;
  * prox_l0: proximal SGD with hard thresholding (`transforms.proximal(prox.l0)`).

  python -m experiments.rvsm_curves [--dataset shaky_curves] [--epochs 30] [--workdir results/rvsm_curves]

Writes <workdir>/<dataset>/: results.json, table.md, example_images.png, training_curves_<method>.png.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np
import optax

from experiments import common
from sparsejax import data, metrics, plotting, prox, rvsm, train, transforms
from sparsejax.models import ConvNet, ConvSpec

METHODS = ("plain", "rvsm_l0", "rvsm_tl1", "prox_l0")


@dataclasses.dataclass
class Config:
  dataset: str = "shaky_curves"
  methods: tuple[str, ...] = METHODS
  epochs: int = 30
  batch_size: int = 64
  learning_rate: float = 0.05  # peak of a cosine decay
  strength: float = 1e-4    # lambda
  beta: float = 0.1         # RVSM splitting weight: l0 threshold sqrt(2 lambda/beta) = 0.045
  a: float = 0.01           # TL1 shape: super-critical here, threshold 0.040, close to l0's
  prox_strength: float = 0.02  # proximal l0 baseline: initial threshold sqrt(2 lr lambda) = 0.045 too
  width: int = 8
  seed: int = 0
  max_train_examples: int = 0


def rvsm_paper_cnn(num_classes: int, width: int) -> ConvNet:
  """3 conv layers (3x3, widths w, 2w, 4w; max-pool after the first two) + one FC layer.

  On 28x28 inputs the FC layer maps 7*7*4w features to the classes (35% of the
  weights for 2 classes at w = 8, 69% for 10 classes).
  """
  return ConvNet((ConvSpec(width, 3, "SAME", 2), ConvSpec(2 * width, 3, "SAME", 2), ConvSpec(4 * width, 3, "SAME", 1)),
                 (num_classes,))


def fc_only(params):
  return {k: {"kernel": k.startswith("Dense"), "bias": False} for k in params}


def make_tx(method: str, config: Config, schedule):
  sgd = optax.sgd(schedule, momentum=0.9)
  if method == "plain":
    return sgd
  if method == "rvsm_l0":
    return optax.chain(rvsm.rvsm(prox.l0, config.strength, config.beta, mask=fc_only), sgd)
  if method == "rvsm_tl1":
    return optax.chain(rvsm.rvsm(prox.tl1, config.strength, config.beta, mask=fc_only, a=config.a), sgd)
  if method == "prox_l0":
    return optax.chain(sgd, transforms.proximal(prox.l0, config.prox_strength, schedule, mask=fc_only))
  raise ValueError(f"unknown method {method!r}; choose from {list(METHODS)}.")


def train_and_evaluate(config: Config, workdir: str) -> dict:
  out_dir = os.path.join(workdir, config.dataset)
  os.makedirs(out_dir, exist_ok=True)
  (x, y), (xt, yt) = data.load(config.dataset, "train"), data.load(config.dataset, "test")
  if config.max_train_examples:
    x, y = x[:config.max_train_examples], y[:config.max_train_examples]
  _example_grid(x, y, os.path.join(out_dir, "example_images.png"), config.dataset)
  num_classes = int(y.max()) + 1
  model = rvsm_paper_cnn(num_classes, config.width)
  steps = config.epochs * -(-len(x) // config.batch_size)
  schedule = optax.cosine_decay_schedule(config.learning_rate, steps, alpha=0.05)
  results = {"config": dataclasses.asdict(config), "methods": {}}
  for method in config.methods:
    start = time.time()
    tx = make_tx(method, config, schedule)
    cfg = train.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, checkpoint=False,
                            progress=False, num_devices=1)
    fit = train.fit(model, tx, (x, y), (xt, yt), cfg, os.path.join(out_dir, "runs", method), report_fn=lambda p: {},
                    overwrite=True)
    params = fit.state.params
    if method.startswith("rvsm"):
      params = rvsm.sparse_params(fit.state.opt_state, params)
    fc = np.asarray(params["Dense_0"]["kernel"])
    report = metrics.report(model, params, x.shape[1:])
    results["methods"][method] = {
        "test_accuracy": train.evaluate(model, params, xt, yt)["accuracy"],
        "fc_zero_fraction": float(np.mean(fc == 0)), "fc_weights": int(fc.size),
        "fc_share_of_weights": float(fc.size / report["weights_total"]),
        "params_fraction": report["params_fraction"], "flops_fraction": report["flops_fraction"],
        "wall_time_s": time.time() - start}
    plotting.training_curves(fit.history, os.path.join(out_dir, f"training_curves_{method}.png"),
                             title=f"{config.dataset}: {method} (dense w during training)")
  _write_table(config, results, out_dir)
  common.write_json(os.path.join(out_dir, "results.json"), results)
  return results


def _example_grid(x, y, path, dataset):
  fig, axes = plotting.new_figure(3, 8, figsize=(10, 4.2))
  names = {0: "regular", 1: "shaky"} if dataset == "shaky_curves" else {}
  for i, ax in enumerate(axes.ravel()):
    ax.imshow(x[i, :, :, 0], cmap="gray_r", vmin=0, vmax=1)
    ax.set_title(names.get(int(y[i]), str(int(y[i]))), fontsize=8)
    ax.axis("off")
  plotting.save_figure(fig, path)


def _write_table(config, results, out_dir):
  lines = [f"### {config.dataset} ({config.epochs} epochs, seed {config.seed})", "",
           "| method | test accuracy (%) | FC weights exactly zero (%) | parameters used (%) | time (s) |",
           "|---|---:|---:|---:|---:|"]
  for method, r in results["methods"].items():
    lines.append(f"| {method} | {100 * r['test_accuracy']:.2f} | {100 * r['fc_zero_fraction']:.1f} "
                 f"| {100 * r['params_fraction']:.1f} | {r['wall_time_s']:.0f} |")
  common.write_lines(os.path.join(out_dir, "table.md"), lines)



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--epochs", "2", "--max-train-examples", "1500", "--methods", "plain", "rvsm_l0", "rvsm_tl1"]

def main(argv=None):
  return common.run_experiment(Config, __doc__, "rvsm_curves", train_and_evaluate, lambda config: config.dataset, argv=argv)


if __name__ == "__main__":
  main()
