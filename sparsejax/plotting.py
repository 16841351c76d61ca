"""Plots written beside the JSON results: training curves, sparsity per layer, filters.

Figures are built with `matplotlib.figure.Figure` and saved through its own canvas,
so nothing here needs a display or touches global state: importing this module
never changes matplotlib's backend (inline figures in Jupyter keep working). Every
function writes a PNG and returns its path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure", "training_curves", "sparsity_per_layer", "first_layer_filters", "line_plot", "tile_images",
           "image_grid", "image_panels", "histogram"]


def new_figure(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True):
  """(figure, axes) like `pyplot.subplots`, without pyplot's global figure manager."""
  fig = Figure(figsize=figsize)
  return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig, path: str, tight: bool = True) -> str:
  """Lays out `fig` (`tight`: tight_layout), writes it to `path` as a PNG (creating folders), returns the path."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  if tight:
    fig.tight_layout()
  fig.savefig(path, dpi=120)
  return path


def training_curves(history: Sequence[dict], path: str, title: str = "") -> str:
  """Loss, accuracy (or MSE) and weight sparsity per epoch from `train.fit`'s history.

  Losses are drawn on a log axis (when all are positive), so a few spikes do not squash the rest.
  """
  epochs = [r["epoch"] for r in history]
  panels = [("loss", ["train_loss", "eval_loss"]),
            ("accuracy" if "eval_accuracy" in history[-1] or "train_accuracy" in history[-1] else "mse",
             ["train_accuracy", "eval_accuracy", "train_mse", "eval_mse"]),
            ("sparsity / fraction used", ["weight_sparsity", "flops_fraction", "params_fraction"])]
  fig, axes = new_figure(1, 3, figsize=(13, 3.6))
  for ax, (label, keys) in zip(axes, panels):
    for key in keys:
      if any(key in r for r in history):
        ax.plot(epochs, [r.get(key, np.nan) for r in history], marker=".", label=key)
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    values = [r[k] for r in history for k in keys if isinstance(r.get(k), (int, float)) and np.isfinite(r[k])]
    if label in ("loss", "mse") and values and min(values) > 0:
      ax.set_yscale("log")
    if ax.has_data():
      ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)


def sparsity_per_layer(report: dict, path: str, title: str = "") -> str:
  """Bars of exact-zero fraction per layer and neurons removed per hidden layer.

  `report` needs "layer_sparsity" ({layer: zero fraction}) and optionally
  "neurons_removed"/"neurons_total" as written by `metrics.report`.
  """
  layers = list(report["layer_sparsity"])
  fig, axes = new_figure(1, 2, figsize=(11, 3.6))
  axes[0].bar(layers, [report["layer_sparsity"][l] for l in layers], color="tab:blue")
  axes[0].set_ylim(0, 1)
  axes[0].set_ylabel("fraction of weights exactly zero")
  removed = report.get("neurons_removed", {})
  if removed:
    names = list(removed)
    totals = [report["neurons_total"][n] for n in names]
    axes[1].bar(names, totals, color="lightgray", label="units")
    axes[1].bar(names, [removed[n] for n in names], color="tab:red", label="removed")
    axes[1].legend(fontsize=8)
  axes[1].set_ylabel("hidden units")
  for ax in axes:
    ax.tick_params(axis="x", rotation=30)
  if title:
    fig.suptitle(title)
  return save_figure(fig, path)


def first_layer_filters(kernel: np.ndarray, path: str, image_shape: Sequence[int] | None = None,
                        max_filters: int | None = None, title: str = "") -> str:
  """Images of first-layer weights: conv filters (kh, kw, cin, cout) or Dense columns reshaped to `image_shape`.

  Every unit is drawn (or the first `max_filters`), on one symmetric colour scale with
  a colour bar; zero weights are its white middle, so removed units appear blank.
  """
  kernel = np.asarray(kernel)
  if kernel.ndim == 4:
    filters = [kernel[:, :, :, j].mean(axis=-1) for j in range(kernel.shape[-1])]
  else:
    if image_shape is None:
      side = int(round(np.sqrt(kernel.shape[0])))
      image_shape = (side, side)
    filters = [kernel[:, j].reshape(image_shape[:2]) for j in range(kernel.shape[1])]
  filters = filters[:max_filters] if max_filters else filters
  cols = int(np.ceil(np.sqrt(len(filters))))
  rows = int(np.ceil(len(filters) / cols))
  fig, axes = new_figure(rows, cols, figsize=(1.3 * cols, 1.3 * rows), squeeze=False)
  scale = float(np.max(np.abs(kernel))) or 1.0
  for ax in axes.ravel():
    ax.axis("off")
  image = None
  for ax, f in zip(axes.ravel(), filters):
    image = ax.imshow(f, cmap="RdBu_r", vmin=-scale, vmax=scale)
  fig.subplots_adjust(left=0.02, right=0.86, bottom=0.02, top=0.92 if title else 0.98, wspace=0.08, hspace=0.08)
  if image is not None:
    fig.colorbar(image, cax=fig.add_axes((0.89, 0.15, 0.025, 0.7)), label="weight")
  if title:
    fig.suptitle(title)
  return save_figure(fig, path, tight=False)


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], path: str, xlabel: str, ylabel: str,
              title: str = "", logx: bool = False, logy: bool = False) -> str:
  """One line per entry {label: (x, y)}."""
  fig, ax = new_figure(figsize=(6, 4))
  for label, (xs, ys) in series.items():
    ax.plot(xs, ys, marker="o", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if logx:
    ax.set_xscale("log")
  if logy:
    ax.set_yscale("log")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  if title:
    ax.set_title(title)
  return save_figure(fig, path)


def tile_images(images: np.ndarray, columns: int | None = None, pad: int = 1) -> np.ndarray:
  """Tiles (N, H, W[, C]) images in [0, 1] into one (rows*(H+pad)-pad, columns*(W+pad)-pad, C) image."""
  images = np.asarray(images, np.float32)
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or len(images) == 0:
    raise ValueError(f"images must have shape (N, H, W[, C]) with N >= 1; got {images.shape}.")
  n, h, w, c = images.shape
  columns = columns or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / columns))
  canvas = np.ones((rows * (h + pad) - pad, columns * (w + pad) - pad, c), np.float32)
  for i, image in enumerate(np.clip(images, 0.0, 1.0)):
    r, col = divmod(i, columns)
    canvas[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = image
  return canvas


def _show(ax, canvas: np.ndarray) -> None:
  ax.imshow(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, cmap="gray", vmin=0.0, vmax=1.0)
  ax.axis("off")


def image_grid(images: np.ndarray, path: str, columns: int | None = None, title: str = "") -> str:
  """One PNG of (N, H, W[, C]) images in [0, 1] tiled in a grid (e.g. GAN samples of an epoch)."""
  canvas = tile_images(images, columns)
  fig, ax = new_figure(figsize=(max(2.0, canvas.shape[1] / 40), max(2.0, canvas.shape[0] / 40)))
  _show(ax, canvas)
  if title:
    ax.set_title(title, fontsize=9)
  return save_figure(fig, path)


def image_panels(panels: dict[str, np.ndarray], path: str, columns: int | None = None,
                 panels_per_row: int | None = None) -> str:
  """Several titled image grids side by side, e.g. {"standard, epoch 1": samples, ...}."""
  if not panels:
    raise ValueError("panels must not be empty.")
  per_row = panels_per_row or len(panels)
  rows = int(np.ceil(len(panels) / per_row))
  fig, axes = new_figure(rows, per_row, figsize=(3.0 * per_row, 3.2 * rows), squeeze=False)
  for ax in axes.ravel():
    ax.axis("off")
  for ax, (label, images) in zip(axes.ravel(), panels.items()):
    _show(ax, tile_images(images, columns))
    ax.set_title(label, fontsize=9)
  return save_figure(fig, path)


def histogram(values: dict[str, Sequence[float]], path: str, xlabel: str, ylabel: str = "count", title: str = "",
              bins: int = 40, value_range: tuple[float, float] | None = None) -> str:
  """Step histograms of one or more sets of values on shared bins (e.g. hidden units' mean activations)."""
  fig, ax = new_figure(figsize=(7, 4))
  for label, series in values.items():
    ax.hist(np.asarray(series, np.float64).ravel(), bins=bins, range=value_range, histtype="step", label=label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title)
  if len(values) > 1:
    ax.legend(fontsize=8)
  return save_figure(fig, path)
