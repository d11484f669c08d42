# The paper's SFT run (release: Gen-DeepResearch-SFT/LLaMA-Factory/examples/train_full/gen_qwen3_sft.yaml):
# Qwen3-VL-8B-Instruct, full fine-tune, vision tower + projector frozen, on SFT-10k, 8 GPUs.
#   torchrun --standalone --nproc_per_node=8 sft.py config/sft_gen_searcher_8b.py
# Memory: FSDP2 shards fp32 master weights + AdamW moments (8B x 16 B / 8 GPUs = 16 GB per GPU) plus bf16
# activations of one 32k-token sequence with gradient checkpointing. Each rank reads the weights from disk
# once (fp32, ~32 GB host RAM per rank) before sharding.
out_dir = "out/sft_gen_searcher_8b"
init_from = "models/Qwen3-VL-8B-Instruct"  # a local save_pretrained dir (model + tokenizer + preprocessor_config)
train_data = "data/gen_searcher/sft_data.json"  # the release's sharegpt SFT file (JSON array, <image> placeholders)
eval_fraction = 0.01  # ours: the release trains on everything; 1% held out to watch the eval loss
freeze_vision = True  # release: freeze_vision_tower, freeze_multi_modal_projector
image_max_pixels = 160000  # release: image_max_pixels 160000
cutoff_len = 32768  # release: cutoff_len 32768
overlong = "truncate"
learning_rate = 1e-5  # release: learning_rate 1.0e-5, cosine, warmup_ratio 0.02, weight_decay 1.0e-6
warmup_ratio = 0.02
weight_decay = 1e-6
num_epochs = 2  # release: num_train_epochs 2.0
batch_size = 1  # release: per_device_train_batch_size 1, gradient_accumulation_steps 1 (x 8 GPUs)
gradient_accumulation_steps = 1
gradient_checkpointing = True
device = "cuda"
dtype = "bfloat16"  # release: bf16
eval_interval = 250
save_interval = 1000  # release: save_steps 1000
keep_checkpoints = 3  # release keeps 30; each of ours holds fp32 weights + AdamW state (~96 GB)
wandb_log = False  # release: report_to wandb (pip install wandb, then --wandb_log=True)
wandb_run_name = "sft_cold_start_gen"
