"""Helpers for tests/test_grpo_loop.py (no tests here): a checkable reward and fault injection.

frac_target: the fraction of a trajectory's sampled tokens whose id is below TARGET_BELOW (a quarter of the
mini world's ~2k vocabulary, so ~25% at random init). A random tiny policy can raise it only by learning.
"""
TARGET_BELOW = 512


def frac_target(trajectories, items, **kw):
    out = []
    for t in trajectories:
        gen = [x for x, m in zip(t["tokens"], t["loss_mask"]) if m]
        out.append({"reward": sum(x < TARGET_BELOW for x in gen) / max(1, len(gen)), "error": None})
    return out


# ----------------------------------------------------------------------------------------------
# fault injection: `python -m grpo_rules <grpo.py arguments>` runs grpo.main() with
#  - a scripted policy (a logits processor on the HF engine: image_search, then an answer citing IMG_001), so
#    trajectories reach the real generator and judges of reward.score;
#  - faults raised INSIDE the real tools / generator / judge code paths with a fixed probability;
#  - the engine's first generate call raises (every trajectory of step 1 ends "error" and is re-run).
# What is tested is grpo.py's (and its callees') handling: the run finishes, the faults are counted.
import json
import random

FAULT_P = {"tool": 0.25, "generator": 0.25, "judge": 0.25}


class Scripted:
    """Forces the model to write SCRIPT[round] (round = number of assistant turns before this one)."""

    def __init__(self, tok, script):
        self.tok, self.script = tok, [tok.encode(s, add_special_tokens=False) for s in script]
        self.head = tok.encode("<|im_start|>assistant\n", add_special_tokens=False)

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        n = len(self.head)
        for b, row in enumerate(input_ids.tolist()):
            starts = [i for i in range(len(row) - n + 1) if row[i:i + n] == self.head]
            target = self.script[min(len(starts) - 1, len(self.script) - 1)]
            step = len(row) - (starts[-1] + n)
            scores[b] = float("-inf")
            scores[b, target[min(step, len(target) - 1)]] = 0.0
        return scores


SCRIPT = [
    '<think>find the image</think>\n<tool_call>{"name": "image_search", "arguments": {"query": "flag"}}'
    '</tool_call><|im_end|>',
    '<think>done</think>\n<answer>' + json.dumps({"gen_prompt": "The first reference image, a flag.",
                                                 "reference_images": [{"img_id": "IMG_001", "note": "flag"}]})
    + '</answer><|im_end|>',
]


def _faulty(fn, kind, rng):
    def wrapped(*a, **kw):
        if rng.random() < FAULT_P[kind]:
            raise RuntimeError(f"injected {kind} fault")
        return fn(*a, **kw)
    return wrapped


def main():
    import grpo
    import image_server
    import reward
    import rollout
    import tools
    from configurator import configure
    rng = random.Random(0)
    tools._local_image_hits = _faulty(tools._local_image_hits, "tool", rng)
    image_server.offline_generate = _faulty(image_server.offline_generate, "generator", rng)
    reward.judge_kscore_offline = _faulty(reward.judge_kscore_offline, "judge", rng)
    make_engine = rollout.make_engine

    def scripted_engine(kind, pol, *a, **kw):
        eng = make_engine(kind, pol, *a, **kw)
        eng.logits_processors = [Scripted(pol.tokenizer, SCRIPT)]
        return eng
    rollout.make_engine = scripted_engine
    real_generate, raised = rollout.generate, []

    def generate_raising_once(*a, **kw):
        if not raised:
            raised.append(1)
            raise RuntimeError("injected engine fault")
        return real_generate(*a, **kw)
    rollout.generate = generate_raising_once
    configure(vars(grpo))
    grpo.main()


if __name__ == "__main__":
    main()
