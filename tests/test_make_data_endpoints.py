# make_data.py against loopback servers that speak the real protocols: an OpenAI-compatible
# /v1/chat/completions (prompt writer, agent, judge) and the release's image server POST /generate. The servers
# give good, malformed and failing replies (chosen by the request's content, failing only the first time for
# some); the test checks that failures are counted, finished rows are never lost or redone, and a re-run resumes.
import base64
import io
import json
import os
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

import loopback
import make_data as md

DUP = "A poster of the tallest tower in the capital of the country that hosted the 2010 world fair, at dusk."


class Server:
    """Behaviour by content. Writer: astronomy always malformed text, biology HTTP 500 once, chemistry a
    non-JSON HTTP body once. Agent: physics prompts never use the format (-> no_answer), medicine HTTP 500 once.
    Judge: engineering unparseable once, art says no search is needed. Generator: history 503 once."""

    def __init__(self):
        self.log, self.once, self.lock = [], Counter(), threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                loopback.send(self, *outer.route(self.path, body))

        self.httpd = loopback.serve(H)
        self.url = self.httpd.url

    def first(self, key):
        with self.lock:
            self.once[key] += 1
            return self.once[key] == 1

    def route(self, path, body):
        if path == "/generate":
            self.log.append(("gen", body["prompt"]))
            if "history" in body["prompt"] and self.first(("gen", body["prompt"])):
                return 503, {"success": False}
            buf = io.BytesIO()
            Image.new("RGB", (32, 32), (len(body["image_urls"]) * 40, 90, 160)).save(buf, "PNG")
            return 200, {"success": True, "image": base64.b64encode(buf.getvalue()).decode()}
        msgs = body["messages"]
        text = msgs[-1]["content"] if isinstance(msgs[-1]["content"], str) else msgs[-1]["content"][-1]["text"]
        if text.startswith("You write prompts"):
            cat = re.search(r'Category: "([^"]+)"', text).group(1)
            self.log.append(("writer", cat))
            if cat == "astronomy":
                return 200, chat_reply("Sorry, I can't write prompts about that today.")
            if cat == "biology" and self.first(("writer", cat)):
                return 500, {"error": {"message": "overloaded"}}
            if cat == "chemistry" and self.first(("writer", cat)):
                return 200, b"<html>gateway hiccup</html>"
            return 200, chat_reply("```json\n" + json.dumps([
                {"prompt": f"Draw the {cat} emblem of the city whose river is named Zed {cat.title()}, in ink.",
                 "difficulty": "medium", "target_entities": [f"Emblem of Zed {cat.title()}"]},
                {"prompt": DUP, "difficulty": "hard", "target_entities": ["Oriental Pearl Tower"]}]) + "\n```")
        if text.startswith("Turn this deep-research question"):
            q = re.search(r"Question: (.*)", text).group(1)
            self.log.append(("qa", q))
            return 200, chat_reply(json.dumps({"prompt": f"An illustration answering: {q} Show it in art deco style.",
                                               "category": "art", "difficulty": "hard"}))
        if text.startswith("You curate training data"):
            prompt = text.split("# User prompt\n", 1)[1].split("\n", 1)[0]
            self.log.append(("judge", prompt))
            if "engineering" in prompt and self.first(("judge", prompt)):
                return 200, chat_reply("The image looks fine to me.")
            s = {k: 1 for k in md.JUDGE_KEYS}
            s["needs_search"] = 0 if " art " in prompt else 1
            return 200, chat_reply(json.dumps({"rationale": "ok", **s}))
        assert msgs[0]["role"] == "system" and "research agent" in msgs[0]["content"]
        prompt, turns = msgs[1]["content"], sum(m["role"] == "assistant" for m in msgs)
        self.log.append(("agent", prompt, turns))
        if "medicine" in prompt and self.first(("agent", prompt)):
            return 500, {"error": {"message": "busy"}}
        if "physics" in prompt:
            return 200, chat_reply(f"I would simply draw a nice picture ({turns}).")
        if turns == 0:
            return 200, chat_reply('<think>Find the city.</think>\n<tool_call>\n{"name": "search", "arguments": '
                                   '{"queries": ["capital city"], "top_k": 3}}\n</tool_call>')
        if turns == 1:  # single quotes + trailing comma: the lenient parser's job
            return 200, chat_reply("<think>Now a picture.</think>\n<tool_call>{'name': 'image_search', "
                                   "'arguments': {'query': 'flag', 'top_k': 2,},}</tool_call><tool_response>fake")
        return 200, chat_reply('<think>Done.</think>\n<answer>' + json.dumps(
            {"gen_prompt": f"The flag from the first reference image, for: {prompt}",
             "reference_images": [{"img_id": "IMG_001", "note": "flag"}]}) + "</answer>")


def chat_reply(text):
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "loop",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}


@pytest.fixture(scope="module")
def world(tiny_world):
    return str(tiny_world)  # conftest.TINY_WORLD


def cfg(server, world, out, qa):
    url = server.url + "/v1"
    return dict(out_dir=str(out), world_dir=world, tool_backend="local", llm_base_url=url, llm_model="writer",
                teacher_base_url=url, teacher_model="agent", judge_base_url=url, judge_model="judge",
                generator_urls=[server.url], qa_path=str(qa), retries=0, workers=4, date="2025-06-01",
                requests_per_category=1, prompts_per_request=2, split_by="auto", bench_frac=0.2, rl_frac=0.5)


def rows(path):
    return [json.loads(x) for x in open(path)]


def costs(out, stage):
    return [c for c in rows(f"{out}/costs.jsonl") if c["stage"] == stage]


def test_all_stages_against_loopback_servers_fail_count_and_resume(world, tmp_path):
    server = Server()
    qa = tmp_path / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Which bridge did the winner of the 1931 rowing cup design?",
                              "answer": "Zed Bridge"}) + "\n")
    out = tmp_path / "out"
    md.main(**cfg(server, world, out, qa))
    n_cat = len(md.CATEGORIES)
    # prompts: 3 writer requests failed (malformed text, HTTP 500, non-JSON body), counted, not written
    c = costs(out, "prompts")[0]
    assert c["failed"] == 3 and c["rows"] == n_cat - 3 + 1
    assert c["request_errors"] == 2 and c["parse_errors"] == 1 and c["requests"] == n_cat + 1
    assert c["prompt_tokens"] == 100 * (n_cat + 1 - 2)  # every reply that carried usage was counted
    items = rows(f"{out}/prompts.jsonl")
    assert sum(it["prompt"] == DUP for it in items) == 1  # the shared prompt was deduplicated
    assert len(items) == (n_cat - 3) + 1 + 1
    # trajectories: medicine failed (HTTP 500, not written); physics is kept as an invalid trajectory
    trajs = {r["id"]: r for r in rows(f"{out}/trajectories.jsonl")}
    by_prompt = {it["prompt"]: it["id"] for it in items}
    assert not any("medicine" in r["prompt"] for r in trajs.values())
    phys = next(r for r in trajs.values() if "physics" in r["prompt"])
    assert phys["end_reason"] == "no_answer" and phys["rounds"] == 10
    assert sum("[Format Error]" in m["content"] for m in phys["messages"]) == 9
    good = trajs[by_prompt[DUP]]
    assert good["end_reason"] == "answer" and good["tool_calls"] == {"search": 1, "image_search": 1, "browse": 0}
    assert good["answer"]["reference_images"][0]["img_id"] == "IMG_001"
    assert "<tool_response>" not in good["messages"][4]["content"]  # a self-written tool response is cut
    assert good["messages"][5]["images"] and "IMG_001: title:" in good["messages"][5]["content"]
    # cost counts per row: 3 chat calls; the third one re-sent the turn's images as image parts
    assert good["usage"]["requests"] == 3 and good["usage"]["images_in"] == len(good["messages"][5]["images"]) == 2
    assert costs(out, "traj")[0]["failed"] == 1
    assert costs(out, "gt")[0]["failed"] == 1 and costs(out, "judge")[0]["failed"] == 1
    before = {f: open(f"{out}/{f}").read() for f in ("prompts_raw.jsonl", "trajectories.jsonl", "gt.jsonl",
                                                     "judge.jsonl")}
    log1 = list(server.log)

    md.main(**cfg(server, world, out, qa))  # the re-run: only what failed is requested again
    log2 = server.log[len(log1):]
    assert sorted(e[1] for e in log2 if e[0] == "writer") == ["astronomy", "biology", "chemistry"]
    assert not [e for e in log2 if e[0] == "qa"]
    started = Counter(e[1] for e in log2 if e[0] == "agent" and e[2] == 0)
    assert all("medicine" in p or "biology" in p or "chemistry" in p for p in started)
    assert sum("medicine" in p for p in started) == 1
    for f, text in before.items():  # every earlier row kept as it was; the file in (id, sample) order
        now = open(f"{out}/{f}").read().splitlines()
        assert set(text.splitlines()) <= set(now) and len(now) > len(text.splitlines())
        keys = [(r["id"], r.get("sample", 0)) for r in map(json.loads, now)]
        assert keys == sorted(keys)
    assert costs(out, "prompts")[1]["failed"] == 1  # astronomy is malformed every time
    assert [costs(out, s)[1]["failed"] for s in ("traj", "gt", "judge")] == [0, 0, 0]
    cur = {r["id"]: r for r in rows(f"{out}/curation.jsonl")}
    items = rows(f"{out}/prompts.jsonl")
    assert len(cur) == len(items) == (n_cat - 1) + 1 + 1
    reasons = Counter(r for x in cur.values() for r in x["reasons"])
    assert reasons == {"invalid:no_answer": 1, "judge:needs_search": 2}  # physics; art + the QA prompt (art)
    sizes = json.load(open(f"{out}/split.json"))["sizes"]
    assert sum(sizes.values()) == len(items) - 3 and min(sizes.values()) > 0
    assert json.load(open(f"{out}/split.json"))["overlap"] == {"prompt": 0, "entity": 0, "near_dup": 0}

    md.main(**cfg(server, world, out, qa))  # nothing left: no request at all
    assert [e for e in server.log[len(log1) + len(log2):] if e[0] != "writer"] == []
