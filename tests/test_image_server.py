# image_server.py: two real server processes (uvicorn on free loopback ports) with the tiny random
# QwenImage pipelines from config; the release's /generate + /health contract, validation, concurrency,
# and reward.py's client fanning a batch out over both servers. 503/504 in-process (fault injection).
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
    edit = _image(requests.post(servers[0] + "/generate", json=_body([reward.data_url(ref_png)] * 2), timeout=120))
    assert t2i.size == edit.size == (64, 64) and t2i.format == "PNG"
    assert t2i.tobytes() != edit.tobytes()  # the references reach the (random) edit model
    again = _image(requests.post(servers[0] + "/generate", json=_body([]), timeout=120))
    assert again.tobytes() == t2i.tobytes()  # seed 0 -> deterministic
    assert requests.get(servers[0] + "/health", timeout=10).json()["served"] >= 3


def test_concurrent_requests(servers, ref_png):
    url = reward.data_url(ref_png)
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
           _body([reward.data_url(ref_png)] * 6),          # more than max_images
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
    assert client.post("/generate", json=_body([reward.data_url(ref_png)])).status_code == 200
    client = TestClient(image_server.make_app(pipes, dict(cfg, generate_timeout=0.001)))
    r = client.post("/generate", json=_body([], num_inference_steps=20))
    assert r.status_code == 504 and r.json()["success"] is False
