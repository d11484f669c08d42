# eval_knowgen.py: Table-1 aggregation on hand-made judged files, the CLI entry points, the mini world end to end
# (offline generator + judge: direct < oracle, resume without redoing work), and the judges against a loopback
# OpenAI-compatible server (reward.py's K-Score judge; our WISE judge).
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import eval_knowgen as ek
import image_server
import loopback
import reward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def row(i, category, v=0.0, t=0.0, f=0.0, a=0.0, na=False):
    return {"id": f"x{i:04d}", "category": category, "visual_correctness": v, "text_accuracy": 0.5 if na else t,
            "faithfulness": f, "aesthetics": a, "text_accuracy_na": na}


def counted(n_total, **ones):
    """n_total rows; dimension d is 1.0 on the first ones[d] rows (text: among the non-N/A rows)."""
    na = ones.pop("na", 0)
    out = []
    for i in range(n_total):
        is_na = i >= n_total - na
        out.append({"v": float(i < ones.get("v", 0)), "f": float(i < ones.get("f", 0)),
                    "a": float(i < ones.get("a", 0)), "t": float(i < ones.get("t", 0)) if not is_na else 0.5,
                    "na": is_na})
    return out


def write_jsonl(path, rows):
    with open(path, "w") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return str(path)


def cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, "eval_knowgen.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def worked_example_rows():
    """Table 1, Qwen-Image: groups 13.28 and 16.68 -> overall 14.98. Science: 125 rows, F .4 V .12 T .08 A .128
    -> .1328. Pop: 125 rows of which 85 need no text; F .6, V .192, T 1/40 over the 40 text rows, A .2 -> .1668.
    (Averaging T over all 125 rows instead would give ((1 + 85*.5)/125) -> a different K.)"""
    rows, i = [], 0
    for c in counted(125, f=50, v=15, t=10, a=16):
        rows.append(row(i, "physics" if i % 2 else "history", c["v"], c["t"], c["f"], c["a"], c["na"]))
        i += 1
    pop = counted(125, f=75, v=24, a=25, na=85)
    pop[0]["t"] = 1.0  # one of the 40 text rows exactly right
    for c in pop:
        rows.append(row(i, "film" if i % 2 else "multi-subject-anime", c["v"], c["t"], c["f"], c["a"], c["na"]))
        i += 1
    return rows


def test_worked_example_via_cli(tmp_path):
    path = write_jsonl(tmp_path / "judged.jsonl", worked_example_rows())
    r = cli(f"--judged={path}")
    assert r.returncode == 0, r.stderr
    s = json.load(open(tmp_path / "judged.summary.json"))
    assert s["science_and_knowledge"]["k_score"] == 13.28
    assert s["pop_culture_and_news"]["k_score"] == 16.68
    assert s["overall"] == 14.98
    assert s["pop_culture_and_news"]["text_accuracy"] == 2.5  # over the 40 non-N/A rows only
    assert s["science_and_knowledge"] == {"visual_correctness": 12.0, "text_accuracy": 8.0, "faithfulness": 40.0,
                                          "aesthetics": 12.8, "k_score": 13.28}
    assert "14.98" in r.stdout and "science_and_knowledge" in r.stdout
    # --summary_out elsewhere
    r = cli(f"--judged={path}", f"--summary_out={tmp_path / 'other.json'}")
    assert r.returncode == 0 and json.load(open(tmp_path / "other.json"))["overall"] == 14.98


def test_na_handling_and_rounding():
    rows = [row(0, "art", v=1, f=1, na=True), row(1, "art", v=0, t=1, f=0.5), row(2, "art", v=0.5, t=1, a=1),
            row(3, "anime", v=1, na=True), row(4, "anime", f=1, na=True)]
    s = ek.aggregate(rows)
    sci, pop = s["science_and_knowledge"], s["pop_culture_and_news"]
    assert sci["text_accuracy"] == 100.0  # (1 + 1) / 2: the N/A row's 0.5 is left out
    assert pop["text_accuracy"] == 50.0  # no text rows at all -> 0.5
    k_sci = 0.1 * (1.5 / 3) + 0.4 * (1.5 / 3) + 0.4 * 1.0 + 0.1 * (1 / 3)
    k_pop = 0.1 * 0.5 + 0.4 * 0.5 + 0.4 * 0.5 + 0.1 * 0
    assert sci["k_score"] == round(100 * k_sci, 2) == 68.33  # 68.333.. rounded to 2 decimals
    assert sci["aesthetics"] == 33.33
    assert pop["k_score"] == 45.0
    assert s["overall"] == round(100 * (k_sci + k_pop) / 2, 2) == 56.67
    assert s["counts"] == {"science_and_knowledge": 3, "pop_culture_and_news": 2}


def test_empty_group_is_null_and_overall_is_the_other_group(tmp_path):
    path = write_jsonl(tmp_path / "j.jsonl", [row(0, "biology", v=1, t=1, f=1, a=1), row(1, "Chemistry", v=0.5)])
    r = cli(f"--judged={path}")
    assert r.returncode == 0, r.stderr
    s = json.load(open(tmp_path / "j.summary.json"))
    assert s["pop_culture_and_news"] is None
    assert s["overall"] == s["science_and_knowledge"]["k_score"] == round(100 * (0.05 + 0.3 + 0.2 + 0.05), 2)
    assert "WARNING" in r.stdout and "empty" in r.stdout


def test_errors_name_the_item_and_line(tmp_path):
    good = json.dumps(row(0, "news", v=1))
    cases = [([good, json.dumps(row(1, "cooking"))], ["j.jsonl:2", "x0001", "cooking"]),
             ([good, good, "{not json"], ["j.jsonl:3", "not valid JSON"]),
             ([good, json.dumps({k: v for k, v in row(1, "art").items() if k != "aesthetics"})],
              ["j.jsonl:2", "aesthetics"]),
             ([json.dumps(row(0, "art", v=2.0))], ["j.jsonl:1", "visual_correctness"]),
             ([json.dumps(dict(row(0, "art"), text_accuracy_na="no"))], ["j.jsonl:1", "text_accuracy_na"])]
    for lines, needles in cases:
        path = write_jsonl(tmp_path / "j.jsonl", lines)
        r = cli(f"--judged={path}")
        assert r.returncode != 0
        for n in needles:
            assert n in r.stderr, (n, r.stderr)
    items = write_jsonl(tmp_path / "items.jsonl", [{"id": "kg_7", "prompt": "p", "meta": {"category": "poetry"}}])
    with pytest.raises(ek.EvalError, match=r"items.jsonl: item 'kg_7'.*poetry"):
        ek.load_knowgen(items)


def test_compare_and_tool_stats(tmp_path):
    a = [row(0, "art", v=1), row(1, "art"), row(2, "film", v=0.5), row(3, "film", f=1)]
    b = [row(0, "art"), row(1, "art", v=1), row(2, "film", v=1), row(3, "film", f=1)]
    pa, pb = write_jsonl(tmp_path / "a.jsonl", a), write_jsonl(tmp_path / "b.jsonl", b)
    c = ek.compare_runs(pa, pb)
    assert (c["wins"], c["losses"], c["ties"]) == (2, 1, 1)
    assert c["delta"]["science_and_knowledge"]["k_score"] == 0.0
    assert c["delta"]["pop_culture_and_news"]["visual_correctness"] == 25.0
    assert c["delta"]["overall"] == round(c["b_summary"]["overall"] - c["a_summary"]["overall"], 2) == 5.0
    r = cli(f"--compare={pa},{pb}")
    assert r.returncode == 0 and "2 wins / 1 losses / 1 ties" in r.stdout
    trajs = [{"id": "a", "end_reason": "answer", "rounds": 3, "tool_calls": {"search": 2, "image_search": 1},
              "answer": {"gen_prompt": "x", "reference_images": [{"img_id": "IMG_001"}, {"img_id": "IMG_002"}]}},
             {"id": "b", "end_reason": "overlong", "rounds": 10, "tool_calls": {"search": 6, "browse": 3},
              "answer": None}]
    st = ek.tool_stats(trajs)
    assert st["calls_total"] == {"search": 8, "image_search": 1, "browse": 3}
    assert st["rounds_mean"] == 6.5 and st["refs_per_answer"] == 2.0 and st["answered"] == 1
    assert st["end_reasons"] == {"answer": 1, "overlong": 1}


# ---------------------------------------------------------------------------------------------------------------
# the mini world, end to end on CPU

@pytest.fixture(scope="module")
def world(make_mini_world):
    return str(make_mini_world(seed=5, n_countries=6, bench_countries=2, rl_countries=1, n_sft=4, n_rl=4, n_bench=10,
                               n_distractors=10, tokenizer_wiki_pages=50))


def mini_cfg(world, out, **kw):
    kw = {"gen_backend": "offline", "judge_backend": "offline", "report_n": 4, **kw}
    return ek.default_config(items_path=os.path.join(world, "bench.jsonl"), world_dir=world, out_dir=str(out), **kw)


@pytest.fixture
def calls(monkeypatch):
    """Counts the REAL generator / judge calls (the functions still run)."""
    n = {"gen": 0, "judge": 0}

    def wrap(fn, key):
        def f(*a, **k):
            n[key] += 1
            return fn(*a, **k)
        return f
    monkeypatch.setattr(image_server, "generate", wrap(image_server.generate, "gen"))
    monkeypatch.setattr(reward, "judge_kscore_offline", wrap(reward.judge_kscore_offline, "judge"))
    monkeypatch.setattr(reward, "judge_kscore", wrap(reward.judge_kscore, "judge"))
    return n


def lines(path):
    return open(path).read().splitlines()


def keep_first(path, n):
    kept = lines(path)[:n]
    open(path, "w").write("\n".join(kept) + "\n")


def test_mini_world_direct_below_oracle_and_resume(world, tmp_path, calls):
    direct = ek.run(mini_cfg(world, tmp_path / "direct", mode="direct"))
    assert calls == {"gen": 10, "judge": 10}
    oracle = ek.run(mini_cfg(world, tmp_path / "oracle", mode="oracle"))
    assert oracle["overall"] > direct["overall"]
    for g in ek.GROUPS:
        if oracle[g] is not None:
            assert oracle[g]["visual_correctness"] > direct[g]["visual_correctness"]
    out = tmp_path / "oracle"
    assert len(lines(out / "judged.jsonl")) == 10 and os.path.exists(out / "report.md")
    report = open(out / "report.md").read()
    assert report.count("thumbs/") >= 4 * 3 and "ground truth" in report  # refs, generated, gt per item
    # a re-run redoes nothing ...
    calls.update(gen=0, judge=0)
    again = ek.run(mini_cfg(world, out, mode="oracle"))
    assert calls == {"gen": 0, "judge": 0} and again == oracle
    # ... a run stopped mid-judge finishes only the missing items ...
    keep_first(out / "judged.jsonl", 7)
    assert ek.run(mini_cfg(world, out, mode="oracle")) == oracle
    assert calls == {"gen": 0, "judge": 3}
    # ... and one stopped mid-generation regenerates and re-judges only those
    calls.update(gen=0, judge=0)
    keep_first(out / "generated.jsonl", 8)
    assert ek.run(mini_cfg(world, out, mode="oracle")) == oracle
    assert calls == {"gen": 2, "judge": 2}
    assert len(lines(out / "trajectories.jsonl")) == 10


def test_results_table_rows_and_an_extra_column(world, tmp_path):
    runs = [(m, str(tmp_path / m)) for m in ("direct", "oracle")]
    for m, d in runs:
        ek.run(mini_cfg(world, d, mode=m, limit=3))
    path = ek.results_table(ek.default_config(table=",".join(f"{m}={d}" for m, d in runs),
                                              table_out=str(tmp_path / "t.md"), table_pairs="oracle vs direct"))
    rows, paired = open(path).read().split("## Paired differences")
    paired = paired.split("\n## ")[0].strip()  # up to the items grid's section
    table = [x for x in rows.splitlines() if x.startswith("|")]
    assert [x.split("|")[1].strip() for x in table[2:]] == ["direct", "oracle"]
    # the oracle's evidence beats the raw prompt on each of the 3 items: positive, and its interval excludes 0
    assert paired.splitlines()[-1].startswith("| oracle | direct | +") and paired.endswith("| yes |"), paired
    assert len({x.count("|") for x in table}) == 1 and os.path.exists(tmp_path / "items.png")
    # a benchmark's own per-row cell (data/miniworld/report.py: the copy rates) goes after "answered"
    md = ek.table_lines(runs, str(tmp_path), columns=[("dir", os.path.basename)])
    assert "| answered | dir | calls/traj" in md[0] and "| 3/3 | direct | 0.00, " in md[2]
    assert len({x.count("|") for x in md[:4]}) == 1


def test_stages_alone_and_failed_generation_counts_zero(world, tmp_path, calls, monkeypatch):
    out = tmp_path / "run"
    for st in ("agent", "generate"):
        ek.run(mini_cfg(world, out, mode="oracle", stage=st, limit=4))
    assert not os.path.exists(out / "judged.jsonl") and len(lines(out / "generated.jsonl")) == 4
    # a generator fault on one item: a counted zero, then retried (and re-judged) by the next run
    real = image_server.generate

    def flaky(gen_prompt, refs, out_path, c):
        if "_0002_" in os.path.basename(out_path):
            raise RuntimeError("HTTP 503")
        return real(gen_prompt, refs, out_path, c)
    os.remove(out / "generated.jsonl")
    monkeypatch.setattr(image_server, "generate", flaky)
    s = ek.run(mini_cfg(world, out, mode="oracle", limit=4))
    bad = [json.loads(x) for x in lines(out / "judged.jsonl") if "0002" in x]
    assert bad[-1]["k_score"] == 0.0 and "503" in bad[-1]["error"]
    monkeypatch.setattr(image_server, "generate", real)
    s2 = ek.run(mini_cfg(world, out, mode="oracle", limit=4))
    assert s2["overall"] > s["overall"]
    assert s2 == ek.run(mini_cfg(world, tmp_path / "clean", mode="oracle", limit=4))


def test_agent_mode_runs_rollout_and_resumes(world, tmp_path, monkeypatch):
    """mode=agent on a (random, tiny) checkpoint: rollout.py's loop with the mini world's tools. It never answers,
    so every item falls back to the raw prompt and must score exactly as the `direct` baseline."""
    import rollout
    from transformers import AutoTokenizer
    from sft import scratch_model
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    ckpt = str(tmp_path / "ckpt")
    scratch_model(tok, vision=True).save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    n = {"rollouts": 0}
    real = rollout.rollout

    def counting(items, *a, **k):
        n["rollouts"] += len(items)
        return real(items, *a, **k)
    monkeypatch.setattr(rollout, "rollout", counting)
    cfg = mini_cfg(world, tmp_path / "agent", mode="agent", policy_path=ckpt, limit=3, agent_batch=2,
                   rollout_kwargs={"max_rounds": 1, "max_new_tokens": 6})
    before = rollout.max_rounds
    s = ek.run(cfg)
    assert n["rollouts"] == 3 and rollout.max_rounds == before  # rollout_kwargs is an argument, never a global
    trajs = [json.loads(x) for x in lines(tmp_path / "agent" / "trajectories.jsonl")]
    assert [t["sample"] for t in trajs] == [0, 0, 0] and all(len(t["tokens"]) == len(t["loss_mask"]) for t in trajs)
    gens = [json.loads(x) for x in lines(tmp_path / "agent" / "generated.jsonl")]
    assert all(g["fallback"] for g in gens)
    stats = json.load(open(tmp_path / "agent" / "tool_stats.json"))
    assert stats["trajectories"] == 3 and sum(stats["end_reasons"].values()) == 3
    assert s == ek.run(mini_cfg(world, tmp_path / "direct", mode="direct", limit=3))
    ek.run(cfg)
    assert n["rollouts"] == 3  # resumed: no trajectory redone


class ServedAgent(BaseHTTPRequestHandler):
    """An agent behind /v1/chat/completions: an image search first, then an answer naming the first image."""
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path == "/v1/chat/completions", self.path
        ServedAgent.requests.append(body)
        if sum(m["role"] == "assistant" for m in body["messages"]) == 0:
            text = '<think>find it</think><tool_call>{"name": "image_search", "arguments": {"query": "flag"}}</tool_call>'
        else:
            text = '<think>ok</think><answer>' + json.dumps({"gen_prompt": "A flag like the first reference image.",
                                                             "reference_images": [{"img_id": "IMG_001"}]}) + "</answer>"
        data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


def test_agent_mode_served_agent_and_resume(world, tmp_path):
    """agent_engine=openai: rollout.py's loop against a served model (no checkpoint); the answer's gen_prompt and
    reference reach the generator; a re-run asks the server nothing."""
    ServedAgent.requests = []
    srv = loopback.serve(ServedAgent)
    cfg = mini_cfg(world, tmp_path / "served", mode="agent", agent_engine="openai", agent_model="served-agent",
                   agent_base_url=srv.url + "/v1", limit=3, agent_batch=2)
    try:
        ek.run(cfg)
        trajs = [json.loads(x) for x in lines(tmp_path / "served" / "trajectories.jsonl")]
        assert len(trajs) == 3 and len(ServedAgent.requests) == 6
        for t in trajs:
            assert t["end_reason"] == "answer" and t["policy"] == "served-agent", t["error"]
            assert t["tool_calls"]["image_search"] == 1 and t["answer"]["reference_images"][0]["img_id"] == "IMG_001"
        gens = {g["id"]: g for g in map(json.loads, lines(tmp_path / "served" / "generated.jsonl"))}
        for t in trajs:
            g = gens[t["id"]]
            assert not g["fallback"] and g["gen_prompt"] == "A flag like the first reference image."
            assert g["refs"] == [t["answer"]["reference_images"][0]["source_path"]] and g["image"]  # the original
        ek.run(cfg)
        assert len(ServedAgent.requests) == 6  # resumed: no trajectory redone
    finally:
        srv.shutdown()


# ---------------------------------------------------------------------------------------------------------------
# judges against a loopback OpenAI-compatible server

class Judge(BaseHTTPRequestHandler):
    requests, replies = [], []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert self.path.endswith("/chat/completions"), self.path
        Judge.requests.append(body)
        text = Judge.replies[(len(Judge.requests) - 1) % len(Judge.replies)]
        if text is None:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": text}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def judge_server():
    Judge.requests, Judge.replies = [], []
    return loopback.serve(Judge).url + "/v1"


def images_in(req):
    return [c["image_url"]["url"] for m in req["messages"] if isinstance(m["content"], list)
            for c in m["content"] if c.get("type") == "image_url"]


def text_of(req):
    return " ".join(m["content"] if isinstance(m["content"], str) else
                    " ".join(c.get("text", "") for c in m["content"]) for m in req["messages"])


def test_rejudge_with_served_judge(world, tmp_path, judge_server, calls):
    out = tmp_path / "run"
    ek.run(mini_cfg(world, out, mode="direct", limit=5))
    assert calls["judge"] == 5
    Judge.replies = [json.dumps({"rationale": "ok", "faithfulness": 1, "visual_correctness": 0.5,
                                 "text_accuracy": 0, "aesthetics": 0.5, "text_accuracy_na": False}), None]
    cfg = mini_cfg(world, out, mode="direct", limit=5, stage="judge", judge_backend="openai",
                   judge_base_url=judge_server, judge_model="loopback-judge", reward_kwargs={"judge_retries": 0})
    ek.run(cfg)
    assert len(Judge.requests) == 5 and calls["gen"] == 5
    assert calls["judge"] == 10  # reward.judge_kscore is what eval calls (5 offline + 5 served)
    items = {json.loads(x)["prompt"] for x in lines(os.path.join(world, "bench.jsonl"))[:5]}
    for req in Judge.requests:
        assert req["model"] == "loopback-judge" and req["temperature"] == 0
        urls = images_in(req)
        assert len(urls) == 2 and all(u.startswith("data:image/") for u in urls)  # generated + ground truth
        assert sum(p in text_of(req) for p in items) == 1  # the ORIGINAL prompt
    new = [json.loads(x) for x in lines(out / "judged.jsonl")[5:]]
    assert len(new) == 3 and all(r["judge"] == "loopback-judge" and r["k_score"] == 0.35 for r in new)
    # the 2 failed calls wrote nothing; the next re-judge asks only for those
    Judge.replies = Judge.replies[:1]
    ek.run(cfg)
    assert len(Judge.requests) == 7
    s = ek.run(dict(cfg, stage="report"))
    for g in ek.GROUPS:
        if s[g]:
            assert s[g]["visual_correctness"] == 50.0 and s[g]["faithfulness"] == 100.0


WISE = [{"prompt_id": 1, "Prompt": "The traditional dress of a festival", "Explanation": "kimono", "Subcategory":
         "Festival"},
        {"prompt_id": 402, "Prompt": "A city at dawn", "Explanation": "sunrise", "Subcategory": "Time"},
        {"prompt_id": 600, "Prompt": "A view from above", "Explanation": "map", "Subcategory": "Space"},
        {"prompt_id": 750, "Prompt": "A plant in winter", "Explanation": "dormant", "Subcategory": "Biology"},
        {"prompt_id": 850, "Prompt": "Ice on a hot plate", "Explanation": "melting", "Subcategory": "Physics"},
        {"prompt_id": 950, "Prompt": "Copper in flame", "Explanation": "green flame", "Subcategory": "Chemistry"}]


def test_wise_end_to_end_with_served_judge(tmp_path, judge_server):
    json.dump(WISE[:3], open(tmp_path / "cultural_and_st.json", "w"))
    json.dump({"data": [{k.lower(): v for k, v in w.items()} for w in WISE[3:]]}, open(tmp_path / "sci.json", "w"))
    Judge.replies = [json.dumps({"rationale": "r", "consistency": 2, "realism": 1, "aesthetic": 0}),
                     "Consistency: 1\nRealism: 2\nAesthetic Quality: 2"]
    cfg = ek.default_config(benchmark="wise", items_path=f"{tmp_path}/cultural_and_st.json,{tmp_path}/sci.json",
                            out_dir=str(tmp_path / "out"), mode="direct", gen_backend="offline",
                            judge_backend="openai", judge_base_url=judge_server, judge_model="wise-judge")
    s = ek.run(cfg)
    assert len(Judge.requests) == 6
    for req in Judge.requests:
        assert len(images_in(req)) == 1 and "EXPLANATION" in text_of(req)
    rows = {r["id"]: r for r in map(json.loads, lines(tmp_path / "out" / "judged.jsonl"))}
    assert {r["category"] for r in rows.values()} == set(ek.WISE_WEIGHTS)
    ws = {r["category"]: r["wiscore"] for r in rows.values()}
    assert sorted(set(ws.values())) == [0.65, 0.8]  # (0.7*1 + 0.2*2 + 0.1*2)/2 and (0.7*2 + 0.2*1 + 0)/2
    for r in rows.values():
        assert r["wiscore"] == round((0.7 * r["consistency"] + 0.2 * r["realism"] + 0.1 * r["aesthetic"]) / 2, 4)
    expect = sum(ek.WISE_WEIGHTS[c] * ws[c] for c in ek.WISE_WEIGHTS)
    assert s["overall"] == round(expect, 4) and s["partial"] is False


def test_wise_loader_is_lenient_and_explicit(tmp_path):
    d = tmp_path / "wise"
    d.mkdir()
    json.dump(WISE[:2], open(d / "a.json", "w"))
    json.dump(WISE[2:], open(d / "b.json", "w"))
    items = ek.load_wise(str(d))
    assert [it["category"] for it in items] == ["cultural", "time", "space", "biology", "physics", "chemistry"]
    assert items[0]["explanation"] == "kimono" and items[0]["id"] == "1"
    json.dump(WISE + [dict(WISE[0])], open(d / "b.json", "w"))
    with pytest.raises(ek.EvalError, match="duplicate prompt_id 1"):
        ek.load_wise(str(d))
    json.dump([{"prompt_id": 1001, "Prompt": "x"}], open(d / "b.json", "w"))
    with pytest.raises(ek.EvalError, match="1001"):
        ek.load_wise(str(d / "b.json"))
    json.dump([{"prompt_id": 3, "Explanation": "x"}], open(d / "b.json", "w"))
    with pytest.raises(ek.EvalError, match=r"b.json: entry 0"):
        ek.load_wise(str(d / "b.json"))


def test_every_judge_call_failing_stops_with_a_message_and_keeps_the_files(world, tmp_path, judge_server):
    out = tmp_path / "run"
    Judge.replies = [None]  # HTTP 500 on every call
    cfg = mini_cfg(world, out, mode="direct", limit=3, judge_backend="openai", judge_base_url=judge_server,
                   judge_model="loopback-judge", reward_kwargs={"judge_retries": 0})
    with pytest.raises(ek.EvalError, match="every judge call failed"):
        ek.run(cfg)
    assert len(lines(out / "generated.jsonl")) == 3 and len(lines(out / "judge_errors.log")) == 3
    assert not (out / "summary.json").exists()


def test_release_protocol_skip_failed_generation_raw_prompt_and_suffix(world, tmp_path, monkeypatch):
    """failed_generation=skip: no judged row (counted, reported), not a zero; an answer without references is
    generated from the raw prompt (no_refs_prompt=raw_prompt) with the text-only suffix appended."""
    real, seen = image_server.generate, []

    def flaky(gen_prompt, refs, out_path, c):
        seen.append((gen_prompt, list(refs)))
        if "_0002_" in os.path.basename(out_path):
            raise RuntimeError("HTTP 503")
        return real(gen_prompt, refs, out_path, c)
    monkeypatch.setattr(image_server, "generate", flaky)
    out = tmp_path / "run"
    items = [json.loads(x) for x in lines(os.path.join(world, "bench.jsonl"))[:4]]
    s = ek.run(mini_cfg(world, out, mode="direct", limit=4, failed_generation="skip", no_refs_prompt="raw_prompt",
                        t2i_suffix=", SUFFIX."))
    assert sorted(p for p, _ in seen) == sorted(it["prompt"] + ", SUFFIX." for it in items)
    judged = [json.loads(x) for x in lines(out / "judged.jsonl")]
    assert len(judged) == 3 and not any("0002" in r["id"] for r in judged)  # skipped, not scored 0
    assert all(r["error"] is None for r in judged) and s["overall"] is not None
