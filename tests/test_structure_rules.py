"""structure.py's rule tables: every rule keeps what the model needs; a primitive with no rule is conservative."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from sparsejax import compaction, structure


class TwoLayer(nn.Module):
  middle: str = "none"

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(8)(x))
    if self.middle == "sort":      # a primitive with no rule: it moves entries between channels
      h = lax.sort(h, dimension=-1)
    elif self.middle == "cumsum":  # data movement with a rule
      h = jnp.cumsum(h, axis=-1)
    elif self.middle == "reverse":
      h = h[..., ::-1]
    return nn.Dense(3)(h)


def _variables(middle: str):
  model = TwoLayer(middle)
  variables = model.init(jax.random.PRNGKey(0), jnp.ones((1, 5)))
  params = jax.tree.map(np.array, variables["params"])
  params["Dense_1"]["kernel"][2] = 0.0  # unit 2 of Dense_0 has no outgoing weight
  return model, {"params": params}


def _removable(middle: str) -> np.ndarray:
  model, variables = _variables(middle)
  found = structure.analyze(lambda v, x: model.apply(v, x), variables, (5,))
  return found.ops[0].units_removable


def test_no_rule_means_nothing_is_removed_through_it():
  assert _removable("none").tolist() == [i == 2 for i in range(8)]
  assert _removable("sort").tolist() == [False] * 8  # sort may move unit 2's value to a used place
  assert _removable("reverse").tolist() == [i == 5 for i in range(8)]  # rev: channel 5 lands on the dead row 2


@pytest.mark.parametrize("middle", ["none", "sort", "cumsum", "reverse"])
def test_the_compact_model_equals_the_model(middle):
  model, variables = _variables(middle)
  x = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
  compact = compaction.compact(model, variables, (5,))
  np.testing.assert_allclose(compact(x), model.apply(variables, x), atol=1e-5)


def test_every_rule_is_a_named_primitive_and_unknown_ones_fall_to_the_conservative_rule():
  assert "sort" not in structure._USE_RULES and "sort" not in structure._UNKNOWN_RULES
  for table in (structure._USE_RULES, structure._UNKNOWN_RULES):
    assert all(isinstance(name, str) and callable(rule) for name, rule in table.items())
  assert structure._USE_RULES["add"] is structure._use_sum
  assert structure._USE_RULES["mul"] is structure._use_elementwise
