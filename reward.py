"""
reward.py: everything that turns a finished trajectory into a number. Generate an image from the agent's
answer (image_server.generate), ask the K-Score judge (generated vs ground truth) and the text judge (answer
text vs ground truth), combine them into the paper's dual reward. grpo.py calls one function, score().

CPU, the mini world (offline generator + offline judges, no GPU, no keys):
    python reward.py --trajectories=out/rollouts.jsonl --items=data/miniworld/rl.jsonl
One GPU per image server (see image_server.py) + an OpenAI-compatible judge (key from $OPENAI_API_KEY):
    python reward.py --trajectories=out/rollouts.jsonl --items=data/knowgen/rl.jsonl --data_dir=data/knowgen \
        --gen_backend=server --generator_urls="['http://127.0.0.1:8000','http://127.0.0.1:8001']" \
        --judge_backend=openai --judge_model=gpt-4.1
(in training, grpo.py imports score() and passes these settings as keyword arguments).

Backends. gen_backend (the generator keys below are score()'s; image_server.py holds the clients): "offline" =
image_server.offline_generate (the mini world's stand-in for Qwen-Image-Edit), "server" = image_server.py's
POST /generate (the release's contract), "openai" = an OpenAI-compatible image API (images.generate /
images.edit) for transfer experiments, "gemini" / "seedream" = the transfer rows' APIs. judge_backend: "offline"
= pixel/solution judges below (stand-ins for GPT-4.1 that need the item's hidden `solution`), "openai" = any
OpenAI-compatible chat server.
"""
import concurrent.futures as cf
import hashlib
import json
import logging
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from functools import lru_cache

import numpy as np
from PIL import Image

import dataio  # THE reader of JSONL files (stdlib only)
import image_server  # the image generator: generate(), the offline generator's layout (no torch at import)
import net  # the one retry loop (stdlib only)
from configurator import config_keys

# ----------------------------------------------------------------------------------------------
# config (every key can be passed to score(...) as a keyword argument, or on the command line)
lam = 0.5                        # paper: r = (1-λ)K + λ r_text, λ = 0.5 (λ in [0.3, 0.6] all strong)
data_dir = "data/miniworld"      # relative gt_image paths (and the offline judge's images.jsonl) live here
out_dir = "out/gen_images"       # generated images are saved here
score_workers = 64               # trajectories generated concurrently (each waits for its generator slot)
# generator (image_server.generate reads these from score()'s config)
gen_backend = "offline"          # "offline" | "server" | "openai" | "gemini" | "seedream"
generator_urls = ["http://127.0.0.1:8000"]  # one image_server.py per GPU
gen_server_token_env = "IMAGE_SERVER_TOKEN"  # env var with image_server.py's bearer token (sent if set)
gen_per_server = 2               # requests in flight per server URL (1 generating + 1 queued hides transfer)
gen_max_refs = 3                 # release: the client sends at most the first 3 references
gen_timeout = 1800.0             # s, release: long timeout (a 40-step 20B edit can queue behind others)
gen_retries = 3                  # attempts after the first (net.retryable faults: timeouts, 408/409/429/5xx, no image)
gen_backoff = 2.0                # s, base of the jittered exponential backoff
gen_seed = 0                     # release request: seed 0 ...
gen_true_cfg_scale = 4.0         # ... true_cfg_scale 4.0 ...
gen_negative_prompt = " "        # ... negative_prompt " " ...
gen_steps = 40                   # ... num_inference_steps 40 (edit) ...
gen_text_only_steps = 50         # ... and 50 for text-only Qwen-Image (no references, eval only)
gen_guidance_scale = 1.0         # ... guidance_scale 1.0, num_images_per_prompt 1
gen_openai_model = "gpt-image-1" # image API backend (transfer experiments)
gen_openai_base_url = None       # None = api.openai.com
gen_openai_size = "1024x1024"
gen_openai_concurrency = 4
# transfer rows (Table 1: Nano Banana Pro, Seedream 4.5), as the release's eval clients call them; every reference
# is sent (the 3-image cap is Qwen-Image-Edit's), as the original file's bytes
gen_gemini_base_url = "https://generativelanguage.googleapis.com/v1beta"  # POST {base}/models/{model}:generateContent
gen_gemini_model = "gemini-3-pro-image-preview"   # Nano Banana Pro (release default)
gen_gemini_key_env = "GEMINI_API_KEY"             # sent as the x-goog-api-key header
gen_seedream_base_url = "https://ark.cn-beijing.volces.com/api/v3"  # POST {base}/images/generations (Volcengine ARK)
gen_seedream_model = "doubao-seedream-4-0-250828"  # release default; the paper's row is Seedream 4.5: pass its id
gen_seedream_key_env = "ARK_API_KEY"              # sent as a Bearer token
gen_seedream_size = "2K"                          # release request: size 2K, response_format url, no watermark
# judges
judge_backend = "offline"        # "offline" | "openai"
judge_model = "gpt-4.1"          # paper: GPT-4.1 for both judges
judge_base_url = None            # any OpenAI-compatible server, e.g. "http://127.0.0.1:8001/v1"; None = OpenAI
judge_api_key_env = "OPENAI_API_KEY"  # the key is read from this env var, never from config/argv
judge_temperature = 0.0          # paper: temperature 0
judge_max_tokens = 1024
judge_timeout = 300.0            # s per request
judge_retries = 3                # attempts after the first (timeouts, 408/409/429/5xx, unparseable answers)
judge_backoff = 2.0              # s, base of the jittered exponential backoff
judge_concurrency = 32           # requests in flight to the judge server (shared by both judges)
judge_json_mode = True           # send response_format={"type": "json_object"}
judge_cache = "out/judge_cache.sqlite"  # None = no cache; re-scoring the same inputs costs nothing
judge_fail = "zero_reward"       # judge never answered usefully: "zero_reward" | "zero_component" (the other
                                 # judge's half still counts); either way "error" is set and STATS counts it
# offline judge thresholds (pixels; image_server.offline_generate output vs ground truth)
offline_cell = 5                 # px: regions are compared as means of cell x cell blocks ...
offline_tol = 32                 # ... that agree when no channel differs by more than this ...
offline_strict = 0.97            # ... and match strictly when this fraction of cells agrees
offline_coarse_tol = 48          # coarse match ("from afar"): 4x4 cells, looser tolerance ...
offline_loose = 0.75             # ... and this fraction of them
offline_text_tol = 0.05          # max mismatched ink fraction for "the same text"

_CONFIG_KEYS = config_keys(globals())

log = logging.getLogger("reward")
STATS = Counter()   # judge_requests, judge_cache_hits, judge_parse_failures, judge_failures, gen_failures, ...
                    # (the generator clients count gen_calls / gen_requests in image_server.STATS)
_stats_lock = threading.Lock()


def _count(key, n=1):
    with _stats_lock:
        STATS[key] += n


# ----------------------------------------------------------------------------------------------
# the formulas of the paper (pure)

def k_score(faithfulness, visual_correctness, text_accuracy, aesthetics, text_na=False):
    """Per-sample K-Score. Paper: "K = 0.1*F + 0.4*V + 0.4*T + 0.1*A", T = 0.5 when the prompt needs
    no readable text (text_accuracy_na), rounded to 2 decimals."""
    t = 0.5 if text_na else text_accuracy
    return round(0.1 * faithfulness + 0.4 * visual_correctness + 0.4 * t + 0.1 * aesthetics, 2)


def final_reward(k, r_text, lam=0.5):
    """Dual reward. Paper: "r = (1 - λ)·K + λ·r_text", λ = 0.5, clamped at 0."""
    return max(0.0, (1.0 - lam) * k + lam * r_text)


def valid_refs(answer):
    """The answer's usable references: dicts with a local_path or url, first occurrence of each image."""
    out, seen = [], set()
    for r in (answer or {}).get("reference_images") or []:
        if not isinstance(r, dict):
            continue
        src = r.get("local_path") or r.get("url")
        if not src or (r.get("img_id") or src) in seen:
            continue
        seen.add(r.get("img_id") or src)
        out.append(r)
    return out


def reference_file(ref):
    """What the generator gets for one answer reference: the full-resolution original (source_path, recorded by
    tools.py) when that file exists, else the policy's resized copy (local_path: a record written before
    source_path existed, or an oracle answer), else the image's url. The release sends the original and
    downsizes only what the policy sees. Every sender (RL score, eval_knowgen.py, make_data.py) calls this."""
    for k in ("source_path", "local_path"):
        p = ref.get(k)
        if isinstance(p, str) and p and os.path.exists(p):
            return p
    return ref.get("url") or ref.get("source_path") or ref.get("local_path")


def invalid_reason(traj):
    """Why this trajectory gets reward 0 with no judge or generator call, or None. Paper: reward 0 "when
    the answer failed to parse, gen_prompt is empty, the number of valid references is outside [1, 4],
    ... or the trajectory was overlong / repeated" (failed generation is found later, in score())."""
    if traj.get("end_reason") in ("overlong", "repeated"):
        return traj["end_reason"]
    answer = traj.get("answer")
    if not isinstance(answer, dict):
        return "no_answer"
    if not isinstance(answer.get("gen_prompt"), str) or not answer["gen_prompt"].strip():
        return "empty_gen_prompt"
    from rollout import REF_RANGE  # one rule with the system prompt (release reward: 1..4 valid references)
    if not REF_RANGE[0] <= len(valid_refs(answer)) <= REF_RANGE[1]:
        return "num_refs"
    return None


# ----------------------------------------------------------------------------------------------
# offline judges: stand-ins for GPT-4.1 in the mini world. They grade with the same {0, .5, 1} levels
# and N/A rule as the real K-Score rubric (and the text judge's 5 levels), from pixels and the item's
# hidden solution, so the whole RL loop runs without GPUs or API keys. Partial credit per dimension is
# deliberate: with all-or-nothing rewards GRPO groups have zero variance (mini-world findings).

def _rgb(path, size=None):
    im = Image.open(path).convert("RGB")
    return np.asarray(im if size is None or im.size == size else im.resize(size, Image.BILINEAR), dtype=np.int16)


def _agree(a, b, box, cell, tol):
    """Fraction of cells (cell x cell px mean colours) of box where no channel differs by more than tol.
    Per-pixel comparison is not robust: the agent's references are JPEG copies whose chroma subsampling
    moves edge pixels by > 48 levels, while 5-px cell means move by < 32 (measured on a mini world: JPEG
    copies agree on 100% of cells, two different collection images on at most ~93%)."""
    x0, y0, x1, y1 = box
    cells = (max(1, (x1 - x0) // cell), max(1, (y1 - y0) // cell))
    ga, gb = (np.asarray(Image.fromarray(x[y0:y1, x0:x1].astype(np.uint8)).resize(cells, Image.BOX), dtype=np.int16)
              for x in (a, b))  # BOX downsampling = the mean colour of each cell
    return float((np.abs(ga - gb).max(axis=-1) <= tol).mean())


def _band(a, box):
    """(has a white text band, ink mask) of the band region."""
    x0, y0, x1, y1 = box
    r = a[y0:y1, x0:x1]
    white = (r.min(axis=-1) >= 250).mean() >= 0.5
    return white, r.max(axis=-1) < 128


def judge_kscore_offline(gen_path, gt_path, solution, c=None):
    """Offline K-Score judge (stand-in for GPT-4.1 on image 1 = generated, image 2 = ground truth).
    visual_correctness: 1 if the main subject (the part no inset covers) and the inset regions agree with the
      ground truth, 0.5 if only the main subject does, else 0.
    text_accuracy: solution's required_text null -> N/A (0.5); else 1 if the ink of the text band matches the
      ground truth's (same text rendered), else 0 (no partial credit for wrong text, as in the rubric).
    faithfulness: 0.5 for a subject that looks like the right one from afar (4x4 cells) + 0.5 for the right
      format (a text band exactly when the ground truth has one).
    aesthetics: there is no beauty offline; "not worse than the ground truth" = the whole canvas agrees with
      it (1), agrees from afar (0.5), else 0.
    Regions are compared as cell means (see _agree), so JPEG'd references still match."""
    c = c or make_config()
    cell, tol, strict = c["offline_cell"], c["offline_tol"], c["offline_strict"]
    t = _rgb(gt_path)
    g = _rgb(gen_path, size=(t.shape[1], t.shape[0]))
    L = image_server.offline_layout(t.shape[1])
    whole = (0, 0, t.shape[1], t.shape[0])
    main_ok = all(_agree(g, t, b, cell, tol) >= strict for b in L["main_only"])
    insets_ok = all(_agree(g, t, b, cell, tol) >= strict for b in L["insets"])
    v = 1.0 if main_ok and insets_ok else 0.5 if main_ok else 0.0
    g_band, g_ink = _band(g, L["band"])
    t_band, t_ink = _band(t, L["band"])
    na = solution.get("required_text") is None
    if na:
        ta = 0.5
    else:
        union = (g_ink | t_ink).sum()
        same = g_band and t_band and union > 0 and (g_ink ^ t_ink).sum() / union <= c["offline_text_tol"]
        ta = 1.0 if same else 0.0
    def coarse(box):  # 4x4 cells: "looks like it from afar"
        return _agree(g, t, box, (box[2] - box[0]) // 4, c["offline_coarse_tol"]) >= c["offline_loose"]
    coarse_ok = coarse(L["main"])
    f = 0.5 * coarse_ok + 0.5 * (g_band == t_band)
    a = 1.0 if _agree(g, t, whole, cell, tol) >= strict else 0.5 if coarse(whole) else 0.0
    return {"faithfulness": f, "visual_correctness": v, "text_accuracy": ta, "aesthetics": a,
            "text_accuracy_na": na, "rationale": f"offline: main={main_ok} insets={insets_ok} coarse={coarse_ok} "
                                                 f"band={g_band}/{t_band}"}


def _collection(images_jsonl):
    mtime = os.path.getmtime(images_jsonl) if os.path.exists(images_jsonl) else None
    return _collection_at(images_jsonl, mtime)


@lru_cache(maxsize=8)
def _collection_at(images_jsonl, mtime):
    """images.jsonl -> lookup tables url / path / title -> image_id (titles only when unique)."""
    by_url, by_path, titles = {}, {}, Counter()
    rows = [r for _, r in dataio.read_jsonl(images_jsonl)] if mtime is not None else []
    root = os.path.dirname(os.path.abspath(images_jsonl))
    for r in rows:
        by_url[r["url"]] = r["image_id"]
        by_path[os.path.normpath(os.path.join(root, r["path"]))] = r["image_id"]
        titles[r["title"]] += 1
    by_title = {r["title"]: r["image_id"] for r in rows if titles[r["title"]] == 1}
    return by_url, by_path, by_title


def collection_id(ref, images_jsonl):
    """Map an answer reference to a collection image_id via url, local_path (or an im_##### in its name), title."""
    by_url, by_path, by_title = _collection(images_jsonl)
    if ref.get("url") in by_url:
        return by_url[ref["url"]]
    lp = ref.get("local_path") or ""
    if lp and os.path.normpath(os.path.abspath(lp)) in by_path:
        return by_path[os.path.normpath(os.path.abspath(lp))]
    m = re.search(r"im_\d+", os.path.basename(lp))
    if m:
        return m.group(0)
    return by_title.get(ref.get("title"))


def judge_text_offline(answer, solution, images_jsonl):
    """Offline text judge (stand-in for GPT-4.1 reading the answer as text): would this answer, given a
    perfect generator, reproduce the ground truth? Parts: the solution's facts mentioned in the answer text
    (0.4), the right reference images chosen (0.4; |chosen ∩ correct| / max(|chosen|, |correct|)), the
    required text quoted exactly (0.2, only when there is one). Snapped to {0, .25, .5, .75, 1}."""
    refs = valid_refs(answer)
    text = " ".join([answer.get("gen_prompt") or ""] + [f"{r.get('title', '')} {r.get('note', '')}" for r in refs])
    text = text.lower()
    facts = solution.get("facts") or []
    f = sum(x.lower() in text for x in facts) / len(facts) if facts else 1.0
    chosen = [collection_id(r, images_jsonl) or f"?{i}" for i, r in enumerate(refs)]
    correct = solution.get("ref_image_ids") or []
    r = len(set(chosen) & set(correct)) / max(len(set(chosen)), len(correct), 1)
    parts = [(0.4, f), (0.4, r)]
    if solution.get("required_text") is not None:
        parts.append((0.2, float(image_server.quoted_text(answer.get("gen_prompt")) ==
                                 solution["required_text"].strip())))
    s = sum(w * x for w, x in parts) / sum(w for w, _ in parts)
    return {"score": round(s * 4) / 4, "rationale": f"offline: facts={f:.2f} refs={r:.2f} chosen={chosen}"}


# ----------------------------------------------------------------------------------------------
# OpenAI-compatible judges: our own prompts implementing the paper's rubric

# K-Score rubric: our words for the criteria of the release's judge prompt (gen_image_deepresearch_reward.py /
# KnowGen_Eval/gpt_eval_knowgen.py): every image is generated; not a pixel match (Image 2 is the reference for
# identity and grounded details); an unverifiable detail scores lower; visual_correctness 0.5 needs the SAME visual
# instance; aesthetics 1 needs excellent quality AND not worse than the ground truth.
KSCORE_SYSTEM = """You are a strict judge of knowledge-intensive image generation.
You get the user's ORIGINAL prompt, Image 1 (the GENERATED image) and Image 2 (the GROUND-TRUTH image, which
shows the correct, evidence-based depiction). Both images are AI-generated, including any people in them.
This is not a pixel comparison: Image 1 may use another viewpoint or layout if it satisfies the prompt; use
Image 2 as the reference for who/what must appear and for its stable, checkable details. A required detail that
you cannot verify in Image 1 (too small, blurred, hidden, distorted) counts as NOT achieved: score lower.
First list the prompt's hard constraints (subjects, setting, relations, style, text to render) in the rationale.
Grade Image 1 on four dimensions. Each score is exactly 0, 0.5 or 1; 1 is rare and means flawless.
- faithfulness (presence and structure, not identity): 1 = every requested subject, setting, key prop, action,
  count and the requested style are shown; 0.5 = only minor omissions or staging differences; 0 = an essential
  element or the requested structure/style is missing.
- visual_correctness (agreement with Image 2, very strict): 1 = the required subjects match Image 2 in their
  stable visual features (face and hair, clothing design and colours, prop and object shapes, emblems,
  landmark shape) with no substantive change; 0.5 = still recognisably the SAME visual instance as Image 2 with
  only minor feature changes (the same generic type, e.g. "a knight", is not enough); 0 = any substantive
  mismatch of those features. Shapes of logos or emblems belong here; anything that must be READ belongs to text.
- text_accuracy: does the prompt require readable text (titles, names, labels, numbers)? If yes: 1 = all of it
  present, crisp and exactly right; 0.5 = most of it readable and right, small flaws that keep the meaning;
  0 = any required text missing, unreadable, gibberish or wrong (no credit for wrong text, however clear).
  If the prompt needs no readable text: set "text_accuracy_na": true and "text_accuracy": 0.5.
- aesthetics: 1 = excellent composition and polish AND not worse than Image 2; 0.5 = very good but slightly
  worse than Image 2; 0 = noticeably worse than Image 2, or merely average, cluttered, or with visible artifacts.
Answer with ONLY this JSON object, no markdown:
{"rationale": "<constraints, then 3-8 short sentences>", "faithfulness": 0|0.5|1, "visual_correctness": 0|0.5|1,
 "text_accuracy": 0|0.5|1, "aesthetics": 0|0.5|1, "text_accuracy_na": true|false}"""

TEXT_SYSTEM = """You judge the answer of a search agent for knowledge-intensive image generation.
The agent researched the user's prompt and answered with a generation prompt grounded in evidence plus a list of
reference images. You get the user's original prompt, the GROUND-TRUTH image (what a correct result looks like)
and the agent's answer as text. You do not see the reference images: judge them by id, title, note and page URL.
Question: with a perfect image generator that follows the generation prompt and copies the reference images
faithfully, would this answer suffice to reproduce the ground-truth image?
4 = fully: the right entities, every key visual fact and any required text exactly stated, fitting references;
3 = mostly: minor details missing or slightly off; 2 = partly: main subject right but important facts or
references missing or wrong; 1 = weak: mostly generic or largely wrong; 0 = useless or the wrong entity.
Answer with ONLY this JSON object, no markdown: {"rationale": "<2-4 sentences>", "score": 0|1|2|3|4}"""

# the cache key changes by itself whenever a prompt is edited
PROMPT_VERSION = hashlib.sha256((KSCORE_SYSTEM + TEXT_SYSTEM + "v1").encode()).hexdigest()[:12]
_LEVELS3, _LEVELS5 = (0.0, 0.5, 1.0), (0.0, 0.25, 0.5, 0.75, 1.0)


def _json_obj(text):
    """The first {...} of a reply (tolerates ```json fences and chatter), or None."""
    i, j = (text or "").find("{"), (text or "").rfind("}")
    try:
        out = json.loads(text[i:j + 1]) if 0 <= i < j else None
    except ValueError:
        return None
    return out if isinstance(out, dict) else None


def parse_kscore(text):
    """Strict: four numbers each exactly in {0, 0.5, 1} (else None = parse failure, retried). N/A forces T=0.5."""
    d = _json_obj(text)
    if d is None:
        return None
    out = {}
    for k in ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics"):
        v = d.get(k)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or min(abs(v - x) for x in _LEVELS3) > 1e-6:
            return None
        out[k] = min(_LEVELS3, key=lambda x: abs(v - x))
    na = d.get("text_accuracy_na", False)
    if not isinstance(na, bool):
        return None
    out["text_accuracy_na"] = na
    if na:
        out["text_accuracy"] = 0.5
    out["rationale"] = str(d.get("rationale", ""))[:2000]
    return out


def parse_text_score(text):
    """score on the paper's 0-4 scale -> /4, snapped to the nearest of {0, .25, .5, .75, 1}; None if unusable."""
    d = _json_obj(text)
    v = None if d is None else d.get("score")
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 4:
        return None
    return {"score": min(_LEVELS5, key=lambda x: abs(v / 4 - x)), "rationale": str(d.get("rationale", ""))[:2000]}


def answer_text(answer):
    """The answer as the text judge sees it: gen_prompt + per reference id/title/note/page_url (no pixels)."""
    lines = ["gen_prompt: " + (answer.get("gen_prompt") or ""), "reference images:"]
    for i, r in enumerate(answer.get("reference_images") or [], 1):
        if isinstance(r, dict):
            lines.append(f"{i}. {r.get('img_id', '')} | title: {r.get('title', '')} | note: {r.get('note', '')} "
                         f"| page_url: {r.get('page_url', '')}")
    return "\n".join(lines)


def sha(b):
    """Hex sha256 of bytes or a str: the parts of a judge cache key (reward's judges and eval's WISE judge)."""
    return hashlib.sha256(b if isinstance(b, bytes) else b.encode()).hexdigest()


BACKOFF_CAP = 60.0  # s: the longest wait between two judge attempts (net.retry's cap)


def _redact(msg, c):
    """Never let a key reach a log or an error string (servers like to echo it back)."""
    return net.redact(msg, [net.env_secret(c["judge_api_key_env"])])


@lru_cache(maxsize=16)
def _openai_client(base_url, key_env, timeout):
    """One client per endpoint (connections reused across threads), built by net.openai_client: key only from the
    environment, no redirects, max_retries=0 (retries are ours: jittered, and they also cover unparseable answers)."""
    return net.openai_client(base_url, key_env, timeout)


def _cache(path, key, value=None):
    """SQLite judge cache: get (value None) or put. Keyed by model + prompt version + input hashes only."""
    if not path or (value is None and not os.path.exists(path)):
        return None
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    con = sqlite3.connect(path, timeout=30)
    try:
        with con:
            con.execute("CREATE TABLE IF NOT EXISTS judge (key TEXT PRIMARY KEY, value TEXT)")
            if value is not None:
                con.execute("INSERT OR REPLACE INTO judge VALUES (?, ?)", (key, json.dumps(value)))
                return None
            row = con.execute("SELECT value FROM judge WHERE key = ?", (key,)).fetchone()
    finally:
        con.close()
    return json.loads(row[0]) if row else None


def ask_judge(kind, messages, parse, cache_inputs, c):
    """One judge question -> (parsed dict, None) or (None, error). Cache, bounded concurrency, net.retry (timeouts,
    connection errors, 408/409/429/5xx, unparseable replies; jittered backoff); never raises."""
    key = sha(json.dumps([kind, c["judge_model"], PROMPT_VERSION, cache_inputs]))
    hit = _cache(c["judge_cache"], key)
    if hit is not None:
        _count("judge_cache_hits")
        return hit, None
    client = _openai_client(c["judge_base_url"], c["judge_api_key_env"], float(c["judge_timeout"]))
    extra = {"response_format": {"type": "json_object"}} if c["judge_json_mode"] else {}

    def once():
        with net.semaphore("judge", c["judge_concurrency"]):
            _count("judge_requests")
            resp = client.chat.completions.create(
                model=c["judge_model"], messages=messages, temperature=c["judge_temperature"],
                max_tokens=c["judge_max_tokens"], **extra)
        text = net.chat_choice(resp).message.content or ""  # a gateway's HTML page: Unparseable
        out = parse(text)
        if out is None:
            _count("judge_parse_failures")
            raise net.Unparseable(f"unparseable reply {text[:120]!r}")
        return out

    try:  # the key redacted from the final message (a server may echo it in an error body or a reply)
        out = net.retry(once, c["judge_retries"], c["judge_backoff"], BACKOFF_CAP, f"{kind} judge",
                        [net.env_secret(c["judge_api_key_env"])])
    except Exception as e:  # net.HTTPFailure after the retries (or a bug): a counted failure, never a crash
        err = _redact(e, c)[:400]
        _count("judge_failures")
        log.warning("%s", err)
        return None, err
    _cache(c["judge_cache"], key, out)
    return out, None


def judge_kscore(prompt, gen_path, gt_path, c):
    """K-Score judge over the OpenAI chat API: original prompt, image 1 = generated, image 2 = ground truth."""
    gen, gt = net.data_url(gen_path), net.data_url(gt_path)
    messages = [{"role": "system", "content": KSCORE_SYSTEM},
                {"role": "user", "content": [
                    {"type": "text", "text": f"ORIGINAL prompt:\n{prompt}\n\nImage 1 (generated):"},
                    {"type": "image_url", "image_url": {"url": gen}},
                    {"type": "text", "text": "Image 2 (ground truth):"},
                    {"type": "image_url", "image_url": {"url": gt}},
                    {"type": "text", "text": "Grade Image 1. Reply with the JSON object only."}]}]
    return ask_judge("kscore", messages, parse_kscore, [sha(prompt), sha(gen), sha(gt)], c)


def judge_text(prompt, answer, gt_path, c):
    """Text-reward judge: the answer as TEXT (no reference pixels) vs the prompt and the ground-truth image."""
    text, gt = answer_text(answer), net.data_url(gt_path)
    messages = [{"role": "system", "content": TEXT_SYSTEM},
                {"role": "user", "content": [
                    {"type": "text", "text": f"ORIGINAL prompt:\n{prompt}\n\nGround-truth image:"},
                    {"type": "image_url", "image_url": {"url": gt}},
                    {"type": "text", "text": f"Agent's answer:\n{text}\n\nReply with the JSON object only."}]}]
    return ask_judge("text", messages, parse_text_score, [sha(prompt), sha(text), sha(gt)], c)


# ----------------------------------------------------------------------------------------------
# the batch API

def make_config(**overrides):
    """The module's config with keyword overrides (names as at the top of this file)."""
    c = {k: globals()[k] for k in _CONFIG_KEYS}
    for k, v in overrides.items():
        if k not in c:
            raise TypeError(f"reward.py: unknown config key '{k}' (see the globals at the top of reward.py)")
        c[k] = v
    return c


def _result(**kw):
    r = {"reward": 0.0, "k_score": 0.0, "r_text": 0.0, "faithfulness": None, "visual_correctness": None,
         "text_accuracy": None, "aesthetics": None, "text_accuracy_na": None, "invalid": None,
         "gen_image": None, "error": None}
    r.update(kw)
    return r


def _judge_pair(traj, item, gen_path, gt_path, c, pool):
    """(kscore dict | None, text dict | None, error | None), both judges in parallel."""
    prompt, answer = item.get("prompt") or traj.get("prompt") or "", traj["answer"]
    if c["judge_backend"] == "offline":
        sol = item.get("solution")
        if not isinstance(sol, dict):
            return None, None, "offline judges need the item's hidden 'solution'"
        fk = pool.submit(judge_kscore_offline, gen_path, gt_path, sol, c)
        ft = pool.submit(judge_text_offline, answer, sol, os.path.join(c["data_dir"], "images.jsonl"))
        return fk.result(), ft.result(), None
    if c["judge_backend"] != "openai":
        raise ValueError(f"reward.py: unknown judge_backend {c['judge_backend']!r} (offline | openai)")
    fk = pool.submit(judge_kscore, prompt, gen_path, gt_path, c)
    ft = pool.submit(judge_text, prompt, answer, gt_path, c)
    (k, ek), (t, et) = fk.result(), ft.result()
    return k, t, "; ".join(e for e in (ek, et) if e) or None


def _score_one(traj, item, c, judge_pool):
    if item is None:
        return _result(error=f"no item with id {traj.get('id')!r}")
    answer = traj["answer"]
    refs = valid_refs(answer)
    srcs = [reference_file(r) for r in refs]
    tag = sha(json.dumps([answer["gen_prompt"], srcs]))[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", f"{traj.get('id')}_s{traj.get('sample', 0)}_{tag}.png")
    gen_path = os.path.join(c["out_dir"], name)
    try:
        if c["gen_backend"] == "offline" and not all(s and os.path.exists(s) for s in srcs):
            raise FileNotFoundError(f"reference image not found: {srcs}")
        image_server.generate(answer["gen_prompt"], srcs, gen_path, c)
    except Exception as e:
        _count("gen_failures")
        log.warning("generator failed for %s sample %s: %s", traj.get("id"), traj.get("sample", 0), _redact(e, c)[:300])
        return _result(invalid="generation_failed", error=f"generator: {str(e)[:300]}")
    gt_path = os.path.join(c["data_dir"], item["gt_image"])  # an absolute gt_image stays as it is
    k, t, err = _judge_pair(traj, item, gen_path, gt_path, c, judge_pool)
    if (k is None or t is None) and c["judge_fail"] == "zero_reward":
        return _result(gen_image=gen_path, error=err or "judge failed")
    out = _result(gen_image=gen_path, error=err)
    if k is not None:
        out.update({x: k[x] for x in ("faithfulness", "visual_correctness", "text_accuracy", "aesthetics",
                                      "text_accuracy_na")})
        out["k_score"] = k_score(k["faithfulness"], k["visual_correctness"], k["text_accuracy"],
                                 k["aesthetics"], k["text_accuracy_na"])
    out["r_text"] = t["score"] if t is not None else 0.0
    out["reward"] = final_reward(out["k_score"], out["r_text"], c["lam"])
    return out


def score(trajectories, items, **cfg):
    """Rewards for a whole GRPO batch: one dict per trajectory, in order (README "Data formats": scored row).
    Invalid answers get 0 with no generator/judge call; the rest are generated concurrently (bounded per
    generator server) and judged concurrently (bounded by judge_concurrency). Faults become zero rewards
    with "error" set and are counted in STATS, never exceptions. `items`: list of items or {id: item}."""
    c = make_config(**cfg)
    by_id = items if isinstance(items, dict) else {it["id"]: it for it in items}
    os.makedirs(c["out_dir"], exist_ok=True)
    results = [None] * len(trajectories)
    with cf.ThreadPoolExecutor(max(1, c["score_workers"])) as gen_pool, \
            cf.ThreadPoolExecutor(max(2, c["judge_concurrency"])) as judge_pool:
        futs = {}
        for i, traj in enumerate(trajectories):
            reason = invalid_reason(traj)
            if reason is not None:
                _count("invalid:" + reason)
                results[i] = _result(invalid=reason)
            else:
                futs[gen_pool.submit(_score_one, traj, by_id.get(traj.get("id")), c, judge_pool)] = i
        for f in cf.as_completed(futs):
            try:
                results[futs[f]] = f.result()
            except Exception as e:  # a bug or a broken item must not take the training step down
                _count("score_errors")
                log.warning("score: trajectory %d: %s", futs[f], _redact(e, c))
                results[futs[f]] = _result(error=f"score: {type(e).__name__}: {_redact(e, c)[:300]}")
    return results


# ----------------------------------------------------------------------------------------------
trajectories = "out/rollouts.jsonl"   # command line only: input trajectories
items = "data/miniworld/rl.jsonl"      # command line only: the items they answer
scored = None                          # command line only: output JSONL (default: <trajectories>.scored.jsonl)

if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    trajs, t0 = [r for _, r in dataio.read_jsonl(trajectories)], time.time()
    res = score(trajs, [r for _, r in dataio.read_jsonl(items)],
                **{k: globals()[k] for k in _CONFIG_KEYS})
    out = scored or trajectories.replace(".jsonl", "") + ".scored.jsonl"
    with open(out, "w") as f:
        f.writelines(json.dumps({"id": t.get("id"), "sample": t.get("sample"), **r}) + "\n" for t, r in zip(trajs, res))
    n = max(1, len(res))
    print(f"scored {len(res)} in {time.time() - t0:.1f}s -> {out}: mean reward {sum(r['reward'] for r in res) / n:.3f}"
          f", mean K {sum(r['k_score'] for r in res) / n:.3f}, stats {dict(STATS, **image_server.STATS)}")
