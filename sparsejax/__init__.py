"""sparsejax: sparse deep networks by regularization, in JAX.

Penalties and their exact proximal maps (`penalties`, `prox`) compose into
optax chains (`transforms`), so any optax optimizer becomes a stochastic
proximal-gradient method.
"""

from sparsejax import penalties
from sparsejax import prox
from sparsejax import transforms

__version__ = "0.1.0"

__all__ = ["penalties", "prox", "transforms", "__version__"]
