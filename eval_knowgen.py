"""
eval_knowgen.py: KnowGen evaluation (K-Score), the baseline / ablation rows of Table 1, and WISE.

CPU, the mini world (offline generator + offline judge; seconds). config/eval_runcpu.py's paths are runcpu.sh's:
    python data/miniworld/prepare.py --out_dir=data/miniworld
    M="--items_path=data/miniworld/bench.jsonl --world_dir=data/miniworld --limit=0"
    python eval_knowgen.py config/eval_runcpu.py $M --mode=direct --out_dir=out/eval_mini_direct
    python eval_knowgen.py config/eval_runcpu.py $M --mode=oracle --out_dir=out/eval_mini_oracle
    python eval_knowgen.py config/eval_runcpu.py $M --mode=agent --policy_path=out/cpu/grpo_lam0.5/final --out_dir=out/eval_mini_agent
    python eval_knowgen.py --compare=out/eval_mini_direct/judged.jsonl,out/eval_mini_oracle/judged.jsonl
GPU node (agent in-process via vLLM; Qwen-Image(-Edit) servers: image_server.py; an OpenAI-compatible judge):
    python data/knowgen/prepare.py                    # the released KnowGen -> data/knowgen/knowgen.jsonl
    python eval_knowgen.py config/eval_knowgen.py --mode=direct --out_dir=out/kg_qwenimage          # baseline row
    python eval_knowgen.py config/eval_knowgen.py --mode=workflow --policy_path=Qwen3-VL-8B-Instruct \
        --out_dir=out/kg_workflow                                                                    # ablation row
    python eval_knowgen.py config/eval_knowgen.py --mode=agent --out_dir=out/kg_agent  # policy_path: grpo's final
    python eval_knowgen.py config/eval_knowgen.py --mode=agent --agent_engine=openai --agent_base_url=http://gpu0:8000/v1 \
        --agent_model=gen-searcher-8b --out_dir=out/kg_served   # a served agent (vllm serve) or a closed API model
    python eval_knowgen.py config/eval_knowgen.py --stage=judge --judge_model=gpt-4o --out_dir=out/kg_agent  # re-judge
    python eval_knowgen.py config/eval_knowgen.py --benchmark=wise --items_path=data/wise --mode=agent --out_dir=out/wise_agent
Aggregate only (prints the Table-1-style table, writes the summary JSON beside the input):
    python eval_knowgen.py --judged=out/kg_agent/judged.jsonl [--summary_out=FILE.json] [--benchmark=wise]
Several finished runs side by side (a markdown table + items.png; the mini world's results.md adds its own sections
to these rows: data/miniworld/report.py):
    python eval_knowgen.py --table="Qwen-Image=out/kg_direct,Gen-Searcher=out/kg_agent" --table_out=out/kg_results.md \
        --table_pairs="kg_agent vs kg_direct"   # + each pair's difference on the same items, paired interval

Stages, each one append-only JSONL under out_dir so a run resumes where it stopped (finished (id, sample) keys
are skipped; for a key the LAST row wins) and any stage can be re-run alone with --stage=NAME:
  agent    -> trajectories.jsonl  (contracts' trajectory record; `direct`/`oracle` write a minimal one)
  generate -> generated.jsonl + images/   {"id","sample","category","gen_prompt","refs","image","error",...}
  judge    -> judged.jsonl  (contracts' judged row + "sample","image","gen_t","error"; WISE: consistency/realism/
              aesthetic (0-2) + wiscore)
  report   -> summary.json (Table 1, x100; WISE: WiScore 0-1), categories.json, tool_stats.json, report.md + thumbs/
Choices of ours, stated: a trajectory with no answer is generated from the raw prompt (the system degrades to
the baseline; on_no_answer="zero" scores it 0 instead). A failed generation is a counted zero (judged row with
"error"); a failed JUDGE call writes nothing, so a re-run retries it. An empty group is null in the summary and
the overall is the mean over the non-empty groups, flagged with a warning (not comparable to the paper's).
"""
import json
import os
import random
import re
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from PIL import Image

import dataio  # THE reader of JSONL and item files
import tools  # the tool registry: names for the stats
from configurator import config_keys

# -----------------------------------------------------------------------------
# config (paper values where the paper has one)
benchmark = "knowgen"        # knowgen | wise
items_path = "data/miniworld/bench.jsonl"  # KnowGen JSONL (data/knowgen/prepare.py or the mini world), or WISE JSON
mode = "direct"              # direct (raw prompt -> generator: baseline rows) | workflow (untrained model + prompted
                             # search workflow: ablation row) | agent (trained checkpoint) | oracle (mini world's
                             # hidden solution as the answer: the upper bound / sanity row)
stage = "all"                # all | agent | generate | judge | report
out_dir = "out/eval_knowgen"
limit = 0                    # evaluate only the first N items (0 = all 630 / 1,000)
num_samples = 1              # trajectories per item (Table 1: one)
# agent (rollout.py)
policy_path = None           # the agent: a save_pretrained dir (trained checkpoint, or the untrained base for workflow)
agent_engine = "hf"          # rollout.make_engine: hf (transformers generate) | vllm (in-process vllm.LLM) |
                             # openai (the agent behind an OpenAI-compatible server or a closed API; no policy_path)
agent_base_url = None        # agent_engine=openai: the server's /v1 URL (None = the openai package's default)
agent_model = None           # agent_engine=openai: the served model's name
agent_api_key_env = "OPENAI_API_KEY"  # agent_engine=openai: the environment variable holding the key
agent_device = "cpu"
agent_dtype = "float32"      # bfloat16 on GPU (bf16 is ~300x slower than fp32 on this CPU)
agent_temperature = 0.0      # ours: greedy decoding for a deterministic eval (RL samples at 0.7 / top_p 0.95)
agent_top_p = 1.0            # ours (greedy ignores it); release eval: 0.9 (config/eval_knowgen.py)
agent_error_retries = 3      # an errored rollout (engine exception, not a bad answer) is re-run up to this many
                             # times (rollout.with_error_retries), counted in the log; the release's eval runner
                             # makes 2 attempts in all (retry_limit=2): 1 re-run (config/eval_knowgen.py)
agent_batch = 8              # items rolled out together; trajectories are appended after each batch
rollout_kwargs = {}          # rollout.Settings fields (an argument, never rollout.py globals), e.g. {"max_rounds": 9, "max_new_tokens": 4096}
tool_backend = "local"       # tools.make_toolbox backend: local (mini world) | web
world_dir = None             # the mini world dir (default: the directory of items_path)
summarizer_base_url = None   # browse's page reader VLM (release: Qwen3-VL-30B-A3B-Instruct, temperature 0)
summarizer_model = "Qwen3-VL-30B-A3B-Instruct"  # (tools.py default)
tool_kwargs = {}             # extra keyword arguments for tools.make_toolbox (as grpo.py's), e.g. {"top_k_default": 5}
# generator (image_server.py's clients, with reward.py's key names)
gen_backend = "offline"      # offline (mini world) | server (image_server.py: Qwen-Image-Edit) | openai (image API)
generator_urls = []          # Qwen-Image-Edit servers (the client sends at most the first 3 references)
gen_t2i_server_urls = []     # text-only Qwen-Image servers for answers with no references ([] = generator_urls)
gen_openai_base_url = None   # an OpenAI-compatible image API (gen_backend="openai")
gen_openai_model = "gpt-image-1"
on_no_answer = "raw_prompt"  # raw_prompt | zero : what a trajectory without a parsed answer is scored as
no_refs_prompt = "gen_prompt"  # an answer WITHOUT references: "gen_prompt" (ours: its prompt, text-only) |
                             # "raw_prompt" (release gen_image_from_results.py: the item's original prompt)
t2i_suffix = ""              # appended to text-only prompts; release (Qwen-Image text-only):
                             # ", Ultra HD, 4K, cinematic composition."
failed_generation = "zero"   # zero (ours: a judged row scored 0) | skip (release: no row, counted and reported)
# judge (reward.py's K-Score judge; the WISE judge is ours, below)
judge_backend = "offline"    # offline (mini world: needs the hidden solution) | openai (any compatible server)
judge_base_url = None        # None = api.openai.com (key from $OPENAI_API_KEY)
judge_model = "gpt-4.1"      # the paper's judge, temperature 0
reward_kwargs = {}              # any other reward.py config key, e.g. {"gen_steps": 40, "judge_concurrency": 16}
num_workers = 8              # concurrent generator / judge calls
# analysis-only entry points
judged = None                # FILE.jsonl: aggregate an existing judged file and exit
summary_out = None           # where --judged writes its JSON (default: beside the input, <name>.summary.json)
compare = None               # "runA/judged.jsonl,runB/judged.jsonl": per-item wins/losses/ties and per-group deltas
report_n = 24                # items in the thumbnail grid of report.md
table = None                 # "name=eval_out_dir,...": the rows of a results table (Table 1 / 3) -> table_out
table_out = "results.md"     # the table's markdown; items.png is written beside it
table_pairs = None           # "B vs A,...": rows (name or out_dir folder); each B minus A, paired bootstrap interval
seed = 0                     # the report's sample of items

_CONFIG_KEYS = config_keys(globals())

# -----------------------------------------------------------------------------
# benchmark definitions (facts file)
GROUPS = {
    "science_and_knowledge": ["astronomy", "biology", "chemistry", "physics", "engineering", "medicine", "industry",
                              "architecture", "history", "geography", "religion", "politics", "culture", "art",
                              "sports"],
    "pop_culture_and_news": ["anime", "game", "film", "celebrities", "posters", "multi-subject-anime",
                             "multi-subject-celebrities", "multi-subject-game", "news"],
}
GROUP_OF = {c: g for g, cs in GROUPS.items() for c in cs}
DIMS = ("visual_correctness", "text_accuracy", "faithfulness", "aesthetics")  # Table 1 order V, T, F, A
# WISE: "ids 1-400 cultural, 401-567 time, 568-700 space, 701-800 biology, 801-900 physics, 901-1000 chemistry"
WISE_RANGES = [("cultural", 1, 400), ("time", 401, 567), ("space", 568, 700), ("biology", 701, 800),
               ("physics", 801, 900), ("chemistry", 901, 1000)]
# "overall = 0.4·cultural + 0.167·time + 0.133·space + 0.1·(biology + physics + chemistry)"
WISE_WEIGHTS = {"cultural": 0.4, "time": 0.167, "space": 0.133, "biology": 0.1, "physics": 0.1, "chemistry": 0.1}


class EvalError(ValueError):
    pass


AGENT_STATS = Counter()  # error_retries (re-runs of errored rollouts), errored (still errored after them)

# -----------------------------------------------------------------------------
# JSONL plumbing: append-only files, last row per key wins


def latest(path, repair=False):
    """{(id, sample): row} of an append-only stage file (missing file = {}) through dataio.read_jsonl, the one
    reader; repair=True (only the stage about to append to the file): a last line torn by a kill is cut."""
    return {(str(r["id"]), int(r.get("sample", 0))): r for _, r in dataio.read_jsonl(path, repair, missing_ok=True)}


_lock = threading.Lock()


def append_jsonl(path, row):
    with _lock, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()

# -----------------------------------------------------------------------------
# items


def group_of(category, where):
    g = GROUP_OF.get(str(category).strip().lower())
    if g is None:
        raise EvalError(f"{where}: unknown KnowGen category {category!r} (known: {sorted(GROUP_OF)})")
    return g


def load_knowgen(path):
    """KnowGen items through dataio.load_items (JSON list or JSONL; gt_image resolved against the file's folder);
    every item must carry a known KnowGen category."""
    try:
        raw = dataio.load_items(path)
    except dataio.ItemsError as e:
        raise EvalError(str(e)) from None
    items = []
    for j, it in enumerate(raw):
        where = f"{path}: item {it['id']!r} (entry {j})"
        group_of(it["meta"].get("category"), where)
        items.append(dict(it, category=it["meta"]["category"]))
    return items


def load_wise(path):
    """The released WISE JSON: a list of {"prompt_id", "Prompt", "Explanation", "Subcategory", ...}. Accepted
    leniently: one file, a directory of *.json, or a comma list; a dict wrapping the list under "data"/"prompts"/
    "items"; JSONL; any key case. The category comes from the prompt_id range (Subcategory is finer-grained)."""
    files = path.split(",") if "," in path else (
        sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith((".json", ".jsonl")))
        if os.path.isdir(path) else [path])
    items, seen = [], set()
    for fp in files:
        if fp.endswith(".jsonl"):
            data = [r for _, r in dataio.read_jsonl(fp)]
        else:
            data = json.load(open(fp, encoding="utf-8"))
            if isinstance(data, dict):
                data = next((data[k] for k in ("data", "prompts", "items") if isinstance(data.get(k), list)), None)
            if not isinstance(data, list):
                raise EvalError(f"{fp}: expected a list of WISE prompts (or a dict holding one under 'data')")
        for j, raw in enumerate(data):
            r = {str(k).lower(): v for k, v in raw.items()}
            pid, prompt = r.get("prompt_id", r.get("id")), r.get("prompt")
            if pid is None or not isinstance(prompt, str) or not prompt.strip():
                raise EvalError(f"{fp}: entry {j}: needs 'prompt_id' and a non-empty 'Prompt' (keys: {list(raw)})")
            pid = int(pid) if str(pid).strip().isdigit() else pid
            cat = next((c for c, lo, hi in WISE_RANGES if isinstance(pid, int) and lo <= pid <= hi), None)
            if cat is None or pid in seen:
                raise EvalError(f"{fp}: entry {j}: " + (f"duplicate prompt_id {pid}" if cat else
                                                        f"prompt_id {pid!r} is not an integer in 1-1000"))
            seen.add(pid)
            items.append({"id": str(pid), "prompt": prompt.strip(), "category": cat, "explanation":
                          r.get("explanation") or "", "meta": {"category": cat, "subcategory": r.get("subcategory")}})
    return sorted(items, key=lambda it: int(it["id"]))

# -----------------------------------------------------------------------------
# stage 1: the agent (or its stand-ins) -> trajectories.jsonl


def _stub_record(item, sample, policy, answer):
    """A minimal trajectory record for the modes without a model (direct, oracle)."""
    return {"id": item["id"], "sample": sample, "prompt": item["prompt"], "policy": policy,
            "date": time.strftime("%Y-%m-%d"), "end_reason": "answer", "rounds": 0,
            "tool_calls": {t: 0 for t in tools.tool_names()}, "messages": [], "answer": answer,
            "tokens": [], "loss_mask": [], "logprobs": [], "images": [], "num_gen_tokens": 0, "seconds": 0.0}


def oracle_answer(item, world):
    """The hidden solution as the answer: an upper bound for the mini world (generator + judge sanity row)."""
    sol = item.get("solution")
    if not sol:
        raise EvalError(f"item {item['id']!r}: mode=oracle needs the mini world's hidden 'solution'")
    images = {r["image_id"]: r for _, r in dataio.read_jsonl(os.path.join(world, "images.jsonl"))}
    refs = []
    for n, iid in enumerate(sol["ref_image_ids"], 1):
        im = images[iid]
        refs.append({"img_id": f"IMG_{n:03d}", "url": im["url"], "local_path": os.path.join(world, im["path"]),
                     "title": im["title"], "page_url": im.get("page_url"), "note": "oracle"})
    return {"gen_prompt": sol["gen_prompt"], "reference_images": refs}


def run_agent(todo, cfg, world):
    """workflow / agent: rollout.py's agent loop on a checkpoint, or (agent_engine=openai) on a served model / API.
    `workflow` is the same loop driven by an untrained model (the search workflow is what rollout.py's system
    prompt asks for). Yields trajectory records."""
    import rollout  # imported where used in this file (rollout imports torch)
    api = cfg["agent_engine"] == "openai"
    if not (cfg["agent_model"] if api else cfg["policy_path"]):
        raise EvalError(f"mode={cfg['mode']} needs --policy_path=DIR (a save_pretrained checkpoint), or "
                        "--agent_engine=openai --agent_model=NAME [--agent_base_url=URL] (a served agent)")
    try:
        rs = rollout.settings(cfg["rollout_kwargs"], where="eval_knowgen.py rollout_kwargs")
    except ValueError as e:
        raise EvalError(str(e)) from None
    if api:  # messages-only records: eval needs no tokens
        pol = rollout.tokenizer_policy(None, cfg["agent_model"])
        eng = rollout.make_engine("openai", pol, base_url=cfg["agent_base_url"] or "", model=cfg["agent_model"],
                                  api_key_env=cfg["agent_api_key_env"], workers=cfg["agent_batch"], s=rs)
    else:
        pol = rollout.load_policy(cfg["policy_path"], device=cfg["agent_device"], dtype=cfg["agent_dtype"],
                                  max_pixels=rs.max_pixels)
        eng = rollout.make_engine(cfg["agent_engine"], pol, path=cfg["policy_path"], dtype=cfg["agent_dtype"], s=rs)
    tb = tools.make_toolbox(backend=cfg["tool_backend"], world_dir=world,
                            cache_path=os.path.join(cfg["out_dir"], "tool_cache.sqlite"),
                            image_dir=os.path.join(cfg["out_dir"], "tool_images"),
                            summarizer_base_url=cfg["summarizer_base_url"],
                            summarizer_model=cfg["summarizer_model"], **cfg["tool_kwargs"])
    for i in range(0, len(todo), cfg["agent_batch"]):
        chunk = todo[i:i + cfg["agent_batch"]]
        recs = rollout.with_error_retries(
            lambda its: rollout.rollout(its, pol, eng, tb, samples=1, temperature=cfg["agent_temperature"],
                                        top_p=cfg["agent_top_p"], s=rs),
            [it for it, _ in chunk], cfg["agent_error_retries"], AGENT_STATS)
        for rec, (_, s) in zip(recs, chunk):
            yield dict(rec, sample=s)


def stage_agent(items, cfg):
    path = os.path.join(cfg["out_dir"], "trajectories.jsonl")
    done = latest(path, repair=True)
    todo = [(it, s) for it in items for s in range(cfg["num_samples"]) if (it["id"], s) not in done]
    world = cfg["world_dir"] or os.path.dirname(os.path.abspath(cfg["items_path"]))
    if cfg["mode"] == "direct":
        recs = (_stub_record(it, s, "direct", {"gen_prompt": it["prompt"], "reference_images": []})
                for it, s in todo)
    elif cfg["mode"] == "oracle":
        recs = (_stub_record(it, s, "oracle", oracle_answer(it, world)) for it, s in todo)
    elif cfg["mode"] in ("workflow", "agent"):
        recs = run_agent(todo, cfg, world) if todo else []
    else:
        raise EvalError(f"unknown mode {cfg['mode']!r} (direct | workflow | agent | oracle)")
    for rec in recs:
        append_jsonl(path, rec)
    print(f"agent: {len(todo)} new trajectories ({len(done)} already done), {AGENT_STATS['error_retries']} errored "
          f"rollouts retried, {AGENT_STATS['errored']} still errored -> {path}")

# -----------------------------------------------------------------------------
# stage 2: the generator -> generated.jsonl + images/


def reward_config(cfg, text_only=False):
    """reward.py's config for the generator clients (image_server.generate) and the judge (the names are shared)."""
    import reward
    keys = ("gen_backend", "generator_urls", "gen_openai_base_url", "gen_openai_model", "judge_backend",
            "judge_base_url", "judge_model")
    c = {k: cfg[k] for k in keys}
    if text_only and cfg["gen_t2i_server_urls"]:  # eval: no references -> text-only Qwen-Image servers
        c["generator_urls"] = cfg["gen_t2i_server_urls"]
    c["judge_cache"] = os.path.join(cfg["out_dir"], "judge_cache.sqlite")
    return reward.make_config(**{**c, **cfg["reward_kwargs"]})


def stage_generate(items, cfg):
    path, img_dir = os.path.join(cfg["out_dir"], "generated.jsonl"), os.path.join(cfg["out_dir"], "images")
    os.makedirs(img_dir, exist_ok=True)
    trajs, done = latest(os.path.join(cfg["out_dir"], "trajectories.jsonl")), latest(path, repair=True)
    byid = {it["id"]: it for it in items}
    # a finished row has an image; a failed one is retried on the next run
    todo = [(k, t) for k, t in sorted(trajs.items()) if k[0] in byid and not (k in done and done[k].get("image"))]

    import image_server
    import reward

    def one(key, traj):
        item, ans = byid[key[0]], traj.get("answer")
        row = {"id": key[0], "sample": key[1], "category": item["category"], "prompt": item["prompt"],
               "fallback": ans is None, "generator": cfg["gen_backend"], "image": None, "error": None}
        if ans is None and cfg["on_no_answer"] == "zero":
            row.update(gen_prompt=None, refs=[], error=f"no answer ({traj.get('end_reason')}): scored 0")
            return row
        ans = ans or {"gen_prompt": item["prompt"], "reference_images": []}
        row["gen_prompt"] = ans.get("gen_prompt") or ""
        row["refs"] = [f for f in map(reward.reference_file, reward.valid_refs(ans)) if f]  # full-resolution originals
        if not row["refs"] and cfg["no_refs_prompt"] == "raw_prompt":  # release: no references -> raw prompt
            row["gen_prompt"] = item["prompt"]
        if not row["refs"]:  # text-only generation (release: Qwen-Image with a quality suffix)
            row["gen_prompt"] += cfg["t2i_suffix"]
        t0, name = time.time(), f"{re.sub(r'[^A-Za-z0-9_.-]', '_', key[0])}_{key[1]}.png"
        try:
            image_server.generate(row["gen_prompt"], row["refs"], os.path.join(img_dir, name),
                                  reward_config(cfg, text_only=not row["refs"]))
            row["image"] = os.path.join("images", name)  # relative to out_dir (contracts' path rule)
        except Exception as e:  # a generator fault is a counted zero, never a crash
            row["error"] = f"generation failed: {type(e).__name__}: {e}"
        row["seconds"], row["t"] = round(time.time() - t0, 3), time.time()  # "t": which generation was judged
        return row

    _run_parallel(todo, one, path, cfg)
    print(f"generate: {len(todo)} new ({len(done)} rows before) -> {path}")


def _run_parallel(todo, fn, path, cfg):
    workers = 1 if cfg["gen_backend"] == "offline" and cfg["judge_backend"] == "offline" else cfg["num_workers"]
    with ThreadPoolExecutor(max(1, workers)) as ex:
        for row in ex.map(lambda kt: fn(*kt), todo):
            if row is not None:
                append_jsonl(path, row)

# -----------------------------------------------------------------------------
# stage 3: the judge -> judged.jsonl


def judge_kscore(item, gen_path, cfg):
    """reward.py's K-Score judge: ORIGINAL prompt, image 1 = generated, image 2 = ground truth ->
    {"faithfulness","visual_correctness","text_accuracy","aesthetics","text_accuracy_na","rationale"}."""
    import reward
    if cfg["judge_backend"] == "offline":
        if not isinstance(item.get("solution"), dict):
            raise EvalError(f"item {item['id']!r}: judge_backend=offline needs the mini world's hidden 'solution'")
        return reward.judge_kscore_offline(gen_path, item["gt_image"], item["solution"], reward_config(cfg))
    out, err = reward.judge_kscore(item["prompt"], gen_path, item["gt_image"], reward_config(cfg))
    if out is None:
        raise RuntimeError(err)
    return out


WISE_SYSTEM = """You grade an AI-generated image for a world-knowledge text-to-image benchmark.
You get the PROMPT, an EXPLANATION of what the prompt implies (the knowledge the image must show), and the image.
Score three things, each an integer 0, 1 or 2. Be strict: 2 is rare.
- consistency: does the image show what the prompt, read with its explanation, requires? 0 = key elements missing
  or contradicted; 1 = partly right or inaccurate; 2 = every element and its implied knowledge shown correctly.
- realism: 0 = physically implausible, clearly artificial; 1 = minor unrealistic flaws; 2 = photorealistic.
- aesthetic: 0 = poor composition or unappealing; 1 = acceptable but plain; 2 = exceptional artistry.
Answer with ONE JSON object and nothing else:
{"rationale": "<2-4 sentences>", "consistency": 0|1|2, "realism": 0|1|2, "aesthetic": 0|1|2}"""


def parse_wise(text):
    """The WISE judge's reply -> {"rationale", "consistency", "realism", "aesthetic"} snapped to {0, 1, 2}, or None
    (reward.ask_judge retries unparseable replies). JSON, or "Consistency: 2" lines as the WISE release asks for."""
    m = re.search(r"\{.*\}", text, re.S)
    try:
        obj = json.loads(m.group(0)) if m else {}
    except json.JSONDecodeError:
        obj = {}
    out = {"rationale": str(obj.get("rationale", text))[:1000]}
    for k, pat in (("consistency", "consistency"), ("realism", "realism"), ("aesthetic", r"aesthetic\w*(?: quality)?")):
        v = obj.get(k, obj.get("aesthetic_quality") if k == "aesthetic" else None)
        if v is None:
            mm = re.search(rf"{pat}\W*\s*([0-2](?:\.\d+)?)", text, re.I)
            v = mm.group(1) if mm else None
        if v is None:
            return None
        out[k] = float(min(2, max(0, round(float(v)))))  # snap to {0, 1, 2}
    return out


def judge_wise(item, gen_path, cfg):
    """WiScore judge: our prompt through reward.ask_judge (the same client, retries, cache and key handling as
    the K-Score judge). Returns the three 0-2 scores and "(0.7·consistency + 0.2·realism + 0.1·aesthetic) / 2"."""
    import net
    import reward
    gen = net.data_url(gen_path)
    user = [{"type": "text", "text": f"PROMPT: {item['prompt']}\nEXPLANATION: {item.get('explanation') or '-'}"},
            {"type": "image_url", "image_url": {"url": gen}}]
    messages = [{"role": "system", "content": WISE_SYSTEM}, {"role": "user", "content": user}]
    out, err = reward.ask_judge("wise", messages, parse_wise, [reward.sha(WISE_SYSTEM), reward.sha(user[0]["text"]),
                                                               reward.sha(gen)], reward_config(cfg))
    if out is None:
        raise EvalError(f"WISE judge: {err}")
    out["wiscore"] = round((0.7 * out["consistency"] + 0.2 * out["realism"] + 0.1 * out["aesthetic"]) / 2, 4)
    return out


def stage_judge(items, cfg):
    path = os.path.join(cfg["out_dir"], "judged.jsonl")
    gens, done = latest(os.path.join(cfg["out_dir"], "generated.jsonl")), latest(path, repair=True)
    byid = {it["id"]: it for it in items}
    wise = cfg["benchmark"] == "wise"
    if wise and cfg["judge_backend"] != "openai":
        raise EvalError("WISE has no ground truth and no offline judge: use --judge_backend=openai")
    judge_name = cfg["judge_model"] if cfg["judge_backend"] != "offline" else "offline"
    # finished = judged by this judge, on the generation that is there now (a re-generated image is re-judged)
    todo = [(k, g) for k, g in sorted(gens.items()) if k[0] in byid and not (
        k in done and done[k].get("gen_t") == g.get("t") and done[k].get("judge") == judge_name)]
    errors, skipped = [], []
    import reward

    def one(key, gen):
        item = byid[key[0]]
        row = {"id": key[0], "sample": key[1], "category": item["category"], "image": gen.get("image"),
               "gen_t": gen.get("t"), "judge": judge_name, "error": None}
        if not gen.get("image") and cfg["failed_generation"] == "skip" and gen.get("gen_prompt") is not None:
            skipped.append(key)  # release: a failed generation is skipped (not scored), counted and reported
            return None
        if not gen.get("image"):  # generation failed (or no answer with on_no_answer=zero): a counted zero
            zero = ("consistency", "realism", "aesthetic", "wiscore") if wise else DIMS + ("k_score",)
            return dict(row, **dict.fromkeys(zero, 0.0), **({} if wise else {"text_accuracy_na": False}),
                        rationale="", error=gen.get("error") or "no image")
        gen_path = os.path.join(cfg["out_dir"], gen["image"])
        try:
            if wise:
                return dict(row, **judge_wise(item, gen_path, cfg))
            s = judge_kscore(item, gen_path, cfg)
            k = reward.k_score(s["faithfulness"], s["visual_correctness"], s["text_accuracy"], s["aesthetics"],
                               s["text_accuracy_na"])
            return dict(row, **{d: s[d] for d in DIMS}, text_accuracy_na=bool(s["text_accuracy_na"]), k_score=k,
                        rationale=s.get("rationale", ""))
        except Exception as e:  # a judge fault: nothing written, the next run retries this key
            errors.append(f"{key}: {type(e).__name__}: {e}")
            return None

    _run_parallel(todo, one, path, cfg)
    with open(os.path.join(cfg["out_dir"], "judge_errors.log"), "a") as f:
        f.writelines(e + "\n" for e in errors)
    print(f"judge: {len(todo) - len(errors) - len(skipped)} new, {len(errors)} judge errors (skipped, retried next "
          f"run), {len(skipped)} failed generations skipped (failed_generation=skip) -> {path}")

# -----------------------------------------------------------------------------
# aggregation (facts file)


def check_judged(path):
    """Judged rows of a file, validated: a bad row is an error naming file:line."""
    rows = []
    for i, r in dataio.read_jsonl(path):
        for k in ("id", "category") + DIMS + ("text_accuracy_na",):
            if k not in r:
                raise EvalError(f"{path}:{i}: judged row is missing '{k}'")
        for k in DIMS:
            if not isinstance(r[k], (int, float)) or isinstance(r[k], bool) or not 0 <= r[k] <= 1:
                raise EvalError(f"{path}:{i}: '{k}' must be a number in [0, 1], got {r[k]!r}")
        if not isinstance(r["text_accuracy_na"], bool):
            raise EvalError(f"{path}:{i}: 'text_accuracy_na' must be true/false, got {r['text_accuracy_na']!r}")
        group_of(r["category"], f"{path}:{i}: item {r['id']!r}")
        rows.append(dict(r, id=str(r["id"]), sample=int(r.get("sample", 0))))
    return list({(r["id"], r["sample"]): r for r in rows}.values())  # an append-only file: last row per key


def dim_means(rows):
    """Mean of each dimension; text_accuracy only over non-N/A samples (0.5 if none); K recomputed from the means:
    "0.1*F + 0.4*V + 0.4*T + 0.1*A". Fractions in [0, 1]."""
    m = {d: sum(float(r[d]) for r in rows) / len(rows) for d in ("visual_correctness", "faithfulness", "aesthetics")}
    txt = [float(r["text_accuracy"]) for r in rows if not r["text_accuracy_na"]]
    m["text_accuracy"] = sum(txt) / len(txt) if txt else 0.5
    m["k_score"] = (0.1 * m["faithfulness"] + 0.4 * m["visual_correctness"] + 0.4 * m["text_accuracy"]
                    + 0.1 * m["aesthetics"])
    return m


def aggregate(rows):
    """Table 1: per group V/T/F/A/K (x100, 2 decimals), overall = mean of the two group K-Scores. An empty group is
    None and the overall is the mean over the non-empty groups (printed as partial)."""
    if not rows:
        raise EvalError("no judged rows to aggregate")
    out, ks, gof = {}, [], [group_of(r["category"], f"item {r['id']!r}") for r in rows]
    for g in GROUPS:
        grows = [r for r, rg in zip(rows, gof) if rg == g]
        if not grows:
            out[g] = None
            continue
        m = dim_means(grows)
        out[g] = {d: round(100 * m[d], 2) for d in DIMS + ("k_score",)}
        ks.append(100 * m["k_score"])  # overall from the unrounded group scores, rounded once
    out["overall"] = round(sum(ks) / len(ks), 2)
    out["counts"] = {g: gof.count(g) for g in GROUPS}
    return out


def bootstrap_ci(rows, n_boot=1000, alpha=0.05, seed=0):
    """95% percentile-bootstrap interval of the overall K-Score (x100): resample items with replacement WITHIN each
    group (keeps the group sizes, as the benchmark fixes them), recompute aggregate()'s overall (mean of the group
    K-Scores, each from its dimension means). Returns (lo, hi); ours (the paper reports no intervals)."""
    import random
    rng = random.Random(seed)
    gof = [group_of(r["category"], f"item {r['id']!r}") for r in rows]
    by = [b for b in ([r for r, g in zip(rows, gof) if g == grp] for grp in GROUPS) if b]
    if not by:
        raise EvalError("no judged rows to bootstrap")
    return _percentiles([sum(100 * dim_means([rng.choice(b) for _ in b])["k_score"] for b in by) / len(by)
                         for _ in range(n_boot)], alpha)


def _percentiles(stats, alpha):
    """The (alpha/2, 1 - alpha/2) percentiles of bootstrap statistics, rounded to 2 decimals."""
    stats, n = sorted(stats), len(stats)
    return round(stats[int(alpha / 2 * n)], 2), round(stats[min(n - 1, int((1 - alpha / 2) * n))], 2)


def paired_bootstrap_diff(rows_a, rows_b, n_boot=1000, alpha=0.05, seed=0):
    """Overall K-Score (x100) of run b minus run a on the same items, with a 95% percentile-bootstrap interval whose
    every resample draws the SAME items for both runs (within each group, as bootstrap_ci; an item's samples go
    together). Two rows' separate intervals overlap whenever the items' difficulty spread is larger than the gap; the
    paired interval cancels that spread, so it is what says whether b beats a. Returns (diff, lo, hi); ours."""
    import random
    runs = []
    for rows in (rows_a, rows_b):
        by = {}
        for r in rows:
            by.setdefault(r["id"], []).append(r)
        runs.append(by)
    if set(runs[0]) != set(runs[1]):
        only = sorted(set(runs[0]) ^ set(runs[1]))
        raise EvalError(f"paired difference needs the same items in both runs; {len(only)} differ, e.g. {only[:3]}")
    ids = {g: [] for g in GROUPS}
    for i, rs in sorted(runs[0].items()):
        ids[group_of(rs[0]["category"], f"item {i!r}")].append(i)
    groups = [v for v in ids.values() if v]
    if not groups:
        raise EvalError("no judged rows to compare")

    def overall(by, draw):  # aggregate()'s overall, unrounded: the mean of the group K-Scores
        return sum(100 * dim_means([r for i in g for r in by[i]])["k_score"] for g in draw) / len(draw)
    diff = overall(runs[1], groups) - overall(runs[0], groups)
    rng = random.Random(seed)
    stats = []
    for _ in range(n_boot):
        draw = [[rng.choice(g) for _ in g] for g in groups]
        stats.append(overall(runs[1], draw) - overall(runs[0], draw))
    return (round(diff, 2), *_percentiles(stats, alpha))


def per_category(rows):
    by = {}
    for r in rows:
        by.setdefault(r["category"].strip().lower(), []).append(r)
    return {c: {"group": GROUP_OF[c], "n": len(by[c]), **{d: round(100 * v, 2) for d, v in dim_means(by[c]).items()}}
            for c in sorted(by, key=lambda c: (list(GROUPS).index(GROUP_OF[c]), c))}


def format_table(s, cats=None):
    f = lambda v: "    —" if v is None else f"{v:6.2f}"
    lines = [f"{'group':<29}{'n':>5}  {'V':>6} {'T':>6} {'F':>6} {'A':>6} {'K':>6}"]
    for g in GROUPS:
        row = s[g] or {}
        lines.append(f"{g:<29}{s['counts'][g]:>5}  " + " ".join(f(row.get(d)) for d in DIMS + ("k_score",)))
    lines.append(f"{'overall (mean of the groups)':<64}{s['overall']:6.2f}")
    if any(s[g] is None for g in GROUPS):
        lines.append("WARNING: a group is empty: the overall covers only the other group (not the paper's overall)")
    for c, r in (cats or {}).items():
        lines.append(f"  {c:<27}{r['n']:>5}  " + " ".join(f(r[d]) for d in DIMS + ("k_score",)))
    return "\n".join(lines)


def aggregate_wise(rows):
    """WiScore per category, overall = the facts file's weighted sum (weights renormalised over the categories
    present when some are missing, flagged). On the 0-1 scale as WISE reports it."""
    out = {}
    for name, _, _ in WISE_RANGES:
        cr = [r for r in rows if r["category"] == name]
        out[name] = round(sum(r["wiscore"] for r in cr) / len(cr), 4) if cr else None
    present = [c for c in WISE_WEIGHTS if out[c] is not None]
    if not present:
        raise EvalError("no judged WISE rows to aggregate")
    w = sum(WISE_WEIGHTS[c] for c in present)
    out["overall"] = round(sum(WISE_WEIGHTS[c] * out[c] for c in present) / w, 4)
    out["counts"] = {c: sum(r["category"] == c for r in rows) for c in WISE_WEIGHTS}
    out["partial"] = len(present) < len(WISE_WEIGHTS)
    return out


def tool_stats(trajs):
    """What the agent did: calls per tool, rounds, end reasons, references per answer."""
    if not trajs:
        return {}
    n = len(trajs)
    calls = {t: sum((r.get("tool_calls") or {}).get(t, 0) for r in trajs) for t in tools.tool_names()}
    ends = Counter(r.get("end_reason") for r in trajs)
    answered = [r for r in trajs if r.get("answer")]
    return {"trajectories": n, "answered": len(answered), "calls_total": calls,
            "calls_per_trajectory": {t: round(c / n, 3) for t, c in calls.items()},
            "rounds_mean": round(sum(r.get("rounds", 0) for r in trajs) / n, 3),
            "refs_per_answer": round(sum(len(r["answer"].get("reference_images") or []) for r in answered)
                                     / max(1, len(answered)), 3),
            "end_reasons": dict(ends.most_common())}


def compare_runs(path_a, path_b):
    """Per-item K-Score wins/losses/ties of run B over run A (items judged in both) and the per-group deltas."""
    a, b = ({(r["id"], r["sample"]): r for r in check_judged(p)} for p in (path_a, path_b))
    common = sorted(set(a) & set(b))
    if not common:
        raise EvalError(f"{path_a} and {path_b} share no (id, sample)")
    wlt = {"wins": 0, "losses": 0, "ties": 0}
    for k in common:
        ka, kb = (_k(x[k]) for x in (a, b))
        wlt["wins" if kb > ka else "losses" if kb < ka else "ties"] += 1
    sa, sb = aggregate([a[k] for k in common]), aggregate([b[k] for k in common])
    delta = {g: None if sa[g] is None or sb[g] is None else {d: round(sb[g][d] - sa[g][d], 2) for d in sa[g]}
             for g in GROUPS}
    delta["overall"] = round(sb["overall"] - sa["overall"], 2)
    return {"a": path_a, "b": path_b, "items": len(common), **wlt, "a_summary": sa, "b_summary": sb, "delta": delta}


def _k(r):  # a row's K-Score (the --judged format does not require the k_score key)
    from reward import k_score
    return r.get("k_score", k_score(*(r[d] for d in ("faithfulness", "visual_correctness", "text_accuracy",
                                                      "aesthetics", "text_accuracy_na"))))

# -----------------------------------------------------------------------------
# report: people would rather look than read


def write_report(items, cfg, summary_text):
    out = cfg["out_dir"]
    judged = latest(os.path.join(out, "judged.jsonl"))
    gens, trajs = latest(os.path.join(out, "generated.jsonl")), latest(os.path.join(out, "trajectories.jsonl"))
    byid = {it["id"]: it for it in items}
    keys = sorted(k for k in judged if k[0] in byid)
    keys = sorted(random.Random(cfg["seed"]).sample(keys, min(cfg["report_n"], len(keys))))
    os.makedirs(os.path.join(out, "thumbs"), exist_ok=True)

    def img(src, name):  # a small JPEG copy: generated images are 1664x928
        try:
            im = Image.open(src).convert("RGB")
            im.thumbnail((192, 192))
            im.save(os.path.join(out, "thumbs", name), quality=85)
            return f'<img src="thumbs/{name}" width="128">'
        except Exception:  # missing / unreadable (no ground truth for WISE, failed generation)
            return "—"

    esc = lambda s: (s or "").replace("|", "\\|").replace("\n", " ")
    judge = cfg["judge_model"] if cfg["judge_backend"] != "offline" else "offline"
    lines = [f"# {cfg['benchmark']}: mode={cfg['mode']}, generator={cfg['gen_backend']}, judge={judge}",
             "", "```", summary_text, "```", "",
             "| item | prompt / gen_prompt | references | generated | ground truth | scores |",
             "|---|---|---|---|---|---|"]
    for k in keys:
        it, j, g, t = byid[k[0]], judged[k], gens.get(k, {}), trajs.get(k, {})
        tag = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{k[0]}_{k[1]}")
        refs = (t.get("answer") or {}).get("reference_images") or []
        ref_html = " ".join(img(r.get("local_path"), f"{tag}_ref{n}.jpg") for n, r in enumerate(refs[:3])) or "—"
        gen_html, gt_html = img(os.path.join(out, g.get("image") or "-"), f"{tag}_gen.jpg"), img(
            it.get("gt_image"), f"{tag}_gt.jpg")
        if cfg["benchmark"] == "wise":
            sc = f"C {j['consistency']:g} R {j['realism']:g} A {j['aesthetic']:g}<br>**WiScore {j['wiscore']:.2f}**"
        else:
            sc = (f"V {j['visual_correctness']:g} T {'n/a' if j['text_accuracy_na'] else j['text_accuracy']} "
                  f"F {j['faithfulness']:g} A {j['aesthetics']:g}<br>**K {_k(j):.2f}**")
        if j.get("error"):
            sc += f"<br>error: {esc(j['error'])[:80]}"
        gp = g.get("gen_prompt") or ""
        text = esc(it["prompt"][:300]) + ("" if gp == it["prompt"] else f"<br><br>*answer:* {esc(gp[:300])}")
        lines.append(f"| {esc(k[0])} ({it['category']}, {t.get('end_reason', '—')}) | {text} | {ref_html} | "
                     f"{gen_html} | {gt_html} | {sc} |")
    path = os.path.join(out, "report.md")
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")
    return path


def named_paths(s):
    """A command-line list of labelled runs, "name=path,name=path" -> [(name, path)] (a name may hold "=": the last
    one splits)."""
    return [tuple(x.strip() for x in p.rsplit("=", 1)) for p in (s or "").split(",") if p.strip()]


def table_lines(runs, out, seed=0, columns=()):
    """Several eval runs side by side, one row per (name, out_dir) of runs: per group V/T/F/A/K (x100), overall, its
    95% bootstrap interval, answers, tool calls and end reasons; then links to each run's report.md relative to out
    (the table's folder). columns: [(header, fn(out_dir) -> cell)], extra cells after "answered" for what only some
    benchmarks have (the mini world's copy rates: data/miniworld/report.py). Returns the markdown lines."""
    head = " | ".join(f"{g[:3]} {d}" for g in GROUPS for d in ("V", "T", "F", "A", "**K**"))
    md = [f"| row | n | {head} | overall | 95% CI | answered | " + "".join(f"{h} | " for h, _ in columns)
          + f"calls/traj ({', '.join(tools.tool_names())}) | end reasons |",
          "|---" * (17 + len(columns)) + "|"]
    for name, d in runs:
        judged = check_judged(os.path.join(d, "judged.jsonl"))
        s, ci = aggregate(judged), bootstrap_ci(judged, seed=seed)
        st = tool_stats(list(latest(os.path.join(d, "trajectories.jsonl")).values()))
        cells = [f"{s[g][k]:.2f}" if s[g] else "—" for g in GROUPS for k in DIMS + ("k_score",)]
        c = st.get("calls_per_trajectory", {})
        md.append(f"| {name} | {sum(s['counts'].values())} | " + " | ".join(cells) + f" | **{s['overall']:.2f}** | "
                  f"[{ci[0]:.2f}, {ci[1]:.2f}] | {st.get('answered', 0)}/{st.get('trajectories', 0)} | "
                  + "".join(f"{fn(d)} | " for _, fn in columns) + ", ".join(f"{c.get(t, 0):.2f}" for t in
                  tools.tool_names()) + " | " + ", ".join(f"{k} {v}" for k, v in
                                                           st.get("end_reasons", {}).items()) + " |")
    md += ["", "Per-item reports with thumbnails: " + ", ".join(f"[{n}]({os.path.relpath(d, out)}/report.md)"
                                                                 for n, d in runs)]
    return md


def paired_lines(runs, pairs, seed=0):
    """The "b minus a" section: for each (b, a) of pairs (names of runs' rows), paired_bootstrap_diff of their judged
    rows, and whether the interval excludes 0 (the only place a results table claims an ordering). Returns the
    markdown lines."""
    def row(n):  # a row's name, or the folder name of its out_dir ("sft" for out/eval/sft)
        hits = [(name, d) for name, d in runs if n in (name, os.path.basename(os.path.normpath(d)))]
        if len(hits) != 1:
            raise EvalError(f"table_pairs names {n!r}: {'no' if not hits else 'more than one'} row of the table has "
                            f"that name or folder (rows: {[name for name, _ in runs]})")
        return hits[0]
    md = ["", "## Paired differences on the same items (overall K-Score x100, b minus a)", "",
          "Each resample draws the same items for both rows (eval_knowgen.paired_bootstrap_diff), so the items' own "
          "difficulty cancels; 'separated' = the 95% interval excludes 0.", "",
          "| b | a | b - a | 95% CI (paired) | separated |", "|---|---|---|---|---|"]
    for b, a in pairs:
        (nb, db), (na, da) = row(b), row(a)
        d, lo, hi = paired_bootstrap_diff(check_judged(os.path.join(da, "judged.jsonl")),
                                          check_judged(os.path.join(db, "judged.jsonl")), seed=seed)
        md.append(f"| {nb} | {na} | {d:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {'yes' if lo > 0 or hi < 0 else 'no'} |")
    return md


def named_pairs(s):
    """A command-line list of row pairs, "b vs a,b vs a" -> [(b, a)] (each a row's name or its out_dir's folder)."""
    out = []
    for p in (s or "").split(","):
        if p.strip():
            if " vs " not in p:
                raise EvalError(f"table_pairs: {p.strip()!r} is not 'B vs A' (two row names of --table)")
            out.append(tuple(x.strip() for x in p.split(" vs ", 1)))
    return out


def items_grid(runs, out):
    """The same few items (the first 6 with an image in every run) across the rows, ground truth last ->
    out/items.png. Returns the markdown lines of its section ([] when no item has an image in every run)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gens = [latest(os.path.join(d, "generated.jsonl")) for _, d in runs]
    keys = sorted(set.intersection(*({k for k, g in G.items() if g.get("image")} for G in gens)))[:6]
    if not keys:
        return []
    items = {it["id"]: it for it in load_knowgen(json.load(open(os.path.join(runs[0][1], "config.json")))["items_path"])}
    fig, axs = plt.subplots(len(keys), len(runs) + 1, figsize=(1.7 * (len(runs) + 1), 1.8 * len(keys)), squeeze=False)
    for i, key in enumerate(keys):
        paths = [os.path.join(d, G[key]["image"]) for (_, d), G in zip(runs, gens)] + [items[key[0]]["gt_image"]]
        for j, (a, p) in enumerate(zip(axs[i], paths)):
            a.imshow(Image.open(p).convert("RGB"))
            a.set_xticks([]), a.set_yticks([])
            a.set_title(([n[:18] for n, _ in runs] + ["ground truth"])[j] if i == 0 else "", fontsize=7)
        axs[i][0].set_ylabel(key[0], fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "items.png"), dpi=100)
    return ["", "## A few bench items across the rows (ground truth last)", "", "![](items.png)"]


def results_table(cfg):
    """--table: table_lines (+ paired_lines with --table_pairs) + items_grid of the runs -> table_out (items.png
    beside it). Returns the markdown path."""
    runs, out = named_paths(cfg["table"]), os.path.dirname(os.path.abspath(cfg["table_out"]))
    md = ["# Table 1 / Table 3 rows", "", "K-Score x100 per row (eval_knowgen.py); each row's settings are in its "
          "out_dir/config.json.", ""] + table_lines(runs, out, cfg["seed"])
    md += paired_lines(runs, named_pairs(cfg["table_pairs"]), cfg["seed"]) if cfg["table_pairs"] else []
    md += items_grid(runs, out)
    open(cfg["table_out"], "w", encoding="utf-8").write("\n".join(md) + "\n")
    return cfg["table_out"]

# -----------------------------------------------------------------------------


def summarize(items, cfg):
    """Stage report: summary.json, categories.json, tool_stats.json, report.md; returns the summary."""
    out, ids = cfg["out_dir"], {it["id"] for it in items}
    trajs = [r for k, r in latest(os.path.join(out, "trajectories.jsonl")).items() if k[0] in ids]
    # the mini world's copy rates (they need its hidden solutions) are not computed here but from this run's files by
    # data/miniworld/report.py's copy_column: the benchmark's eval imports nothing from one of its worlds
    stats = tool_stats(trajs)
    if cfg["benchmark"] == "wise":
        rows = [r for k, r in latest(os.path.join(out, "judged.jsonl")).items() if k[0] in ids]
    else:
        jpath = os.path.join(out, "judged.jsonl")
        rows = [r for r in check_judged(jpath) if r["id"] in ids] if os.path.exists(jpath) else []
    if not rows:
        raise EvalError(f"no judged rows in {os.path.join(out, 'judged.jsonl')}: every judge call failed or was "
                        f"skipped (see {os.path.join(out, 'judge_errors.log')}); what was written is kept, re-run "
                        "--stage=judge to retry")
    if cfg["benchmark"] == "wise":
        summary, cats = aggregate_wise(rows), {}
        text = "WiScore " + json.dumps(summary)
    else:
        summary, cats = aggregate(rows), per_category(rows)
        text = format_table(summary, cats)
    expected = len(items) * cfg["num_samples"]
    if len(rows) < expected:
        text += f"\nNOTE: {len(rows)} of {expected} samples judged (the rest failed a stage: re-run to resume)"
    print(text)
    if stats:
        print("tool use:", json.dumps(stats))
    for name, obj in (("summary.json", summary), ("categories.json", cats), ("tool_stats.json", stats)):
        json.dump(obj, open(os.path.join(out, name), "w"), indent=2)
    print("report:", write_report(items, cfg, text))
    return summary


def default_config(**overrides):
    """The module's config as a dict (for tests and other scripts), with overrides checked by name."""
    cfg = {k: globals()[k] for k in _CONFIG_KEYS}
    for k, v in overrides.items():
        if k not in cfg:
            raise EvalError(f"unknown config key '{k}'")
        cfg[k] = v
    return cfg


def run(cfg):
    """The pipeline: items -> agent -> generator -> judge -> aggregation, each stage resumable."""
    if cfg["stage"] not in ("all", "agent", "generate", "judge", "report"):
        raise EvalError(f"unknown stage {cfg['stage']!r} (all | agent | generate | judge | report)")
    items = load_wise(cfg["items_path"]) if cfg["benchmark"] == "wise" else load_knowgen(cfg["items_path"])
    items = items[:cfg["limit"]] if cfg["limit"] else items
    if not items:
        raise EvalError(f"{cfg['items_path']}: no items to evaluate (the file is empty, or limit selected none)")
    os.makedirs(cfg["out_dir"], exist_ok=True)
    json.dump(cfg, open(os.path.join(cfg["out_dir"], "config.json"), "w"), indent=2)
    for name, fn in (("agent", stage_agent), ("generate", stage_generate), ("judge", stage_judge)):
        if cfg["stage"] in ("all", name):
            fn(items, cfg)
    if cfg["stage"] in ("all", "report"):
        return summarize(items, cfg)


if __name__ == "__main__":
    from configurator import configure
    cfg = configure(globals())
    try:  # dataio's ItemsError (a bad file, named by file:line) is a usage error like EvalError
        if cfg["judged"] and cfg["benchmark"] == "wise":
            s = aggregate_wise([r for _, r in dataio.read_jsonl(cfg["judged"])])
            print("WiScore", json.dumps(s))
        elif cfg["judged"]:
            rows = check_judged(cfg["judged"])
            s = aggregate(rows)
            print(format_table(s, per_category(rows)))
        if cfg["judged"]:
            dst = cfg["summary_out"] or os.path.splitext(cfg["judged"])[0] + ".summary.json"
            json.dump(s, open(dst, "w"), indent=2)
            print("summary:", dst)
        if cfg["compare"]:
            a, b = cfg["compare"].split(",")
            c = compare_runs(a.strip(), b.strip())
            print(f"B={b} vs A={a} on {c['items']} items: {c['wins']} wins / {c['losses']} losses / {c['ties']} ties")
            print("A:\n" + format_table(c["a_summary"]) + "\nB:\n" + format_table(c["b_summary"]))
            print("delta (B - A):", json.dumps(c["delta"]))
        if cfg["table"]:
            print(open(results_table(cfg)).read())
        if not cfg["judged"] and not cfg["compare"] and not cfg["table"]:
            run(cfg)
    except (EvalError, dataio.ItemsError) as e:
        sys.exit(f"eval_knowgen: error: {e}")
