# make_data's defaults follow the paper where it speaks: ground truth by Nano Banana Pro (reward.py's "gemini"
# backend, checked against a loopback server speaking generateContent), candidates judged by Seed1.8, each row
# labelled with what made it; the CPU miniature's effective stage choices (offline generator and judge) and its
# rows stay as they were.
import base64
import hashlib
import io
import json
import os
import runpy
import threading
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

from PIL import Image

import dataio
import loopback
import make_data as md


def rows(path):  # the rows of a JSONL file, through the one reader
    return [r for _, r in dataio.read_jsonl(str(path))]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg_of(name, **kw):
    """make_data's effective config under config/<name> (what configurator would set), plus overrides."""
    over = {k: v for k, v in runpy.run_path(os.path.join(ROOT, "config", name)).items()
            if k in md.config()}
    return SimpleNamespace(**{**md.config(), **over, **kw})


def test_paper_defaults_and_labels():
    assert md.judge_model == "seed-1.8" and md.gen_backend == "auto"
    c = SimpleNamespace(**md.config())
    assert md.gt_backend(c) == "gemini"  # no servers, no mini world: the paper's Nano Banana Pro
    assert md.gt_backend(SimpleNamespace(**{**vars(c), "generator_urls": ["http://g:1"]})) == "server"
    assert md.gt_backend(SimpleNamespace(**{**vars(c), "world_dir": "w"})) == "offline"
    paper = cfg_of("make_data_gen_searcher_8b.py")
    assert md.gt_backend(paper) == "gemini" and paper.judge_model == "seed-1.8"
    import reward
    assert md.generator_label(reward.make_config(gen_backend="gemini")) == "gemini:gemini-3-pro-image-preview"
    assert md.generator_label(reward.make_config(gen_backend="offline")) == "offline"
    # the CPU miniature: offline generator, offline judge, as before (its config sets neither)
    cpu = cfg_of("make_data_runcpu.py")
    assert md.gt_backend(cpu) == "offline" and not cpu.judge_base_url and not cpu.generator_urls


class Gemini(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.log.append((self.path, self.headers.get("x-goog-api-key"), body))
        buf = io.BytesIO()
        Image.new("RGB", (24, 24), (200, 10, 10)).save(buf, "PNG")
        loopback.send(self, 200, {"candidates": [{"content": {"parts": [{"inlineData": {
            "mimeType": "image/png", "data": base64.b64encode(buf.getvalue()).decode()}}]}}]})


def test_ground_truth_by_nano_banana_pro_and_miniature_rows_unchanged(tiny_world, tmp_path, monkeypatch):
    world, out = str(tiny_world), tmp_path / "md"
    base = dict(out_dir=str(out), world_dir=world, workers=1, date="2025-06-01", tokenizer_dir="")
    md.main(**base, stages="prompts,traj,gt,judge")  # the mini world: offline generator and judge
    gts, judged = rows(out / "gt.jsonl"), rows(out / "judge.jsonl")
    assert gts and {g["generator"] for g in gts} == {"offline"} and {j["judge"] for j in judged} == {"offline"}
    # the same trajectories, no mini world and no image servers: the default is Nano Banana Pro
    os.remove(out / "gt.jsonl")
    srv = loopback.serve(Gemini, lock=threading.Lock(), log=[])
    monkeypatch.setenv("GEMINI_API_KEY", "gem-test-key")
    md.main(**{**base, "world_dir": ""}, stages="gt",
            reward_kwargs={"gen_gemini_base_url": srv.url + "/v1beta", "gen_retries": 0})
    gts2 = rows(out / "gt.jsonl")
    assert len(gts2) == len(gts) == len(srv.log)
    assert {g["generator"] for g in gts2} == {"gemini:gemini-3-pro-image-preview"}
    trajs = {r["answer"]["gen_prompt"]: r for r in rows(out / "trajectories.jsonl") if r.get("answer")}
    for path, key, body in srv.log:
        assert path == "/v1beta/models/gemini-3-pro-image-preview:generateContent" and key == "gem-test-key"
        text, *imgs = body["contents"][0]["parts"]
        refs = trajs[text["text"]]["answer"]["reference_images"]
        sent = [hashlib.sha256(base64.b64decode(p["inlineData"]["data"])).hexdigest() for p in imgs]
        assert sent == [hashlib.sha256(open(r["source_path"], "rb").read()).hexdigest() for r in refs]
