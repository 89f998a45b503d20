#!/usr/bin/env bash
# Issue #14's SSL-vs-scratch runs at a realistic budget, on one accelerator:
# the benchmark job (configs/benchmark.py, budget=accelerator: full-width
# ResNet-18 / ViT-Ti/4 at 28 px, batch 256) with
#   - pretraining STEPS steps (default 2000 = ~940 epochs of BreastMNIST's
#     546 images), the frozen-feature monitor every MONITOR steps (kNN
#     val AUROC: the plateau curve, pretrain/<method>/seed<k>/
#     monitor.png and pretrain_summary.json);
#   - stage 2 with MedMNIST v2's recipe (configs/medmnist_baseline.py):
#     Adam 1e-3, batch 128, 100 epochs, lr x0.1 at 50 % / 75 %, no
#     augmentation, best-val-AUROC epoch, at 1 / 10 / 100 % labels x 3 seeds;
#     method `none` + `finetune` is the from-scratch row of the same recipe.
# Runs without TensorFlow (numpy input stream) and PyTorch. Sweeps resume:
# rerun the same command to finish a cut run. Writes report.md per sweep.
#
#   SSL_JAX_DATA_DIR=/path/to/medmnist bash bench/gpu_ssl.sh [ROOT [--config.x=y ...]]
#   DATASET=retinamnist SEEDS="(0,)" bash bench/gpu_ssl.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
ROOT=${1:-/tmp/ssl_jax_gpu_ssl}
shift || true
DATASET=${DATASET:-breastmnist}
STEPS=${STEPS:-2000}
MONITOR=${MONITOR:-200}
SEEDS=${SEEDS:-(0, 1, 2)}
# Compiled programs are shared across the sweep's runs (same shapes, other
# seeds), so each is compiled once per machine.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$ROOT/jax_cache}
RECIPE=(--config.finetune.epochs=100 --config.finetune.min_steps=1
        --config.finetune.batch_size=128 --config.finetune.eval_every_epochs=1.0
        --config.finetune.last_batch=keep
        --config.finetune.optim.lr=1e-3 --config.finetune.optim.weight_decay=0.0
        --config.finetune.optim.warmup_steps=0 --config.finetune.optim.schedule=step
        --config.finetune.augment.policy=none
        --config.finetune.protocols="('finetune', 'linear', 'knn')"
        --config.finetune.seeds="$SEEDS"
        --config.benchmark.budget.train.steps="$STEPS"
        --config.benchmark.budget.train.monitor_every="$MONITOR"
        --config.benchmark.budget.train.checkpoint_every="$STEPS")
"$PY" -c "import jax; print('devices:', jax.devices())"
sweep() {  # backbone methods [flags]
  local backbone=$1 methods=$2 began=$SECONDS
  shift 2
  "$PY" run.py --config=configs/benchmark.py:dataset=$DATASET,budget=accelerator,backbone=$backbone \
    --workdir="$ROOT/${DATASET}_$backbone" --config.benchmark.methods="$methods" \
    --config.benchmark.progress=False "${RECIPE[@]}" "$@" 2>&1 \
    | grep -v -E "^(I|W)[0-9]{4} "
  echo "$DATASET $backbone: $((SECONDS - began)) s wall"
  cat "$ROOT/${DATASET}_$backbone/report.md"
}
sweep resnet "('none', 'simclr', 'vicreg')" "$@"
sweep vit "('none', 'mae')" "$@"
