"""The experiment runner: joins the library (loretta) and the benchmarks (tasks) under Hydra configs.

    from loretta.experiment import train      # train(cfg) -> results record; cfg = a composed config

Modules, one job each: models (model registry), methods (method registry), prefix (encoder prefix
tuning), peft_generation (PEFT's prefix / prompt tuning in transformers 5's generate), data
(examples -> tensors, losses, predictions), loop (the training loop), adapters (a run's saved
adapter, and starting from one), results (results.json, versions), run_folder (one run per folder),
sharded (checkpoints under FSDP), logging (metrics.jsonl and wandb), checks (config errors), counts
(a run's trainable parameters without weights: the model on the meta device).
`import loretta` never imports this package: Hydra, wandb, datasets and tasks stay out of the library.
"""

from .. import hydra_resolvers  # noqa: F401  (configs composed in-process resolve ${model_tag:...} too)
from .checks import ConfigError
from .loop import NonFiniteLossError, train

__all__ = ["ConfigError", "NonFiniteLossError", "train"]
