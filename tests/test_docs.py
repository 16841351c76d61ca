"""The documentation site builds offline with warnings as errors, and the docstring examples run."""

import doctest
import importlib
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Every module whose docstrings carry examples.
DOCTEST_MODULES = ["sparsejax.prox", "sparsejax.penalties", "sparsejax.registry", "sparsejax.transforms",
                   "sparsejax.optimizers", "sparsejax.masking", "sparsejax.pruning", "sparsejax.controller",
                   "sparsejax.selection", "sparsejax.rvsm", "sparsejax.records"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples_run(name):
  module = importlib.import_module(name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0


def test_every_public_prox_and_transform_has_math_and_an_example():
  from sparsejax import registry
  for name in registry.names():
    doc = registry.get(name).prox.__doc__
    assert ".. math::" in doc and ">>>" in doc and "References:" in doc, name


def test_sphinx_site_builds_offline_without_warnings(tmp_path):
  pytest.importorskip("sphinx")
  pytest.importorskip("myst_nb")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
  out = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q", str(ROOT / "docs"),
                        str(tmp_path / "html")], capture_output=True, text=True, env=env, cwd=ROOT)
  assert out.returncode == 0, out.stderr[-4000:]
  for page in ("index", "api", "penalties", "methods", "architecture", "reproductions", "notebooks/quickstart"):
    assert (tmp_path / "html" / f"{page}.html").exists(), page
  api = (tmp_path / "html" / "api.html").read_text()
  assert "sparsejax.prox.tl1" in api and "math notranslate" in api
