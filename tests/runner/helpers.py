"""Composing and running configs in-process (fast: one Python, one import of torch/transformers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
       "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}

# A few optimizer steps on a few examples: every end-to-end test starts from these.
TINY = ["train=quick", "train.num_train=8", "train.num_dev=8", "train.num_test=8", "train.batch_size=4",
        "train.max_steps=2", "train.eval_every=2", "train.eval_batch_size=8", "train.max_length=48",
        "train.max_new_tokens=4", "logger.wandb=off"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from loretta import hydra_resolvers  # noqa: F401  (${model_tag:...}, as loretta.run registers it)

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def run(overrides: list[str], tmp_path: Path) -> dict:
    """Compose and train in this process; the results record."""
    from loretta.experiment import train

    cfg = compose([*TINY, f"output_root={tmp_path}", *overrides])
    return train(cfg)


def cli(args: list[str], cwd: Path = REPO, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m loretta.run ARGS` in a subprocess."""
    return subprocess.run([sys.executable, "-m", "loretta.run", *args], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


def read_results(folder: Path) -> dict:
    return json.loads((Path(folder) / "results.json").read_text())


def die_after_checkpoint(monkeypatch, step: int) -> None:
    """From now on a run stops (KeyboardInterrupt, as a kill) right after saving its checkpoint at `step`;
    monkeypatch.undo() or a new setattr puts the loop's save_checkpoint back."""
    from loretta.experiment import loop

    original = loop.save_checkpoint

    def save_then_die(path, model, optimizer, scheduler, state, write=True):
        original(path, model, optimizer, scheduler, state, write)
        if state.step == step:
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
