# eval_knowgen.py on the mini world, CPU: offline generator (reward.offline_generate) + offline judge.
# python eval_knowgen.py config/eval_mini.py --mode=direct|oracle|agent [--policy_path=out/grpo_mini]
benchmark = "knowgen"
items_path = "data/miniworld/bench.jsonl"
world_dir = "data/miniworld"
tool_backend = "local"
gen_backend = "offline"
judge_backend = "offline"
num_workers = 1
out_dir = "out/eval_mini"
