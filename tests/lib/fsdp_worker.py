"""Run by test_fsdp.py under `torchrun --nproc_per_node 2` (gloo, CPU): LoRETTA models sharded with FSDP2
(`fully_shard` on each decoder layer and the root) train and evaluate exactly as the same model unsharded."""

import sys

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model
from tests.lib.tiny_models import tiny_batch, tiny_model

CONFIGS = {
    "adp": lambda: LorettaAdpConfig(task_type="CAUSAL_LM", bottleneck_size=8, tensor_rank=3),
    "rep": lambda: LorettaRepConfig(task_type="CAUSAL_LM", r=4, tensor_rank=3, lora_dropout=0.0),
}


def _model(method, dtype):
    torch.manual_seed(0)
    return get_peft_model(tiny_model("llama", task="CAUSAL_LM").to(dtype), CONFIGS[method]())


def _train(model, batch, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(steps):
        loss = model.train()(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        return losses, model.eval()(**batch).logits.float()


def main(cases) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for case in cases:
        method, dtype_name, wrap = case.split("-")
        dtype = getattr(torch, dtype_name)
        sharded, reference = _model(method, dtype), _model(method, dtype)
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
