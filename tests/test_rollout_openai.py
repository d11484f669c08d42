# rollout.py's "openai" engine against a loopback /v1/chat/completions server (http.server, the real wire format
# the openai client speaks): a scripted tool call then an answer through the mini world's local tools, the record
# (messages, counts, registry ids, tokens when a tokenizer is given), the images sent as data URLs, the API key
# kept out of the record, and faults (HTTP 500, a non-JSON body, no content, a dead server) -> end_reason "error".
import base64
import json
import os
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import pytest

import loopback
import rollout as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "sk-loopback-Zq81xV"


def tool_call(name, **args):
    return f'<think>need {name}</think>\n<tool_call>{json.dumps({"name": name, "arguments": args})}</tool_call>'


def answer(*ids):
    refs = [{"img_id": i, "note": "the flag"} for i in ids]
    return f'<think>done</think>\n<answer>{json.dumps({"gen_prompt": "The flag of the first reference image.", "reference_images": refs})}</answer>'


class Server:
    """Replies by the trajectory's prompt (messages[1]) and how many assistant turns it already has."""

    def __init__(self):
        self.requests, self.seen, self.lock = [], Counter(), threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append((self.path, self.headers.get("Authorization"), body))
                loopback.send(self, *outer.route(body, self.headers.get("Authorization")))

        self.httpd = loopback.serve(H)
        self.url = self.httpd.url + "/v1"

    def route(self, body, auth):
        msgs = body["messages"]
        prompt, turns = msgs[1]["content"], sum(m["role"] == "assistant" for m in msgs)
        with self.lock:
            self.seen[prompt] += 1
            first = self.seen[prompt] == 1
        if prompt == "GOOD":
            text = [tool_call("image_search", query="flag", top_k=2) + "\n<tool_response>\nIMG_009: fake",
                    answer("IMG_001")][min(turns, 1)]
        elif prompt == "FLAKY" and first:
            return 500, {"error": {"message": "overloaded"}}
        elif prompt == "FLAKY":
            text = answer()
        elif prompt == "DOWN":
            return 500, {"error": {"message": "down"}}
        elif prompt == "GARBAGE":
            return 200, b"<html>gateway hiccup</html>"
        elif prompt == "ECHO":  # an error body that repeats the key it was sent
            return 401, {"error": {"message": f"invalid key in {auth}"}}
        elif prompt == "NOTEXT":
            return 200, reply(None)
        elif prompt == "CHATTY":  # never uses the format -> corrective turns, then the forced round
            text = f"I would just draw it ({turns})."
        elif prompt == "LONG":  # cut by max_tokens twice in a row -> repeated
            return 200, reply(f"<think>on and on {turns}", finish="length")
        else:
            raise AssertionError(prompt)
        return 200, reply(text)


def reply(text, finish="stop"):
    return {"id": "c", "object": "chat.completion", "created": 0, "model": "loop",
            "choices": [{"index": 0, "finish_reason": finish, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}}


@pytest.fixture(scope="module")
def world(tiny_world):
    return str(tiny_world)  # conftest.TINY_WORLD


@pytest.fixture(scope="module")
def tb(world, tmp_path_factory):
    import tools
    return tools.make_toolbox(world_dir=world, image_dir=str(tmp_path_factory.mktemp("img")))


def run(server, pol, tb, prompts, monkeypatch, s=None, **engine_kw):
    monkeypatch.setenv("LOOPBACK_KEY", SECRET)
    eng = R.make_engine("openai", pol, base_url=server.url if server else "http://127.0.0.1:9/v1", model="loop-agent",
                        api_key_env="LOOPBACK_KEY", max_tokens=256, timeout=10, s=s, **engine_kw)
    recs = R.rollout([{"id": p, "prompt": p} for p in prompts], pol, eng, tb, day="2026-01-02", temperature=0.0, s=s)
    for r in recs:
        assert SECRET not in json.dumps(r)  # the key never reaches a record
    return {r["id"]: r for r in recs}


def test_tool_call_then_answer_messages_only(tb, monkeypatch):
    server = Server()
    pol = R.tokenizer_policy(None, "loop-agent")
    rec = run(server, pol, tb, ["GOOD"], monkeypatch, retries=0)["GOOD"]
    assert rec["end_reason"] == "answer" and rec["rounds"] == 2, rec["error"]
    assert rec["tool_calls"] == {"search": 0, "image_search": 1, "browse": 0}
    assert [m["role"] for m in rec["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert "2026-01-02" in rec["messages"][0]["content"] and rec["policy"] == "loop-agent"
    turn1 = rec["messages"][2]["content"]  # the self-written <tool_response> and what follows are cut
    assert "<tool_response>" not in turn1 and "IMG_009" not in turn1 and turn1.endswith("</tool_call>\n")
    obs = rec["messages"][3]
    assert obs["content"].startswith("<tool_response>\n") and len(obs["images"]) == 2
    assert all(os.path.exists(p) for p in obs["images"])
    ref = rec["answer"]["reference_images"][0]
    assert ref["img_id"] == "IMG_001" and ref["local_path"] == obs["images"][0] and ref["url"].startswith("http")
    assert f"IMG_001: title: {ref['title']}" in obs["content"]
    assert rec["tokens"] == rec["loss_mask"] == rec["logprobs"] == rec["images"] == [] and rec["num_gen_tokens"] == 0
    assert rec["usage"] == {"requests": 2, "images_in": 2, "prompt_tokens": 100, "completion_tokens": 14}
    # the wire: the real endpoint, the key as a bearer token, the system prompt as the system message, and the
    # observation's images as data-URL image parts before its text
    (p1, auth, b1), (_, _, b2) = server.requests
    assert p1 == "/v1/chat/completions" and auth == f"Bearer {SECRET}"
    assert b1["model"] == "loop-agent" and b1["max_tokens"] == 256 and b1["temperature"] == 0.0
    assert [m["role"] for m in b1["messages"]] == ["system", "user"] and b1["messages"][0]["content"].startswith(
        "You are a research agent")
    parts = b2["messages"][3]["content"]
    assert [p["type"] for p in parts] == ["image_url", "image_url", "text"] and parts[2]["text"] == obs["content"]
    for part, path in zip(parts, obs["images"]):
        head, b64 = part["image_url"]["url"].split(",", 1)
        assert head == "data:image/jpeg;base64" and base64.b64decode(b64) == open(path, "rb").read()
    assert b2["messages"][2] == {"role": "assistant", "content": rec["messages"][2]["content"]}


def test_tokens_are_the_retokenized_text(world, tb, monkeypatch):
    """With a (VL) tokenizer the record carries the SFT token view: exactly tokenize_messages of its messages,
    loss 1 on the assistant turns, logprob 0.0 everywhere, every attached image at its placeholder run."""
    server = Server()
    pol = R.tokenizer_policy(os.path.join(world, "tokenizer"), "loop-agent", is_vl=True)
    assert pol.model is None and pol.is_vl
    rec = run(server, pol, tb, ["GOOD"], monkeypatch)["GOOD"]
    assert rec["end_reason"] == "answer", rec["error"]
    tm = R.tokenize_messages(rec["messages"], pol)
    assert rec["tokens"] == tm["tokens"] and rec["loss_mask"] == tm["loss_mask"]
    assert set(rec["logprobs"]) == {0.0} and len(rec["logprobs"]) == len(rec["tokens"])
    assert rec["num_gen_tokens"] == sum(rec["loss_mask"]) > 0
    assert [im["local_path"] for im in rec["images"]] == rec["messages"][3]["images"]
    pad = pol.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for im in rec["images"]:
        assert rec["tokens"][im["token_start"]:im["token_start"] + im["num_tokens"]] == [pad] * im["num_tokens"]
    gen = pol.tokenizer.decode([t for t, m in zip(rec["tokens"], rec["loss_mask"]) if m])
    assert gen == "".join(m["content"] + "<|im_end|>" for m in rec["messages"] if m["role"] == "assistant")


def test_faults_and_end_reasons(tb, monkeypatch):
    """One batch, concurrent requests: a 500 that recovers on retry, a server that always fails, a non-JSON body,
    a 401 (not retried) and a reply without content end as error (counted), a model that ignores the format gets
    corrective turns and the forced final round, two length-cut turns end as repeated. Nothing raises."""
    server = Server()
    pol = R.tokenizer_policy(None, "loop-agent")
    recs = run(server, pol, tb, ["FLAKY", "DOWN", "GARBAGE", "ECHO", "NOTEXT", "CHATTY", "LONG"], monkeypatch,
               s=R.settings(max_rounds=3), retries=1, workers=3)
    assert recs["FLAKY"]["end_reason"] == "answer" and recs["FLAKY"]["usage"]["request_errors"] == 1
    assert "invalid key in Bearer ***" in recs["ECHO"]["error"]  # run() checked SECRET is in no record
    for p in ("DOWN", "GARBAGE", "ECHO", "NOTEXT"):
        r = recs[p]
        assert r["end_reason"] == "error" and r["rounds"] == 0 and r["answer"] is None, (p, r["end_reason"])
        n = 1 if p == "ECHO" else 2  # a 401 is final (net.retryable); a 500 / non-JSON body / no text is retried
        assert r["usage"]["requests"] == r["usage"]["request_errors"] == n and r["error"], (p, r["usage"])
    assert "500" in recs["DOWN"]["error"] and "no message content" in recs["NOTEXT"]["error"]
    chatty = recs["CHATTY"]
    assert chatty["end_reason"] == "no_answer" and chatty["rounds"] == 4
    assert sum(m["content"].startswith("[Format Error]") for m in chatty["messages"]) == 3
    assert chatty["messages"][-2]["content"] == R.FINAL_ROUND
    assert recs["LONG"]["end_reason"] == "repeated" and recs["LONG"]["rounds"] == 2


def test_dead_server_ends_every_trajectory_as_error(tb, monkeypatch):
    pol = R.tokenizer_policy(None, "loop-agent")
    recs = run(None, pol, tb, ["GOOD", "CHATTY"], monkeypatch, retries=0)
    assert {r["end_reason"] for r in recs.values()} == {"error"}
    assert all("Connection" in r["error"] for r in recs.values())


def test_unknown_engine_option_is_named():
    with pytest.raises(ValueError, match="max_new"):
        R.make_engine("openai", R.tokenizer_policy(None, "x"), base_url="http://127.0.0.1:9/v1", max_new=3)


def test_forced_final_round_never_runs_a_tool(tb, monkeypatch):
    """A model that calls a tool every turn: the max_rounds normal calls run, the forced final round's call is
    refused (end no_answer) and never executed. The server answers any request made after the forced round, so
    a loop that ran the forced call ends at once (and fails here) instead of hanging."""
    class H(BaseHTTPRequestHandler):
        bodies = []

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            H.bodies.append(body)
            roles = [m["role"] if m["content"] != R.FINAL_ROUND else "final" for m in body["messages"]]
            past_forced = "final" in roles and "assistant" in roles[roles.index("final"):]
            loopback.send(self, 200, reply(answer() if past_forced else  # a new query each turn (a repeat ends it)
                                     tool_call("search", queries=[f"flag {roles.count('assistant')}"])))

    srv = loopback.serve(H)
    api = SimpleNamespace(url=srv.url + "/v1")  # what run() reads of a server
    rec = run(api, R.tokenizer_policy(None, "loop-agent"), tb, ["TOOLS"], monkeypatch,
              s=R.settings(max_rounds=2, force_final_round=True), retries=0)["TOOLS"]
    assert rec["end_reason"] == "no_answer" and rec["rounds"] == 3, (rec["end_reason"], rec["error"])
    assert rec["tool_calls"]["search"] == 2 and len(H.bodies) == 3
    assert rec["messages"][-2]["content"] == R.FINAL_ROUND and rec["messages"][-1]["role"] == "assistant"
    assert sum(m["content"].startswith("<tool_response>") for m in rec["messages"]) == 2

