# GRPO re-runs errored rollouts (engine exceptions, not bad answers) as the release's workflow engine does, and
# counts them: grpo.rollout_and_score with grpo.errored_rerun (what main() uses) around the real rollout.rollout
# on the "openai" engine, against a loopback agent server whose first request fails (HTTP 500, no client retry),
# with the tiny world's real tools; streamed and sequential scoring give the same rewards.
import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler

import pytest

import dataio
import grpo
import loopback
import rollout
import tools

G = 3


class Agent(BaseHTTPRequestHandler):
    """An image search, then an answer citing IMG_001. The first `fail_first` requests, and every request whose
    prompt contains `fail_always`, get HTTP 500."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        with srv.lock:
            srv.n += 1
            fail = srv.n <= srv.fail_first or (srv.fail_always and srv.fail_always in body["messages"][1]["content"])
        if fail:
            return loopback.send(self, 500, {"error": {"message": "engine crashed"}})
        if sum(m["role"] == "assistant" for m in body["messages"]) == 0:
            text = '<think>look</think><tool_call>{"name": "image_search", "arguments": {"query": "flag"}}</tool_call>'
        else:
            text = '<think>ok</think><answer>' + json.dumps({"gen_prompt": "The first reference image, a flag.",
                                                             "reference_images": [{"img_id": "IMG_001"}]}) + "</answer>"
        loopback.send(self, 200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                                  "choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant", "content": text}}]})


@pytest.fixture
def setup(tiny_world, tmp_path):
    items = dataio.load_items(str(tiny_world / "rl.jsonl"))[:2]
    tb = tools.make_toolbox("local", str(tiny_world), image_dir=str(tmp_path / "img"))

    def make(fail_first=0, fail_always=None):
        srv = loopback.serve(Agent, lock=threading.Lock(), n=0, fail_first=fail_first, fail_always=fail_always)
        pol = rollout.tokenizer_policy(None, "served")
        eng = rollout.make_engine("openai", pol, base_url=srv.url + "/v1", model="served", retries=0, workers=1)
        return srv, eng
    yield items, tb, make
    tools.close_toolbox(tb)


def scorer(log):
    def score(trajs, items, **kw):
        log.append([(t["id"], t["sample"], t["end_reason"]) for t in trajs])
        return [{"reward": 1.0 if t["end_reason"] == "answer" else 0.0, "error": None} for t in trajs]
    return score


def run_step(items, tb, eng, stream, retries, stats, log):
    s = rollout.settings({"max_rounds": 3, "date": "2025-06-01"})
    return grpo.rollout_and_score(
        lambda hook: rollout.rollout(items, eng.policy, eng, tb, samples=G, seed=7, on_end=hook, s=s),
        scorer(log), items, {}, stream, rerun=grpo.errored_rerun(eng, tb, 7, s, 0.7, 0.95), retries=retries,
        stats=stats)


@pytest.mark.parametrize("stream", [True, False])
def test_an_errored_rollout_is_rerun_rescored_and_counted(setup, stream):
    items, tb, make = setup
    srv, eng = make(fail_first=1)  # the very first model call raises: item 0, sample 0 ends "error"
    stats, log = Counter(), []
    records, scores, _ = run_step(items, tb, eng, stream, grpo.rollout_error_retries, stats, log)
    assert grpo.rollout_error_retries == 2  # release: retry_limit=3 attempts in all
    assert [(r["id"], r["sample"]) for r in records] == [(it["id"], k) for it in items for k in range(G)]
    assert [r["end_reason"] for r in records] == ["answer"] * (2 * G)  # the re-run replaced the errored record
    assert records[0]["answer"]["reference_images"][0]["img_id"] == "IMG_001"
    assert [s["reward"] for s in scores] == [1.0] * (2 * G)  # and its reward replaced the errored one's 0
    assert dict(stats) == {"error_retries": 1, "errored": 0}
    if stream:  # each trajectory was scored on its own as it ended (with the error), then the re-run alone
        assert sorted(log[:-1]) == sorted([[(it["id"], k, "error" if (i, k) == (0, 0) else "answer")]
                                           for i, it in enumerate(items) for k in range(G)])
        assert log[-1] == [(items[0]["id"], 0, "answer")]
    else:  # sequential: one scoring, after the re-run
        assert log == [[(it["id"], k, "answer") for it in items for k in range(G)]]
    assert srv.n == 1 + 2 * 2 * G  # one failed call, then 2 calls for each of the 6 trajectories


def test_a_persistent_error_stops_after_the_retries_and_stays_zero(setup):
    items, tb, make = setup
    srv, eng = make(fail_always=items[1]["prompt"])  # every call for item 1 fails
    stats, log = Counter(), []
    records, scores, _ = run_step(items, tb, eng, True, 2, stats, log)
    assert [r["end_reason"] for r in records] == ["answer"] * G + ["error"] * G
    assert [r["sample"] for r in records[G:]] == list(range(G))  # re-runs keep their sample index
    assert [s["reward"] for s in scores] == [1.0] * G + [0.0] * G
    assert dict(stats) == {"error_retries": 2 * G, "errored": G}  # G records x 2 re-runs, all still errored
    none = Counter()
    records0, _, _ = run_step(items, tb, make(fail_first=1)[1], True, 0, none, [])
    assert records0[0]["end_reason"] == "error" and not none  # retries=0: nothing re-run, nothing counted
