"""trainer.py and the losses the loops train with: the GRPO loop's loss divisor (accumulate_grads itself, both
loss_divisor modes, against an independent reference gradient), SFT's masked token-mean (sft.accumulate_grads
against plain cross entropy), RNG restore on resume, and the misuse checks (missing init_from, checkpoint of
another kind / model_sizes / optimizer). Tiny random Qwen3s on a small BPE with the Qwen special tokens."""
import json
import os
import random
import sys

import numpy as np
import pytest
import torch

import grpo
import sft
import trainer
from rollout import Policy

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_sft import make_tokenizer  # noqa: E402

SIZES = {"n_embd": 32, "mlp": 64, "n_layer": 2, "n_head": 2, "n_kv_head": 1, "head_dim": 16}


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from transformers import AutoTokenizer
    d = str(tmp_path_factory.mktemp("tok"))
    texts = ["the flag of the country is red and blue", "search the river and the tower", "answer: a crown"] * 20
    return AutoTokenizer.from_pretrained(make_tokenizer(d, texts))


def tiny(tok, seed=0, **sizes):
    return Policy(trainer.scratch_model(tok, vision=False, seed=seed, **(SIZES | sizes)), tok, None, False, "t")


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def records(tok, rng):
    """Three records of different lengths; the sampled part (loss_mask 1) follows a prompt."""
    out = []
    for n_prompt, n_gen in ((5, 7), (3, 12), (6, 4)):
        toks = [rng.randrange(20, len(tok)) for _ in range(n_prompt + n_gen)]
        out.append({"tokens": toks, "loss_mask": [0] * n_prompt + [1] * n_gen, "logprobs": [0.0] * len(toks),
                    "images": [], "end_reason": "answer"})
    return out


# ----------------------------------------------------------------------------------------------------------------
# GRPO: the loop's loss (accumulate_grads -> policy_loss) divides by sequences, nominal or kept

@pytest.mark.parametrize("mode", ["nominal", "kept"])
def test_grpo_accumulate_grads_divides_by_sequences(tok, monkeypatch, mode):
    pol = tiny(tok)
    recs = records(tok, random.Random(0))
    adv = torch.tensor([0.7, -1.3, 0.4])
    keep = [True, True, False]  # the third was filtered: it is in the nominal batch, not in the kept count
    monkeypatch.setattr(grpo, "loss_divisor", mode)
    monkeypatch.setattr(grpo, "max_tokens_per_micro", 16)  # two micro-batches: the divisor must be global
    pol.model.train()
    st = grpo.accumulate_grads(pol.model, pol, recs, adv, keep, torch.device("cpu"))
    got = grads(pol.model)
    assert st["n_seqs"] == 2 and st["micro_batches"] == 2 and st["divisor"] == (3 if mode == "nominal" else 2)
    # independent reference: on-policy (old = logp.detach(), ratio 1) the dual-clip loss of a token is -A in value
    # and has the gradient of -A·logp, so the gradient is that of -sum_i A_i sum_t mask·logp / n_sequences
    pol.model.zero_grad(set_to_none=True)
    n = 3 if mode == "nominal" else 2
    ref = 0.0
    for i in (0, 1):
        x = trainer.collate([trainer.trajectory_inputs(recs[i], pol)], 0)
        lp = trainer.sequence_logprobs(pol.model, x, grpo.temperature)
        ref = ref - adv[i] * (lp * x["loss_mask"]).sum() / n
    ref.backward()
    want = grads(pol.model)
    assert st["loss"] == pytest.approx(-(0.7 * 7 - 1.3 * 12) / n, abs=1e-5)  # token sums -A·n_gen, / n
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=1e-4), k


# ----------------------------------------------------------------------------------------------------------------
# SFT: the loop's loss is the token mean over loss_mask-1 tokens of the global batch

@pytest.mark.parametrize("budget", [0, 1, 10**6])  # off; every sequence alone; the budget never binding
def test_sft_accumulate_grads_is_masked_token_mean(tok, monkeypatch, budget):
    monkeypatch.setattr(sft, "max_tokens_per_micro", budget)  # max_tokens_per_micro: the same update
    pol = tiny(tok, seed=1)
    exs = records(tok, random.Random(1)) + records(tok, random.Random(2))
    micro, chunk = sft.step_indices(len(exs), 0, 1, 0, 2, 2, seed=4)  # 1 rank, 2 micro-steps of 2
    pol.model.train()
    from contextlib import nullcontext
    loss_sum, n_tok = sft.accumulate_grads(pol.model, exs, micro, chunk, pol, torch.device("cpu"), nullcontext(),
                                           world=1, ddp=False)
    got = grads(pol.model)
    pol.model.zero_grad(set_to_none=True)
    want_tok = sum(sum(exs[i]["loss_mask"]) for i in chunk)
    assert n_tok == want_tok and want_tok < sum(len(exs[i]["tokens"]) for i in chunk)
    ref = 0.0
    for i in chunk:  # plain cross entropy, one unpadded sequence at a time, only where loss_mask is 1
        ids = torch.tensor([exs[i]["tokens"]])
        logits = pol.model(input_ids=ids).logits[0, :-1].float()
        ce = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")
        ref = ref + (ce * torch.tensor(exs[i]["loss_mask"][1:], dtype=torch.float)).sum()
    (ref / want_tok).backward()
    assert float(loss_sum) == pytest.approx(float(ref.detach()), rel=1e-5)
    want = grads(pol.model)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6, rtol=1e-4), k


# ----------------------------------------------------------------------------------------------------------------
# checkpoints: RNG restored; misuse named before training

def _checkpoint(tmp_path, tok, kind="sft", sizes=None, seed=3):
    pol = tiny(tok, **(sizes or {}))
    opt = torch.optim.AdamW(pol.model.parameters(), lr=1e-3)
    pol.model(input_ids=torch.tensor([[21, 22, 23]])).logits.sum().backward()
    opt.step()
    out = str(tmp_path / "ck")
    meta = {"model_sizes": sizes or {}, "seed": seed}
    return trainer.save_checkpoint(out, 1, pol.model, opt, None, pol, kind, meta, state={"x": 1}), pol, opt, meta


def _draw():
    return torch.rand(3).tolist(), random.random(), float(np.random.rand())


def test_resume_restores_the_rng_state(tmp_path, tok):
    torch.manual_seed(11)
    random.seed(11)
    np.random.seed(11)
    ck, pol, opt, meta = _checkpoint(tmp_path, tok)
    after_save = _draw()  # what the uninterrupted run draws next
    torch.manual_seed(999)  # a restarted process seeds its RNGs afresh
    random.seed(999)
    np.random.seed(999)
    st = trainer.load_checkpoint(ck, pol.model, opt, expect={"kind": "sft", **meta})
    assert st["step"] == 1 and st["state"] == {"x": 1} and st["kind"] == "sft"
    assert _draw() == after_save


def test_init_from_that_does_not_exist(tmp_path):
    missing = str(tmp_path / "no" / "such_model")
    with pytest.raises(FileNotFoundError, match=f"init_from: path {missing} does not exist"):
        trainer.build_policy(missing)


def test_checkpoint_kind_sizes_seed_and_optimizer_checked(tmp_path, tok):
    ck, pol, opt, meta = _checkpoint(tmp_path, tok, kind="sft", sizes={"n_layer": 2})
    # GRPO resuming an SFT checkpoint
    with pytest.raises(ValueError, match=r"kind='sft' in the checkpoint, 'grpo' in this run"):
        trainer.load_checkpoint(ck, pol.model, opt, expect={"kind": "grpo", **meta})
    # other model_sizes than the checkpoint's; another seed
    with pytest.raises(ValueError, match=r"model_sizes=\{'n_layer': 2\} in the checkpoint, \{'n_layer': 3\}"):
        trainer.load_checkpoint(ck, pol.model, opt, expect={"kind": "sft", "model_sizes": {"n_layer": 3}, "seed": 3})
    with pytest.raises(ValueError, match=r"seed=3 in the checkpoint, 4 in this run"):
        trainer.load_checkpoint(ck, pol.model, opt, expect={"kind": "sft", "model_sizes": {"n_layer": 2}, "seed": 4})
    # an optimizer state that does not fit the model (here: a wider model): named, before AdamW ever runs
    other = tiny(tok, n_embd=48)
    opt2 = torch.optim.AdamW(other.model.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=r"optimizer.pt does not match model/ \(model.embed_tokens.weight"):
        trainer.load_checkpoint(ck, other.model, opt2, expect={"kind": "sft", **meta})
    assert not opt2.state  # nothing was restored
    # the matching run loads
    assert trainer.load_checkpoint(ck, pol.model, opt, expect={"kind": "sft", **meta})["step"] == 1


# ----------------------------------------------------------------------------------------------------------------
# the same checks through the scripts: one clear line, non-zero exit, nothing trained or written as a result

def _script(args):
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("RANK", None)
    return subprocess.run([sys.executable, *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_scripts_refuse_missing_init_from_and_sft_checkpoint_for_grpo(tmp_path, tok):
    missing = str(tmp_path / "nowhere")
    p = _script(["sft.py", f"--init_from={missing}", f"--out_dir={tmp_path / 'sft'}"])
    assert p.returncode != 0 and f"init_from: path {missing} does not exist" in p.stderr
    assert "Repo id" not in p.stderr
    ck, _, _, _ = _checkpoint(tmp_path, tok, kind="sft", seed=42)  # an SFT run's checkpoint in out_dir
    out = os.path.dirname(ck)
    items = tmp_path / "rl.jsonl"  # grpo reads its items before any model: give it valid ones
    items.write_text("".join(json.dumps({"id": f"i{k}", "prompt": "p", "gt_image": "gt.png"}) + "\n" for k in range(8)))
    p = _script(["grpo.py", "config/grpo_runcpu.py", "--init_from=resume", f"--out_dir={out}", "--engine=hf",
                 f"--data_path={items}"])
    assert p.returncode != 0 and "kind='sft' in the checkpoint, 'grpo' in this run" in p.stderr, p.stderr[-2000:]
    assert not os.path.exists(os.path.join(out, "final")) and not os.path.exists(os.path.join(out, "log.jsonl"))
