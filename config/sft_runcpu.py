# sft.py for runcpu.sh: a tiny Qwen3-VL (real architecture: vision tower, merger, M-RoPE) from scratch around the
# world's tokenizer, on the oracle trajectories. Sizes that learned to copy in mini-world runs (hidden 128, 4 layers, 4 heads x
# 32, MLP 384: 1.2M params); batch 8 instead of 16 buys twice the steps in the CPU budget (measured 1.2-1.3 s a step
# on 2 quiet cores, 2-5 s on shared ones, at ~950 tokens a sequence). runcpu.sh passes --train_data,
# --tokenizer_dir, --out_dir.
train_data = "out/cpu/data/sft.jsonl"     # make_data.py config/make_data_runcpu.py's out_dir/sft.jsonl
tokenizer_dir = "out/cpu/world/tokenizer"
out_dir = "out/cpu/sft"
init_from = "scratch"
vision = True
model_sizes = {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_kv_head": 2, "head_dim": 32, "mlp": 384}
freeze_vision = False     # a scratch vision tower is random: train it (the paper freezes a pretrained one)
eval_fraction = 0.05
learning_rate = 2e-3      # findings: AdamW 2e-3 cosine
weight_decay = 0.0
max_steps = 400           # ~2 epochs of ~1,630 sequences (200 steps: eval loss 1.00; 400: 0.76)
batch_size = 8
gradient_accumulation_steps = 1
gradient_checkpointing = False  # short sequences: recompute costs more than it saves
cutoff_len = 4096
device = "cpu"
dtype = "float32"
eval_interval = 100
eval_max_batches = 6
save_interval = 100
