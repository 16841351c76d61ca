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
