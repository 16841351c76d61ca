"""Structured sparsity on a residual network with BatchNorm: accuracy, channels removed, compaction speed-up.

A small ResNet (`models.ResNet`: BatchNorm, identity and projection shortcuts, global
average pooling) is trained on Fashion-MNIST with momentum SGD and a cosine step size,
dense and with group penalties whose groups are the outgoing weights of each input
channel (`axis="input_units"`), so a zero group means a channel nobody reads:

  dense            no penalty
  group_lasso      proximal group lasso on every conv and Dense kernel
  integrated_tl1   group shrink then TL1 per layer (Ma et al. 2019; layer balance m)
  bn_slimming      proximal l1 on the BatchNorm scales (network slimming, Liu et al.
                   2017): a zero scale makes the channel a constant, which the
                   analysis folds into the layers that read it
  bn_slimming_coupled
                   the same, with the scales of every writer of a residual stream
                   coupled (`metrics.coupled_channels` + `transforms.coupled_group_lasso`):
                   a stream channel is zeroed in all writers at once, so the stream
                   itself narrows instead of keeping the union of its writers' channels

Everything that measures the network works on this model the library did not write
for the papers: `metrics.report` (channels removed per stage, FLOPs and parameters,
from the jaxpr) and `compaction.compact` (the smaller computation; its outputs are
checked against the sparse network). Inference time of the compacted computation vs
the trained network is measured on the same batch, on the machine the run uses.

  python -m experiments.resnet_sparsity [--train-examples 0] [--epochs 6] [--workdir results/resnet_sparsity]

Writes <workdir>/: results.json, table.md, channels.png (channels kept per layer).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
import optax

from benchmarks import common as common_bench
from experiments import common
from sparsejax import compaction, data, metrics, plotting, train, transforms
from sparsejax.models import ResNet

METHODS = ("dense", "group_lasso", "integrated_tl1", "bn_slimming", "bn_slimming_coupled")


@dataclasses.dataclass(frozen=True)
class Config:
  dataset: str = "fashion_mnist"
  train_examples: int = 0              # 0: the whole training set
  test_examples: int = 0               # 0: the whole test set
  stage_sizes: tuple[int, ...] = (1, 1, 1)
  widths: tuple[int, ...] = (16, 32, 64)
  methods: tuple[str, ...] = METHODS
  epochs: int = 6
  batch_size: int = 128
  learning_rate: float = 0.1
  momentum: float = 0.9
  group_strength: float = 2e-3
  tl1_strength: float = 2e-3
  slimming_strength: float = 2e-2
  coupled_strength: float = 2e-2
  channel_multiple: int = 8
  a: float = 0.5
  m: float = 0.2
  seed: int = 0
  timing_batch: int = 256
  timing_repeats: int = 20
  progress: bool = True


def make_tx(method: str, config: Config, total_steps: int, couplings=None) -> optax.GradientTransformation:
  schedule = optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))
  sgd = optax.sgd(schedule, momentum=config.momentum)
  if method == "dense":
    return sgd
  if method == "group_lasso":
    return optax.chain(sgd, transforms.proximal("group_lasso", config.group_strength, schedule, mask="weights_only",
                                                axis="input_units"))
  if method == "integrated_tl1":
    return optax.chain(sgd, transforms.integrated_tl1(config.tl1_strength, schedule, a=config.a, m=config.m,
                                                      axis="input_units"))
  if method == "bn_slimming":
    return optax.chain(sgd, transforms.proximal("l1", config.slimming_strength, schedule, mask=batchnorm_scales))
  if method == "bn_slimming_coupled":
    if couplings is None:
      raise ValueError("bn_slimming_coupled needs the couplings (metrics.coupled_channels of the model).")
    return optax.chain(sgd, transforms.coupled_group_lasso(config.coupled_strength, schedule, couplings))
  raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}.")


def batchnorm_scales(params):
  """Mask of the BatchNorm scale vectors (leaves named "scale")."""
  return jax.tree_util.tree_map_with_path(lambda path, _: jax.tree_util.keystr(path).endswith("['scale']"), params)


def run_one(method: str, config: Config, train_xy, test_xy, workdir: str) -> dict:
  model = ResNet(tuple(config.stage_sizes), tuple(config.widths), int(train_xy[1].max()) + 1)
  total_steps = config.epochs * -(-len(train_xy[0]) // config.batch_size)
  shape = train_xy[0].shape[1:]
  couplings = None
  if method == "bn_slimming_coupled":
    couplings = metrics.coupled_channels(model, model.init(jax.random.PRNGKey(0), np.zeros((1, *shape), np.float32)),
                                         shape)
  start = time.time()
  result = train.fit(model, make_tx(method, config, total_steps, couplings), train_xy, test_xy,
                     train.TrainConfig(epochs=config.epochs, batch_size=config.batch_size, seed=config.seed,
                                       progress=config.progress, checkpoint=False),
                     os.path.join(workdir, method), overwrite=True)
  train_time = time.time() - start
  variables = {"params": result.state.params, **result.state.model_state}
  report = metrics.report(model, variables, shape)
  small = compaction.compact(model, variables, shape, channel_multiple=config.channel_multiple)
  x = np.asarray(test_xy[0][:config.timing_batch], np.float32)
  dense_apply = jax.jit(lambda v, b: model.apply(v, b))
  reference = np.asarray(dense_apply(variables, x))
  max_difference = float(np.max(np.abs(np.asarray(small(x)) - reference)))
  times = common_bench.interleaved_times({"network": (dense_apply, variables, x),
                                          "compact": (small.apply, small.params, x)}, config.timing_repeats)
  t_dense, t_small = times["network"], times["compact"]
  return {"method": method, "test_accuracy": result.history[-1]["eval_accuracy"],
          "weight_sparsity": report["weight_sparsity"], "flops_fraction": report["flops_fraction"],
          "params_fraction": report["params_fraction"], "neurons_removed": report["neurons_removed"],
          "neurons_total": report["neurons_total"], "kernel_entries": list(small.kernel_sizes),
          "compact_widths": {metrics.layer_name(name): int(np.shape(k)[-1]) for name, k in small.params.items()},
          "compact_max_output_difference": max_difference, "inference_ms_dense": 1e3 * t_dense,
          "inference_ms_compact": 1e3 * t_small, "speedup": t_dense / max(t_small, 1e-12),
          "train_time_s": train_time}


def _stage_removed(row: dict) -> dict:
  out: dict[str, list[int]] = {}
  for layer, removed in row["neurons_removed"].items():
    stage = layer.split("/")[0].split("_")[0]
    counts = out.setdefault(stage, [0, 0])
    counts[0] += removed
    counts[1] += row["neurons_total"][layer]
  return {stage: 100.0 * r / max(t, 1) for stage, (r, t) in out.items()}


def write_outputs(config: Config, rows: list[dict], workdir: str, reduced: bool) -> None:
  common.write_json(os.path.join(workdir, "results.json"), {"config": dataclasses.asdict(config), "runs": rows})
  stages = list(_stage_removed(rows[0]))
  lines = [("*Reduced configuration.* " if reduced else "") +
           f"ResNet {list(config.stage_sizes)} x {list(config.widths)} on {config.dataset}, {config.epochs} epochs; "
           f"inference on {config.timing_batch} examples, fastest of {config.timing_repeats} interleaved rounds, "
           f"{jax.devices()[0].platform.upper()}.", "",
           "| method | test acc. (%) | weights zero (%) | FLOPs used (%) | params used (%) | "
           + " | ".join(f"{s} channels removed (%)" for s in stages)
           + " | inference dense / compact (ms) | speed-up |",
           "|---|---:|---:|---:|---:|" + "---:|" * len(stages) + "---:|---:|"]
  for row in rows:
    removed = _stage_removed(row)
    lines.append(f"| {row['method']} | {100 * row['test_accuracy']:.2f} | {100 * row['weight_sparsity']:.1f} | "
                 f"{100 * row['flops_fraction']:.1f} | {100 * row['params_fraction']:.1f} | "
                 + " | ".join(f"{removed[s]:.1f}" for s in stages)
                 + f" | {row['inference_ms_dense']:.2f} / {row['inference_ms_compact']:.2f} | {row['speedup']:.2f}x |")
  common.write_lines(os.path.join(workdir, "table.md"), lines)
  fig, ax = plotting.new_figure(figsize=(8, 4))
  layers = list(rows[0]["neurons_total"])
  for i, row in enumerate(rows):
    kept = [row["neurons_total"][k] - row["neurons_removed"][k] for k in layers]
    ax.bar(np.arange(len(layers)) + 0.8 * i / len(rows), kept, width=0.8 / len(rows), label=row["method"])
  ax.set_xticks(np.arange(len(layers)) + 0.4 - 0.4 / len(rows))
  ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
  ax.set_ylabel("channels kept")
  ax.legend()
  plotting.save_figure(fig, os.path.join(workdir, "channels.png"))


def train_and_evaluate(config: Config, workdir: str) -> dict:
  for method in config.methods:
    if method not in METHODS:
      raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}.")
  x, y = data.load(config.dataset, "train")
  xt, yt = data.load(config.dataset, "test")
  if config.train_examples:
    x, y = x[:config.train_examples], y[:config.train_examples]
  if config.test_examples:
    xt, yt = xt[:config.test_examples], yt[:config.test_examples]
  rows = [run_one(method, config, (x, y), (xt, yt), workdir) for method in config.methods]
  reduced = bool(config.train_examples) or config.epochs < Config.epochs
  write_outputs(config, rows, workdir, reduced)
  return {"runs": rows}



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--dataset", "digits", "--train-examples", "400", "--test-examples", "200", "--epochs", "2",
          "--widths", "8", "16", "16", "--group-strength", "5.0", "--tl1-strength", "0.3",
          "--slimming-strength", "5.0", "--coupled-strength", "5.0", "--no-progress", "--timing-repeats", "2",
          "--timing-batch", "64"]

def main(argv=None):
  return common.run_experiment(Config, __doc__, "resnet_sparsity", train_and_evaluate, argv=argv)


if __name__ == "__main__":
  main()
