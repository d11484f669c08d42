#!/usr/bin/env bash
# The test command of the README: installs the CPU set if needed, then runs every test.
set -euo pipefail
cd "$(dirname "$0")"
bash setup_cpu.sh
. .venv/bin/activate
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python -m pytest -q tests "$@"
