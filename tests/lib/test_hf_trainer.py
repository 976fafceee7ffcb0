"""A LoRETTA PeftModel under transformers' Trainer: it trains, checkpoints the adapter (not the base),
and resuming from a checkpoint continues exactly where the uninterrupted run went."""

import os

import pytest
import torch
from peft import PeftModel, get_peft_model_state_dict
from transformers import Trainer, TrainingArguments

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

from .tiny_models import tiny_model

CONFIGS = {
    "adp": lambda: LorettaAdpConfig(task_type="SEQ_CLS", tensor_rank=3, bottleneck_size=8),
    "rep": lambda: LorettaRepConfig(task_type="SEQ_CLS", tensor_rank=3, r=4, lora_dropout=0.0),
}


class RandomPairs(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        ids = torch.randint(0, 100, (8,), generator=torch.Generator().manual_seed(i))
        return {"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long), "labels": torch.tensor(i % 2)}


def _trainer(method, output_dir):
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=4, num_train_epochs=2,
                             learning_rate=1e-2, save_strategy="epoch", logging_steps=1, report_to=[],
                             use_cpu=True, disable_tqdm=True, seed=0)
    model = get_peft_model(tiny_model("bert", task="SEQ_CLS"), CONFIGS[method]())
    return Trainer(model=model, args=args, train_dataset=RandomPairs())


def _losses(trainer):
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_trainer_trains_checkpoints_the_adapter_and_resumes_exactly(tmp_path, method):
    full = _trainer(method, tmp_path)
    initial = {n: p.detach().clone() for n, p in full.model.named_parameters() if p.requires_grad}
    full.train()
    assert all(not torch.equal(p, initial[n]) for n, p in full.model.named_parameters() if p.requires_grad)
    losses = _losses(full)
    assert sorted(losses) == list(range(1, 9))
    checkpoint = tmp_path / "checkpoint-4"
    files = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "adapter_config.json", "optimizer.pt"} <= files
    assert "model.safetensors" not in files  # the frozen base is not copied into every checkpoint

    resumed = _trainer(method, tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    after = _losses(resumed)  # steps 1-4 come back from the checkpoint's trainer_state.json
    assert sorted(after) == list(range(1, 9))
    assert [after[s] for s in range(5, 9)] == pytest.approx([losses[s] for s in range(5, 9)], rel=1e-5)
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, full.model.state_dict()[name], msg=name)


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_trainer_with_bf16_trains_the_layer_norms_of_a_bf16_model(method, tmp_path):
    # the common recipe: a model loaded in bf16, Trainer(bf16=True). Without float32 masters (PEFT's
    # autocast_adapter_dtype=False) the norms' AdamW steps round away in bf16 and none of them moves
    moved = {}
    for masters in (True, False):
        args = TrainingArguments(output_dir=str(tmp_path / str(masters)), per_device_train_batch_size=4,
                                 num_train_epochs=1, learning_rate=1e-3, save_strategy="no", report_to=[],
                                 bf16=True, use_cpu=True, disable_tqdm=True, seed=0)
        model = get_peft_model(tiny_model("llama", task="SEQ_CLS").to(torch.bfloat16), CONFIGS[method](),
                               autocast_adapter_dtype=masters)
        norms = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "norm" in n}
        Trainer(model=model, args=args, train_dataset=RandomPairs()).train()
        params = dict(model.named_parameters())
        moved[masters] = sum(not torch.equal(before, params[n]) for n, before in norms.items()) / len(norms)
    assert moved == {True: 1.0, False: 0.0}


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_trainer_loads_the_best_checkpoint_at_the_end(tmp_path, method):
    """load_best_model_at_end: the Trainer reloads the best checkpoint's adapter into the trained model
    (PeftModel.load_adapter under the active adapter's name), TT cores, norms and head included."""
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, num_train_epochs=3,
                             learning_rate=1e-2, eval_strategy="epoch", save_strategy="epoch", report_to=[],
                             load_best_model_at_end=True, metric_for_best_model="eval_loss",
                             greater_is_better=True,  # the highest loss: an early checkpoint, not the last
                             use_cpu=True, disable_tqdm=True, seed=0)
    model = get_peft_model(tiny_model("bert", task="SEQ_CLS"), CONFIGS[method]())
    trainer = Trainer(model=model, args=args, train_dataset=RandomPairs(), eval_dataset=RandomPairs())
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best is not None and best != str(tmp_path / "checkpoint-12"), best

    reference = PeftModel.from_pretrained(tiny_model("bert", task="SEQ_CLS"), best)
    expected = get_peft_model_state_dict(reference)
    state = get_peft_model_state_dict(trainer.model)
    assert set(state) == set(expected)
    for key, value in expected.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    last = get_peft_model_state_dict(PeftModel.from_pretrained(tiny_model("bert", task="SEQ_CLS"),
                                                               tmp_path / "checkpoint-12"))
    assert any(not torch.equal(last[k], v) for k, v in expected.items())  # so the reload did something
