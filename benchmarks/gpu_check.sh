#!/usr/bin/env bash
# GPU check of InfLoRA at paper scale (benchmarks/gpu_check.py): step throughput of ViT-B/16 at 224²,
# batch 128, bf16, with and without torch.compile, against timm's frozen forward + backward; a 10-task
# ImageNet-R-shaped sequence through the real stages at gpus_per_stage 1, 0.5 and 0.25 (1, 2, 4 runs at
# once), its projection to 50 epochs; peak GPU memory. Writes benchmarks/results/gpu_check.md.
# Stopped after GPU_CHECK_TIMEOUT_S (default 570 s: one 10-minute device call); the report is written
# after each part, so a stopped check keeps what it measured.
#   bash benchmarks/gpu_check.sh               # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke   # tiny sizes on the CPU, to test the script (~1 min)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python}"
export PYTHONPATH="$(dirname "$here")${PYTHONPATH:+:$PYTHONPATH}"
exec timeout --signal=TERM --kill-after=10 "${GPU_CHECK_TIMEOUT_S:-570}" "$python" -m benchmarks.gpu_check "$@"
