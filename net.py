"""
net.py -- the one HTTP helper: URL policy, bounded requests, and THE retry loop (retry / retryable) that every
HTTP caller uses: tools.py's APIs and summarizer, image_server.py (the server's image_urls, the generator
clients), reward.py's judges, and chat_completion (rollout.py's openai engine, make_data.py's prompt writer /
judge). Also the pieces those callers share: openai_client, data_url (an image file as a data URL) and
semaphore (process-wide concurrency bounds).

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
import base64
import dataclasses
import http.client
import ipaddress
import json
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse

RETRY_STATUS = {408, 409, 429}  # + every 5xx: transient answers that retry() asks again; other statuses are final
REDIRECT_STATUS = {301, 302, 303, 307, 308}
CREDENTIAL_HEADERS = {"authorization", "x-api-key", "proxy-authorization", "cookie"}
_HOST_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


class URLRefused(ValueError):
    """The url policy refused a url (message names the url and the reason)."""


class HTTPFailure(RuntimeError):
    """A request failed: connection error, deadline passed, byte cap passed, bad status (status set; retry_after:
    the server's Retry-After in seconds, if it sent one). retry() raises one as its final error."""

    def __init__(self, msg, status=None, retryable=False, retry_after=None, attempts=1):
        super().__init__(msg)
        self.status, self.retryable, self.retry_after, self.attempts = status, retryable, retry_after, attempts


class Unparseable(RuntimeError):
    """Raised by a caller whose server answered but whose reply cannot be used (a judge's reply that is not the
    JSON asked for, a gateway's HTML page, a reply without text or image): retry() asks again (a model's next
    sample usually parses; a gateway's hiccup passes)."""


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
    """Seconds to wait before retry number attempt (1, 2, ...): "equal jitter" exponential backoff,
    t = min(cap, base * 2^(attempt-1)), wait U(t/2, t) (Brooker, "Exponential Backoff And Jitter", AWS
    Architecture Blog, 2015): the jitter spreads the retries of many workers, half of t keeps a floor.
    A server's Retry-After is honoured (capped at cap: a server cannot park a worker for an hour)."""
    delay = min(cap, base * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
    return max(delay, min(retry_after or 0.0, cap))


def retry_after(headers):
    """Seconds of a Retry-After header (delta-seconds or an HTTP date), or None. headers: any mapping."""
    v = str((headers or {}).get("retry-after") or (headers or {}).get("Retry-After") or "").strip()
    if not v:
        return None
    try:
        return max(0.0, float(v))
    except ValueError:
        pass
    try:
        import email.utils
        return max(0.0, email.utils.parsedate_to_datetime(v).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _status(exc):
    """The HTTP status an exception carries: ours (.status), openai's APIStatusError (.status_code), requests' /
    httpx's HTTPError (.response.status_code); None for transport faults."""
    if isinstance(exc, HTTPFailure):
        return exc.status
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _transient_types():
    """Timeout / connection exception classes of the client libraries in use. Only loaded modules are asked:
    an exception of a library that was never imported cannot occur."""
    import sys
    types = [TimeoutError, ConnectionError, socket.timeout, http.client.HTTPException]
    if "openai" in sys.modules:  # APITimeoutError is an APIConnectionError
        types.append(sys.modules["openai"].APIConnectionError)
    if "requests" in sys.modules:
        rq = sys.modules["requests"]
        types += [rq.exceptions.Timeout, rq.exceptions.ConnectionError, rq.exceptions.ChunkedEncodingError]
    if "httpx" in sys.modules:
        hx = sys.modules["httpx"]
        types += [hx.TimeoutException, hx.NetworkError, hx.RemoteProtocolError]
    return tuple(types)


def retryable(exc):
    """Is exc worth asking again? Yes: timeouts, connection errors, HTTP 408 / 409 / 429 and 5xx (an overloaded
    or restarting server; 409 is what some gateways answer for a busy model), Unparseable replies. No: any other
    status (a bad request or a bad key does not get better), a byte cap, a url refusal, a bug.
    A 200 whose body is not JSON counts as Unparseable."""
    if isinstance(exc, (Unparseable, json.JSONDecodeError)):  # the clients' .json() on a gateway's HTML page
        return True
    status = _status(exc)
    if status is not None:
        return status in RETRY_STATUS or 500 <= status < 600
    if isinstance(exc, HTTPFailure):
        return exc.retryable  # deadline passed / connection failed (set by _one)
    return isinstance(exc, _transient_types())


def retry(fn, retries, base, cap, what, secrets=()):
    """fn() until it returns: at most retries + 1 calls, another only after a retryable(exc) fault, waiting
    backoff_delay(attempt, base, cap, Retry-After). Callers count their own requests / errors inside fn. The final
    fault is raised as HTTPFailure "<what>: <fault> (after N attempts)" with every value in secrets redacted
    BEFORE it is cut to 300 characters (servers echo keys back in error bodies), .status kept, the original
    exception not chained (its text holds the unredacted body). A url refusal (URLRefused: nothing was sent,
    the message names the url) is raised unchanged."""
    last, attempts = None, 0
    for attempt in range(int(retries) + 1):
        if attempt:
            time.sleep(backoff_delay(attempt, base, cap, getattr(last, "retry_after", None) or
                                     retry_after(getattr(getattr(last, "response", None), "headers", None))))
        attempts += 1
        try:
            return fn()
        except URLRefused:
            raise
        except Exception as e:
            last = e
            if not retryable(e):
                break
    text = str(last) if isinstance(last, (HTTPFailure, Unparseable)) else f"{type(last).__name__}: {last}"
    text = redact(text, secrets)[:300]
    n = f"{attempts} attempt{'s' if attempts > 1 else ''}"
    raise HTTPFailure(f"{what + ': ' if what else ''}{text} (after {n})", status=_status(last),
                      attempts=attempts) from None


def fetch_ok(method, url, **kw):
    """fetch(), a status >= 400 raised as HTTPFailure (status and Retry-After kept): one attempt for retry()."""
    r = fetch(method, url, **kw)
    if r.status >= 400:
        raise HTTPFailure(f"HTTP {r.status}", status=r.status, retry_after=retry_after(r.headers))
    return r


def request(method, url, *, retries=3, backoff_base=1.0, backoff_max=16.0, **kw):
    """fetch_ok() through retry(): 408/409/429/5xx, deadline and connection errors are asked again (jittered
    backoff, Retry-After honoured). Returns the Response of a final status < 400 (or 3xx with redirects="none");
    raises HTTPFailure (the values of credential headers redacted from its message) or URLRefused."""
    secrets = []  # "Bearer KEY": the whole value and the key alone
    for k, v in (kw.get("headers") or {}).items():
        if k.lower() in CREDENTIAL_HEADERS and isinstance(v, str) and v.split():
            secrets += [v, v.split()[-1]]
    return retry(lambda: fetch_ok(method, url, **kw), retries, backoff_base, backoff_max, "", secrets)


def redact(msg, secrets):
    """msg with every secret value (of at least 4 characters: shorter ones would blank ordinary words) as ***.
    Longest first, so "Bearer KEY" and KEY alone both go."""
    msg = str(msg)
    for v in sorted({str(s).strip() for s in secrets if s}, key=len, reverse=True):
        if len(v) >= 4:
            msg = msg.replace(v, "***")
    return msg


def env_secret(env):
    """The value of environment variable env ("" if unset): a key to redact."""
    return os.environ.get(env or "", "").strip()


def data_url(path):
    """A file as a data URL, its original bytes (the mime type from its magic bytes): how the judges, the agent's
    chat messages and the generator clients send an image."""
    b = open(path, "rb").read()
    mime = "image/png" if b[:4] == b"\x89PNG" else "image/jpeg" if b[:2] == b"\xff\xd8" else \
        "image/webp" if b[8:12] == b"WEBP" else "image/gif" if b[:3] == b"GIF" else "application/octet-stream"
    return f"data:{mime};base64," + base64.b64encode(b).decode()


_semaphores = {}
_semaphores_lock = threading.Lock()


def semaphore(name, n):
    """One process-wide semaphore per (name, limit): a concurrency bound (judge requests, a generator server's
    slots) that outlives a single call, so it holds across the groups that GRPO scores concurrently."""
    with _semaphores_lock:
        if (name, n) not in _semaphores:
            _semaphores[(name, n)] = threading.BoundedSemaphore(max(1, n))
        return _semaphores[(name, n)]


def chat_choice(resp):
    """The first choice of an OpenAI chat completion, or Unparseable: the openai client hands back the text of a
    body that is not JSON (a gateway's error page), or a reply without choices / message."""
    try:
        choice = resp.choices[0]
        choice.message  # noqa: B018  (the attribute must exist)
    except (AttributeError, IndexError, TypeError, KeyError):
        raise Unparseable(f"not a chat completion: {str(resp)[:120]!r}") from None
    return choice


def openai_client(base_url, key_env, timeout, max_retries=0):
    """An openai.OpenAI client for an operator endpoint: key from the environment variable key_env (or
    "EMPTY"), no proxy from the environment, no redirects followed, callers do their own retries."""
    import httpx
    import openai
    http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)
    return openai.OpenAI(base_url=base_url, api_key=os.environ.get(key_env or "", "").strip() or "EMPTY",
                         timeout=timeout, max_retries=max_retries, http_client=http)


def chat_completion(client, model, messages, usage, retries=2, **kw):
    """One chat completion -> (choice, usage) through retry(): timeouts, connection errors, 408/409/429/5xx,
    bodies that are not a chat completion and replies without text are asked again (jittered backoff, base 1 s,
    cap 30 s), anything else is final; then HTTPFailure (a RuntimeError) with the client's key redacted (a
    server that echoes it must not put it into a record). Counts requests, request_errors and tokens into usage.
    Callers: rollout.py's openai engine (agent, teacher) and make_data.py's single calls (prompt writer, judge)."""
    def once():
        usage["requests"] += 1
        try:
            r = client.chat.completions.create(model=model, messages=messages, **kw)
            choice = chat_choice(r)
            if not isinstance(choice.message.content, str):
                raise Unparseable("the reply has no message content")
        except Exception:
            usage["request_errors"] += 1
            raise
        if r.usage is not None:
            usage.update(prompt_tokens=r.usage.prompt_tokens or 0, completion_tokens=r.usage.completion_tokens or 0)
        return choice, r.usage
    key = client.api_key if client.api_key != "EMPTY" else ""  # "EMPTY": openai_client's no-key placeholder
    return retry(once, retries, 1.0, 30.0, f"chat {model}", [key])
