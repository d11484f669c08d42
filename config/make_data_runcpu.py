# make_data.py for runcpu.sh: the oracle teacher on the mini world (offline generator + judge), with the compact
# system prompt that sft / grpo / eval of the same run also use (~950 tokens a trajectory instead of ~2,100).
# runcpu.sh passes --world_dir, --tokenizer_dir, --out_dir.
import os as _os
import runpy as _runpy

world_dir = "out/cpu/world"  # data/miniworld/prepare.py config/prepare_runcpu.py --out_dir=out/cpu/world
tokenizer_dir = "out/cpu/world/tokenizer"
out_dir = "out/cpu/data"
tokenize_vl = True
split_by = "source"          # keep the world's held-out country clusters for bench / rl
# the compact prompt + fixed date are written once, in grpo_runcpu.py's rollout_kwargs (the tokens must not change
# between stages)
_grpo = _runpy.run_path(_os.path.join(_os.path.dirname(__file__), "grpo_runcpu.py"))
_rk = _grpo["rollout_kwargs"]
date = _rk["date"]
system_style = _rk["system_style"]
tool_kwargs = _grpo["tool_kwargs"]  # the same tool observations as GRPO and eval
workers = 2
