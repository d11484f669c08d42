# make_data.py for runcpu.sh: the oracle teacher on the mini world (offline generator + judge), with the compact
# system prompt that sft / grpo / eval of the same run also use (~950 tokens a trajectory instead of ~2,100).
# runcpu.sh passes --world_dir, --tokenizer_dir, --out_dir.
tokenize_vl = True
date = "2025-06-01"          # fixed: the system prompt (and so the tokens) must not change between stages
split_by = "source"          # keep the world's held-out country clusters for bench / rl
system_style = "compact"
workers = 2
