#!/usr/bin/env bash
# The GPU measurements of issues 2 and 5, as one prepared command for a session that has the device
# machine (its image has torch, transformers, peft and accelerate, but not at our pinned versions;
# nothing can be fetched there). First, here: `bash scripts/gpu_wheels.sh` (the pinned transformers
# and peft as wheels in .whl/, ~14 MB), then
#     run(command="bash scripts/gpu_checks.sh", carry=[".whl"], timeout_s=560)
# installs them for this run only (pip --target a temporary folder, first on PYTHONPATH) when .whl/ is there.
# writes, under $OUT (default results/bench): gpu.txt (hardware and versions), <preset>.md and
# <preset>.json from scripts/bench_methods.py, activation_memory_<preset>.md from
# scripts/activation_memory.py, and last (so a run cut short keeps the rest) generate_<preset>.md /
# .json from scripts/bench_generate.py. Copy them into results/bench/ and the README's speed section.
# PRESETS, GENERATE_PRESETS, ROUNDS, METHODS, GENERATE_METHODS and WHEELS (default .whl) override the
# defaults; `PRESETS=tiny-cpu GENERATE_PRESETS=tiny-cpu` smoke-tests it on a CPU (tests do).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-results/bench}"
PRESETS="${PRESETS:-deberta-base-gpu llama2-7b-gpu}"
ROUNDS="${ROUNDS:-2}"
METHODS="${METHODS:-floor ft lora ia3 adapters loretta_adp loretta_rep loretta_adp_factors loretta_adp_stored_norms loretta_rep_stored_norms}"
GENERATE_PRESETS="${GENERATE_PRESETS:-llama2-7b-gpu}"
GENERATE_METHODS="${GENERATE_METHODS:-base lora loretta_adp loretta_rep loretta_rep_merged}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
from_wheels=()
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    site=$(mktemp -d)
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    for wheel in "$WHEELS"/*.whl; do from_wheels+=("$(basename "$wheel" | cut -d- -f1)"); done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
{
    date -u
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
    "$PY" -c "import torch, transformers, peft; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())"
    if [ ${#from_wheels[@]} -gt 0 ]; then
        "$PY" -c "import sys, importlib.metadata as m; print('from $WHEELS:', ', '.join(f'{n} {m.version(n)}' for n in sys.argv[1:]))" "${from_wheels[@]}"
    fi
} > "$OUT/gpu.txt"
for preset in $PRESETS; do
    start=$(date +%s)
    "$PY" scripts/bench_methods.py --preset "$preset" --rounds "$ROUNDS" --steps 5 --warmup 2 --methods $METHODS \
        --out "$OUT/$preset.json" > "$OUT/$preset.md.tmp"
    mv "$OUT/$preset.md.tmp" "$OUT/$preset.md"
    "$PY" scripts/activation_memory.py --preset "$preset" --methods $METHODS > "$OUT/activation_memory_$preset.md.tmp"
    mv "$OUT/activation_memory_$preset.md.tmp" "$OUT/activation_memory_$preset.md"
    echo "$preset: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
    cat "$OUT/$preset.md"
done
for preset in $GENERATE_PRESETS; do
    start=$(date +%s)
    "$PY" scripts/bench_generate.py --preset "$preset" --rounds "$ROUNDS" --steps 2 --methods $GENERATE_METHODS \
        --out "$OUT/generate_$preset.json" > "$OUT/generate_$preset.md.tmp"
    mv "$OUT/generate_$preset.md.tmp" "$OUT/generate_$preset.md"
    echo "generate $preset: $(( $(date +%s) - start )) s" | tee -a "$OUT/gpu.txt"
    cat "$OUT/generate_$preset.md"
done
