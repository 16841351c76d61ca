"""Small-config runs of the experiments (the README's main job included)."""

import json
import os

from experiments import quickstart


def test_quickstart_small_config(tmp_path):
  results = quickstart.main(["--epochs", "40", "--workdir", str(tmp_path)])
  assert results["test_accuracy"] > 0.9
  assert results["weight_sparsity"] > 0.5, "integrated TL1 makes most weights exactly zero"
  assert sum(results["neurons_removed"].values()) > 0, "and removes whole neurons"
  assert results["compact_max_abs_output_difference"] < 1e-4
  with open(os.path.join(tmp_path, "results.json")) as f:
    assert json.load(f)["weights_nonzero"] == results["weights_nonzero"]
  for name in ("training_curves.png", "sparsity_per_layer.png", "first_layer.png", "log.jsonl"):
    assert os.path.getsize(os.path.join(tmp_path, name)) > 0


def test_tl1_comparison_small_config(tmp_path):
  from experiments import tl1_comparison
  out = tl1_comparison.main(["--dataset", "digits", "--workdir", str(tmp_path), "--seeds", "0", "1",
                             "--epochs", "4", "--regularizers", "none", "tl1", "group", "integrated_tl1",
                             "--a-grid", "0.01", "1.0", "--max-train-examples", "600"])
  summary = out["summary"]
  assert set(summary) == {"none", "tl1", "group", "integrated_tl1"}
  assert summary["none"]["params_fraction"][0] == 1.0
  assert summary["integrated_tl1"]["params_fraction"][0] < 1.0, "the regulariser makes exact zeros"
  assert all(0.5 < s["accuracy"][0] <= 1.0 for s in summary.values())
  assert set(out["chosen_lambda"]) >= {"tl1", "group", "integrated_tl1"}
  files = os.listdir(tmp_path / "digits")
  for name in ("results.json", "table.md", "lambda_grid.json", "a_sweep.json", "fig7_a_sweep.png",
               "fig4_accuracy_vs_flops_fraction.png", "fig5_accuracy_vs_iteration.png"):
    assert name in files
  with open(tmp_path / "digits" / "table.md") as f:
    table = f.read()
  assert "integrated TL1" in table and "Table 3" in table
