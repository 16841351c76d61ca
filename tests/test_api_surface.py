"""The public surface changes only on purpose: each public module's `__all__` is compared with a snapshot.

After an intended change, regenerate the snapshot with
``python -m tests.test_api_surface`` and commit `tests/api_surface.json` with the change.
"""

import importlib
import json
import pathlib
import pkgutil

import pytest

SNAPSHOT = pathlib.Path(__file__).with_name("api_surface.json")


def public_surface() -> dict[str, list[str]]:
  """{module: sorted names in its __all__} for every public module of sparsejax."""
  import sparsejax
  surface = {"sparsejax": sorted(sparsejax.__all__)}
  for info in pkgutil.walk_packages(sparsejax.__path__, "sparsejax."):
    if any(part.startswith("_") for part in info.name.split(".")):
      continue
    module = importlib.import_module(info.name)
    surface[info.name] = sorted(getattr(module, "__all__", []))
  return surface


def test_every_public_module_declares_all_and_the_names_exist():
  for name, names in public_surface().items():
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_public_surface_matches_the_snapshot():
  want = json.loads(SNAPSHOT.read_text())
  got = public_surface()
  changes = []
  for name in sorted(set(want) | set(got)):
    added = sorted(set(got.get(name, [])) - set(want.get(name, [])))
    removed = sorted(set(want.get(name, [])) - set(got.get(name, [])))
    if added or removed:
      changes.append(f"{name}: added {added}, removed {removed}")
  assert not changes, ("the public API changed; if on purpose, run `python -m tests.test_api_surface` and commit "
                       "tests/api_surface.json:\n" + "\n".join(changes))


if __name__ == "__main__":
  SNAPSHOT.write_text(json.dumps(public_surface(), indent=1, sort_keys=True) + "\n")
  print(f"wrote {SNAPSHOT}")


@pytest.mark.parametrize("module, name, home, home_name", [
    ("selection", "nnz_controller", "controller", "nnz_controller"),
    ("selection", "nnz_controller_for", "controller", "nnz_controller_for"),
    ("transforms", "rvsm", "rvsm", "rvsm"), ("transforms", "rvsm_sparse_params", "rvsm", "sparse_params"),
    ("transforms", "weights_only", "masking", "weights_only"), ("transforms", "layer_index", "masking", "layer_index"),
    ("train", "NonFiniteLossError", "runloop", "NonFiniteLossError"), ("train", "PeerLostError", "runloop", "PeerLostError"),
])
def test_a_moved_name_still_works_once_with_a_deprecation_warning_naming_its_home(module, name, home, home_name):
  old, new = importlib.import_module(f"sparsejax.{module}"), importlib.import_module(f"sparsejax.{home}")
  assert name not in old.__all__
  with pytest.warns(DeprecationWarning, match=rf"sparsejax\.{module}\.{name} is deprecated: .* sparsejax\.{home}\.{home_name}"):
    assert getattr(old, name) is getattr(new, home_name)
  with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
    old.no_such_name  # noqa: B018
