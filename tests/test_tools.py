# Tests for tools.py: observation formats, the local FTS5 backend on a tiny hand-made world, the web backend
# against a loopback HTTP server that speaks Serper's / a Jina-style reader's / OpenAI's request and response
# shapes (retries, errors, caps, cache, concurrency), SSRF refusals, argument validation, and -- when
# data/miniworld/prepare.py exists -- retrievability of every bench item's solution hops.
import io
import json
import os
import re
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest
from PIL import Image

import loopback
import tools

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY = "test-serper-key-4242"


# ----------------------------------------------------------------------------------------------
# a tiny hand-made world


def make_world(d):
    os.makedirs(os.path.join(d, "images"), exist_ok=True)
    pages = [
        ("https://miniworld.example/wiki/Vorlak", "Vorlak", "Vorlak is a country in the north. Its capital is "
         "Tesmar. The flag of Vorlak shows a red star on blue. Vorlak exports copper."),
        ("https://miniworld.example/wiki/Tesmar", "Tesmar", "Tesmar is the capital of Vorlak. The Ulbrin Spire "
         "is a tall tower in Tesmar built in 1821. The city hosts a winter festival."),
        ("https://miniworld.example/wiki/Ulbrin_Spire", "Ulbrin Spire", "The Ulbrin Spire is a granite tower. "
         "It is 140 metres tall and has a golden roof."),
        ("https://en.wikipedia.org/wiki/Paris", "Paris", "Paris is the capital and largest city of France."),
        ("https://en.wikipedia.org/wiki/Copper", "Copper", "Copper is a chemical element with symbol Cu."),
    ]
    with open(os.path.join(d, "pages.jsonl"), "w") as f:
        for url, title, text in pages:
            src = "wikipedia" if "wikipedia" in url else "miniworld"
            f.write(json.dumps({"url": url, "title": title, "text": text, "source": src}) + "\n")
    images = [("im_00001", "flag of Vorlak", (64, 64), "RGB", "https://miniworld.example/wiki/Vorlak"),
              ("im_00002", "Ulbrin Spire photo", (800, 600), "RGBA", "https://miniworld.example/wiki/Ulbrin_Spire"),
              ("im_00003", "map of Vorlak", (64, 48), "P", "https://miniworld.example/wiki/Vorlak"),
              ("im_00004", "Tesmar skyline", (300, 900), "RGB", "https://miniworld.example/wiki/Tesmar")]
    with open(os.path.join(d, "images.jsonl"), "w") as f:
        for iid, title, size, mode, page in images:
            Image.new(mode, size, 3 if mode == "P" else (200, 30, 30) if mode == "RGB" else (0, 0, 255, 120)
                      ).save(os.path.join(d, "images", f"{iid}.png"))
            f.write(json.dumps({"image_id": iid, "path": f"images/{iid}.png", "title": title, "page_url": page,
                                "url": f"https://miniworld.example/img/{iid}.png", "width": size[0],
                                "height": size[1]}) + "\n")
    return d


@pytest.fixture
def world(tmp_path):
    return make_world(str(tmp_path / "world"))


@pytest.fixture
def local_tb(world, tmp_path):
    tb = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"))
    yield tb
    tools.close_toolbox(tb)


def search_blocks(text):
    """{query: [(title, link, snippet), ...]} parsed from a search observation (checks the format)."""
    out = {}
    for m in re.finditer(r"--- search result for \[(.*?)\] ---\n(.*?)\n--- end of search result ---", text, re.S):
        hits = []
        for chunk in m.group(2).split("\n\n"):
            h = re.fullmatch(r"\[(.+?)\]\((\S+)\) (.*)", chunk, re.S)
            if h:
                hits.append(h.groups())
            else:
                assert chunk.startswith("No results"), chunk
        out[m.group(1)] = hits
    return out


# ----------------------------------------------------------------------------------------------
# local backend


def test_local_search_format_and_ranking(local_tb):
    r = tools.run_tool(local_tb, "search", {"queries": ["Ulbrin Spire height", "copper element"], "top_k": 2}, {})
    assert not r.error and r.images == []
    blocks = search_blocks(r.text)
    assert list(blocks) == ["Ulbrin Spire height", "copper element"]
    assert blocks["Ulbrin Spire height"][0][:2] == ("Ulbrin Spire", "https://miniworld.example/wiki/Ulbrin_Spire")
    assert "tower" in blocks["Ulbrin Spire height"][0][2]
    assert len(blocks["Ulbrin Spire height"]) == 2  # top_k respected
    assert blocks["copper element"][0][0] == "Copper"
    assert r.text.count("--- end of search result ---") == 2
    r2 = tools.run_tool(local_tb, "search", {"queries": ["zzqx"]}, {})
    assert "No results for 'zzqx'." in r2.text and not r2.error


def test_local_search_lenient_string_and_json_arguments(local_tb):
    a = tools.run_tool(local_tb, "search", {"queries": "Tesmar"}, {})
    b = tools.run_tool(local_tb, "search", '{"queries": ["Tesmar"]}', {})
    assert not a.error and a.text == b.text and "[Tesmar](https://miniworld.example/wiki/Tesmar)" in a.text


def test_index_reused_then_rebuilt_when_pages_change(world, tmp_path):
    tb = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"))
    idx = tb.index_path
    stamp = os.stat(idx).st_mtime_ns
    tools.close_toolbox(tb)
    tb = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"))
    assert os.stat(idx).st_mtime_ns == stamp  # reused, not rebuilt
    with open(os.path.join(world, "pages.jsonl"), "a") as f:
        f.write(json.dumps({"url": "https://miniworld.example/wiki/Quorn", "title": "Quorn", "text": "Quorn."}) + "\n")
    later = time.time() + 5
    os.utime(os.path.join(world, "pages.jsonl"), (later, later))
    tb2 = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"))
    r = tools.run_tool(tb2, "search", {"queries": ["Quorn"]}, {})
    assert "[Quorn](https://miniworld.example/wiki/Quorn)" in r.text
    other = str(tmp_path / "elsewhere.sqlite")
    tb3 = tools.make_toolbox("local", world, index_path=other, image_dir=str(tmp_path / "img"))
    assert tb3.index_path == other and os.path.exists(other)
    for t in (tb, tb2, tb3):
        tools.close_toolbox(t)


def test_local_image_search_ids_dedup_and_resized_attachments(local_tb):
    reg = {}
    r1 = tools.run_tool(local_tb, "image_search", {"query": "Ulbrin Spire"}, reg)
    assert not r1.error
    assert r1.text.splitlines()[0] == "--- image search result for [Ulbrin Spire] ---"
    assert r1.text.splitlines()[-1] == "--- end of image search result ---"
    att = r1.images[0]
    assert r1.text.splitlines()[1:5] == ["IMG_001: title: Ulbrin Spire photo",  # the release agent's lines
                                         "  url: https://miniworld.example/img/im_00002.png",
                                         f"  local_path: img/{os.path.basename(att['local_path'])}",
                                         "  page_url: https://miniworld.example/wiki/Ulbrin_Spire"]
    assert att["img_id"] == "IMG_001" and att["title"] == "Ulbrin Spire photo"
    assert att["source_path"] == os.path.join(local_tb.world_dir, "images", "im_00002.png")  # the original
    assert reg[att["url"]]["source_path"] == att["source_path"]
    with Image.open(att["local_path"]) as im:  # 800x600 RGBA source -> JPEG <= 160k px, aspect kept
        assert im.format == "JPEG" and im.mode == "RGB"
        assert im.width * im.height <= 160_000 and abs(im.width / im.height - 800 / 600) < 0.01
    r2 = tools.run_tool(local_tb, "image_search", {"query": "Vorlak"}, reg)  # flag + map: new ids
    ids2 = {im["title"]: im["img_id"] for im in r2.images}
    assert set(ids2.values()) == {"IMG_002", "IMG_003"}
    r3 = tools.run_tool(local_tb, "image_search", {"query": "flag Vorlak spire tesmar", "top_k": 5}, reg)
    ids3 = {im["title"]: im["img_id"] for im in r3.images}
    assert ids3["flag of Vorlak"] == ids2["flag of Vorlak"] and ids3["Ulbrin Spire photo"] == "IMG_001"
    assert ids3["Tesmar skyline"] == "IMG_004"  # the only unseen image gets the next id
    assert len(reg) == 4 and {v["img_id"] for v in reg.values()} == {"IMG_001", "IMG_002", "IMG_003", "IMG_004"}
    for im in r3.images:
        assert f"{im['img_id']}: title: {im['title']}" in r3.text
        with Image.open(im["local_path"]) as pic:
            assert pic.format == "JPEG" and pic.width * pic.height <= 160_000
    one = tools.run_tool(local_tb, "image_search", {"query": "Vorlak", "top_k": 1}, {})
    assert len(one.images) == 1 and one.images[0]["img_id"] == "IMG_001"  # fresh registry -> fresh ids


def test_local_image_search_no_results_advises_short_query(local_tb):
    r = tools.run_tool(local_tb, "image_search", {"query": "qqqq zzzz wwww"}, {})
    assert r.images == [] and "<= 3 words" in r.text


def test_local_browse_extractive_and_unknown_url(local_tb):
    r = tools.run_tool(local_tb, "browse", {"url": "https://miniworld.example/wiki/Tesmar/",
                                             "query": "When was the Ulbrin Spire built?"}, {})
    assert not r.error
    head, *lines = r.text.splitlines()
    assert "Extractive summary" in head and "no language model" in head
    assert any("built in 1821" in ln for ln in lines)
    assert not any("winter festival" in ln for ln in lines)  # irrelevant sentence left out
    none = tools.run_tool(local_tb, "browse", {"url": "https://en.wikipedia.org/wiki/Paris", "query": "copper"}, {})
    assert "no information relevant" in none.text
    bad = tools.run_tool(local_tb, "browse", {"url": "https://miniworld.example/wiki/Nowhere", "query": "x"}, {})
    assert bad.error and bad.text.startswith("[Tool Error]:") and "could not be fetched" in bad.text


def test_local_cache_optional(world, tmp_path):
    tb = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"))
    assert tb.cache_path is None  # off by default for local
    tbc = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"), cache_path=str(tmp_path / "c.sqlite"))
    a = tools.run_tool(tbc, "search", {"queries": ["Vorlak"]}, {})
    b = tools.run_tool(tbc, "search", {"queries": ["Vorlak"]}, {})
    assert a.text == b.text == tools.run_tool(tb, "search", {"queries": ["Vorlak"]}, {}).text
    import sqlite3
    assert sqlite3.connect(tbc.cache_path).execute("SELECT COUNT(*) FROM cache").fetchone()[0] == 1
    tools.close_toolbox(tb)
    tools.close_toolbox(tbc)


@pytest.mark.parametrize("name,args,expect", [
    ("fetch", {"url": "x"}, "unknown tool 'fetch'"),
    ("search", ["q"], "must be a JSON object"),
    ("search", "{not json", "unparsable"),
    ("search", {}, "missing required argument(s) 'queries'"),
    ("search", {"queries": [1, 2]}, "'queries' must be a non-empty list"),
    ("search", {"queries": []}, "'queries' must be a non-empty list"),
    ("search", {"queries": {"a": 1}}, "'queries' must be a non-empty list"),
    ("search", {"queries": ["a"] * 9}, "at most 8 queries"),
    ("search", {"queries": ["a"], "top_k": "5"}, "'top_k' must be an integer"),
    ("search", {"queries": ["a"], "top_k": True}, "'top_k' must be an integer"),
    ("search", {"queries": ["a"], "top_k": 0}, "'top_k' must be an integer from 1 to 10"),
    ("search", {"queries": ["a"], "top_k": 11}, "from 1 to 10"),
    ("search", {"query": 3}, "'queries' must be a non-empty list"),
    ("search", {"queries": ["a"], "goal": "b"}, "unexpected argument(s) 'goal'"),
    ("image_search", {"queries": ["a"]}, "unexpected argument(s) 'queries'"),
    ("image_search", {"query": 3}, "'query' must be a non-empty string"),
    ("image_search", {"query": "  "}, "'query' must be a non-empty string"),
    ("browse", {"query": "x"}, "missing required argument(s) 'url'"),
    ("browse", {"url": 5, "query": "x"}, "'url' must be a non-empty string"),
    ("browse", {"url": [], "query": "x"}, "'url' must be a non-empty string or a list of them"),
    ("browse", {"url": ["https://a.example", 3], "query": "x"}, "'url' must be a non-empty string or a list"),
    ("browse", {"url": "https://a.example", "goal": 7}, "'query' must be a non-empty string"),
    ("image_search", {"query": "a", "goal": "b"}, "unexpected argument(s) 'goal'"),
    ("browse", None, "must be a JSON object"),
])
def test_bad_arguments_become_tool_errors(local_tb, name, args, expect):
    reg = {}
    r = tools.run_tool(local_tb, name, args, reg)
    assert r.error and r.text.startswith("[Tool Error]: ") and expect in r.text, r.text
    assert r.images == [] and reg == {}


def test_release_argument_aliases_and_defaults(local_tb, monkeypatch):
    """As the release's tools: search takes `query` or `queries` (queries wins), browse takes `goal` or `query`
    (a non-empty goal wins; neither -> a summary of the page) and a list of urls (first 5, answers joined)."""
    want = tools.run_tool(local_tb, "search", {"queries": ["Vorlak capital"]}, {}).text
    assert tools.run_tool(local_tb, "search", {"query": ["Vorlak capital"]}, {}).text == want
    assert tools.run_tool(local_tb, "search", {"query": "Vorlak capital"}, {}).text == want
    assert tools.run_tool(local_tb, "search", {"queries": ["Vorlak capital"], "query": "copper"}, {}).text == want
    seen = []
    monkeypatch.setattr(tools, "_extractive_answer", lambda url, title, text, query: seen.append(query) or f"{url}|{query}")
    u = "https://miniworld.example/wiki/Tesmar"
    r = tools.run_tool(local_tb, "browse", {"url": u, "goal": "when built?"}, {})
    assert not r.error and r.text == f"{u}|when built?"
    assert tools.run_tool(local_tb, "browse", {"url": u, "goal": "g", "query": "q"}, {}).text == f"{u}|g"
    assert tools.run_tool(local_tb, "browse", {"url": u, "goal": " ", "query": "q"}, {}).text == f"{u}|q"
    assert tools.run_tool(local_tb, "browse", {"url": u}, {}).text == f"{u}|{tools.browse_default_query}"
    urls = [f"https://miniworld.example/wiki/{t}" for t in ("Vorlak", "Nowhere", "Tesmar", "Ulbrin_Spire",
                                                            "Vorlak", "Tesmar")]
    r = tools.run_tool(local_tb, "browse", {"url": urls, "query": "tower"}, {})
    parts = r.text.split("\n\n=======\n\n")
    assert not r.error and len(parts) == tools.max_browse_urls == 5  # the sixth url is not visited
    assert parts[0] == f"{urls[0]}|tower" and parts[1].startswith("[Tool Error]:") and "could not be fetched" in parts[1]
    assert parts[2:] == [f"{x}|tower" for x in urls[2:5]]
    dead = tools.run_tool(local_tb, "browse", {"url": [urls[1], urls[1]], "query": "x"}, {})
    assert dead.error and dead.text.count("[Tool Error]:") == 2  # an error only when every url failed


def test_top_k_default_is_the_release_code_and_configurable(srv, web):
    """search / image_search without top_k: the release's code default (10) reaches the search API; a toolbox
    built with top_k_default=5 (the schema text's value, the CPU miniature's) sends 5; image_search still shows
    at most max_images."""
    assert tools.top_k_default == 10
    for tb, num in ((web(use_cache=False), 10), (web(use_cache=False, top_k_default=5), 5)):
        srv.log.clear()
        r = tools.run_tool(tb, "search", {"query": "Ulbrin Spire"}, {})
        assert not r.error and [json.loads(e["body"]) for e in srv.log] == [{"q": "Ulbrin Spire", "num": num}]
        assert len(search_blocks(r.text)["Ulbrin Spire"]) == num
    srv.images.update({f"{i}.png": _png((20 + i, 20)) for i in range(10)})
    r = tools.run_tool(web(use_cache=False), "image_search", {"query": "spire"}, {})
    assert len(r.images) == tools.max_images == 5
    with pytest.raises(ValueError, match="top_k_default"):
        web(top_k_default=11)


def test_local_path_line_independent_of_out_dir_and_optional(world, tmp_path):
    tb = tools.make_toolbox("local", world, image_dir=str(tmp_path / "a" / "img"))
    r = tools.run_tool(tb, "image_search", {"query": "Ulbrin Spire", "top_k": 1}, {})
    assert f"  local_path: img/{os.path.basename(r.images[0]['local_path'])}" in r.text.splitlines()
    elsewhere = tools.make_toolbox("local", world, image_dir=str(tmp_path / "b" / "c" / "img"))
    assert tools.run_tool(elsewhere, "image_search", {"query": "Ulbrin Spire", "top_k": 1}, {}).text == r.text
    tools.close_toolbox(elsewhere)
    off = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"), list_local_path=False)
    r2 = tools.run_tool(off, "image_search", {"query": "Ulbrin Spire", "top_k": 1}, {})
    assert "local_path" not in r2.text and r2.text.splitlines()[1:3] == r.text.splitlines()[1:3]
    # a hit without a page url gets no page_url line (the release's listing)
    w2 = tmp_path / "w2"
    os.makedirs(w2 / "images")
    Image.new("RGB", (8, 8)).save(w2 / "images" / "a.png")
    (w2 / "pages.jsonl").write_text(json.dumps({"url": "https://x.example/p", "title": "p", "text": "t"}) + "\n")
    (w2 / "images.jsonl").write_text(json.dumps({"path": "images/a.png", "title": "lone badge",
                                                 "url": "https://x.example/a.png"}) + "\n")
    bare = tools.make_toolbox("local", str(w2), image_dir=str(tmp_path / "img"))
    r3 = tools.run_tool(bare, "image_search", {"query": "badge"}, {})
    assert r3.text.splitlines()[1:-1] == ["IMG_001: title: lone badge", "  url: https://x.example/a.png",
                                          f"  local_path: img/{os.path.basename(r3.images[0]['local_path'])}"]
    for t in (tb, off, bare):
        tools.close_toolbox(t)


def test_schemas_are_the_release_arguments():
    got = {s["function"]["name"]: (set(s["function"]["parameters"]["properties"]),
                                   s["function"]["parameters"]["required"]) for s in tools.TOOL_SCHEMAS}
    assert got == {"search": ({"queries", "top_k"}, ["queries"]), "image_search": ({"query", "top_k"}, ["query"]),
                   "browse": ({"url", "query"}, ["url", "query"])}
    json.dumps(tools.TOOL_SCHEMAS)


# ----------------------------------------------------------------------------------------------
# a loopback server speaking Serper (/search, /images), a Jina-style reader (/reader/<url>), plain pages
# (/page...), images (/img/...) and OpenAI chat completions (/v1/chat/completions)


class Loopback:
    def __init__(self):
        self.log, self.lock, self.delay = [], threading.Lock(), 0.0
        self.plan = {}  # path prefix -> actions consumed one per request first: 429/500/sleep/garbage/big
        self.pages = {"https://news.example/article": "Breaking: the Ulbrin Spire was repainted gold in 2024. "
                      "Weather was mild."}
        self.images = {}
        self.chat_answer = lambda prompt: "ANSWER based on %d chars" % len(prompt)
        self.srv = loopback.serve(_Handler, app=self)
        self.url = self.srv.url

    def count(self, prefix):
        return sum(1 for e in self.log if e["path"].startswith(prefix))

    def handle(self, h, method):
        t0 = time.monotonic()
        body = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        entry = {"path": h.path, "method": method, "headers": dict(h.headers), "body": body, "t0": t0, "t1": None}
        with self.lock:  # logged on arrival, so counts are exact as soon as the client has its answer
            action = next((acts.pop(0) for p, acts in self.plan.items() if h.path.startswith(p) and acts), None)
            self.log.append(entry)
        try:
            time.sleep(self.delay)
            if action and action.isdigit():
                return _send(h, int(action), b'{"message": "try later"}')
            if action == "sleep":
                time.sleep(1.5)
            if action == "garbage":
                return _send(h, 200, b"<html>this is not json", "application/json")
            if action == "big":
                return _send(h, 200, b"x" * 3_000_000, "text/plain")
            return self.route(h, method, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)
        finally:
            entry["t1"] = time.monotonic()

    def route(self, h, method, body):
        p = h.path
        if p in ("/search", "/images") and method == "POST":
            if h.headers.get("X-API-KEY") != KEY:
                return _send(h, 403, b'{"message": "Unauthorized."}')
            req = json.loads(body)
            q, num = req["q"], req["num"]
            if p == "/search":
                organic = [{"title": f"Result {i} about <b>{q}</b>", "link": f"https://site{i}.example/{i}",
                            "snippet": f"snippet {i} on <b>{q}</b>", "position": i + 1} for i in range(num)]
                return _send(h, 200, json.dumps({"searchParameters": req, "organic": organic}).encode())
            imgs = [{"title": f"{q} photo {i}", "imageUrl": f"{self.url}/img/{i}.png", "link": f"https://p{i}.example/",
                     "imageWidth": 640, "imageHeight": 480} for i in range(num)]
            return _send(h, 200, json.dumps({"searchParameters": req, "images": imgs}).encode())
        if p.startswith("/img/") and p[5:] in self.images:
            return _send(h, 200, self.images[p[5:]], "image/png")
        if p.startswith("/reader/"):
            text = self.pages.get(p[len("/reader/"):])
            return _send(h, 200, text.encode(), "text/plain") if text else _send(h, 422, b"cannot read")
        if p == "/page":
            html = b"<html><head><style>x{}</style></head><body><h1>Spire</h1><p>The spire is 140 m tall.</p></body>"
            return _send(h, 200, html, "text/html; charset=utf-8")
        if p == "/redirect":
            h.send_response(302)
            h.send_header("Location", "/page")
            h.send_header("Content-Length", "0")
            return h.end_headers()
        if p == "/v1/chat/completions" and method == "POST":
            req = json.loads(body)
            answer = self.chat_answer(req["messages"][-1]["content"])
            out = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": req["model"],
                   "choices": [{"index": 0, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": answer}}],
                   "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
            return _send(h, 200, json.dumps(out).encode())
        return _send(h, 404, b"not found")

    def close(self):
        loopback.close(self.srv)


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.server.app.handle(self, "GET")

    def do_POST(self):
        self.server.app.handle(self, "POST")

    def log_message(self, *a):
        pass


_send = loopback.send


def _png(size, mode="RGB"):
    import io
    buf = io.BytesIO()
    Image.new(mode, size, (10, 120, 10) if mode == "RGB" else (10, 120, 10, 90)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def srv(monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    s = Loopback()
    yield s
    s.close()


@pytest.fixture
def web(srv, tmp_path):
    made = []

    def make(**kw):
        cfg = dict(serper_base_url=srv.url, reader_base_url=srv.url + "/reader", image_dir=str(tmp_path / "img"),
                   cache_path=str(tmp_path / "cache.sqlite"), timeout=2.0, retries=2, backoff_base=0.01,
                   allow_private=True, max_workers=8)
        cfg.update(kw)
        made.append(tools.make_toolbox("web", **cfg))
        return made[-1]
    yield make
    for tb in made:
        tools.close_toolbox(tb)


# ----------------------------------------------------------------------------------------------
# web backend


def test_web_search_request_shape_and_format(srv, web):
    tb = web(use_cache=False)
    r = tools.run_tool(tb, "search", {"queries": ["Ulbrin Spire", "Vorlak flag"], "top_k": 3}, {})
    assert not r.error
    reqs = [e for e in srv.log if e["path"] == "/search"]
    assert [json.loads(e["body"]) for e in reqs] == [{"q": "Ulbrin Spire", "num": 3}, {"q": "Vorlak flag", "num": 3}]
    assert all(e["headers"]["X-API-KEY"] == KEY for e in reqs)
    blocks = search_blocks(r.text)
    assert blocks["Ulbrin Spire"][0] == ("Result 0 about Ulbrin Spire", "https://site0.example/0",
                                         "snippet 0 on Ulbrin Spire")  # <b> marks removed
    assert len(blocks["Vorlak flag"]) == 3 and KEY not in r.text


def test_web_missing_key_is_a_tool_error(srv, web, monkeypatch):
    monkeypatch.delenv("SERPER_API_KEY")
    r = tools.run_tool(web(use_cache=False), "search", {"queries": ["x"]}, {})
    assert r.error and "SERPER_API_KEY" in r.text and srv.count("/search") == 0


def test_web_retry_after_429_then_success(srv, web):
    srv.plan["/search"] = ["429", "503"]
    r = tools.run_tool(web(use_cache=False), "search", {"queries": ["retry me"]}, {})
    assert not r.error and "Result 0 about retry me" in r.text
    assert srv.count("/search") == 3


def test_web_500_exhausts_bounded_retries(srv, web):
    srv.plan["/search"] = ["500"] * 10
    r = tools.run_tool(web(use_cache=False, retries=2), "search", {"queries": ["down"]}, {})
    assert r.error and r.text.startswith("[Tool Error]: ") and "HTTP 500" in r.text and "3 attempts" in r.text
    assert srv.count("/search") == 3


def test_web_timeout_is_retried_then_reported(srv, web):
    srv.plan["/search"] = ["sleep"] * 5
    r = tools.run_tool(web(use_cache=False, timeout=0.3, retries=1), "search", {"queries": ["slow"]}, {})
    assert r.error and "timed out" in r.text
    assert len(srv.plan["/search"]) == 3  # both attempts reached the server (each consumed one "sleep")


def test_web_garbage_json_and_oversize_response(srv, web):
    srv.plan["/search"] = ["garbage"]
    r = tools.run_tool(web(use_cache=False), "search", {"queries": ["x"]}, {})
    assert r.error and "invalid JSON" in r.text
    srv.plan["/reader"] = ["big"]
    r = tools.run_tool(web(use_cache=False, max_response_bytes=100_000), "browse",
                       {"url": "https://news.example/article", "query": "paint"}, {})
    assert r.error and "larger than 100000 bytes" in r.text


def test_web_cache_second_call_makes_no_request_and_replays(srv, web, tmp_path):
    tb = web()
    calls = [("search", {"queries": ["cached query"]}), ("image_search", {"query": "spire"}),
             ("browse", {"url": "https://news.example/article", "query": "What color is the spire?"})]
    srv.images.update({f"{i}.png": _png((900, 700)) for i in range(5)})
    first = [tools.run_tool(tb, n, a, {}) for n, a in calls]
    n_req = len(srv.log)
    assert not any(r.error for r in first) and n_req == 1 + 1 + 5 + 1
    again = [tools.run_tool(tb, n, a, {}) for n, a in calls]
    assert len(srv.log) == n_req and [r.text for r in again] == [r.text for r in first]
    # normalization: case/whitespace of a query don't matter; other arguments do
    tools.run_tool(tb, "search", {"queries": ["  Cached   QUERY "]}, {})
    assert len(srv.log) == n_req
    tools.run_tool(tb, "search", {"queries": ["cached query"], "top_k": 3}, {})
    assert len(srv.log) == n_req + 1
    # replay with the server gone: a fresh toolbox over the same cache answers everything
    srv.close()
    tb2 = web()
    replay = [tools.run_tool(tb2, n, a, {}) for n, a in calls]
    assert [r.text for r in replay] == [r.text for r in first]
    for f in os.listdir(tmp_path):  # the key is in no cache file (db, wal)
        if f.startswith("cache.sqlite"):
            assert KEY.encode() not in open(tmp_path / f, "rb").read()


def test_web_image_search_download_resize_skip_dead_and_dedup(srv, web, tmp_path):
    srv.images.update({"0.png": _png((1000, 700), "RGBA"), "2.png": _png((40, 30)), "3.png": b"not an image"})
    tb = web(use_cache=False)
    reg = {}
    r = tools.run_tool(tb, "image_search", {"query": "Ulbrin Spire", "top_k": 3}, reg)
    assert not r.error and json.loads(srv.log[0]["body"]) == {"q": "Ulbrin Spire", "num": 10}
    # 1.png is a 404 and 3.png is not an image: skipped; the first two good ones are listed
    assert [im["url"] for im in r.images] == [f"{srv.url}/img/0.png", f"{srv.url}/img/2.png"]
    assert [im["img_id"] for im in r.images] == ["IMG_001", "IMG_002"]
    assert "IMG_001: title: Ulbrin Spire photo 0" in r.text and "  page_url: https://p0.example/" in r.text
    with Image.open(r.images[0]["local_path"]) as im:
        assert im.format == "JPEG" and im.width * im.height <= 160_000
        assert abs(im.width / im.height - 1000 / 700) < 0.01
    assert open(r.images[0]["source_path"], "rb").read() == srv.images["0.png"]  # the original, byte for byte
    srv.images["1.png"] = _png((50, 50))
    r2 = tools.run_tool(tb, "image_search", {"query": "Ulbrin Spire", "top_k": 3}, reg)
    assert [im["img_id"] for im in r2.images] == ["IMG_001", "IMG_003", "IMG_002"]  # old ids kept, 1.png new
    bmp = io.BytesIO()
    Image.new("RGB", (900, 300), (1, 2, 3)).save(bmp, "BMP")  # no data-URL type: kept as a full-size PNG
    srv.images.clear()
    srv.images["0.png"] = bmp.getvalue()
    r3 = tools.run_tool(web(use_cache=False, image_dir=str(tmp_path / "bmp")), "image_search",
                        {"query": "bmp", "top_k": 1}, {})
    src = r3.images[0]["source_path"]
    assert src.endswith(".png") and src.startswith(str(tmp_path / "bmp"))
    with Image.open(src) as im:
        assert im.format == "PNG" and im.size == (900, 300) and im.getpixel((5, 5)) == (1, 2, 3)


def test_web_browse_reader_and_summarizer(srv, web, monkeypatch):
    monkeypatch.setenv("JINA_API_KEY", "jina-secret-77")
    srv.chat_answer = lambda prompt: "The spire was repainted gold in 2024." if "repainted gold" in prompt else "?"
    srv.plan["/v1/chat"] = ["500"]  # the summarizer is retried too
    tb = web(use_cache=False, summarizer_base_url=srv.url + "/v1", summarizer_model="Qwen3-VL-30B-A3B-Instruct")
    r = tools.run_tool(tb, "browse", {"url": "https://news.example/article", "query": "What color is it?"}, {})
    assert not r.error and r.text == "The spire was repainted gold in 2024."
    rd = [e for e in srv.log if e["path"].startswith("/reader/")]
    assert rd[0]["path"] == "/reader/https://news.example/article"
    assert rd[0]["headers"]["Authorization"] == "Bearer jina-secret-77"
    chats = [json.loads(e["body"]) for e in srv.log if e["path"] == "/v1/chat/completions"]
    assert len(chats) == 2 and chats[-1]["model"] == "Qwen3-VL-30B-A3B-Instruct" and chats[-1]["temperature"] == 0
    prompt = chats[-1]["messages"][0]["content"]
    assert "Weather was mild." in prompt and prompt.rstrip().endswith("What color is it?")
    missing = tools.run_tool(tb, "browse", {"url": "https://news.example/none", "query": "x"}, {})
    assert missing.error and "422" in missing.text and "jina-secret-77" not in missing.text


def test_local_browse_with_summarizer(world, tmp_path, srv):
    srv.chat_answer = lambda prompt: "1821" if "built in 1821" in prompt else "no"
    tb = tools.make_toolbox("local", world, image_dir=str(tmp_path / "img"), summarizer_base_url=srv.url + "/v1")
    r = tools.run_tool(tb, "browse", {"url": "https://miniworld.example/wiki/Tesmar", "query": "built when?"}, {})
    assert r.text == "1821" and srv.count("/v1/chat/completions") == 1
    tools.close_toolbox(tb)


def test_long_page_split_into_parts(srv, web, monkeypatch):
    monkeypatch.setattr(tools, "part_overlap_tokens", 5)
    text = " ".join(f"w{i:04d}" for i in range(200))  # 1,199 chars
    srv.pages["https://long.example/"] = text
    seen = []
    srv.chat_answer = lambda p: seen.append(p.split("--- begin of source content ---\n")[1].split("\n--- end")[0]) or \
        f"part answer {len(seen)}"
    tb = web(use_cache=False, summarizer_base_url=srv.url + "/v1", page_token_budget=50, chars_per_token=4)
    r = tools.run_tool(tb, "browse", {"url": "https://long.example/", "query": "q"}, {})
    n = 1199 // 200 + 1
    assert not r.error and srv.count("/v1/chat/completions") == n == len(seen)
    assert r.text.startswith("Since the content is too long")
    for i in range(1, n + 1):
        assert f"--- begin of result part {i} ---\n" in r.text and f"--- end of result part {i} ---" in r.text
    assert all(len(s) <= 200 + 20 for s in seen)  # each part within the budget (+ overlap)
    assert seen[0].startswith("w0000") and seen[-1].endswith("w0199")  # parts cover the page


def test_direct_fetch_follows_checked_redirects(srv, web):
    tb = web(use_cache=False, reader_base_url="")
    r = tools.run_tool(tb, "browse", {"url": srv.url + "/redirect", "query": "How tall is the spire?"}, {})
    assert not r.error and "The spire is 140 m tall." in r.text and "<p>" not in r.text and "x{}" not in r.text
    assert [e["path"] for e in srv.log] == ["/redirect", "/page"]


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://ftp.example.com/x", "gopher://h/", "http://127.0.0.1:{port}/page",
    "http://localhost:{port}/page", "http://10.1.2.3/", "http://169.254.169.254/latest/meta-data",
    "http://[::1]:{port}/page", "http://192.168.0.1/", "http://0.0.0.0:{port}/page", "https:///nohost"])
@pytest.mark.parametrize("reader", [True, False])
def test_ssrf_refusals(srv, web, url, reader):
    tb = web(use_cache=False, allow_private=False, reader_base_url=srv.url + "/reader" if reader else "", retries=0)
    url = url.format(port=srv.url.rsplit(":", 1)[1])
    r = tools.run_tool(tb, "browse", {"url": url, "query": "secrets"}, {})
    assert r.error and r.text.startswith("[Tool Error]: ") and "refused" in r.text, r.text
    assert srv.log == []  # nothing was fetched, not even through the reader


def test_image_download_refuses_private_targets(srv, web):
    srv.images["0.png"] = _png((20, 20))
    r = tools.run_tool(web(use_cache=False, allow_private=False), "image_search", {"query": "x"}, {})
    assert r.images == [] and "<= 3 words" in r.text  # loopback image urls refused -> nothing to show
    assert [e["path"] for e in srv.log] == ["/images"]


def test_run_tools_overlaps_calls_and_keeps_order(srv, web):
    srv.delay = 0.3
    tb = web(use_cache=False, max_workers=8)
    calls = [("search", {"queries": [f"q{i}"]}, {}) for i in range(8)] + [("search", {"queries": 5}, {})]
    results = tools.run_tools(tb, calls)
    assert [list(search_blocks(r.text)) for r in results[:8]] == [[f"q{i}"] for i in range(8)]
    assert results[8].error and not any(r.error for r in results[:8])

    def max_in_flight(log):  # requests whose server-side sleep windows [t0, t0 + delay] overlap: a sequential
        # client cannot start the next call before the previous answer, which comes after the whole delay (t1, stamped
        # after the answer is written, races the client's next request on a loaded machine, so it is not used)
        return max(sum(1 for o in log if o["t0"] < e["t0"] + srv.delay and e["t0"] < o["t0"] + srv.delay)
                   for e in log)
    assert max_in_flight(srv.log) >= 4  # server saw many requests in flight at once
    srv.log.clear()
    for n, a, reg in calls[:3]:  # control: one by one never overlaps
        tools.run_tool(tb, n, a, reg)
    assert max_in_flight(srv.log) == 1


def test_run_tools_turns_a_crash_into_an_observation(local_tb, monkeypatch):
    monkeypatch.setattr(tools, "_local_search", lambda *a: 1 / 0)
    (r,) = tools.run_tools(local_tb, [("search", {"queries": ["x"]}, {})])
    assert r.error and "ZeroDivisionError" in r.text


# ----------------------------------------------------------------------------------------------
# the mini world: every bench item's oracle hops are retrievable with the local backend

HAVE_PREPARE = os.path.exists(os.path.join(ROOT, "data", "miniworld", "prepare.py"))


@pytest.mark.skipif(not HAVE_PREPARE, reason="data/miniworld/prepare.py not written yet")
def test_miniworld_solution_hops_are_retrievable(tmp_path, make_mini_world):
    """Over the full corpus (world pages + ~10k Wikipedia distractors): each oracle search hop surfaces its
    target page (solution.hop_targets; the page the query names or the entity it asks for) in the top 5,
    each image_search hop returns the reference image, each browse hop answers with a solution fact."""
    out = str(make_mini_world(seed=1337, n_sft=20, n_rl=10, tokenizer=False))
    tb = tools.make_toolbox("local", out, image_dir=str(tmp_path / "img"))
    images = {im["image_id"]: im for im in map(json.loads, open(os.path.join(out, "images.jsonl")))}
    items = [json.loads(line) for line in open(os.path.join(out, "bench.jsonl"))]
    counts = {"search": 0, "image_search": 0, "browse": 0}
    for it in items:
        sol = it["solution"]
        assert len(sol["hops"]) == len(sol["hop_targets"])
        refs = {images[i]["url"] for i in sol["ref_image_ids"]}
        for hop, target in zip(sol["hops"], sol["hop_targets"]):
            reg = {}
            r = tools.run_tool(tb, hop["name"], hop["arguments"], reg)
            assert not r.error, (it["id"], hop, r.text)
            counts[hop["name"]] += 1
            if hop["name"] == "search":
                (hits,) = search_blocks(r.text).values()
                assert target in [u for _, u, _ in hits[:5]], (it["id"], hop, hits)
            elif hop["name"] == "image_search":
                got = [im["url"] for im in r.images]
                assert images[target]["url"] in got and images[target]["url"] in refs, (it["id"], hop, got)
                assert all(f"{im['img_id']}: title: {im['title']}" in r.text for im in r.images)
            else:
                assert any(f in r.text for f in sol["facts"] if f not in hop["arguments"]["query"]), (it["id"], r.text)
    assert all(counts.values()), counts
    tools.close_toolbox(tb)
