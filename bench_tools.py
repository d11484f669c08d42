"""
bench_tools.py: speed of tools.py (the lead merges bench_tools() into bench.py).

    python bench_tools.py

1. local search latency (p50 / p99 over the mini world's oracle queries + entity titles, one call at a time)
   over data/miniworld if it exists, else over a world built into a temp dir by data/miniworld/prepare.py;
2. a batch of 32 web search calls against a loopback Serper-style server with 200 ms injected latency,
   through run_tools (thread pool) vs one by one -- measured side by side in one run, reported as a ratio.
"""
import importlib.util
import json
import os
import statistics
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import tools

ROOT = os.path.dirname(os.path.abspath(__file__))
N_LOCAL_QUERIES = 300  # local search calls timed
BATCH = 32             # tool calls in the concurrent batch
LATENCY = 0.2          # seconds injected by the loopback server per request


def _world_dir(tmp):
    d = os.path.join(ROOT, "data", "miniworld")
    if os.path.exists(os.path.join(d, "pages.jsonl")):
        return d
    spec = importlib.util.spec_from_file_location("mw_prepare", os.path.join(d, "prepare.py"))
    prep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prep)
    prep.build_world(tmp, 1337, tokenizer=False)
    return tmp


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default listen backlog (5) would stall 32 simultaneous connects


class _Serper(BaseHTTPRequestHandler):
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(LATENCY)
        body = json.dumps({"organic": [{"title": f"r{i} {req['q']}", "link": f"https://s{i}.example/",
                                        "snippet": "..."} for i in range(req["num"])]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def bench_tools():
    with tempfile.TemporaryDirectory() as tmp:
        # 1. local search latency
        world = _world_dir(os.path.join(tmp, "world"))
        t0 = time.perf_counter()
        tb = tools.make_toolbox("local", world, image_dir=os.path.join(tmp, "img"),
                                index_path=os.path.join(tmp, "index.sqlite"))
        build_s = time.perf_counter() - t0
        queries = []
        for split in ("bench", "rl", "sft"):
            path = os.path.join(world, f"{split}.jsonl")
            for it in map(json.loads, open(path)) if os.path.exists(path) else []:
                queries += [q for h in it["solution"]["hops"] if h["name"] == "search"
                            for q in h["arguments"]["queries"]]
        titles = [json.loads(line)["title"] for line in open(os.path.join(world, "pages.jsonl"))]
        queries = (queries + [f"{t} history" for t in titles])[:N_LOCAL_QUERIES]
        lat = []
        for q in queries:
            t0 = time.perf_counter()
            r = tools.run_tool(tb, "search", {"queries": [q], "top_k": 5}, {})
            lat.append(time.perf_counter() - t0)
            assert not r.error, r.text
        lat.sort()
        p50, p99 = statistics.median(lat), lat[min(len(lat) - 1, int(0.99 * len(lat)))]
        print(f"local search: {len(lat)} queries over {len(titles)} pages (index build {build_s:.1f}s): "
              f"p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms")
        tools.close_toolbox(tb)

        # 2. batch of 32 web calls, concurrent vs serial, against a 200 ms loopback server
        srv = _Server(("127.0.0.1", 0), _Serper)
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        os.environ.setdefault(tools.SERPER_KEY_ENV, "bench-key")
        tb = tools.make_toolbox("web", serper_base_url=f"http://127.0.0.1:{srv.server_address[1]}", use_cache=False,
                                image_dir=os.path.join(tmp, "img"), allow_private=True, max_workers=BATCH)
        calls = [("search", {"queries": [f"query {i}"]}, {}) for i in range(BATCH)]
        t0 = time.perf_counter()
        serial = [tools.run_tool(tb, n, a, r) for n, a, r in calls]
        t_serial = time.perf_counter() - t0
        t0 = time.perf_counter()
        batch = tools.run_tools(tb, calls)
        t_batch = time.perf_counter() - t0
        assert [r.text for r in serial] == [r.text for r in batch] and not any(r.error for r in batch)
        print(f"web batch of {BATCH} calls at {LATENCY * 1e3:.0f} ms each: one by one {t_serial:.2f}s, "
              f"run_tools {t_batch:.2f}s ({tb.max_workers} workers) -> {t_serial / t_batch:.1f}x")
        tools.close_toolbox(tb)
        srv.shutdown()
        srv.server_close()
    return {"local_p50_ms": p50 * 1e3, "local_p99_ms": p99 * 1e3, "batch_speedup": t_serial / t_batch}


if __name__ == "__main__":
    bench_tools()
