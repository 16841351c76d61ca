"""Shared CLI/config helpers for the experiments (flax-examples style configs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from sparsejax import data

C = TypeVar("C")


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
  """One --flag per dataclass field, typed by its default (tuples take several values)."""
  defaults = config_cls()
  hints = typing.get_type_hints(config_cls)
  for field in dataclasses.fields(config_cls):
    default = getattr(defaults, field.name)
    flag = f"--{field.name.replace('_', '-')}"
    if isinstance(default, tuple):
      args = typing.get_args(hints.get(field.name))
      item_type = args[0] if args and isinstance(args[0], type) else (type(default[0]) if default else str)
      parser.add_argument(flag, type=item_type, nargs="+", default=list(default))
    elif isinstance(default, bool):
      parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
    else:
      parser.add_argument(flag, type=type(default) if default is not None else str, default=default)


def config_from_args(config_cls: type[C], args: argparse.Namespace) -> C:
  values = {}
  for field in dataclasses.fields(config_cls):
    value = getattr(args, field.name)
    values[field.name] = tuple(value) if isinstance(value, list) else value
  return config_cls(**values)


def write_json(path: str, payload: Any) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    json.dump(payload, f, indent=1, default=float)
  return path


def parse_config(config_cls: type[C], description: str, default_workdir: str,
                 argv: list[str] | None = None) -> tuple[C, str]:
  """Parses `argv` into (config, workdir): one flag per config field plus --workdir."""
  parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_config_flags(parser, config_cls)
  parser.add_argument("--workdir", default=default_workdir)
  args = parser.parse_args(argv)
  return config_from_args(config_cls, args), args.workdir


def write_lines(path: str, lines: list[str]) -> str:
  """Writes a Markdown table (or any text) line by line; returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def print_file(path: str) -> None:
  with open(path) as f:
    print(f.read())


def run_experiment(config_cls: type[C], description: str, name: str, train_and_evaluate: Callable[[C, str], Any],
                   table_dir: Callable[[C], str] = lambda config: "", argv: list[str] | None = None) -> Any:
  """The `main` of an experiment: parse the flags, run it under results/NAME (or --workdir), print its table."""
  config, workdir = parse_config(config_cls, description, os.path.join("results", name), argv)
  results = train_and_evaluate(config, workdir)
  print_file(os.path.join(workdir, table_dir(config), "table.md"))
  return results


def dataset_available(name: str) -> bool:
  """Whether `sparsejax.data.load(name, "test")` finds the dataset offline (never downloads)."""
  try:
    data.load(name, "test")
  except data.DataNotFoundError:
    return False
  return True
