# Reference images reach the image generator at full resolution: tools.py keeps the original (source_path)
# beside the policy's resized JPEG copy (local_path), and every sender -- RL scoring (reward.score), eval
# (eval_knowgen.py) and ground-truth generation (make_data.py) -- sends the original, checked byte for byte
# (size and sha256) on the requests a loopback server speaking the release's POST /generate receives.
import base64
import hashlib
import io
import json
import os
import threading
from http.server import BaseHTTPRequestHandler

from PIL import Image

import dataio
import eval_knowgen as ek
import loopback
import make_data as md
import rollout
import reward
import tools


def rows(path):  # the rows of a JSONL file, through the one reader
    return [r for _, r in dataio.read_jsonl(str(path))]

KEY = "test-serper-key-5151"


def _png(size, color=(10, 120, 10)):
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _answer_text(n):
    return '<think>ok</think><answer>' + json.dumps({"gen_prompt": "A flag like the first reference image.",
                                                     "reference_images": [{"img_id": f"IMG_{n:03d}"}]}) + "</answer>"


class Server(BaseHTTPRequestHandler):
    """POST /generate (records image_urls), Serper's POST /images, image bytes at GET /img/<name>, and an agent
    at POST /v1/chat/completions: one image_search, then an answer naming IMG_001."""

    def log_message(self, *a):
        pass

    def do_GET(self):
        b = self.server.images.get(self.path.rsplit("/", 1)[-1])
        loopback.send(self, 200 if b else 404, b or b"missing", "image/png")

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/generate":
            with self.server.lock:
                self.server.gen.append(body)
            return loopback.send(self, 200, {"success": True, "image": base64.b64encode(_png((16, 16))).decode()})
        if self.path == "/images":
            return loopback.send(self, 200, {"images": [{"title": "big flag", "imageUrl": f"{self.server.url}/img/{n}",
                                                         "link": "https://p.example/"} for n in self.server.images]})
        assert self.path == "/v1/chat/completions", self.path
        if sum(m["role"] == "assistant" for m in body["messages"]) == 0:
            text = '<think>find it</think><tool_call>{"name": "image_search", "arguments": {"query": "flag"}}</tool_call>'
        else:
            text = _answer_text(1)
        loopback.send(self, 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}]})


def serve(images=None):
    return loopback.serve(Server, lock=threading.Lock(), gen=[], images=dict(images or {}))


def sent_bytes(data_url):
    assert data_url.startswith("data:image/"), data_url[:40]
    return base64.b64decode(data_url.split(",", 1)[1])


def same_file(b, path):
    return len(b) == os.path.getsize(path) and hashlib.sha256(b).hexdigest() == \
        hashlib.sha256(open(path, "rb").read()).hexdigest()


def check_sent(gen_requests, refs):
    """Every request carried each reference's original file (size + sha256), never the policy's copy."""
    assert gen_requests
    for body in gen_requests:
        urls = body["image_urls"]
        assert len(urls) == len(refs)
        for u, r in zip(urls, refs):
            b = sent_bytes(u)
            assert same_file(b, r["source_path"]), "the generator did not get the original file"
            assert not same_file(b, r["local_path"])
            with Image.open(io.BytesIO(b)) as im, Image.open(r["source_path"]) as orig:
                assert im.size == orig.size


def test_reward_sends_the_downloaded_original_not_the_resized_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("SERPER_API_KEY", KEY)
    big = _png((1000, 700))  # 700k pixels: the policy's copy is resized to <= 160k
    srv = serve({"big.png": big})
    tb = tools.make_toolbox("web", serper_base_url=srv.url, image_dir=str(tmp_path / "img"), use_cache=False,
                            allow_private=True, retries=0)
    try:
        reg = {}
        res = tools.run_tool(tb, "image_search", {"query": "flag"}, reg)
    finally:
        tools.close_toolbox(tb)
    im = res.images[0]
    assert open(im["source_path"], "rb").read() == big  # the download is kept byte for byte
    with Image.open(im["local_path"]) as copy:
        assert copy.width * copy.height <= 160_000
    answer, why = rollout.parse_answer(json.dumps({"gen_prompt": "A flag like the first reference image.",
                                                   "reference_images": [{"img_id": "IMG_001"}]}), reg)
    assert why is None and answer["reference_images"][0]["source_path"] == im["source_path"]
    gt = str(tmp_path / "gt.png")
    Image.new("RGB", (32, 32)).save(gt)
    traj = {"id": "it1", "sample": 0, "end_reason": "answer", "answer": answer}
    out = reward.score([traj], [{"id": "it1", "prompt": "a flag", "gt_image": gt}], gen_backend="server",
                       generator_urls=[srv.url], gen_retries=0, judge_backend="offline", out_dir=str(tmp_path / "g"))
    assert out[0]["gen_image"] and os.path.exists(out[0]["gen_image"])  # generated (the judge then lacks a solution)
    check_sent(srv.gen, answer["reference_images"])
    # a record written before source_path existed still sends what it has (the copy), never nothing
    old = {k: v for k, v in answer["reference_images"][0].items() if k != "source_path"}
    assert reward.reference_file(old) == old["local_path"]
    assert reward.reference_file({"url": "https://x.example/a.png", "local_path": "/gone.jpg"}) == \
        "https://x.example/a.png"


def test_eval_agent_mode_sends_the_original(tiny_world, tmp_path):
    world = str(tiny_world)
    srv = serve()
    cfg = ek.default_config(items_path=os.path.join(world, "bench.jsonl"), world_dir=world, out_dir=str(tmp_path / "ev"),
                            mode="agent", agent_engine="openai", agent_model="served", agent_base_url=srv.url + "/v1",
                            gen_backend="server", generator_urls=[srv.url], judge_backend="offline", limit=1,
                            report_n=1, num_workers=1)
    ek.run(cfg)
    trajs = [json.loads(x) for x in open(tmp_path / "ev" / "trajectories.jsonl")]
    refs = trajs[0]["answer"]["reference_images"]
    assert len(trajs) == 1 and refs and refs[0]["source_path"].startswith(world)  # the world's own file
    check_sent(srv.gen, refs)


def test_make_data_ground_truth_sends_the_original(tiny_world, tmp_path):
    world = str(tiny_world)
    srv = serve()
    out = tmp_path / "md"
    md.main(out_dir=str(out), world_dir=world, stages="prompts,traj,gt", generator_urls=[srv.url], workers=1,
            date="2025-06-01", tokenizer_dir="")
    trajs = {r["id"]: r for r in rows(out / "trajectories.jsonl")}
    gts = rows(out / "gt.jsonl")
    assert gts and len(srv.gen) == len(gts)
    refs_of = {trajs[g["id"]]["answer"]["gen_prompt"]: trajs[g["id"]]["answer"]["reference_images"] for g in gts}
    for body in srv.gen:  # each gt request: the originals of that answer's references, in order
        assert refs_of[body["prompt"]][0]["source_path"].startswith(world)
        check_sent([body], refs_of[body["prompt"]])
