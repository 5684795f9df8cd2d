#!/usr/bin/env bash
# GPU smoke step for the verl adapter (docs/integrations/verl.md): two GRPO steps of a
# small instruct model on the synthetic world, one GPU, vLLM rollouts through the
# `search_r1` agent loop, retrieval from a live `search-env serve` on 127.0.0.1.
# Needs: a CUDA machine, `pip install -e '.[verl,server]' vllm` (a vLLM that verl 0.9.1
# supports), the model in the Hugging Face cache or reachable. Run from anywhere:
#   bash agents/verl/gpu_smoke.sh            # MODEL=..., OUT=..., PORT=... to change
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
OUT=${OUT:-/tmp/search-env-verl-smoke}
PORT=${PORT:-8000}
mkdir -p "$OUT"

# 1. data: the synthetic world's questions as Search-R1 parquet rows (builds the world and
#    its BM25 index on first use, offline)
python -m agents.verl.data --env-id SearchQA-Synth-v0 --split train --limit 64 --out "$OUT/train.parquet"
python -m agents.verl.data --env-id SearchQA-Synth-v0 --split test --limit 32 --out "$OUT/test.parquet"

# 2. retrieval: the world's index behind the Search-R1 HTTP API, as wiki-18 would be served
WORLD=$(search-env synth | tail -n 1)
search-env serve --index "$WORLD/bm25" --port "$PORT" > "$OUT/serve.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 120); do
    curl -sf "http://127.0.0.1:$PORT/health" > /dev/null && break
    sleep 1
done
sed "s#http://127.0.0.1:8000/retrieve#http://127.0.0.1:$PORT/retrieve#" \
    agents/verl/configs/search_tool_config.yaml > "$OUT/search_tool_config.yaml"

# 3. two GRPO steps with the shipped config, shrunk to one GPU and a tiny batch
python -m verl.trainer.main_ppo --config-path="$PWD/agents/verl/configs" \
    --config-name=search_r1_grpo \
    data.train_files="$OUT/train.parquet" data.val_files="$OUT/test.parquet" \
    data.train_batch_size=8 data.max_response_length=1024 \
    actor_rollout_ref.model.path="$MODEL" \
    actor_rollout_ref.actor.ppo_mini_batch_size=8 \
    actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2 \
    actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2 \
    actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2 \
    actor_rollout_ref.rollout.gpu_memory_utilization=0.4 \
    actor_rollout_ref.rollout.agent.num_workers=1 \
    actor_rollout_ref.rollout.multi_turn.tool_config_path="$OUT/search_tool_config.yaml" \
    trainer.n_gpus_per_node=1 trainer.total_training_steps=2 trainer.save_freq=-1 \
    trainer.test_freq=-1 trainer.default_local_dir="$OUT/ckpt" \
    2>&1 | tee "$OUT/train.log"
grep -q "step:2" "$OUT/train.log" && echo "verl GPU smoke: OK (2 steps; log in $OUT/train.log)"
