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

import importlib.util  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # tests/ helper modules (loopback, grpo_rules)
import loopback  # noqa: E402

# ----------------------------------------------------------------------------------------------
# the mini world (data/miniworld/prepare.py's build_world), built once per session per parameter set.
# SMALL_WORLD: 12 countries with a trained tokenizer, for the policy / rollout / GRPO tests; TINY_WORLD: 4
# countries, for the tests that only need a few items and pages behind served endpoints. A file that needs other
# parameters calls make_mini_world(**params). Tests treat a world as read-only (tools.py's FTS5 index, a cache
# derived from the world's files, is the one thing written into it).
SMALL_WORLD = dict(seed=3, n_countries=12, bench_countries=2, rl_countries=2, n_sft=10, n_rl=8, n_bench=6,
                   n_distractors=100, tokenizer_wiki_pages=100)
TINY_WORLD = dict(seed=9, n_countries=4, bench_countries=1, rl_countries=1, n_sft=5, n_rl=2, n_bench=2,
                  n_distractors=50, tokenizer_wiki_pages=50)


def load_miniworld_prepare():
    """data/miniworld/prepare.py as a module (by path: data/knowgen/prepare.py has the same file name)."""
    spec = importlib.util.spec_from_file_location("miniworld_prepare",
                                                  os.path.join(ROOT, "data", "miniworld", "prepare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def make_mini_world(tmp_path_factory):
    """make_mini_world(**build_world_kwargs) -> pathlib.Path of that world, built on first use."""
    prepare, built = load_miniworld_prepare(), {}

    def make(**params):
        key = tuple(sorted(params.items()))
        if key not in built:
            d = tmp_path_factory.mktemp("world")
            prepare.build_world(str(d), **params)
            built[key] = d
        return built[key]
    return make


@pytest.fixture(scope="session")
def mini_world(make_mini_world):
    return make_mini_world(**SMALL_WORLD)


@pytest.fixture(scope="session")
def tiny_world(make_mini_world):
    return make_mini_world(**TINY_WORLD)


# ----------------------------------------------------------------------------------------------
# loopback HTTP servers (tests/loopback.py): every server a test starts is shut down when it ends

@pytest.fixture(autouse=True)
def _close_loopback_servers():
    n = loopback.started()
    yield
    loopback.close_since(n)


@pytest.fixture
def serve():
    """serve(handler_class, **server_attrs) -> a running loopback server (.url), shut down after the test."""
    return loopback.serve
