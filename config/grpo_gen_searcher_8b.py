# The paper's RL stage: Qwen3-VL-8B from the SFT checkpoint, 8 GPUs, colocated vLLM, RL-6k, dual reward with
# Qwen-Image-Edit-2509 servers (image_server.py) and GPT-4.1 judges ($OPENAI_API_KEY), web tools.
#   torchrun --standalone --nproc_per_node=8 grpo.py config/grpo_gen_searcher_8b.py
# Release: gen_image_deepresearch_8B_fsdp_8gpu.sh (train_batch_size 8, rollout.n 6, lr 1e-6, clip_ratio_high 0.28,
# seq-mean-token-sum, ppo_max_token_len_per_gpu 37000, temperature 0.7, top_p 0.95, 5 epochs, save_freq 20).
out_dir = "out/grpo_gen_searcher_8b"
init_from = "out/sft_gen_searcher_8b/final"  # Gen-Searcher-SFT-8B: sft.py config/sft_gen_searcher_8b.py's out_dir/final
data_path = "data/rl6k/rl.jsonl"
engine = "vllm"
device = "cuda"
dtype = "bfloat16"
tool_backend = "web"               # Serper + reader + Qwen3-VL-30B-A3B summarizer (tools.py)
tool_kwargs = {"summarizer_base_url": "http://127.0.0.1:8002/v1",   # browse's VLM served by vLLM
               "summarizer_model": "Qwen3-VL-30B-A3B-Instruct"}
reward_kwargs = {"gen_backend": "server",
                 "generator_urls": ["http://127.0.0.1:8010", "http://127.0.0.1:8011",
                                     "http://127.0.0.1:8012", "http://127.0.0.1:8013"],
                 "judge_backend": "openai", "judge_model": "gpt-4.1"}
rollout_kwargs = {"max_rounds": 9, "force_final_round": True, "max_new_tokens": 4096, "context_cap": 36000}
wandb_log = True
