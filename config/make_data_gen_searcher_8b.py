# make_data.py against real endpoints, as the paper: Gemini 3 Pro writes prompts and trajectories, Nano Banana Pro
# (reward.py gen_backend "gemini", key $GEMINI_API_KEY) renders the ground truth, Seed1.8 judges the candidates.
# Endpoints/keys come from the command line / environment:
# python make_data.py config/make_data_gen_searcher_8b.py --llm_base_url=... --teacher_base_url=... --judge_base_url=...
# (open weights instead of Nano Banana Pro: --gen_backend=server --generator_urls="['http://gpu0:8000']", the
# Qwen-Image-Edit-2509 servers of image_server.py)
out_dir = "out/make_data_gen_searcher_8b"
llm_model = "gemini-3-pro"
teacher_model = "gemini-3-pro"
judge_model = "seed-1.8"     # ByteDance Seed1.8: pass the id your provider serves it under
tool_backend = "web"
gen_backend = "gemini"       # Nano Banana Pro (reward.gen_gemini_model)
requests_per_category = 125  # x 10 prompts x 24 categories = 30k prompts (paper: ~30k before filtering)
prompts_per_request = 10
workers = 32
bench_frac = 0.037           # 630 of ~17k kept
rl_frac = 0.375              # RL-6k / (RL-6k + SFT-10k)
