"""Where LoRETTA goes in each model family by default: loretta/presets.py's table as Markdown, one row per
placement with every transformers `model_type` that shares it (README.md holds this output; a test keeps
the two the same).

    python scripts/presets_table.py
"""

from __future__ import annotations

from loretta.presets import FAMILY_PRESETS, FamilyPreset


def _names(names: tuple[str, ...] | str | None) -> str:
    if not names:
        return "—"
    return " ".join(f"`{n}`" for n in ((names,) if isinstance(names, str) else names))


def preset_table() -> str:
    rows: dict[FamilyPreset, list[str]] = {}  # presets are frozen dataclasses: equal placements share a row
    for model_type, preset in FAMILY_PRESETS.items():
        rows.setdefault(preset, []).append(model_type)
    lines = ["| model_type | LoRETTA_adp: output of | LoRETTA_adp: input of | LoRETTA_rep | tensorized head layer "
             "(SEQ_CLS) | norms kept frozen |",
             "|---|---|---|---|---|---|"]
    for preset, model_types in rows.items():
        scope = f" (inside `{preset.within}` only)" if preset.within else ""
        lines.append(f"| {', '.join(f'`{t}`' for t in model_types)}{scope} | {_names(preset.adp_output_side)} | "
                     f"{_names(preset.adp_input_side)} | {_names(preset.rep_targets)} | {_names(preset.head_dense)} | "
                     f"{_names(preset.frozen_norms)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(preset_table())
