"""Benchmark of the mini world's build (merged into bench.py by the lead).

    python bench_miniworld.py
"""
import importlib.util
import os
import tempfile
import time

ROOT = os.path.dirname(os.path.abspath(__file__))


def bench_miniworld_build(**sizes):
    """Seconds to build the default mini world (all files, tokenizer included) into a temp dir."""
    spec = importlib.util.spec_from_file_location("miniworld_prepare", os.path.join(ROOT, "data", "miniworld",
                                                                                      "prepare.py"))
    mw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mw)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        summary = mw.build_world(d, **sizes)
        dt = time.perf_counter() - t0
    return {"seconds": round(dt, 2), **summary}


if __name__ == "__main__":
    print("miniworld build:", bench_miniworld_build())
