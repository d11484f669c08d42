#!/usr/bin/env bash
# The main job on a fresh CPU machine (README): installs the CPU set, then runs the method on the offline
# mini world. Stages are added here as they land.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_cpu.sh
. .venv/bin/activate
export OMP_NUM_THREADS=2 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python data/miniworld/prepare.py
