#!/usr/bin/env bash
# MedMNIST v2's ResNet-18 (28) recipe (configs/medmnist_baseline.py) on one
# accelerator: BreastMNIST over 3 seeds, RetinaMNIST over 1, each printing
# its results table (test AUROC / ACC of the epoch with the best validation
# AUROC). Runs without TensorFlow (the input pipeline's numpy stream) and
# without PyTorch; needs the two MedMNIST .npz files under SSL_JAX_DATA_DIR.
#
#   SSL_JAX_DATA_DIR=/path/to/medmnist bash bench/gpu_baseline.sh [WORKROOT [--config.x=y ...]]
#
# Env: DATASETS (default "breastmnist retinamnist"), SEEDS (default
# BreastMNIST "(0, 1, 2)", RetinaMNIST "(0,)"). bench/gpu_baseline_ab.sh
# runs it over the recipe's open questions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=${1:-/tmp/ssl_jax_gpu_baseline}
shift || true
"$PY" -c "import jax; print('devices:', jax.devices())"
run() {  # dataset seeds [flags]
  local name=$1 seeds=$2 began=$SECONDS
  shift 2
  "$PY" run.py --config=configs/medmnist_baseline.py:"$name" \
    --workdir="$ROOT/baseline_$name" --config.finetune.seeds="$seeds" \
    --config.train.progress=False "$@" 2>&1 | grep -v -E "^(I|W)[0-9]{4} "
  echo "$name: $((SECONDS - began)) s wall"
  cat "$ROOT/baseline_$name/results.md"
}
declare -A DEFAULT_SEEDS=([breastmnist]="(0, 1, 2)" [retinamnist]="(0,)")
for name in ${DATASETS:-breastmnist retinamnist}; do
  run "$name" "${SEEDS:-${DEFAULT_SEEDS[$name]:-(0,)}}" "$@"
done
