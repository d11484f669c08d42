"""The two config families chain, every config key is configurator's, and an override of each key reaches the
code that uses it (a default argument bound to a config global at import time would not see it)."""
import ast
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import configurator
from configurator import config_keys, configure

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "config"
# every top-level module and data preparer (a new file is covered without an edit here)
STAGES = sorted([p.name for p in ROOT.glob("*.py")] + [str(p.relative_to(ROOT)) for p in ROOT.glob("data/*/*.py")])


def cfg(name):
    return runpy.run_path(str(CFG / name))


def test_only_two_families():
    names = sorted(p.name for p in CFG.glob("*.py"))
    paper = [n for n in names if n.endswith("_gen_searcher_8b.py") or n == "eval_knowgen.py"]
    runcpu = [n for n in names if n.endswith("_runcpu.py")]
    assert sorted(paper + runcpu) == names, names


def test_paper_configs_chain():
    sft, grpo, ev = cfg("sft_gen_searcher_8b.py"), cfg("grpo_gen_searcher_8b.py"), cfg("eval_knowgen.py")
    assert grpo["init_from"] == os.path.join(sft["out_dir"], "final")
    assert ev["policy_path"] == os.path.join(grpo["out_dir"], "final")


def test_runcpu_configs_chain():
    md, base, sft, grpo, ev = (cfg(f"{s}_runcpu.py") for s in ("make_data", "base", "sft", "grpo", "eval"))
    assert sft["train_data"].split(",")[0] == os.path.join(md["out_dir"], "sft.jsonl")
    # base (the extra worlds' and the page worlds' pages, never the bench world's) -> instruct (runcpu.sh: lookup
    # chats) -> SFT stage 1b (first two turns) -> SFT stage 2 (this config) -> GRPO
    assert base["objective"] == "pretrain" and base["tokenizer_dir"] == sft["tokenizer_dir"]
    pages = base["train_data"].split(",")
    assert all(p.endswith("pages.jsonl") and ("/world_" in p or "/pages_" in p) for p in pages)
    assert os.path.join(md["world_dir"], "pages.jsonl") not in pages
    assert sft["init_from"] == os.path.join(os.path.dirname(sft["out_dir"]), "sft_second", "final")
    assert base["model_sizes"] == sft["model_sizes"]
    assert sft["tokenizer_dir"] == md["tokenizer_dir"] == os.path.join(md["world_dir"], "tokenizer")
    assert grpo["init_from"] == os.path.join(sft["out_dir"], "final")
    assert grpo["data_path"] == os.path.join(md["out_dir"], "rl.jsonl") and grpo["world_dir"] == md["world_dir"]
    assert ev["policy_path"] == os.path.join(grpo["out_dir"], "final")
    assert ev["items_path"] == os.path.join(md["out_dir"], "bench.jsonl") and ev["world_dir"] == md["world_dir"]
    # the compact rollout settings are written once and shared by data, GRPO and eval
    assert ev["rollout_kwargs"] == grpo["rollout_kwargs"]
    # ... and the tool observations: the miniature keeps top_k 5 and hits without the local_path line
    assert md["tool_kwargs"] == ev["tool_kwargs"] == grpo["tool_kwargs"] == {"top_k_default": 5,
                                                                             "list_local_path": False}
    assert (md["date"], md["system_style"]) == (grpo["rollout_kwargs"]["date"], grpo["rollout_kwargs"]["system_style"])
    sh = (ROOT / "runcpu.sh").read_text()  # runcpu.sh passes the same chain under its $OUT
    for arg in ('--init_from="$OUT/sft/final"', '--data_path="$OUT/data/rl.jsonl"', '--policy_path="$OUT/$3/final"',
                'SFT_DATA="$OUT/data/sft.jsonl,', '--train_data="$SFT_DATA"', '--out_dir="$OUT/data"',
                '--stages=instruct', '--train_data="$OUT/data_1/instruct.jsonl,',
                '--init_from="$OUT/base/final" --out_dir="$OUT/instruct"', 'SFT_FROM="$OUT/instruct/final"; WORKFLOW=instruct',
                '--init_from="$SFT_FROM" --out_dir="$OUT/sft_first"', '--init_from="$SFT_FROM" --out_dir="$OUT/sft_second"',
                'SFT_FROM="$OUT/sft_second/final"', '--init_from="$SFT_FROM" --out_dir="$OUT/sft"',
                'eval_row sft agent sft\n', 'eval_row workflow workflow $WORKFLOW;'):  # eval_row ROW MODE CHECKPOINT
        assert arg in sh, arg


# seed 1337 (HISTORY.md, "Seeds under the instruct recipe"), and no stop by the cap
@pytest.mark.parametrize("last, want", [
    (0.053, "0 300 instruct/final"), (0.199, "2400 600 base/final")])
def test_runcpu_falls_back_only_when_copying_did_not_form_in_the_instruct_stage(tmp_path, last, want):
    # runcpu.sh's own FIRST_STEPS=auto block with its own copied(), run against an instruct log whose last held-out
    # loss is `last` (the instruct stage itself stops early on COPY_LOSS: sft.py's stop_eval_loss, tests/test_sft.py)
    sh = (ROOT / "runcpu.sh").read_text()
    assert '--stop_eval_loss="$COPY_LOSS"' in sh[sh.index("stage instruct "):sh.index("copied() {")]
    block = sh[sh.index("copied() {"):sh.index('if [ "$FIRST_STEPS" != 0 ]; then  # first turns')]
    (tmp_path / "instruct" / "final").mkdir(parents=True)
    (tmp_path / "instruct" / "log.jsonl").write_text(json.dumps({"step": 0, "eval_loss": 7.1}) + "\n" +
                                                     json.dumps({"step": 1900, "eval_loss": last}) + "\n")
    env = dict(os.environ, OUT=str(tmp_path), FIRST_STEPS="auto", FIRST_AUTO_STEPS="2400", SECOND_AUTO_STEPS="600",
               SECOND_STEPS="300", COPY_LOSS="0.15", INSTRUCT_STEPS="1900", SFT_FROM=f"{tmp_path}/instruct/final",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    p = subprocess.run(["bash", "-c", block + 'echo "$FIRST_STEPS $SECOND_STEPS $SFT_FROM"'], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # formed: SFT starts from the instruct policy; else the previous recipe's chain from the base
    steps, second, sft_from = p.stdout.splitlines()[-1].split()
    assert f"{steps} {second} {os.path.relpath(sft_from, tmp_path)}" == want, p.stdout
    assert (f"instruct: held-out loss {last} > COPY_LOSS=0.15" in p.stdout) == (steps == "2400"), p.stdout
    assert ("falls back to the previous recipe" in p.stdout) == (steps == "2400"), p.stdout


def _module(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("cfgtest_" + path.replace("/", "_")[:-3], ROOT / path)
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


CONFIG_OF = {"sft.py": ["sft_gen_searcher_8b.py", "sft_runcpu.py", "base_runcpu.py"],
             "grpo.py": ["grpo_gen_searcher_8b.py", "grpo_runcpu.py"],
             "eval_knowgen.py": ["eval_knowgen.py", "eval_runcpu.py"],
             "make_data.py": ["make_data_gen_searcher_8b.py", "make_data_runcpu.py"],
             "data/miniworld/prepare.py": ["prepare_runcpu.py"]}


@pytest.mark.parametrize("stage", sorted(CONFIG_OF))
def test_every_config_file_loads_into_its_stage(stage):
    m = _module(stage)
    for name in CONFIG_OF[stage]:
        g = dict(vars(m))
        configure(g, [str(CFG / name)])  # unknown key / wrong type -> ConfigError naming file and key


def test_stage_config_listings_are_configurators():
    import eval_knowgen
    import grpo
    import make_data
    import reward
    assert list(make_data.config()) == config_keys(vars(make_data))
    assert list(eval_knowgen.default_config()) == config_keys(vars(eval_knowgen))
    # reward.py's command-line-only inputs are the only keys its score() config does not take
    assert set(config_keys(vars(reward))) - set(reward.make_config()) == {"items", "scored", "trajectories"}


def _other(v):
    """A different value of the same type (what an override would set)."""
    if isinstance(v, bool):
        return not v
    if isinstance(v, (int, float)):
        return v * 2 + 1
    if isinstance(v, str):
        return v + "_x"
    if isinstance(v, (list, tuple)):
        return type(v)(list(v) + ["x"])
    if isinstance(v, dict):
        return {**v, "x": 1}
    return "x"  # None accepts anything


def _override_each(mod, read):
    """Override every config key of mod on its real globals through configure(), check read() sees it."""
    g = vars(mod)
    keys = list(read())
    assert keys
    saved = {k: g[k] for k in keys}
    try:
        for k in keys:
            new = _other(g[k])
            configure(g, [f"--{k}={new!r}"])
            assert read()[k] == new, k
    finally:
        g.update(saved)


def test_override_of_each_key_reaches_the_code():
    import eval_knowgen
    import make_data
    import reward
    import rollout
    _override_each(reward, reward.make_config)
    _override_each(eval_knowgen, eval_knowgen.default_config)
    _override_each(make_data, make_data.config)
    # rollout.py's CLI: each protocol global -> the Settings its functions receive
    fields = [k for k in rollout.Settings.__dataclass_fields__ if k != "system_style"]  # paper | compact only
    _override_each(rollout, lambda: {k: getattr(rollout.settings_from_globals(), k) for k in fields})
    saved = rollout.system_style
    try:
        configure(vars(rollout), ["--system_style=compact"])
        assert rollout.settings_from_globals().system_style == "compact"
    finally:
        rollout.system_style = saved
    with pytest.raises(ValueError, match="bogus"):
        rollout.settings({"bogus": 1})


def test_override_of_each_key_reaches_the_toolbox(tiny_world, tmp_path):
    """tools.py's CLI configures its globals after import: an override of each global make_toolbox reads changes the
    Toolbox it builds (a default bound at import time would keep the old value)."""
    import inspect

    import tools
    g = vars(tools)
    read = set(tools._TOOLBOX_GLOBALS) | {"cache_path"}  # cache_path: the web backend's default_cache_path
    params = set(inspect.signature(tools.make_toolbox).parameters)
    assert {k for k in config_keys(g) if k in params} == read  # every same-named argument resolves its global
    new = {k: _other(g[k]) for k in tools._TOOLBOX_GLOBALS}
    new.update(world_dir=str(tiny_world), index_path=str(tmp_path / "ix.sqlite"), image_dir=str(tmp_path / "img"),
               top_k_default=3, max_workers=2, cache_path=str(tmp_path / "c.sqlite"), backend="local")
    saved = {k: g[k] for k in read | {"max_image_pixels"}}
    try:
        configure(g, [f"--{k}={v!r}" for k, v in new.items()])
        tb = tools.make_toolbox()
        try:
            got = {k: getattr(tb, k) for k in tools._TOOLBOX_GLOBALS}
        finally:
            tools.close_toolbox(tb)
        assert got == {k: new[k] for k in tools._TOOLBOX_GLOBALS} and saved["backend"] == "local"
        assert tb.cache_path is None  # local: no cache unless a cache_path argument is given
        configure(g, ["--backend=web"])
        tb = tools.make_toolbox()
        tools.close_toolbox(tb)
        assert (tb.backend, tb.cache_path) == ("web", new["cache_path"])
        # _to_jpeg's size bound is read when it runs, too
        from PIL import Image
        Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
        configure(g, ["--max_image_pixels=400"])
        tools._to_jpeg(str(tmp_path / "a.png"), str(tmp_path / "a.jpg"))
        with Image.open(tmp_path / "a.jpg") as im:
            assert im.size == (20, 20)
    finally:
        g.update(saved)


def test_rollout_settings_reach_the_loop(tmp_path):
    """A Settings built from a stage's rollout_kwargs is what the loop reads: max_rounds and the prompt style."""
    import rollout
    s = rollout.settings({"system_style": "compact", "date": "2031-02-03", "max_rounds": 2})
    text = rollout.system_prompt(None, s)
    assert "2031-02-03" in text and text.startswith(rollout.COMPACT_SYSTEM_PROMPT.split("{tools}")[0])
    assert "Tools: search(queries, top_k) | image_search(query, top_k) | browse(url, query)." in text
    assert rollout.system_prompt(None) != text  # the default Settings: the paper's prompt, today
    t2 = rollout.Traj({"id": "x"}, 0, [], [], [], [], 0.0, s=rollout.settings(max_rounds=2, force_final_round=False))
    t2.rounds = 1
    rollout._decide(t2, "plain text", "k", False, False)
    assert t2.end == "max_rounds"  # the 2nd round of 2
    t9 = rollout.Traj({"id": "x"}, 0, [], [], [], [], 0.0, s=rollout.settings(force_final_round=False))
    t9.rounds = 1
    assert rollout._decide(t9, "plain text", "k", False, False)[0] == "obs" and t9.end is None  # 9 by default


def _config_globals(tree):
    return {n.targets[0].id for n in tree.body if isinstance(n, ast.Assign) and len(n.targets) == 1
            and isinstance(n.targets[0], ast.Name) and not n.targets[0].id.isupper()}


# trainer-side functions owned by the "trainer" change (sft.py / grpo.py bodies); listed so the test still catches
# every new one
KNOWN = set()  # (stage, function) pairs allowed to bind a config global as a default: none


@pytest.mark.parametrize("stage", STAGES)
def test_no_default_argument_bound_to_a_config_global(stage):
    tree = ast.parse((ROOT / stage).read_text())
    g = _config_globals(tree)
    bad = []
    for f in ast.walk(tree):
        if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and (stage, f.name) not in KNOWN:
            for d in f.args.defaults + [x for x in f.args.kw_defaults if x is not None]:
                bad += [f"{stage}:{f.lineno} {f.name}(...={n.id})" for n in ast.walk(d)
                        if isinstance(n, ast.Name) and n.id in g]
    assert not bad, bad


def test_configurator_is_the_one_listing():
    assert configurator.config_keys({"b": 1, "a": "x", "_p": 2, "CONST": 3, "f": len}) == ["a", "b"]
