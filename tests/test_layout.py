"""The house rules of the code base, checked: layers, imports, packaging, no references outside it.

Layers (dependencies point one way, see docs/architecture.md):
  core      penalties, prox, registry, masking, transforms, rvsm, pruning,
            controller, selection, optimizers, activity, lses (+ private helpers
            and records): imports only jax, optax, chex, numpy and the stdlib.
  data      loaders, generators, batching: numpy/jax; optional packages lazily.
  models    flax modules.
  analysis  metrics, structure, compaction, sample_quality: core and models.
  training  runloop, train, gan: everything but plotting.
  plotting  matplotlib figures.
"""

import ast
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sparsejax"

LAYERS = {
    "core": {"_checks", "_example_keys", "_hyper", "_numerics", "registry", "penalties", "prox", "masking", "transforms", "rvsm",
             "magnitudes", "patterns", "pattern_prox", "pruning", "dst", "ste",
             "controller", "selection", "optimizers", "activity", "lses", "records"},
    "data": {"data"},
    "models": {"models"},
    "analysis": {"metrics", "compaction", "sample_quality", "structure"},
    "training": {"runloop", "train", "gan", "dbn"},
    "plotting": {"plotting"},
}
MAY_IMPORT = {
    "core": {"core"},
    "data": {"data"},
    "models": {"models"},
    "analysis": {"core", "models", "analysis"},
    "training": {"core", "data", "models", "analysis", "training", "plotting"},
    "plotting": {"plotting"},
}
THIRD_PARTY = {  # allowed at module level, per layer
    "core": {"jax", "optax", "chex", "numpy"},
    "data": {"jax", "numpy"},
    "models": {"jax", "flax", "numpy"},
    "analysis": {"jax", "flax", "numpy"},
    "training": {"jax", "flax", "numpy", "optax", "orbax", "tqdm"},
    "plotting": {"numpy", "matplotlib"},
}
STDLIB = set(sys.stdlib_module_names)


def _layer_of(module: str) -> str:
  first = module.split(".")[0]
  for layer, members in LAYERS.items():
    if first in members:
      return layer
  raise AssertionError(f"sparsejax.{module} belongs to no layer; add it to LAYERS (and docs/architecture.md)")


def _modules():
  for path in sorted(PACKAGE.rglob("*.py")):
    rel = path.relative_to(PACKAGE).with_suffix("")
    if rel.name == "__init__" and rel.parent == pathlib.Path("."):
      continue
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    yield ".".join(parts), path


def _imports(path):
  """(module imported, at module level?) for every import statement in the file."""
  tree = ast.parse(path.read_text())
  top_level = {id(node) for node in tree.body}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield alias.name, id(node) in top_level
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      if node.module == "sparsejax":
        for alias in node.names:
          yield f"sparsejax.{alias.name}", id(node) in top_level
      else:
        yield node.module, id(node) in top_level


@pytest.mark.parametrize("module,path", list(_modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_dependencies_point_one_way(module, path):
  layer = _layer_of(module)
  for imported, top in _imports(path):
    root = imported.split(".")[0]
    if root == "sparsejax":
      target = imported.split(".", 1)[1] if "." in imported else None
      if target is None:
        continue
      assert _layer_of(target) in MAY_IMPORT[layer], f"{module} ({layer}) imports sparsejax.{target}"
      assert not target.split(".")[-1].startswith("_") or target.split(".")[0].startswith("_"), imported
    elif root in STDLIB or root == "__future__":
      continue
    elif top:
      assert root in THIRD_PARTY[layer], f"{module} ({layer}) imports {imported} at module level"
    else:
      assert layer == "data", f"{module} imports {imported} inside a function (only data loaders do, lazily)"


def test_no_module_imports_another_modules_private_names():
  for module, path in _modules():
    tree = ast.parse(path.read_text())
    module_aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sparsejax"):
        for alias in node.names:
          assert not alias.name.startswith("_") or node.module == "sparsejax", (module, node.module, alias.name)
          if node.module == "sparsejax" or node.module.endswith((".data", ".models")):
            module_aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in module_aliases:
        assert not node.attr.startswith("_"), f"{module} uses {node.value.id}.{node.attr}"


def test_light_import_of_the_core():
  code = ("import sys, sparsejax.prox, sparsejax.transforms, sparsejax.optimizers, sparsejax.selection\n"
          "heavy = [m for m in ('orbax', 'matplotlib', 'sklearn', 'tqdm', 'flax', 'tensorflow', 'scipy') "
          "if any(k == m or k.startswith(m + '.') for k in sys.modules)]\n"
          "print(','.join(heavy))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert out.stdout.strip() == "", f"importing the core loaded {out.stdout.strip()}"


def test_experiments_are_not_installed_and_version_has_one_source():
  text = (ROOT / "pyproject.toml").read_text()
  assert 'include = ["sparsejax*"]' in text and "experiments*" not in text
  assert 'dynamic = ["version"]' in text
  assert 'version = { attr = "sparsejax.__version__" }' in text
  import sparsejax
  assert sparsejax.__version__ in (ROOT / "CHANGELOG.md").read_text()
  assert (PACKAGE / "py.typed").exists()
  for name in ("LICENSE", "CHANGELOG.md", ".pre-commit-config.yaml"):
    assert (ROOT / name).exists(), name


def test_no_reference_points_outside_the_repository():
  banned = ("MATH.md", "DESIGN.md", "STYLE.md", "../shared", "seeds/", "seed 00")
  for path in ROOT.rglob("*"):
    if path.suffix not in (".py", ".md", ".ipynb", ".toml", ".txt", ".rst", ".cfg") or not path.is_file():
      continue
    if any(part in ("results", ".git", "_build", "sparsejax.egg-info") for part in path.parts) or path == pathlib.Path(__file__):
      continue
    text = path.read_text(errors="ignore")
    for word in banned:
      assert word not in text, f"{path.relative_to(ROOT)} mentions {word!r}"
