# image_server.py: two real server processes (uvicorn on free loopback ports) with the tiny random
# QwenImage pipelines from config; the release's /generate + /health contract, validation, concurrency,
# and the server client (generate_server, under reward.score) fanning a batch out over both servers.
# 503/504 in-process (fault injection).
import base64
import concurrent.futures as cf
import io
import os
import socket
import subprocess
import sys
import time

import pytest
import requests
from PIL import Image

import image_server
import loopback
import net
import reward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("srv")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    procs, urls = [], []
    for k in range(2):
        port = _free_port()
        log = open(logs / f"server{k}.log", "w")
        procs.append(subprocess.Popen([sys.executable, "image_server.py", "--tiny=True", "--device=cpu",
                                       f"--port={port}"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        deadline = time.time() + 240
        for p, u in zip(procs, urls):
            while True:
                assert p.poll() is None, open(logs / f"server{urls.index(u)}.log").read()[-3000:]
                try:
                    if requests.get(u + "/health", timeout=2).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.time() < deadline, "image server did not come up"
                time.sleep(0.5)
        yield urls
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture(scope="module")
def ref_png(tmp_path_factory):
    p = str(tmp_path_factory.mktemp("refs") / "ref.png")
    im = Image.new("RGB", (64, 48), (200, 20, 20))
    im.paste((20, 20, 200), (0, 0, 32, 48))
    im.save(p)
    return p


def _body(image_urls, **kw):
    # the release's request, fewer steps to stay fast on CPU
    return {"image_urls": image_urls, "prompt": "The flag of Dutel, two vertical bands", "seed": 0,
            "true_cfg_scale": 4.0, "negative_prompt": " ", "num_inference_steps": 4, "guidance_scale": 1.0,
            "num_images_per_prompt": 1, **kw}


def _image(resp):
    assert resp.status_code == 200, resp.text[:300]
    j = resp.json()
    assert j["success"] is True
    return Image.open(io.BytesIO(base64.b64decode(j["image"])))


def test_health_text_only_and_edit(servers, ref_png):
    h = requests.get(servers[0] + "/health", timeout=10).json()
    assert h["status"] == "ok" and h["tiny"] is True and h["device"] == "cpu"
    t2i = _image(requests.post(servers[0] + "/generate", json=_body([]), timeout=120))
    edit = _image(requests.post(servers[0] + "/generate", json=_body([net.data_url(ref_png)] * 2), timeout=120))
    assert t2i.size == edit.size == (64, 64) and t2i.format == "PNG"
    assert t2i.tobytes() != edit.tobytes()  # the references reach the (random) edit model
    again = _image(requests.post(servers[0] + "/generate", json=_body([]), timeout=120))
    assert again.tobytes() == t2i.tobytes()  # seed 0 -> deterministic
    assert requests.get(servers[0] + "/health", timeout=10).json()["served"] >= 3


def test_concurrent_requests(servers, ref_png):
    url = net.data_url(ref_png)
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(requests.post, servers[1] + "/generate", json=_body([url] if i % 2 else [], seed=i),
                          timeout=120) for i in range(4)]
        imgs = [_image(f.result()) for f in futs]
    assert len({im.tobytes() for im in imgs}) == 4


def test_bad_requests_rejected(servers, ref_png):
    png = open(ref_png, "rb").read()
    bad = [_body(["data:image/png;base64,!!!not-base64!!!"]),
           _body(["data:image/png;base64," + base64.b64encode(b"hello, not an image").decode()]),
           _body(["data:text/plain;base64," + base64.b64encode(png).decode()]),
           _body(["ftp://example.com/a.png"]),
           _body([net.data_url(ref_png)] * 6),          # more than max_images
           _body([], prompt=""), _body([], prompt="x" * 9000), _body([], num_inference_steps=0),
           _body([], num_images_per_prompt=2), _body([], seed="zero"), _body("not a list"), [1, 2]]
    for b in bad:
        r = requests.post(servers[0] + "/generate", json=b, timeout=30)
        assert r.status_code == 400 and r.json()["success"] is False, (str(b)[:100], r.status_code, r.text[:200])
    r = requests.post(servers[0] + "/generate", data=b"{not json", timeout=30)
    assert r.status_code == 400
    assert requests.get(servers[0] + "/health", timeout=10).json()["status"] == "ok"  # still alive


def test_client_fans_out_over_two_servers(servers, ref_png, tmp_path):
    served = [requests.get(u + "/health", timeout=10).json()["served"] for u in servers]
    gt = str(tmp_path / "gt.png")
    Image.new("RGB", (64, 64), (9, 9, 9)).save(gt)
    items = [{"id": "it", "prompt": "the flag of Dutel", "gt_image": gt,
              "solution": {"facts": ["Dutel"], "ref_image_ids": ["im_00001"], "required_text": None}}]
    answer = {"gen_prompt": "The flag of Dutel", "reference_images": [
        {"img_id": "IMG_001", "url": "https://miniworld.example/img/im_00001.png", "local_path": ref_png,
         "title": "Flag of Dutel", "page_url": "", "note": ""}]}
    trajs = [{"id": "it", "sample": i, "end_reason": "answer", "answer": answer} for i in range(6)]
    res = reward.score(trajs, items, gen_backend="server", generator_urls=servers, gen_per_server=2,
                       gen_steps=4, gen_backoff=0.01, out_dir=str(tmp_path / "gen"), judge_cache=None,
                       data_dir=str(tmp_path))
    assert all(r["error"] is None and r["invalid"] is None for r in res), res
    assert all(Image.open(r["gen_image"]).size == (64, 64) for r in res)
    after = [requests.get(u + "/health", timeout=10).json()["served"] for u in servers]
    assert all(a > s for a, s in zip(after, served)) and sum(after) - sum(served) == 6


def test_503_and_504_in_process(ref_png):
    from fastapi.testclient import TestClient
    pipes = image_server.build_tiny_pipelines("cpu")
    cfg = {k: getattr(image_server, k) for k in ("tiny_size", "edit_height", "edit_width", "t2i_height",
                                                 "t2i_width", "max_prompt_chars", "max_images", "max_image_bytes",
                                                 "max_image_pixels", "max_body_bytes", "max_steps",
                                                 "allow_http_images", "device", "edit_model")}
    cfg.update(tiny=True, device="cpu", generate_timeout=60.0)

    def broken(**kw):  # fault injection: what a CUDA OOM looks like to the server
        raise RuntimeError("CUDA out of memory")
    client = TestClient(image_server.make_app({"edit": pipes["edit"], "t2i": broken}, cfg))
    r = client.post("/generate", json=_body([]))
    assert r.status_code == 503 and "out of memory" in r.json()["error"]
    assert client.post("/generate", json=_body([net.data_url(ref_png)])).status_code == 200
    client = TestClient(image_server.make_app(pipes, dict(cfg, generate_timeout=0.001)))
    r = client.post("/generate", json=_body([], num_inference_steps=20))
    assert r.status_code == 504 and r.json()["success"] is False


# ----------------------------------------------------------------------------------------------
# trust boundary (issue 13): url policy for image_urls, fetch off the event loop, unknown fields, token


class _Counting:
    """A loopback HTTP server counting requests; `hang` seconds before answering (0 = answer at once)."""

    def __init__(self, body=b"", hang=0.0):
        import http.server
        outer, self.hits = self, []

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                outer.hits.append(self.path)
                time.sleep(hang)
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass
        self.httpd = loopback.serve(H)
        self.port = self.httpd.server_address[1]

    def close(self):
        loopback.close(self.httpd)


def _cfg(**kw):
    cfg = {k: getattr(image_server, k) for k in (
        "tiny_size", "edit_height", "edit_width", "t2i_height", "t2i_width", "max_prompt_chars", "max_images",
        "max_image_bytes", "max_image_pixels", "max_body_bytes", "max_steps", "allow_http_images", "device",
        "edit_model", "allow_private", "image_fetch_timeout")}
    cfg.update(tiny=True, device="cpu", generate_timeout=60.0, **kw)
    return cfg


class _Uvicorn:
    """The app on a real uvicorn server in this process (a free loopback port), stopped on close()."""

    def __init__(self, app):
        import threading
        import uvicorn
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def tiny_pipes():
    return image_server.build_tiny_pipelines("cpu")


def test_image_urls_follow_the_url_policy(ref_png):
    from fastapi.testclient import TestClient
    canary = _Counting(open(ref_png, "rb").read())
    try:
        p = canary.port
        client = TestClient(image_server.make_app({}, _cfg()))
        tricks = [f"http://127.0.0.1:{p}/a.png", f"http://localhost:{p}/a.png", f"http://[::1]:{p}/a.png",
                  f"http://127.0.0.1:{p}\\@8.8.8.8/a.png", f"http://[::ffff:127.0.0.1]:{p}/a.png",
                  f"http://0177.0.0.1:{p}/a.png", f"http://0x7f.0.0.1:{p}/a.png", f"http://127.1:{p}/a.png",
                  f"http://2130706433:{p}/a.png", f"http://x@127.0.0.1:{p}/a.png", f"HTTP://127.0.0.1:{p}/a.png"]
        for u in tricks:
            r = client.post("/generate", json=_body([u]))
            assert r.status_code == 400 and "refused" in r.json()["error"], (u, r.text)
        assert canary.hits == []
        # allowed on purpose: the image is fetched (and the count shows the canary is reachable)
        ok = image_server.parse_request(_body([f"http://127.0.0.1:{p}/a.png"]), _cfg(allow_private=True))
        assert ok["images"][0].size == (64, 48) and canary.hits == ["/a.png"]
    finally:
        canary.close()


def test_unknown_fields_are_named():
    from fastapi.testclient import TestClient
    client = TestClient(image_server.make_app({}, _cfg()))
    r = client.post("/generate", json=_body([], width=512, height=512))
    assert r.status_code == 400 and "'height'" in r.json()["error"] and "'width'" in r.json()["error"]


def test_hung_image_url_does_not_stall_health():
    hung = _Counting(b"", hang=6.0)
    srv = _Uvicorn(image_server.make_app({}, _cfg(allow_private=True, image_fetch_timeout=3.0)))
    try:
        with cf.ThreadPoolExecutor(1) as ex:
            fut = ex.submit(requests.post, srv.url + "/generate",
                            json=_body([f"http://127.0.0.1:{hung.port}/slow.png"]), timeout=30)
            while not hung.hits:  # the fetch is in progress
                time.sleep(0.05)
            t0 = time.monotonic()
            assert requests.get(srv.url + "/health", timeout=10).json()["status"] == "ok"
            health_s = time.monotonic() - t0
            r = fut.result()
        assert r.status_code == 400 and "deadline" in r.json()["error"], r.text
        assert health_s < 2.0  # answered while the image fetch (3 s deadline, 6 s hang) was still running
    finally:
        srv.close()
        hung.close()


def test_bearer_token_and_server_client(tiny_pipes, ref_png, tmp_path, monkeypatch):
    srv = _Uvicorn(image_server.make_app(tiny_pipes, _cfg(), token="tok-s3cret-42"))
    try:
        assert requests.post(srv.url + "/generate", json=_body([]), timeout=30).status_code == 401
        r = requests.post(srv.url + "/generate", json=_body([]), headers={"Authorization": "Bearer nope"}, timeout=30)
        assert r.status_code == 401
        c = {k: getattr(reward, k) for k in dir(reward) if k.startswith("gen_")}
        c.update(generator_urls=[srv.url], gen_steps=2, gen_text_only_steps=2, gen_retries=0, gen_backoff=0.01)
        monkeypatch.delenv("IMAGE_SERVER_TOKEN", raising=False)
        with pytest.raises(RuntimeError, match="401"):
            image_server.generate_server("a red flag", [ref_png], str(tmp_path / "a.png"), c)
        monkeypatch.setenv("IMAGE_SERVER_TOKEN", "tok-s3cret-42")
        out = image_server.generate_server("a red flag", [ref_png], str(tmp_path / "b.png"), c)
        assert Image.open(out).size == (64, 64)
    finally:
        srv.close()


def test_clients_import_without_torch():
    """The generator clients run in the scoring process: importing image_server (and reward, which imports it)
    loads no torch / diffusers; the pipelines import them inside build_pipelines / run."""
    code = "import sys, image_server, reward; bad = {'torch', 'diffusers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def test_non_loopback_bind_requires_a_token(monkeypatch):
    monkeypatch.delenv("IMAGE_SERVER_TOKEN", raising=False)
    for h in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert image_server.server_token(h, "IMAGE_SERVER_TOKEN") is None
    for h in ("0.0.0.0", "10.0.0.5", "::", "node7"):
        with pytest.raises(SystemExit, match="IMAGE_SERVER_TOKEN"):
            image_server.server_token(h, "IMAGE_SERVER_TOKEN")
    monkeypatch.setenv("IMAGE_SERVER_TOKEN", "t0ken")
    assert image_server.server_token("0.0.0.0", "IMAGE_SERVER_TOKEN") == "t0ken"
