"""
net.py -- the one HTTP helper: URL policy and bounded requests (used by tools.py, image_server.py, reward.py).

Trust boundary. Two kinds of url reach the network:
  * urls the MODEL chose or a search result supplied (browse, image downloads, the image server's image_urls).
    check_url() parses them the way the connection will be made, refuses anything ambiguous (backslash,
    userinfo, control characters, non-canonical numeric hosts such as 0177.0.0.1 / 0x7f.1 / 127.1 /
    2130706433), resolves the host ONCE and refuses loopback / private / link-local / reserved / multicast /
    unspecified addresses (IPv6-mapped IPv4 unwrapped). fetch() then connects to exactly the checked address
    (no second DNS lookup: DNS rebinding cannot swap it), keeping Host and TLS SNI/certificate name, and
    checks every redirect hop like the first (redirects="check").
  * operator-configured endpoints (search API, page reader, summarizer, judges, generator). They are trusted
    (they may well be on loopback) but follow no redirect (redirects="none"), so their credentials
    (X-API-KEY, Authorization) never travel to another origin.
Every read has ONE wall-clock deadline covering connect, headers and body (a watchdog shuts the socket at the
deadline, so a body trickling 1 byte/s ends on time; its thread is a daemon) and a byte cap (a larger body is
abandoned as soon as the cap is passed, never read whole). allow_private=True switches the address check off
on purpose (offline worlds, tests against loopback servers).
"""
import dataclasses
import http.client
import ipaddress
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse

RETRY_STATUS = {429, 500, 502, 503, 504}  # retried by request(); everything else is final
REDIRECT_STATUS = {301, 302, 303, 307, 308}
CREDENTIAL_HEADERS = {"authorization", "x-api-key", "proxy-authorization", "cookie"}
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class URLRefused(ValueError):
    """The url policy refused a url (message names the url and the reason)."""


class HTTPFailure(RuntimeError):
    """A request failed for good: connection error, deadline passed, byte cap passed, bad status."""

    def __init__(self, msg, status=None, retryable=False, retry_after=None):
        super().__init__(msg)
        self.status, self.retryable, self.retry_after = status, retryable, retry_after


@dataclasses.dataclass
class Target:
    scheme: str      # "http" | "https" (lower case)
    host: str        # host name as sent in Host / SNI (lower case, IPv6 without brackets)
    port: int
    ip: str          # the checked address the connection goes to
    path: str        # path + query, as sent on the request line

    @property
    def origin(self):
        return (self.scheme, self.host, self.port)


@dataclasses.dataclass
class Response:
    status: int
    headers: dict    # lower-case names
    body: bytes
    url: str         # the url finally fetched (after redirects)


def _unsafe(ip):
    ip = ipaddress.ip_address(ip.split("%")[0])
    ip = getattr(ip, "ipv4_mapped", None) or getattr(ip, "sixtofour", None) or ip
    return (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_reserved or ip.is_multicast
            or ip.is_unspecified or not ip.is_global)


def parse_url(url):
    """(scheme, host, port, path) of an http(s) url, or URLRefused. Strict on purpose: anything two parsers
    could read differently (backslash, '@', whitespace, control or non-ASCII characters in the authority,
    numeric hosts that are not canonical dotted quads) is refused instead of guessed."""
    if not isinstance(url, str) or not url:
        raise URLRefused(f"refused {url!r}: not a url")
    if any(c in url for c in "\\\t\r\n ") or any(ord(c) < 33 or ord(c) == 127 for c in url):
        raise URLRefused(f"refused {url!r}: backslash, whitespace or control character in the url")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise URLRefused(f"refused {url!r}: only http(s) urls can be fetched")
    netloc = parts.netloc
    if "@" in netloc:
        raise URLRefused(f"refused {url!r}: user info in the url")
    if not netloc.isascii():
        raise URLRefused(f"refused {url!r}: non-ASCII host")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise URLRefused(f"refused {url!r}: bad port") from None
    if not host:
        raise URLRefused(f"refused {url!r}: no host")
    port = port or (443 if scheme == "https" else 80)
    if netloc.startswith("["):
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise URLRefused(f"refused {url!r}: bad IPv6 literal") from None
    else:
        if not _HOST_RE.match(host):
            raise URLRefused(f"refused {url!r}: bad host name {host!r}")
        if _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):  # inet_aton would read it as an IPv4
            try:
                ipaddress.IPv4Address(host)  # only canonical dotted quads (no octal/hex/short/decimal forms)
            except ValueError:
                raise URLRefused(f"refused {url!r}: non-canonical numeric host {host!r}") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, path


def resolve(host, port):
    """All addresses of host (one lookup)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, ValueError, OSError):
        raise URLRefused(f"cannot resolve host {host}") from None
    return [info[4][0] for info in infos]


def check_url(url, allow_private=False):
    """A Target for url: parsed strictly, resolved once, every address checked; the connection goes to the
    returned target.ip. allow_private=True accepts private addresses (still parsed strictly)."""
    scheme, host, port, path = parse_url(url)
    ips = resolve(host, port)
    if not ips:
        raise URLRefused(f"cannot resolve host {host}")
    if not allow_private:
        for ip in ips:
            if _unsafe(ip):
                raise URLRefused(f"refused {url!r}: it resolves to a non-public address")
    return Target(scheme, host, port, ips[0], path)


def _trusted_target(url):
    """A Target for an operator-configured endpoint (no address policy, normal resolution at connect)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise URLRefused(f"refused {url!r}: only http(s) urls with a host can be fetched")
    port = parts.port or (443 if scheme == "https" else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, parts.hostname, port, parts.hostname, path)


class _PinnedHTTP(http.client.HTTPConnection):
    def __init__(self, target, timeout):
        super().__init__(target.host, target.port, timeout=timeout)
        self.ip = target.ip

    def connect(self):  # to the checked address, never a fresh lookup of the name
        self.sock = socket.create_connection((self.ip, self.port), self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _PinnedHTTPS(http.client.HTTPSConnection):
    def __init__(self, target, timeout):
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self.ip = target.ip

    def connect(self):  # TLS to the checked address; SNI and the certificate name stay the host name
        sock = socket.create_connection((self.ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _one(method, target, headers, body, deadline, max_bytes):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise HTTPFailure("deadline passed", retryable=True)
    conn = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, timeout=remaining)
    fired = threading.Event()

    def kill():  # wall clock: wakes a recv() blocked on a trickling peer
        fired.set()
        sock = conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    dog = threading.Timer(remaining, kill)
    dog.daemon = True  # never keeps the process alive
    dog.start()
    try:
        conn.request(method, target.path, body=body, headers=headers)
        r = conn.getresponse()
        data = bytearray()
        while True:
            chunk = r.read1(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > max_bytes:
                raise HTTPFailure(f"response from {target.host} larger than {max_bytes} bytes")
            if fired.is_set() or time.monotonic() > deadline:
                raise HTTPFailure("deadline passed", retryable=True)
        if fired.is_set():
            raise HTTPFailure("deadline passed", retryable=True)
        return r.status, {k.lower(): v for k, v in r.getheaders()}, bytes(data)
    except HTTPFailure:
        raise
    except (OSError, http.client.HTTPException) as e:
        if fired.is_set() or isinstance(e, socket.timeout):
            raise HTTPFailure("deadline passed", retryable=True) from None
        raise HTTPFailure(f"connection failed ({type(e).__name__})", retryable=True) from None
    finally:
        dog.cancel()
        conn.close()


def fetch(method, url, *, headers=None, json_body=None, data=None, timeout=30.0, max_bytes=5_000_000,
          redirects="none", allow_private=False, max_redirects=5):
    """One HTTP exchange with a wall-clock deadline (timeout seconds for ALL hops) and a byte cap.
    redirects: "none"  -- an operator endpoint; a redirect answer is returned as is (status 3xx);
               "check" -- a model-supplied url: check_url on the first url and on every hop, credentials
                          dropped when the origin changes, at most max_redirects hops.
    The url itself is policy-checked only with redirects="check" (operator endpoints are trusted)."""
    import json as _json
    headers = dict(headers or {})
    if json_body is not None:
        data = _json.dumps(json_body).encode()
        headers.setdefault("Content-Type", "application/json")
    elif isinstance(data, str):
        data = data.encode()
    headers.setdefault("User-Agent", "gen-searcher-mini/1")
    deadline = time.monotonic() + float(timeout)
    checked = redirects == "check"
    target = check_url(url, allow_private) if checked else _trusted_target(url)
    origin = target.origin
    for hop in range(max_redirects + 1):
        status, rheaders, body = _one(method, target, headers, data, deadline, max_bytes)
        if not checked or status not in REDIRECT_STATUS or "location" not in rheaders:
            return Response(status, rheaders, body, url)
        url = urllib.parse.urljoin(url, rheaders["location"])
        target = check_url(url, allow_private)  # every hop like the first
        if target.origin != origin:  # credentials never leave their origin
            headers = {k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS}
        if status == 303 or (status in (301, 302) and method == "POST"):
            method, data = "GET", None
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    raise HTTPFailure(f"too many redirects (more than {max_redirects})")


def backoff_delay(attempt, base=1.0, cap=16.0, retry_after=None):
    """Seconds to wait before retry number attempt (1, 2, ...): base * 2^(attempt-1) * U(0.5, 1), capped;
    jitter spreads retries of many workers; a server's Retry-After (capped) is honoured."""
    delay = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
    return max(delay, min(retry_after or 0.0, cap))


def request(method, url, *, retries=3, backoff_base=1.0, backoff_max=16.0, **kw):
    """fetch() with bounded retries on 429/5xx, deadline and connection errors (jittered backoff).
    Returns the Response of a final status < 400 (or 3xx with redirects="none"); raises HTTPFailure."""
    last, wait = None, None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_delay(attempt, backoff_base, backoff_max, wait))
        try:
            r = fetch(method, url, **kw)
        except HTTPFailure as e:
            if not e.retryable:
                raise
            last, wait = e, None
            continue
        if r.status in RETRY_STATUS:
            ra = r.headers.get("retry-after", "")
            last, wait = HTTPFailure(f"HTTP {r.status}", status=r.status, retryable=True), \
                float(ra) if ra.isdigit() else None
            continue
        if r.status >= 400:
            raise HTTPFailure(f"HTTP {r.status}", status=r.status)
        return r
    raise HTTPFailure(f"{last} (after {retries + 1} attempts)", status=last.status)


def redact(msg, key_envs):
    """msg with the value of every environment variable in key_envs replaced by ***."""
    msg = str(msg)
    for env in key_envs:
        v = os.environ.get(env, "").strip()
        if len(v) >= 4:
            msg = msg.replace(v, "***")
    return msg


def openai_client(base_url, key_env, timeout, max_retries=0):
    """An openai.OpenAI client for an operator endpoint: key from the environment variable key_env (or
    "EMPTY"), no proxy from the environment, no redirects followed, callers do their own retries."""
    import httpx
    import openai
    http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
    return openai.OpenAI(base_url=base_url, api_key=os.environ.get(key_env or "", "").strip() or "EMPTY",
                         timeout=timeout, max_retries=max_retries, http_client=http)
