"""The sparsity-accuracy frontier: regularisers vs magnitude pruning at exactly matched sparsity.

Every method trains the same model with the same optimizer (momentum SGD, cosine-decayed
step size), the same epochs and batches, in `train.fit`; only the sparsification
differs, and every sparse method ends at the target fraction of zero kernel weights:

  dense            no sparsification (the ceiling)
  gmp              gradual magnitude pruning (Zhu & Gupta 2017): cubic schedule from
                   `gmp_begin` to `gmp_end` (fractions of the run), global, mask every
                   `gmp_frequency` steps, then training inside the mask
  one_shot         dense training for `one_shot_at` of the run, one-shot global
                   magnitude pruning, fine-tuning inside the mask for the rest
  random           a random mask from step 0 with GMP's final per-layer densities
  l1, tl1, log_sum, mcp
                   proximal steps whose strength the NNZ controller adapts, with the
                   library's schedule for a run of known length
                   (`controller.nnz_controller(..., total_steps=T)`): the target count
                   follows GMP's cubic ramp over [0.1 T, 0.5 T], lambda is exact in a
                   short phase that ends on the target, and the last 0.4 T steps refit
                   the support the penalty found without the penalty
  integrated_tl1   group shrinkage then TL1 per layer (Ma et al. 2019), same schedule;
                   it has no single zero threshold, so lambda* is found by bisection
                   on the strength (`controller.nnz_controller_for`)
  NAME-auto        tl1, log_sum, mcp, scad as a user calls them, with no shape
                   argument: the controller then ties the penalty's magnitude
                   parameter to the kept weights' mean magnitude (`relative_shape`;
                   TL1 a = 0.1, log-sum eps = 0.03, MCP lam = 0.2, SCAD lam = 0.1 of
                   it), same schedule
  NAME-norefit     the penalty to the end of the run (no refit): the target follows
                   the ramp over GMP's window [`gmp_begin`, `gmp_end`], lambda is
                   exact in the last `exact_final_steps` steps
  NAME+retrain     NAME-norefit for the first 1 - `retrain_fraction` of the run, then
                   the support it found is frozen and the surviving weights are
                   retrained with a fresh optimizer state (`pruning.sparsify_then_retrain`)
  rigl, set        dynamic sparse training from step 0 (ERK layer densities), drop and
                   regrow `drop_fraction` (cosine-decayed for RigL, constant for SET) of
                   each layer's weights every `gmp_frequency` steps until `dst_end` of
                   the run; RigL regrows by |gradient|, SET at random (`sparsejax.dst`)
  ac_dc            AC/DC: dense warm-up 10 %, sparse/dense phases of 5 %, final sparse
                   15 % of the run (top-k magnitude masks; `dst.ac_dc`)
  ste, sr_ste      straight-through magnitude masking on GMP's cubic ramp and window;
                   sr_ste adds SR-STE's decay 2e-4 of the masked dense weights (`sparsejax.ste`)
  st3              ST-3: straight-through soft threshold at the k-th magnitude, rescaled
  scad-ste         prox-STE, the one-line call `optimizers.sgd(lr, momentum=0.9,
                   penalty="scad", sparsity=s, total_steps=T, straight_through=True)`:
                   the params are SCAD's exact prox of dense weights at the strength that
                   keeps the target count, rescaled to the kept weights' norm; the
                   gradient passes straight through to the dense weights
  --pattern N:M    gmp, one_shot, ac_dc, ste, sr_ste (and dense) with N of every M weights
                   kept along each kernel's input axis (a layer M does not divide stays
                   dense); NAME-auto is then the N:M regulariser (the one-line call with
                   pattern="N:M": `pattern_prox.nm_proximal`); sparsities must be 1 - N/M;
                   results go to <dataset>_<model>_NofM
  --epochs E       above the default 10, results go to <dataset>_<model>_<E>epochs

  python -m experiments.frontier [--dataset fashion_mnist] [--model mlp] [--sparsities 0.9 0.95 0.98 0.99]
      [--seeds 0 1 2] [--epochs 10] [--methods ...] [--workdir results/frontier]

Writes <workdir>/<dataset>_<model>/: results.json, results.csv (one row per run),
table.md (mean +- std over seeds), frontier.png (accuracy vs sparsity), and resumes
from results.json (runs already there are not repeated).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time

import jax
import numpy as np
import optax
from tqdm import tqdm

from experiments import common
from sparsejax import (
  controller,
  data,
  dst,
  masking,
  metrics,
  optimizers,
  pattern_prox,
  patterns,
  plotting,
  pruning,
  records,
  selection,
  ste,
  train,
)
from sparsejax.models import MLP, lenet5

PENALTIES = {"l1": {}, "tl1": {"a": 0.02}, "log_sum": {"eps": 0.01}, "mcp": {"lam": 0.02, "gamma": 3.0}}
# The composite penalties (no single zero threshold): the bisection controller, `nnz_controller_for`.
COMPOSITE = {"integrated_tl1": {"a": 0.02}}
# The penalties as a user calls them, without a shape: the controller's relative shape.
AUTO = ("tl1", "log_sum", "mcp", "scad")
METHODS = ("dense", "gmp", "one_shot", "random", "l1", "tl1", "log_sum", "mcp", "integrated_tl1",
           "tl1-auto", "log_sum-auto", "mcp-auto", "scad-auto",
           "l1-norefit", "tl1-norefit", "log_sum-norefit", "mcp-norefit",
           "l1+retrain", "tl1+retrain", "log_sum+retrain", "mcp+retrain",
           "rigl", "set", "ac_dc", "ste", "sr_ste", "st3", "scad-ste")
# The methods that take a sparsity pattern (--pattern "2:4", "4x4", ...); the others are unstructured only.
PATTERN_METHODS = ("dense", "gmp", "one_shot", "ac_dc", "ste", "sr_ste", "scad-auto", "mcp-auto", "tl1-auto", "log_sum-auto")


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = "fashion_mnist"
  model: str = "mlp"                  # "mlp" (784-300-100-10) or "lenet5"
  sparsities: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)
  methods: tuple[str, ...] = METHODS
  seeds: tuple[int, ...] = (0, 1, 2)
  epochs: int = 10
  batch_size: int = 128
  learning_rate: float = 0.05
  momentum: float = 0.9
  train_examples: int = 0             # 0: the whole training set
  gmp_begin: float = 0.1
  gmp_end: float = 0.6
  gmp_frequency: int = 100
  one_shot_at: float = 0.5
  retrain_fraction: float = 0.25
  controller_rate: float = 1.0
  controller_interval: int = 10
  ramp: bool = True                   # penalties follow GMP's cubic target schedule
  exact_final_steps: int = 200
  pattern: str = "unstructured"       # "N:M" (sparsities must be 1 - N/M) or blocks "RxC"
  dst_end: float = 0.75               # RigL/SET: the last mask update at this fraction of the run
  drop_fraction: float = 0.3          # RigL/SET: initial fraction of each layer's kept weights moved
  progress: bool = True


def build_model(name: str, num_classes: int):
  if name == "mlp":
    return MLP((300, 100, num_classes))
  if name == "lenet5":
    return lenet5(num_classes)
  raise ValueError(f"model must be 'mlp' or 'lenet5'; got {name!r}.")


def _penalty_chain(penalty: str, target: int, optimizer, schedule, config: Config, total_steps: int):
  """The penalty to the end of the run (no refit), on GMP's window."""
  ramp = (int(config.gmp_begin * total_steps), int(config.gmp_end * total_steps)) if config.ramp else None
  adapt = controller.nnz_controller(penalty, target, schedule, initial_strength=1e-4, rate=config.controller_rate,
                                        interval=config.controller_interval, total_steps=total_steps,
                                        exact_final_steps=min(config.exact_final_steps, total_steps), ramp=ramp,
                                        debias_steps=0, **PENALTIES[penalty])
  return optax.chain(optimizer, adapt)


def make_tx(method: str, sparsity: float, num_weights: int, steps: int, config: Config, random_mask=None):
  """The optax chain of one method (the same optimizer and schedule for all).

  `random_mask` (a binary mask pytree) is required for "random".
  """
  schedule = optax.cosine_decay_schedule(config.learning_rate, steps, alpha=0.02)
  optimizer = optax.sgd(schedule, momentum=config.momentum)
  target = int(round((1.0 - sparsity) * num_weights))
  pattern = config.pattern
  if pattern != "unstructured" and method not in PATTERN_METHODS:
    raise ValueError(f"method {method!r} has no pattern option; with --pattern use {list(PATTERN_METHODS)}.")
  fits = patterns.fitting(pattern)  # N:M leaves a layer dense whose input axis M does not divide
  window = dict(begin_step=int(config.gmp_begin * steps), end_step=int(config.gmp_end * steps))
  if method == "dense":
    return optimizer
  if method == "gmp":
    return optax.chain(optimizer, pruning.gradual_magnitude_pruning(
        sparsity, int(config.gmp_begin * steps), int(config.gmp_end * steps), config.gmp_frequency,
        mask=fits, pattern=pattern, distribution=None if pattern == "unstructured" else "global"))
  if method == "one_shot":
    if pattern == "unstructured":
      support = lambda params: pruning.one_shot_magnitude_mask(params, sparsity)  # noqa: E731
    else:
      support = lambda params: pruning.one_shot_mask(params, sparsity, pattern=pattern, mask=fits)  # noqa: E731
    return pruning.sparsify_then_retrain(optimizer, optax.sgd(schedule, momentum=config.momentum),
                                         int(config.one_shot_at * steps), support_fn=support)
  if method in ("rigl", "set"):
    make = dst.rigl if method == "rigl" else dst.sparse_evolutionary
    return make(optimizer, sparsity, end_step=max(1, int(config.dst_end * steps)), update_every=config.gmp_frequency,
                initial_drop_fraction=config.drop_fraction)
  if method == "ac_dc":
    return dst.ac_dc(optimizer, sparsity, total_steps=steps, pattern=pattern, mask=fits)
  if method in ("ste", "sr_ste"):
    return ste.magnitude_ste(optimizer, sparsity, pattern=pattern, mask=fits,
                             masked_decay=2e-4 if method == "sr_ste" else 0.0, **window)
  if method == "st3":
    return ste.soft_threshold_ste(optimizer, sparsity, **window)
  if method == "scad-ste":  # the one-line call with straight_through=True, as a user writes it
    return optimizers.sgd(schedule, momentum=config.momentum, penalty="scad", sparsity=sparsity, total_steps=steps,
                          straight_through=True)
  if method == "random":
    if random_mask is None:
      raise ValueError("random needs a mask (with the per-layer densities of the GMP run).")
    return optax.chain(optimizer, pruning.fixed_mask(random_mask))
  if method in PENALTIES:  # the library's schedule for a run of known length
    return optax.chain(optimizer, controller.nnz_controller(method, target, schedule, total_steps=steps,
                                                           **PENALTIES[method]))
  if method.endswith("-auto") and method[:-len("-auto")] in AUTO and pattern != "unstructured":
    return optax.chain(optimizer, pattern_prox.nm_proximal(method[:-len("-auto")], pattern, total_steps=steps, mask=fits))
  if method.endswith("-auto") and method[:-len("-auto")] in AUTO:
    return optax.chain(optimizer, controller.nnz_controller(method[:-len("-auto")], target, schedule,
                                                           total_steps=steps))
  if method in COMPOSITE:
    return optax.chain(optimizer, controller.nnz_controller_for(method, target, schedule, total_steps=steps,
                                                               **COMPOSITE[method]))
  if method.endswith("-norefit") and method[:-len("-norefit")] in PENALTIES:
    return _penalty_chain(method[:-len("-norefit")], target, optimizer, schedule, config, steps)
  penalty, _, retrain = method.partition("+")
  if penalty not in PENALTIES or retrain != "retrain":
    raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}.")
  switch = int(round((1.0 - config.retrain_fraction) * steps))
  return pruning.sparsify_then_retrain(_penalty_chain(penalty, target, optimizer, schedule, config, switch),
                                       optax.sgd(schedule, momentum=config.momentum), switch)


def _kernel_count(params) -> int:
  return sum(int(np.size(k)) for k in selection.weight_leaves(params))


def run_one(config: Config, method: str, sparsity: float, seed: int, train_xy, test_xy, workdir: str,
            densities=None) -> dict:
  num_classes = int(max(train_xy[1].max(), test_xy[1].max())) + 1
  model = build_model(config.model, num_classes)
  steps = pruning.schedule_total_steps(config.epochs, len(train_xy[0]), config.batch_size)
  params0 = train.create_train_state(model, optax.identity(), train_xy[0], seed).params
  num_weights = _kernel_count(params0)
  random = None if densities is None else pruning.random_mask(params0, densities, seed=seed)
  tx = make_tx(method, sparsity, num_weights, steps, config, random)
  cfg = train.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=seed, checkpoint=False,
                          progress=False)
  start = time.time()
  result = train.fit(model, tx, train_xy, test_xy, cfg, workdir, report_fn=lambda p: {}, overwrite=True)
  params = result.state.params
  kernels = selection.weight_leaves(params)
  nonzero = sum(int(np.count_nonzero(np.asarray(k))) for k in kernels)
  return {"method": method, "target_sparsity": sparsity, "seed": seed, "accuracy": result.history[-1]["eval_accuracy"],
          "train_accuracy": result.history[-1]["train_accuracy"], "sparsity": 1.0 - nonzero / num_weights,
          "nonzero": nonzero, "weights": num_weights,
          "layer_density": [float(np.count_nonzero(np.asarray(k)) / np.size(k)) for k in kernels],
          "wall_time_s": time.time() - start, "epochs": config.epochs, "steps": steps}


def layer_flops(model_name: str, num_classes: int, example: np.ndarray) -> list[int]:
  """Dense FLOPs of each kernel layer (2 x kernel entries x output positions), in `layer_density` order."""
  model = build_model(model_name, num_classes)
  params = train.create_train_state(model, optax.identity(), example, 0).params
  by_name = {layer.name: 2 * layer.kernel.size * layer.positions
             for layer in metrics.layers(model, params, example.shape[1:])}
  names = [metrics.layer_name(jax.tree_util.keystr(path)) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
           if np.ndim(leaf) >= 2]
  return [int(by_name[n]) for n in names]


def flops_fraction(layer_density, flops_per_layer) -> float:
  """FLOPs of the sparse kernels as a fraction of dense: sum_l density_l F_l / sum_l F_l.

  The count `metrics.flops_and_params` makes for unstructured sparsity (each nonzero
  weight costs 2 FLOPs at every output position of its layer), from a run's per-layer
  densities; conv layers weigh by their output positions, so two runs at the same
  sparsity differ in FLOPs by where they keep their weights.
  """
  dense = float(sum(flops_per_layer))
  return float(sum(d * f for d, f in zip(layer_density, flops_per_layer)) / dense)


def _key(row) -> tuple:
  return (row["method"], float(row["target_sparsity"]), int(row["seed"]))


def _densities_tree(params, layer_density):
  """Per-leaf densities for `pruning.random_mask` from the per-layer list of a GMP run."""
  index, _ = masking.layer_index(params)
  return jax.tree.map(lambda l: 1.0 if l is None else layer_density[l - 1], index, is_leaf=lambda v: v is None)


def summarize(rows: list[dict], config: Config, flops_per_layer=None) -> list[dict]:
  out = []
  for method in config.methods:
    for sparsity in ([0.0] if method == "dense" else config.sparsities):
      accs = [r["accuracy"] for r in rows if r["method"] == method and
              (method == "dense" or abs(r["target_sparsity"] - sparsity) < 1e-12)]
      spars = [r["sparsity"] for r in rows if r["method"] == method and
               (method == "dense" or abs(r["target_sparsity"] - sparsity) < 1e-12)]
      if accs:
        out.append({"method": method, "target_sparsity": sparsity, "accuracy_mean": float(np.mean(accs)),
                    "accuracy_std": float(np.std(accs)), "sparsity_mean": float(np.mean(spars)), "runs": len(accs)})
        if flops_per_layer is not None:
          fractions = [flops_fraction(r["layer_density"], flops_per_layer) for r in rows if r["method"] == method
                       and (method == "dense" or abs(r["target_sparsity"] - sparsity) < 1e-12)]
          out[-1]["flops_fraction_mean"] = float(np.mean(fractions))
  return out


def _method_rows(config: Config, summary: list[dict], cell) -> list[str]:
  """One Markdown row per sparse method: `cell(summary entry, method, sparsity)` per sparsity, "" where not run."""
  rows = []
  for method in config.methods:
    if method == "dense":
      continue
    cells = []
    for sparsity in config.sparsities:
      s = next((s for s in summary if s["method"] == method and abs(s["target_sparsity"] - sparsity) < 1e-12), None)
      cells.append("" if s is None else cell(s, method, sparsity))
    rows.append(f"| {method} | " + " | ".join(cells) + " |")
  return rows


def paired_difference(rows: list[dict], method: str, baseline: str, sparsity: float) -> tuple[list[float], int]:
  """Accuracy differences method - baseline (points) per seed both ran at `sparsity`, and the seeds ahead."""
  def by_seed(name):
    return {int(r["seed"]): r["accuracy"] for r in rows
            if r["method"] == name and abs(r["target_sparsity"] - sparsity) < 1e-12}
  mine, theirs = by_seed(method), by_seed(baseline)
  diffs = [100 * (mine[s] - theirs[s]) for s in sorted(set(mine) & set(theirs))]
  return diffs, sum(d > 0 for d in diffs)


def paired_cell(rows: list[dict], method: str, baseline: str, sparsity: float) -> str:
  diffs, ahead = paired_difference(rows, method, baseline, sparsity)
  return f"{np.mean(diffs):+.2f} ({ahead}/{len(diffs)})" if diffs else ""


def _seeds_run(summary: list[dict], configured: int) -> str:
  """"N seed(s)", or the runs per method when methods ran on different numbers of seeds (a resumed run)."""
  runs: dict[int, list[str]] = {}
  for method in dict.fromkeys(s["method"] for s in summary):
    runs.setdefault(max(s["runs"] for s in summary if s["method"] == method), []).append(method)
  if len(runs) <= 1:
    return f"{next(iter(runs), configured)} seed(s)"
  return "the seeds run (" + "; ".join(f"{n} for {', '.join(m)}" for n, m in sorted(runs.items(), reverse=True)) + ")"


def write_outputs(config: Config, rows: list[dict], out_dir: str, reduced: bool, flops_per_layer=None) -> dict:
  """results.json/csv, table.md (accuracy; and % FLOPs when `flops_per_layer` is given) and frontier.png."""
  summary = summarize(rows, config, flops_per_layer)
  payload = {"config": dataclasses.asdict(config), "reduced_config": reduced, "runs": rows, "summary": summary}
  records.write_json_atomic(os.path.join(out_dir, "results.json"), payload)
  if rows:
    with open(os.path.join(out_dir, "results.csv"), "w", newline="") as f:
      fields = [k for k in rows[0] if k != "layer_density"]
      writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
      writer.writeheader()
      writer.writerows(rows)
  dense = next((s for s in summary if s["method"] == "dense"), None)
  header = ["method"] + [f"{100 * s:g}%" for s in config.sparsities]
  lines = [f"Test accuracy (%) at exactly matched sparsity of kernel weights, mean ± std over "
           f"{_seeds_run(summary, len(config.seeds))}; {config.dataset}, {config.model}, {config.epochs} epochs"
           + (" (REDUCED config)" if reduced else "") + ".", "",
           "| " + " | ".join(header) + " |", "|---" + "|---:" * len(config.sparsities) + "|"]
  if dense:
    lines.append(f"| dense (0%) | {100 * dense['accuracy_mean']:.2f} ± {100 * dense['accuracy_std']:.2f}"
                 + " |" * len(config.sparsities))
  best = {}
  for sparsity in config.sparsities:
    cells = [s for s in summary if s["method"] != "dense" and abs(s["target_sparsity"] - sparsity) < 1e-12]
    if cells:
      best[sparsity] = max(cells, key=lambda s: s["accuracy_mean"])["method"]
  def accuracy_cell(s, method, sparsity):
    text = f"{100 * s['accuracy_mean']:.2f} ± {100 * s['accuracy_std']:.2f}"
    return f"**{text}**" if best.get(sparsity) == method else text

  lines += _method_rows(config, summary, accuracy_cell)
  if "gmp" in config.methods:
    lines += ["", "Paired difference to GMP (points, mean over the seeds both ran; in brackets: seeds ahead / seeds):",
              "", "| " + " | ".join(header) + " |", "|---" + "|---:" * len(config.sparsities) + "|"]
    lines += _method_rows(config, summary, lambda s, method, sparsity: paired_cell(rows, method, "gmp", sparsity))
  if flops_per_layer is not None:
    lines += ["", "FLOPs of the sparse kernels, % of dense (2 x nonzero weights x output positions per layer; "
              "mean over seeds):", "", "| " + " | ".join(header) + " |", "|---" + "|---:" * len(config.sparsities) + "|"]
    lines += _method_rows(config, summary, lambda s, method, sparsity: f"{100 * s['flops_fraction_mean']:.2f}")
  common.write_lines(os.path.join(out_dir, "table.md"), lines)
  fig, axes = plotting.new_figure(ncols=2 if flops_per_layer is not None else 1,
                                  figsize=(13, 4.5) if flops_per_layer is not None else (7.5, 4.5))
  ax = axes[0] if flops_per_layer is not None else axes
  for method in config.methods:
    points = sorted((s["target_sparsity"], s["accuracy_mean"], s["accuracy_std"]) for s in summary
                    if s["method"] == method and method != "dense")
    if points:
      xs, ys, es = zip(*points)
      ax.errorbar([100 * x for x in xs], [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", ms=3,
                  capsize=2, lw=1, label=method, ls="--" if method in ("gmp", "one_shot", "random") else "-")
  if dense:
    ax.axhline(100 * dense["accuracy_mean"], color="k", lw=0.8, ls=":", label="dense")
  ax.set_xlabel("kernel weights removed (%)")
  ax.set_ylabel("test accuracy (%)")
  ax.set_title(f"{config.dataset}, {config.model}, {config.epochs} epochs" + (" (reduced)" if reduced else ""))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, ncol=2)
  if flops_per_layer is not None:
    ax = axes[1]
    for method in config.methods:
      points = sorted((s["flops_fraction_mean"], s["accuracy_mean"]) for s in summary
                      if s["method"] == method and method != "dense")
      if points:
        xs, ys = zip(*points)
        ax.plot([100 * x for x in xs], [100 * y for y in ys], marker="o", ms=3, lw=1, label=method,
                ls="--" if method in ("gmp", "one_shot", "random") else "-")
    if dense:
      ax.axhline(100 * dense["accuracy_mean"], color="k", lw=0.8, ls=":", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("FLOPs of the sparse kernels (% of dense)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
  plotting.save_figure(fig, os.path.join(out_dir, "frontier.png"))
  return payload



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--dataset", "digits", "--seeds", "0", "--epochs", "3", "--batch-size", "32", "--sparsities", "0.9",
          "--methods", "dense", "gmp", "one_shot", "random", "l1", "integrated_tl1", "tl1-norefit", "tl1+retrain",
          "tl1-auto", "rigl", "set", "ac_dc", "ste", "st3", "scad-ste",
          "--exact-final-steps", "30", "--gmp-frequency", "10", "--no-progress"]


def small_pattern_args(pattern: str = "2:4", sparsity: str = "0.5") -> list[str]:
  """The fast small config with an N:M pattern (add ``--workdir``)."""
  return ["--dataset", "digits", "--seeds", "0", "--epochs", "3", "--batch-size", "32", "--sparsities", sparsity,
          "--pattern", pattern, "--methods", "dense", "gmp", "one_shot", "ac_dc", "ste", "sr_ste", "scad-auto",
          "--gmp-frequency", "10", "--no-progress"]


def main(argv=None) -> dict:
  config, workdir = common.parse_config(Config, __doc__, os.path.join("results", "frontier"), argv)
  for method in config.methods:
    if method not in METHODS:
      raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}.")
  for s in config.sparsities:
    if not 0.0 < s < 1.0:
      raise ValueError(f"sparsities must lie in (0, 1); got {s}.")
  train_xy, test_xy = data.load(config.dataset, "train"), data.load(config.dataset, "test")
  reduced = bool(config.train_examples) or config.epochs < Config.epochs
  if config.train_examples:
    train_xy = (train_xy[0][:config.train_examples], train_xy[1][:config.train_examples])
  pattern = patterns.parse_pattern(config.pattern)
  suffix = "" if pattern.kind == "unstructured" else "_" + str(pattern).replace(":", "of")
  if config.epochs > Config.epochs:  # a longer budget than the default: its own folder
    suffix += f"_{config.epochs}epochs"
  for s in config.sparsities:
    patterns.check_sparsity(s, pattern, "sparsities")
  out_dir = os.path.join(workdir, f"{config.dataset}_{config.model}{suffix}")
  os.makedirs(out_dir, exist_ok=True)
  results_path = os.path.join(out_dir, "results.json")
  rows = []
  if os.path.exists(results_path):
    with open(results_path) as f:
      previous = json.load(f)
    if previous.get("config", {}).get("epochs") == config.epochs and \
        previous.get("config", {}).get("train_examples") == config.train_examples:
      rows = previous.get("runs", [])
  done = {_key(r) for r in rows}
  order = [m for m in config.methods if m == "gmp"] + [m for m in config.methods if m != "gmp"]
  plan = [(m, s, seed) for seed in config.seeds for m in order
          for s in ([0.0] if m == "dense" else config.sparsities)]
  if "random" in config.methods and "gmp" not in config.methods:
    raise ValueError("method 'random' takes GMP's per-layer densities: include 'gmp' in --methods.")
  scratch = os.path.join(out_dir, "scratch_run")
  flops_per_layer = layer_flops(config.model, int(max(train_xy[1].max(), test_xy[1].max())) + 1, train_xy[0][:1])
  for method, sparsity, seed in tqdm(plan, desc="frontier runs", disable=not config.progress):
    if (method, float(sparsity), int(seed)) in done:
      continue
    densities = None
    if method == "random":
      gmp_row = next(r for r in rows if _key(r) == ("gmp", float(sparsity), int(seed)))
      model = build_model(config.model, int(max(train_xy[1].max(), test_xy[1].max())) + 1)
      params0 = train.create_train_state(model, optax.identity(), train_xy[0], seed).params
      densities = _densities_tree(params0, gmp_row["layer_density"])
    row = run_one(config, method, sparsity, seed, train_xy, test_xy, scratch, densities)
    rows.append(row)
    write_outputs(config, rows, out_dir, reduced, flops_per_layer)  # after every run: a kill loses at most one run
  payload = write_outputs(config, rows, out_dir, reduced, flops_per_layer)
  common.print_file(os.path.join(out_dir, "table.md"))
  return payload


if __name__ == "__main__":
  main()
