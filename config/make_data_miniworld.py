# make_data.py on the offline mini world: oracle teacher, offline generator and judge (CPU, seconds).
# python data/miniworld/prepare.py && python make_data.py config/make_data_miniworld.py
world_dir = "data/miniworld"
out_dir = "out/make_data_miniworld"
tokenizer_dir = "data/miniworld/tokenizer"  # records get tokens/loss_mask for a tiny VL policy on this tokenizer
tokenize_vl = True
date = "2025-06-01"          # fixed: the system prompt (and so the tokens) must not change between runs
split_by = "source"          # keep the world's held-out country clusters for bench / rl
workers = 2                  # 2 CPU cores
