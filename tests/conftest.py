"""Test set-up: 2 fake CPU devices (multi-device code paths); float64 only where a test asks for it.

The library runs in its users' default precision, float32: a test that needs float64
(a brute-force optimality check to 1e-10, an exact worked example) is marked
`@pytest.mark.float64` (or its module sets `pytestmark`), and runs under
`jax.enable_x64(True)`. The suite draws random numbers with the
non-partitionable threefry (JAX's default before 0.5): on XLA:CPU it compiles about 2.5x
faster for every new shape (flax initialisers: ~2 s per kernel shape otherwise), which
was the larger part of many tests' time. The environment variable reaches the
subprocesses that tests start, so their streams match the in-process references.

Compiled programs go to a persistent compilation cache in a temporary folder for the
session (removed at exit): many tests train the same small models with the same
step, and each `fit` builds new closures, so jit's in-memory cache misses where XLA's
cache keyed on the program itself hits (test_gan.py: 178 s -> 100 s).
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_THREEFRY_PARTITIONABLE", "0")

import jax  # noqa: E402

_COMPILATION_CACHE = tempfile.mkdtemp(prefix="sparsejax-test-xla-cache-")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

import importlib  # noqa: E402

import pytest  # noqa: E402

SMALL_RUN_MARKER = "small_config_done"


@pytest.fixture(autouse=True)
def _float64_if_marked(request):
  """float64 for a test marked `float64`; JAX's default (float32) for every other test."""
  if request.node.get_closest_marker("float64") is None:
    yield
    return
  if hasattr(jax, "enable_x64"):
    context = jax.enable_x64(True)
  else:  # JAX < 0.8
    from jax.experimental import enable_x64  # pylint: disable=import-outside-toplevel
    context = enable_x64(True)
  with context:
    yield


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
  """`small_run(name)` -> (main's result, workdir) of `experiments.<name>`'s small config, run once a session.

  The experiment tests assert on these runs, and the notebook tests display them (through
  SPARSEJAX_NOTEBOOK_RESULTS) instead of training the same small config a second time.
  """
  root = tmp_path_factory.mktemp("small_runs")
  done = {}

  def run(name: str):
    if name not in done:
      module = importlib.import_module(f"experiments.{name}")
      workdir = root / name
      result = module.main(["--workdir", str(workdir)] + module.small_config_args())
      (workdir / SMALL_RUN_MARKER).write_text(" ".join(module.small_config_args()))
      done[name] = (result, workdir)
    return done[name]

  run.root = root
  return run
