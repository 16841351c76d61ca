"""Choosing regularisation strengths that hit a target number of nonzero weights.

Two ways:

1. `select_strength` / `select_layer_strengths`: the iterative selection of Shen,
   Wang, Xu & Yan (2024, reconstructed from the authors'
   code). Train from a fixed initialisation with lambda_k, record (lambda_k,
   NNZ_k), bracket the target between the largest lambda still too dense and
   the smallest lambda already too sparse, and take as the next lambda the
   *lower median* of the unregularised loss-gradient magnitudes ``|dL/dw_j|`` that
   fall strictly inside the bracket (midpoint when none does). The first-order
   condition of L + lambda||w||_1 says a weight is zero only if ``|dL/dw_j|`` <=
   lambda, so these magnitudes are the lambdas at which weights switch on or
   off. Stop when ``|NNZ - target|`` <= r * target (per layer: when at least
   `min_layers` layers are within tolerance). The training function is the
   user's, so any model and optimizer works; the history is written to disk as
   it goes.

   Beyond L1: for a penalty whose prox has a zero threshold T(tau) and step
   size eta, a zero weight stays zero while eta|dL/dw| <= T(eta lambda);
   `threshold_inverse` maps gradient magnitudes g to the lambdas solving
   T(eta lambda) = eta g (for L1 this is lambda = g), so the same loop serves
   TL1, log-sum, MCP, SCAD, l0, ...

2. `controller.nnz_controller` (in `sparsejax.controller`): an optax proximal transform whose strength is adjusted
   *during* one training run so a single training meets the target instead of
   many: every `interval` steps it computes lambda*, the strength at which
   exactly `target` weights survive this step's prox (from the (target+1)-th
   largest ``|w + u|`` and the penalty's threshold), and moves log lambda toward
   log lambda* at `rate`. It cannot wind up (lambda never overshoots the
   quantile that keeps `target` weights), so no unit is killed for good.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np

from sparsejax import _checks, _numerics, masking, records
from sparsejax import registry as _registry

__all__ = ["TrainOutcome", "SelectionResult", "SelectionError", "bracket", "next_strength", "select_strength",
           "select_layer_strengths", "threshold_inverse", "weight_leaves", "count_nonzero", "gradient_magnitudes"]

# The in-training controllers live in sparsejax.controller (one home per name).
__getattr__ = _checks.moved_names(__name__, {name: ("sparsejax.controller", name) for name in
                                             ("ControllerState", "nnz_controller", "nnz_controller_for")})


class TrainOutcome(NamedTuple):
  """What the user's training function returns for one strength.

  Attributes:
    params: the trained parameters.
    nnz: number of nonzero regularised weights (an int), or per-layer counts
      (a sequence) for the layer-wise selection.
    gradient_magnitudes: ``|dL/dw|`` of the *unregularised* loss over the full
      training set at `params`, flattened over all regularised weights (1-D), or
      one such array per layer.
    extras: anything else to keep in the history (loss, accuracy, ...).
  """
  params: Any
  nnz: int | Sequence[int]
  gradient_magnitudes: np.ndarray | Sequence[np.ndarray]
  extras: dict | None = None


@dataclasses.dataclass
class SelectionResult:
  """What `select_strength` / `select_layer_strengths` return: the chosen strength, its params, every training."""
  strength: float | list[float]   # the chosen lambda (or per-layer lambdas)
  params: Any                     # parameters trained with it
  nnz: int | list[int]
  history: list[dict]             # every training: strength(s), nnz, extras
  trainings: int
  converged: bool


class SelectionError(RuntimeError):
  """The selection cannot continue (e.g. the training returned NaN); `history` holds the trainings so far."""

  def __init__(self, message: str, history: list[dict]):
    super().__init__(message)
    self.history = history


def bracket(history: Sequence[tuple[float, float]], target: float) -> tuple[float, float]:
  """(lambda_low, lambda_up) around `target` from (lambda, nnz) pairs.

  lambda_low = the largest lambda among those with the smallest NNZ still >= target
  (too dense); lambda_up = the smallest lambda among those with the largest
  NNZ still <= target (too sparse). A missing side is 0 (low) or inf (up),
  instead of the reference code's silent fallback to the first entry.
  """
  dense = [(lam, n) for lam, n in history if n >= target]
  sparse = [(lam, n) for lam, n in history if n <= target]
  low = 0.0
  if dense:
    n_min = min(n for _, n in dense)
    low = max(lam for lam, n in dense if n == n_min)
  up = math.inf
  if sparse:
    n_max = max(n for _, n in sparse)
    up = min(lam for lam, n in sparse if n == n_max)
  return low, up


def next_strength(history: Sequence[tuple[float, float]], target: float, candidates: np.ndarray) -> float:
  """The lower median of the candidates strictly inside the bracket; the midpoint if none is.

  Two safeguards the reference code lacks: while every training so far was too
  dense (no upper side), lambda grows tenfold (the gradient magnitudes of a
  too-dense solution all sit at or below its lambda, so they cannot propose a
  larger one); and a candidate equal to an already-tried lambda (to 1e-9
  relative) is replaced by the midpoint, so the loop cannot stall.
  """
  low, up = bracket(history, target)
  if math.isinf(up):
    return 10.0 * low if low > 0 else 1.0
  candidates = np.asarray(candidates, np.float64).ravel()
  inside = np.sort(candidates[(candidates > low) & (candidates < up)])
  tried = np.asarray([lam for lam, _ in history], np.float64)
  if inside.size:
    choice = float(inside[(inside.size - 1) // 2])  # lower median, as torch.median
    if not np.any(np.abs(tried - choice) <= 1e-9 * choice):
      return choice
  return 0.5 * (low + up)


def threshold_inverse(prox_fn: Callable[..., Any] | str, learning_rate: float, **shape: Any) -> Callable:
  """Maps gradient magnitudes g to the lambdas with T(eta*lambda) = eta*g for the prox's threshold T.

  A weight at zero stays zero under w <- prox_{eta lambda}(w - eta dL/dw) iff
  eta|dL/dw| <= T(eta lambda). T is increasing in lambda; the inverse is found by
  bisection in log-space (vectorised). For `prox.l1` it is the identity.
  """
  threshold = _numerics.threshold_or_raise(prox_fn, "pass candidates yourself")
  _checks.check_range("learning_rate", learning_rate, lower=0.0, lower_inclusive=False)
  _registry.resolve_prox(prox_fn, shape)  # validates the shape parameters

  def invert(g: np.ndarray) -> np.ndarray:
    g = np.asarray(g, np.float64)
    log10_strength = _numerics.bisect_increasing(
        lambda mid: np.asarray(threshold(learning_rate * 10.0**mid, **shape), np.float64), learning_rate * g,
        np.full_like(g, -40.0), np.full_like(g, 20.0), iterations=80, xp=np)
    return np.where(g > 0, 10.0**log10_strength, 0.0)

  return invert


def _check_target(target: float, r: float) -> None:
  _checks.check_count("target_nnz", target)
  _checks.check_range("r", r, lower=0.0, upper=1.0, lower_inclusive=False, upper_inclusive=False)


def _bad(outcome: TrainOutcome) -> bool:
  values = [np.asarray(outcome.nnz, np.float64).ravel()]
  values += [np.asarray(g, np.float64).ravel() for g in
             (outcome.gradient_magnitudes if isinstance(outcome.gradient_magnitudes, (list, tuple))
              else [outcome.gradient_magnitudes])]
  values += [np.asarray(v, np.float64).ravel() for v in (outcome.extras or {}).values()
             if isinstance(v, (int, float, np.ndarray, np.floating))]
  return any(not np.all(np.isfinite(v)) for v in values)


class _History:
  """The trainings of a selection, mirrored to an append-only JSON-lines file.

  With a `path`, every record is appended as it is made (never truncated) and the
  gradient magnitudes of the latest training go to `path + ".gradients.npz"` (atomic
  rename), so a selection killed at any moment resumes from the file: the trainings
  it holds are not repeated. A history written for another target is refused.
  """

  def __init__(self, path: str | None, identity: dict):
    self.records: list[dict] = []
    self.path = path
    self.identity = identity
    if path:
      if os.path.isdir(path):
        raise ValueError(f"history_path {path!r} is a directory; give a file path.")
      folder = os.path.dirname(path) or "."
      try:
        os.makedirs(folder, exist_ok=True)
      except (FileExistsError, NotADirectoryError):
        raise ValueError(f"history_path {path!r}: its folder {folder!r} cannot be created (a part of it is a "
                         f"file); give a path in a directory.") from None
      self.records = records.read_jsonl(path)
      for record in self.records:
        for key, value in identity.items():
          if key in record and record[key] != value:
            raise ValueError(f"history_path {path!r} holds a selection with {key}={record[key]!r}, not {value!r}; "
                             f"use another history_path (or delete the file) for a new selection.")

  @property
  def gradients_path(self) -> str:
    return f"{self.path}.gradients.npz"

  def add(self, record: dict, gradients: list[np.ndarray] | None = None) -> None:
    record = {**self.identity, **record}
    self.records.append(record)
    if self.path:
      if gradients is not None:
        tmp = f"{self.gradients_path}.tmp.npz"
        np.savez(tmp, *[np.asarray(g, np.float32) for g in gradients])
        os.replace(tmp, self.gradients_path)
      records.append_jsonl(self.path, record)

  def replay(self) -> tuple[list[dict], list[np.ndarray] | None]:
    """The completed trainings found on disk and the latest one's gradient magnitudes (or None)."""
    done = [r for r in self.records if "error" not in r]
    if not done or not self.path or not os.path.exists(self.gradients_path):
      return [], None
    with np.load(self.gradients_path) as f:
      gradients = [f[k] for k in sorted(f.files, key=lambda name: int(name.split("_")[1]))]
    return done, gradients


def _check_selection_args(initial_strengths: Sequence[float], max_trainings: int) -> None:
  _checks.check_int("max_trainings", max_trainings, 1)
  if len(initial_strengths) == 0:
    raise ValueError("initial_strengths must hold at least one strength > 0; got ().")
  for value in initial_strengths:
    _checks.check_range("initial_strengths", value, lower=0.0, lower_inclusive=False)


def select_strength(
    train_fn: Callable[[float], TrainOutcome],
    target_nnz: int,
    r: float = 0.001,
    initial_strengths: Sequence[float] = (1e-3, 1e-7),
    max_trainings: int = 100,
    num_weights: int | None = None,
    candidate_fn: Callable[[np.ndarray], np.ndarray] | None = None,
    history_path: str | None = None,
) -> SelectionResult:
  """One lambda such that the trained network has ``|NNZ - target_nnz|`` <= r * target_nnz.

  Args:
    train_fn: lambda -> `TrainOutcome`; must train from the same initialisation
      every time (the method assumes it).
    target_nnz: wanted number of nonzero regularised weights.
    r: relative tolerance, 0 < r < 1.
    initial_strengths: the first trainings (reference code: 1e-3 then 1e-7).
    max_trainings: give up (converged=False) after this many trainings.
    num_weights: total regularised weights, to reject impossible targets early
      (otherwise checked after the first training from the gradient count).
    candidate_fn: maps gradient magnitudes to candidate lambdas
      (`threshold_inverse` for non-L1 penalties); default identity (L1).
    history_path: JSON-lines file appended after every training (never
      truncated). A selection interrupted at any moment resumes from it: call
      again with the same arguments and the trainings it holds are not repeated.

  Raises:
    ValueError: target_nnz <= 0 or above the number of weights; r outside (0, 1).
    SelectionError: a training returned NaN/inf; `.history` has the trainings so far.
  """
  _check_target(target_nnz, r)
  _check_selection_args(initial_strengths, max_trainings)
  if num_weights is not None and target_nnz > num_weights:
    raise ValueError(f"target_nnz={target_nnz} exceeds the {num_weights} regularised weights.")
  candidate_fn = candidate_fn or (lambda g: g)
  history = _History(history_path, {"target_nnz": target_nnz, "r": r})
  pairs: list[tuple[float, float]] = []
  best: Any = None  # (strength, nnz, params or None for a replayed training)
  done, last_gradients = history.replay()
  gradients_on_disk: Any = last_gradients
  for record in done:
    pairs.append((record["strength"], record["nnz"]))
    if best is None or abs(record["nnz"] - target_nnz) < abs(best[1] - target_nnz):
      best = (record["strength"], record["nnz"], None)
  if done and abs(done[-1]["nnz"] - target_nnz) <= r * target_nnz:
    strength = done[-1]["strength"]  # converged before the interruption: train it once more for its params
    done.pop()
    pairs.pop()
  elif done:
    k = len(done)
    strength = (float(initial_strengths[k]) if k < len(initial_strengths)
                else next_strength(pairs, target_nnz, candidate_fn(gradients_on_disk[0].astype(np.float64))))
  else:
    strength = float(initial_strengths[0])
  for k in range(len(done), max_trainings):
    outcome = train_fn(strength)
    record = {"training": k + 1, "strength": strength, "nnz": int(np.sum(outcome.nnz)), **(outcome.extras or {})}
    if _bad(outcome):
      history.add({**record, "error": "non-finite"})
      raise SelectionError(f"training {k + 1} with strength {strength:g} returned non-finite values; "
                           f"history of {len(history.records)} trainings kept" +
                           (f" in {history.path}" if history.path else ""), history.records)
    grads = np.asarray(outcome.gradient_magnitudes, np.float64).ravel()
    history.add(record, [grads])
    if k == 0 and target_nnz > grads.size:
      raise ValueError(f"target_nnz={target_nnz} exceeds the {grads.size} regularised weights.")
    nnz = record["nnz"]
    pairs.append((strength, nnz))
    if best is None or abs(nnz - target_nnz) < abs(best[1] - target_nnz):
      best = (strength, nnz, outcome.params)
    if abs(nnz - target_nnz) <= r * target_nnz:
      return SelectionResult(strength, outcome.params, nnz, history.records, k + 1, True)
    if k + 1 < len(initial_strengths):
      strength = float(initial_strengths[k + 1])
    else:
      strength = next_strength(pairs, target_nnz, candidate_fn(grads))
  if best[2] is None:  # the best training was replayed from the history: retrain it for its params
    best = (best[0], best[1], train_fn(best[0]).params)
  return SelectionResult(best[0], best[2], best[1], history.records, max_trainings, False)


def select_layer_strengths(
    train_fn: Callable[[list[float]], TrainOutcome],
    target_nnz: Sequence[int],
    r: float = 0.05,
    min_layers: int | None = None,
    initial_strengths: Sequence[float] = (1e-3, 1e-7),
    max_trainings: int = 100,
    candidate_fns: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None,
    history_path: str | None = None,
) -> SelectionResult:
  """Per-layer lambdas: the single-lambda rule run per layer on per-layer histories.

  `train_fn(lambdas)` returns per-layer `nnz` and per-layer `gradient_magnitudes`.
  Stops when at least `min_layers` (default: all) layers satisfy
  ``|NNZ_k - target_k|`` <= r target_k; layers already within tolerance keep their lambda.
  """
  targets = [float(t) for t in target_nnz]
  for t in targets:
    _check_target(t, r)
  _check_selection_args(initial_strengths, max_trainings)
  num_layers = len(targets)
  if num_layers == 0:
    raise ValueError("target_nnz must hold one target per layer; got an empty sequence.")
  min_layers = num_layers if min_layers is None else min_layers
  if not 1 <= min_layers <= num_layers:
    raise ValueError(f"min_layers must satisfy 1 <= min_layers <= {num_layers}; got {min_layers}.")
  candidate_fns = candidate_fns or [lambda g: g] * num_layers
  history = _History(history_path, {"target_nnz": targets, "r": r})
  pairs: list[list[tuple[float, float]]] = [[] for _ in range(num_layers)]
  strengths = [float(initial_strengths[0])] * num_layers
  best: Any = None  # (score, strengths, nnz, params or None for a replayed training)

  def score_of(nnz):
    return sum(abs(n - t) / t for n, t in zip(nnz, targets))

  def within(nnz):
    return [abs(n - t) <= r * t for n, t in zip(nnz, targets)]

  def advance(k, nnz, gradients):
    ok = within(nnz)
    for layer in range(num_layers):
      pairs[layer].append((strengths[layer], nnz[layer]))
      if k + 1 < len(initial_strengths):
        strengths[layer] = float(initial_strengths[k + 1])
      elif not ok[layer]:
        g = np.asarray(gradients[layer], np.float64).ravel()
        strengths[layer] = next_strength(pairs[layer], targets[layer], candidate_fns[layer](g))

  done, last_gradients = history.replay()
  for k, record in enumerate(done):
    strengths[:] = list(record["strengths"])
    if best is None or score_of(record["nnz"]) < best[0]:
      best = (score_of(record["nnz"]), list(strengths), list(record["nnz"]), None)
    if k < len(done) - 1:
      for layer in range(num_layers):
        pairs[layer].append((strengths[layer], record["nnz"][layer]))
    elif sum(within(record["nnz"])) >= min_layers:
      done.pop()  # converged before the interruption: train it once more for its params
    else:
      advance(k, record["nnz"], last_gradients)
  for k in range(len(done), max_trainings):
    outcome = train_fn(list(strengths))
    nnz = [int(n) for n in np.atleast_1d(outcome.nnz)]
    if len(nnz) != num_layers or len(outcome.gradient_magnitudes) != num_layers:
      raise ValueError(f"train_fn returned {len(nnz)} layer counts and {len(outcome.gradient_magnitudes)} gradient "
                       f"arrays; expected {num_layers} (one per target).")
    record = {"training": k + 1, "strengths": list(strengths), "nnz": nnz, **(outcome.extras or {})}
    if _bad(outcome):
      history.add({**record, "error": "non-finite"})
      raise SelectionError(f"training {k + 1} returned non-finite values; history kept", history.records)
    history.add(record, [np.asarray(g, np.float64).ravel() for g in outcome.gradient_magnitudes])
    if k == 0:
      for layer, (t, g) in enumerate(zip(targets, outcome.gradient_magnitudes)):
        if t > np.size(g):
          raise ValueError(f"target_nnz[{layer}]={t:g} exceeds the {np.size(g)} weights of layer {layer}.")
    score = score_of(nnz)
    if best is None or score < best[0]:
      best = (score, list(strengths), nnz, outcome.params)
    if sum(within(nnz)) >= min_layers:
      return SelectionResult(list(strengths), outcome.params, nnz, history.records, k + 1, True)
    advance(k, nnz, outcome.gradient_magnitudes)
  if best[3] is None:  # the best training was replayed from the history: retrain it for its params
    best = (*best[:3], train_fn(best[1]).params)
  return SelectionResult(best[1], best[3], best[2], history.records, max_trainings, False)


# ------------------------------------------------------- helpers for train_fn


def weight_leaves(params: Any, mask: Callable[[Any], Any] | None = None) -> list:
  """The regularised leaves (default: kernels, ndim >= 2) in natural layer order."""
  mask = mask or masking.weights_only
  index, _ = masking.layer_index(params, mask)
  pairs = [(l, leaf) for l, leaf in zip(jax.tree.leaves(index, is_leaf=lambda v: v is None),
                                         jax.tree.leaves(params)) if l is not None]
  return [leaf for _, leaf in sorted(pairs, key=lambda p: p[0])]


def count_nonzero(params: Any, mask=None, per_layer: bool = False):
  """Nonzero regularised weights, in total or per layer."""
  counts = [int(np.count_nonzero(np.asarray(leaf))) for leaf in weight_leaves(params, mask)]
  return counts if per_layer else int(sum(counts))


def gradient_magnitudes(loss_fn: Callable[[Any], jax.Array], params: Any, mask=None, per_layer: bool = False):
  """``|dL/dw|`` of `loss_fn(params)` over the regularised weights (flattened, or per layer)."""
  grads = jax.grad(loss_fn)(params)
  layers = [np.abs(np.asarray(g, np.float64)).ravel() for g in weight_leaves(grads, mask)]
  return layers if per_layer else np.concatenate(layers)
