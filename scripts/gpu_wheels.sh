#!/usr/bin/env bash
# The pinned transformers and peft (requirements.txt) as wheels in .whl/, for the device machine,
# whose image has other versions and cannot fetch: scripts/gpu_checks.sh installs them there when
# the run carries .whl (both are pure Python; the image's huggingface-hub, tokenizers and safetensors
# satisfy what they require).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pins=$(grep -E '^(transformers|peft)==' requirements.txt)
rm -rf .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: -d .whl $pins
ls .whl
