"""
The CPU miniature's own reporting (runcpu.sh), on top of eval_knowgen.py's KnowGen rows: the copy probes, which need
the mini world's hidden solutions and its oracle trajectories, and the sections of results.md that only the main job
has (GRPO curves against a frozen control, training throughput, the teacher-forced probe per checkpoint, stage times).

As runcpu.sh runs it, from the repo root (OUT=out/cpu):
    # the teacher-forced copy probe of one checkpoint -> $OUT/probe/sft/forced_probe.json {"turn_k": {copied, n, rate}}
    python data/miniworld/report.py --forced_probe=$OUT/data/trajectories.jsonl --policy_path=$OUT/sft/final \
        --out_dir=$OUT/probe/sft
    # results.md (+ grpo_curves.png, items.png beside it): eval_knowgen.table_lines of the eval rows (plus a copy
    # column), then this file's sections
    python data/miniworld/report.py --table_out=$OUT/results.md --stage_times=$OUT/stage_times.tsv \
        --table="direct (no search)=$OUT/eval/direct,SFT=$OUT/eval/sft,..." \
        --table_logs="λ = 0.5=$OUT/grpo_lam0.5/log.jsonl,..." --table_control=$OUT/grpo_control/log.jsonl \
        --table_probes="sft/final=$OUT/probe/sft,..." --table_train="SFT stage 2 (whole trajectories)=$OUT/sft,..."

What the numbers mean: README, "The main job on CPU". All of it is ours: the paper has no probe and no control run.
"""
import glob
import json
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # run as a script from data/miniworld: the repo's top-level modules, as prepare.py does
    sys.path.insert(0, REPO)
import dataio  # noqa: E402  (THE reader of JSONL files)
import eval_knowgen  # noqa: E402  (the eval rows' table; rollout, trainer: imported where used, they import torch)

# -----------------------------------------------------------------------------
# config (override: python data/miniworld/report.py --key=value)
# the teacher-forced copy probe of one checkpoint
forced_probe = None          # FILE.jsonl of ORACLE trajectories (make_data's trajectories.jsonl): the teacher-forced
                             # copy probe of policy_path on them (forced_probe_ids), written to out_dir/forced_probe.json
forced_probe_ids = "mw_bench"  # id prefix of the probed trajectories (the held-out bench items)
policy_path = None           # the probed checkpoint (a save_pretrained dir)
out_dir = None               # where forced_probe.json goes (runcpu.sh: $OUT/probe/<checkpoint>)
# results.md
table = None                 # "name=eval_knowgen out_dir,...": the eval rows (Table 1 / 3) -> table_out
table_out = "results.md"     # the markdown; grpo_curves.png and items.png are written beside it
table_logs = None            # "name=grpo out_dir/log.jsonl,...": GRPO reward / K-Score curves for the table
table_control = None         # a frozen GRPO run's log.jsonl (learning_rate=0, same seed and items): paired_gain per run
table_train = None           # "name=sft.py out_dir,...": training throughput (tokens/s, share of the fp32 matmul peak)
table_pairs = None           # "B vs A,...": eval rows (name or folder) compared on the same items, paired bootstrap
table_probes = None          # "name=dir holding forced_probe.json,...": the teacher-forced copy probe per checkpoint
stage_times = None           # a "stage<TAB>seconds" file (runcpu.sh) appended to the table
seed = 0                     # the bootstrap intervals' resampling seed (eval_knowgen.bootstrap_ci)
# -----------------------------------------------------------------------------


class ReportError(ValueError):
    pass

# -----------------------------------------------------------------------------
# the copy probe on the eval trajectories: does the agent copy an unseen name into its next query?


def _queries(text):
    """The query words of an assistant turn's tool call ('' if it made none): search's queries, image_search's query."""
    import rollout
    m = re.search(r"<tool_call>(.*?)</tool_call>", text, re.S)
    try:
        args = (rollout.loads_lenient(m.group(1)) or {}).get("arguments") or {} if m else {}
    except Exception:  # an unparseable call copies nothing
        return ""
    q = args.get("queries", args.get("query", "")) if isinstance(args, dict) else ""
    return " ".join(q) if isinstance(q, list) else str(q)


def copy_probe(rec, item):
    """Does the agent copy an unseen name into its next query? For hop i, the names to copy are the capitalised words
    of the ORACLE's hop-i query (the item's hidden solution) that stand in what the agent itself has read by then:
    the prompt for hop 0, its latest tool response after that. A hop counts as copied when every such name is in the
    agent's own i-th query. Returns {"first": bool|None, "later": [bool, ...]} (None / [] where nothing applies:
    no solution, the agent made fewer calls, or the oracle's query holds no name from that source)."""
    hops = ((item or {}).get("solution") or {}).get("hops") or []
    msgs = rec.get("messages") or []
    out = {"first": None, "later": []}
    source = next((m["content"] for m in msgs if m["role"] == "user"), "")
    i = 0
    for j, m in enumerate(msgs):
        if m["role"] != "assistant" or "<tool_call>" not in m["content"] or i >= len(hops):
            continue
        a = hops[i]["arguments"]
        want = {w for w in re.findall(r"[A-Z][a-z]+", " ".join(a.get("queries", [])) + " " + a.get("query", ""))
                if re.search(rf"\b{w}\b", source)}
        if want:
            got = _queries(m["content"])
            ok = all(re.search(rf"\b{w}\b", got) for w in want)
            out["first"] = ok if i == 0 else out["first"]
            if i > 0:
                out["later"].append(ok)
        nxt = msgs[j + 1] if j + 1 < len(msgs) else None
        source = nxt["content"] if nxt and nxt["role"] == "user" else ""
        i += 1
    return out


def copy_rates(trajs, items_by_id):
    """copy_probe over a run: the share of trajectories whose first query copies the prompt's names, and of later
    hops that copy a name from the preceding tool response (README, "The main job on CPU")."""
    first, later = [], []
    for r in trajs:
        p = copy_probe(r, items_by_id.get(r.get("id")))
        first += [p["first"]] if p["first"] is not None else []
        later += p["later"]
    rate = lambda xs: round(sum(xs) / len(xs), 3) if xs else None
    return {"copy_first_query": rate(first), "copy_first_n": len(first), "copy_from_tool": rate(later),
            "copy_from_tool_n": len(later)}


def copy_column(eval_dir):
    """The results table's "copy: 1st query / from tool" cell of one eval run: copy_rates over its trajectories of
    the items it evaluated (its config.json's items_path and limit, as eval_knowgen.summarize selects them).
    Computed here from the run's own files rather than inside eval_knowgen.summarize, because the probe needs the
    mini world's hidden solutions: the benchmark's eval then imports nothing from one of its worlds, and this file
    depends on eval_knowgen, never the other way. "—" where nothing applies (no tool call, no solution)."""
    cfg = json.load(open(os.path.join(eval_dir, "config.json")))
    items = eval_knowgen.load_knowgen(cfg["items_path"])
    byid = {it["id"]: it for it in (items[:cfg["limit"]] if cfg["limit"] else items)}
    trajs = [r for k, r in eval_knowgen.latest(os.path.join(eval_dir, "trajectories.jsonl")).items() if k[0] in byid]
    cp = copy_rates(trajs, byid)
    pct = lambda v: "—" if v is None else f"{100 * v:.0f}%"
    return f"{pct(cp['copy_first_query'])} / {pct(cp['copy_from_tool'])}"

# -----------------------------------------------------------------------------
# the teacher-forced copy probe: the oracle's history, the checkpoint's next call


def forced_probe_cases(rec, hops=3):
    """Teacher-forced copy probe cases of one ORACLE trajectory record: for its k-th tool call (k = 1..hops), the
    token prefix up to where that assistant turn starts (the oracle's own history: prompt, earlier calls and their
    tool responses) and the names the policy's next query must hold (capitalised words of the oracle's k-th query
    that stand in the source it has just read: the prompt for k = 1, the latest tool response after). Only prefixes
    without images (simple and exact to re-feed); a call whose query holds no name from its source is no case.
    -> [(k, prefix_tokens, names)]"""
    starts, prev = [], 0
    for i, m in enumerate(rec.get("loss_mask") or []):
        if m and not prev:
            starts.append(i)
        prev = m
    msgs, out, k = rec.get("messages") or [], [], 0
    for j, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        k += 1
        if k > min(hops, len(starts)) or "<tool_call>" not in m["content"]:
            break
        cut, src = starts[k - 1], msgs[j - 1]["content"] if j else ""
        if any(im["token_start"] < cut for im in rec.get("images") or []):
            break  # an image in the history: later turns are not probed either
        names = sorted({w for w in re.findall(r"[A-Z][a-z]+", _queries(m["content"])) if re.search(rf"\b{w}\b", src)})
        if names:
            out.append((k, rec["tokens"][:cut], names))
    return out


def forced_copy_probe(policy_path, traj_path, id_prefix, hops=3, batch=16, max_new=96):
    """Given a prompt or a tool response holding names the policy has never seen, does it reproduce them? The
    policy (greedy) continues each forced_probe_cases prefix of the oracle trajectories whose id starts with
    id_prefix; a case is copied when its query holds every name. -> {"turn_k": {"copied", "n", "rate"}}; turn 1 =
    from the prompt, turns 2..hops = from the preceding tool response. Ours (the paper has no such probe)."""
    import rollout
    recs = [r for _, r in dataio.read_jsonl(traj_path) if str(r.get("id", "")).startswith(id_prefix)
            and not r.get("error")]
    cases = [c for r in recs for c in forced_probe_cases(r, hops)]
    if not cases:
        raise ReportError(f"{traj_path}: no trajectory with id prefix {id_prefix!r} and a text-only probe prefix")
    pol = rollout.load_policy(policy_path)
    eng = rollout.make_engine("hf", pol)
    outs = []
    for i in range(0, len(cases), batch):
        outs += rollout.generate(eng, [{"tokens": p, "max_new": max_new} for _, p, _ in cases[i:i + batch]],
                                 temperature=0.0)
    res = {}
    for (k, _, names), (ids, _) in zip(cases, outs):
        got = _queries(pol.tokenizer.decode(ids))
        r = res.setdefault(f"turn_{k}", {"copied": 0, "n": 0})
        r["copied"] += all(re.search(rf"\b{w}\b", got) for w in names)
        r["n"] += 1
    for r in res.values():
        r["rate"] = round(r["copied"] / r["n"], 3)
    return dict(sorted(res.items()))

# -----------------------------------------------------------------------------
# GRPO: did the reward go up, and by more than the frozen control's?


def quarter_gain(values):
    """GRPO learning check: mean of the last quarter of steps minus the first quarter's, and that difference's
    standard error (the two quarters' SEs in quadrature). Returns (diff, se), or None under 8 steps."""
    q = len(values) // 4
    if q < 2:
        return None
    a, b = values[:q], values[-q:]
    var = lambda v: sum((x - sum(v) / len(v)) ** 2 for x in v) / (len(v) - 1)
    return sum(b) / q - sum(a) / q, (var(a) / q + var(b) / q) ** 0.5


def item_quarter_gain(rows):
    """The quarter test paired by item, for runs that revisit their items (grpo.py num_epochs > 1 over a pool of
    n_prompts x steps/4 items: each quarter of the steps is then one epoch over the SAME items). rows: rollouts.jsonl
    rows (step, id, reward). The unit is one item: its mean reward over the last quarter's steps minus over the first
    quarter's, so the items' spread in difficulty cancels, which quarter_gain's step-to-step spread cannot.
    Returns (mean difference, its standard error over the items, items) or None under 8 steps or 3 common items."""
    d = _item_quarter_diffs(rows) or {}
    return (*_mean_se(list(d.values())), len(d)) if len(d) >= 3 else None


def item_quarter_gain_over_control(run, control, lam=None):
    """item_quarter_gain of a run minus the frozen control's, item by item: the control (learning_rate 0, same seed)
    draws the same items AND the same request seeds at every step, so what an epoch's draw of samples does to the
    reward (the control's own quarter difference ran from -0.05 to +0.01 in the main jobs, README) cancels as well as
    the items' difficulty; what is left is what the updates did. The control's rewards are re-weighted at the run's λ
    when lam is given (reward_at). Returns (mean, standard error over the items, items) or None, as
    item_quarter_gain."""
    if lam is not None:
        control = [dict(r, reward=reward_at(r.get("k_score"), r.get("r_text"), lam)) for r in control]
    a, b = _item_quarter_diffs(run) or {}, _item_quarter_diffs(control) or {}
    d = [a[i] - b[i] for i in sorted(a.keys() & b.keys())]
    return (*_mean_se(d), len(d)) if len(d) >= 3 else None


def _item_quarter_diffs(rows):
    """{item id: its mean reward over the last quarter's steps minus over the first quarter's}, for the items drawn
    in both quarters; None under 8 steps."""
    steps = sorted({r["step"] for r in rows})
    q = len(steps) // 4
    if q < 2:
        return None
    first, last = set(steps[:q]), set(steps[-q:])  # disjoint: q <= len(steps) / 4
    a, b = {}, {}
    for r in rows:
        side = a if r["step"] in first else b if r["step"] in last else None
        if side is not None:
            side.setdefault(r["id"], []).append(float(r["reward"] or 0.0))
    return {i: sum(b[i]) / len(b[i]) - sum(a[i]) / len(a[i]) for i in sorted(a.keys() & b.keys())}


def _mean_se(d):
    """Mean of d and its standard error (sample std / sqrt(n)); the error is None for one value."""
    m = sum(d) / len(d)
    return m, (sum((x - m) ** 2 for x in d) / (len(d) - 1) / len(d)) ** 0.5 if len(d) > 1 else None


def paired_gain(values, control):
    """GRPO learning check against a frozen control: `control` is the same GRPO run (same seed, items and step order)
    with learning_rate 0, so each step's items are the same on both sides and item difficulty cancels step by step.
    Returns (mean over steps of values - control, its standard error over the steps), or None under 4 common steps.
    Step 1 is left out: no update has happened before its rollout, so it is the same policy on both sides."""
    d = [a - b for a, b in zip(values[1:], control[1:])]
    return _mean_se(d) if len(d) >= 3 else None


def reward_at(k_score, r_text, lam):
    """The dual reward at λ (paper: r = (1-λ)·K + λ·r_text; reward.score). The frozen control is run at λ = 0.5; a
    run at another λ is compared with the control's K and r_text re-weighted at ITS λ, or the two rewards would be on
    different scales (a λ = 1 run would 'gain' r_text - reward_0.5 with no learning at all)."""
    return (1 - lam) * (k_score or 0.0) + lam * (r_text or 0.0)


def log_lam(log):
    """λ of a GRPO run from its log.jsonl rows: grpo.py logs it every step. Logs written before it did are solved
    from reward_mean = (1-λ)·k_score + λ·r_text at the first step where the two parts differ."""
    for e in log:
        if "lam" in e:
            return e["lam"]
    for e in log:
        k, t = e.get("k_score") or 0.0, e.get("r_text") or 0.0
        if abs(t - k) > 1e-3:
            return round((e["reward_mean"] - k) / (t - k), 3) + 0.0  # + 0.0: no '-0' for λ = 0
    raise ValueError("cannot tell this GRPO log's λ: no 'lam' and K = r_text at every step")


def category_gain(run, control, lam=None):
    """Where GRPO's gain over the frozen control comes from, by item category. run, control: rollouts.jsonl rows
    (grpo.py) of a run and of its frozen control, which draws the same items at every step (same seed), so
    (step, item id) pairs the two sides. Steps 2.. only (step 1 is the same policy on both sides). The unit is one
    item at one step: the run's mean reward over its group minus the control's, the control's re-weighted at the
    run's λ when lam is given (reward_at). -> {category: (units, the control's mean reward, mean difference, its
    standard error over the units or None for one unit)}."""
    ctl = {}
    for r in control:
        if r["step"] >= 2:
            ctl.setdefault((r["step"], r["id"]), []).append(
                r["reward"] if lam is None else reward_at(r.get("k_score"), r.get("r_text"), lam))
    units = {}
    for r in run:
        if r["step"] >= 2 and (r["step"], r["id"]) in ctl:
            units.setdefault((r["step"], r["id"]), (r.get("category"), []))[1].append(r["reward"])
    by_cat = {}
    for key, (cat, mine) in units.items():
        c = ctl[key]
        by_cat.setdefault(cat, []).append((sum(mine) / len(mine) - sum(c) / len(c), sum(c) / len(c)))
    out = {}
    for cat, v in by_cat.items():
        out[cat] = (len(v), sum(y for _, y in v) / len(v), *_mean_se([x for x, _ in v]))
    return out

# -----------------------------------------------------------------------------
# results.md: eval_knowgen's rows, then the miniature's sections (each returns its markdown lines)


def rollouts_beside(log_path):
    """The rollouts.jsonl rows grpo.py wrote beside a run's log.jsonl ([] when there is none: older runs)."""
    return [e for _, e in dataio.read_jsonl(os.path.join(os.path.dirname(log_path), "rollouts.jsonl"),
                                            missing_ok=True)]


def grpo_section(logs, control, out):
    """GRPO's reward and training K-Score per step -> out/grpo_curves.png (the frozen control dashed), and a row per
    run: first / last 5 steps, quarter_gain (and item_quarter_gain from the rollouts.jsonl beside the log, when the
    quarters share items, and item_quarter_gain_over_control), paired_gain over the control, the share of groups
    whose r_text varies.
    logs: [(name, log.jsonl)]; control: the frozen run's log.jsonl (runcpu.sh's: λ = 0.5, lr 0) or None."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    md = ["", "## GRPO: mean reward and training K-Score per step", "", "![](grpo_curves.png)", "",
          "| run | steps | reward, first 5 steps | reward, last 5 steps | K, first 5 | K, last 5 | "
          "reward: last quarter - first quarter (± s.e.) | the same, paired by item (± s.e.; items in both quarters) | "
          "the same minus the frozen control's, paired by item (± s.e.) | "
          "reward - frozen control at the run's λ, steps 2.. (± s.e.) | groups with varying r_text | reward per step |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    ctl = ctl_rows = None
    if control:  # the same run with learning_rate 0: what the curve does without learning
        ctl = [e for _, e in dataio.read_jsonl(control)]
        ctl_rows = rollouts_beside(control)
        ax[0].plot(range(1, len(ctl) + 1), [e["reward_mean"] for e in ctl], "k--",
                   label=f"frozen control (lr 0, λ = {log_lam(ctl):g})")
    fmt = lambda g: "—" if g is None else "{:+.3f} ± {:.3f}".format(*g)
    for name, path in logs + ([("frozen control (λ = 0.5, lr 0)", control)] if ctl else []):
        log = [e for _, e in dataio.read_jsonl(path)]
        x, r, k = [e["step"] for e in log], [e["reward_mean"] for e in log], [e["k_score"] or 0.0 for e in log]
        if path != control:
            ax[0].plot(x, r, label=name)
        ax[1].plot(x, k, label=name)
        avg = lambda v: f"{sum(v) / max(1, len(v)):.3f}"
        lam = log_lam(log)  # the control's reward at this run's λ: the same scale on both sides
        rows = rollouts_beside(path)
        iq = item_quarter_gain(rows)
        iqc = item_quarter_gain_over_control(rows, ctl_rows, lam) if ctl_rows and path != control else None
        md.append(f"| {name} | {len(log)} | {avg(r[:5])} | {avg(r[-5:])} | {avg(k[:5])} | {avg(k[-5:])} | "
                  + fmt(quarter_gain(r)) + " | "
                  + ("—" if iq is None else "{:+.3f} ± {:.3f} ({})".format(*iq)) + " | "
                  + ("—" if iqc is None else "{:+.3f} ± {:.3f}".format(*iqc[:2])) + " | "
                  + (fmt(paired_gain(r, [reward_at(e["k_score"], e["r_text"], lam) for e in ctl])) if ctl else "—")
                  + " | "
                  + (lambda v: f"{100 * sum(v) / len(v):.0f}%" if v else "—")(
                      [e["r_text_varying_groups"] for e in log if "r_text_varying_groups" in e]) + " | "
                  + " ".join(f"{v:.2f}" for v in r) + " |")
    for a, t in zip(ax, ("mean reward (λ-weighted)", "mean K-Score of the samples")):
        a.set(xlabel="GRPO step", title=t)
        a.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "grpo_curves.png"), dpi=100)
    return md


def category_section(logs, control):
    """category_gain of every GRPO run against the frozen control, from the rollouts.jsonl beside each log.jsonl
    (logs: [(name, log.jsonl)], control: the control's log.jsonl). [] when the control or every run lacks one."""
    ctl = rollouts_beside(control) if control else []
    run_lam = lambda path: log_lam([e for _, e in dataio.read_jsonl(path)])
    gains = [(name, category_gain(rollouts_beside(path), ctl, run_lam(path))) for name, path in logs] if ctl else []
    gains = [(name, g) for name, g in gains if g]
    if not gains:
        return []
    cats = sorted({c for _, g in gains for c in g}, key=str)
    fmt = lambda v: "—" if v is None else f"{v[2]:+.3f}" + ("" if v[3] is None else f" ± {v[3]:.3f}")
    first = gains[0][1]
    md = ["", "## GRPO by category: reward minus the frozen control's, steps 2.. (± s.e.)", "",
          "Each unit is one RL item at one step (the group's mean reward, run minus control: the same items at the "
          "same steps); from each run's rollouts.jsonl. Where the reward's lesson lands, and where it costs.", "",
          "| category | items drawn | control's mean reward | " + " | ".join(n for n, _ in gains) + " |",
          "|---|---|---|" + "---|" * len(gains)]
    for c in cats:
        n, cm = (first[c][0], f"{first[c][1]:.3f}") if c in first else ("—", "—")
        md.append(f"| {c} | {n} | {cm} | " + " | ".join(fmt(g.get(c)) for _, g in gains) + " |")
    return md


def train_section(train):
    """Training throughput per sft.py run (train: [(name, out_dir)]): median tokens/s and its share of this machine's
    measured fp32 matmul peak."""
    from trainer import matmul_peak  # shared with bench.py's GRPO train-step FLOP/s
    peak = matmul_peak()
    md = ["", "## Training throughput", "", f"Measured fp32 matmul peak of this machine: {peak / 1e9:.1f} GFLOP/s "
          "(a timed 512x512 matmul, this process's torch threads). Achieved = 6 x parameters x tokens/s (the dense "
          "forward + backward estimate; attention's T^2 term and the vision tower are not counted).", "",
          "| stage | steps | tokens/s (median step) | parameters | achieved GFLOP/s | share of peak |",
          "|---|---|---|---|---|---|"]
    for name, d in train:
        log = [e for _, e in dataio.read_jsonl(os.path.join(d, "log.jsonl"))]
        rates = sorted(e["tokens"] / e["seconds"] for e in log if e.get("seconds"))
        n = sum(os.path.getsize(p) for p in glob.glob(os.path.join(d, "final", "*.safetensors"))) / 4  # fp32
        if rates:
            r = rates[len(rates) // 2]
            md.append(f"| {name} | {len(rates)} | {r:,.0f} | {n / 1e6:.2f}M | {6 * n * r / 1e9:.2f} | "
                      f"{100 * 6 * n * r / peak:.1f}% |")
    return md


def probe_section(probes):
    """The teacher-forced copy probe per checkpoint (probes: [(name, dir holding forced_probe.json)])."""
    P = [(name, json.load(open(os.path.join(d, "forced_probe.json")))) for name, d in probes]
    turns = sorted({t for _, p in P for t in p})
    md = ["", "## Teacher-forced copy probe (held-out bench items, the oracle's history, greedy next call)", "",
          "turn 1 copies the prompt's names, later turns a name from the tool response just read (copied / cases).",
          "", "| checkpoint | " + " | ".join(t.replace("_", " ") for t in turns) + " |", "|---|" + "---|" * len(turns)]
    return md + [f"| {name} | " + " | ".join(f"{100 * p[t]['rate']:.0f}% ({p[t]['copied']}/{p[t]['n']})" if t in p
                                              else "—" for t in turns) + " |" for name, p in P]


def times_section(path):
    """runcpu.sh's stage_times.tsv ("stage<TAB>seconds" lines) and their total."""
    times = [line.rstrip("\n").split("\t") for line in open(path) if line.strip()]
    md = ["", "## Stage times", "", "| stage | seconds |", "|---|---|"] + [f"| {n} | {t} |" for n, t in times]
    # "NAME (in GROUP)": a stage of a group run side by side; the group's own wall-time row is what counts
    return md + [f"| **total** | **{sum(int(t) for n, t in times if ' (in ' not in n)}** |"]


def write_results(path, runs, logs=(), control=None, train=(), probes=(), times=None, seed=0, pairs=()):
    """The miniature's results.md at path: eval_knowgen.table_lines of the eval rows (runs: [(name, eval out_dir)])
    with the copy column, then the sections given (grpo_curves.png and items.png beside it). Returns path."""
    out = os.path.dirname(os.path.abspath(path))
    md = ["# Gen-Searcher on the mini world: Table 1 / Table 3 rows", "", "K-Score x100 on the same bench items, "
          "offline generator and judge. Agents decode greedily; an agent with no parsed answer is scored on the raw "
          "prompt (eval_knowgen's on_no_answer=raw_prompt), see *answered*.", ""]
    md += eval_knowgen.table_lines(runs, out, seed, columns=[("copy: 1st query / from tool", copy_column)])
    md += eval_knowgen.paired_lines(runs, pairs, seed) if pairs else []
    md += grpo_section(list(logs), control, out) if logs else []
    md += category_section(list(logs), control) if logs else []
    md += eval_knowgen.items_grid(runs, out)
    md += train_section(train) if train else []
    md += probe_section(probes) if probes else []
    md += times_section(times) if times else []
    open(path, "w", encoding="utf-8").write("\n".join(md) + "\n")
    return path


if __name__ == "__main__":
    from configurator import configure
    configure(globals())
    try:  # dataio's ItemsError (a bad file, named by file:line) is a usage error like ours
        if not forced_probe and not table:
            raise ReportError("nothing to do: give --forced_probe=FILE.jsonl (with --policy_path, --out_dir) "
                              "and/or --table=NAME=DIR,...")
        if forced_probe:
            if not policy_path or not out_dir:
                raise ReportError("--forced_probe needs --policy_path=DIR (a save_pretrained checkpoint) and "
                                  "--out_dir=DIR")
            p = forced_copy_probe(policy_path, forced_probe, forced_probe_ids)
            os.makedirs(out_dir, exist_ok=True)
            json.dump(p, open(os.path.join(out_dir, "forced_probe.json"), "w"), indent=2)
            print("forced copy probe:", json.dumps(p), "->", os.path.join(out_dir, "forced_probe.json"))
        if table:
            named = eval_knowgen.named_paths
            print(open(write_results(table_out, named(table), named(table_logs), table_control, named(table_train),
                                     named(table_probes), stage_times, seed,
                                     eval_knowgen.named_pairs(table_pairs))).read())
    except (ReportError, eval_knowgen.EvalError, dataio.ItemsError) as e:
        sys.exit(f"report.py: error: {e}")
