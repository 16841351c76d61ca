"""LSES-DNN: log-sum sparsity on responses and connections vs classical classifiers (Qiao et al. 2020).

The paper's MRI data is not public. Datasets here:
  * "synthetic": `data.high_dim_small_sample` (200 samples, 2000 features, 20 informative);
  * "breast_cancer": scikit-learn's (569 x 30), a real small-sample set;
  * "digits_small": scikit-learn's digits, 30 samples per class (300 x 64).

Methods, each scored by stratified 5-fold cross-validated accuracy (the
regularised networks choose their strength by nested selection: for each outer
fold, an inner 75/25 split of its training part picks the value from a grid
with `experiments.grid.select`, then the network is retrained on the whole
training part):
  * lses: MLP (ReLU) whose fine-tuning loss adds alpha * log-sum of the hidden
    responses (`activity.log_sum_responses` on the sown activations) and whose
    weights take the exact log-sum prox after each Adam step;
  * dnn: the same MLP, no regulariser;  l1_dnn: proximal l1 on the weights;
  * logreg, svm (RBF) and random forest from scikit-learn.
For the networks it also reports response sparsity (fraction of hidden
activations exactly zero on the held-out fold) and connection sparsity.

  python -m experiments.lses_dnn [--datasets synthetic breast_cancer digits_small] [--workdir results/lses_dnn]
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import SVC
from tqdm import tqdm

from experiments import common, grid
from sparsejax import activity, data, masking, metrics, plotting, prox, train, transforms
from sparsejax.models import MLP

METHODS = ("lses", "dnn", "l1_dnn", "logreg", "svm", "rf")
NETWORKS = ("lses", "dnn", "l1_dnn")


@dataclasses.dataclass
class Config:
  datasets: tuple[str, ...] = ("synthetic", "breast_cancer", "digits_small")
  methods: tuple[str, ...] = METHODS
  folds: int = 5
  hidden: tuple[int, ...] = (64, 32)
  epochs: int = 150
  batch_size: int = 32
  learning_rate: float = 1e-3
  alpha: float = 1e-3     # log-sum weight on responses
  eps_a: float = 0.1
  beta_grid: tuple[float, ...] = (0.005, 0.01, 0.02, 0.03)  # log-sum weight on connections (prox tau = lr * beta)
  eps_w: float = 0.01
  l1_grid: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0)
  seed: int = 0


def load_dataset(name: str, seed: int = 0):
  if name == "synthetic":
    return data.high_dim_small_sample(200, 2000, 20, seed=seed)
  if name == "breast_cancer":
    return data.breast_cancer()
  if name == "digits_small":
    x, y = data.load("digits", "train")
    keep = np.concatenate([np.flatnonzero(y == c)[:30] for c in range(10)])
    return x[keep].reshape(len(keep), -1), y[keep]
  raise ValueError(f"unknown dataset {name!r}.")


def _network_tx(method: str, config: Config, strength: float):
  adam = optax.adam(config.learning_rate)
  if method == "lses":
    return optax.chain(adam, transforms.proximal(prox.log_sum, strength, config.learning_rate,
                                                 mask=masking.weights_only, eps=config.eps_w))
  if method == "l1_dnn":
    return optax.chain(adam, transforms.l1(strength, config.learning_rate))
  return adam


def _grid(method: str, config: Config) -> tuple[float, ...]:
  return {"lses": config.beta_grid, "l1_dnn": config.l1_grid}.get(method, (0.0,))


def fit_network_nested(method: str, config: Config, train_xy, test_xy, workdir: str) -> dict:
  """Chooses the strength on an inner split of train_xy, retrains on all of it, scores on test_xy."""
  grid_values = _grid(method, config)
  strength = grid_values[0]
  if len(grid_values) > 1:
    inner_fit, inner_val = next(StratifiedKFold(4, shuffle=True, random_state=config.seed).split(*train_xy))
    candidates = []
    for value in grid_values:
      r = fit_network(method, config, (train_xy[0][inner_fit], train_xy[1][inner_fit]),
                      (train_xy[0][inner_val], train_xy[1][inner_val]), workdir, value)
      candidates.append({"strength": value, "val_accuracy": r["accuracy"],
                         "size": 1.0 - r["connection_sparsity"]})
    strength = grid.select(candidates, score_key="val_accuracy", size_key="size", tolerance=0.0)["strength"]
  return {**fit_network(method, config, train_xy, test_xy, workdir, strength), "strength": strength}


def fit_network(method: str, config: Config, train_xy, test_xy, workdir: str, strength: float) -> dict:
  num_classes = int(max(train_xy[1].max(), test_xy[1].max())) + 1
  model = MLP((*config.hidden, num_classes))
  penalty = (activity.from_intermediates(functools.partial(activity.log_sum_responses, eps=config.eps_a), config.alpha)
             if method == "lses" else None)
  cfg = train.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed, checkpoint=False,
                          progress=False, num_devices=1)
  result = train.fit(model, _network_tx(method, config, strength), train_xy, None, cfg, workdir, penalty_fn=penalty,
                     report_fn=lambda p: {}, overwrite=True)
  params = result.state.params
  _, state = model.apply({"params": params}, jnp.asarray(test_xy[0]), mutable=["intermediates"])
  responses = jax.tree.leaves(state["intermediates"])
  report = metrics.report(model, params, train_xy[0].shape[1:])
  return {"accuracy": train.evaluate(model, params, *test_xy)["accuracy"],
          "response_sparsity": float(np.mean(np.concatenate([np.asarray(r).ravel() == 0 for r in responses]))),
          "connection_sparsity": report["weight_sparsity"],
          "neurons_removed": sum(report["neurons_removed"].values())}


def fit_sklearn(method: str, seed: int, train_xy, test_xy) -> dict:
  model = {"logreg": LogisticRegression(max_iter=5000, C=1.0),
           "svm": SVC(C=1.0, kernel="rbf", gamma="scale"),
           "rf": RandomForestClassifier(n_estimators=300, random_state=seed)}[method]
  model.fit(*train_xy)
  return {"accuracy": float(model.score(*test_xy))}


def evaluate_dataset(name: str, config: Config, out_dir: str) -> dict:
  x, y = load_dataset(name, config.seed)
  folds = StratifiedKFold(config.folds, shuffle=True, random_state=config.seed).split(x, y)
  per_method = {m: [] for m in config.methods}
  for fold, (train_idx, test_idx) in enumerate(tqdm(list(folds), desc=name)):
    train_xy, test_xy = (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx])
    for method in config.methods:
      start = time.time()
      if method in NETWORKS:
        r = fit_network_nested(method, config, train_xy, test_xy, os.path.join(out_dir, "runs", f"{method}_{fold}"))
      else:
        r = fit_sklearn(method, config.seed, train_xy, test_xy)
      per_method[method].append({**r, "fold": fold, "time_s": time.time() - start})
  summary = {}
  for method, runs in per_method.items():
    summary[method] = {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs])))
                       for k in runs[0] if k not in ("fold",)}
  return {"shape": list(x.shape), "summary": summary, "folds": per_method}


def train_and_evaluate(config: Config, workdir: str) -> dict:
  os.makedirs(workdir, exist_ok=True)
  results = {"config": dataclasses.asdict(config), "datasets": {}}
  for name in config.datasets:
    results["datasets"][name] = evaluate_dataset(name, config, os.path.join(workdir, name))
  lines = [f"{config.folds}-fold cross-validated accuracy (mean ± std); networks: MLP {list(config.hidden)} ReLU, "
           f"Adam lr {config.learning_rate:g}, {config.epochs} epochs", "",
           "| dataset (n x d) | method | accuracy (%) | hidden responses exactly 0 (%) | connections exactly 0 (%) |",
           "|---|---|---:|---:|---:|"]
  for name, res in results["datasets"].items():
    for method, s in res["summary"].items():
      resp = f"{100 * s['response_sparsity'][0]:.1f}" if "response_sparsity" in s else "-"
      conn = f"{100 * s['connection_sparsity'][0]:.1f}" if "connection_sparsity" in s else "-"
      lines.append(f"| {name} ({res['shape'][0]} x {res['shape'][1]}) | {method} | "
                   f"{100 * s['accuracy'][0]:.1f} ± {100 * s['accuracy'][1]:.1f} | {resp} | {conn} |")
  common.write_lines(os.path.join(workdir, "table.md"), lines)
  plotting.line_plot({name: (list(range(len(res["summary"]))), [100 * s["accuracy"][0] for s in res["summary"].values()])
                      for name, res in results["datasets"].items()},
                     os.path.join(workdir, "accuracy_by_method.png"), xlabel=" / ".join(config.methods),
                     ylabel="CV accuracy (%)", title="LSES-DNN vs baselines")
  common.write_json(os.path.join(workdir, "results.json"), results)
  return results



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--datasets", "breast_cancer", "--folds", "3", "--epochs", "15", "--beta-grid", "0.01", "--l1-grid", "0.1"]

def main(argv=None):
  return common.run_experiment(Config, __doc__, "lses_dnn", train_and_evaluate, argv=argv)


if __name__ == "__main__":
  main()
