"""OmegaConf resolvers the run configs use (configs/config.yaml). Imported by the entry point before
Hydra composes, and by loretta.experiment for configs composed in-process (tests, notebooks)."""

from __future__ import annotations

from omegaconf import OmegaConf


def model_tag(name: str, quantization: str | None) -> str:
    """How runs of a model are filed and recorded: its name, with -4bit / -8bit when it is loaded
    quantized, so a quantized run never shares a folder (or a table cell) with a full-precision one."""
    return f"{name}-{quantization}" if quantization else str(name)


def register() -> None:
    OmegaConf.register_new_resolver("model_tag", model_tag, replace=True)


register()
