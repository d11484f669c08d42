# Shared test setup: the repo root on sys.path (the stage scripts are top-level modules) and one
# torch thread, so several tests/processes on a 2-core machine don't fight (timings stay sane).
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
try:
    import torch
    torch.set_num_threads(1)
except ImportError:
    pass
