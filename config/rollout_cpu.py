# rollout on CPU with the mini world: small tiny-model limits so a run takes seconds
engine = "hf"
device = "cpu"
dtype = "float32"
world_dir = "data/miniworld"
prompts = "data/miniworld/bench.jsonl"
max_new_tokens = 256
batch_prompts = 8
temperature = 0.7
top_p = 0.95
