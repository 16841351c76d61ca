"""Writes the tutorial notebooks (run: python notebooks/build_notebooks.py [--execute]).

Each notebook reads saved results; when they are missing (or SPARSEJAX_NOTEBOOK_SMALL=1,
as in the test suite) it first runs the experiment's small config
(`small_config_args()`) into a temporary directory, so it always executes top to
bottom, never writes into `results/`, and labels every table that comes from such a
reduced run. When SPARSEJAX_NOTEBOOK_RESULTS names a folder where that small config
already ran (the test suite's session runs, marked by a `small_config_done` file with
the same arguments), the notebook shows those results instead of training again.

`--execute` runs every notebook (progress bars off) and saves it with its outputs,
which the documentation site renders; outputs that are progress-bar noise are dropped.
"""

import os
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = '''import contextlib, io, os, sys, json, tempfile
from IPython.display import Image, Markdown, display
if os.path.exists(os.path.join("..", "sparsejax")):  # running from a checkout
    sys.path.insert(0, os.path.abspath(".."))
SMALL = os.environ.get("SPARSEJAX_NOTEBOOK_SMALL") == "1"
REDUCED = False  # set when this notebook ran a reduced config instead of reading measured results
def small_run(module):
    """(workdir, True): the experiment's small config, in a temporary folder or where it already ran."""
    name, args = module.__name__.split(".")[-1], module.small_config_args()
    done = os.path.join(os.environ.get("SPARSEJAX_NOTEBOOK_RESULTS", ""), name)
    marker = os.path.join(done, "small_config_done")
    if os.environ.get("SPARSEJAX_NOTEBOOK_RESULTS") and os.path.exists(marker) and open(marker).read() == " ".join(args):
        return done, True
    workdir = tempfile.mkdtemp()
    with contextlib.redirect_stdout(io.StringIO()):  # the table is shown (labelled) below
        module.main(["--workdir", workdir] + args)
    return workdir, True
def show_table(path):
    text = open(path).read()
    if REDUCED:
        text = ("*Reduced configuration, run inside this notebook (the measured results are in the README; run "
                "the experiment's full config to reproduce them here).*\\n\\n" + text)
    display(Markdown(text))
'''


def quickstart():
  return new_notebook(cells=[
      new_markdown_cell("# sparsejax quickstart\n\nYour own model in your own loop: one optimizer call makes 95 % of "
                        "the kernel weights exactly zero by the end of training (the NNZ controller sets the "
                        "penalty's strength as it trains), then `compaction.compact` removes the dead units and the "
                        "small model is saved and loaded back."),
      new_code_cell('''import numpy as np, optax
from flax import nnx
from sklearn.datasets import load_digits
from sparsejax import compaction, metrics, optimizers

x, y = load_digits(return_X_y=True)
x, y = (x / 16).astype(np.float32), y.astype(np.int32)

class Net(nnx.Module):
    def __init__(self, rngs):
        self.hidden, self.out = nnx.Linear(64, 256, rngs=rngs), nnx.Linear(256, 10, rngs=rngs)
    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))

steps, model = 1000, Net(nnx.Rngs(0))
tx = optimizers.sgd(optax.cosine_decay_schedule(0.1, steps), momentum=0.9,
                    penalty="scad", sparsity=0.95, total_steps=steps)
opt = nnx.Optimizer(model, tx, wrt=nnx.Param)

@nnx.jit
def train_step(model, opt, xb, yb):
    loss = lambda m: optax.softmax_cross_entropy_with_integer_labels(m(xb), yb).mean()
    opt.update(model, nnx.grad(loss)(model))

rng = np.random.default_rng(0)
for _ in range(steps):
    batch = rng.integers(0, 1500, 64)
    train_step(model, opt, x[batch], y[batch])

report = metrics.report(model, input_shape=(64,))
print(f"{report.weights_nonzero} of {report.weights_total} weights nonzero ({report.weight_sparsity:.1%} zero)")'''),
      new_code_cell('''import os, tempfile
cm = compaction.compact(model, input_shape=(64,))
path = os.path.join(tempfile.mkdtemp(), "digits_net.npz")
print("file bytes:", cm.save(path))
loaded = compaction.load(path)  # any process, no Net class needed, any batch size
print("test accuracy:", float((loaded(x[1500:]).argmax(-1) == y[1500:]).mean()))
print("outputs equal the sparse model's:", float(np.abs(loaded(x[:37]) - model(x[:37])).max()))'''),
      new_markdown_cell("## The quickstart experiment: integrated transformed-l1, whole neurons removed\n\n"
                        "`python -m experiments.quickstart` trains an MLP with proximal SGD and the integrated "
                        "transformed-l1 regulariser (`transforms.integrated_tl1`, a group penalty): whole hidden "
                        "neurons disappear. Its curves, sparsity per layer and first-layer weights:"),
      new_code_cell(SETUP + '''from experiments import quickstart
if SMALL:
    workdir, REDUCED = small_run(quickstart)
else:
    workdir = tempfile.mkdtemp()  # the notebook never writes into results/
    quickstart.main(["--workdir", workdir])
results = json.load(open(os.path.join(workdir, "results.json")))'''),
      new_code_cell('''display(Image(os.path.join(workdir, "training_curves.png")))
display(Image(os.path.join(workdir, "sparsity_per_layer.png")))
display(Image(os.path.join(workdir, "first_layer.png"), width=500))'''),
      new_markdown_cell("## The prox operators themselves\n\nEvery penalty's exact proximal map, applied to a ramp."),
      new_code_cell('''import jax.numpy as jnp, matplotlib.pyplot as plt
from sparsejax import prox
v = jnp.linspace(-3, 3, 601)
cases = [("l1", {}), ("l0", {}), ("tl1", {"a": 0.5}), ("log_sum", {"eps": 0.1}), ("l_half", {}),
         ("l_two_thirds", {}), ("scad", {"lam": 0.7}), ("mcp", {"lam": 0.7}), ("capped_l1", {"lam": 1.0, "theta": 0.6})]
fig, axes = plt.subplots(3, 3, figsize=(10, 9))
for ax, (name, kw) in zip(axes.ravel(), cases):
    ax.plot(v, prox.get(name)(v, 0.5, **kw)); ax.plot(v, v, ":", color="gray")
    ax.set_title(f"{name}, tau=0.5, zero for |v| <= {float(prox.get(name).threshold(0.5, **kw)):.3f}", fontsize=9)
fig.tight_layout()'''),
  ])


def tl1_comparison():
  return new_notebook(cells=[
      new_markdown_cell("# Integrated transformed-l1 vs L1, sparse group lasso and CGES\n\n"
                        "Reproduction of Ma, Miao, Niu & Zhang (2019), `experiments/tl1_comparison.py`. "
                        "This notebook loads the saved results (run the experiment first for the full "
                        "configuration) and shows the table and the figures."),
      new_code_cell(SETUP + '''from experiments import tl1_comparison
DATASET = "digits"
workdir = os.path.join("..", "results", "tl1_comparison")
if SMALL or not os.path.exists(os.path.join(workdir, DATASET, "results.json")):
    workdir, REDUCED = small_run(tl1_comparison)  # on digits
out = os.path.join(workdir, DATASET)
results = json.load(open(os.path.join(out, "results.json")))
show_table(os.path.join(out, "table.md"))'''),
      new_markdown_cell("## Accuracy vs. % FLOPs and % parameters over the λ grid (paper Fig. 4)"),
      new_code_cell('''for key in ("flops_fraction", "params_fraction"):
    display(Image(os.path.join(out, f"fig4_accuracy_vs_{key}.png")))'''),
      new_markdown_cell("## Convergence (Fig. 5) and the effect of a (Fig. 7)"),
      new_code_cell('''display(Image(os.path.join(out, "fig5_accuracy_vs_iteration.png")))
display(Image(os.path.join(out, "fig7_a_sweep.png")))'''),
      new_markdown_cell("## First-layer filters (Fig. 6): group sparsity removes whole filters, TL1 removes connections"),
      new_code_cell('''for name in ("group", "tl1", "integrated_tl1"):
    path = os.path.join(out, f"fig6_filters_{name}.png")
    if os.path.exists(path):
        display(Image(path, width=420))'''),
  ])


def target_sparsity():
  return new_notebook(cells=[
      new_markdown_cell("# A network with a given number of nonzero weights\n\n"
                        "`sparsejax.selection` picks the l1 strength λ that yields a target number of nonzero weights "
                        "(Shen, Wang, Xu & Yan 2024): the paper's outer loop (bracket the target, next λ = lower "
                        "median of the loss-gradient magnitudes inside the bracket) and our in-training controller "
                        "(one training). Results of `experiments/l1_selection.py` on the Mackey-Glass regression."),
      new_code_cell(SETUP + '''from experiments import l1_selection
workdir = os.path.join("..", "results", "l1_selection")
if SMALL or not os.path.exists(os.path.join(workdir, "regression", "results.json")):
    workdir, REDUCED = small_run(l1_selection)  # the regression task
out = os.path.join(workdir, "regression")
results = json.load(open(os.path.join(out, "results.json")))
show_table(os.path.join(out, "table.md"))'''),
      new_markdown_cell("## λ per training and NNZ vs λ"),
      new_code_cell('''for name in ("lambda_trajectory.png", "nnz_vs_lambda.png", "controller_lambda.png"):
    if os.path.exists(os.path.join(out, name)):
        display(Image(os.path.join(out, name)))'''),
      new_markdown_cell("## The selection rule on the paper's worked example"),
      new_code_cell('''import numpy as np
from sparsejax import selection
g = np.array([5e-8, 2e-5, 3e-4, 4e-3, 2e-2, 0.5, 6e-3])
print(selection.bracket([(1e-2, 100), (1e-7, 5000)], 2000), selection.next_strength([(1e-2, 100), (1e-7, 5000)], 2000, g))'''),
  ])


def _results_notebook(title, intro, module, subdir, images):
  return new_notebook(cells=[
      new_markdown_cell(f"# {title}\n\n{intro}"),
      new_code_cell(SETUP + f'''from experiments import {module}
workdir = os.path.join("..", "results", "{module}")
out = os.path.join(workdir, "{subdir}")
if SMALL or not os.path.exists(os.path.join(out, "results.json")):
    workdir, REDUCED = small_run({module})
    out = os.path.join(workdir, "{subdir}")
show_table(os.path.join(out, "table.md"))'''),
      new_code_cell(f'''for name in {images!r}:
    if os.path.exists(os.path.join(out, name)):
        display(Image(os.path.join(out, name)))'''),
  ])


def rvsm_curves():
  return _results_notebook(
      "RVSM (l0 / TL1) on shaky vs regular handwriting",
      "Relaxed variable splitting (`sparsejax.rvsm`) on the FC layer of a 3-conv CNN, on the generated "
      "curves of `sparsejax.data.shaky_curves` (Xue & Xin 2019). Accuracy and sparsity are measured on the sparse copy u.",
      "rvsm_curves", "shaky_curves", ["example_images.png", "training_curves_rvsm_l0.png"])


def lses_dnn():
  return _results_notebook(
      "LSES-DNN: log-sum sparsity on responses and connections",
      "Cross-validated comparison of LSES-DNN with a plain DNN, an l1 DNN, logistic regression, SVM and random "
      "forest on small-sample data (Qiao et al. 2020).",
      "lses_dnn", "", ["accuracy_by_method.png"])


def sparse_dbn():
  return _results_notebook(
      "Sparse RBM features with local and global sparsity",
      "An RBM (500 hidden units, CD-1) on MNIST with the six sparsity methods of Zhang, Zhao, Shi & Ye: plain, "
      "sparseRBM, nsRBM, L1, L_{1/2} and nsRBM + L_{1/2}; its hidden probabilities feed a linear classifier trained "
      "on 100, 500 and 1000 images per class (`experiments/sparse_dbn.py`). Without the MNIST wheel the small "
      "config falls back to scikit-learn's digits.",
      "sparse_dbn", "", ["hidden_activation_histograms.png", "filters_combined.png", "filters_rbm.png"])


def sparse_gan():
  return _results_notebook(
      "Standard vs sparse DCGAN",
      "DCGAN with and without the local + global activity sparsity of eqs. (14)-(15) (signs corrected: penalties "
      "added to the minimised losses), `experiments/sparse_gan.py`. A LeNet-5 trained by sparsejax on the same "
      "data scores the samples after every epoch (classifier-FID, Inception-style score); the table also gives "
      "loss stability. The small config uses Fashion-MNIST, or the generated curves when it is not installed.",
      "sparse_gan", "", ["fid.png", "losses.png", "samples_comparison.png"])


def frontier():
  return new_notebook(cells=[
      new_markdown_cell(
          "# The sparsity-accuracy frontier: penalties vs magnitude pruning\n\nEvery method trains the same MLP "
          "with the same optimizer, schedule and epochs, and ends at exactly the target fraction of zero kernel "
          "weights (`experiments/frontier.py`): dense, gradual magnitude pruning, one-shot pruning + fine-tuning, "
          "random pruning, and the penalties l1, TL1, log-sum and MCP driven by the NNZ controller: with the "
          "library's schedule for a run of known length (cubic target ramp, exact end, refit of the support they "
          "found), to the end of the run without a refit (`-norefit`), and followed by retraining with a fresh "
          "optimizer state (`+retrain`); `-auto` is the call with no shape argument, where the controller ties the "
          "penalty's magnitude parameter to the kept weights. Without saved results (or in the test suite) a "
          "REDUCED config runs: digits, 3 epochs, one sparsity; the table says so."),
      new_code_cell(SETUP + '''from experiments import frontier
root = os.path.join("..", "docs", "frontier")  # the measured results (one folder a setting), kept in the repository
outs = sorted(os.path.join(root, d) for d in (os.listdir(root) if os.path.isdir(root) else [])
              if os.path.exists(os.path.join(root, d, "results.json")))
if SMALL or not outs:
    workdir, REDUCED = small_run(frontier)
    outs = [os.path.join(workdir, "digits_mlp")]
for out in outs:
    show_table(os.path.join(out, "table.md"))
    display(Image(os.path.join(out, "frontier.png")))'''),
  ])


BUILDERS = (("quickstart", quickstart), ("tl1_comparison", tl1_comparison), ("target_sparsity", target_sparsity),
            ("rvsm_curves", rvsm_curves), ("lses_dnn", lses_dnn), ("sparse_dbn", sparse_dbn),
            ("sparse_gan", sparse_gan), ("frontier", frontier))


def _is_progress_noise(output):
  """Progress bars (tqdm writes them to stderr) and the terminal control codes they leave."""
  if output.get("output_type") != "stream":
    return False
  text = output.get("text", "")
  return output.get("name") == "stderr" or "\r" in text or "\x1b[" in text or "it/s]" in text


def execute(nb):
  """Runs `nb` in this folder with progress bars off and drops progress-bar outputs."""
  from nbclient import NotebookClient  # only for --execute

  os.environ.update({"TQDM_DISABLE": "1", "XLA_FLAGS": ""})
  os.environ.pop("SPARSEJAX_NOTEBOOK_SMALL", None)
  NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": HERE}}).execute()
  for cell in nb.cells:
    if cell.cell_type == "code":
      cell.outputs = [o for o in cell.outputs if not _is_progress_noise(o)]
      cell.execution_count = None
      for output in cell.outputs:
        output.pop("execution_count", None)
  return nb


if __name__ == "__main__":
  only = [a for a in sys.argv[1:] if not a.startswith("--")]  # e.g. `build_notebooks.py --execute frontier`
  for name, build in BUILDERS:
    if only and name not in only:
      continue
    nb = build()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    if "--execute" in sys.argv[1:]:
      nb = execute(nb)
    nbformat.write(nb, os.path.join(HERE, f"{name}.ipynb"))
    print("wrote", name)
