"""Small-config runs of the experiments (the README's main job included).

Each test that reads a small run is in the pytest-xdist group of its experiment, with
that experiment's notebook test (tests/test_notebooks.py): one worker runs both, on the
session's one small run.
"""

import json
import os

import numpy as np
import pytest

pytestmark = pytest.mark.integration  # the integration tier: pytest -m integration (see README)


@pytest.mark.xdist_group("quickstart")
def test_quickstart_small_config(small_run):
  results, tmp_path = small_run("quickstart")
  assert results["test_accuracy"] > 0.9
  assert results["weight_sparsity"] > 0.5, "integrated TL1 makes most weights exactly zero"
  assert sum(results["neurons_removed"].values()) > 0, "and removes whole neurons"
  assert results["compact_max_abs_output_difference"] < 1e-4
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f)["weights_nonzero"] == results["weights_nonzero"]
  for name in ("training_curves.png", "sparsity_per_layer.png", "first_layer.png", "log.jsonl"):
    assert os.path.getsize(os.path.join(tmp_path, name)) > 0


@pytest.mark.xdist_group("tl1_comparison")
def test_tl1_comparison_small_config(small_run):
  out, tmp_path = small_run("tl1_comparison")
  summary = out["summary"]
  assert set(summary) == {"none", "tl1", "integrated_tl1"}
  assert summary["none"]["params_fraction"][0] == 1.0
  assert summary["integrated_tl1"]["params_fraction"][0] < 1.0, "the regulariser makes exact zeros"
  assert all(0.5 < s["accuracy"][0] <= 1.0 for s in summary.values())
  assert set(out["chosen_lambda"]) >= {"tl1", "integrated_tl1"}
  files = os.listdir(tmp_path / "digits")
  for name in ("results.json", "table.md", "lambda_grid.json", "a_sweep.json", "fig7_a_sweep.png",
               "fig4_accuracy_vs_flops_fraction.png", "fig5_accuracy_vs_iteration.png"):
    assert name in files
  with open(tmp_path / "digits" / "table.md") as f:
    table = f.read()
  assert "integrated TL1" in table and "Table 3" in table


@pytest.mark.xdist_group("l1_selection")
def test_l1_selection_small_config(small_run):
  out, tmp_path = small_run("l1_selection")
  single, layer, ctrl = out["single"], out["layerwise"], out["controller"]
  assert single["converged"] and abs(single["nnz"] - 1500) <= 30
  assert layer["converged"] and sum(abs(n - t) <= 0.1 * t for n, t in zip(layer["nnz"], [500, 700, 500, 30])) >= 3
  assert ctrl["trainings"] == 1 and abs(ctrl["nnz"] - 1500) <= 0.1 * 1500
  for name in ("results.json", "table.md", "history_single.jsonl", "lambda_trajectory.png", "nnz_vs_lambda.png"):
    assert os.path.exists(os.path.join(tmp_path, "regression", name))


@pytest.mark.slow
def test_l1_selection_mnist_cnn8_reduced():
  """CNN8 on an MNIST subset, one epoch per training (the paper: up to 200 epochs on all of MNIST)."""
  import tempfile

  from experiments import l1_selection
  out = l1_selection.main(["--task", "mnist", "--workdir", tempfile.mkdtemp(), "--epochs", "1",
                           "--max-train-examples", "5000", "--target", "50000", "--r", "0.01",
                           "--studies", "single", "--max-trainings", "12"])
  assert out["single"]["converged"]


@pytest.mark.xdist_group("rvsm_curves")
def test_rvsm_curves_small_config(small_run):
  out, tmp_path = small_run("rvsm_curves")
  methods = out["methods"]
  assert methods["plain"]["fc_zero_fraction"] == 0.0
  assert methods["rvsm_l0"]["fc_zero_fraction"] > 0.5, "RVSM's sparse copy u has exact zeros"
  assert all(m["test_accuracy"] > 0.55 for m in methods.values())
  assert os.path.exists(os.path.join(tmp_path, "shaky_curves", "example_images.png"))


@pytest.mark.xdist_group("lses_dnn")
def test_lses_dnn_small_config(small_run):
  out, tmp_path = small_run("lses_dnn")
  summary = out["datasets"]["breast_cancer"]["summary"]
  assert set(summary) == {"lses", "dnn", "l1_dnn", "logreg", "svm", "rf"}
  assert all(s["accuracy"][0] > 0.85 for s in summary.values())
  assert summary["lses"]["connection_sparsity"][0] > summary["dnn"]["connection_sparsity"][0]
  assert os.path.exists(os.path.join(tmp_path, "table.md"))


@pytest.mark.xdist_group("sparse_dbn")
def test_sparse_dbn_small_config(small_run):
  from experiments import common
  if not common.dataset_available("mnist"):
    pytest.skip("MNIST not installed offline (scripts/get_offline_data.sh installs it)")
  out, tmp_path = small_run("sparse_dbn")
  rbm_run, combined = out["methods"]["rbm"], out["methods"]["combined"]
  assert rbm_run["classifier"][50]["test_error"] < 40
  assert combined["mean_hidden_activation"] < rbm_run["mean_hidden_activation"], "sparsity lowers activations"
  assert rbm_run["reconstruction_error"][-1] < rbm_run["reconstruction_error"][0]
  for name in ("table.md", "hidden_activation_histograms.png", "filters_combined.png"):
    assert os.path.exists(os.path.join(tmp_path, name))


@pytest.mark.xdist_group("sparse_gan")
def test_sparse_gan_small_config_writes_grids_curves_and_scores(small_run):
  from experiments import sparse_gan
  out, tmp_path = small_run("sparse_gan")
  args = ["--workdir", str(tmp_path)] + sparse_gan.small_config_args()
  assert set(out["runs"]) == {"standard_seed0", "sparse_x0.1_seed0"}
  for run in out["runs"].values():
    assert len(run["history"]) == 2 and np.all(np.isfinite([r["d_loss"] for r in run["history"]]))
    assert run["fid_final"] > 0 and 1.0 <= run["inception_score_final"] <= 10.0
    assert [s["step"] for s in run["steps"]] == list(range(1, 9)), "a loss record every step"
  assert out["runs"]["standard_seed0"]["history"][-1]["g_penalty"] == 0.0
  assert out["runs"]["sparse_x0.1_seed0"]["history"][-1]["g_penalty"] != 0.0
  assert out["real_train_vs_test"]["fid"] < out["runs"]["standard_seed0"]["fid_final"], "real images score best"
  for name in ("table.md", "results.json", "results.csv", "losses.png", "fid.png", "samples_comparison.png",
               "standard_seed0/samples/epoch_001.png", "sparse_x0.1_seed0/samples/epoch_002.png",
               "sparse_x0.1_seed0/steps.jsonl"):
    assert os.path.getsize(os.path.join(tmp_path, name)) > 0
  # Resuming a finished run trains nothing more and reproduces the scores exactly.
  again = sparse_gan.main(args + ["--resume"])
  assert again["runs"]["sparse_x0.1_seed0"]["fid_final"] == out["runs"]["sparse_x0.1_seed0"]["fid_final"]


@pytest.mark.slow
def test_sparse_gan_fashion_mnist_reproduction(tmp_path):
  """The README's run for one seed (about 20 min on 2 CPU cores): the standard DCGAN learns (classifier-FID
  under 15 after 5 epochs) and the 0.1x-strength sparse GAN matches it with more zero generator activations."""
  from experiments import sparse_gan
  out = sparse_gan.main(["--workdir", str(tmp_path), "--epochs", "5", "--lambda-scales", "0.1", "--no-progress"])
  standard, sparse = out["runs"]["standard_seed0"], out["runs"]["sparse_x0.1_seed0"]
  assert standard["fid_final"] < 15 and sparse["fid_final"] < 15
  assert sparse["g_zero_activation_fraction"] > standard["g_zero_activation_fraction"] + 0.05


@pytest.mark.xdist_group("frontier")
def test_frontier_small_config_matches_sparsity_exactly_and_resumes(small_run):
  from experiments import frontier
  out, tmp_path = small_run("frontier")
  args = ["--workdir", str(tmp_path)] + frontier.small_config_args()
  runs = {r["method"]: r for r in out["runs"]}
  assert set(runs) == {"dense", "gmp", "one_shot", "random", "l1", "integrated_tl1", "tl1-norefit", "tl1+retrain",
                       "tl1-auto", "rigl", "set", "ac_dc", "ste", "st3", "scad-ste"}
  assert runs["dense"]["sparsity"] < 0.01
  for method in ("gmp", "one_shot", "random", "l1", "integrated_tl1", "tl1-norefit", "tl1+retrain", "tl1-auto",
                 "rigl", "ac_dc", "ste", "st3", "scad-ste"):
    assert abs(runs[method]["sparsity"] - 0.9) <= 0.01 * 0.1, (method, runs[method]["sparsity"])  # +-1% of the count
  # SET's mask count is exact; a weight it grows from an always-zero pixel stays 0, so it may have more zeros
  assert 0.9 - 1e-3 <= runs["set"]["sparsity"] < 0.95
  assert runs["gmp"]["accuracy"] > runs["random"]["accuracy"]
  assert out["reduced_config"]
  directory = tmp_path / "digits_mlp"
  for name in ("results.json", "results.csv", "table.md", "frontier.png"):
    assert os.path.getsize(directory / name) > 0
  with open(directory / "table.md") as f:
    assert "REDUCED config" in f.read()
  # FLOPs view: an MLP has one output position per layer, so its FLOPs fraction is its density
  for summary in out["summary"]:
    assert summary["flops_fraction_mean"] == pytest.approx(1.0 - summary["sparsity_mean"], abs=1e-9)
  with open(directory / "table.md") as f:
    assert "FLOPs of the sparse kernels" in f.read()
  again = frontier.main(args)  # resumes: every run is already in results.json
  assert [r["wall_time_s"] for r in again["runs"]] == [r["wall_time_s"] for r in out["runs"]]


@pytest.mark.xdist_group("resnet_sparsity")
def test_resnet_sparsity_small_config(small_run):
  out, tmp_path = small_run("resnet_sparsity")
  runs = {r["method"]: r for r in out["runs"]}
  assert set(runs) == {"dense", "group_lasso", "integrated_tl1", "bn_slimming", "bn_slimming_coupled"}
  assert sum(runs["dense"]["neurons_removed"].values()) == 0
  assert sum(runs["group_lasso"]["neurons_removed"].values()) > 0   # strong groups remove channels
  assert sum(runs["bn_slimming"]["neurons_removed"].values()) > 0   # zero BatchNorm scales: constant channels
  assert runs["bn_slimming_coupled"]["neurons_removed"]["stem"] > 0   # whole stream channels
  for run in runs.values():
    assert run["compact_max_output_difference"] < 1e-4
    assert run["kernel_entries"][1] <= run["kernel_entries"][0]
  for name in ("results.json", "table.md", "channels.png"):
    assert os.path.getsize(tmp_path / name) > 0
  with open(tmp_path / "table.md") as f:
    assert f.read().startswith("*Reduced configuration.*")


def test_frontier_flops_per_layer_are_hand_counts():
  from experiments import frontier
  # LeNet-5 on 28x28: conv 5x5x1x6 SAME (28x28 outputs), conv 5x5x6x16 VALID after 2x2 pooling (10x10),
  # then Dense 400x120, 120x84, 84x10; 2 FLOPs per weight per output position
  lenet = frontier.layer_flops("lenet5", 10, np.zeros((1, 28, 28, 1), np.float32))
  assert lenet == [2 * 150 * 784, 2 * 2400 * 100, 2 * 48000, 2 * 10080, 2 * 840]
  assert frontier.flops_fraction([1.0, 0.0, 0.0, 0.0, 0.0], lenet) == pytest.approx(235200 / 833040)
  assert frontier.layer_flops("mlp", 10, np.zeros((1, 28, 28, 1), np.float32)) == [2 * 235200, 2 * 30000, 2 * 1000]


def test_frontier_table_names_the_seeds_each_method_ran():
  from experiments import frontier
  summary = [{"method": "gmp", "runs": 3}, {"method": "tl1", "runs": 2}, {"method": "scad-auto", "runs": 3}]
  assert frontier._seeds_run(summary, 3) == "the seeds run (3 for gmp, scad-auto; 2 for tl1)"
  assert frontier._seeds_run(summary[:1], 3) == "3 seed(s)"
