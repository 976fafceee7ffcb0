"""FSDP2 (what `accelerate launch --config_file configs/accelerate/fsdp.yml` runs for LLaMA-2-70B) on two CPU
processes: the TT layers of a sharded decoder layer must not be rebuilt before its parameters are gathered,
and the runner's checkpoints (loretta/experiment/sharded.py) gather whole tensors and resume exactly."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CASES = ["adp-float32-layers", "rep-float32-layers", "adp-bfloat16-layers", "rep-bfloat16-layers",
         "adp-float32-root", "rep-float32-root", "adp-float32-layers-checkpointing", "rep-float32-root-checkpointing",
         "checkpoint-adp", "checkpoint-rep", "generate-adp", "generate-rep",
         # LoRETTA_rep on a mixture of experts' expert weights: stacked cores sharded along the experts
         "experts-float32-layers", "experts-bfloat16-layers-checkpointing", "checkpoint-experts"]


def test_fully_sharded_training_evaluation_and_checkpoints_equal_the_unsharded_model():
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "tests.lib.fsdp_worker",
                           *CASES], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    done = [line.split(":")[0] for line in proc.stdout.splitlines() if ": ok " in line]
    assert done == CASES, proc.stdout
