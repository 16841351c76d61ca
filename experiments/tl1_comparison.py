"""Integrated transformed-l1 vs L1, sparse group lasso and CGES (Ma et al. 2019).

For each dataset and regulariser (none, l1, sgl, cges, tl1 only, group only,
integrated TL1) this trains with proximal SGD (MNIST, Fashion-MNIST, PENDIGITS)
or proximal Adam (others), ReLU, softmax cross-entropy, biases unregularised,
the mu_l layer schedule, and reports accuracy, % parameters used, % FLOPs and
neurons removed per layer, mean +- std over seeds.

Protocol:
  1. "lambda_grid": for every regulariser, train on 85% of the training set for
     each lambda of the grid and evaluate on the held-out 15%; the chosen lambda
     is the sparsest (fewest parameters used) within 1 accuracy point of the
     best validation accuracy of that regulariser (`experiments.grid`). The grid
     also gives accuracy vs % FLOPs / % parameters (the paper's Fig. 4).
  2. "main": train on the full training set with the chosen lambda for every
     seed and evaluate on the test set (Tables 1-2, accuracy vs iteration as in
     Fig. 5, first-layer filters as in Fig. 6, and on DIGITS the
     neurons/connections table, Table 3).
  3. "a_sweep": integrated TL1 on the dataset for a grid of a (Fig. 7).

  python -m experiments.tl1_comparison --dataset digits [--studies lambda_grid main a_sweep]
      [--seeds 0 1 2] [--epochs N] [--workdir results/tl1_comparison]

Writes <workdir>/<dataset>/: results.json, table.md, lambda_grid.json,
a_sweep.json and the figures (PNG).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import numpy as np
import optax
from tqdm import tqdm

from experiments import common, grid
from sparsejax import data, masking, metrics, plotting, train, transforms
from sparsejax.models import MLP, ConvNet, ConvSpec, cnn_2conv_mnist

REGULARIZERS = ("none", "l1", "sgl", "cges", "tl1", "group", "integrated_tl1")
LABELS = {"none": "no regulariser", "l1": "L1", "sgl": "sparse group lasso", "cges": "CGES",
          "tl1": "TL1 only", "group": "group lasso only", "integrated_tl1": "integrated TL1"}


@dataclasses.dataclass(frozen=True)
class DatasetSetup:
  """Model, optimizer and schedule per dataset (the paper: SGD for MNIST/Fashion/PENDIGITS, Adam otherwise)."""
  model: str
  optimizer: str
  learning_rate: float
  epochs: int
  batch_size: int
  lambda_grid: tuple[float, ...]


SETUPS = {
    "digits": DatasetSetup("conv1_fc2", "adam", 3e-3, 60, 32, (3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)),
    "pendigits": DatasetSetup("mlp_100_50", "sgd", 0.1, 40, 32, (3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)),
    "mnist": DatasetSetup("mlp_300_100", "sgd", 0.1, 15, 100, (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
    "fashion_mnist": DatasetSetup("mlp_300_100", "sgd", 0.1, 15, 100, (3e-5, 1e-4, 3e-4, 1e-3, 3e-3)),
    "sdd": DatasetSetup("mlp_100_50", "adam", 1e-3, 30, 100, (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
    "cifar10": DatasetSetup("conv3_fc2", "adam", 1e-3, 20, 100, (1e-5, 3e-5, 1e-4, 3e-4, 1e-3)),
}


def build_model(name: str, num_classes: int):
  if name == "conv1_fc2":  # DIGITS a-study network: 1 conv + 2 FC
    return ConvNet((ConvSpec(16, 3, "SAME", 2),), (64, num_classes))
  if name == "conv3_fc2":
    return ConvNet((ConvSpec(32), ConvSpec(64), ConvSpec(64)), (256, num_classes))
  if name == "cnn_2conv":  # the CGES / integrated-TL1 MNIST network (heavy on CPU)
    return cnn_2conv_mnist(num_classes)
  if name.startswith("mlp_"):
    return MLP((*(int(w) for w in name.split("_")[1:]), num_classes))
  raise ValueError(f"unknown model {name!r}.")


def make_tx(regularizer: str, strength: float, schedule, optimizer: str, a: float, m: float):
  """The optax chain of one regulariser (proximal step after SGD or Adam)."""
  base = optax.sgd(schedule) if optimizer == "sgd" else optax.adam(schedule)
  mask = masking.weights_only
  steps = {
      "none": None,
      "l1": lambda: transforms.l1(strength, schedule),
      "sgl": lambda: transforms.sparse_group_lasso(strength, strength, schedule),
      "cges": lambda: transforms.cges(strength, schedule, m=m),
      "tl1": lambda: transforms.proximal("tl1", strength, schedule, mask=mask, a=a),
      "group": lambda: transforms.proximal("group_lasso", strength, schedule, mask=mask),
      "integrated_tl1": lambda: transforms.integrated_tl1(strength, schedule, a=a, m=m),
  }
  if regularizer not in steps:
    raise ValueError(f"unknown regularizer {regularizer!r}; choose from {list(REGULARIZERS)}.")
  return base if steps[regularizer] is None else optax.chain(base, steps[regularizer]())


@dataclasses.dataclass
class Config:
  dataset: str = "digits"
  regularizers: tuple[str, ...] = REGULARIZERS
  studies: tuple[str, ...] = ("lambda_grid", "main", "a_sweep")
  seeds: tuple[int, ...] = (0, 1, 2)
  epochs: int = 0               # 0: the dataset's default
  a: float = 0.01               # TL1 shape (reference code: 0.01)
  m: float = 0.2                # lowest layer balance
  a_grid: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0, 10.0)
  lambda_scale: float = 1.0     # multiplies the dataset's lambda grid
  model: str = ""               # "": the dataset's default
  max_train_examples: int = 0   # 0: all (small configs subsample)
  num_devices: int = 1


def _load(config: Config):
  x, y = data.load(config.dataset, "train")
  xt, yt = data.load(config.dataset, "test")
  if config.max_train_examples:
    keep = np.random.default_rng(0).permutation(len(x))[:config.max_train_examples]
    x, y = x[keep], y[keep]
    xt, yt = xt[:max(config.max_train_examples // 3, 100)], yt[:max(config.max_train_examples // 3, 100)]
  return (x, y), (xt, yt)


def run_one(config: Config, setup: DatasetSetup, train_data, eval_data, regularizer: str, strength: float,
            seed: int, a: float | None = None, workdir: str = "") -> dict:
  """Trains one network; returns its final metrics and per-epoch history."""
  num_classes = int(max(train_data[1].max(), eval_data[1].max())) + 1
  model = build_model(config.model or setup.model, num_classes)
  epochs = config.epochs or setup.epochs
  steps = epochs * -(-len(train_data[0]) // setup.batch_size)
  schedule = optax.cosine_decay_schedule(setup.learning_rate, steps, alpha=0.05)
  tx = make_tx(regularizer, strength, schedule, setup.optimizer, config.a if a is None else a, config.m)
  train_config = train.TrainConfig(epochs=epochs, batch_size=setup.batch_size, seed=seed, checkpoint=False,
                                   progress=False, num_devices=config.num_devices)
  start = time.time()
  result = train.fit(model, tx, train_data, eval_data, train_config,
                     workdir or os.path.join("/tmp", "sparsejax_tl1", f"{regularizer}_{seed}"), overwrite=True)
  final = result.history[-1]
  report = metrics.report(model, result.state.params, train_data[0].shape[1:])
  return {"regularizer": regularizer, "strength": strength, "seed": seed, "a": config.a if a is None else a,
          "accuracy": final["eval_accuracy"], "train_accuracy": final["train_accuracy"], **report,
          "wall_time_s": time.time() - start,
          "curve": [(r["step"], r["eval_accuracy"]) for r in result.history],
          "first_layer": np.asarray(result.state.params[sorted(result.state.params)[0]]["kernel"]).tolist()
          if seed == config.seeds[0] else None}


def validation_split(train_data, fraction: float = 0.15, seed: int = 0):
  x, y = train_data
  order = np.random.default_rng(seed).permutation(len(x))
  n_val = int(round(fraction * len(x)))
  val, fit = order[:n_val], order[n_val:]
  return (x[fit], y[fit]), (x[val], y[val])


def lambda_grid_study(config: Config, setup: DatasetSetup, train_data, out_dir: str) -> dict[str, dict]:
  """Per regulariser: validation accuracy/size over the lambda grid and the chosen lambda."""
  fit_data, val_data = validation_split(train_data)
  lambdas = tuple(config.lambda_scale * lam for lam in setup.lambda_grid)
  chosen, table = {}, {}
  for regularizer in config.regularizers:
    if regularizer == "none":
      continue
    run = functools.partial(_val_run, config, setup, fit_data, val_data, regularizer)
    best, results = grid.grid_search(run, {"strength": lambdas}, score_key="val_accuracy", tolerance=0.01,
                                     desc=f"lambda grid {regularizer}")
    chosen[regularizer] = best["strength"]
    table[regularizer] = results
  common.write_json(os.path.join(out_dir, "lambda_grid.json"), {"chosen": chosen, "results": table})
  for x_key, label in (("flops_fraction", "% FLOPs used"), ("params_fraction", "% parameters used")):
    plotting.line_plot({LABELS[r]: ([100 * p[x_key] for p in res], [100 * p["val_accuracy"] for p in res])
                        for r, res in table.items()}, os.path.join(out_dir, f"fig4_accuracy_vs_{x_key}.png"),
                       xlabel=label, ylabel="validation accuracy (%)", logx=True,
                       title=f"{config.dataset}: accuracy vs {label} over the lambda grid")
  return chosen


def _val_run(config, setup, fit_data, val_data, regularizer, strength):
  r = run_one(config, setup, fit_data, val_data, regularizer, strength, seed=0)
  return {"val_accuracy": r["accuracy"], "params_fraction": r["params_fraction"],
          "flops_fraction": r["flops_fraction"], "weight_sparsity": r["weight_sparsity"]}


def _mean_std(values):
  return float(np.mean(values)), float(np.std(values))


def main_study(config: Config, setup: DatasetSetup, train_data, test_data, chosen: dict, out_dir: str) -> dict:
  runs = []
  jobs = [(r, s) for r in config.regularizers for s in config.seeds]
  for regularizer, seed in tqdm(jobs, desc=f"{config.dataset} main"):
    strength = 0.0 if regularizer == "none" else chosen[regularizer]
    runs.append(run_one(config, setup, train_data, test_data, regularizer, strength, seed))
  summary = {}
  for regularizer in config.regularizers:
    rs = [r for r in runs if r["regularizer"] == regularizer]
    summary[regularizer] = {
        "strength": rs[0]["strength"],
        **{key: _mean_std([r[key] for r in rs]) for key in
           ("accuracy", "params_fraction", "flops_fraction", "weight_sparsity")},
        "neurons_removed": {layer: _mean_std([r["neurons_removed"][layer] for r in rs])
                            for layer in rs[0]["neurons_removed"]},
        "neurons_total": rs[0]["neurons_total"],
        "layer_nonzero": {layer: _mean_std([r["layer_nonzero"][layer] for r in rs])
                          for layer in rs[0]["layer_nonzero"]},
    }
  _rank(summary)
  _write_table(config, summary, out_dir)
  plotting.line_plot({LABELS[r["regularizer"]]: tuple(zip(*r["curve"])) for r in runs if r["seed"] == config.seeds[0]},
                     os.path.join(out_dir, "fig5_accuracy_vs_iteration.png"), xlabel="iteration",
                     ylabel="test accuracy", title=f"{config.dataset}: convergence")
  for r in runs:
    if r["first_layer"] is not None:
      kernel = np.asarray(r["first_layer"])
      shape = train_data[0].shape[1:3] if kernel.ndim == 2 and train_data[0].ndim == 4 else None
      if kernel.ndim == 4 or shape is not None:
        plotting.first_layer_filters(kernel, os.path.join(out_dir, f"fig6_filters_{r['regularizer']}.png"),
                                     image_shape=shape, title=LABELS[r["regularizer"]])
    r.pop("first_layer")
  common.write_json(os.path.join(out_dir, "results.json"), {"config": dataclasses.asdict(config),
                                                            "setup": dataclasses.asdict(setup),
                                                            "summary": summary, "runs": runs})
  return summary


def _rank(summary: dict) -> None:
  """Average rank over accuracy (high is better), % FLOPs and % parameters (low is better)."""
  names = [n for n in summary if n != "none"]
  for key, sign in (("accuracy", -1), ("flops_fraction", 1), ("params_fraction", 1)):
    order = sorted(names, key=lambda n: sign * summary[n][key][0])
    for rank, name in enumerate(order, start=1):
      summary[name].setdefault("ranks", {})[key] = rank
  for name in names:
    summary[name]["average_rank"] = float(np.mean(list(summary[name]["ranks"].values())))


def _write_table(config: Config, summary: dict, out_dir: str) -> None:
  lines = [f"### {config.dataset}: mean ± std over seeds {list(config.seeds)}", "",
           "| regulariser | λ | test accuracy (%) | parameters used (%) | FLOPs used (%) | neurons removed | avg rank |",
           "|---|---:|---:|---:|---:|---|---:|"]
  for name, s in summary.items():
    removed = ", ".join(f"{s['neurons_removed'][l][0]:.0f}/{s['neurons_total'][l]}" for l in s["neurons_removed"])
    rank = f"{s['average_rank']:.2f}" if "average_rank" in s else "-"
    lines.append(f"| {LABELS[name]} | {s['strength']:.0e} | {100 * s['accuracy'][0]:.2f} ± {100 * s['accuracy'][1]:.2f} "
                 f"| {100 * s['params_fraction'][0]:.1f} ± {100 * s['params_fraction'][1]:.1f} "
                 f"| {100 * s['flops_fraction'][0]:.1f} ± {100 * s['flops_fraction'][1]:.1f} | {removed} | {rank} |")
  lines += ["", "Neurons removed and connections kept per layer (Table 3 of the paper, mean over seeds):", "",
            "| regulariser | " + " | ".join(next(iter(summary.values()))["layer_nonzero"]) + " |",
            "|---|" + "---|" * len(next(iter(summary.values()))["layer_nonzero"])]
  for name, s in summary.items():
    cells = []
    for layer, (nz, _) in s["layer_nonzero"].items():
      removed = s["neurons_removed"].get(layer)
      cells.append(f"{nz:.0f} weights" + (f", {removed[0]:.0f}/{s['neurons_total'][layer]} units removed" if removed else ""))
    lines.append(f"| {LABELS[name]} | " + " | ".join(cells) + " |")
  common.write_lines(os.path.join(out_dir, "table.md"), lines)


def a_sweep_study(config: Config, setup: DatasetSetup, train_data, test_data, strength: float, out_dir: str) -> list:
  runs = [run_one(config, setup, train_data, test_data, "integrated_tl1", strength, seed=config.seeds[0], a=a)
          for a in tqdm(config.a_grid, desc="a sweep")]
  for r in runs:
    r.pop("first_layer", None)
  common.write_json(os.path.join(out_dir, "a_sweep.json"), runs)
  a_values = [r["a"] for r in runs]
  plotting.line_plot({"test accuracy (%)": (a_values, [100 * r["accuracy"] for r in runs]),
                      "parameters used (%)": (a_values, [100 * r["params_fraction"] for r in runs]),
                      "FLOPs used (%)": (a_values, [100 * r["flops_fraction"] for r in runs])},
                     os.path.join(out_dir, "fig7_a_sweep.png"), xlabel="a", ylabel="%", logx=True,
                     title=f"{config.dataset}: integrated TL1, effect of a (lambda = {strength:.0e})")
  return runs


def train_and_evaluate(config: Config, workdir: str) -> dict:
  if config.dataset not in SETUPS:
    raise ValueError(f"unknown dataset {config.dataset!r}; choose from {list(SETUPS)}.")
  setup = SETUPS[config.dataset]
  out_dir = os.path.join(workdir, config.dataset)
  os.makedirs(out_dir, exist_ok=True)
  try:
    train_data, test_data = _load(config)
  except data.DataNotFoundError as err:
    print(f"skipping {config.dataset}: {err}")
    return {"skipped": str(err)}
  out: dict = {}
  chosen = {r: config.lambda_scale * setup.lambda_grid[len(setup.lambda_grid) // 2] for r in config.regularizers}
  if "lambda_grid" in config.studies:
    chosen.update(lambda_grid_study(config, setup, train_data, out_dir))
  out["chosen_lambda"] = chosen
  if "main" in config.studies:
    out["summary"] = main_study(config, setup, train_data, test_data, chosen, out_dir)
  if "a_sweep" in config.studies:
    out["a_sweep"] = a_sweep_study(config, setup, train_data, test_data, chosen.get("integrated_tl1", 1e-3), out_dir)
  return out



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--dataset", "digits", "--seeds", "0", "--epochs", "3", "--regularizers", "none", "tl1", "integrated_tl1",
          "--a-grid", "0.01", "1.0", "--max-train-examples", "600"]

def main(argv=None):
  config, workdir = common.parse_config(Config, __doc__, os.path.join("results", "tl1_comparison"), argv)
  results = train_and_evaluate(config, workdir)
  table = os.path.join(workdir, config.dataset, "table.md")
  if os.path.exists(table) and "main" in config.studies:
    common.print_file(table)
  return results


if __name__ == "__main__":
  main()
