"""CompactModel: one return type, save in this process, load in another without the model's class."""

import errno
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparsejax import compaction
from sparsejax.models import MLP

LOADER = """
import sys, numpy as np
from sparsejax import compaction
cm = compaction.load(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], np.asarray(cm(x)))
np.save(sys.argv[4], np.asarray(cm(x[:1])))
print(type(cm).__name__, cm.module is None, cm.input_shape, sorted(cm.kept_units))
"""


class UserCNN(nn.Module):
  """A linen CNN the library did not write."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3))(x))
    x = nn.max_pool(x, (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(10)(nn.relu(nn.Dense(48)(x)))


class UserNNX(nnx.Module):
  """An NNX model the library did not write."""

  def __init__(self, rngs):
    self.hidden = nnx.Linear(12, 32, rngs=rngs)
    self.out = nnx.Linear(32, 4, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.hidden(x)))


def _sparsify(tree, fraction, seed):
  """Zeros `fraction` of every kernel entry at random (biases stay)."""
  keys = iter(jax.random.split(jax.random.key(seed), len(jax.tree.leaves(tree))))
  return jax.tree.map(lambda a: jnp.where(jax.random.uniform(next(keys), a.shape) < fraction, 0.0, a)
                      if a.ndim >= 2 else a, tree)


def _mlp():
  model = MLP((64, 32, 10))
  params = _sparsify(model.init(jax.random.key(0), jnp.ones((1, 20)))["params"], 0.8, 1)
  params["Dense_0"]["kernel"] = params["Dense_0"]["kernel"].at[:, :24].set(0.0)  # 24 dead units
  return (lambda x: model.apply({"params": params}, x)), compaction.compact(model, params, (20,)), (20,)


def _linen_cnn():
  model = UserCNN()
  variables = _sparsify(model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1))), 0.9, 2)
  kernel = variables["params"]["Conv_0"]["kernel"]
  variables["params"]["Conv_0"]["kernel"] = kernel.at[..., :6].set(0.0)
  return (lambda x: model.apply(variables, x)), compaction.compact(model, variables, (8, 8, 1)), (8, 8, 1)


def _nnx():
  model = UserNNX(nnx.Rngs(0))
  model.hidden.kernel[...] = model.hidden.kernel[...].at[:, :20].set(0.0)
  model.out.kernel[...] = np.where(np.random.default_rng(3).random((32, 4)) < 0.5, 0.0, model.out.kernel[...])
  return model, compaction.compact(model, input_shape=(12,)), (12,)


@pytest.mark.integration  # trains or compiles for many seconds: the integration tier
@pytest.mark.parametrize("make", [_mlp, _linen_cnn, _nnx], ids=["builtin_mlp", "linen_cnn", "nnx"])
def test_saved_model_loads_in_another_process_with_equal_outputs(make, tmp_path):
  sparse_model, cm, shape = make()
  assert isinstance(cm, compaction.CompactModel)
  assert cm.kernel_sizes[1] < cm.kernel_sizes[0]
  x = np.random.default_rng(7).normal(size=(37, *shape)).astype(np.float32)
  want = np.asarray(sparse_model(x))
  np.testing.assert_allclose(np.asarray(cm(x)), want, atol=1e-5, rtol=1e-5)
  size = cm.save(tmp_path / "model.npz")
  assert size == os.path.getsize(tmp_path / "model.npz")
  np.save(tmp_path / "x.npy", x)
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_ENABLE_X64")}
  out = subprocess.run([sys.executable, "-c", LOADER, str(tmp_path / "model.npz"), str(tmp_path / "x.npy"),
                        str(tmp_path / "y37.npy"), str(tmp_path / "y1.npy")],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split()[:2] == ["CompactModel", "True"]
  np.testing.assert_allclose(np.load(tmp_path / "y37.npy"), want, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.load(tmp_path / "y1.npy"), want[:1], atol=1e-5, rtol=1e-5)


def test_load_in_this_process_keeps_metadata_and_any_batch(tmp_path):
  _, cm, shape = _linen_cnn()
  cm.save(tmp_path / "cnn.npz")
  loaded = compaction.load(tmp_path / "cnn.npz")
  assert loaded.input_shape == shape and loaded.input_dtype == "float32"
  assert loaded.kernel_sizes == cm.kernel_sizes
  assert set(loaded.kept_units) == set(cm.kept_units)
  for name in cm.kept_units:
    np.testing.assert_array_equal(loaded.kept_units[name], cm.kept_units[name])
  for batch in (1, 5, 64):
    x = np.random.default_rng(batch).normal(size=(batch, *shape))  # float64 in: cast to the saved dtype
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(cm(x.astype(np.float32))), atol=1e-6)
  jax.tree.map(np.testing.assert_array_equal, loaded.params, jax.tree.map(np.asarray, cm.params))


def test_unstructured_zeros_are_stored_as_values_and_indices(tmp_path):
  """A 95 %-sparse CNN whose units all survive: its file is a small fraction of the dense one's."""
  model = UserCNN()
  dense_vars = model.init(jax.random.key(0), jnp.ones((1, 8, 8, 1)))
  sparse_vars = _sparsify(dense_vars, 0.95, 4)
  dense = compaction.compact(model, dense_vars, (8, 8, 1), channel_multiple=1)
  sparse = compaction.compact(model, sparse_vars, (8, 8, 1), channel_multiple=1)
  dense_bytes = dense.save(tmp_path / "dense.npz")
  sparse_bytes = sparse.save(tmp_path / "sparse.npz")
  kernel_bytes = 4 * dense.kernel_sizes[0]
  assert dense_bytes > kernel_bytes  # the dense file holds every kernel entry
  assert sparse_bytes < 0.25 * dense_bytes, (sparse_bytes, dense_bytes)
  with np.load(tmp_path / "sparse.npz") as archive:
    meta = json.loads(archive["meta"].tobytes().decode())
  assert {leaf["storage"] for leaf in meta["leaves"]} == {"sparse"}
  x = np.random.default_rng(0).normal(size=(9, 8, 8, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(compaction.load(tmp_path / "sparse.npz")(x)),
                             np.asarray(model.apply(sparse_vars, x)), atol=1e-5)


def test_bfloat16_params_round_trip_bit_exactly(tmp_path):
  model = MLP((8, 3))
  params = model.init(jax.random.key(0), jnp.ones((1, 5)))["params"]
  cm = compaction.compact(model, params, (5,))
  cm.params = jax.tree.map(lambda a: a.astype(jnp.bfloat16), cm.params)
  arrays, leaves = compaction._encode_params(cm.params)
  decoded = compaction._decode_params(arrays, leaves)
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a).view(np.uint16), np.asarray(b).view(np.uint16)),
               decoded, cm.params)
  assert {leaf["dtype"] for leaf in leaves} == {"bfloat16"}


def test_bad_files_and_inputs_are_clear_errors(tmp_path):
  _, cm, _ = _mlp()
  cm.save(tmp_path / "m.npz")
  loaded = compaction.load(tmp_path / "m.npz")
  with pytest.raises(ValueError, match=r"x must have shape \(batch, \*\(20,\)\)"):
    loaded(np.ones((3, 21), np.float32))
  with pytest.raises(ValueError, match="x must have shape"):
    loaded(np.ones(20, np.float32))
  np.savez(tmp_path / "other.npz", a=np.ones(3))
  with pytest.raises(ValueError, match="is not a saved CompactModel"):
    compaction.load(tmp_path / "other.npz")
  (tmp_path / "text.npz").write_text("not an archive")
  with pytest.raises(ValueError, match="is not a saved CompactModel"):
    compaction.load(tmp_path / "text.npz")
  with pytest.raises(FileNotFoundError):
    compaction.load(tmp_path / "missing.npz")
  bare = compaction.CompactModel(cm.params, cm.apply, cm.kept_units, cm.kernel_sizes)
  with pytest.raises(ValueError, match="no input_shape"):
    bare.save(tmp_path / "bare.npz")


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
  """A full disk mid-write: the old file at the path stays whole and no temporary file is left."""
  _, cm, _ = _mlp()
  path = tmp_path / "m.npz"
  cm.save(path)
  before = path.read_bytes()

  def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
  monkeypatch.setattr(np, "savez", full_disk)
  with pytest.raises(OSError, match="No space left"):
    cm.save(path)
  assert path.read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]


def test_repr_is_a_summary_not_the_weights():
  _, cm, _ = _mlp()
  text = repr(cm)
  assert text.startswith("CompactModel(input_shape=(20,)") and "module=MLP" in text and len(text) < 400
