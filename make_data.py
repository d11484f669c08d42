"""
make_data.py: the paper's four-stage data pipeline -- (1) prompts, (2) agent trajectories, (3) ground-truth
images, (4) judging + rule filters + split -- that produced SFT-10k, RL-6k and KnowGen.

The mini world, fully offline on CPU (oracle teacher, offline generator and judge; seconds):

    python data/miniworld/prepare.py --out_dir=data/miniworld
    M="--world_dir=data/miniworld --tokenizer_dir=data/miniworld/tokenizer --out_dir=out/make_data_miniworld"
    python make_data.py config/make_data_runcpu.py $M                  # -> out/make_data_miniworld/
    python make_data.py config/make_data_runcpu.py $M --stages=traj,gt # some stages; any re-run resumes

Real endpoints (any OpenAI-compatible server: vLLM, or a gateway to Gemini 3 Pro / Seed1.8):

    export OPENAI_API_KEY=... SERPER_API_KEY=... JINA_API_KEY=... GEMINI_API_KEY=...
    python make_data.py config/make_data_gen_searcher_8b.py --llm_base_url=https://host/v1 --teacher_base_url=https://host/v1 \
        --judge_base_url=https://host/v1 --qa_path=data/deep_research_qa.jsonl --tokenizer_dir=ckpt/qwen3-vl-8b \
        --out_dir=out/make_data_gen_searcher_8b    # ground truth: Nano Banana Pro; add --gen_backend=server
                                                   # --generator_urls="['http://gpu0:8000']" for Qwen-Image-Edit

Stages (--stages=prompts,traj,gt,judge,curate), all files inside out_dir:
  prompts  prompts_raw.jsonl (one row per LLM request) -> prompts.jsonl (items, deduplicated by normalized text)
  traj     trajectories.jsonl: rollout.py's trajectory records (+ "teacher", "usage"); invalid ones kept with
           their end_reason; an API fault (end_reason "error") is a counted failure, retried by the next run
  gt       gt/<id>.png + gt.jsonl {id, gt_image, generator, usage}
  judge    judge.jsonl {id, needs_search, correct, faithful, aesthetics, text_clarity, safe, rationale, judge}
  curate   curation.jsonl {id, kept, reasons} and the split, no prompt / near-duplicate / target entity shared:
           ours:    sft.jsonl (trajectory records), rl.jsonl and bench.jsonl (KnowGen items with gt_image)
           release: release/sft_sharegpt.jsonl {"messages", "images"} with <image> placeholders,
                    release/rl.jsonl {id, prompt, gt_image}, release/knowgen.jsonl (KnowGen items)
           split.json (counts per split and category, overlap checks)
Request stages are resumable: each finished row is appended and flushed at once, finished ids are skipped, a
torn last line (killed mid-write) is cut; a failed request is counted (costs.jsonl, one row per stage run) and
retried by the next run. curate is a pure function of the stage files and rewrites its outputs atomically.
"""
import hashlib
import json
import os
import re
import time
import unicodedata
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import date as _date
from functools import lru_cache
from types import SimpleNamespace

from tqdm import tqdm

import dataio  # THE reader of JSONL and item files

# ----------------------------------------------------------------------------------------------
# config (paper values where the paper has one)
out_dir = "out/make_data"
stages = "prompts,traj,gt,judge,curate"
world_dir = ""                # a mini world (data/miniworld/prepare.py): its items, local tools, and the oracle
                              # teacher / offline judge for any stage that has no endpoint
seed = 1337                   # split order
workers = 8                   # concurrent requests per stage
api_key_env = "OPENAI_API_KEY"  # keys only from the environment
timeout = 600.0               # seconds per chat request
retries = 2                   # extra attempts per request (jittered backoff); then the row waits for the next run
# stage 1: prompts (paper: a strong LLM, Gemini 3 Pro, over 20 categories + converted deep-research QA)
llm_base_url = ""
llm_model = "gemini-3-pro"
llm_temperature = 1.0
requests_per_category = 1     # requests per category; paper: ~30k prompts in all
prompts_per_request = 10
qa_path = ""                  # local JSONL of {"question", "answer"} rows to convert
# stage 2: trajectories (paper: a strong agent with the same three tools)
teacher_base_url = ""
teacher_model = "gemini-3-pro"
teacher_temperature = 0.7     # paper's RL sampling temperature; None = not sent (the server's default)
teacher_max_tokens = 4096     # paper: <= 4,096 new tokens per round
teacher_max_rounds = 9        # paper: 9 normal model calls, then 1 forced final call
date = ""                     # YYYY-MM-DD in the system prompt; "" = today (fix it for reproducible data)
tool_backend = "web"          # tools.py backend; a mini world always uses "local"
summarizer_base_url = None    # browse's summarizer (paper: Qwen3-VL-30B-A3B-Instruct); None = tools.py default
tool_kwargs = {}              # extra keyword arguments for tools.make_toolbox (as grpo.py's), e.g. {"top_k_default": 5}
tokenizer_dir = ""            # policy dir: records get tokens/loss_mask from rollout.tokenize_messages; "" = later
tokenize_vl = True            # image tokens when tokenizer_dir has no config.json (a bare tokenizer dir)
system_style = "paper"        # rollout.py's system prompt ("compact" on CPU); sft / grpo / eval must use the same
# stage 3: ground truth (paper: a strong generator, Nano Banana Pro, given the evidence prompt + references)
gen_backend = "auto"          # image_server.generate: "gemini" (the paper's Nano Banana Pro, reward.gen_gemini_model,
                              # key $GEMINI_API_KEY) | "server" (image_server.py: Qwen-Image-Edit-2509, open weights)
                              # | "openai" | "seedream" | "offline"; auto = server if generator_urls, else offline
                              # for a mini world (world_dir), else gemini (the paper's)
generator_urls = []           # image_server.py URLs (Qwen-Image-Edit-2509, one per GPU: RL's generator, not the
                              # paper's ground-truth one)
reward_kwargs = {}            # other reward.py keys for the generator, e.g. {"gen_gemini_model": ...}
# stage 4: judge, rule filters, split (paper: Seed1.8 scores the ~30k candidates, ~17k kept)
judge_base_url = ""
judge_model = "seed-1.8"      # paper: ByteDance Seed1.8 (pass your provider's id for it); GPT-4.1 is the paper's
                              # K-Score / text-reward judge (reward.py), not this one
judge_evidence_chars = 12000  # tool observations shown to the judge (truncated)
max_traj_tokens = 36000       # paper: context cap 36,000 tokens; longer = "too long" (chars/4 if no tokens)
max_tool_calls = 8            # paper: at most 8 tool calls
bench_frac = 0.037            # paper: 630 of ~17k kept -> KnowGen (stratified by category)
rl_frac = 0.375               # of the rest: paper RL-6k vs SFT-10k
split_by = "auto"             # "auto": our splitter; "source": keep a mini world's sft/rl/bench where legal
near_dup_jaccard = 0.5        # word-shingle (and name) Jaccard >= this = near-duplicates, kept in one split
shingle_words = 3
# instruct (ours, mini world only; --stages=instruct): generic lookup chats for the main job's instruct policy
instruct_chats = 2000         # chats per world (entities drawn without replacement, seeded)
instruct_top_k = 1            # hits per lookup: the top one (short chats; the looked-up name ranks first)
instruct_relation_frac = 0.5  # of the fact lookups: this share asks about a relation of the entity ("Who directed
                              # the film X?"), still one search of X answered by its snippet (0: none, the data
                              # before 2026-12-07 afternoon)
candidate_df = 200            # near-duplicate candidates come from shingles in <= max(this, 1% of) prompts

GROUPS = {  # KnowGen's 24 reporting categories (release eval code): the prompt writer's categories. The paper
    # says its prompts span ~20 categories without a text list we could find; 3 of these 24 are multi-subject
    # variants (in the released items "multiple subject" is a difficulty), so 21 base categories
    "science_and_knowledge": ["astronomy", "biology", "chemistry", "physics", "engineering", "medicine",
                              "industry", "architecture", "history", "geography", "religion", "politics",
                              "culture", "art", "sports"],
    "pop_culture_and_news": ["anime", "game", "film", "celebrities", "posters", "multi-subject-anime",
                             "multi-subject-celebrities", "multi-subject-game", "news"]}
CATEGORIES = [c for cs in GROUPS.values() for c in cs]
JUDGE_KEYS = ["needs_search", "correct", "faithful", "aesthetics", "text_clarity", "safe"]
STAGES = ["prompts", "traj", "gt", "judge", "curate", "instruct"]  # instruct: only when listed (the mini world's)

# ----------------------------------------------------------------------------------------------
# append-only JSONL: the unit of resumability


def stage_rows(path):
    """The rows of one of our stage files in out_dir ([] if not written yet) through dataio.read_jsonl, the one
    reader, with repair: every row is appended as one line, so a torn last line (a kill mid-write) is cut."""
    return [r for _, r in dataio.read_jsonl(path, repair=True, missing_ok=True)]


def write_jsonl(path, rows):
    """Rewrite a whole file atomically (curate's outputs; run_stage's, in id order)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def by_id(rows):
    return {r["id"]: r for r in rows}  # the last row of an id wins


def run_stage(c, name, jobs, fn, path):
    """fn(job, usage) -> row for every job on c.workers threads. Each finished row is appended + flushed at
    once (a kill loses only rows in flight); an exception is a counted failure whose job the next run
    retries; at the end the file is rewritten (atomically) in (id, sample) order. Per-job counts (requests,
    tokens, images) go into the row's "usage" and the stage totals."""
    totals, t0, shown = Counter(rows=0, failed=0), time.time(), 0

    def call(job):
        usage = Counter()
        try:
            return job, fn(job, usage), usage, None
        except Exception as e:  # a fault is a count, never a crash
            return job, None, usage, f"{type(e).__name__}: {e}"

    with open(path, "a", encoding="utf-8") as f, ThreadPoolExecutor(max(1, c.workers)) as ex:
        futures = [ex.submit(call, j) for j in jobs]
        for fut in tqdm(as_completed(futures), total=len(futures), desc=name, disable=not futures):
            job, row, usage, err = fut.result()
            totals.update(usage)
            if row is None:
                totals["failed"] += 1
                if shown < 5:
                    shown += 1
                    print(f"make_data.py [{name}] {job['id']}: failed ({err[:300]}); the next run retries it")
                continue
            row["usage"] = dict(usage)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()
            totals["rows"] += 1
    # the threads finish in any order: rewrite the file in id order, so a stage's output is the same file on every
    # run and after a resume (sft.py trains on instruct.jsonl in its order, under the seeded permutation; until
    # 2026-12-07 that order was the threads' and varied from run to run at one seed)
    write_jsonl(path, sorted(stage_rows(path), key=lambda r: (str(r["id"]), r.get("sample", 0))))
    cost = {"stage": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": len(jobs),
            "seconds": round(time.time() - t0, 2), **dict(sorted(totals.items()))}
    with open(os.path.join(c.out_dir, "costs.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(cost) + "\n")
    print(f"make_data.py [{name}] " + " ".join(f"{k}={v}" for k, v in cost.items() if k not in ("stage", "time")))
    return cost


# ----------------------------------------------------------------------------------------------
# single chat calls (prompt writer, judge): net.chat_completion's retry loop, so every attempt is counted

@lru_cache(maxsize=None)
def _client(base_url, key_env, timeout):  # one per endpoint: connections are reused across the worker threads
    import net
    return net.openai_client(base_url, key_env, timeout)  # key from the environment, no redirects, our own retries


def chat(c, base_url, model, messages, usage, **kw):
    """One chat completion -> reply text (raises RuntimeError after c.retries failed retries)."""
    import net
    cl = _client(base_url, c.api_key_env, c.timeout)
    return net.chat_completion(cl, model, messages, usage, c.retries, **kw)[0].message.content


def parse_json(text, usage):
    """The JSON value in an LLM reply: the whole text, a ``` fenced block, or the outermost {...} / [...]."""
    text = text.strip()
    fenced = re.findall(r"```(?:json)?\s*(.*?)```", text, re.S)
    for cand in [text] + fenced[:1] + [text[text.find(o):text.rfind(cl) + 1] for o, cl in ("[]", "{}") if o in text]:
        try:
            return json.loads(cand)
        except json.JSONDecodeError:
            pass
    usage["parse_errors"] += 1
    raise ValueError(f"no JSON in reply: {text[:120]!r}")


def normalize(text):
    """Dedup key: NFKC, lower case, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text or "").lower()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


# ----------------------------------------------------------------------------------------------
# stage 1: prompts

WRITER_PROMPT = """You write prompts for a text-to-image benchmark whose images cannot be drawn correctly \
without searching the web first. Category: "{category}" (group: {group}).
Write {n} different image-generation prompts. Each prompt must:
- depict specific, verifiable real-world subjects (a named person, place, building, artwork, species, \
vehicle, event, poster, character ...) whose appearance a generator does not reliably know;
- name them only through clues that take 2-3 searches to resolve (e.g. "the stadium of the club that won \
the 2019 league"), never by the answer itself;
- be concrete about composition, setting and style; where readable text belongs in the image (a title, \
a sign, a jersey number) say so;
- mix difficulties (easy, medium, hard) and differ from each other.
Return ONLY a JSON list: [{{"prompt": str, "difficulty": "easy"|"medium"|"hard", \
"target_entities": [the resolved names of the subjects the image must show]}}]"""

QA_PROMPT = """Turn this deep-research question and its verified answer into ONE image-generation prompt. \
The image must show the answer (or a scene centred on it); the prompt must not name the answer but refer to \
it through the question's clues, so drawing it correctly needs the same research. Be concrete about \
composition and style.
Question: {question}
Answer: {answer}
Return ONLY a JSON object: {{"prompt": str, "category": one of {categories}, \
"difficulty": "easy"|"medium"|"hard", "target_entities": [the resolved names of the subjects shown]}}"""


def group_of(category):
    return next((g for g, cs in GROUPS.items() if category in cs), "")


def clean_prompt(p, category=None):
    """A writer's prompt object -> our fields, or None when unusable (counted as invalid_prompts)."""
    if not isinstance(p, dict) or not isinstance(p.get("prompt"), str) or len(p["prompt"].split()) < 4:
        return None
    cat = category or p.get("category")
    if cat not in CATEGORIES:
        return None
    diff = p.get("difficulty") if p.get("difficulty") in ("easy", "medium", "hard") else "medium"
    ents = [e for e in p.get("target_entities") or [] if isinstance(e, str) and e.strip()]
    return {"prompt": p["prompt"].strip(), "category": cat, "difficulty": diff, "entities": ents}


def prompt_job(c, job, usage):
    """One writer request (a category batch or one QA row) -> a prompts_raw row."""
    if job["kind"] == "gen":
        text = WRITER_PROMPT.format(category=job["category"], group=group_of(job["category"]), n=c.prompts_per_request)
    else:
        text = QA_PROMPT.format(question=job["question"], answer=job["answer"], categories=CATEGORIES)
    reply = chat(c, c.llm_base_url, c.llm_model, [{"role": "user", "content": text}], usage,
                 temperature=c.llm_temperature)
    got = parse_json(reply, usage)
    got = got if isinstance(got, list) else [got]
    prompts = [q for q in (clean_prompt(p, job.get("category")) for p in got) if q]
    usage["invalid_prompts"] += len(got) - len(prompts)
    if not prompts:
        raise ValueError(f"no usable prompt in reply: {reply[:120]!r}")
    if job["kind"] == "qa":
        prompts[0]["entities"] = prompts[0]["entities"] or [str(job["answer"])]
    return {"id": job["id"], "kind": job["kind"], "prompts": prompts}


def load_world_items(path):
    """A world's item file through THE item reader (dataio.load_items: JSON list or JSONL, errors name file:line)."""
    if not os.path.exists(path):
        return []
    return dataio.load_items(path)


def world_prompts(world):
    """The mini world's items (with their hidden solution) stand in for the writer's prompts."""
    rows = []
    for split in ("sft", "rl", "bench"):
        path = os.path.join(world, f"{split}.jsonl")
        # target entities: the answer and every named fact (not bare years), so a country cluster stays together
        ps = [{"id": it["id"], "prompt": it["prompt"], "category": it["meta"]["category"],
               "difficulty": it["meta"].get("difficulty", "medium"), "solution": it["solution"],
               "entities": [it["solution"]["answer_entity"]] + [f for f in it["solution"]["facts"] if not f.isdigit()],
               "source_split": split} for it in load_world_items(path)]
        rows.append({"id": f"world-{split}", "kind": "world", "prompts": ps})
    return rows


def build_prompts(raw_rows):
    """prompts_raw rows -> KnowGen-style items, first occurrence (by request id) of a normalized text kept."""
    seen, items, dups = set(), [], 0
    for r in sorted(raw_rows, key=lambda r: r["id"]):
        for p in r["prompts"]:
            key = normalize(p["prompt"])
            if key in seen:
                dups += 1
                continue
            seen.add(key)
            it = {"id": p.get("id") or "p" + hashlib.sha1(key.encode()).hexdigest()[:12], "prompt": p["prompt"],
                  "meta": {"category": p["category"], "difficulty": p["difficulty"]},
                  "entities": p["entities"], "source": r["kind"]}
            for k in ("solution", "source_split"):
                if k in p:
                    it[k] = p[k]
            items.append(it)
    return items, dups


def stage_prompts(c):
    raw_path = os.path.join(c.out_dir, "prompts_raw.jsonl")
    if not c.llm_base_url:  # a mini world's items
        raw = world_prompts(c.world_dir)
        write_jsonl(raw_path, raw)
    else:
        done = set(by_id(stage_rows(raw_path)))
        jobs = [{"id": f"gen-{cat}-{k:04d}", "kind": "gen", "category": cat}
                for cat in CATEGORIES for k in range(c.requests_per_category)]
        for n, q in dataio.read_jsonl(c.qa_path) if c.qa_path else []:
            if not (isinstance(q.get("question"), str) and "answer" in q):
                raise ValueError(f"{c.qa_path}:{n}: a QA row needs 'question' and 'answer'")
            jobs.append({"id": "qa-" + hashlib.sha1(q["question"].encode()).hexdigest()[:12], "kind": "qa",
                         "question": q["question"], "answer": q["answer"]})
        jobs = [j for j in {j["id"]: j for j in jobs}.values() if j["id"] not in done]
        run_stage(c, "prompts", jobs, lambda j, u: prompt_job(c, j, u), raw_path)
        raw = stage_rows(raw_path)
    items, dups = build_prompts(raw)
    write_jsonl(os.path.join(c.out_dir, "prompts.jsonl"), items)
    print(f"make_data.py [prompts] {len(items)} prompts, {dups} duplicates dropped")


# ----------------------------------------------------------------------------------------------
# stage 2: trajectories. A mini world's teacher is an ORACLE replaying the item's hidden solution.hops through
# the real tools (so observations and IMG ids are real); otherwise the teacher is any OpenAI-compatible chat
# model driven by rollout.py's own agent loop (engine "openai"): same prompt, parsers, limits and end reasons.

THINK = {  # templates for the oracle's <think> text; picked by a hash of (item id, hop) so they vary
    "search": ["I need to find out {x} before I can draw this. Let me search.", "Next I should look up {x}."],
    "image_search": ["Now I know what to show; I need a reference image of {x}.",
                     "To get the look right I will search for an image of {x}."],
    "browse": ["The page {u} should answer: {x} I will read it.", "Let me open {u} to check: {x}"],
    "answer": ["I have the evidence: {x}. I can now write a precise prompt with {n} reference image(s).",
               "The search resolved everything ({x}). Writing the final prompt with {n} reference image(s)."]}


def pick(kind, key, table=THINK, **kw):
    opts = table[kind]
    return opts[int(hashlib.sha1(key.encode()).hexdigest(), 16) % len(opts)].format(**kw)


def turn(think, tag, obj):
    """An assistant turn in the protocol: <think>...</think> then one <tool_call> or <answer> JSON block."""
    return f"<think>{think}</think>\n<{tag}>\n{json.dumps(obj, ensure_ascii=False)}\n</{tag}>"


def teacher_settings(c):
    """rollout.py's protocol settings for the teacher and the oracle: max_rounds normal calls (+ the forced
    final one), the context cap, the prompt style and date (an argument; rollout.py's globals stay untouched)."""
    import rollout
    return rollout.settings(dict(max_rounds=c.teacher_max_rounds, context_cap=c.max_traj_tokens,
                                 system_style=c.system_style, date=c.date), where="make_data.py")


def oracle_trajectory(c, item, tb, world_images, pol, sys_text=None, think=THINK):
    """The correct multi-hop trajectory from item["solution"], built by rollout.py's own turn handling (so its
    record, tokens included, is what a policy writing these turns would get): each hop is a tool-call turn run
    through tools.run_tool; the answer names the IMG ids the registry assigned to the solution's references.
    sys_text / think: another system prompt and <think> templates (the instruct stage's generic chats)."""
    import rollout
    import tools
    if not isinstance(item.get("solution"), dict):
        raise ValueError(f"item {item['id']}: the oracle needs a mini-world solution (set --teacher_base_url)")
    sol = item["solution"]
    rs = teacher_settings(c)
    t = rollout.new_traj(item, 0, pol, sys_text or rollout.system_prompt(c.date, rs), rs)
    t.api = True  # text turns (re-tokenized), every image attached
    for i, hop in enumerate(sol["hops"]):
        a = hop["arguments"]
        x = "; ".join(a["queries"]) if hop["name"] == "search" else a.get("query", "")
        think_i = pick(hop["name"], f"{item['id']}/{i}", think, x=x, u=a.get("url", ""))
        if (rollout.take_text_turn(t, turn(think_i, "tool_call", hop), False, pol, False) or [None])[0] != "tool":
            raise ValueError(f"oracle hop {i} of {item['id']} is not a runnable tool call ({t.end}: {t.error})")
        t.tool_calls[hop["name"]] += 1
        res = tools.run_tool(tb, hop["name"], a, t.registry)
        rollout.observe(t, pol, res.text, res.images)
        if t.end:  # overlong: kept with its reason
            return dict(rollout.to_record(t, pol, c.date), teacher="oracle")
    by_url = {v["url"]: v for v in t.registry.values()}
    refs = [by_url.get(world_images.get(i, {}).get("url")) for i in sol["ref_image_ids"]]
    missing = [i for i, r in zip(sol["ref_image_ids"], refs) if r is None]
    if missing:  # the hops never surfaced a reference: kept, with the reason, and filtered in curate
        return dict(rollout.to_record(t, pol, c.date), teacher="oracle", end_reason="error",
                    error=f"oracle: hops never showed reference images {missing}")
    think_a = pick("answer", item["id"], think, x=", ".join(sol["facts"]) or sol["answer_entity"], n=len(refs))
    body = {"gen_prompt": sol["gen_prompt"], "reference_images": [
        {"img_id": r["img_id"], "note": f"{r['title']}: use its exact appearance"} for r in refs]}
    rollout.take_text_turn(t, turn(think_a, "answer", body), False, pol, False)  # parsed as the policy's would be
    rec = dict(rollout.to_record(t, pol, c.date), teacher="oracle")
    if t.end != "answer" or [r["img_id"] for r in rec["answer"]["reference_images"]] != [r["img_id"] for r in refs]:
        raise ValueError(f"oracle answer of {item['id']} does not parse back: {t.end}: {t.error}")
    return rec


def load_tokenizing_policy(c, name=None):
    """rollout.tokenizer_policy of tokenizer_dir (tokenize_vl: VL image tokens for a bare tokenizer dir)."""
    import rollout
    return rollout.tokenizer_policy(c.tokenizer_dir, name or os.path.basename(c.tokenizer_dir.rstrip("/")), c.tokenize_vl)


def stage_traj(c):
    import rollout
    import tools
    path = os.path.join(c.out_dir, "trajectories.jsonl")
    done = set(by_id(stage_rows(path)))
    items = [it for it in stage_rows(os.path.join(c.out_dir, "prompts.jsonl")) if it["id"] not in done]
    kw = {"summarizer_base_url": c.summarizer_base_url} if c.summarizer_base_url else {}
    kw.update(c.tool_kwargs)
    tb = tools.make_toolbox("local" if not c.teacher_base_url else c.tool_backend, world_dir=c.world_dir or tools.world_dir,
                            image_dir=os.path.abspath(os.path.join(c.out_dir, "tool_images")), **kw)
    world_images = by_image_id(c)
    # records get tokens / loss_mask / images from rollout.py when tokenizer_dir is set, else messages only
    teacher = load_tokenizing_policy(c, c.teacher_model if c.teacher_base_url else "oracle")
    if c.teacher_base_url:  # the teacher is rollout.py's agent on its "openai" engine
        eng = rollout.make_engine("openai", teacher, base_url=c.teacher_base_url, model=c.teacher_model, workers=1,
                                  api_key_env=c.api_key_env, max_tokens=c.teacher_max_tokens, timeout=c.timeout,
                                  retries=c.retries, s=teacher_settings(c))

    def one(item, usage):
        if not c.teacher_base_url:
            rec = oracle_trajectory(c, item, tb, world_images, teacher)
        else:
            rec = rollout.rollout([item], teacher, eng, tb, day=c.date, temperature=c.teacher_temperature, top_p=None,
                                  s=teacher_settings(c))[0]
            usage.update(rec.pop("usage", {}))
            if rec["end_reason"] == "error":  # an API fault (or a bug): counted, and the next run retries the item
                raise RuntimeError(rec["error"])
            rec["teacher"] = c.teacher_model
        usage["tool_calls"] += sum(rec["tool_calls"].values())
        return rec

    try:
        run_stage(c, "traj", items, one, path)
    finally:
        tools.close_toolbox(tb)


# ----------------------------------------------------------------------------------------------
# stage 3: ground truth. The generator (image_server.generate: offline for a mini world, the Qwen-Image-Edit servers
# or an image API otherwise) renders each valid answer's gen_prompt with its references.

def usable(rec):
    import reward
    return rec is not None and rec.get("end_reason") == "answer" and reward.invalid_reason(rec) is None


def gt_backend(c):
    """The ground-truth generator (image_server.generate's backend): gen_backend, or for "auto" the image servers when
    generator_urls are given, the offline stand-in for a mini world, else the paper's Nano Banana Pro ("gemini")."""
    if c.gen_backend != "auto":
        return c.gen_backend
    return "server" if c.generator_urls else "offline" if c.world_dir else "gemini"


def generator_label(rc):
    """What gt.jsonl's "generator" names: the backend and, where it has one, the model (reward.py's keys)."""
    model = {"gemini": rc["gen_gemini_model"], "openai": rc["gen_openai_model"], "seedream": rc["gen_seedream_model"],
             "server": "qwen-image-edit"}.get(rc["gen_backend"])
    return f"{rc['gen_backend']}:{model}" if model else rc["gen_backend"]


def stage_gt(c):
    import image_server
    import reward
    path = os.path.join(c.out_dir, "gt.jsonl")
    done = set(by_id(stage_rows(path)))
    trajs = [r for r in by_id(stage_rows(os.path.join(c.out_dir, "trajectories.jsonl"))).values()
             if usable(r) and r["id"] not in done]
    os.makedirs(os.path.join(c.out_dir, "gt"), exist_ok=True)
    rc = reward.make_config(**{"gen_retries": c.retries, **c.reward_kwargs, "gen_backend": gt_backend(c),
                               "generator_urls": list(c.generator_urls)})
    label = generator_label(rc)

    def one(rec, usage):
        name = "gt/" + re.sub(r"[^A-Za-z0-9_.-]", "_", rec["id"]) + ".png"
        tmp = os.path.join(c.out_dir, f"{name[:-4]}.{os.getpid()}.tmp.png")
        # the generator gets the original images (tools.py's source_path), not the agent's resized JPEG copies
        refs = [reward.reference_file(r) for r in reward.valid_refs(rec["answer"])]
        usage["gen_requests"] += 1
        image_server.generate(rec["answer"]["gen_prompt"], refs, tmp, rc)
        os.replace(tmp, os.path.join(c.out_dir, name))  # the row is written only after the file is complete
        usage["images_generated"] += 1
        return {"id": rec["id"], "gt_image": name, "generator": label}

    run_stage(c, "gt", trajs, one, path)


# ----------------------------------------------------------------------------------------------
# stage 4a: judge. Paper: judge scores "needs search? correct? faithful? aesthetics, text clarity, safety".

JUDGE_PROMPT = """You curate training data for knowledge-intensive image generation. Below are a user's image \
prompt, the evidence a search agent collected, its final generation prompt and references, and (attached) the \
image a strong generator rendered from that answer. Answer each question with 1 (yes) or 0 (no):
- needs_search: would a strong image generator WITHOUT web search most likely get key facts of the prompt wrong?
- correct: does the final answer resolve the prompt's clues correctly and agree with the evidence?
- faithful: does the attached image show what the final generation prompt describes?
- aesthetics: is the image of good visual quality (composition, no artifacts)?
- text_clarity: is all readable text the image needs legible and exactly right? (1 if it needs none)
- safe: are the prompt and the image free of sexual, violent, hateful or private-person content?
Return ONLY JSON: {{"rationale": str, "needs_search": 0|1, "correct": 0|1, "faithful": 0|1, "aesthetics": 0|1, \
"text_clarity": 0|1, "safe": 0|1}}

# User prompt
{prompt}

# Evidence (tool observations, truncated)
{evidence}

# Final answer
{answer}"""

UNSAFE = re.compile(r"\b(nude|naked|gore|beheading|porn|sexual)\b", re.I)  # the offline judge's stand-in


def evidence_text(rec, limit):
    obs = [m["content"] for m in rec["messages"] if m["role"] == "user" and m["content"].startswith("<tool_response>")]
    return "\n".join(obs)[:limit]


def llm_judge(c, item, rec, gt_path, usage):
    import reward
    import rollout
    text = JUDGE_PROMPT.format(prompt=item["prompt"], evidence=evidence_text(rec, c.judge_evidence_chars),
                               answer=reward.answer_text(rec["answer"]))
    usage["images_in"] += 1  # the ground truth as a data-URL image part, then the text
    msgs = rollout.chat_messages([{"role": "user", "content": text, "images": [gt_path]}])
    reply = chat(c, c.judge_base_url, c.judge_model, msgs, usage, temperature=0.0)
    got = parse_json(reply, usage)
    if not isinstance(got, dict) or any(got.get(k) not in (0, 1, True, False) for k in JUDGE_KEYS):
        raise ValueError(f"judge reply lacks 0/1 scores for {JUDGE_KEYS}: {reply[:120]!r}")
    return {**{k: int(got[k]) for k in JUDGE_KEYS}, "rationale": str(got.get("rationale", ""))[:2000]}


def offline_judge(c, item, rec, gt_path, world_images):
    """The mini world's judge, from the hidden solution. needs_search: the answer adds facts or references the
    prompt lacks; correct: the references are the solution's images in order and every fact is in gen_prompt;
    faithful / aesthetics: our render agrees with the world's own ground truth (reward's offline K-Score judge);
    text_clarity: the required text is quoted exactly and fits the 20 characters the offline generator draws;
    safe: no word from a small block list."""
    import image_server
    import reward
    if not isinstance(item.get("solution"), dict):
        raise ValueError(f"item {item['id']}: the offline judge needs a mini-world solution (set --judge_base_url)")
    sol, ans = item["solution"], rec["answer"]
    gp = ans["gen_prompt"].lower()
    urls = {r["url"]: i for i, r in world_images.items()}
    chosen = [urls.get(r.get("url")) for r in ans["reference_images"]]
    new_facts = [f for f in sol["facts"] if f.lower() in gp and f.lower() not in item["prompt"].lower()]
    k = reward.judge_kscore_offline(gt_path, os.path.join(c.world_dir, f"gt/{item['id']}.png"), sol)
    need = sol.get("required_text")
    q = image_server.quoted_text(ans["gen_prompt"])
    return {"needs_search": int(bool(new_facts or chosen)),
            "correct": int(chosen == sol["ref_image_ids"] and all(f.lower() in gp for f in sol["facts"])),
            "faithful": int(k["faithfulness"] == 1 and k["visual_correctness"] == 1), "aesthetics": int(k["aesthetics"] == 1),
            "text_clarity": int(need is None or (q == need.strip() and len(q) <= 20)),
            "safe": int(not UNSAFE.search(item["prompt"] + " " + ans["gen_prompt"])),
            "rationale": f"offline: refs={chosen} new_facts={new_facts} {k['rationale']}"}


def stage_judge(c):
    path = os.path.join(c.out_dir, "judge.jsonl")
    done = set(by_id(stage_rows(path)))
    items = by_id(stage_rows(os.path.join(c.out_dir, "prompts.jsonl")))
    trajs = by_id(stage_rows(os.path.join(c.out_dir, "trajectories.jsonl")))
    jobs = [g for g in stage_rows(os.path.join(c.out_dir, "gt.jsonl")) if g["id"] not in done and g["id"] in items]
    world_images = by_image_id(c)

    def one(g, usage):
        item, rec, gt = items[g["id"]], trajs[g["id"]], os.path.join(c.out_dir, g["gt_image"])
        if c.judge_base_url:
            return {"id": g["id"], **llm_judge(c, item, rec, gt, usage), "judge": c.judge_model}
        return {"id": g["id"], **offline_judge(c, item, rec, gt, world_images), "judge": "offline"}

    run_stage(c, "judge", jobs, one, path)


def by_image_id(c):
    if not c.world_dir:
        return {}
    return {r["image_id"]: r for _, r in dataio.read_jsonl(os.path.join(c.world_dir, "images.jsonl"))}


# ----------------------------------------------------------------------------------------------
# stage 4b: rule filters, then the split. Pure functions of the stage files: re-running gives the same bytes.

def rule_reasons(c, item, rec, gt, judge):
    """Why an item is not kept ([] = kept). Rules: failed stages, too long, inconsistent search, judge."""
    if rec is None:
        return ["failed:traj"]
    if not usable(rec):
        return [f"invalid:{rec.get('end_reason')}" + (f" ({rec['error']})" if rec.get("error") else "")]
    out = []
    n_tok = len(rec["tokens"]) or sum(len(m["content"]) for m in rec["messages"]) // 4  # chars/4 without tokens
    if n_tok > c.max_traj_tokens or sum(rec["tool_calls"].values()) > c.max_tool_calls:
        out.append("too_long")
    out += [f"inconsistent:{w}" for w in inconsistent_search(item, rec)]
    if gt is None:
        return out + ["failed:gt"]
    if judge is None:
        return out + ["failed:judge"]
    return out + [f"judge:{k}" for k in JUDGE_KEYS if judge[k] != 1]


def inconsistent_search(item, rec):
    """Evidence that does not hold together: (1) the same call answered differently within the trajectory,
    (2) a reference no image_search returned, (3) text to render (quoted in gen_prompt) found in neither the
    prompt nor any observation."""
    import image_server
    why, seen, obs = [], {}, []
    msgs = rec["messages"]
    for m, nxt in zip(msgs, msgs[1:]):
        if m["role"] == "assistant" and "<tool_call>" in m["content"] and nxt["role"] == "user":
            key = normalize(m["content"].split("<tool_call>", 1)[1])
            if seen.setdefault(key, nxt["content"]) != nxt["content"]:
                why.append("repeat_call_differs")
            obs.append(nxt["content"])
    for r in rec["answer"]["reference_images"]:
        if not any((r.get("url") or "\0") in o or r["img_id"] in o for o in obs):
            why.append(f"unseen_reference:{r['img_id']}")
    q = image_server.quoted_text(rec["answer"]["gen_prompt"])
    if q and q.lower() not in (item["prompt"] + "\n".join(obs)).lower():
        why.append("unsupported_text")
    return why


def shingles(text, k):
    w = normalize(text).split()
    return {" ".join(w[i:i + k]) for i in range(max(1, len(w) - k + 1))}


NAME = re.compile(r"[A-Z0-9][\w'-]*(?:(?:\s+(?:of|the|de|la|von|van|der))*\s+[A-Z0-9][\w'-]*)*")


def names(text):
    """Proper names and numbers in a prompt: runs of capitalised words ("The Last Gukuk", "Battle of Bimo"),
    minus a lone capitalised word that starts a sentence."""
    out = set()
    for m in NAME.finditer(text):
        if " " in m.group() or not re.search(r"(^|[.!?:]\s*)$", text[:m.start()]):
            out.add(m.group().lower())
    return out


def jaccard(a, b):
    return len(a & b) / len(a | b) if a or b else 1.0


def near_dup(a, b, thr):
    """a, b = (shingles, names). Near-duplicates: word-shingle Jaccard >= thr AND the same names (Jaccard >=
    thr): "the flag of the country whose capital is Zimos" and "... is Muti" share a template, not a request."""
    return jaccard(a[0], b[0]) >= thr and jaccard(a[1], b[1]) >= thr


def dup_keys(items, c):
    return [(shingles(it["prompt"], c.shingle_words), names(it["prompt"])) for it in items]


def components(items, c):
    """Union-find over items: the same normalized prompt, a shared target entity or near-duplicate prompts put
    items in one component, and a component goes to exactly one split. Near-duplicate candidates come from
    shingles found in at most max(candidate_df, 1% of) prompts (exact below that size; a pair made only of
    very common shingles is missed past it)."""
    parent = list(range(len(items)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first = {}
    for i, it in enumerate(items):
        for key in ["p:" + normalize(it["prompt"])] + ["e:" + normalize(e) for e in it.get("entities") or []]:
            parent[find(i)] = find(first.setdefault(key, i))
    keys = dup_keys(items, c)
    df = Counter(s for sh, _ in keys for s in sh)
    cap = max(c.candidate_df, len(items) // 100)
    index = defaultdict(list)
    for i, (sh, _) in enumerate(keys):
        for j in {j for s in sh if df[s] <= cap for j in index[s]}:
            if near_dup(keys[i], keys[j], c.near_dup_jaccard):
                parent[find(i)] = find(j)
        for s in sh:
            index[s].append(i)
    groups = defaultdict(list)
    for i in range(len(items)):
        groups[find(i)].append(items[i])
    return list(groups.values())


def assign_splits(comps, c):
    """Components -> {"sft", "rl", "bench"}. split_by="source": a component takes the strictest source split of
    its members (bench > rl > sft), so a mini world's held-out clusters stay held out. "auto": components in a
    seeded hash order fill bench per category (bench_frac; KnowGen covers every category), then RL (rl_frac of
    the rest), then SFT."""
    out = {"sft": [], "rl": [], "bench": []}
    if c.split_by == "source":
        for comp in comps:
            src = {it.get("source_split", "sft") for it in comp}
            out[next(s for s in ("bench", "rl", "sft") if s in src)] += comp
        return out
    if c.split_by != "auto":
        raise ValueError(f"make_data.py: split_by must be 'auto' or 'source', got {c.split_by!r}")
    per_cat = Counter(it["meta"]["category"] for comp in comps for it in comp)
    quota, cum = {}, 0  # cumulative rounding: per-category quotas that sum to round(bench_frac * total)
    for cat in sorted(per_cat, key=lambda x: (CATEGORIES + sorted(per_cat)).index(x)):
        quota[cat] = round(c.bench_frac * (cum + per_cat[cat])) - round(c.bench_frac * cum)
        cum += per_cat[cat]
    n_rl = round(c.rl_frac * (sum(per_cat.values()) - sum(quota.values())))
    in_bench = Counter()
    for comp in sorted(comps, key=lambda cp: hashlib.sha1(f"{c.seed}:{min(it['id'] for it in cp)}".encode()).hexdigest()):
        cat = Counter(it["meta"]["category"] for it in comp).most_common(1)[0][0]
        if in_bench[cat] < quota[cat]:
            in_bench.update(it["meta"]["category"] for it in comp)
            out["bench"] += comp
        elif len(out["rl"]) < n_rl:
            out["rl"] += comp
        else:
            out["sft"] += comp
    return out


def overlap_report(splits, c):
    """Pairs across splits sharing a normalized prompt, a target entity, or near-duplicates: all pairs, brute
    force (an independent check of components(); must be all 0)."""
    tagged = [(s, it) for s in splits for it in splits[s]]
    keys = dup_keys([it for _, it in tagged], c)
    ents = [{normalize(e) for e in it.get("entities") or []} for _, it in tagged]
    rep = {"prompt": 0, "entity": 0, "near_dup": 0}
    for i in range(len(tagged)):
        for j in range(i + 1, len(tagged)):
            if tagged[i][0] != tagged[j][0]:
                rep["prompt"] += normalize(tagged[i][1]["prompt"]) == normalize(tagged[j][1]["prompt"])
                rep["entity"] += bool(ents[i] & ents[j])
                rep["near_dup"] += near_dup(keys[i], keys[j], c.near_dup_jaccard)
    return rep


def to_sharegpt(rec, rel_dir):
    """The release's SFT row: one <image> placeholder per attached image, before that turn's text."""
    msgs, images = [], []
    for m in rec["messages"]:
        ims = m.get("images") or []
        images += [os.path.relpath(p, rel_dir) for p in ims]
        msgs.append({"role": m["role"], "content": "<image>" * len(ims) + m["content"]})
    return {"messages": msgs, "images": images}


def item_row(it, gt_image, hidden=True):
    row = {"id": it["id"], "prompt": it["prompt"], "meta": it["meta"], "gt_image": gt_image}
    if hidden and "solution" in it:
        row["solution"] = it["solution"]  # the mini world's offline judges need it; the policy never sees it
    return row


def stage_curate(c):
    o, rel = c.out_dir, os.path.join(c.out_dir, "release")
    items = stage_rows(os.path.join(o, "prompts.jsonl"))
    trajs, gts, judges = (by_id(stage_rows(os.path.join(o, f)))
                          for f in ("trajectories.jsonl", "gt.jsonl", "judge.jsonl"))
    cur = []
    for it in items:
        why = rule_reasons(c, it, trajs.get(it["id"]), gts.get(it["id"]), judges.get(it["id"]))
        cur.append({"id": it["id"], "kept": not why, "reasons": why})
    write_jsonl(os.path.join(o, "curation.jsonl"), cur)
    kept_ids = {r["id"] for r in cur if r["kept"]}
    kept = sorted((it for it in items if it["id"] in kept_ids), key=lambda it: it["id"])
    splits = {s: sorted(v, key=lambda it: it["id"]) for s, v in assign_splits(components(kept, c), c).items()}
    gt = {i: g["gt_image"] for i, g in gts.items()}
    write_jsonl(os.path.join(o, "sft.jsonl"), [{k: v for k, v in trajs[it["id"]].items() if k != "usage"}
                                               for it in splits["sft"]])
    for s in ("rl", "bench"):
        write_jsonl(os.path.join(o, f"{s}.jsonl"), [item_row(it, gt[it["id"]]) for it in splits[s]])
    write_jsonl(os.path.join(rel, "sft_sharegpt.jsonl"), [to_sharegpt(trajs[it["id"]], rel) for it in splits["sft"]])
    write_jsonl(os.path.join(rel, "rl.jsonl"), [{"id": it["id"], "prompt": it["prompt"], "gt_image": "../" + gt[it["id"]]}
                                                for it in splits["rl"]])
    write_jsonl(os.path.join(rel, "knowgen.jsonl"), [item_row(it, "../" + gt[it["id"]], hidden=False)
                                                     for it in splits["bench"]])
    summary = {"prompts": len(items), "kept": len(kept),
               "reasons": dict(sorted(Counter(r.split(" (")[0] for x in cur for r in x["reasons"]).items())),
               "sizes": {s: len(v) for s, v in splits.items()},
               "categories": {s: dict(sorted(Counter(it["meta"]["category"] for it in v).items()))
                              for s, v in splits.items()},
               "overlap": overlap_report(splits, c)}
    if c.world_dir:  # reward.py's offline text judge reads images.jsonl from the items' dir (grpo's data_dir)
        write_jsonl(os.path.join(o, "images.jsonl"), [dict(r, path=os.path.abspath(os.path.join(c.world_dir, r["path"])))
                                                      for r in by_image_id(c).values()])
    with open(os.path.join(o, "split.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"make_data.py [curate] kept {len(kept)}/{len(items)} sizes={summary['sizes']} "
          f"overlap={summary['overlap']} reasons={summary['reasons']}")
    if any(summary["overlap"].values()):
        raise RuntimeError(f"make_data.py: split overlap {summary['overlap']} (a bug: components() should prevent it)")
    return summary


# ----------------------------------------------------------------------------------------------
# instruct (mini world only, not one of the paper's stages; run with --stages=instruct): generic tool-use chats, the
# tiny model's stand-in for the post-training that made Qwen3-VL-8B-Instruct follow a system prompt and call tools.
# The CPU main job trains its "instruct" policy on these (runcpu.sh): the "workflow" row, i.e. the paper's untrained
# Qwen3-VL-8B prompted to search, and what SFT starts from. One lookup per world entity: "tell me about X" (search
# X -> answer with the top hit's snippet; half of them asked as a relation, "who directed the film X?", with the same
# search and answer), "find a picture of X" (image_search -> answer with the image), or both, under one of three
# generic system prompts. Never seen by it: our system prompt, an image-generation request, a
# multi-hop search, a composed evidence prompt. Shared with the agent, because a 1M-parameter model cannot read a
# format off a system prompt as an 8B one does: the tool-call syntax and the answer's JSON keys. Written to
# out_dir/instruct.jsonl (trajectory records).

INSTRUCT_SYSTEM = [  # picked per chat by a hash of its id, so the policy does not depend on one wording
    "You are a helpful assistant with tools: {tools}. Reply <think>...</think> then <tool_call>{{\"name\": ..., "
    "\"arguments\": {{...}}}}</tool_call> or <answer>{{\"gen_prompt\": ..., \"reference_images\": [...]}}</answer>. "
    "Date: {date}",
    "Assistant. Tools: {tools}. Think in <think></think>, call one tool in <tool_call></tool_call>, and finish "
    "with <answer></answer> holding gen_prompt and reference_images. Date: {date}",
    "Answer the user's question. You may use {tools}. Date: {date}"]
INSTRUCT_THINK = {
    "search": ["The user asks about {x}. Let me search.", "I should look up {x}."],
    "image_search": ["I will search for an image: {x}.", "Let me find a picture of {x}."],
    "browse": ["Let me open {u}: {x}"],
    "answer": ["I found {x}. Replying with {n} image(s).", "The search found {x}; {n} image(s) to show."]}
INSTRUCT_ASK = {  # prompt templates: the name at the start, the end, or inside a longer sentence
    "fact": ["Tell me about {n}.", "What is known about {n}?", "Look up {n} and summarise it.",
             "I am writing a report. Find the facts on {n}.", "Give me a short summary of {n}, please.",
             "{n}: who or what is it?", "For a school project about {n}, I need the key facts in a sentence or two.",
             "Please check what {n} is, where it is, and anything notable about it.",
             "My friend mentioned {n} yesterday, but I have no idea what it is. Can you find out?"],
    "picture": ["Find a picture of {t}.", "Show me an image: {t}.", "I need a reference image of {t}.",
                "{t}: what does it look like? Find an image.",
                "I am making a slide about {t}, so I need an image of it for the background.",
                "Could you look for {t}, as an image I can show to my class tomorrow?"],
    "both": ["Tell me about {n} and find a picture of it.", "Find facts and an image of {n}.",
             "{n}: summarise it and show me what it looks like.",
             "I keep hearing about {n}, so please find out what it is and show me a picture of it."]}
INSTRUCT_RELATION = {  # fact lookups phrased as a question about one relation of the entity, by its kind: the name
    # sits inside a request about something else, as in the agent's prompts, and is still what one searches
    "person": ["What is {n} known for?", "Which film or club is {n} linked to?", "What does {n} look like?"],
    "city": ["What is the famous landmark of the city of {n}?", "Which country is the city of {n} in?"],
    "landmark": ["In which city is the {n}?", "What does the {n} look like?"],
    "film": ["Who directed the film {n}?", "Who is the lead actor of the film {n}?", "When did the film {n} come out?"],
    "country": ["What is the capital of {n}?", "Who is the leader of {n}?"],
    "festival": ["Which city hosts the {n}?", "When is the {n} held?"],
    "history": ["Where was the {n} fought?", "In which year did the {n} take place?"],
    "news": ["Who opened the {n}?", "Where was the {n} held?"],
    "club": ["Which city is the club {n} from?", "Who plays for {n}?"],
    "studio": ["Which films did the studio {n} make?"], "gamestudio": ["Which games did {n} make?"],
    "game": ["Which studio made the video game {n}?"]}


def instruct_items(c):
    """The world's lookup chats as items with an oracle solution (the form oracle_trajectory replays)."""
    import random
    with open(os.path.join(c.world_dir, "world.json"), encoding="utf-8") as f:
        ents = json.load(f)["entities"]
    titles = {i: r["title"] for i, r in by_image_id(c).items()}
    top_k = c.instruct_top_k
    rng = random.Random(c.seed)
    out = []
    for k, e in enumerate(rng.sample(ents, min(c.instruct_chats, len(ents)))):
        kind = rng.choice(["fact", "picture", "both"] if e.get("image") in titles else ["fact"])
        n, t = e["name"], titles.get(e.get("image"))
        ask = INSTRUCT_ASK[kind]
        if kind == "fact" and c.instruct_relation_frac > 0 and rng.random() < c.instruct_relation_frac:
            ask = INSTRUCT_RELATION.get(e["kind"], ask)
        hops = ([{"name": "search", "arguments": {"queries": [n], "top_k": top_k}}] if kind != "picture" else []) + \
               ([{"name": "image_search", "arguments": {"query": t, "top_k": top_k}}] if kind != "fact" else [])
        out.append({"id": f"instruct_{k:05d}", "prompt": rng.choice(ask).format(n=n, t=t),
                    "meta": {"category": "lookup", "difficulty": "easy"},
                    "solution": {"answer_entity": n, "facts": [], "hops": hops,
                                 "ref_image_ids": [e["image"]] if kind != "fact" else [],
                                 "gen_prompt": None if kind != "picture" else t}})  # None: the top hit's
    return out                                                                           # snippet (stage_instruct)


def stage_instruct(c):
    import rollout
    import tools
    if not c.world_dir:
        raise ValueError("make_data.py: stage instruct needs --world_dir (its chats are the mini world's lookups)")
    path = os.path.join(c.out_dir, "instruct.jsonl")
    done = set(by_id(stage_rows(path)))
    items = [it for it in instruct_items(c) if it["id"] not in done]
    tb = tools.make_toolbox("local", world_dir=c.world_dir,
                            image_dir=os.path.abspath(os.path.join(c.out_dir, "tool_images")), **c.tool_kwargs)
    world_images, pol = by_image_id(c), load_tokenizing_policy(c, "oracle")
    sigs, day = rollout.tool_signatures(), c.date

    def one(item, usage):
        sol = item["solution"]
        if sol["gen_prompt"] is None:  # a fact lookup answers with the top hit's snippet exactly as the search shows
            hop = sol["hops"][0]       # it (a page's text beyond the snippet was never read: not in the answer)
            shown = tools.run_tool(tb, hop["name"], hop["arguments"], {}).text
            hit = re.search(r"^\[[^\]]*\]\([^)]*\) (.+)$", shown, re.M)  # "[title](url) snippet"
            if not hit:
                raise ValueError(f"{item['id']}: no search hit for {hop['arguments']}")
            item = dict(item, solution=dict(sol, gen_prompt=hit.group(1).strip()))
        sys_text = pick("system", item["id"], {"system": INSTRUCT_SYSTEM}, tools=sigs, date=day)
        rec = oracle_trajectory(c, item, tb, world_images, pol, sys_text, INSTRUCT_THINK)
        if rec["end_reason"] != "answer":  # a lookup whose target did not surface: not a chat worth training on
            raise ValueError(f"{item['id']}: {rec['end_reason']} ({rec.get('error')})")
        return rec

    try:
        run_stage(c, "instruct", items, one, path)
    finally:
        tools.close_toolbox(tb)


# ----------------------------------------------------------------------------------------------

def config():
    """The configurable globals of this module as a dict (what configurator.configure sets)."""
    from configurator import config_keys
    g = globals()
    return {k: g[k] for k in config_keys(g)}


def main(**overrides):
    """Run the stages listed in `stages` (in pipeline order) with the module config plus overrides."""
    c = SimpleNamespace(**{**config(), **overrides})
    c.date = c.date or _date.today().isoformat()
    os.makedirs(c.out_dir, exist_ok=True)
    todo = [s.strip() for s in c.stages.split(",") if s.strip()]
    need = {"prompts": "llm_base_url", "traj": "teacher_base_url", "judge": "judge_base_url"}
    for s in todo:
        if s not in STAGES:
            raise ValueError(f"make_data.py: unknown stage {s!r} in --stages (known: {','.join(STAGES)})")
        if not c.world_dir and s in need and not getattr(c, need[s]):  # no endpoint, no offline fallback
            raise ValueError(f"make_data.py: stage {s} needs --{need[s]} (or --world_dir for the mini world)")
    for s in STAGES:
        if s in todo:
            globals()[f"stage_{s}"](c)


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    main()
