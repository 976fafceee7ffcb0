"""A run's PEFT adapter on disk: saving the best one (`<output_dir>/adapter/`, the format
`PeftModel.from_pretrained` reads) and starting a run from a saved one (`init_adapter=PATH`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .checks import ConfigError

ADAPTER = "adapter"


def save(model, tokenizer, dest: str | Path, state_dict: dict | None = None) -> None:
    """`save_pretrained` of a PEFT model (and its tokenizer) into `dest`, which appears whole or not
    at all: written beside it, then renamed into place. `state_dict`: the model's weights gathered whole
    when FSDP shards them (sharded.adapter_state)."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _type_name(peft_type) -> str:
    return str(getattr(peft_type, "value", peft_type))


def load_into(model, path: str | Path, method: str) -> None:
    """Replace the freshly built adapter's weights by those saved in `path`. The run's method must
    build the same adapter (type, targets, sizes): every saved tensor must fit, and every trainable
    one must be given."""
    from peft import PeftConfig, PeftModel, get_peft_model_state_dict, set_peft_model_state_dict
    from peft.utils import load_peft_weights

    path = Path(path).expanduser()
    if not isinstance(model, PeftModel):
        raise ConfigError(f"init_adapter needs a PEFT method; method={method} does not build a PEFT model")
    # PEFT's own types are PeftType members, LoRETTA's LorettaPeftType ones, read back by the generic
    # PeftConfig as their plain names: compare the names
    saved_type = _type_name(PeftConfig.from_pretrained(path).peft_type)
    built_type = _type_name(model.peft_config["default"].peft_type)
    if saved_type != built_type:
        raise ConfigError(f"init_adapter={str(path)!r} is a {saved_type} adapter but method={method} builds "
                          f"{built_type}")
    weights = load_peft_weights(str(path), device="cpu")
    upgrade = getattr(type(model.base_model), "upgrade_saved_keys", None)  # LoRETTA's, for older saved adapters
    if upgrade is not None:
        weights = upgrade(weights)
    expected = set(get_peft_model_state_dict(model))
    if set(weights) != expected:
        raise ConfigError(f"init_adapter={str(path)!r} does not fit method={method} on this model: missing "
                          f"{sorted(expected - set(weights))[:3]}, unexpected {sorted(set(weights) - expected)[:3]}")
    try:
        set_peft_model_state_dict(model, weights)
    except RuntimeError as e:  # a size mismatch: another rank, shape or bottleneck
        raise ConfigError(f"init_adapter={str(path)!r} does not fit method={method} (different sizes?): "
                          f"{str(e).splitlines()[-1].strip()}") from e
