"""Crash-safe run records: append-only JSON lines and atomic rewrites.

JSON-lines records are appended one `write` per line (after a newline if the file
ends in a torn line) and fsynced; a torn trailing line (a kill or a full disk during
a write) is dropped with a warning when read. Every rewrite goes through a temporary
file in the same directory and an atomic rename, so a crash at any moment leaves
either the old or the new file, never an empty or half-written one.

Imports only the standard library.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import warnings
from typing import Any

__all__ = ["append_jsonl", "read_jsonl", "write_jsonl_atomic", "write_json_atomic"]


def _fsync_dir(path: str) -> None:
  with contextlib.suppress(OSError):
    fd = os.open(path, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def _atomic_write(path: str, text: str) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise
  _fsync_dir(directory)


def _dumps(record: Any) -> str:
  return json.dumps(record, default=float)


def append_jsonl(path: str, record: dict) -> None:
  """Appends one JSON record as one line (one write; starts a new line after a torn one)."""
  line = _dumps(record) + "\n"
  with open(path, "a+b") as f:
    if f.tell() > 0:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        line = "\n" + line
    f.write(line.encode())
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str, upto_step: int | None = None) -> list[dict]:
  """The records of a JSON-lines file (those with step <= upto_step if given).

  A torn record (a line that starts a JSON object but was cut short by a kill or a
  full disk) is dropped with a warning: at the end of the file, or in the middle when
  records were appended after it. Any other unparsable line is a ValueError naming the
  file and line.
  """
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split("\n")
  records = []
  for number, line in enumerate(lines, start=1):
    text = line.strip()
    if not text:
      continue
    try:
      records.append(json.loads(text))
    except json.JSONDecodeError:
      if text.startswith("{") and not text.endswith("}"):
        where = "last line" if number >= len([x for x in lines if x.strip()]) and not any(
            x.strip() for x in lines[number:]) else "line"
        warnings.warn(f"{path}: dropped a torn {where} {number} (an interrupted write): {text[:80]!r}",
                      stacklevel=2)
        continue
      raise ValueError(f"{path}: line {number} is not valid JSON: {text[:80]!r}") from None
  if upto_step is not None:
    records = [r for r in records if r.get("step", 0) <= upto_step]
  return records


def write_jsonl_atomic(path: str, records: list[dict]) -> None:
  """Replaces `path` with one JSON record per line, atomically (temp file + rename)."""
  _atomic_write(path, "".join(_dumps(r) + "\n" for r in records))


def write_json_atomic(path: str, payload: Any, indent: int | None = 1) -> None:
  """Writes JSON to `path` atomically (temp file + rename)."""
  _atomic_write(path, json.dumps(payload, indent=indent, default=float))
