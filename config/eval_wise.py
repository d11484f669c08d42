# WISE (1,000 prompts, no ground truth) through the same agent / generator path; WiScore from an OpenAI-compatible
# judge (our prompt). Put the released prompt lists (cultural_common_sense.json, spatio-temporal_reasoning.json,
# natural_science.json) in data/wise/: a directory of WISE JSON lists is accepted as items_path.
# python eval_knowgen.py config/eval_wise.py --mode=direct|agent [--policy_path=CKPT] --out_dir=out/wise_X
# a served agent or a closed API instead of a checkpoint (rollout.py's "openai" engine):
#   --agent_engine=openai --agent_base_url=http://HOST:8000/v1 --agent_model=NAME  (key: $OPENAI_API_KEY)
benchmark = "wise"
items_path = "data/wise"
agent_engine = "vllm"
agent_device = "cuda"
agent_dtype = "bfloat16"
agent_batch = 64
tool_backend = "web"
summarizer_base_url = "http://127.0.0.1:8002/v1"
summarizer_model = "Qwen3-VL-30B-A3B-Instruct"
gen_backend = "server"
generator_urls = ["http://127.0.0.1:8010", "http://127.0.0.1:8011", "http://127.0.0.1:8012", "http://127.0.0.1:8013"]
gen_t2i_server_urls = ["http://127.0.0.1:8020", "http://127.0.0.1:8021"]
judge_backend = "openai"
judge_model = "gpt-4.1"
num_workers = 16
out_dir = "out/eval_wise"
