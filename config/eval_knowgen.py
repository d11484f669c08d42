# KnowGen (630 items) as Table 1, on a GPU node: the agent in-process (vLLM engine of rollout.py), Qwen-Image-Edit
# servers (image_server.py, one per GPU), text-only Qwen-Image servers for answers without references, GPT-4.1 as
# the K-Score judge (key from $OPENAI_API_KEY).
# python eval_knowgen.py config/eval_knowgen.py --mode=direct|workflow|agent [--policy_path=CKPT] --out_dir=out/kg_X
# WISE (1,000 prompts, no ground truth; WiScore from the same judge with our prompt): the released prompt lists
# (cultural_common_sense.json, spatio-temporal_reasoning.json, natural_science.json) in data/wise/, then
#   python eval_knowgen.py config/eval_knowgen.py --benchmark=wise --items_path=data/wise --out_dir=out/wise_X
# a served agent or a closed API instead of a checkpoint (rollout.py's "openai" engine):
#   --agent_engine=openai --agent_base_url=http://HOST:8000/v1 --agent_model=NAME  (key: $OPENAI_API_KEY)
benchmark = "knowgen"
items_path = "data/knowgen/knowgen.jsonl"
agent_engine = "vllm"
agent_device = "cuda"
agent_dtype = "bfloat16"
agent_batch = 64
tool_backend = "web"
summarizer_base_url = "http://127.0.0.1:8002/v1"   # browse's reader VLM (Qwen3-VL-30B-A3B-Instruct, vLLM)
summarizer_model = "Qwen3-VL-30B-A3B-Instruct"
gen_backend = "server"
generator_urls = ["http://127.0.0.1:8010", "http://127.0.0.1:8011", "http://127.0.0.1:8012", "http://127.0.0.1:8013"]
gen_t2i_server_urls = ["http://127.0.0.1:8020", "http://127.0.0.1:8021"]
judge_backend = "openai"
judge_model = "gpt-4.1"
num_workers = 16
out_dir = "out/eval_knowgen"
policy_path = "out/grpo_gen_searcher_8b/final"  # grpo.py config/grpo_gen_searcher_8b.py's out_dir/final
# the release's eval protocol (Gen-DeepResearch-RL/rllm/eval/*); the module defaults keep our choices
agent_temperature = 0.6      # ours: 0.0 (greedy)
agent_top_p = 0.9            # ours: 1.0
rollout_kwargs = {"context_cap": 65536}  # 64k context (ours: rollout.py's 36,000, the RL cap)
failed_generation = "skip"   # ours: "zero" (a judged row scored 0)
no_refs_prompt = "raw_prompt"  # ours: "gen_prompt"
t2i_suffix = ", Ultra HD, 4K, cinematic composition."  # ours: "" (appended to text-only Qwen-Image prompts)
agent_error_retries = 1      # release eval runner: AgentWorkflowEngine(retry_limit=2), 2 attempts = 1 re-run
