#!/usr/bin/env bash
# The shipped demo model's training recipe on a CPU: the `demo-cpu` preset, stage by stage.
# Usage: bash demo/train_demo_cpu.sh [DATA_DIR] [WORK_DIR]   (defaults: var/data/emoji/train, var/demo-cpu)
# Each stage writes a loadable model directory and resumes from its checkpoints when rerun (--resume).
# Timings on a 2-core CPU are in models/fae-demo/README.md.
set -euo pipefail
DATA=${1:-var/data/emoji/train}
WORK=${2:-var/demo-cpu}
COMMON=(--data "$DATA" --cache-dir "$WORK/cache" --checkpoint-every 500 --resume)

# Ia: compressor + feature decoder (feature reconstruction + KL).
fae train --preset demo-cpu --out "$WORK/ia" --stage ia --steps 2500 --batch-size 64 --lr 1e-3 "${COMMON[@]}"
# Ib: pixel decoder on noisy real features (L1; the perceptual term runs the encoder per image: 7x slower).
fae train --model "$WORK/ia" --out "$WORK/ib" --stage ib --steps 3000 --batch-size 32 --lr 1e-3 \
    --perceptual-weight 0 "${COMMON[@]}"
# ib-recon: the pixel decoder fine-tuned on the feature decoder's reconstructions, what it sees at sampling.
fae train --model "$WORK/ib" --out "$WORK/ib-recon" --stage ib-recon --steps 1000 --batch-size 32 --lr 3e-4 \
    --perceptual-weight 0 "${COMMON[@]}"
# II: the text-conditional generator on the cached latents, with EMA.
fae train --model "$WORK/ib-recon" --out "$WORK/final" --stage ii --steps "${II_STEPS:-3000}" --batch-size 64 \
    --lr 5e-4 --ema-decay 0.998 "${COMMON[@]}"
