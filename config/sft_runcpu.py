# sft.py for runcpu.sh: the SFT stages on the oracle trajectories of four worlds (the bench world's SFT split plus the
# three extra worlds: ~6,900 trajectories whose names cannot be memorised), loss on assistant tokens only, starting
# from the instruct policy (runcpu.sh: the base model, config/base_runcpu.py, trained on generic lookup chats). As
# written this file is the last stage, whole trajectories; runcpu.sh first runs stage 1b with --max_assistant_turns=2
# (system + prompt -> first call -> its tool response -> the second call, ~520 tokens; with FIRST_STEPS > 0, stage 1
# with --max_assistant_turns=1 before it): short sequences, many of them, make copying a tool response's names
# learnable in minutes on 2 cores, where whole trajectories (~950 tokens) at the same compute taught the protocol's
# shape and no names (README, "The main job on CPU"). The instruct stage is this file too, with
# --max_assistant_turns=0 on make_data.py's instruct.jsonl chats, 16 a step at lr 2e-3.
# runcpu.sh passes --train_data, --tokenizer_dir, --init_from, --out_dir.
train_data = "out/cpu/data/sft.jsonl,out/cpu/data_1/sft.jsonl,out/cpu/data_2/sft.jsonl,out/cpu/data_3/sft.jsonl"
tokenizer_dir = "out/cpu/world/tokenizer"
out_dir = "out/cpu/sft"
init_from = "out/cpu/sft_second/final"  # stage 1b (first two turns) <- out/cpu/instruct/final <- out/cpu/base/final
vision = True
model_sizes = {"n_embd": 128, "n_layer": 4, "n_head": 4, "n_kv_head": 2, "head_dim": 32, "mlp": 384}
freeze_vision = False     # the tower is random (the base stage saw no image): train it (the paper freezes a pretrained one)
eval_fraction = 0.05
learning_rate = 1e-3      # continuing from the instruct policy: half its from-base 2e-3
weight_decay = 0.0
max_steps = 250           # 250 x 8 whole trajectories (~9 min on 2 quiet cores)
batch_size = 8
gradient_accumulation_steps = 1
max_tokens_per_micro = 4096  # each batch split longest-first into forwards of <= 4,096 padded tokens (the same update):
                          # measured side by side 2026-12-06 (README "Benchmarks"), summed step time 0.85x on the
                          # instruct chats (16 a step; 2,048 was slower than 4,096: more forwards) and 0.86x on stage 2
gradient_checkpointing = False  # short sequences: recompute costs more than it saves
cutoff_len = 4096
device = "cpu"
dtype = "float32"
eval_interval = 100
eval_max_batches = 6
save_interval = 100
