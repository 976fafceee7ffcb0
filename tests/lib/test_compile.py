"""torch.compile traces a LoRETTA model in one graph, with eager's loss and gradients.

The default settings are the ones with something to trace around: noise_reduction's cached frozen
cores (a cache keyed on data pointers) and the trainable norms recomputed in the backward (an
autograd.grad call); each was a graph break at every layer. aot_eager traces forward and backward as
inductor would, without needing a C++ compiler.
"""

import pytest
import torch

from loretta import LorettaAdpConfig, LorettaRepConfig, get_peft_model

from .tiny_models import tiny_batch, tiny_model

CONFIGS = {
    "adp": lambda: LorettaAdpConfig(task_type="CAUSAL_LM", bottleneck_size=8),
    "rep": lambda: LorettaRepConfig(task_type="CAUSAL_LM", r=8, lora_dropout=0.0),  # no randomness to compare
}


def _loss_and_grads(model, forward, batch):
    model.zero_grad()
    loss = forward(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["adp", "rep"])
def test_torch_compile_traces_one_graph_with_eager_gradients(method):
    torch.manual_seed(0)
    model = get_peft_model(tiny_model("llama", task="CAUSAL_LM"), CONFIGS[method]()).train()
    batch = tiny_batch(model)
    eager_loss, eager_grads = _loss_and_grads(model, model, batch)  # also fills the frozen-core cache
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break raises
    compiled_loss, compiled_grads = _loss_and_grads(model, compiled, batch)
    torch.testing.assert_close(compiled_loss, eager_loss)
    assert compiled_grads.keys() == eager_grads.keys()
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    # eager again afterwards: the recompute and the cache are still used outside the compiled graph
    assert _loss_and_grads(model, model, batch)[0] == eager_loss
