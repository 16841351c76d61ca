"""sparsejax: sparse deep networks by regularization, in JAX.

Penalties and their exact proximal maps (`penalties`, `prox`, one `registry`)
compose into optax chains (`transforms`, or the one-call `optimizers`), so any
optax optimizer becomes a stochastic proximal-gradient method. Importing the
package loads only this core (jax, optax, chex, numpy); training, analysis,
data, models and plotting are imported by name (`sparsejax.train`, ...).
"""

from sparsejax import optimizers, penalties, prox, registry, transforms
from sparsejax.registry import register

__version__ = "0.2.0"

__all__ = ["penalties", "prox", "registry", "register", "transforms", "optimizers", "__version__"]
