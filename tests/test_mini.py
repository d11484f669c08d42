"""The main job's statistics: the bootstrap interval of the overall K-Score (eval_knowgen.py), GRPO's quarter-gain
and paired-gain checks and the copy probes (data/miniworld/report.py)."""
import importlib.util
import json
import os

import pytest

import eval_knowgen as ek

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# data/miniworld/report.py as a module (by path, as conftest loads data/miniworld/prepare.py)
_spec = importlib.util.spec_from_file_location("miniworld_report", os.path.join(ROOT, "data", "miniworld", "report.py"))
report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report)


def row(i, cat, v=0.0, t=0.0, f=0.0, a=0.0, na=False):
    return {"id": f"x{i}", "category": cat, "visual_correctness": v, "text_accuracy": t, "faithfulness": f,
            "aesthetics": a, "text_accuracy_na": na}


def test_bootstrap_ci_brackets_overall_and_collapses_when_constant():
    same = [row(i, "art", v=1, t=1, f=1, a=1) for i in range(5)] + [row(9 + i, "anime", v=0.5) for i in range(4)]
    lo, hi = ek.bootstrap_ci(same, n_boot=200)
    assert lo == hi == ek.aggregate(same)["overall"]  # no spread within a group -> a point
    mixed = [row(i, "art", v=i % 2, t=i % 2) for i in range(40)] + [row(100 + i, "anime", v=(i % 3) / 2)
                                                                   for i in range(40)]
    lo, hi = ek.bootstrap_ci(mixed, n_boot=500)
    assert lo < ek.aggregate(mixed)["overall"] < hi
    assert hi - lo < 20  # 40 items per group: a few K points, not the whole range
    one_group = [r for r in mixed if r["category"] == "art"]
    assert ek.bootstrap_ci(one_group, n_boot=100)[0] < ek.aggregate(one_group)["overall"]


def test_paired_bootstrap_diff_cancels_item_difficulty():
    a = [row(i, "art", v=i % 2, t=i % 2) for i in range(40)] + [row(100 + i, "anime", v=(i % 3) / 2) for i in range(40)]
    # b = a with every item's faithfulness +0.5: K +0.05 on every item -> +5 overall in EVERY resample of the same items
    b = [dict(r, faithfulness=r["faithfulness"] + 0.5) for r in a]
    assert ek.paired_bootstrap_diff(a, b, n_boot=300) == (5.0, 5.0, 5.0)
    lo_a, hi_a = ek.bootstrap_ci(a, n_boot=300)
    lo_b, hi_b = ek.bootstrap_ci(b, n_boot=300)
    assert lo_b < hi_a  # the unpaired intervals overlap: they cannot tell this +5 apart
    # one art item's V 0 -> 1: art K +0.4/40 = +1 point, overall (mean of two groups) +0.5; resamples without it: 0
    one = [dict(r, visual_correctness=1) if r["id"] == "x0" else r for r in a]
    d, lo, hi = ek.paired_bootstrap_diff(a, one, n_boot=300)
    assert d == 0.5 and lo == 0 and hi > 0.5
    assert ek.paired_bootstrap_diff(one, a, n_boot=300)[0] == -0.5
    with pytest.raises(ek.EvalError, match="same items"):
        ek.paired_bootstrap_diff(a, a[1:])


def test_paired_lines_names_rows_by_name_or_folder(tmp_path):
    a = [row(i, "art", f=i % 2) for i in range(6)] + [row(10 + i, "anime", a=i % 2) for i in range(4)]
    runs = []
    for name, rows in (("direct", a), ("SFT", [dict(r, visual_correctness=1) for r in a])):
        d = tmp_path / name.lower()
        d.mkdir()
        (d / "judged.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append((name + " row", str(d)))
    md = ek.paired_lines(runs, ek.named_pairs("sft vs direct row"))
    # V 0 -> 1 on every item: +40 K in both groups, in every resample
    assert md[-1] == "| SFT row | direct row | +40.00 | [+40.00, +40.00] | yes |"
    with pytest.raises(ek.EvalError, match="'grpo'"):
        ek.paired_lines(runs, [("grpo", "direct")])
    with pytest.raises(ek.EvalError, match="not 'B vs A'"):
        ek.named_pairs("sft minus direct")


def test_quarter_gain():
    assert report.quarter_gain([0.1] * 7) is None
    d, se = report.quarter_gain([0.0, 0.1, 0.0, 0.1, 0.5, 0.5, 0.6, 0.5, 0.6, 0.6, 0.5, 0.6])
    assert abs(d - (0.5667 - 0.0333)) < 1e-3 and 0 < se < 0.05


def test_item_quarter_gain():
    """Eight steps over the same 3 items (two samples each): the items' spread in difficulty cancels in the per-item
    pairing. q = 2 of 8 steps: item a gains 0.2 from the first quarter to the last, b 0.1, c 0."""
    base = {"a": 0.1, "b": 0.7, "c": 0.4}
    gain = {"a": 0.2, "b": 0.1, "c": 0.0}
    rows = [{"step": st, "id": i, "sample": s, "reward": base[i] + (gain[i] if st > 6 else 0.0) + 0.01 * s}
            for st in range(1, 9) for i in "abc" for s in (0, 1)]
    d, se, n = report.item_quarter_gain(rows)
    assert n == 3 and abs(d - 0.1) < 1e-9 and abs(se - 0.1 / 3 ** 0.5) < 1e-9
    # items that never come back (one pass over fresh items) have no pair: None, not a number
    assert report.item_quarter_gain([dict(r, id=f"{r['id']}{r['step']}") for r in rows]) is None
    assert report.item_quarter_gain(rows[:6 * 7]) is None  # 7 steps: under 8


def test_item_quarter_gain_over_control():
    """The frozen control draws the same items and request seeds: an epoch whose draw of samples scores 0.05 lower
    pulls both sides' quarter difference down, and only the run's learned gain (a 0.2, b 0.1, c 0) is left."""
    base = {"a": 0.1, "b": 0.7, "c": 0.4}
    gain = {"a": 0.2, "b": 0.1, "c": 0.0}
    draw = lambda st: -0.05 if st > 6 else 0.0
    row = lambda st, i, s, r: {"step": st, "id": i, "sample": s, "reward": r, "k_score": r, "r_text": r}
    ctl = [row(st, i, s, base[i] + draw(st)) for st in range(1, 9) for i in "abc" for s in (0, 1)]
    run = [row(st, i, s, base[i] + draw(st) + (gain[i] if st > 6 else 0.0)) for st in range(1, 9) for i in "abc"
           for s in (0, 1)]
    assert abs(report.item_quarter_gain(run)[0] - 0.05) < 1e-9  # the draw hides half the gain ...
    d, se, n = report.item_quarter_gain_over_control(run, ctl)
    assert n == 3 and abs(d - 0.1) < 1e-9 and abs(se - 0.1 / 3 ** 0.5) < 1e-9  # ... the control gives it back
    # the control re-weighted at the run's λ: a λ = 1 run against a control whose r_text rose as the run's did
    ctl_t = [dict(r, r_text=r["r_text"] + (gain[r["id"]] if r["step"] > 6 else 0.0)) for r in ctl]
    assert abs(report.item_quarter_gain_over_control(run, ctl_t, lam=1.0)[0]) < 1e-9
    assert report.item_quarter_gain_over_control(run[:6 * 7], ctl) is None  # 7 steps: under 8


def test_paired_gain():
    ctl = [0.2, 0.5, 0.1, 0.4, 0.3, 0.6]  # item difficulty swings the frozen policy's curve ...
    d, se = report.paired_gain([0.2] + [c + 0.05 + 0.01 * (i % 2) for i, c in enumerate(ctl[1:])], ctl)
    assert abs(d - 0.054) < 1e-9 and 0 < se < 0.01  # ... and cancels in the paired difference (step 1 left out)
    assert report.paired_gain([0.3, 0.2, 0.1], ctl) is None  # under 4 common steps
    assert report.paired_gain(ctl, ctl) == (0.0, 0.0)


def test_category_gain():
    row = lambda step, i, s, cat, r: {"step": step, "id": i, "sample": s, "category": cat, "reward": r}
    # the control: the same items at the same steps; step 1 is left out (the same policy on both sides)
    ctl = [row(1, "a", s, "film", 0.9) for s in (0, 1)] + [row(2, "a", s, "film", 0.5) for s in (0, 1)] + \
          [row(2, "b", s, "game", 0.8) for s in (0, 1)] + [row(3, "c", s, "film", 0.2) for s in (0, 1)]
    run = [row(1, "a", s, "film", 0.1) for s in (0, 1)] + [row(2, "a", 0, "film", 1.0), row(2, "a", 1, "film", 0.6)] + \
          [row(2, "b", s, "game", 0.4) for s in (0, 1)] + [row(3, "c", s, "film", 0.3) for s in (0, 1)] + \
          [row(4, "d", 0, "film", 1.0)]  # a step the control never reached: unpaired, left out
    g = report.category_gain(run, ctl)
    assert set(g) == {"film", "game"}
    n, cm, d, se = g["film"]  # units: (2, a) 0.8 - 0.5 = 0.3 and (3, c) 0.3 - 0.2 = 0.1
    assert (n, round(cm, 9), round(d, 9), round(se, 9)) == (2, 0.35, 0.2, 0.1)
    assert g["game"][0] == 1 and abs(g["game"][2] + 0.4) < 1e-9 and g["game"][3] is None
    # a λ = 1 run against the λ = 0.5 control: the control's reward re-weighted to r_text alone
    parts = lambda r, k, t: {**r, "k_score": k, "r_text": t}
    ctl = [parts(row(2, "a", s, "film", 0.5), 0.2, 0.8) for s in (0, 1)]
    run = [row(2, "a", s, "film", 0.8) for s in (0, 1)]  # r_text 0.8, the control's too: no gain
    assert report.category_gain(run, ctl)["film"][2] > 0.29  # the unweighted comparison would claim +0.3
    n, cm, d, se = report.category_gain(run, ctl, lam=1.0)["film"]
    assert (n, round(cm, 9), round(d, 9)) == (1, 0.8, 0.0)


def test_grpo_section_compares_each_run_at_its_own_lam(tmp_path):
    """results.md's GRPO table: a λ = 1 run whose reward is exactly the frozen (λ = 0.5) control's r_text has gained
    nothing, although its reward sits above the control's λ = 0.5 reward at every step."""
    k, t = [0.2, 0.4, 0.3, 0.5, 0.1, 0.6], [0.8, 0.9, 0.7, 1.0, 0.6, 0.9]
    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)
    ctl = write("ctl.jsonl", [{"step": i + 1, "lam": 0.5, "reward_mean": (a + b) / 2, "k_score": a, "r_text": b}
                              for i, (a, b) in enumerate(zip(k, t))])
    run = write("run.jsonl", [{"step": i + 1, "lam": 1.0, "reward_mean": b, "k_score": a, "r_text": b}
                              for i, (a, b) in enumerate(zip(k, t))])
    md = report.grpo_section([("λ = 1", run)], ctl, str(tmp_path))
    row = next(line for line in md if line.startswith("| λ = 1 |")).split(" | ")
    assert row[9] == "+0.000 ± 0.000"  # the unweighted comparison: +0.29 a step
    assert row[7] == row[8] == "—"  # no rollouts.jsonl beside the logs: no item-paired quarter test
    assert os.path.exists(tmp_path / "grpo_curves.png")


def test_log_lam_and_reward_at():
    assert report.reward_at(0.2, 0.8, 0.5) == 0.5 and report.reward_at(None, 0.8, 1.0) == 0.8
    assert report.log_lam([{"lam": 0.0, "reward_mean": 0.3, "k_score": 0.3, "r_text": 0.9}]) == 0.0
    # a log written before grpo.py logged λ: solved from reward = (1-λ)K + λ r_text where K != r_text
    old = [{"reward_mean": 0.5, "k_score": 0.5, "r_text": 0.5}, {"reward_mean": 0.65, "k_score": 0.6, "r_text": 0.8}]
    assert report.log_lam(old) == 0.25
    assert str(report.log_lam([{"reward_mean": 0.6, "k_score": 0.6, "r_text": 0.9}])) == "0.0"
    with pytest.raises(ValueError, match="λ"):
        report.log_lam(old[:1])


# ---- the copy probe, on hand-made trajectories (names the policy never saw) ----------------------------------
ITEM = {"id": "q1", "prompt": "Paint the flag of the country whose capital is Zubrak.",
        "solution": {"hops": [{"name": "search", "arguments": {"queries": ["Zubrak"], "top_k": 3}},
                              {"name": "image_search", "arguments": {"query": "flag of Velmora", "top_k": 3}}]}}


def traj(first_query, second_query, tool_text="Zubrak is the capital city of Velmora. It lies on a river."):
    call = lambda name, key, q: ('<think>look it up</think>\n<tool_call>\n{"name": "%s", "arguments": {"%s": %s}}'
                                 '\n</tool_call>' % (name, key, q))
    return {"id": "q1", "messages": [
        {"role": "system", "content": "Research agent."}, {"role": "user", "content": ITEM["prompt"]},
        {"role": "assistant", "content": call("search", "queries", f'["{first_query}"]')},
        {"role": "user", "content": f"<tool_response>\n{tool_text}\n</tool_response>"},
        {"role": "assistant", "content": call("image_search", "query", f'"{second_query}"')}]}


def test_copy_probe_reads_prompt_and_tool_response_names():
    assert report.copy_probe(traj("Zubrak capital", "flag of Velmora"), ITEM) == {"first": True, "later": [True]}
    # an invented name in place of the prompt's, and one in place of the tool response's
    assert report.copy_probe(traj("Zubak capital", "flag of Velmora"), ITEM)["first"] is False
    assert report.copy_probe(traj("Zubrak", "flag of Velmara"), ITEM)["later"] == [False]
    # the tool response never named Velmora: nothing to copy from it, so that hop does not count either way
    assert report.copy_probe(traj("Zubrak", "flag", tool_text="No page matches."), ITEM)["later"] == []
    rates = report.copy_rates([traj("Zubrak", "flag of Velmora"), traj("Zubak", "Velmara flag")], {"q1": ITEM})
    assert rates["copy_first_query"] == 0.5 and rates["copy_from_tool"] == 0.5 and rates["copy_first_n"] == 2


def test_copy_column_reads_the_eval_runs_files(tmp_path):
    # the results table's copy cell: copy_rates over the run's trajectories of the items its config.json evaluated
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(dict(ITEM, id=i, meta={"category": "geography"}))
                                                    for i in ("q1", "q2")) + "\n")
    (tmp_path / "config.json").write_text(json.dumps({"items_path": str(tmp_path / "items.jsonl"), "limit": 1}))
    trajs = [dict(traj("Zubrak", "flag of Velmora"), sample=0), dict(traj("Zubak", "flag"), id="q2", sample=0)]
    (tmp_path / "trajectories.jsonl").write_text("\n".join(json.dumps(t) for t in trajs) + "\n")
    assert report.copy_column(str(tmp_path)) == "100% / 100%"  # limit=1: q2 was not evaluated by this run
    (tmp_path / "trajectories.jsonl").write_text(json.dumps({"id": "q1", "sample": 0, "messages": []}) + "\n")
    assert report.copy_column(str(tmp_path)) == "— / —"  # no tool call (the direct / oracle rows)


def test_forced_probe_cases_cut_before_each_call_and_name_its_source():
    # an oracle record: tokens 0..19, assistant turns at 4-6 (search), 11-13 (image_search), 17-19 (answer)
    rec = dict(traj("Zubrak", "flag of Velmora"), tokens=list(range(20)),
               loss_mask=[0] * 4 + [1] * 3 + [0] * 4 + [1] * 3 + [0] * 3 + [1] * 3, images=[])
    rec["messages"].append({"role": "user", "content": "<tool_response>\nIMG_001: title: Flag of Velmora\n</tool_response>"})
    rec["messages"].append({"role": "assistant", "content": "<answer>{}</answer>"})
    cases = report.forced_probe_cases(rec)
    assert [(k, p, n) for k, p, n in cases] == [(1, list(range(4)), ["Zubrak"]), (2, list(range(11)), ["Velmora"])]
    assert report.forced_probe_cases(rec, hops=1) == cases[:1]
    # an image before the second call: only the first is probed (prefixes stay text-only)
    assert report.forced_probe_cases(dict(rec, images=[{"token_start": 8, "num_tokens": 4}])) == cases[:1]
    # the oracle's second query names nothing the tool response said: no case for it
    rec2 = traj("Zubrak", "flag of Velmora", tool_text="No page matches.")
    rec2.update(tokens=rec["tokens"], loss_mask=rec["loss_mask"], images=[])
    assert [k for k, _, _ in report.forced_probe_cases(rec2)] == [1]


# ---- sft.py's base stage and first-turn curriculum ---------------------------------------------------------------
def test_first_turns_cuts_after_the_nth_assistant_turn():
    import sft
    ex = lambda: {"tokens": list(range(10)), "loss_mask": [0, 0, 1, 1, 0, 0, 1, 1, 1, 0],
                  "images": [{"token_start": 5, "num_tokens": 1}]}
    one = sft.first_turns(ex(), 1)
    assert one["tokens"] == [0, 1, 2, 3] and one["loss_mask"] == [0, 0, 1, 1] and one["images"] == []
    two = sft.first_turns(ex(), 2)
    assert two["tokens"] == list(range(9)) and len(two["images"]) == 1
    assert sft.first_turns(ex(), 5)["tokens"] == list(range(10))  # fewer turns than asked: whole example


def test_text_blocks_pack_documents_with_loss_on_every_token(tmp_path):
    import json
    import sft
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers
    tok = Tokenizer(models.WordLevel({"<|endoftext|>": 0, "[UNK]": 1, "a": 2, "b": 3, "\n": 4}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    hf.add_special_tokens({"additional_special_tokens": ["<|endoftext|>"]})
    p = tmp_path / "pages.jsonl"
    p.write_text("\n".join(json.dumps({"title": t, "text": x}) for t, x in [("a", "bb"), ("b", "aaab")]) + "\n")
    blocks, counts = sft.load_text_blocks(str(p), hf, 4)
    flat = [t for b in blocks for t in b["tokens"]]
    # "a\nbb" <eos> "b\naaab" <eos> = 12 tokens -> 3 blocks of 4, documents running across the boundaries
    assert counts == {"rows": 2, "blocks": 3} and flat == [2, 4, 3, 3, 0, 3, 4, 2, 2, 2, 3, 0]
    assert all(b["loss_mask"] == [1] * 4 and b["images"] == [] for b in blocks)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    import pytest
    with pytest.raises(ValueError, match=r"bad.jsonl:1: objective='pretrain' needs rows with a string 'text'"):
        sft.load_text_blocks(str(bad), hf, 4)
