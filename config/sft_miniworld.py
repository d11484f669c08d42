# SFT of a tiny Qwen3-VL from scratch on the mini world's oracle trajectories (CPU, ~15-25 min).
#   python data/miniworld/prepare.py && python make_data.py config/make_data_miniworld.py
#   python sft.py config/sft_miniworld.py
# Sizes / lr / batch from mini-world-findings.md (hidden 128, 4 layers, 4 heads x 32, MLP 384; AdamW 2e-3
# cosine, batch 16): the setting that learned to copy unseen names from tool responses.
out_dir = "out/sft_miniworld"
train_data = "out/make_data_miniworld/sft.jsonl"  # trajectory records written by make_data.py (curate stage)
eval_fraction = 0.05
init_from = "scratch"
tokenizer_dir = "data/miniworld/tokenizer"
vision = True
model_sizes = {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_kv_head": 2, "head_dim": 32, "mlp": 384}
freeze_vision = False  # a scratch vision tower is random: train it (the paper freezes a pretrained one)
learning_rate = 2e-3
weight_decay = 0.0
num_epochs = 30
batch_size = 16
gradient_accumulation_steps = 1
gradient_checkpointing = False  # short sequences on CPU: recompute costs more than it saves
cutoff_len = 4096
eval_interval = 100
save_interval = 100
