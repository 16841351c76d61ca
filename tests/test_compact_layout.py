"""The compact computation's channel layouts: residual streams without re-layout, whole-batch replay.

`compaction.compact_any` gives every set of values that elementwise ops combine (a
residual stream: the stem, each branch's last BatchNorm, every add and ReLU) one
channel layout, grown to a multiple of `channel_multiple`, and replays the model's
jaxpr traced at the caller's batch size. These tests check that outputs stay exact
on networks whose BatchNorm scales were zeroed at random (network slimming leaves
different channels alive in every writer of a stream), that no activation is
re-laid out (the compact jaxpr has no matmul but the model's own Dense layers), that
channel counts are multiples of the requested one, and that a model whose jaxpr
changes with the batch size falls back to one example at a time, still exact.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sparsejax import compaction, metrics, structure
from sparsejax.models import ResNet

pytestmark = pytest.mark.integration  # trains models: the integration tier (see README)


def _slimmed_resnet(fraction: float, seed: int, stages=(1, 1, 1), widths=(16, 32, 64)):
  """A ResNet whose BatchNorm scales are zero on `fraction` of the channels of every BN (shift kept)."""
  rng = np.random.default_rng(seed)
  model = ResNet(stages, widths, 10)
  variables = jax.tree.map(np.array, dict(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 16, 16, 1)))))

  def walk(tree):
    for value in tree.values():
      if isinstance(value, dict) and "scale" in value:
        n = value["scale"].size
        value["scale"][rng.choice(n, int(round(fraction * n)), replace=False)] = 0.0
        value["bias"][:] = rng.normal(size=n) * 0.3
      elif isinstance(value, dict):
        walk(value)
  walk(variables["params"])
  for stats in jax.tree.leaves(variables["batch_stats"]):
    stats[:] = np.abs(rng.normal(size=stats.shape)) + 0.5
  return model, variables


def _dot_count(small, x) -> int:
  jaxpr = jax.make_jaxpr(small.apply)(small.params, x)
  count = 0

  def visit(j):
    nonlocal count
    for eqn in j.eqns:
      count += eqn.primitive.name == "dot_general"
      for key in ("jaxpr", "call_jaxpr"):
        if key in eqn.params:
          inner = eqn.params[key]
          visit(inner.jaxpr if hasattr(inner, "jaxpr") else inner)
  visit(jaxpr.jaxpr)
  return count


@pytest.mark.parametrize("multiple", [1, 8])
@pytest.mark.parametrize("fraction,seed", [(0.25, 0), (0.5, 1), (0.75, 2)])
def test_slimmed_resnet_compacts_exactly_without_relayout(fraction, seed, multiple):
  model, variables = _slimmed_resnet(fraction, seed)
  small = compaction.compact_any(model, variables, (16, 16, 1), channel_multiple=multiple)
  x = np.random.default_rng(seed).normal(size=(5, 16, 16, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model.apply(variables, x)), atol=1e-5, rtol=1e-5)
  assert _dot_count(small, x) == 1  # the head only: no activation is moved between layouts
  report = metrics.report(model, variables, (16, 16, 1))
  assert report["flops_sparse"] < report["flops_dense"]
  found = metrics.analyze_model(model, variables, (16, 16, 1))
  for op in found.ops:
    if op.name in small.params and op.units_removable is not None:
      width = small.params[op.name].shape[op.out_axis]
      kept = int((~op.units_removable).sum())
      assert width >= kept
      assert width == op.units_removable.size or width % multiple == 0


def test_one_stream_one_layout():
  model, variables = _slimmed_resnet(0.5, 3, stages=(2,), widths=(16,))
  found = metrics.analyze_model(model, variables, (16, 16, 1))
  t = found.trace
  sliceable = set(t.op_of_eqn)
  layouts = structure._channel_layouts(t, sliceable, 1)
  adds = [e for e in t.eqns if e.prim.name == "add" and all(not isinstance(a, tuple) and t.unk[a].any()
                                                             for a in e.ins)]
  assert len(adds) == 2  # the two residual adds
  stream = {None if layouts.get(v) is None else tuple(layouts[v]) for e in adds for v in (*e.ins, *e.outs)}
  assert len(stream) == 1  # both adds, their operands and results: one layout
  (layout,) = stream
  union = set()
  for v in (a for e in adds for a in (*e.ins, *e.outs)):
    used = t.used.get(v)
    if used is not None:
      union |= set(np.flatnonzero(used.reshape(-1, used.shape[-1]).any(axis=0)))
  assert layout is None and len(union) == 16 or set(layout) == union


def test_every_batch_size_gives_the_same_outputs():
  model, variables = _slimmed_resnet(0.5, 4)
  small = compaction.compact_any(model, variables, (16, 16, 1))
  x = np.random.default_rng(0).normal(size=(7, 16, 16, 1)).astype(np.float32)
  whole = np.asarray(small(x))
  np.testing.assert_allclose(whole, np.asarray(model.apply(variables, x)), atol=1e-5, rtol=1e-5)
  for batch in (1, 2, 3):
    np.testing.assert_allclose(np.asarray(small(x[:batch])), whole[:batch], atol=1e-5, rtol=1e-5)


class _BatchIndexed(nn.Module):
  """Adds a known term built from an iota over the batch (zero, so the model is per-example)."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(12)(x))
    h = h + 0.0 * jnp.arange(x.shape[0], dtype=h.dtype)[:, None]
    return nn.Dense(3)(h)


def test_a_jaxpr_that_depends_on_the_batch_size_falls_back_to_one_example_at_a_time():
  model = _BatchIndexed()
  params = jax.tree.map(np.array, model.init(jax.random.PRNGKey(0), jnp.zeros((1, 5)))["params"])
  params["Dense_1"]["kernel"][:4] = 0.0
  found = metrics.analyze_model(model, {"params": params}, (5,))
  layouts = structure._channel_layouts(found.trace, set(found.trace.op_of_eqn), 1)
  assert structure._batch_replay(found.trace, layouts, 4) is None        # iota over the batch
  small = compaction.compact_any(model, {"params": params}, (5,), channel_multiple=1)
  assert small.params["['params']['Dense_0']['kernel']"].shape == (5, 8)
  x = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(small(x)), np.asarray(model.apply({"params": params}, x)), atol=1e-6)


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_channel_multiple_is_checked(bad):
  model, variables = _slimmed_resnet(0.5, 5, stages=(1,), widths=(8,))
  with pytest.raises(ValueError, match="channel_multiple"):
    compaction.compact(model, variables, (16, 16, 1), channel_multiple=bad)


def test_export_with_a_symbolic_batch_size():
  model, variables = _slimmed_resnet(0.5, 6, stages=(1,), widths=(16,))
  small = compaction.compact_any(model, variables, (16, 16, 1))
  (batch,) = jax.export.symbolic_shape("b")
  exported = jax.export.export(small.apply)(small.params, jax.ShapeDtypeStruct((batch, 16, 16, 1), jnp.float32))
  x = np.random.default_rng(2).normal(size=(3, 16, 16, 1)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(exported.call(small.params, x)), np.asarray(model.apply(variables, x)),
                             atol=1e-5, rtol=1e-5)
