"""Trust boundaries (issue 13): the agent's urls never reach a private address, API credentials never leave
their origin, every read ends at its deadline and its byte cap. All traffic stays on 127.0.0.0/8: public
names are simulated with a resolver we control, and a connect guard maps the fake public addresses onto
loopback servers and refuses (records, never connects) anything else."""
import http.server
import ipaddress
import json
import socket
import threading
import time

import pytest

import loopback
import net
import tools

_real_getaddrinfo = socket.getaddrinfo
_real_connect = socket.create_connection


class Server:
    """A loopback HTTP server; handler(h) answers; every request is counted."""

    def __init__(self, handler=None):
        self.hits, self.handler = [], handler or (lambda h: _send(h, 200, b"canary secret page"))
        outer = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.hits.append({"path": self.path, "headers": dict(self.headers), "body": self.rfile.read(n)})
                try:
                    outer.handler(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            do_GET = do_POST = _any

        self.httpd = loopback.serve(H)
        self.port, self.url = self.httpd.server_address[1], self.httpd.url

    def close(self):
        loopback.close(self.httpd)


def _send(h, status, body=b"", headers=()):
    h.send_response(status)
    for k, v in headers:
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)


@pytest.fixture
def canary():
    s = Server()
    yield s
    s.close()


class World:
    """Fake DNS + connect guard. names: host -> [ip, ...] (a list per lookup to simulate rebinding);
    routes: fake public ip (never contacted) -> loopback port. A connect to any other non-loopback address is recorded and
    refused, so no test can send a packet off the machine."""

    def __init__(self, monkeypatch):
        self.names, self.routes, self.lookups, self.connects = {}, {}, [], []
        monkeypatch.setattr(socket, "getaddrinfo", self.getaddrinfo)
        monkeypatch.setattr(socket, "create_connection", self.create_connection)

    def getaddrinfo(self, host, port, *a, **kw):
        if host in self.names:
            self.lookups.append(host)
            answers = self.names[host]
            ip = answers.pop(0) if len(answers) > 1 else answers[0]
            fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
            return [(fam, socket.SOCK_STREAM, 6, "", (ip, port) if fam == socket.AF_INET else (ip, port, 0, 0))]
        try:
            ipaddress.ip_address(str(host).strip("[]"))
        except ValueError:
            raise socket.gaierror(f"no such host {host} in the test world")
        return _real_getaddrinfo(host, port, *a, **kw)

    def create_connection(self, address, timeout=None, *a, **kw):
        ip, port = address[0], address[1]
        if ip in self.names:  # a name (operator endpoints are resolved at connect time)
            ip = self.getaddrinfo(ip, port)[0][4][0]
        self.connects.append((ip, port))
        if ip in self.routes:
            return _real_connect(("127.0.0.1", self.routes[ip]), timeout)
        if not ipaddress.ip_address(ip).is_loopback:
            raise ConnectionRefusedError(f"test guard: {ip} is not reachable from tests")
        return _real_connect(address, timeout, *a, **kw)


@pytest.fixture
def world(monkeypatch):
    return World(monkeypatch)


def _tricks(port):
    return [
        f"http://127.0.0.1:{port}\\@8.8.8.8/x",        # urlsplit sees 8.8.8.8, the connection 127.0.0.1
        f"http://127.0.0.1:{port}\\\\@8.8.8.8/x",
        f"http://8.8.8.8\\@127.0.0.1:{port}/x",
        f"http://127.0.0.1:{port}\\x/",
        f"http://[::ffff:127.0.0.1]:{port}/",           # IPv6-mapped IPv4
        f"http://[::ffff:7f00:1]:{port}/",
        f"http://[::1]:{port}/",
        f"http://0177.0.0.1:{port}/",                   # octal
        f"http://0x7f.0.0.1:{port}/",                   # hex
        f"http://0x7f000001:{port}/",
        f"http://127.1:{port}/",                        # short form
        f"http://2130706433:{port}/",                   # decimal
        f"http://017700000001:{port}/",
        f"http://8.8.8.8@127.0.0.1:{port}/",            # userinfo
        f"http://user:pw@127.0.0.1:{port}/",
        f"HTTP://127.0.0.1:{port}/",                    # upper-case scheme
        f"HtTp://localhost:{port}/",
        f"http://127.0.0.1.:{port}/",
        f"http://canary.example:{port}/",              # a public-looking name that resolves to loopback
        "http://169.254.169.254/latest/meta-data",
        "http://[fd00::1]/", "http://100.64.0.1/", "http://0.0.0.0/",
        f"http://127.0.0.1:{port}/%0d%0aHost:x", f"http://127.0.0.1 :{port}/",
    ]


def test_every_url_trick_is_refused_and_the_canary_gets_nothing(canary, world, tmp_path):
    world.names["canary.example"] = ["127.0.0.1"]
    world.names["localhost"] = ["127.0.0.1"]
    tb = tools.make_toolbox("web", reader_base_url="", image_dir=str(tmp_path), use_cache=False, retries=0,
                            timeout=2.0, allow_private=False)
    for url in _tricks(canary.port):
        with pytest.raises(net.URLRefused):
            net.fetch("GET", url, redirects="check", timeout=2)
        r = tools.run_tool(tb, "browse", {"url": url, "query": "secrets"}, {})
        assert r.error and r.text.startswith("[Tool Error]: ") and "secret page" not in r.text, (url, r.text)
    assert canary.hits == [] and world.connects == []  # refused before any connection was opened


def test_the_canary_is_reachable_when_private_is_allowed(canary, world):
    # the same request with allow_private=True does arrive: the zero counts above are not vacuous
    r = net.fetch("GET", canary.url + "/x", redirects="check", allow_private=True, timeout=5)
    assert r.status == 200 and r.body == b"canary secret page" and len(canary.hits) == 1


def test_dns_rebinding_connects_to_the_checked_address(canary, world):
    # first answer public, every later answer loopback: the connection must go to the checked public address
    world.names["rebind.example"] = ["93.184.215.7", "127.0.0.1"]
    with pytest.raises(net.HTTPFailure, match="connection failed"):
        net.fetch("GET", f"http://rebind.example:{canary.port}/", redirects="check", timeout=2)
    assert world.lookups == ["rebind.example"]  # resolved once
    assert world.connects == [("93.184.215.7", canary.port)] and canary.hits == []


@pytest.fixture
def redirector(world):
    """A 'public' server (redir.example -> 93.184.215.10, routed to loopback) answering 302 to ?to=."""
    import urllib.parse

    def handler(h):
        to = urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query).get("to", [""])[0]
        if to:
            _send(h, int(urllib.parse.parse_qs(urllib.parse.urlsplit(h.path).query).get("code", ["302"])[0]),
                  headers=[("Location", to)])
        else:
            _send(h, 200, b"public page", [("Content-Type", "text/plain")])
    s = Server(handler)
    world.names["redir.example"] = ["93.184.215.10"]
    world.routes["93.184.215.10"] = s.port
    yield s
    s.close()


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/", "http://169.254.169.254/latest/meta-data",
                                    "http://[::ffff:127.0.0.1]:{port}/", "http://2130706433:{port}/",
                                    "http://127.0.0.1:{port}\\@8.8.8.8/", "file:///etc/passwd"])
@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_redirects_to_private_addresses_are_refused(canary, world, redirector, tmp_path, target, code):
    import urllib.parse
    to = urllib.parse.quote(target.format(port=canary.port), safe="")
    url = f"http://redir.example:80/r?code={code}&to={to}"
    with pytest.raises(net.URLRefused):
        net.fetch("GET", url, redirects="check", timeout=2)
    tb = tools.make_toolbox("web", reader_base_url="", image_dir=str(tmp_path), use_cache=False, retries=0,
                            timeout=2.0)
    r = tools.run_tool(tb, "browse", {"url": url, "query": "secrets"}, {})
    assert r.error and "refused" in r.text, r.text
    assert canary.hits == [] and len(redirector.hits) == 2
    assert all(ip == "93.184.215.10" for ip, _ in world.connects)  # 169.254.169.254 never contacted


def test_public_redirect_is_followed(world, redirector):
    world.names["other.example"] = ["93.184.215.10"]
    r = net.fetch("GET", "http://redir.example/r?to=http%3A%2F%2Fother.example%2Fpage", redirects="check", timeout=5)
    assert r.status == 200 and r.body == b"public page" and r.url == "http://other.example/page"


def test_api_credentials_never_follow_a_redirect(canary, world, redirector, monkeypatch, tmp_path):
    # the search API, the reader and the summarizer answer a redirect to another origin (a "public" name
    # routed to the canary): no request may reach the canary, with or without the key
    world.names["evil.example"] = ["93.184.215.66"]
    world.routes["93.184.215.66"] = canary.port
    monkeypatch.setenv("SERPER_API_KEY", "serper-secret-1234")
    monkeypatch.setenv("JINA_API_KEY", "jina-secret-1234")
    monkeypatch.setenv("SUMMARIZER_API_KEY", "summ-secret-1234")
    to = "to=http%3A%2F%2Fevil.example%2Fsteal&code=307"
    base = f"http://redir.example/api?{to}&x="
    tb = tools.make_toolbox("web", serper_base_url=base, reader_base_url=base, image_dir=str(tmp_path),
                            use_cache=False, retries=0, timeout=2.0, summarizer_base_url=base)
    for name, args in [("search", {"queries": ["q"]}), ("image_search", {"query": "q"}),
                       ("browse", {"url": "http://redir.example/page", "query": "q"})]:
        r = tools.run_tool(tb, name, args, {})
        assert r.error and "redirect" in r.text and "secret-1234" not in r.text, r.text
    assert canary.hits == [] and len(redirector.hits) == 3
    assert redirector.hits[0]["headers"]["X-API-KEY"] == "serper-secret-1234"  # the key went to its origin only


def test_page_redirect_to_another_origin_drops_credentials(world, redirector):
    world.names["other.example"] = ["93.184.215.10"]
    net.fetch("GET", "http://redir.example/r?to=http%3A%2F%2Fother.example%2Fpage", redirects="check",
              headers={"Authorization": "Bearer tok-9999", "X-API-KEY": "k-9999"}, timeout=5)
    first, second = redirector.hits
    assert first["headers"]["Authorization"] == "Bearer tok-9999"
    assert "Authorization" not in second["headers"] and "X-API-KEY" not in second["headers"]


def _trickle(h):
    h.send_response(200)
    h.send_header("Content-Length", "100000")
    h.end_headers()
    for _ in range(600):
        h.wfile.write(b"x")
        h.wfile.flush()
        time.sleep(0.1)


def test_trickling_body_ends_at_the_deadline(world):
    before = set(threading.enumerate())  # other tests' pools may still be winding down in this process
    s = Server(_trickle)
    try:
        t0 = time.monotonic()
        with pytest.raises(net.HTTPFailure, match="deadline"):
            net.fetch("GET", s.url + "/slow", timeout=1.5, allow_private=True, redirects="check")
        assert time.monotonic() - t0 < 10  # the server would trickle for 60 s
        t0 = time.monotonic()
        with pytest.raises(net.HTTPFailure, match="deadline"):
            net.request("GET", s.url + "/slow", timeout=1.0, retries=1, backoff_base=0.01)
        assert time.monotonic() - t0 < 10
        alive = [t for t in threading.enumerate() if not t.daemon and t not in before]
        assert alive == []  # nothing left that would keep the process alive
    finally:
        s.close()


def _huge(h):
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(50_000_000))
    h.end_headers()
    h.wfile.write(b'{"choices": [{"message": {"content": "')
    chunk = b"a" * 65536
    for _ in range(50_000_000 // 65536):
        h.wfile.write(chunk)


def test_oversized_summarizer_answer_is_capped(world, tmp_path):
    s = Server(_huge)
    pages = Server(lambda h: _send(h, 200, b"The spire is 140 m tall.", [("Content-Type", "text/plain")]))
    try:
        tb = tools.make_toolbox("web", reader_base_url="", summarizer_base_url=s.url + "/v1", use_cache=False,
                                image_dir=str(tmp_path), retries=0, timeout=5.0, allow_private=True,
                                max_response_bytes=200_000)
        t0 = time.monotonic()
        r = tools.run_tool(tb, "browse", {"url": pages.url + "/p", "query": "height"}, {})
        assert r.error and "larger than 200000 bytes" in r.text, r.text
        assert time.monotonic() - t0 < 30 and len(s.hits) == 1
    finally:
        s.close()
        pages.close()


def test_image_download_trick_urls_from_the_search_api_are_refused(canary, world, tmp_path, monkeypatch):
    # the image search API (trusted, loopback) returns image urls that point at the canary in disguise
    port = canary.port
    urls = [u for u in _tricks(port) if "169.254" not in u][:12]

    def api(h):
        _send(h, 200, json.dumps({"images": [{"title": f"t{i}", "imageUrl": u, "link": "https://p.example/"}
                                             for i, u in enumerate(urls)]}).encode())
    s = Server(api)
    monkeypatch.setenv("SERPER_API_KEY", "serper-secret-1234")
    try:
        tb = tools.make_toolbox("web", serper_base_url=s.url, image_dir=str(tmp_path), use_cache=False, retries=0,
                                timeout=2.0)
        r = tools.run_tool(tb, "image_search", {"query": "spire"}, {})
        assert r.images == [] and canary.hits == []
    finally:
        s.close()
