"""
bench_rollout.py: rollout speed. (1) generation tokens/s, HF generate vs vLLM, batch 8 and 32, tiny text-only
policy, sampled (temperature 0.7); (2) a full agent rollout with tool latency injected: wall time vs the sum of
generation time and tool time (overlap ratio = wall / (gen + tool); tools run concurrently across trajectories
so the per-round tool wait is the slowest call, not the sum).

    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=1 python bench_rollout.py
"""
import json
import os
import sys
import tempfile
import time

import torch

new_tokens = 64        # per request in the throughput bench
batches = (8, 32)
tool_latency = 0.5     # seconds injected into every tool call
n_items = 4            # items x samples in the agent bench
samples = 2
threads = 2


def bench_rollout():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    torch.set_num_threads(threads)
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.join(here, "data", "miniworld"))
    import prepare
    import rollout as R
    import tools
    from transformers import AutoTokenizer
    from sft import scratch_model
    tmp = tempfile.mkdtemp(prefix="bench_rollout_")
    world = os.path.join(tmp, "world")
    prepare.build_world(world, seed=7, n_countries=12, bench_countries=2, rl_countries=2, n_sft=10, n_rl=5,
                        n_bench=8, n_distractors=200, tokenizer_wiki_pages=200)
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    path = os.path.join(tmp, "policy")
    scratch_model(tok, vision=False, head_dim=32, max_positions=8192).save_pretrained(path)
    tok.save_pretrained(path)
    pol = R.load_policy(path)
    engines = {"hf": R.make_engine("hf", pol), "vllm": R.make_engine("vllm", pol, path=path, max_model_len=8192)}
    items = [json.loads(line) for line in open(os.path.join(world, "bench.jsonl"))]
    res = {"gen_tokens_per_s": {}}
    for bs in batches:  # first warm both engines up at this batch size, then time
        reqs = [{"tokens": tok.encode(f"<|im_start|>user\n{items[i % len(items)]['prompt']} #{i}<|im_end|>\n"
                                      "<|im_start|>assistant\n"), "max_new": new_tokens} for i in range(bs)]
        for name, eng in engines.items():
            R.generate(eng, reqs, 0.7, 0.95)  # warm-up (same shapes)
            t = time.time()
            out = R.generate(eng, reqs, 0.7, 0.95)
            res["gen_tokens_per_s"][f"{name}_b{bs}"] = round(sum(len(o[0]) for o in out) / (time.time() - t), 1)

    # agent rollout with injected tool latency: time generation and tools separately inside the loop
    tb = tools.make_toolbox(world_dir=world, image_dir=os.path.join(tmp, "img"))
    clock = {"gen": 0.0, "tool": 0.0, "tool_calls": 0}
    real_generate, real_run_tool, real_run_tools = R.generate, tools.run_tool, tools.run_tools

    def timed_generate(*a, **k):
        t = time.time()
        try:
            return real_generate(*a, **k)
        finally:
            clock["gen"] += time.time() - t

    def slow_run_tool(*a, **k):
        time.sleep(tool_latency)
        t = time.time()
        r = real_run_tool(*a, **k)
        clock["tool"] += tool_latency + time.time() - t  # summed over calls: the serial cost
        clock["tool_calls"] += 1
        return r

    # a random policy never calls tools: force each row through its item's oracle hops, then an answer
    # (HF engine with a forcing logits processor; vLLM would need a custom v1 logits processor)
    head = tok.encode("<|im_start|>assistant\n")
    by_prompt = {it["prompt"]: it["solution"]["hops"] for it in items}

    def force(input_ids, scores):
        scores = scores.clone()
        for b, row in enumerate(input_ids.tolist()):
            h = max(i for i in range(len(row) - len(head) + 1) if row[i:i + len(head)] == head) + len(head)
            ctx = tok.decode(row[:h])
            hops = by_prompt[ctx.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]]
            r = ctx.count("<|im_start|>assistant") - 1
            text = (f'<tool_call>{json.dumps(hops[r])}</tool_call><|im_end|>' if r < len(hops) else
                    '<answer>{"gen_prompt": "x", "reference_images": [{"img_id": "IMG_001"}]}</answer><|im_end|>')
            target = tok.encode(text)
            scores[b] = float("-inf")
            scores[b, target[min(len(row) - h, len(target) - 1)]] = 0.0
        return scores
    scripted = R.make_engine("hf", pol)
    scripted.logits_processors = [force]
    engines["hf_scripted_tools"] = scripted
    R.generate, tools.run_tool = timed_generate, slow_run_tool
    old = R.max_new_tokens
    R.max_new_tokens = 48
    try:
        for name in ("hf", "vllm", "hf_scripted_tools"):
            eng = engines[name]
            clock.update(gen=0.0, tool=0.0, tool_calls=0)
            torch.manual_seed(0)
            t = time.time()
            recs = R.rollout(items[:n_items], pol, eng, tb, samples=samples)
            wall = time.time() - t
            res[f"agent_{name}"] = {
                "wall_s": round(wall, 2), "gen_s": round(clock["gen"], 2), "tool_s_summed": round(clock["tool"], 2),
                "tool_calls": clock["tool_calls"],
                "overlap_ratio": round(wall / max(clock["gen"] + clock["tool"], 1e-9), 3),
                "end_reasons": R.summarize(recs)["end_reasons"]}
    finally:
        R.generate, tools.run_tool, tools.run_tools = real_generate, real_run_tool, real_run_tools
        R.max_new_tokens = old
    return res


if __name__ == "__main__":
    print(json.dumps(bench_rollout(), indent=1))
