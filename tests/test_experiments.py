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
