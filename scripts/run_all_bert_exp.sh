#!/usr/bin/env bash
# GLUE on BERT-family models (Table 1), with the interface of the paper's script:
#   MODEL=microsoft/deberta-base TASK=SST2 MODE=loretta_adp EPOCH=10 BS=8 LR=1e-4 DEVICE=0 bash scripts/run_all_bert_exp.sh
# Variables (defaults = the paper's): MODEL (a Hub id or one of configs/model), TASK (MNLI SST2 COLA QQP
# QNLI RTE MRPC STSB), MODE (loretta_adp loretta_rep lora adapters prompt ia3 prefix bitfit ft), EPOCH, BS,
# LR (default: the method's, 1e-4; 1e-6 for ft), DEVICE (CUDA_VISIBLE_DEVICES), SEED, RANK (tensor rank of
# the LoRETTA methods), DATA_DIR (original GLUE files instead of the Hub), OUT (output root, default runs).
# A comma in MODEL, TASK, MODE or SEED sweeps the values (Hydra multirun). Extra arguments are passed to
# the Hydra app (e.g. train.max_steps=100 logger.wandb=off).
# With none of MODEL, TASK, MODE set, it sweeps the whole of Table 1 (experiment=table1_deberta and
# table1_roberta); a sweep with a failing run does not stop the other, and the script ends with status 1
# naming it. RANK applies to the LoRETTA methods only (for the rank ablation, Table 6:
# python -m loretta.run -m experiment=ablation_rank). The paper's P-Tuning (MODE=ptune) has no method here.
# A name with no config stops the script before anything runs. DRY_RUN=1 prints the commands instead.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
export WANDB_START_METHOD=thread
[ -n "${DEVICE:-}" ] && export CUDA_VISIBLE_DEVICES=$DEVICE

map_model() {  # Hub id or our name -> our config name
  local out=() m
  IFS=',' read -ra parts <<< "$1"
  for m in "${parts[@]}"; do
    case "$m" in
      microsoft/deberta-base) m=deberta-base ;;
      roberta-base|FacebookAI/roberta-base) m=roberta-base ;;
      roberta-large|FacebookAI/roberta-large) m=roberta-large ;;
      sentence-transformers/all-MiniLM-L6-v2) m=minilm ;;
      sentence-transformers/all-mpnet-base-v2) m=mpnet ;;
    esac
    out+=("$m")
  done
  (IFS=','; echo "${out[*]}")
}
map_task() { echo "$1" | tr 'A-Z' 'a-z' | tr -d '-'; }  # SST2 -> sst2, STS-B -> stsb

source scripts/sweep_checks.sh  # fail, check_names, check_rank

common=()
[ -n "${EPOCH:-}" ] && common+=("train.epochs=$EPOCH")
[ -n "${BS:-}" ] && common+=("train.batch_size=$BS")
[ -n "${LR:-}" ] && common+=("train.lr=$LR")
[ -n "${SEED:-}" ] && common+=("seed=$SEED")
[ -n "${DATA_DIR:-}" ] && common+=("task.data_dir=$DATA_DIR")
[ -n "${OUT:-}" ] && common+=("output_root=$OUT")
[ -n "${RANK:-}" ] && common+=("method.tensor_rank=$RANK")

run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then echo "$PYTHON -m loretta.run $*"; else "$PYTHON" -m loretta.run "$@"; fi
}

if [ -z "${MODEL:-}${TASK:-}${MODE:-}" ]; then  # the paper's table
  [ -z "${RANK:-}" ] || fail "RANK=$RANK with the whole of Table 1, whose methods run at the paper's ranks (most have no tensor rank); the rank ablation is: python -m loretta.run -m experiment=ablation_rank"
  failed=()
  for experiment in table1_deberta table1_roberta; do  # a failing run stops neither sweep nor the next one
    run -m experiment=$experiment "${common[@]}" "$@" || failed+=("experiment=$experiment")
  done
  if [ ${#failed[@]} -gt 0 ]; then
    echo "$(basename "$0"): runs failed in ${failed[*]} (above); rerun with resume=true to run only what is missing" >&2
    exit 1
  fi
  exit 0
fi

MODEL=$(map_model "${MODEL:-microsoft/deberta-base}")
TASK=$(map_task "${TASK:-SST2}")
MODE=${MODE:-loretta_adp}
check_names model MODEL "$MODEL"
check_names task TASK "$TASK"
check_names method MODE "$MODE"
check_rank "$MODE"
: "${EPOCH:=10}" "${BS:=8}" "${SEED:=0}"
args=("model=$MODEL" "task=$TASK" "method=$MODE" "train=glue" "train.epochs=$EPOCH" "train.batch_size=$BS" "seed=$SEED")
for a in "${common[@]}"; do case "$a" in train.epochs=*|train.batch_size=*|seed=*) ;; *) args+=("$a") ;; esac; done
multi=()
case "$MODEL$TASK$MODE$SEED" in *,*) multi=(-m) ;; esac
run "${multi[@]}" "${args[@]}" "$@"
