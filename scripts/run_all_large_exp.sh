#!/usr/bin/env bash
# Large models (Tables 2 and 3, the MeZO protocol), with the interface of the paper's script:
#   MODEL=meta-llama/Llama-2-7b-hf TASK=SST2 MODE=loretta_adp EPOCH=3 BS=8 LR=1e-4 DEVICE=0 bash scripts/run_all_large_exp.sh
# Variables (defaults = the paper's): MODEL (a Hub id or one of configs/model), TASK (SST2 RTE CB BoolQ WSC
# WIC MultiRC Copa ReCoRD SQuAD DROP), MODE (loretta_adp loretta_rep lora adapters prompt ia3 prefix
# bitfit ft), EPOCH, BS, LR (default: the method's, 1e-4; 5e-6 for ft), DEVICE, SEED, RANK, TRAIN / DEV /
# EVAL (sample sizes; default 1000 / the task's MeZO dev size / 1000), PRECISION (bf16), DATA_DIR, OUT.
# As in the paper's script, CB and SQuAD run at batch 1, and MultiRC, ReCoRD and DROP at batch 1 with
# gradient accumulation (BS/2, BS/2 and BS). Extra arguments go to the Hydra app.
# With none of MODEL, TASK, MODE set, it sweeps Tables 2 and 3 (every task of each table, all its
# methods; the same runs as experiment=table2_llama2_7b / table3_llama2_13b / table3_llama2_70b). One
# Hydra sweep per task: a sweep with a failing run does not stop the next, and the script ends with
# status 1 naming them. RANK applies to the LoRETTA methods only (LoRETTA_rep runs at the paper's rank 8
# on LLaMA-2 without it: configs/model/llama2-*.yaml). A name with no config stops the script before
# anything runs. DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export WANDB_START_METHOD=thread
[ -n "${DEVICE:-}" ] && export CUDA_VISIBLE_DEVICES=$DEVICE

map_model() {
  case "$1" in
    meta-llama/Llama-2-7b-hf) echo llama2-7b ;;
    meta-llama/Llama-2-13b-hf) echo llama2-13b ;;
    meta-llama/Llama-2-70b-hf) echo llama2-70b ;;
    facebook/opt-1.3b) echo opt-1.3b ;;
    facebook/opt-2.7b) echo opt-2.7b ;;
    facebook/opt-6.7b) echo opt-6.7b ;;
    *) echo "$1" ;;
  esac
}
map_task() { echo "$1" | tr 'A-Z' 'a-z' | tr -d '-'; }  # Copa -> copa, ReCoRD -> record

run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then echo "$PYTHON -m loretta.run $*"; else "$PYTHON" -m loretta.run "$@"; fi
}

source scripts/sweep_checks.sh  # fail, check_names, check_rank
failed=()  # the sweeps that had a failing run; the others still run

# one task: the paper script's batch size / accumulation for it, then the Hydra app
run_task() {  # run_task <model> <task> <methods> [extra...]
  local model=$1 task=$2 methods=$3; shift 3
  local bs=${BS:-8} ga=1
  case "$task" in
    cb|squad) bs=1 ;;
    multirc|record) ga=$(( ${BS:-8} / 2 )); bs=1 ;;
    drop) ga=${BS:-8}; bs=1 ;;
  esac
  [ "$ga" -ge 1 ] || ga=1
  local args=("model=$model" "task=$task" "method=$methods" "train=mezo" "train.epochs=${EPOCH:-3}"
              "train.batch_size=$bs" "train.grad_accum=$ga" "train.precision=${PRECISION:-bf16}" "seed=${SEED:-0}")
  [ -n "${LR:-}" ] && args+=("train.lr=$LR")
  [ -n "${TRAIN:-}" ] && args+=("train.num_train=$TRAIN")
  [ -n "${DEV:-}" ] && args+=("train.num_dev=$DEV")
  [ -n "${EVAL:-}" ] && args+=("train.num_test=$EVAL")
  [ -n "${RANK:-}" ] && args+=("method.tensor_rank=$RANK")
  [ -n "${DATA_DIR:-}" ] && args+=("task.data_dir=$DATA_DIR")
  [ -n "${OUT:-}" ] && args+=("output_root=$OUT")
  local multi=()
  case "$methods${SEED:-0}" in *,*) multi=(-m) ;; esac
  run "${multi[@]}" "${args[@]}" "$@"
}

report() {
  if [ ${#failed[@]} -gt 0 ]; then
    echo "$(basename "$0"): runs failed in the sweeps of ${failed[*]} (above); rerun with resume=true to run only what is missing" >&2
    exit 1
  fi
  exit 0
}

if [ -z "${MODEL:-}${TASK:-}${MODE:-}" ]; then  # the paper's tables
  [ -z "${RANK:-}" ] || fail "RANK=$RANK with the whole of Tables 2 and 3, whose methods run at the paper's ranks (most have no tensor rank): set MODE=loretta_adp or loretta_rep with it"
  for task in cb boolq wsc copa record squad drop; do
    run_task llama2-7b $task ft,adapters,lora,prefix,ia3,loretta_rep,loretta_adp experiment_name=table2 "$@" \
      || failed+=("llama2-7b/$task")
  done
  for task in copa record squad drop; do
    run_task llama2-13b $task adapters,lora,ia3,loretta_rep,loretta_adp experiment_name=table3 "$@" \
      || failed+=("llama2-13b/$task")
  done
  for task in squad drop; do  # 70B needs several GPUs: see configs/experiment/table3_llama2_70b.yaml
    run_task llama2-70b $task adapters,lora,ia3,loretta_rep,loretta_adp experiment_name=table3 \
      train.gradient_checkpointing=true "$@" || failed+=("llama2-70b/$task")
  done
  report
fi

model=$(map_model "${MODEL:-meta-llama/Llama-2-7b-hf}")
TASK=$(map_task "${TASK:-SST2}")
MODE=${MODE:-loretta_adp}
check_names model MODEL "$model"
check_names task TASK "$TASK"
check_names method MODE "$MODE"
check_rank "$MODE"
IFS=',' read -ra tasks <<< "$TASK"
for task in "${tasks[@]}"; do
  run_task "$model" "$task" "$MODE" "$@" || failed+=("$model/$task")
done
report
