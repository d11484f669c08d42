"""Loopback HTTP servers for the tests (imported by test files; conftest.py closes them after each test).

serve(handler, **attrs) starts a threaded http.server on 127.0.0.1 at a free port in a daemon thread and
returns it with .url ("http://127.0.0.1:PORT"); attrs are set on the server object before it starts, so a
handler reads its test's state as self.server.NAME. Every server started while a test runs (in its body or a
function-scoped fixture) is shut down when that test ends; one started by a module-/session-scoped fixture
lives until that fixture closes it (close(srv)). Nothing listens beyond loopback.
"""
import json
import threading
from http.server import ThreadingHTTPServer

_started, _lock = [], threading.Lock()


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True     # a handler stuck in a slow reply never blocks shutdown
    request_queue_size = 64   # the default listen backlog (5) can stall a burst of concurrent connects


def serve(handler, poll_interval=0.05, **attrs):
    srv = LoopbackServer(("127.0.0.1", 0), handler)
    for k, v in attrs.items():
        setattr(srv, k, v)
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}"
    srv.closed = False
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True).start()
    with _lock:
        _started.append(srv)
    return srv


def close(srv):
    """Shut down and release the port (idempotent)."""
    if not srv.closed:
        srv.closed = True
        srv.shutdown()
        srv.server_close()


def started():
    """How many servers were started so far (conftest closes those started during a test)."""
    with _lock:
        return len(_started)


def close_since(n):
    with _lock:
        todo, _started[n:] = _started[n:], []
    for srv in todo:
        close(srv)


def send(h, status, data, ctype="application/json"):
    """Reply on a BaseHTTPRequestHandler: bytes as they are, anything else as JSON."""
    if not isinstance(data, bytes):
        data = json.dumps(data).encode()
    h.send_response(status)
    h.send_header("Content-Type", ctype)
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)
