#!/usr/bin/env bash
# The GPU measurements of issues 2 and 5, as one prepared command for a session that has the device
# machine (its image has torch, transformers, peft and accelerate, but not at our pinned versions;
# nothing can be fetched there). First, here: `bash scripts/gpu_wheels.sh` (the pinned transformers
# and peft as wheels in .whl/, ~14 MB), then
#     run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=580)
# installs them for this run only (pip --target a temporary folder, first on PYTHONPATH) when .whl/ is
# there; if the imports then fail, it falls back to the image's own transformers and peft (gpu.txt
# says which ran).
#
# Writes under $OUT (default results/bench), seven files with the default presets (the device returns
# eight at most):
#   gpu.txt                  hardware and versions, then the log: each worker's progress and failures,
#                            and each step's seconds
#   <preset>.md / .json      scripts/bench_methods.py (step time, FLOPs, operators, memory), the .md
#                            followed by the activation memory by module type (`python
#                            scripts/activation_memory.py --from-bench <preset>.json` renders it alone)
#   generate_<preset>.md / .json   scripts/bench_generate.py, last
# Every output is rewritten after each method, so a run cut short keeps what it measured.
# Copy them into results/bench/ and the README's speed section.
#
# Time: BUDGET_S (default 520 s) is the whole script's; each step gets a share of what is left
# (weights below), and the scripts start no method that would not end within it (--time-limit); a
# `timeout` 30 s later stops a step that overruns anyway. On the GPU presets one worker process per
# round measures the methods in turn (--per-process round): a process start costs an estimated 10-20 s
# of imports and CUDA start-up (15 s on this project's CPU machine, without CUDA), which one process per
# method would pay 20 times a preset. A method that fails (out of memory, say) is
# a row saying so; the other methods and steps still run.
#
# PRESETS, GENERATE_PRESETS, ROUNDS, METHODS, GENERATE_METHODS, BUDGET_S and WHEELS (default .whl)
# override the defaults; `PRESETS=tiny-cpu GENERATE_PRESETS=tiny-cpu` smoke-tests it on a CPU (tests do).
set -uo pipefail  # no -e: a failing step must not cost the steps after it
cd "$(dirname "$0")/.."
OUT="${OUT:-results/bench}"
PRESETS="${PRESETS:-deberta-base-gpu llama2-7b-gpu}"
ROUNDS="${ROUNDS:-2}"
METHODS="${METHODS:-floor ft lora ia3 adapters loretta_adp loretta_rep loretta_adp_factors loretta_adp_stored_norms loretta_rep_stored_norms}"
GENERATE_PRESETS="${GENERATE_PRESETS:-llama2-7b-gpu}"
GENERATE_METHODS="${GENERATE_METHODS:-base lora loretta_adp loretta_rep loretta_rep_merged}"
BUDGET_S="${BUDGET_S:-520}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
started=$(date +%s)
mkdir -p "$OUT"
log="$OUT/gpu.txt"
work=$(mktemp -d)  # the wheels' install and files in the making, outside $OUT (the device returns eight files)
: > "$log"
say() { echo "$*" | tee -a "$log"; }
elapsed() { echo $(( $(date +%s) - started )); }

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
plain_path="$PYTHONPATH"
from_wheels=()
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    site="$work/site"
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
            "$WHEELS"/*.whl >> "$log" 2>&1; then
        export PYTHONPATH="$site:$plain_path"
        for wheel in "$WHEELS"/*.whl; do from_wheels+=("$(basename "$wheel" | cut -d- -f1)"); done
    else
        say "installing $WHEELS/*.whl failed (above): the image's own packages run"
    fi
fi
{
    date -u
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
} >> "$log" 2>&1
versions="import torch, transformers, peft, loretta; print('torch', torch.__version__, 'transformers', \
transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
if ! "$PY" -c "$versions" >> "$log" 2>&1; then
    if [ ${#from_wheels[@]} -eq 0 ]; then say "the imports fail (above): nothing measured"; exit 1; fi
    say "with the wheels from $WHEELS the imports fail (above): the image's own transformers and peft run"
    from_wheels=()
    export PYTHONPATH="$plain_path"
    "$PY" -c "$versions" >> "$log" 2>&1 || { say "the imports fail (above): nothing measured"; exit 1; }
fi
if [ ${#from_wheels[@]} -gt 0 ]; then
    "$PY" -c "import sys, importlib.metadata as m; print('from $WHEELS:', ', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))" \
        "${from_wheels[@]}" >> "$log" 2>&1
fi
say "set up: $(elapsed) s"

# the steps, in order, and their weights: each gets weight / (the weights left) of the time left
steps=()
for preset in $PRESETS; do steps+=("bench $preset"); done
for preset in $GENERATE_PRESETS; do steps+=("generate $preset"); done
weight() {
    case "$1" in
        "bench llama2-7b-gpu") echo 5 ;;    # estimated 150-250 s (2 workers, 10 methods, 7B each)
        "bench deberta-base-gpu") echo 3 ;; # 60-100 s
        "generate llama2-7b-gpu") echo 2 ;; # 60-100 s
        *) echo 2 ;;
    esac
}
weights_left=0
for step in "${steps[@]}"; do weights_left=$(( weights_left + $(weight "$step") )); done

failed=0
for step in "${steps[@]}"; do
    kind=${step%% *} preset=${step#* }
    w=$(weight "$step")
    left=$(( BUDGET_S - $(elapsed) ))
    limit=$(( left * w / weights_left ))
    weights_left=$(( weights_left - w ))
    if [ "$limit" -lt 20 ]; then say "$step: skipped, $left s of the budget left"; failed=1; continue; fi
    start=$(date +%s)
    if [ "$kind" = bench ]; then
        name="$preset"
        cmd=(scripts/bench_methods.py --preset "$preset" --rounds "$ROUNDS" --steps 5 --warmup 2 --methods $METHODS)
    else
        name="generate_$preset"
        cmd=(scripts/bench_generate.py --preset "$preset" --rounds "$ROUNDS" --steps 2 --methods $GENERATE_METHODS)
    fi
    echo "== $step (limit $limit s)" >> "$log"
    backstop=()  # coreutils' timeout where the image has it; the scripts' --time-limit either way
    if command -v timeout > /dev/null; then backstop=(timeout -k 10 $(( limit + 30 ))); fi
    "${backstop[@]}" "$PY" "${cmd[@]}" --per-process round --time-limit "$limit" \
        --out "$OUT/$name.json" --md "$OUT/$name.md" > /dev/null 2>> "$log"
    status=$?
    if [ "$kind" = bench ] && [ -f "$OUT/$name.md" ] && [ -f "$OUT/$name.json" ]; then
        if { cat "$OUT/$name.md"; echo; "$PY" scripts/activation_memory.py --from-bench "$OUT/$name.json"; } \
                > "$work/$name.md" 2>> "$log"; then
            cp "$work/$name.md" "$OUT/$name.md"
        fi
    fi
    say "$step: $(( $(date +%s) - start )) s (limit $limit s), exit status $status"
    [ "$status" -eq 0 ] || failed=1
done
say "total: $(elapsed) s; rows not measured: $(cat "$OUT"/*.md 2>/dev/null | grep -c '| not measured |') (the notes under each table say why)"
for step in "${steps[@]}"; do
    kind=${step%% *} preset=${step#* }
    name=$([ "$kind" = bench ] && echo "$preset" || echo "generate_$preset")
    if [ -f "$OUT/$name.md" ]; then echo; cat "$OUT/$name.md"; fi
done
rm -rf "$work"
exit $failed
