# make_data.py against real endpoints (paper: Gemini 3 Pro writes prompts and trajectories, GPT-4.1 judges,
# Qwen-Image-Edit-2509 renders the ground truth). Endpoints/keys come from the command line / environment:
# python make_data.py config/make_data_gen_searcher_8b.py --llm_base_url=... --teacher_base_url=... --judge_base_url=...
#     --generator_urls="['http://gpu0:8000']"
out_dir = "out/make_data_gen_searcher_8b"
llm_model = "gemini-3-pro"
teacher_model = "gemini-3-pro"
judge_model = "gpt-4.1"
tool_backend = "web"
gen_backend = "server"
requests_per_category = 125  # x 10 prompts x 24 categories = 30k prompts (paper: ~30k before filtering)
prompts_per_request = 10
workers = 32
bench_frac = 0.037           # 630 of ~17k kept
rl_frac = 0.375              # RL-6k / (RL-6k + SFT-10k)
