"""Quality scores of generated images from a classifier's features (FID / Inception-score style).

The Inception network of the original scores is replaced by any classifier
trained with sparsejax on the same dataset (e.g. LeNet-5 on Fashion-MNIST):

* `frechet_distance(a, b)`: the Frechet distance between Gaussians fitted to two
  feature sets (rows are examples),
  ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2}),
  computed in float64 from symmetric eigendecompositions (no complex sqrtm);
* `inception_score(probs)`: exp(E_x KL(p(y|x) || p(y))), between 1 (every image
  gives the same prediction) and the number of classes (confident and
  balanced);
* `ClassifierScore`: holds the classifier and the real set's features, and
  scores a batch of generated images with both, plus the class histogram's
  entropy (mode coverage).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["frechet_distance", "inception_score", "ClassifierScore"]


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(cov)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _check_features(name: str, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"{name} must be a 2-d array (examples, features) with >= 2 rows; got shape {x.shape}.")
  if not np.isfinite(x).all():
    raise ValueError(f"{name} has non-finite values.")
  return x


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """Frechet distance between Gaussian fits of two feature sets (examples x features)."""
  a, b = _check_features("features_a", features_a), _check_features("features_b", features_b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"features_a has {a.shape[1]} features but features_b has {b.shape[1]}.")
  mu_a, mu_b = a.mean(0), b.mean(0)
  cov_a, cov_b = np.cov(a, rowvar=False).reshape(a.shape[1], -1), np.cov(b, rowvar=False).reshape(b.shape[1], -1)
  root_a = _psd_sqrt(cov_a)
  cross = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  trace_root = float(np.sum(np.sqrt(np.clip(cross, 0.0, None))))
  value = float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * trace_root)
  return max(value, 0.0)


def inception_score(probabilities: np.ndarray) -> float:
  """exp(mean_x KL(p(y|x) || p(y))) with p(y) the mean of the rows; rows must be distributions."""
  p = np.asarray(probabilities, np.float64)
  if p.ndim != 2 or not np.allclose(p.sum(1), 1.0, atol=1e-4) or (p < 0).any():
    raise ValueError("probabilities must be a 2-d array whose rows are probability distributions.")
  marginal = p.mean(0)
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = np.where(p > 0, p * (np.log(p) - np.log(marginal)), 0.0).sum(1)
  return float(np.exp(kl.mean()))


@dataclasses.dataclass
class ClassifierScore:
  """Scores generated images with a trained classifier's penultimate features and predictions.

  Attributes:
    model: a flax classifier (`MLP`/`ConvNet`) that sows its hidden activations
      as `activation_i` (the last one is the feature layer).
    params: its trained parameters.
    real_images: held-out real images in [0, 1], the reference set.
    batch_size: evaluation batch size.
  """

  model: Any
  params: Any
  real_images: np.ndarray
  batch_size: int = 1000

  def __post_init__(self):
    @jax.jit
    def apply(images):
      logits, state = self.model.apply({"params": self.params}, images, train=False, mutable=["intermediates"])
      sown = state["intermediates"]
      last = sorted((k for k in sown if k.startswith("activation_")), key=lambda k: int(k.split("_")[-1]))[-1]
      return sown[last][0].reshape(images.shape[0], -1), jax.nn.softmax(logits)

    self._apply = apply
    self.real_features, self.real_probabilities = self.features_and_probabilities(self.real_images)

  def features_and_probabilities(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's penultimate features and class probabilities of `images`, batch by batch."""
    feats, probs = [], []
    for i in range(0, len(images), self.batch_size):
      f, p = self._apply(jnp.asarray(images[i:i + self.batch_size], jnp.float32))
      feats.append(np.asarray(f, np.float64))
      probs.append(np.asarray(p, np.float64))
    return np.concatenate(feats), np.concatenate(probs)

  def __call__(self, images: np.ndarray) -> dict:
    """{"fid", "inception_score", "class_entropy"} of `images` (in [0, 1]) against the real set."""
    features, probabilities = self.features_and_probabilities(images)
    histogram = np.bincount(probabilities.argmax(1), minlength=probabilities.shape[1]) / len(images)
    nonzero = histogram[histogram > 0]
    return {"fid": frechet_distance(self.real_features, features),
            "inception_score": inception_score(probabilities),
            "class_entropy": float(-(nonzero * np.log(nonzero)).sum())}
