"""
bench_reward.py: scoring throughput of reward.score() for one GRPO batch (8 prompts x 6 samples = 48
trajectories) with injected judge and generator latency: a loopback OpenAI-compatible judge
(/v1/chat/completions) and two loopback generator servers speaking image_server.py's POST /generate contract,
each sleeping a fixed time per request. Serial (one request at a time) vs parallel (score()'s defaults), ratio
printed from the same run.

    python bench_reward.py
"""
import base64
import io
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

import reward

batch = 48                # 8 prompts x group size 6 (paper)
judge_latency = 0.10      # s per judge request (GPT-4.1 is ~2-5 s; scaled down to keep the bench short)
gen_latency = 0.25        # s per generation (Qwen-Image-Edit, 40 steps on one GPU: ~20-40 s; scaled down)
gen_servers = 2           # loopback generator servers (one per "GPU")


def _png(color):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_GET(self):
        self._send({"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/generate":
            with self.server.gpu:  # one pipeline per GPU: generations on one server are serial
                time.sleep(gen_latency)
            return self._send({"success": True, "image": _png((len(body["prompt"]) % 255, 90, 90))})
        time.sleep(judge_latency)
        is_k = body["messages"][0]["content"] == reward.KSCORE_SYSTEM
        content = json.dumps({"rationale": "bench", "faithfulness": 1, "visual_correctness": 0.5,
                              "text_accuracy": 0.5, "aesthetics": 1, "text_accuracy_na": True} if is_k
                             else {"rationale": "bench", "score": 3})
        self._send({"id": "b", "object": "chat.completion", "created": 0, "model": body["model"],
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": content}}]})

    def _send(self, obj):
        b = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


def _serve():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads, srv.gpu = True, threading.Lock()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def bench_reward():
    tmp = tempfile.mkdtemp(prefix="bench_reward_")
    ref, gt = os.path.join(tmp, "ref.png"), os.path.join(tmp, "gt.png")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(ref)
    Image.new("RGB", (64, 64), (30, 200, 30)).save(gt)
    items = [{"id": f"it{i}", "prompt": f"prompt {i}", "gt_image": gt} for i in range(batch // 6)]
    trajs = [{"id": f"it{i // 6}", "sample": i % 6, "end_reason": "answer",
              "answer": {"gen_prompt": f"generation prompt {i}", "reference_images": [
                  {"img_id": "IMG_001", "url": "", "local_path": ref, "title": "t", "page_url": "", "note": ""}]}}
             for i in range(batch)]
    servers = [_serve() for _ in range(1 + gen_servers)]
    judge_url, gen_urls = servers[0][1] + "/v1", [u for _, u in servers[1:]]
    common = dict(gen_backend="server", judge_backend="openai", judge_base_url=judge_url, judge_cache=None,
                  out_dir=os.path.join(tmp, "gen"), judge_backoff=0.01, gen_backoff=0.01)
    runs = {"serial": dict(score_workers=1, judge_concurrency=1, gen_per_server=1, gen_server_urls=gen_urls[:1]),
            "parallel": dict(gen_server_urls=gen_urls)}  # defaults: 64 workers, 2 per server, 32 judge requests
    rate = {}
    for name, cfg in runs.items():
        t0 = time.time()
        res = reward.score(trajs, items, **common, **cfg)
        dt = time.time() - t0
        assert all(r["error"] is None for r in res), [r["error"] for r in res if r["error"]][:3]
        rate[name] = batch / dt
        print(f"bench_reward {name:8s}: {batch} trajectories in {dt:6.2f} s = {rate[name]:6.1f} traj/s")
    print(f"bench_reward parallel/serial = {rate['parallel'] / rate['serial']:.1f}x "
          f"(judge {judge_latency} s, generator {gen_latency} s per request, {gen_servers} generator servers)")
    for srv, _ in servers:
        srv.shutdown()
        srv.server_close()
    return rate


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    bench_reward()
