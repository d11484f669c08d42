# make_data.py on the offline mini world: a full run (oracle teacher through the real tools, offline generator and
# judge), its formats loaded by the consumers' own loaders, the split's disjointness checked independently,
# resumability (torn lines, SIGKILL mid-stage -> identical output) and the splitter's near-duplicate rule.
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
import make_data as md  # noqa: E402

SIZES = dict(seed=5, n_countries=10, bench_countries=2, rl_countries=2, n_sft=60, n_rl=20, n_bench=20,
             n_distractors=100)


@pytest.fixture(scope="module")
def world(make_mini_world):
    return str(make_mini_world(**SIZES))


def offline_cfg(world, out, **kw):
    return {**dict(world_dir=world, out_dir=str(out), tokenizer_dir=os.path.join(world, "tokenizer"), tokenize_vl=True,
                   date="2025-06-01", split_by="source", workers=2), **kw}


def rows(path):
    return [json.loads(x) for x in open(path)]


@pytest.fixture(scope="module")
def offline_run(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("made")
    md.main(**offline_cfg(world, out))
    return str(out)


def test_offline_run_formats_and_disjoint_splits(world, offline_run):
    o = offline_run
    sft, rl, bench = rows(f"{o}/sft.jsonl"), rows(f"{o}/rl.jsonl"), rows(f"{o}/bench.jsonl")
    n_world = sum(len(rows(f"{world}/{s}.jsonl")) for s in ("sft", "rl", "bench"))
    assert len(sft) + len(rl) + len(bench) == n_world  # the oracle's trajectories all survive curation
    assert rl and bench and sft
    # independent disjointness: ids, normalized prompts, answer entities and country clusters
    world_items = {it["id"]: it for s in ("sft", "rl", "bench") for it in rows(f"{world}/{s}.jsonl")}
    split_ids = [{r["id"] for r in x} for x in (sft, rl, bench)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not split_ids[a] & split_ids[b]
            pa = {md.normalize(world_items[i]["prompt"]) for i in split_ids[a]}
            pb = {md.normalize(world_items[i]["prompt"]) for i in split_ids[b]}
            assert not pa & pb
            ea = {world_items[i]["solution"]["answer_entity"] for i in split_ids[a]}
            eb = {world_items[i]["solution"]["answer_entity"] for i in split_ids[b]}
            assert not ea & eb
    summary = json.load(open(f"{o}/split.json"))
    assert summary["overlap"] == {"prompt": 0, "entity": 0, "near_dup": 0}
    # our trajectory records: the contract's keys, aligned token arrays, loss only on assistant tokens
    import trainer
    policy = md.load_tokenizing_policy(SimpleNamespace(tokenizer_dir=f"{world}/tokenizer", tokenize_vl=True))
    pad = policy.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for r in sft:
        assert r["end_reason"] == "answer" and r["answer"]["reference_images"]
        assert len(r["tokens"]) == len(r["loss_mask"]) == len(r["logprobs"]) and 0 < sum(r["loss_mask"])
        assert sum(r["tool_calls"].values()) == sum(m["role"] == "assistant" for m in r["messages"]) - 1
        for im in r["images"]:
            assert r["tokens"][im["token_start"]:im["token_start"] + im["num_tokens"]] == [pad] * im["num_tokens"]
        # the IMG ids of the answer are the ones the real image_search listed for the solution's images
        obs = "\n".join(m["content"] for m in r["messages"] if m["role"] == "user")
        for ref in r["answer"]["reference_images"]:
            assert f"{ref['img_id']}: title: {ref['title']}" in obs
    x = trainer.trajectory_inputs(sft[0], policy)  # the trainer's view of a record
    assert x["input_ids"].shape[0] == len(sft[0]["tokens"]) and "pixel_values" in x
    # sft.py reads both our records and the release's sharegpt rows to the same tokens
    import sft as sft_mod
    ours, c1 = sft_mod.load_examples(f"{o}/sft.jsonl", policy, cutoff=100000, overlong_mode="truncate")
    rel, c2 = sft_mod.load_examples(f"{o}/release/sft_sharegpt.jsonl", policy, cutoff=100000, overlong_mode="truncate")
    assert c1["rows"] == c2["rows"] == len(sft)
    assert [e["tokens"] for e in ours] == [e["tokens"] for e in rel] == [r["tokens"] for r in sft]
    for row in rows(f"{o}/release/sft_sharegpt.jsonl"):
        assert sum(m["content"].count("<image>") for m in row["messages"]) == len(row["images"])
        assert all(os.path.exists(os.path.join(o, "release", p)) for p in row["images"])
    # RL / benchmark items: eval_knowgen's loader, gt images on disk, the release's exact key sets
    import eval_knowgen
    for path in (f"{o}/bench.jsonl", f"{o}/release/knowgen.jsonl", f"{o}/rl.jsonl"):
        for it in eval_knowgen.load_knowgen(path):
            assert os.path.exists(it["gt_image"])
    assert all(set(r) == {"id", "prompt", "gt_image"} for r in rows(f"{o}/release/rl.jsonl"))
    assert all(set(r) == {"id", "prompt", "meta", "gt_image"} for r in rows(f"{o}/release/knowgen.jsonl"))
    assert all(os.path.exists(os.path.join(o, "release", r["gt_image"])) for r in rows(f"{o}/release/rl.jsonl"))


def test_oracle_answers_score_full_reward(offline_run):
    """reward.score as grpo.py calls it (data_dir = the items' dir): the oracle answer against its own ground
    truth gets the maximum reward, so trajectories, ground truths and items agree."""
    import reward
    o = offline_run
    items = rows(f"{o}/rl.jsonl")
    trajs = {r["id"]: r for r in rows(f"{o}/trajectories.jsonl")}
    res = reward.score([trajs[it["id"]] for it in items], items, data_dir=o, out_dir=f"{o}/gen", judge_cache=None)
    assert [r["error"] for r in res] == [None] * len(items)
    assert all(r["reward"] == pytest.approx(1.0 - 0.5 * 0.5 * 0.4 * (r["text_accuracy_na"] is True)) for r in res)


def test_curation_rejects_broken_rows(world, tmp_path):
    """Rule filters: a trajectory with no answer, a too-long one and one whose judge said "no search needed"
    are not kept, with their reasons; a missing gt row fails the item as failed:gt."""
    out = tmp_path / "m"
    md.main(**offline_cfg(world, out, stages="prompts,traj,gt,judge"))
    trajs = rows(f"{out}/trajectories.jsonl")
    ids = [r["id"] for r in trajs]
    trajs[0].update(end_reason="no_answer", answer=None)
    trajs[1]["tokens"] = [0] * 40000
    judge = rows(f"{out}/judge.jsonl")
    next(j for j in judge if j["id"] == ids[2])["needs_search"] = 0
    gt = [g for g in rows(f"{out}/gt.jsonl") if g["id"] != ids[3]]
    for name, data in (("trajectories", trajs), ("judge", judge), ("gt", gt)):
        md.write_jsonl(f"{out}/{name}.jsonl", data)
    md.main(**offline_cfg(world, out, stages="curate"))
    cur = {r["id"]: r for r in rows(f"{out}/curation.jsonl")}
    assert cur[ids[0]]["reasons"] == ["invalid:no_answer"]
    assert cur[ids[1]]["reasons"] == ["too_long"]
    assert cur[ids[2]]["reasons"] == ["judge:needs_search"]
    assert cur[ids[3]]["reasons"] == ["failed:gt"]
    assert sum(r["kept"] for r in cur.values()) == len(cur) - 4
    made = {r["id"] for s in ("rl", "bench") for r in rows(f"{out}/{s}.jsonl")} | \
        {r["id"] for r in rows(f"{out}/sft.jsonl")}
    assert not made & set(ids[:4])


def test_stage_files_are_read_with_repair(tmp_path):
    """make_data reads its stage files through dataio.read_jsonl with repair: a torn tail is cut, a missing
    file is no rows, a bad complete line is an error naming file:line."""
    p = tmp_path / "x.jsonl"
    assert md.stage_rows(str(p)) == []
    p.write_text('{"id": "a"}\n{"id": "b"}\n{"id": "c", "tr')
    assert [r["id"] for r in md.stage_rows(str(p))] == ["a", "b"]
    assert p.read_text() == '{"id": "a"}\n{"id": "b"}\n'
    p.write_text('{"id": "a"}\n{oops}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=f"{p}:2: not valid JSON"):
        md.stage_rows(str(p))


def test_stage_file_is_in_id_order_whatever_thread_finishes_first(tmp_path):
    """run_stage's threads finish in any order (here forced: each job waits for the next one to finish); the file
    it leaves is in (id, sample) order, rows kept from an earlier run included, so the same seed gives the same
    file (sft.py reads instruct.jsonl in file order)."""
    import threading
    path = tmp_path / "stage.jsonl"
    path.write_text('{"id": "j5", "sample": 0, "v": "earlier run"}\n')  # a row a previous (killed) run finished
    jobs = [{"id": f"j{i}"} for i in (0, 1, 2, 3, 4, 6)]
    finished = {j["id"]: threading.Event() for j in jobs}
    order = []

    def fn(job, usage):
        later = jobs[jobs.index(job) + 1]["id"] if job is not jobs[-1] else None
        if later:
            assert finished[later].wait(30)
        order.append(job["id"])
        finished[job["id"]].set()
        return {"id": job["id"], "sample": 0, "v": "this run"}

    cost = md.run_stage(SimpleNamespace(workers=len(jobs), out_dir=str(tmp_path)), "t", jobs, fn, str(path))
    assert order == ["j6", "j4", "j3", "j2", "j1", "j0"] and cost["rows"] == 6  # really finished last-first
    assert [r["id"] for r in md.stage_rows(str(path))] == ["j0", "j1", "j2", "j3", "j4", "j5", "j6"]
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def strip_volatile(path, out_dir):
    """A file's rows sorted by id, minus wall-clock fields, with the out_dir spelled the same."""
    text = open(path).read().replace(str(out_dir), "<OUT>")
    rs = [json.loads(x) for x in text.splitlines() if x.strip()]
    for r in rs:
        for k in ("seconds", "usage"):
            r.pop(k, None)
    return sorted(rs, key=lambda r: json.dumps(r, sort_keys=True))


def test_sigkill_mid_stage_then_rerun_is_identical(world, offline_run, tmp_path):
    out = tmp_path / "killed"
    args = [sys.executable, os.path.join(ROOT, "make_data.py")] + \
        [f"--{k}={v}" for k, v in offline_cfg(world, out, workers=1).items()]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    traj = out / "trajectories.jsonl"
    total = len(rows(f"{offline_run}/prompts.jsonl"))
    for _attempt in range(3):  # under heavy load the stage may finish before the kill lands: try again
        shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and not (traj.exists() and traj.stat().st_size > 0) and p.poll() is None:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait()
        done_at_kill = len(md.stage_rows(str(traj)))  # (cuts a tail the kill tore)
        if 0 < done_at_kill < total:
            break
    assert 0 < done_at_kill < total  # really interrupted inside the trajectory stage
    with open(traj, "a") as f:  # and as if the kill had torn a write in half
        f.write('{"id": "mw_sft_9999", "sample": 0, "prom')
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "dropping a torn last line" in r.stdout
    costs = [json.loads(x) for x in open(out / "costs.jsonl")]
    assert [c["jobs"] for c in costs if c["stage"] == "traj"] == [total - done_at_kill]  # finished rows skipped
    for f in ("trajectories.jsonl", "gt.jsonl", "judge.jsonl", "curation.jsonl", "sft.jsonl", "rl.jsonl",
              "bench.jsonl", "release/sft_sharegpt.jsonl", "release/rl.jsonl", "release/knowgen.jsonl"):
        assert strip_volatile(out / f, out) == strip_volatile(os.path.join(offline_run, f), offline_run), f
    for g in rows(f"{offline_run}/gt.jsonl"):
        assert open(out / g["gt_image"], "rb").read() == open(os.path.join(offline_run, g["gt_image"]), "rb").read()


def test_instruct_relation_share(world):
    """instruct_relation_frac: that share of the fact lookups asks about a relation of the entity (the kind's
    INSTRUCT_RELATION templates), the rest keep the generic wording; the entities asked about are the same at any
    share."""
    def items(frac):
        c = SimpleNamespace(**{**md.config(), "world_dir": world, "seed": 3, "instruct_chats": 400,
                               "instruct_relation_frac": frac})
        return md.instruct_items(c)
    rel = {t for ts in md.INSTRUCT_RELATION.values() for t in ts}
    share = {}
    for frac in (0.0, 0.5, 1.0):
        its = items(frac)
        facts = [it for it in its if [h["name"] for h in it["solution"]["hops"]] == ["search"]
                 and it["solution"]["gen_prompt"] is None]
        n_rel = sum(any(it["prompt"] == t.format(n=it["solution"]["answer_entity"]) for t in rel) for it in facts)
        share[frac] = n_rel / len(facts)
        if frac == 0.0:
            base = its
        else:
            assert [it["solution"]["answer_entity"] for it in its] == [it["solution"]["answer_entity"] for it in base]
    assert share[0.0] == 0 and 0.3 < share[0.5] < 0.7 and share[1.0] > 0.9, share


def test_splitter_groups_near_duplicates_and_entities():
    """Template-mates naming different things may be split; a paraphrase of a prompt (same names) and items
    sharing a target entity always land in one split (auto split, many seeds)."""
    c = SimpleNamespace(**{**md.config(), "bench_frac": 0.3, "rl_frac": 0.5})
    cats = md.CATEGORIES
    items = []
    for i in range(60):
        items.append({"id": f"t{i:02d}", "prompt": f"A portrait photo of the lead actor of the film Night of Zor{i}x.",
                      "meta": {"category": cats[i % 5], "difficulty": "easy"}, "entities": [f"Actor{i}"]})
    items.append({"id": "p0", "prompt": "A portrait photo of the lead actor of the film Night of Zor7x, in black and white.",
                  "meta": {"category": cats[3], "difficulty": "easy"}, "entities": ["someone"]})
    items.append({"id": "e0", "prompt": "The moon base where Actor9 once lived, at night, wide angle shot.",
                  "meta": {"category": cats[1], "difficulty": "hard"}, "entities": ["Actor9"]})
    comps = md.components(items, c)
    comp_of = {it["id"]: k for k, comp in enumerate(comps) for it in comp}
    assert comp_of["p0"] == comp_of["t07"] and comp_of["e0"] == comp_of["t09"]
    assert len(comps) == 60  # every other template-mate is its own component
    for seed in range(5):
        c.seed = seed
        splits = md.assign_splits(comps, c)
        where = {it["id"]: s for s, v in splits.items() for it in v}
        assert where["p0"] == where["t07"] and where["e0"] == where["t09"]
        assert len(splits["bench"]) > 5 and len(splits["rl"]) > 5 and len(splits["sft"]) > 5
        assert md.overlap_report(splits, c) == {"prompt": 0, "entity": 0, "near_dup": 0}


def test_instruct_chats_are_generic_lookups_through_the_real_tools(world, tmp_path):
    """--stages=instruct: the instruct policy's chats. Each asks about one world entity in a generic wording under a
    generic system prompt (never the agent's, never an image-generation request); its tool call copies the name
    from the prompt, the tool response is the real local search's, and the answer copies the page or the image id
    the response showed. A re-run adds nothing; without a world the stage refuses with a message."""
    md.main(**offline_cfg(world, tmp_path, stages="instruct", instruct_chats=40))
    recs = rows(tmp_path / "instruct.jsonl")
    assert len(recs) == 40 and len({r["id"] for r in recs}) == 40
    assert [r["id"] for r in recs] == sorted(r["id"] for r in recs)  # one order at one seed (sft.py reads it as is)
    import rollout
    generic = [t.format(tools=rollout.tool_signatures(), date="2025-06-01") for t in md.INSTRUCT_SYSTEM]
    agent = {rollout.system_prompt("2025-06-01", rollout.settings(dict(system_style=st)))
             for st in ("paper", "compact")}
    for r in recs:
        m = r["messages"]
        assert r["end_reason"] == "answer" and len(r["tokens"]) == len(r["loss_mask"]) > 0
        assert m[0]["content"] in generic and m[0]["content"] not in agent
        assert not any(w in m[1]["content"].lower() for w in ("generat", "draw", "design", "create"))
        calls = [json.loads(x["content"].split("<tool_call>")[1].split("</tool_call>")[0]) for x in m
                 if x["role"] == "assistant" and "<tool_call>" in x["content"]]
        assert 1 <= len(calls) <= 2 and sum(r["tool_calls"].values()) == len(calls)
        for c in calls:
            q = c["arguments"]["queries"][0] if c["name"] == "search" else c["arguments"]["query"]
            # the name is copied from the prompt (an image query may prefix it: "Flag of <name>")
            assert q in m[1]["content"] or q.rsplit(" of ", 1)[-1] in m[1]["content"], (q, m[1]["content"])
        responses = "\n".join(x["content"] for x in m if x["role"] == "user" and "<tool_response>" in x["content"])
        ans = r["answer"]
        assert ans["gen_prompt"] in responses  # the page or the image title, copied from what the tool returned
        assert all(ref["img_id"] in responses for ref in ans["reference_images"])
    assert {sum(r["tool_calls"].values()) for r in recs} == {1, 2}  # lookups of a fact, an image, or both
    def asked(r):  # the name the chat's first call looked up
        c = json.loads(r["messages"][2]["content"].split("<tool_call>")[1].split("</tool_call>")[0])["arguments"]
        return (c.get("queries") or [c.get("query")])[0]
    relational = sum(r["prompt"] == t.format(n=asked(r)) for ts in md.INSTRUCT_RELATION.values() for t in ts
                     for r in recs)
    assert 0 < relational < 40  # some ask about a relation of the entity (instruct_relation_frac)
    md.main(**offline_cfg(world, tmp_path, stages="instruct", instruct_chats=40))  # resumes: nothing new
    assert len(rows(tmp_path / "instruct.jsonl")) == 40
    with pytest.raises(ValueError, match="instruct needs --world_dir"):
        md.main(**offline_cfg("", tmp_path / "x", stages="instruct"))

