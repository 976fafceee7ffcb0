"""Run by test_fsdp.py under `torchrun --nproc_per_node 2` (gloo, CPU): LoRETTA models sharded with FSDP2
(`fully_shard` on each decoder layer and the root) train and evaluate exactly as the same model unsharded,
and the runner's checkpoints of a sharded model hold whole tensors that resume it exactly."""

import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
from tests.lib.tiny_models import tiny_batch, tiny_model

CONFIGS = {
    "adp": lambda: LorettaAdpConfig(task_type="CAUSAL_LM", bottleneck_size=8, tensor_rank=3),
    "rep": lambda: LorettaRepConfig(task_type="CAUSAL_LM", r=4, tensor_rank=3, lora_dropout=0.0),
    # a mixture of experts' expert weights (rep/experts.py): stacked cores sharded along the experts
    "experts": lambda: LorettaRepConfig(task_type="CAUSAL_LM", r=4, tensor_rank=3, lora_dropout=0.0,
                                        target_parameters=["experts.gate_up_proj", "experts.down_proj"]),
}
MODEL_TYPES = {"adp": "llama", "rep": "llama", "experts": "qwen3_moe"}


def _model(method, dtype):
    torch.manual_seed(0)
    return get_peft_model(tiny_model(MODEL_TYPES[method], task="CAUSAL_LM").to(dtype), CONFIGS[method]())


def _optimizer(model):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step))


def _steps(model, optimizer, scheduler, batch, steps=2):
    losses = []
    for _ in range(steps):
        loss = model.train()(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _train(model, batch, steps=3):
    losses = _steps(model, *_optimizer(model), batch, steps)
    with torch.no_grad():
        return losses, model.eval()(**batch).logits.float()


def _sharded(method, mesh, dtype=torch.float32):
    model = _model(method, dtype)
    for layer in model.base_model.model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, *_optimizer(model)


def checkpoint_case(method, mesh, folder: Path) -> None:
    """save_checkpoint after 2 steps, 2 more steps; a fresh sharded model resumed from the checkpoint takes
    the same 2 steps; the adapter saved from the gathered state loads onto an unsharded model."""
    from peft import PeftModel

    from loretta.experiment import loop, sharded

    main = dist.get_rank() == 0
    model, optimizer, scheduler = _sharded(method, mesh)
    batch = tiny_batch(_model(method, torch.float32))
    _steps(model, optimizer, scheduler, batch)
    loop.save_checkpoint(folder / "last.pt", model, optimizer, scheduler, loop.TrainState(step=2), main)
    whole = sharded.trainable_state(model)
    expected = _steps(model, optimizer, scheduler, batch)
    with torch.no_grad():
        logits = model.eval()(**batch).logits
    gathered = sharded.adapter_state(model)
    if main:
        shapes = {n: p.shape for n, p in _model(method, torch.float32).named_parameters() if p.requires_grad}
        assert {n: t.shape for n, t in whole.items()} == shapes and not any(isinstance(t, DTensor) for t in whole.values())
        model.save_pretrained(folder / "adapter", state_dict=gathered)
    dist.barrier()

    resumed, optimizer, scheduler = _sharded(method, mesh)
    state = loop.load_checkpoint(folder / "last.pt", resumed, optimizer, scheduler)
    assert state.step == 2 and scheduler.last_epoch == 2
    assert _steps(resumed, optimizer, scheduler, batch) == expected, method
    if main:
        loaded = PeftModel.from_pretrained(tiny_model(MODEL_TYPES[method], task="CAUSAL_LM"), folder / "adapter")
        with torch.no_grad():
            torch.testing.assert_close(loaded.eval()(**batch).logits, logits, rtol=0, atol=0)


def generate_case(method, mesh) -> None:
    """Each process decodes its own prompts to its own length (a process whose batch is done early): with
    synced_gpus, as the runner's evaluation passes under FSDP, the tokens are the unsharded model's."""
    from loretta.experiment import sharded

    model, _, _ = _sharded(method, mesh)
    assert sharded.prepare_generation(model)
    reference = _model(method, torch.float32)
    rank = dist.get_rank()
    batch = tiny_batch(reference, seed=10 + rank)
    kw = dict(max_new_tokens=3 + 3 * rank, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        tokens = model.eval().generate(**batch, synced_gpus=True, **kw)
        assert torch.equal(tokens, reference.eval().generate(**batch, **kw)), method


def main(cases) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for case in cases:
        if case.startswith("generate-"):
            generate_case(case.split("-")[1], mesh)
            if dist.get_rank() == 0:
                print(f"{case}: ok []", flush=True)
            continue
        if case.startswith("checkpoint-"):
            with tempfile.TemporaryDirectory() as tmp:
                # one folder for both processes: the main one writes, both read
                folder = [Path(tmp)]
                dist.broadcast_object_list(folder, src=0)
                checkpoint_case(case.split("-")[1], mesh, folder[0])
            if dist.get_rank() == 0:
                print(f"{case}: ok []", flush=True)
            continue
        method, dtype_name, wrap, *checkpointing = case.split("-")
        dtype = getattr(torch, dtype_name)
        sharded, reference = _model(method, dtype), _model(method, dtype)
        if checkpointing:  # the layers' forwards run again in the backward pass, FSDP gathering again
            for model in (sharded, reference):
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        batch = tiny_batch(reference)
        if wrap == "layers":
            for layer in sharded.base_model.model.model.layers:
                fully_shard(layer, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        losses, logits = _train(sharded, batch)
        ref_losses, ref_logits = _train(reference, batch)
        assert losses == ref_losses, (case, losses, ref_losses)
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=0)
        if dist.get_rank() == 0:
            print(f"{case}: ok {losses}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
