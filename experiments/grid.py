"""Grid search over regularisation hyperparameters (e.g. (lambda, a)), reusable by experiments.

The selection rule follows the sparse-network papers' practice of trading
accuracy for size: among the grid points whose validation score is within
`tolerance` of the best score on the grid, take the one with the smallest size
(fraction of parameters used, by default); ties go to the better score.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from tqdm import tqdm

__all__ = ["grid_points", "grid_search", "select"]


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict]:
  """All combinations of a {name: values} grid, in order."""
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]


def select(results: Sequence[dict], score_key: str = "val_accuracy", size_key: str = "params_fraction",
           tolerance: float = 0.01, higher_is_better: bool = True) -> dict:
  """The smallest-size result whose score is within `tolerance` of the best score."""
  if not results:
    raise ValueError("select needs at least one result.")
  sign = 1.0 if higher_is_better else -1.0
  best = max(sign * r[score_key] for r in results)
  admissible = [r for r in results if sign * r[score_key] >= best - tolerance]
  return min(admissible, key=lambda r: (r[size_key], -sign * r[score_key]))


def grid_search(run: Callable[..., dict], grid: Mapping[str, Sequence[Any]], score_key: str = "val_accuracy",
                size_key: str = "params_fraction", tolerance: float = 0.01, higher_is_better: bool = True,
                progress: bool = True, desc: str = "grid") -> tuple[dict, list[dict]]:
  """Runs `run(**point)` on every grid point; returns (selected result, all results).

  Each result is `run`'s dict updated with the point's values.
  """
  results = []
  for point in tqdm(grid_points(grid), desc=desc, disable=not progress):
    results.append({**run(**point), **point})
  return select(results, score_key, size_key, tolerance, higher_is_better), results
