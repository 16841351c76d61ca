"""Shared helpers of the benchmark scripts."""

from __future__ import annotations

import csv
import json
import os
import time
from typing import Any

import jax
import numpy as np


def median_time(fn, *args, repeats: int) -> float:
  """Median wall time of `fn(*args)` (already jitted) over `repeats` runs, after one warm-up call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def interleaved_times(calls: dict[str, tuple], rounds: int) -> dict[str, float]:
  """Fastest wall time of each already-jitted `fn(*args)` in `calls` ({name: (fn, *args)}).

  The calls run round-robin, one of each per round, `rounds` times after one warm-up
  call each, so a slow spell of the machine (other processes, frequency changes) hits
  every case alike instead of the few that happened to run during it; the minimum is
  the least disturbed run. Ratios of these times are what the tables report.
  """
  for fn, *args in calls.values():
    jax.block_until_ready(fn(*args))
  best = {name: float("inf") for name in calls}
  for _ in range(rounds):
    for name, (fn, *args) in calls.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def write_rows(out_dir: str, stem: str, rows: list[dict], **extra: Any) -> str:
  """Writes rows as <out_dir>/<stem>.json (with `extra` fields) and .csv; returns the path stem."""
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, stem)
  with open(path + ".json", "w") as f:
    json.dump({**extra, "rows": rows}, f, indent=1)
  with open(path + ".csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  print(f"\nwrote {path}.json and {path}.csv")
  return path
