"""net.retry, the one retry loop of every HTTP caller: a loopback server that answers 503, 503, 200 is asked three
times (and the callers count three requests), a 400 is asked once, Retry-After is waited for (capped), and a key
the server echoes in its error body reaches neither the exception text nor a record."""
import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

import loopback
import net

SECRET = "sk-test-Qw7Zr41mE"


class _Scripted(BaseHTTPRequestHandler):
    """Answers from server.plan, one entry per request: (status, body, headers); "{auth}" in a body is replaced by
    the credential the request carried (a server that echoes the key, as real ones partly do). Empty plan: 200."""

    def log_message(self, *a):
        pass

    def _any(self):
        srv = self.server
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with srv.lock:
            srv.hits.append(self.path)
            status, body, headers = srv.plan.popleft() if srv.plan else (200, srv.ok_body, {})
        auth = next((self.headers[k] for k in ("Authorization", "X-API-KEY", "x-goog-api-key") if self.headers.get(k)), "")
        data = body.replace("{auth}", auth).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
    do_GET = do_POST = _any


def _server(plan, ok_body='{"ok": true}'):
    return loopback.serve(_Scripted, lock=threading.Lock(), hits=[], ok_body=ok_body,
                          plan=collections.deque((s, b, h) for s, b, h in plan))


def _err(status, msg="overloaded", **headers):
    return status, json.dumps({"error": {"message": msg}}), headers


def test_request_retries_503_then_200_and_not_400():
    srv = _server([_err(503), _err(503)])
    r = net.request("GET", srv.url + "/a", retries=3, backoff_base=0.01, timeout=5)
    assert r.status == 200 and len(srv.hits) == 3
    srv.plan.extend([_err(400), _err(503)])
    with pytest.raises(net.HTTPFailure) as e:
        net.request("GET", srv.url + "/b", retries=3, backoff_base=0.01, timeout=5)
    assert e.value.status == 400 and str(e.value) == "HTTP 400 (after 1 attempt)" and len(srv.hits) == 4
    srv.plan.extend([_err(503)] * 5)  # the bound: retries + 1 requests, then the last fault
    with pytest.raises(net.HTTPFailure, match=r"HTTP 503 \(after 3 attempts\)"):
        net.request("GET", srv.url + "/c", retries=2, backoff_base=0.01, timeout=5)
    assert len(srv.hits) == 7


def test_generator_client_retries_counts_and_redacts(monkeypatch):
    """image_server.py's generator POST (requests): 503, 503, 200 -> three counted requests; 400 -> one; an error
    body that echoes the key (on a retried status and on a final one) -> the key is in no exception text."""
    import image_server
    import reward
    srv = _server([_err(503), _err(503, "busy {auth}")], ok_body='{"candidates": []}')
    c = dict(reward.make_config(), gen_retries=3, gen_backoff=0.01, gen_timeout=5.0)
    headers = {"x-goog-api-key": SECRET}
    n0 = image_server.STATS["gen_requests"]
    assert image_server.post_json_retrying(srv.url + "/gen", {}, headers, c, "gemini") == {"candidates": []}
    assert len(srv.hits) == 3 and image_server.STATS["gen_requests"] - n0 == 3
    for plan, attempts in (([_err(400, "bad key {auth}")], 1), ([_err(503, "down, key {auth}")] * 4, 4)):
        srv.plan.extend(plan)
        hits = len(srv.hits)
        with pytest.raises(RuntimeError) as e:
            image_server.post_json_retrying(srv.url + "/gen", {}, headers, c, "gemini")
        assert len(srv.hits) - hits == attempts and f"after {attempts} attempt" in str(e.value)
        assert SECRET not in str(e.value) and "key ***" in str(e.value), str(e.value)
        assert e.value.__cause__ is None and e.value.__suppress_context__  # the raw body is not chained


def test_retry_after_is_honoured_and_capped():
    srv = _server([_err(503, **{"Retry-After": "1"})])
    t0 = time.monotonic()
    net.request("GET", srv.url + "/a", retries=1, backoff_base=0.001, backoff_max=5.0, timeout=5)
    assert time.monotonic() - t0 >= 0.9 and len(srv.hits) == 2  # base 0.001 alone would wait ~1 ms
    srv.plan.append(_err(429, **{"Retry-After": "3600"}))
    t0 = time.monotonic()
    net.request("GET", srv.url + "/b", retries=1, backoff_base=0.001, backoff_max=0.2, timeout=5)
    assert time.monotonic() - t0 < 5 and len(srv.hits) == 4  # a server cannot park a worker for an hour
    assert net.retry_after({"retry-after": "7"}) == 7.0 and net.retry_after({}) is None
    assert 50 < net.retry_after({"Retry-After": time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                             time.gmtime(time.time() + 60))}) <= 61


def test_retryable_and_the_backoff_formula():
    import requests
    yes = [net.HTTPFailure("x", status=s) for s in (408, 409, 429, 500, 502, 503, 504, 599)] + [
        net.Unparseable("not JSON"), json.JSONDecodeError("x", "<html>", 0), TimeoutError(), ConnectionResetError(),
        net.HTTPFailure("deadline passed", retryable=True), requests.exceptions.ConnectTimeout(),
        requests.exceptions.ConnectionError()]
    no = [net.HTTPFailure("x", status=s) for s in (400, 401, 403, 404, 422)] + [
        net.HTTPFailure("response larger than 5 bytes"), net.URLRefused("refused"), KeyError("k"), TypeError()]
    assert [net.retryable(e) for e in yes] == [True] * len(yes)
    assert [net.retryable(e) for e in no] == [False] * len(no)
    for attempt, lo, hi in ((1, 0.5, 1.0), (3, 2.0, 4.0), (9, 8.0, 16.0)):  # U(t/2, t), t = min(16, 2^(a-1))
        d = [net.backoff_delay(attempt, 1.0, 16.0) for _ in range(200)]
        assert lo <= min(d) and max(d) <= hi and max(d) - min(d) > (hi - lo) / 4
    assert net.backoff_delay(1, 0.01, 16.0, retry_after=3.0) == 3.0


def test_retry_calls_until_it_returns_and_a_bug_is_not_retried():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise net.Unparseable("an empty answer")
        return "ok"
    assert net.retry(flaky, 5, 0.001, 0.01, "summarizer") == "ok" and len(calls) == 3
    calls.clear()

    def bug():
        calls.append(1)
        raise KeyError(f"choices {SECRET}")
    with pytest.raises(net.HTTPFailure) as e:
        net.retry(bug, 5, 0.001, 0.01, "judge", [SECRET])
    assert len(calls) == 1 and str(e.value) == "judge: KeyError: 'choices ***' (after 1 attempt)"
    with pytest.raises(net.URLRefused):  # a url refusal keeps its type (callers turn it into a tool error)
        net.retry(lambda: net.check_url("http://127.0.0.1/"), 3, 0.001, 0.01, "fetch")


def _chat_reply(text):
    return json.dumps({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}],
                       "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


def test_chat_completion_and_judge_over_the_openai_client(monkeypatch):
    """net.chat_completion (agent, teacher, make_data's calls) and reward's judge: the same rules through the
    real openai client; counters per attempt; an echoed key in neither the error nor the record."""
    pytest.importorskip("openai")
    import reward
    monkeypatch.setenv("NET_TEST_KEY", SECRET)
    srv = _server([_err(503), _err(503)], ok_body=_chat_reply('{"score": 1}'))
    client = net.openai_client(srv.url + "/v1", "NET_TEST_KEY", 5.0)
    usage = collections.Counter()
    choice, _ = net.chat_completion(client, "m", [{"role": "user", "content": "hi"}], usage, retries=3)
    assert choice.message.content == '{"score": 1}' and len(srv.hits) == 3
    assert usage["requests"] == 3 and usage["request_errors"] == 2 and usage["prompt_tokens"] == 5
    srv.plan.append(_err(400, "bad request from {auth}"))
    usage.clear()
    with pytest.raises(RuntimeError) as e:
        net.chat_completion(client, "m", [{"role": "user", "content": "hi"}], usage, retries=3)
    assert usage["requests"] == usage["request_errors"] == 1 and "400" in str(e.value)
    assert SECRET not in str(e.value) and "Bearer ***" in str(e.value)
    # the judge: 503, 503, 200 -> three counted judge requests; a 401 echoing the key -> one, redacted
    c = reward.make_config(judge_backend="openai", judge_base_url=srv.url + "/v1", judge_api_key_env="NET_TEST_KEY",
                           judge_retries=3, judge_backoff=0.01, judge_cache=None)
    srv.plan.extend([_err(503), _err(503)])
    n0, hits = reward.STATS["judge_requests"], len(srv.hits)
    out, err = reward.ask_judge("text", [{"role": "user", "content": "x"}], lambda t: json.loads(t), ["a"], c)
    assert out == {"score": 1} and err is None and reward.STATS["judge_requests"] - n0 == 3
    srv.plan.append(_err(401, "invalid key {auth}"))
    out, err = reward.ask_judge("text", [{"role": "user", "content": "x"}], lambda t: json.loads(t), ["b"], c)
    assert out is None and "401" in err and SECRET not in err and reward.STATS["judge_requests"] - n0 == 4
    assert len(srv.hits) - hits == 4
