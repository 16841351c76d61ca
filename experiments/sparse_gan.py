"""Standard vs sparse DCGAN (Zhang, Zhao, Shi & Ye, eqs. (13)-(15)).

Both runs share the seed, data order, z draws and the DCGAN (`models.dcgan`):
28x28 (G 7x7x2w -> 14x14xw -> 28x28, D w -> 2w) for fashion_mnist / mnist,
and the paper's 64x64 network for celeb_a (prepared with tfds). The sparse run
adds the paper's local + global sparsity on the mean activations k of every
layer of both players to the *minimised* losses (`docs/methods.md` corrects the
signs): lambda_local * nsRBM(k; p = 0, sigma = 1) + lambda_global * sum_j
sqrt(k_j + eps), with k pooled per channel over the batch and space. Which
activations, how k is pooled, and the GAN lambdas are not stated in the paper;
the defaults are the paper's RBM values (3, 0.005) times each of
`lambda_scales` (one sparse run per scale; x1 is measured to be far too strong
for a GAN).

The paper's claim is qualitative ("faces emerge faster, losses are more stable,
less late noise"). Here it is measured: a LeNet-5 trained with sparsejax on the
same dataset supplies features and class probabilities, and after every epoch
5,000 samples get a classifier-FID against the test set (and its train-vs-test
floor), an Inception-style score and the class-histogram entropy; stability is
the standard deviation of the logged D/G losses over the second half of
training and the epoch-to-epoch FID change.

  python -m experiments.sparse_gan [--epochs 10] [--dataset fashion_mnist] [--workdir results/sparse_gan]

Writes, per method and seed, samples/epoch_XXX.png, steps.jsonl (D/G losses),
log.jsonl and checkpoints (resume with --resume); and results.json,
results.csv, table.md, losses.png, fid.png and samples_comparison.png.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import jax
import numpy as np
import optax

from experiments import common
from sparsejax import activity, data, gan, plotting, sample_quality, train
from sparsejax.models import cnn, dcgan

METHODS = ("standard", "sparse")


@dataclasses.dataclass
class Config:
  dataset: str = "fashion_mnist"   # fashion_mnist, mnist (28x28) or celeb_a (64x64, tfds)
  methods: tuple[str, ...] = METHODS
  seeds: tuple[int, ...] = (0,)
  train_examples: int = 0           # 0: the whole training split
  width: int = 32                   # 28x28 DCGAN base width (G 2w, w; D w, 2w)
  epochs: int = 10
  batch_size: int = 64
  latent_dim: int = 64
  learning_rate: float = 2e-4
  beta1: float = 0.5
  generator_loss: str = "non_saturating"
  g_steps: int = 1
  lambda_local: float = 3.0         # nsRBM(k; p, sigma) weight, both players
  lambda_global: float = 0.005      # sum_j sqrt(k_j + eps) weight, both players
  lambda_scales: tuple[float, ...] = (1.0, 0.1, 0.01)  # one sparse run per scale of (lambda_local, lambda_global)
  p: float = 0.0
  sigma: float = 1.0
  global_eps: float = 1e-8
  pool: str = "channel"
  classifier_epochs: int = 3
  score_samples: int = 5000
  grid_samples: int = 64
  log_every_steps: int = 10
  progress: bool = True
  resume: bool = False              # continue every run (and the classifier) from its latest checkpoint


def load_images(config: Config, split: str) -> tuple[np.ndarray, np.ndarray]:
  if config.dataset == "celeb_a":
    limit = (config.train_examples or None) if split == "train" else 10000
    return data.load_celeb_a_64(split, max_examples=limit)
  x, y = data.load(config.dataset, split)
  if split == "train" and config.train_examples:
    x, y = x[:config.train_examples], y[:config.train_examples]
  return x, y


def networks(config: Config, channels: int, side: int):
  if side == 64:
    return dcgan.dcgan_64(channels, axis_name=train.AXIS)
  if side == 28:
    return dcgan.dcgan_28(channels, config.width, axis_name=train.AXIS)
  raise ValueError(f"images must be 28x28 or 64x64 for the DCGANs here; got {side}x{side}.")


def activity_penalty(config: Config, scale: float = 1.0):
  """The eq. (14)-(15) penalty on sown activations: s (lambda1 nsRBM(k) + lambda2 sum sqrt(k + eps))."""
  def k_penalty(k):
    return scale * (config.lambda_local * activity.normal_sparse_rbm(k, config.p, config.sigma)
                    + config.lambda_global * activity.l_half_sum(k, eps=config.global_eps))
  return activity.from_mean_activations(k_penalty, pool=config.pool, axis_name=train.AXIS)


def train_classifier(config: Config, x, y, x_test, y_test, workdir: str):
  """LeNet-5 trained by `train.fit` on the same data: the feature extractor of the scores."""
  model = cnn.lenet5(int(max(y.max(), y_test.max())) + 1)
  tcfg = train.TrainConfig(epochs=config.classifier_epochs, batch_size=128, progress=config.progress)
  result = train.fit(model, optax.adam(1e-3), (x, y), (x_test, y_test), tcfg, os.path.join(workdir, "classifier"),
                     resume=config.resume, overwrite=not config.resume)
  return model, result.state.params, result.history[-1].get("eval_accuracy", float("nan"))


def make_epoch_fn(config: Config, generator, scorer, method_dir: str, seed: int):
  """Per epoch: a sample grid PNG, classifier scores on `score_samples` samples and G's activation sparsity."""
  grid_z = gan.sample_latents(jax.random.PRNGKey(10_000 + seed), config.grid_samples, config.latent_dim)
  score_z = gan.sample_latents(jax.random.PRNGKey(20_000 + seed), config.score_samples, config.latent_dim)
  module = generator.clone(axis_name=None)

  @jax.jit
  def sample_with_activations(state, z):
    images, sown = module.apply({"params": state.g_params, "batch_stats": state.g_batch_stats}, z, train=False,
                                mutable=["intermediates"])
    maps = jax.tree.leaves(sown["intermediates"])
    zero = sum(jax.numpy.sum(a == 0) for a in maps) / sum(a.size for a in maps)
    return (images + 1.0) / 2.0, zero, jax.numpy.stack([jax.numpy.mean(a) for a in maps])

  def epoch_fn(state, epoch):
    grid = np.asarray(sample_with_activations(state, grid_z)[0])
    plotting.image_grid(grid, os.path.join(method_dir, "samples", f"epoch_{epoch:03d}.png"),
                        title=f"{os.path.basename(method_dir)}, epoch {epoch}")
    np.save(os.path.join(method_dir, "samples", f"epoch_{epoch:03d}.npy"), grid)
    images, zeros, means = [], [], []
    for i in range(0, config.score_samples, 1000):
      out = sample_with_activations(state, score_z[i:i + 1000])
      images.append(np.asarray(out[0]))
      zeros.append(float(out[1]))
      means.append(np.asarray(out[2]))
    return {**scorer(np.concatenate(images)), "g_zero_activation_fraction": float(np.mean(zeros)),
            "g_mean_activation_per_layer": np.mean(means, axis=0).tolist()}

  return epoch_fn


def train_and_evaluate(config: Config, workdir: str) -> dict:
  unknown = set(config.methods) - set(METHODS)
  if unknown:
    raise ValueError(f"unknown methods {sorted(unknown)}; choose from {list(METHODS)}.")
  os.makedirs(workdir, exist_ok=True)
  x, y = load_images(config, "train")
  x_test, y_test = load_images(config, "test")
  classifier, classifier_params, classifier_accuracy = train_classifier(config, x, y, x_test, y_test, workdir)
  scorer = sample_quality.ClassifierScore(classifier, classifier_params, x_test)
  floor_idx = np.random.default_rng(0).permutation(len(x))[:config.score_samples]
  floor = scorer(x[floor_idx])
  generator, discriminator = networks(config, x.shape[-1], x.shape[1])
  results = {"config": dataclasses.asdict(config), "classifier_test_accuracy": classifier_accuracy,
             "real_train_vs_test": floor, "runs": {}}
  gcfg = dict(epochs=config.epochs, batch_size=config.batch_size, latent_dim=config.latent_dim,
              generator_loss=config.generator_loss, g_steps=config.g_steps, log_every_steps=config.log_every_steps,
              progress=config.progress)
  runs = [(method, None) for method in config.methods if method == "standard"]
  if "sparse" in config.methods:
    runs += [(f"sparse_x{scale:g}", scale) for scale in config.lambda_scales]
  for seed in config.seeds:
    for method, scale in runs:
      run_dir = os.path.join(workdir, f"{method}_seed{seed}")
      penalty = activity_penalty(config, scale) if scale is not None else None
      tx = optax.adam(config.learning_rate, b1=config.beta1)
      result = gan.fit_gan(generator, discriminator, tx, tx, x, gan.GANConfig(seed=seed, **gcfg), run_dir,
                           d_penalty=penalty, g_penalty=penalty, resume=config.resume,
                           overwrite=not config.resume,
                           epoch_fn=make_epoch_fn(config, generator, scorer, run_dir, seed))
      results["runs"][f"{method}_seed{seed}"] = {"method": method, "seed": seed, "history": result.history,
                                                 "steps": result.steps, **summarize(result.history, result.steps)}
  write_outputs(config, results, workdir)
  return results


def summarize(history: list[dict], steps: list[dict]) -> dict:
  """Speed (FID after epoch 1, best FID), stability (second-half loss std, epoch-to-epoch FID change)."""
  fid = np.asarray([r["fid"] for r in history])
  late = [s for s in steps if s["step"] > steps[-1]["step"] / 2] if steps else [{"d_loss": np.nan, "g_loss": np.nan}]
  return {"fid_epoch1": float(fid[0]), "fid_final": float(fid[-1]), "fid_best": float(fid.min()),
          "fid_best_epoch": int(fid.argmin()) + 1,
          "fid_mean_abs_change": float(np.mean(np.abs(np.diff(fid)))) if len(fid) > 1 else 0.0,
          "inception_score_final": history[-1]["inception_score"], "class_entropy_final": history[-1]["class_entropy"],
          "d_loss_std_second_half": float(np.std([s["d_loss"] for s in late])),
          "g_loss_std_second_half": float(np.std([s["g_loss"] for s in late])),
          "g_zero_activation_fraction": history[-1]["g_zero_activation_fraction"],
          "train_time_s": float(sum(r["epoch_time_s"] for r in history))}


TABLE_COLUMNS = (("fid_epoch1", "FID ep. 1", ".1f"), ("fid_final", "FID final", ".1f"), ("fid_best", "best FID", ".1f"),
                 ("fid_mean_abs_change", "mean abs FID change/epoch", ".2f"),
                 ("inception_score_final", "IS final", ".2f"), ("class_entropy_final", "class entropy", ".3f"),
                 ("d_loss_std_second_half", "D loss std (2nd half)", ".3f"),
                 ("g_loss_std_second_half", "G loss std (2nd half)", ".3f"),
                 ("g_zero_activation_fraction", "G zero activations", ".3f"), ("train_time_s", "train s", ".0f"))


def write_outputs(config: Config, results: dict, workdir: str) -> None:
  runs = results["runs"]
  floor = results["real_train_vs_test"]
  lines = [f"Standard vs sparse DCGAN on {config.dataset}, {config.epochs} epochs (classifier-FID against the test "
           f"set; real train images score FID {floor['fid']:.2f}, IS {floor['inception_score']:.2f}; classifier "
           f"test accuracy {results['classifier_test_accuracy']:.4f})", "",
           "| run | " + " | ".join(c[1] for c in TABLE_COLUMNS) + " |", "|---|" + "---:|" * len(TABLE_COLUMNS)]
  for name, run in runs.items():
    lines.append(f"| {name} | " + " | ".join(format(run[k], f) for k, _, f in TABLE_COLUMNS) + " |")
  for method in dict.fromkeys(r["method"] for r in runs.values()):
    chosen = [r for r in runs.values() if r["method"] == method]
    if len(chosen) > 1:
      lines.append(f"| {method} (mean of {len(chosen)} seeds) | " + " | ".join(
          format(float(np.mean([r[k] for r in chosen])), f) for k, _, f in TABLE_COLUMNS) + " |")
  common.write_lines(os.path.join(workdir, "table.md"), lines)
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["run", "method", "seed", "epoch", "fid", "inception_score", "class_entropy", "d_loss", "g_loss",
                     "g_zero_activation_fraction"])
    for name, run in runs.items():
      for r in run["history"]:
        writer.writerow([name, run["method"], run["seed"], r["epoch"], r["fid"], r["inception_score"],
                         r["class_entropy"], r["d_loss"], r["g_loss"], r["g_zero_activation_fraction"]])
  common.write_json(os.path.join(workdir, "results.json"), results)
  _loss_plot(runs, os.path.join(workdir, "losses.png"))
  fid = {name: ([r["epoch"] for r in run["history"]], [r["fid"] for r in run["history"]]) for name, run in runs.items()}
  fid["real train images"] = (fid[next(iter(fid))][0], [floor["fid"]] * len(fid[next(iter(fid))][0]))
  plotting.line_plot(fid, os.path.join(workdir, "fid.png"), "epoch", "classifier FID (lower is better)",
                     title=f"{config.dataset}: standard vs sparse DCGAN", logy=True)
  panels = {}
  shown_epochs = sorted({1, max(1, config.epochs // 2), config.epochs})
  for name in runs:
    for epoch in shown_epochs:
      path = os.path.join(workdir, name, "samples", f"epoch_{epoch:03d}.npy")
      panels[f"{name}, epoch {epoch}"] = np.load(path)[:36]
  plotting.image_panels(panels, os.path.join(workdir, "samples_comparison.png"),
                        panels_per_row=len(shown_epochs))


def _loss_plot(runs: dict, path: str) -> None:
  fig, axes = plotting.new_figure(1, 2, figsize=(12, 4))
  for ax, key in zip(axes, ("d_loss", "g_loss")):
    for name, run in runs.items():
      ax.plot([s["epoch"] for s in run["steps"]], [s[key] for s in run["steps"]], lw=0.8, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key.replace('_', ' ')} (mean over each logged window)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  plotting.save_figure(fig, path)



def small_config_args() -> list[str]:
  """The fast small config that the test suite and the notebooks run (add ``--workdir``)."""
  return ["--dataset", "fashion_mnist" if common.dataset_available("fashion_mnist") else "shaky_curves", "--epochs", "2",
          "--train-examples", "256", "--width", "4", "--score-samples", "300", "--classifier-epochs", "1",
          "--lambda-scales", "0.1", "--grid-samples", "16", "--log-every-steps", "1", "--no-progress"]

def main(argv=None):
  return common.run_experiment(Config, __doc__, "sparse_gan", train_and_evaluate, argv=argv)


if __name__ == "__main__":
  main()
