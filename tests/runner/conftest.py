"""Fixtures of the runner tests: real data subsets, and one task of each kind."""

import json
import os
from pathlib import Path

import pytest
import torch

from .helpers import SHARED_DATA

for key, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "WANDB_MODE": "disabled", "TOKENIZERS_PARALLELISM": "false"}.items():
    os.environ.setdefault(key, value)

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: thread start-up costs more than it saves (5x faster on a shared 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "glue" / "SST-2" / "train.tsv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def sst2_small(tmp_path_factory, shared_data) -> Path:
    """The first 200 rows of the real GLUE SST-2 train and dev files (same format, parsed in a blink)."""
    folder = tmp_path_factory.mktemp("sst2") / "SST-2"
    folder.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        lines = (shared_data / "glue" / "SST-2" / name).read_text().splitlines(keepends=True)
        (folder / name).write_text("".join(lines[:201]))
    return folder


@pytest.fixture(scope="session")
def squad_dir(tmp_path_factory, shared_data) -> Path:
    """SQuAD v1.1 files (train and dev) holding a few real paragraphs of the shared dev set."""
    dev = json.loads((shared_data / "squad" / "dev-v1.1.json").read_text())
    small = {"version": dev["version"],
             "data": [{"title": a["title"], "paragraphs": a["paragraphs"][:2]} for a in dev["data"][:3]]}
    folder = tmp_path_factory.mktemp("squad")
    for name in ("train-v1.1.json", "dev-v1.1.json"):
        (folder / name).write_text(json.dumps(small))
    return folder


@pytest.fixture(scope="session")
def kinds(shared_data, sst2_small, squad_dir) -> dict:
    """One task of each kind: (task, data_dir, extra overrides)."""
    return {
        "classification": ("sst2", sst2_small, []),
        "regression": ("stsb", FIXTURES, []),
        "multiple_choice": ("copa", shared_data, ["train.protocol=mezo"]),
        "generation": ("squad", squad_dir, ["train.protocol=mezo"]),
    }
