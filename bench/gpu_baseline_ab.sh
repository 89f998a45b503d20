#!/usr/bin/env bash
# The MedMNIST v2 ResNet-18 (28) recipe on BreastMNIST over 10 seeds, in
# the four arms of the two questions left open (docs/results.md "The published baseline"):
#   last_batch  keep (PyTorch's DataLoader: each epoch ends with its short
#               batch, 500 steps; the config's default) | carry (427 full
#               batches running across epoch boundaries, as measured before)
#   precision   default (XLA:GPU may run float32 convolutions and matmuls
#               as TF32) | highest (true float32, as the CPU runs and the
#               PyTorch reference on CPU)
# About 70 s of an H200 per arm; each arm prints its results table (mean ±
# sd over the seeds). Then, where PyTorch is installed, the same 10 seeds
# of the PyTorch reference (bench/peer_baseline_torch.py) on the GPU: the
# yardstick with as many seeds (on CPU it had 2). No TensorFlow needed.
#
#   SSL_JAX_DATA_DIR=/path/to/medmnist bash bench/gpu_baseline_ab.sh [WORKROOT [--config.x=y ...]]
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${1:-/tmp/ssl_jax_gpu_baseline_ab}
shift || true
export DATASETS=${DATASETS:-breastmnist}
export SEEDS=${SEEDS:-(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)}
for last_batch in keep carry; do
  for precision in default highest; do
    echo "== last_batch=$last_batch precision=$precision"
    if [ "$precision" = default ]; then
      env -u JAX_DEFAULT_MATMUL_PRECISION bash bench/gpu_baseline.sh \
        "$ROOT/${last_batch}_$precision" --config.finetune.last_batch=$last_batch "$@"
    else
      JAX_DEFAULT_MATMUL_PRECISION=$precision bash bench/gpu_baseline.sh \
        "$ROOT/${last_batch}_$precision" --config.finetune.last_batch=$last_batch "$@"
    fi
  done
done
if "${PYTHON:-python}" -c "import torch" 2>/dev/null; then
  echo "== PyTorch reference (bench/peer_baseline_torch.py)"
  seeds=$(echo "$SEEDS" | tr -d '() ' | sed 's/,$//')
  for name in $DATASETS; do
    "${PYTHON:-python}" bench/peer_baseline_torch.py --dataset="$name" --seeds="$seeds"
  done
fi
