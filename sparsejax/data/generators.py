"""Data generated on the fly: Mackey-Glass series, shaky/regular handwritten curves, small tabular sets."""

from __future__ import annotations

import numpy as np

__all__ = ["mackey_glass_series", "mackey_glass", "shaky_curves", "high_dim_small_sample", "breast_cancer"]



def mackey_glass_series(length: int, tau: float = 17.0, beta: float = 0.2, gamma: float = 0.1, power: float = 10.0,
                        dt: float = 0.1, x0: float = 1.2, discard: int = 500) -> np.ndarray:
  """Samples x(t), t = 0, 1, ..., length-1 of dx/dt = beta x(t-tau)/(1 + x(t-tau)^power) - gamma x(t).

  Integrated by RK4 with step `dt` (1/dt must be an integer); the delayed
  value at half steps is linearly interpolated. The constant history x = x0 on
  [-tau, 0] is used, and the first `discard` time units (the transient) are
  dropped. tau = 17 gives the classic chaotic series.
  """
  per_unit = int(round(1.0 / dt))
  if abs(per_unit * dt - 1.0) > 1e-12:
    raise ValueError(f"1/dt must be an integer; got dt={dt}.")
  if tau <= 0 or length <= 0:
    raise ValueError(f"tau and length must be positive; got tau={tau}, length={length}.")
  delay = int(round(tau / dt))
  steps = (length + discard) * per_unit
  x = np.empty(steps + delay + 1)
  x[:delay + 1] = x0

  def f(value, delayed):
    return beta * delayed / (1.0 + delayed**power) - gamma * value

  for i in range(delay, delay + steps):
    lag0, lag1 = x[i - delay], x[i - delay + 1]
    lag_half = 0.5 * (lag0 + lag1)
    k1 = f(x[i], lag0)
    k2 = f(x[i] + 0.5 * dt * k1, lag_half)
    k3 = f(x[i] + 0.5 * dt * k2, lag_half)
    k4 = f(x[i] + dt * k3, lag1)
    x[i + 1] = x[i] + dt * (k1 + 2 * k2 + 2 * k3 + k4) / 6.0
  return x[delay::per_unit][discard:discard + length].astype(np.float64)


def mackey_glass(num_samples: int = 2000, lags: tuple[int, ...] = (30, 24, 18, 12, 6, 0), horizon: int = 6,
                 tau: float = 17.0, **series_kwargs) -> tuple[np.ndarray, np.ndarray]:
  """Regression pairs: inputs x(t - lag) for each lag (6 by default) -> target x(t + horizon).

  Returns float32 `x` (num_samples, len(lags)) and `y` (num_samples, 1). The
  λ-selection experiment trains on the first 1000 samples and tests on the rest.
  """
  first = max(lags)
  series = mackey_glass_series(num_samples + first + horizon, tau=tau, **series_kwargs)
  t = np.arange(first, first + num_samples)
  x = np.stack([series[t - lag] for lag in lags], axis=1)
  y = series[t + horizon][:, None]
  return x.astype(np.float32), y.astype(np.float32)


def _catmull_rom(points: np.ndarray, samples: int) -> np.ndarray:
  """A smooth curve through `points` (K, 2): uniform Catmull-Rom spline, `samples` points."""
  padded = np.concatenate([points[:1], points, points[-1:]])
  segments = len(points) - 1
  t = np.linspace(0, segments, samples, endpoint=False)
  seg = np.minimum(t.astype(int), segments - 1)
  u = (t - seg)[:, None]
  p0, p1, p2, p3 = padded[seg], padded[seg + 1], padded[seg + 2], padded[seg + 3]
  return 0.5 * ((2 * p1) + (-p0 + p2) * u + (2 * p0 - 5 * p1 + 4 * p2 - p3) * u**2 + (-p0 + 3 * p1 - 3 * p2 + p3) * u**3)


def shaky_curves(num_samples: int = 2000, image_size: int = 28, seed: int = 0, pen_width: float = 0.7,
                 points_per_curve: int = 400, return_trajectories: bool = False):
  """Regular (label 0) vs shaky (label 1) handwriting-like curves, after the RVSM paper's task.

  Every sample is a smooth pen trajectory: a Catmull-Rom spline through 4-7
  random control points, at a random scale (0.45-0.95 of the canvas: several
  scales) and position, drawn in 1 s. The shaky class adds a tremor
  perpendicular to the stroke: a band-limited oscillation at 4-8 Hz (with a
  slow random frequency drift and an amplitude of 5-10% of the canvas, within
  the 5-20% of letter height reported for parkinsonian handwriting), and in
  a third of the shaky samples micrographia, i.e. the writing shrinks
  progressively along the stroke (to 45-70% of its size at the end). Strokes
  are resampled by arc length (constant pen speed), splatted bilinearly,
  blurred with a Gaussian pen and inked as 1 - exp(-density). Classes alternate,
  so they are balanced; the output is deterministic for a seed.

  Returns:
    x: float32 (num_samples, image_size, image_size, 1) in [0, 1]; y: int32
    labels; with `return_trajectories`, also the pen paths in pixel
    coordinates, (num_samples, points_per_curve, 2).
  """
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  images = np.zeros((num_samples, image_size, image_size), np.float64)
  labels = (np.arange(num_samples) % 2).astype(np.int32)
  t = np.linspace(0.0, 1.0, points_per_curve, endpoint=False)  # seconds
  paths = np.zeros((num_samples, points_per_curve, 2))
  for i in range(num_samples):
    k = rng.integers(4, 8)
    control = rng.uniform(-1.0, 1.0, (k, 2))
    dense = _catmull_rom(control, 4 * points_per_curve)
    arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))])
    even = np.linspace(0.0, arc[-1], points_per_curve)  # constant pen speed: uniform ink
    curve = np.stack([np.interp(even, arc, dense[:, 0]), np.interp(even, arc, dense[:, 1])], axis=1)
    curve -= curve.mean(axis=0)
    curve /= max(np.abs(curve).max(), 1e-6)
    scale = rng.uniform(0.45, 0.95) * 0.5 * (image_size - 4)
    if labels[i] == 1:
      if rng.random() < 1 / 3:  # micrographia: progressive shrinking
        shrink = 1.0 - rng.uniform(0.3, 0.55) * t
        curve = curve * shrink[:, None]
      tangent = np.gradient(curve, axis=0)
      normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
      normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-9
      freq = rng.uniform(4.0, 8.0) * (1.0 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 6.3)))
      phase = 2 * np.pi * np.cumsum(freq) / points_per_curve + rng.uniform(0, 2 * np.pi)
      amplitude = rng.uniform(0.05, 0.10) * image_size / scale
      curve = curve + (amplitude * np.sin(phase))[:, None] * normal
    center = rng.uniform(-1.0, 1.0, 2) * (0.5 * image_size - 2 - scale * np.abs(curve).max(axis=0)).clip(0)
    pixels = curve * scale + center + (image_size - 1) / 2.0
    paths[i] = pixels
    x0 = np.floor(pixels).astype(int)
    frac = pixels - x0
    ink = np.sum(np.linalg.norm(np.diff(pixels, axis=0), axis=1)) / points_per_curve  # pixels of arc per point
    for dx in (0, 1):
      for dy in (0, 1):
        w = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
        cols, rows = x0[:, 0] + dx, x0[:, 1] + dy
        ok = (cols >= 0) & (cols < image_size) & (rows >= 0) & (rows < image_size)
        np.add.at(images[i], (rows[ok], cols[ok]), ink * w[ok])
  images = ndimage.gaussian_filter(images, sigma=(0, pen_width, pen_width))
  images = 1.0 - np.exp(-3.0 * images)  # saturating ink: about 0.8 on a stroke's centre line
  if return_trajectories:
    return images[..., None].astype(np.float32), labels, paths
  return images[..., None].astype(np.float32), labels


def high_dim_small_sample(num_samples: int = 200, num_features: int = 2000, informative: int = 20, seed: int = 0,
                          class_sep: float = 2.0, clusters_per_class: int = 2) -> tuple[np.ndarray, np.ndarray]:
  """Binary classification with few informative features among thousands (n in the low hundreds).

  A stand-in for the LSES-DNN paper's MRI data (not public): scikit-learn's
  `make_classification` with `informative` informative features (two Gaussian
  clusters per class by default, so the classes are not linearly separable),
  no redundant ones, the rest pure noise, shuffled columns, 2% label noise,
  then standardised. Deterministic per seed.

  Returns:
    x: float32 (num_samples, num_features); y: int32 in {0, 1}.
  """
  from sklearn.datasets import make_classification  # pylint: disable=import-outside-toplevel
  if not 0 < informative <= num_features:
    raise ValueError(f"informative must satisfy 0 < informative <= num_features; got {informative}.")
  x, y = make_classification(n_samples=num_samples, n_features=num_features, n_informative=informative,
                             n_redundant=0, n_repeated=0, n_clusters_per_class=clusters_per_class, class_sep=class_sep,
                             flip_y=0.02, shuffle=True, random_state=seed)
  x = (x - x.mean(0)) / (x.std(0) + 1e-12)
  return x.astype(np.float32), y.astype(np.int32)


def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's Wisconsin breast-cancer data (569 x 30, standardised): a real small-sample set."""
  from sklearn.datasets import load_breast_cancer  # pylint: disable=import-outside-toplevel
  x, y = load_breast_cancer(return_X_y=True)
  x = (x - x.mean(0)) / (x.std(0) + 1e-12)
  return x.astype(np.float32), y.astype(np.int32)
