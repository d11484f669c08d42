"""Streamed rewards (grpo.py stream_rewards): each trajectory is scored as soon as it ends, while the others (its
own group's too) are still sampling, and the numbers are the same as the sequential path (all rollouts, then all
rewards) for the same seed: rewards, advantages and every log line but the timings.

`python -m test_stream <grpo.py arguments>` (run by the test) is grpo.main() with a scripted policy on the HF
engine: each sample picks its first query, and its prompt and that pick set its number of image_search calls
(VariedScript), then it answers citing IMG_001 or IMG_002, so the samples of a group, and the groups, end in
different rounds and reach the real offline generator and judges of reward.score. It appends one JSON line per
event to $STREAM_TRACE: when each trajectory ended (rollout.rollout's on_end), when score() started and on which
(id, sample)s, when each rollout ended, and every group_advantages(rewards) -> advantages the loop computed.
"""
import json
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
QUERIES = ["flag", "national flag", "flag of the country"]


class VariedScript:
    """Forces image_search turns, then an answer. In its first turn a sample writes one of the QUERIES: wherever
    the queries the turn still matches differ in their next token, each of those tokens stays allowed and the
    sampler (the seeded torch RNG) picks. With c the picked query's index, the sample makes 1 + (sum of the
    prompt's token ids + c) mod 3 calls, QUERIES[(c + r) % 3] in round r (a different query each, so no
    "repeated" end): the samples of one item can end in different rounds, as real samples do, and the items
    differ too. Where the two possible answers (citing IMG_001 or IMG_002) first differ, both tokens stay allowed: the
    sampler picks, so the samples of a group get different rewards and advantages."""

    def __init__(self, tok):
        self.head = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)
        self.tools = [tok.encode(f'<think>look</think>\n<tool_call>{{"name": "image_search", "arguments": '
                                 f'{{"query": "{q}"}}}}</tool_call><|im_end|>', add_special_tokens=False)
                      for q in QUERIES]
        self.answers = [tok.encode('<think>done</think>\n<answer>' + json.dumps(
            {"gen_prompt": "The reference image, a flag.", "reference_images": [{"img_id": img, "note": "flag"}]})
            + '</answer><|im_end|>', add_special_tokens=False) for img in ("IMG_001", "IMG_002")]
        a, b = self.answers
        self.fork = next(i for i in range(min(len(a), len(b))) if a[i] != b[i])

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        n = len(self.head)
        for b, row in enumerate(input_ids.tolist()):
            starts = [i for i in range(len(row) - n + 1) if row[i:i + n] == self.head]
            r, turn = len(starts) - 1, row[starts[-1] + n:]
            step = len(turn)
            scores[b] = float("-inf")
            if r == 0:  # the first query: the next token of every query this turn still matches
                nxt = {q[step] for q in self.tools if step < len(q) and q[:step] == turn}
                scores[b, sorted(nxt) or [self.tools[0][-1]]] = 0.0  # none: this row has stopped (HF pads it)
                continue
            first = row[starts[0] + n:]
            c = next(k for k, q in enumerate(self.tools) if first[:len(q)] == q)
            n_tools = 1 + (sum(row[:starts[0]]) + c) % 3  # (the left padding is <|endoftext|>, id 0)
            if r < n_tools:
                target = self.tools[(c + r) % len(self.tools)]
            elif step == self.fork:  # the sampler chooses the reference
                scores[b, [a[self.fork] for a in self.answers]] = 0.0
                continue
            else:
                chosen = row[starts[-1] + n + self.fork] if step > self.fork else None
                target = self.answers[1] if chosen == self.answers[1][self.fork] else self.answers[0]
            scores[b, target[min(step, len(target) - 1)]] = 0.0
        return scores


def main():
    import grpo
    import reward
    import rollout
    from configurator import configure
    trace = open(os.environ["STREAM_TRACE"], "a")

    def note(**kw):
        trace.write(json.dumps({"t": time.time(), **kw}) + "\n")
        trace.flush()
    make_engine, real_rollout, real_generate = rollout.make_engine, rollout.rollout, rollout.generate
    real_score, real_adv = reward.score, grpo.group_advantages

    def scripted_engine(kind, pol, *a, **kw):
        eng = make_engine(kind, pol, *a, **kw)
        eng.logits_processors = [VariedScript(pol.tokenizer)]
        return eng

    def traced_rollout(*a, on_end=None, **kw):
        def ended(i, rec):  # noted before grpo's hook hands the record to the score pool
            note(event="traj_end", id=rec["id"], sample=rec["sample"])
            if on_end is not None:
                on_end(i, rec)
        recs = real_rollout(*a, on_end=ended, **kw)
        note(event="rollout_end", rounds=[r["rounds"] for r in recs])
        return recs

    def traced_generate(*a, **kw):
        note(event="generate")
        return real_generate(*a, **kw)

    def traced_score(trajs, items, **kw):
        note(event="score_start", ids=[t["id"] for t in trajs], samples=[t["sample"] for t in trajs])
        return real_score(trajs, items, **kw)

    def traced_adv(rewards, group_size, *a, **kw):
        adv = real_adv(rewards, group_size, *a, **kw)
        note(event="advantages", rewards=rewards.tolist(), advantages=adv.tolist())
        return adv
    rollout.make_engine, rollout.rollout, rollout.generate = scripted_engine, traced_rollout, traced_generate
    reward.score, grpo.group_advantages = traced_score, traced_adv
    configure(vars(grpo))
    grpo.main()


@pytest.fixture(scope="module")
def world(mini_world):  # conftest's SMALL_WORLD
    return mini_world


def _run(world, out, stream):
    out.mkdir(parents=True, exist_ok=True)
    trace = out / "trace.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", STREAM_TRACE=str(trace))
    args = ["config/grpo_runcpu.py", "--init_from=scratch", "--vision=False", f"--tokenizer_dir={world / 'tokenizer'}",
            f"--data_path={world / 'rl.jsonl'}", f"--world_dir={world}", f"--out_dir={out}", "--max_steps=2",
            "--engine=hf", "--n_prompts=4", "--group_size=3", "--learning_rate=3e-3", "--reward_fn=",
            f"--stream_rewards={stream}", "--reward_kwargs={'judge_cache': None}",
            "--rollout_kwargs={'max_new_tokens': 80, 'max_rounds': 5, 'force_final_round': True, "
            "'context_cap': 4096, 'date': '2025-06-01'}"]
    p = subprocess.run([sys.executable, "-m", "test_stream", *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    logs = [json.loads(line) for line in open(out / "log.jsonl")]
    events = [json.loads(line) for line in open(trace)]
    return logs, events


def test_streamed_rewards_equal_sequential_and_start_before_the_rollout_ends(world, tmp_path):
    seq_log, seq_ev = _run(world, tmp_path / "seq", False)
    str_log, str_ev = _run(world, tmp_path / "stream", True)
    untimed = lambda rows: [{k: v for k, v in r.items() if not k.startswith("t_") and k != "gen_tokens_per_s"}
                            for r in rows]
    assert len(seq_log) == len(str_log) == 2
    assert untimed(str_log) == untimed(seq_log)                       # every log line but the timings
    adv = lambda ev: [(e["rewards"], e["advantages"]) for e in ev if e["event"] == "advantages"]
    assert adv(str_ev) == adv(seq_ev) and len(adv(seq_ev)) == 2       # rewards and advantages, exactly
    rewards = [x for rw, _ in adv(seq_ev) for x in rw]
    assert any(x > 0 for x in rewards) and len(set(rewards)) > 1      # the real judges scored something
    assert any(a != 0 for _, ad in adv(seq_ev) for a in ad)           # and groups have a learning signal
    assert all(r["grad_norm"] > 0 for r in seq_log)
    for r in seq_log:
        assert r["end_reasons"] == {"answer": 12} and r["reward_errors"] == 0
    # the groups end in different rounds, and so do the samples of some groups (3 a group, in record order);
    # sequential: one score() call per step, after the rollout ended; streamed: one call per trajectory, at least
    # one of them started while the step was still sampling, and one before another sample of its group ended
    ends = [e for e in str_ev if e["event"] == "rollout_end"]
    assert all(len(set(e["rounds"])) > 1 for e in ends), ends
    assert all(any(len(set(e["rounds"][g:g + 3])) > 1 for g in range(0, 12, 3)) for e in ends), ends
    seq_calls = [e for e in seq_ev if e["event"] == "score_start"]
    assert len(seq_calls) == 2 and all(len(c["ids"]) == 12 for c in seq_calls)
    assert all(c["t"] > e["t"] for c, e in zip(seq_calls, [e for e in seq_ev if e["event"] == "rollout_end"]))
    bounds = [0.0] + [e["t"] for e in str_ev if e["event"] == "advantages"]
    for step in range(2):
        within = [e for e in str_ev if bounds[step] < e["t"] < bounds[step + 1]]
        calls = [e for e in within if e["event"] == "score_start"]
        last_gen = max(e["t"] for e in within if e["event"] == "generate")
        assert len(calls) == 12 and all(len(c["ids"]) == 1 for c in calls), (step, calls)
        assert sorted((c["ids"][0], c["samples"][0]) for c in calls) == \
            sorted((e["id"], e["sample"]) for e in within if e["event"] == "traj_end")  # each one scored once
        assert any(c["t"] < last_gen for c in calls), (step, calls, last_gen)
        # a trajectory's score() started, then a generate ran, and only after it another sample of its group ended:
        # that sample was still sampling (a generate between the two, so not the same hand-over between rounds)
        traj_end = {(e["id"], e["sample"]): e["t"] for e in within if e["event"] == "traj_end"}
        gens = [e["t"] for e in within if e["event"] == "generate"]
        assert any(c["t"] < g < t for c in calls for (i, k), t in traj_end.items()
                   if i == c["ids"][0] and k != c["samples"][0] for g in gens), (step, calls, traj_end, gens)

if __name__ == "__main__":
    main()
