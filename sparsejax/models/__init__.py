"""Flax (linen) models; hidden activations are sown into "intermediates"."""

from sparsejax.models.mlp import MLP, init_mlp

__all__ = ["MLP", "init_mlp"]
