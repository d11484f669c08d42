# reward.py: formulas, invalid answers, the OpenAI-compatible judges against a loopback server that speaks
# /v1/chat/completions (good, malformed, slow, failing replies), the judge cache, key hygiene, the batch API,
# and the offline generator + judges on a freshly built mini world; also image_server.py's image-API clients
# (openai, gemini, seedream) against loopback servers.
import base64
import collections
import hashlib
import io
import json
import logging
import os
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

import image_server
import loopback
import reward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "sk-test-DO-NOT-LEAK-4242"


# ----------------------------------------------------------------------------------------------
# pure functions

def test_k_score_and_final_reward():
    assert reward.k_score(1, 0.5, 0, 1) == 0.4                    # .1 + .2 + 0 + .1
    assert reward.k_score(1, 1, 0, 1, text_na=True) == 0.8         # T = .5 when N/A: .1 + .4 + .2 + .1
    assert reward.k_score(0.5, 0.5, 1, 0) == 0.65                  # .05 + .2 + .4 + 0
    assert reward.k_score(0, 0, 0, 0) == 0.0
    assert reward.final_reward(0.8, 0.5) == pytest.approx(0.65)    # .5*.8 + .5*.5
    assert reward.final_reward(0.4, 1.0, lam=0.3) == pytest.approx(0.58)  # .7*.4 + .3*1
    assert reward.final_reward(0.4, 1.0, lam=0.0) == pytest.approx(0.4)
    assert reward.final_reward(-1.0, 0.0) == 0.0                   # clamped at 0


def _ref(i, path="x.png"):
    return {"img_id": f"IMG_{i:03d}", "url": f"https://e.example/{i}.png", "local_path": path, "title": f"t{i}",
            "page_url": "https://e.example/p", "note": "n"}


def test_invalid_reason():
    ok = {"end_reason": "answer", "answer": {"gen_prompt": "a flag", "reference_images": [_ref(1)]}}
    assert reward.invalid_reason(ok) is None
    assert reward.invalid_reason({**ok, "end_reason": "overlong"}) == "overlong"
    assert reward.invalid_reason({**ok, "end_reason": "repeated"}) == "repeated"
    assert reward.invalid_reason({"end_reason": "parse_failed", "answer": None}) == "no_answer"
    assert reward.invalid_reason({**ok, "answer": {"gen_prompt": "  ", "reference_images": [_ref(1)]}}) \
        == "empty_gen_prompt"
    assert reward.invalid_reason({**ok, "answer": {"gen_prompt": "a", "reference_images": []}}) == "num_refs"
    five = [_ref(i) for i in range(1, 6)]
    assert reward.invalid_reason({**ok, "answer": {"gen_prompt": "a", "reference_images": five}}) == "num_refs"
    four = five[:4] + [_ref(1)]  # a duplicate does not count twice
    assert reward.invalid_reason({**ok, "answer": {"gen_prompt": "a", "reference_images": four}}) is None
    junk = [{"img_id": "IMG_001"}, "IMG_002"]  # no path/url, not a dict: not valid references
    assert reward.invalid_reason({**ok, "answer": {"gen_prompt": "a", "reference_images": junk}}) == "num_refs"


def test_parsers():
    good = {"rationale": "r", "faithfulness": 1, "visual_correctness": 0.5, "text_accuracy": 0, "aesthetics": 1,
            "text_accuracy_na": False}
    assert reward.parse_kscore("```json\n" + json.dumps(good) + "\n```")["visual_correctness"] == 0.5
    assert reward.parse_kscore(json.dumps({**good, "text_accuracy": 0, "text_accuracy_na": True}))["text_accuracy"] \
        == 0.5
    assert reward.parse_kscore(json.dumps({**good, "faithfulness": 0.7})) is None   # not a rubric level
    assert reward.parse_kscore(json.dumps({**good, "aesthetics": "1"})) is None
    assert reward.parse_kscore("the image is great") is None
    assert reward.parse_text_score('{"score": 3}')["score"] == 0.75
    assert reward.parse_text_score('{"score": 2.6}')["score"] == 0.75    # 0.65 snaps to the nearest level
    assert reward.parse_text_score('{"score": "4"}')["score"] == 1.0
    assert reward.parse_text_score('{"score": 5}') is None
    assert reward.parse_text_score('{"rationale": "no score"}') is None


# ----------------------------------------------------------------------------------------------
# a loopback OpenAI-compatible server

K_REPLY = {"rationale": "ok", "faithfulness": 1, "visual_correctness": 0.5, "text_accuracy": 0, "aesthetics": 1,
           "text_accuracy_na": False}   # K = .1 + .2 + 0 + .1 = 0.4
T_REPLY = {"rationale": "ok", "score": 3}  # r_text = 0.75


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, code, obj):
        b = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(b)))
            self.end_headers()
            self.wfile.write(b)
        except OSError:  # the client gave up (timeout test)
            pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        with srv.lock:
            srv.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            mode = srv.script.popleft() if srv.script else "good"
        if mode == "slow":
            time.sleep(srv.slow_seconds)
            mode = "good"
        if mode == "fail500":
            return self._send(500, {"error": {"message": "internal error"}})
        if mode == "echo401":  # a server that echoes the key back, as real ones partly do
            return self._send(401, {"error": {"message": f"bad key {self.headers.get('Authorization')}"}})
        is_k = body["messages"][0]["content"] == reward.KSCORE_SYSTEM
        if mode == "malformed":
            content = "I think the image is nice (no JSON here) " + (self.headers.get("Authorization") or "")
        elif mode == "out_of_range":
            content = json.dumps({**K_REPLY, "faithfulness": 0.7}) if is_k else json.dumps({"score": 9})
        else:
            content = json.dumps(srv.k_reply if is_k else srv.t_reply)
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body.get("model"),
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture
def judge_server():
    srv = loopback.serve(_Handler, lock=threading.Lock(), requests=[], script=collections.deque(), slow_seconds=3.0,
                         k_reply=K_REPLY, t_reply=T_REPLY)
    srv.base_url = srv.url + "/v1"
    return srv


@pytest.fixture
def images(tmp_path):
    """gen / gt / reference PNGs with distinct contents."""
    out = {}
    for name, color in (("gen", (200, 30, 30)), ("gt", (30, 200, 30)), ("ref", (30, 30, 200))):
        out[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", (32, 32), color).save(out[name])
    return out


def _cfg(srv, tmp_path, **kw):
    base = dict(judge_backend="openai", judge_base_url=srv.base_url, judge_backoff=0.01, judge_retries=2,
                judge_timeout=5.0, judge_cache=None, out_dir=str(tmp_path / "gen"))
    return reward.make_config(**{**base, **kw})


def _answer(ref_path):
    return {"gen_prompt": 'The flag of Dutel with the title "DUTEL DAY"',
            "reference_images": [{**_ref(3, ref_path), "title": "Flag of Dutel", "note": "the national flag",
                                  "page_url": "https://miniworld.example/wiki/Dutel"}]}


def test_judges_requests_and_results(judge_server, images, tmp_path):
    c = _cfg(judge_server, tmp_path)
    k, err = reward.judge_kscore("draw the flag of Dutel", images["gen"], images["gt"], c)
    assert err is None and k["visual_correctness"] == 0.5 and k["text_accuracy_na"] is False
    assert reward.k_score(k["faithfulness"], k["visual_correctness"], k["text_accuracy"], k["aesthetics"],
                          k["text_accuracy_na"]) == 0.4
    t, err = reward.judge_text("draw the flag of Dutel", _answer(images["ref"]), images["gt"], c)
    assert err is None and t["score"] == 0.75
    kreq, treq = (r["body"] for r in judge_server.requests)
    assert kreq["model"] == "gpt-4.1" and kreq["temperature"] == 0 and kreq["response_format"]["type"] == "json_object"

    def image_urls(req):
        return [part["image_url"]["url"] for m in req["messages"] if isinstance(m["content"], list)
                for part in m["content"] if part["type"] == "image_url"]

    def data_of(path):
        return "data:image/png;base64," + base64.b64encode(open(path, "rb").read()).decode()
    # K-Score: image 1 = generated, image 2 = ground truth, both as data URLs; the original prompt is there
    assert image_urls(kreq) == [data_of(images["gen"]), data_of(images["gt"])]
    assert "draw the flag of Dutel" in json.dumps(kreq)
    # text judge: only the ground-truth image; the answer as text (title/note/page_url), no reference pixels
    assert image_urls(treq) == [data_of(images["gt"])]
    dumped = json.dumps(treq)
    assert data_of(images["ref"])[22:] not in dumped and data_of(images["gen"])[22:] not in dumped
    for s in ("Flag of Dutel", "the national flag", "https://miniworld.example/wiki/Dutel", "IMG_003", "DUTEL DAY"):
        assert s in dumped


def test_judge_retries_malformed_failing_and_slow(judge_server, images, tmp_path):
    c = _cfg(judge_server, tmp_path, judge_timeout=0.5)
    before = reward.STATS["judge_parse_failures"]
    judge_server.script.extend(["malformed", "out_of_range"])
    k, err = reward.judge_kscore("p", images["gen"], images["gt"], c)
    assert err is None and k["faithfulness"] == 1 and len(judge_server.requests) == 3
    assert reward.STATS["judge_parse_failures"] - before == 2
    judge_server.requests.clear()
    judge_server.script.extend(["fail500", "slow"])  # a 5xx, then a reply slower than the 0.5 s timeout
    t, err = reward.judge_text("p", _answer(images["ref"]), images["gt"], c)
    assert err is None and t["score"] == 0.75 and len(judge_server.requests) == 3
    judge_server.requests.clear()
    judge_server.script.extend(["malformed"] * 3)  # never parseable: counted, no crash
    fails = reward.STATS["judge_failures"]
    k, err = reward.judge_kscore("p", images["gen"], images["gt"], c)
    assert k is None and "unparseable" in err and len(judge_server.requests) == 3
    assert reward.STATS["judge_failures"] == fails + 1


def test_judge_cache_and_keys_never_leak(judge_server, images, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("JUDGE_TEST_KEY", SECRET)
    cache = str(tmp_path / "cache.sqlite")
    c = _cfg(judge_server, tmp_path, judge_api_key_env="JUDGE_TEST_KEY", judge_cache=cache)
    caplog.set_level(logging.DEBUG)  # everything, including openai/httpx debug logs
    k1, _ = reward.judge_kscore("p", images["gen"], images["gt"], c)
    n = len(judge_server.requests)
    k2, _ = reward.judge_kscore("p", images["gen"], images["gt"], c)
    assert n == 1 and len(judge_server.requests) == 1 and k2 == k1  # second call: no request
    reward.judge_kscore("another prompt", images["gen"], images["gt"], c)
    assert len(judge_server.requests) == 2  # other inputs, other key
    assert judge_server.requests[0]["auth"] == f"Bearer {SECRET}"  # the key did travel (else this test is moot)
    # servers that echo the key: in an error body (401, not retried) and inside a malformed reply
    judge_server.script.extend(["echo401", "malformed", "malformed", "malformed"])
    _, e1 = reward.judge_text("p", _answer(images["ref"]), images["gt"], c)
    _, e2 = reward.judge_text("q", _answer(images["ref"]), images["gt"], c)
    assert "401" in e1 and "unparseable" in e2
    out = capsys.readouterr()
    for text in (caplog.text, out.out, out.err, e1, e2, open(cache, "rb").read().decode("latin-1")):
        assert SECRET not in text


def test_score_batch(judge_server, images, tmp_path):
    """Invalid answers cost no call; valid ones get (1-λ)K + λ r_text; a dead generator -> counted zero."""
    item = {"id": "it1", "prompt": "draw the flag of Dutel", "gt_image": images["gt"]}
    good = {"id": "it1", "sample": 0, "end_reason": "answer", "answer": _answer(images["ref"])}
    trajs = [good, {**good, "sample": 1, "end_reason": "overlong"}, {**good, "sample": 2, "answer": None},
             {**good, "sample": 3, "answer": {"gen_prompt": "", "reference_images": [_ref(1, images["ref"])]}},
             {**good, "sample": 4}, {**good, "id": "missing", "sample": 5}]
    res = reward.score(trajs, [item], **{k: v for k, v in _cfg(judge_server, tmp_path).items()})
    assert [r["invalid"] for r in res] == [None, "overlong", "no_answer", "empty_gen_prompt", None, None]
    assert len(judge_server.requests) == 4  # 2 valid trajectories x 2 judges; none for the invalid ones
    for r in (res[0], res[4]):
        assert r["k_score"] == 0.4 and r["r_text"] == 0.75 and r["error"] is None
        assert r["reward"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.75) and os.path.exists(r["gen_image"])
    assert res[5]["reward"] == 0 and "no item" in res[5]["error"]
    # judge garbage -> zero reward with error set (judge_fail="zero_reward"), or half counted ("zero_component")
    judge_server.script.extend(["malformed"] * 2)  # both judges, no retries
    r = reward.score([good], [item], **_cfg(judge_server, tmp_path, judge_retries=0))[0]
    assert r["reward"] == 0 and r["error"]
    judge_server.script.append("out_of_range")  # one of the two judges fails
    r = reward.score([good], [item], **_cfg(judge_server, tmp_path, judge_retries=0, judge_fail="zero_component"))
    assert r[0]["error"] and r[0]["reward"] in (pytest.approx(0.5 * 0.4), pytest.approx(0.5 * 0.75))
    # generator down: no judge call, zero reward, error set
    n = len(judge_server.requests)
    r = reward.score([good], [item], **_cfg(judge_server, tmp_path, gen_backend="server", gen_retries=1,
                                            gen_backoff=0.01, generator_urls=["http://127.0.0.1:9"]))[0]
    assert r["invalid"] == "generation_failed" and r["reward"] == 0 and "generator" in r["error"]
    assert len(judge_server.requests) == n
    with pytest.raises(TypeError, match="unknown config key 'judge_modle'"):
        reward.score([good], [item], judge_modle="x")


class _ImageAPIHandler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.paths.append(self.path)
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), (1, 2, 3)).save(buf, "PNG")
        b = json.dumps({"created": 0, "data": [{"b64_json": base64.b64encode(buf.getvalue()).decode()}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


def test_openai_image_backend(images, tmp_path):
    srv = loopback.serve(_ImageAPIHandler, paths=[])
    try:
        c = reward.make_config(gen_backend="openai", gen_openai_base_url=srv.url + "/v1",
                               gen_retries=0)
        image_server.generate("a flag", [images["ref"]], str(tmp_path / "a.png"), c)
        image_server.generate("a flag", [], str(tmp_path / "b.png"), c)
        assert srv.paths == ["/v1/images/edits", "/v1/images/generations"]
        assert Image.open(tmp_path / "a.png").getpixel((0, 0)) == (1, 2, 3)
    finally:
        srv.shutdown()
        srv.server_close()


# ----------------------------------------------------------------------------------------------
# the offline generator + judges on a mini world

@pytest.fixture(scope="module")
def world(make_mini_world):
    return str(make_mini_world(seed=11, n_countries=10, bench_countries=3, rl_countries=2, n_sft=5, n_rl=5, n_bench=40,
                               n_distractors=50, tokenizer=False))


def _jpeg(src, dst):
    """What tools.py attaches: a JPEG copy (quality 90) of the collection image."""
    Image.open(src).convert("RGB").save(dst, "JPEG", quality=90)
    return dst


def test_offline_oracle_beats_wrong_and_no_search(world, tmp_path):
    rows = [json.loads(line) for line in open(os.path.join(world, "images.jsonl"))]
    title = {r["image_id"]: r["title"] for r in rows}
    items = [json.loads(line) for line in open(os.path.join(world, "bench.jsonl"))]
    assert len(items) >= 20
    rng = random.Random(0)
    c = reward.make_config(data_dir=world)
    jpg = {r["image_id"]: _jpeg(os.path.join(world, r["path"]), str(tmp_path / (r["image_id"] + ".jpg"))) for r in rows}

    def K(gen_prompt, refs, it, tag):
        p = str(tmp_path / f"{it['id']}_{tag}.png")
        image_server.offline_generate(gen_prompt, refs).save(p)
        j = reward.judge_kscore_offline(p, os.path.join(world, it["gt_image"]), it["solution"], c)
        return reward.k_score(j["faithfulness"], j["visual_correctness"], j["text_accuracy"], j["aesthetics"],
                              j["text_accuracy_na"])
    n_multi = 0
    for it in items:
        s = it["solution"]
        refs = s["ref_image_ids"]
        oracle = K(s["gen_prompt"], [jpg[i] for i in refs], it, "oracle")
        # the hardest wrong image: another image of the same kind ("Portrait of ...") as the main subject
        kind = " ".join(title[refs[0]].split()[:2])
        pool = [i for i in title if i not in refs and title[i].startswith(kind)] or [i for i in title if i not in refs]
        wrong = K(s["gen_prompt"], [jpg[rng.choice(pool)]] + [jpg[i] for i in refs[1:]], it, "wrong")
        no_search = K(it["prompt"], [], it, "nosearch")
        assert oracle > wrong and oracle > no_search, (it["id"], oracle, wrong, no_search)
        assert oracle == (1.0 if s["required_text"] else 0.8)
        if len(refs) > 1:  # partial credit: the main subject right, the second reference missing
            n_multi += 1
            assert wrong < K(s["gen_prompt"], [jpg[refs[0]]], it, "first") < oracle
    assert n_multi > 0


def test_offline_score_end_to_end(world, tmp_path):
    """score() with the offline backends: the oracle answer > a wrong-reference answer > nothing, and the
    text judge's partial credit separates a group of answers."""
    rows = {json.loads(line)["image_id"]: json.loads(line) for line in open(os.path.join(world, "images.jsonl"))}
    items = [json.loads(line) for line in open(os.path.join(world, "bench.jsonl"))][:8]

    def answer(gen_prompt, ids, via_url=False):
        refs = []
        for n, i in enumerate(ids, 1):
            r = rows[i]
            lp = _jpeg(os.path.join(world, r["path"]), str(tmp_path / f"IMG_{n:03d}_{i}_copy.jpg"))
            refs.append({"img_id": f"IMG_{n:03d}", "url": r["url"] if via_url else "", "local_path": lp,
                         "title": r["title"], "page_url": r["page_url"], "note": ""})
        return {"gen_prompt": gen_prompt, "reference_images": refs}
    trajs = []
    others = sorted(rows)
    for it in items:
        s = it["solution"]
        wrong_ids = [i for i in others if i not in s["ref_image_ids"]][:len(s["ref_image_ids"])]
        trajs += [{"id": it["id"], "sample": 0, "end_reason": "answer", "answer": answer(s["gen_prompt"],
                                                                                        s["ref_image_ids"], True)},
                  {"id": it["id"], "sample": 1, "end_reason": "answer", "answer": answer(it["prompt"], wrong_ids)}]
    res = reward.score(trajs, items, data_dir=world, out_dir=str(tmp_path / "gen"), judge_cache=None)
    assert all(r["error"] is None and r["invalid"] is None for r in res)
    for o, w in zip(res[0::2], res[1::2]):
        assert o["r_text"] == 1.0 and o["k_score"] >= 0.8
        assert o["reward"] > w["reward"] and w["r_text"] < 1.0
    assert len({r["reward"] for r in res}) > 2


def test_kscore_rubric_has_the_release_criteria():
    """The release judge's stricter criteria, in our words (issue 12): every image is generated; aesthetics 1 needs
    excellent AND not worse than the ground truth; visual 0.5 needs the same visual instance; unverifiable = lower."""
    r = reward.KSCORE_SYSTEM
    assert "Both images are AI-generated" in r
    assert "1 = excellent composition and polish AND not worse than Image 2" in r
    assert "0.5 = still recognisably the SAME visual instance as Image 2" in r
    assert "cannot verify" in r and "score lower" in r


class _ImageAPI(BaseHTTPRequestHandler):
    """Loopback stand-in for Gemini generateContent and Volcengine ARK images/generations (their JSON shapes)."""
    requests, png = [], b""

    def _send(self, code, body, ctype="application/json"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # Seedream's response_format=url: the image is downloaded from here
        self._send(200, _ImageAPI.png, "image/png")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _ImageAPI.requests.append((self.path, dict(self.headers), body))
        b64 = base64.b64encode(_ImageAPI.png).decode()
        if self.path.endswith(":generateContent"):
            out = {"candidates": [{"content": {"role": "model", "parts": [{"text": "here"}, {"inlineData": {
                "mimeType": "image/png", "data": b64}}]}}]}
        elif self.path.endswith("/images/generations"):
            out = {"model": body["model"], "created": 0, "data": [{"url": f"http://127.0.0.1:{self.server.server_port}/img.png",
                                                                  "size": "2048x2048"}]}
        else:
            return self._send(404, b"{}")
        self._send(200, json.dumps(out).encode())

    def log_message(self, *a):
        pass


def test_gemini_and_seedream_clients_send_the_original_references(tmp_path, monkeypatch):
    srv = loopback.serve(_ImageAPI)
    base = srv.url
    try:
        buf = io.BytesIO()
        Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "PNG")
        _ImageAPI.png, _ImageAPI.requests = buf.getvalue(), []
        refs = []
        for i, (fmt, size) in enumerate((("JPEG", (900, 700)), ("PNG", (64, 48)))):  # > 160k px: must not shrink
            p = tmp_path / f"ref{i}.{fmt.lower()}"
            Image.new("RGB", size, (i * 90, 20, 200)).save(p, fmt)
            refs.append(str(p))
        digests = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in refs]
        monkeypatch.setenv("GEMINI_API_KEY", "gem-key-123")
        monkeypatch.setenv("ARK_API_KEY", "ark-key-456")
        c = reward.make_config(gen_gemini_base_url=base + "/v1beta", gen_seedream_base_url=base + "/api/v3",
                               gen_retries=0)
        for backend in ("gemini", "seedream"):
            out = image_server.generate("a green flag", refs, str(tmp_path / f"{backend}.png"),
                                        dict(c, gen_backend=backend))
            assert Image.open(out).size == (40, 30)
        (gp, gh, gb), (sp, sh, sb) = _ImageAPI.requests
        assert gp == "/v1beta/models/gemini-3-pro-image-preview:generateContent" and gh["x-goog-api-key"] == "gem-key-123"
        parts = gb["contents"][0]["parts"]
        assert parts[0] == {"text": "a green flag"} and [p["inlineData"]["mimeType"] for p in parts[1:]] == \
            ["image/jpeg", "image/png"]
        sent = [base64.b64decode(p["inlineData"]["data"]) for p in parts[1:]]
        assert [hashlib.sha256(b).hexdigest() for b in sent] == digests  # size and hash unchanged
        assert sp == "/api/v3/images/generations" and sh["Authorization"] == "Bearer ark-key-456"
        assert {k: sb[k] for k in ("model", "prompt", "size", "response_format", "watermark")} == {
            "model": "doubao-seedream-4-0-250828", "prompt": "a green flag", "size": "2K", "response_format": "url",
            "watermark": False}
        sent = [base64.b64decode(u.split(",", 1)[1]) for u in sb["image"]]
        assert [hashlib.sha256(b).hexdigest() for b in sent] == digests
        monkeypatch.delenv("ARK_API_KEY")
        with pytest.raises(RuntimeError, match="ARK_API_KEY"):
            image_server.generate("x", [], str(tmp_path / "n.png"), dict(c, gen_backend="seedream"))
    finally:
        loopback.close(srv)
