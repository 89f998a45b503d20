#!/usr/bin/env bash
# The standard throughput set on one accelerator, synthetic data, bf16:
#   SimCLR ResNet-50 at 224 px   (configs/simclr.py, 3-channel data shape)
#   MAE ViT-B/16 at 224 px       (configs/mae.py, the paper's 512-d 8-deep decoder)
#   SimCLR ResNet-18 at 28 px    (configs/demo.py at full width: the network
#                                 of the CPU tables and the MedMNIST baseline)
# Each row: compile time, step time, images/s, GFLOP/image from XLA's cost
# analysis, achieved TFLOP/s (see bench/throughput.py). Both configs keep
# their online linear probe (a stop-gradient forward of the full image),
# as a real pretraining run does; add --config.online_probe=False to drop it.
#
# Needs JAX (+ flax, optax, orbax), ml_collections, absl, tqdm, platformdirs;
# no TensorFlow, no dataset files. Budget: < 5 min on one H100 (two compiles
# of about a minute, then STEPS timed steps each).
#
#   bash bench/gpu.sh                 # batch 256, 20 timed steps
#   BATCH=512 STEPS=30 bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
BATCH=${BATCH:-256}
STEPS=${STEPS:-20}

missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("jax", "flax", "optax", "orbax.checkpoint",
                           "ml_collections", "absl", "tqdm", "platformdirs",
                           "einops")
               if importlib.util.find_spec(m.split(".")[0]) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "missing Python packages: $missing (pip install them, e.g. from wheels)" >&2
  exit 1
fi
"$PY" -c "import jax; print('devices:', jax.devices())"

COMMON=(--config.data.name=pathmnist --config.data.size=224
        --config.train.compute_dtype=bfloat16 --config.train.batch_size="$BATCH"
        --steps="$STEPS" --warmup=3)

timeout 240 "$PY" bench/throughput.py --config=configs/simclr.py "${COMMON[@]}" \
  --config.model.name=resnet50 --config.model.width_multiplier=1.0 \
  --config.objective.proj_hidden_dim=2048 --config.objective.proj_dim=128
timeout 240 "$PY" bench/throughput.py --noheader --config=configs/mae.py "${COMMON[@]}" \
  --config.model.name=vit_base --config.model.patch_size=16 \
  --config.objective.decoder_dim=512 --config.objective.decoder_depth=8 \
  --config.objective.decoder_heads=16
timeout 240 "$PY" bench/throughput.py --noheader --config=configs/demo.py \
  --config.train.compute_dtype=bfloat16 --config.train.batch_size="$BATCH" \
  --steps="$STEPS" --warmup=3 --config.model.width_multiplier=1.0
