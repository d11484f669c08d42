"""GRPO end to end on CPU: learning signal, torchrun (gloo, FSDP2) with the HF and vLLM engines and weight
sync, SIGKILL + resume, injected tool/judge/generator faults. The tiny policies are random-init Qwen3s on the
mini world's tokenizer; the checkable reward (tests/grpo_rules.py) needs no SFT'd model."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import grpo
import rollout as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, TESTS)
from grpo_rules import frac_target  # noqa: E402

pytestmark = pytest.mark.timeout(900)  # torchrun / vLLM / kill-and-resume trainings: up to ~75 s each quiet


@pytest.fixture(scope="module")
def world(mini_world):
    return mini_world  # conftest.SMALL_WORLD


# ----------------------------------------------------------------------------------------------
# learning: sample with rollout.generate, score with a rule, then grpo's own advantage / filter / update

def _learn(world, steps, zero_adv, lr=3e-3):
    from transformers import AutoTokenizer
    from sft import scratch_model
    tok = AutoTokenizer.from_pretrained(str(world / "tokenizer"))
    pol = R.Policy(scratch_model(tok, vision=False, seed=0), tok, None, False, "tiny")
    opt = torch.optim.AdamW(pol.model.parameters(), lr=lr, weight_decay=0.0)
    eng = R.make_engine("hf", pol)
    words = ["flag", "river", "tower", "crown", "bridge", "market", "temple", "harbor"]
    prompts = [R.encode(tok, f"<|im_start|>user\nDraw the {w}.<|im_end|>\n<|im_start|>assistant\n") for w in words]
    G, curve, canary = 6, [], []
    for step in range(steps):
        torch.manual_seed(1000 + step)
        pol.model.eval()
        outs = R.generate(eng, [{"tokens": p, "max_new": 8} for p in prompts for _ in range(G)],
                          temperature=grpo.temperature, top_p=1.0)
        recs, rewards = [], []
        for k, (ids, lps) in enumerate(outs):
            p = prompts[k // G]
            recs.append({"tokens": p + ids, "loss_mask": [0] * len(p) + [1] * len(ids),
                         "logprobs": [0.0] * len(p) + lps, "images": [], "end_reason": "answer"})
        rewards = torch.tensor([s["reward"] for s in frac_target(recs, None)])
        curve.append(float(rewards.mean()))
        adv = grpo.group_advantages(rewards, G)
        if zero_adv:
            adv = torch.zeros_like(adv)
        keep, _ = grpo.compact_filter([r["end_reason"] for r in recs], rewards.tolist(), G)
        pol.model.train()
        st = grpo.accumulate_grads(pol.model, pol, recs, adv, keep, torch.device("cpu"))
        canary.append(st["canary"] / st["tokens"])
        torch.nn.utils.clip_grad_norm_(pol.model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    return curve, canary


def test_grpo_learns_a_rule_and_zero_advantage_does_not(world):
    steps = 30
    curve, canary = _learn(world, steps, zero_adv=False)
    flat, _ = _learn(world, steps, zero_adv=True)
    first, last = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    f_first, f_last = sum(flat[:5]) / 5, sum(flat[-5:]) / 5
    print("GRPO", [round(x, 2) for x in curve], "\nzero-adv", [round(x, 2) for x in flat])
    assert curve[0] == flat[0]  # same start (same seed, same samples)
    assert last > first + 0.25, (first, last)
    assert abs(f_last - f_first) < 0.08, (f_first, f_last)
    # the trainer's recompute of the sampled tokens equals the sampler's logprobs (layout/padding agree)
    assert canary[0] < 1e-4, canary[0]


# ----------------------------------------------------------------------------------------------
# the script itself: torchrun, vLLM, resume, faults

def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, TESTS]), OMP_NUM_THREADS="1",
               VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1", TOKENIZERS_PARALLELISM="false")
    return env


def _args(world, out, steps, engine="hf", extra=()):
    return ["config/grpo_runcpu.py", "--num_epochs=5", "--save_interval=20", "--init_from=scratch", "--vision=False", "--model_sizes={'head_dim': 32}",
            f"--tokenizer_dir={world / 'tokenizer'}", f"--data_path={world / 'rl.jsonl'}", f"--world_dir={world}",
            f"--out_dir={out}", f"--max_steps={steps}", f"--engine={engine}", "--n_prompts=2", "--group_size=4",
            "--reward_fn=grpo_rules:frac_target", "--learning_rate=3e-3", "--vllm_max_model_len=4096",
            "--rollout_kwargs={'max_new_tokens': 8, 'max_rounds': 1, 'force_final_round': False, "
            "'context_cap': 4096, 'date': '2025-06-01'}", *extra]


def _log(out):
    rows = {}
    for line in open(os.path.join(out, "log.jsonl")):
        r = json.loads(line)
        rows[r["step"]] = r  # a resumed run re-logs nothing twice, but keep the last anyway
    return rows


def _rollouts(out):
    """rollouts.jsonl as {(step, item id, sample): row}; a (step, id, sample) written twice fails."""
    rows = {}
    for line in open(os.path.join(out, "rollouts.jsonl")):
        r = json.loads(line)
        key = (r["step"], r["id"], r["sample"])
        assert key not in rows, key
        rows[key] = r
    return rows


def _run(cmd, timeout=600):
    p = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p.stdout


def _torchrun(args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "grpo.py", *args]


@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_torchrun_two_ranks(world, tmp_path, engine):
    out = tmp_path / engine
    # mask_failed='group': every trajectory stays in the loss (frac_target gives a 0 now and then), so kept == 8
    _run(_torchrun(_args(world, out, 3, engine, ["--check_sync=True", "--mask_failed=group"])))
    log = _log(out)
    assert sorted(log) == [1, 2, 3]
    for r in log.values():
        assert r["kept"] == 2 * 4 and r["micro_batches"] >= 2 and r["stepped"]
        assert r["end_reasons"] == {"max_rounds": 8}
        assert r["logp_diff"] < 1e-3, r["logp_diff"]        # the canary: rollout logprobs == trainer's
        assert r["sync_agree"] == 1.0 and r["sync_maxdiff"] < 1e-3, r
    # every trajectory of both ranks, once, in rollouts.jsonl: 2 prompts x 4 samples a step, whose rewards are the
    # ones the step's log line averaged
    traj = _rollouts(out)
    for s in (1, 2, 3):
        mine = [r for (step, _, _), r in traj.items() if step == s]
        assert len(mine) == 8 and {r["sample"] for r in mine} == {0, 1, 2, 3} and len({r["id"] for r in mine}) == 2
        assert sum(r["reward"] for r in mine) / 8 == pytest.approx(log[s]["reward_mean"], abs=1e-6)
        assert all(r["end"] == "max_rounds" for r in mine)
    if engine == "vllm":  # the check has teeth: before the push vLLM still held the old weights
        assert any(r["sync_maxdiff_before"] > 1e-3 for r in log.values())
        # the same run in ONE process, no FSDP: vLLM's per-request seeds (rollout.request_seed) make the samples
        # rank-independent, so both runs train on the same trajectories and must get the same gradients despite
        # FSDP2 (reduce-scatter averaging vs the loss's x world, sync_check's no_grad forwards between steps)
        _run([sys.executable, "grpo.py", *_args(world, tmp_path / "one", 3, engine, ["--mask_failed=group"])])
        one = _log(tmp_path / "one")
        for s in (1, 2, 3):
            assert one[s]["reward_mean"] == log[s]["reward_mean"] and one[s]["gen_tokens"] == log[s]["gen_tokens"]
            assert one[s]["grad_norm"] == pytest.approx(log[s]["grad_norm"], rel=1e-4), (s, one[s], log[s])
        # the frozen control (runcpu.sh: learning_rate 0) samples step 1 exactly as the trained run, and skips the
        # recompute and the update that the trained run does at every step
        _run([sys.executable, "grpo.py", *_args(world, tmp_path / "frozen", 2, engine,
                                               ["--mask_failed=group", "--learning_rate=0"])])
        frozen = _log(tmp_path / "frozen")
        assert frozen[1]["reward_mean"] == one[1]["reward_mean"] and frozen[1]["gen_tokens"] == one[1]["gen_tokens"]
        assert all(one[s]["train_tokens"] > 0 and one[s]["stepped"] for s in (1, 2))
        assert all(frozen[s]["train_tokens"] == 0 and not frozen[s]["stepped"] for s in (1, 2))
    assert os.path.isfile(out / "final" / "config.json")
    assert open(out / "latest").read().strip() == "ckpt_0000003"


def test_item_seeds_draw_the_same_samples_every_epoch(world, tmp_path):
    # sample_seeds="item" (config/grpo_runcpu.py): a frozen run (learning_rate 0) over ONE step's items for three
    # epochs draws, for each (item, sample), the very same trajectory every epoch (common random numbers: its quarter
    # difference is exactly 0). The samples of one step differ from each other (they are sampled, from a random
    # model), so with the release's "step" seeds, new every step, the epochs would differ too
    out = tmp_path / "item"
    _run([sys.executable, "grpo.py", *_args(world, out, 3, "vllm", [
        "--learning_rate=0", "--limit=2", "--num_epochs=3", "--sample_seeds=item", "--mask_failed=group"])])
    rows = _rollouts(out)
    assert sorted({s for s, _, _ in rows}) == [1, 2, 3] and len({i for _, i, _ in rows}) == 2
    runs = {k: [(rows[(s, *k)]["reward"], rows[(s, *k)]["gen"]) for s in (1, 2, 3)]
            for k in {(i, n) for _, i, n in rows}}
    assert len(runs) == 2 * 4 and all(len(set(v)) == 1 for v in runs.values()), runs
    assert len({v[0] for v in runs.values()}) > 1, runs  # the samples of a step differ: they are sampled


def test_sigkill_then_resume_gives_the_same_loss(world, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    _run([sys.executable, "grpo.py", *_args(world, ref, 4, extra=["--save_interval=2"])])
    want = _log(ref)
    # the same run, killed (SIGKILL: no cleanup) while step 3 runs, after the step-2 checkpoint landed
    p = subprocess.Popen([sys.executable, "grpo.py", *_args(world, cut, 4, extra=["--save_interval=2"])], cwd=ROOT,
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not os.path.exists(cut / "latest") and time.time() - t0 < 300:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert open(cut / "latest").read().strip() == "ckpt_0000002"
    # as if the kill had come after step 3's log lines and before its checkpoint, mid-line: resume must drop them
    with open(cut / "rollouts.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "id": "stale", "sample": 0, "reward": 9.0}) + '\n{"step": 3, "id": "to')
    _run([sys.executable, "grpo.py", *_args(world, cut, 4, extra=["--save_interval=2", "--init_from=resume"])])
    got = _log(cut)
    # on-policy GRPO's loss VALUE is ~0 when lengths are equal (ratio 1, advantages sum to 0 per group), so
    # the gradient norm -- a function of the exact weights and the exact samples -- is compared as well
    for s in (3, 4):
        assert got[s]["loss"] == pytest.approx(want[s]["loss"], abs=1e-9), (s, got[s]["loss"], want[s]["loss"])
        assert got[s]["grad_norm"] == pytest.approx(want[s]["grad_norm"], rel=1e-6), (s, got[s], want[s])
        assert got[s]["reward_mean"] == want[s]["reward_mean"]
    assert want[3]["grad_norm"] != pytest.approx(want[4]["grad_norm"], rel=1e-3)
    # the stale step-3 lines were dropped on resume: every trajectory is there once (_rollouts fails on a
    # duplicate) and equal to the uninterrupted run's
    assert _rollouts(cut) == _rollouts(ref) and len(_rollouts(ref)) == 4 * 2 * 4


def test_faults_are_counted_not_fatal(world, tmp_path):
    out = tmp_path / "faults"
    # the real dual reward (offline generator + judges) and the real local tools, a scripted policy that
    # searches then answers, and faults raised inside tools / generator / judge (tests/grpo_rules.py)
    _run([sys.executable, "-m", "grpo_rules", *_args(world, out, 3, extra=[
        "--reward_fn=", "--n_prompts=4", "--rollout_kwargs={'max_new_tokens': 80, 'max_rounds': 3, "
        "'force_final_round': True, 'context_cap': 4096, 'date': '2025-06-01'}"])])
    log = _log(out)
    assert sorted(log) == [1, 2, 3]
    tot = lambda f: sum(f(r) for r in log.values())
    assert tot(lambda r: r["tool_errors"]) > 0                                  # tool faults -> observations
    assert tot(lambda r: r["reward_stats"].get("gen_failures", 0)) > 0          # generator faults -> counted
    assert tot(lambda r: r["reward_stats"].get("score_errors", 0)) > 0          # judge faults -> counted
    assert tot(lambda r: r["reward_errors"]) > 0 and tot(lambda r: r["filtered"].get("reward_error", 0)) > 0
    assert tot(lambda r: r["end_reasons"].get("answer", 0)) > 0 and tot(lambda r: r["reward_mean"]) > 0
    assert tot(lambda r: int(r["stepped"])) > 0                                 # and training went on
    # the engine fault of step 1's first call: all 16 trajectories errored, were re-run once, and succeeded
    assert (log[1]["rollout_error_retries"], log[1]["rollout_errored"]) == (16, 0)
    assert log[1]["end_reasons"].get("error", 0) == 0 and log[2]["rollout_error_retries"] == 0
