"""Where a run's numbers go while it trains: `<output_dir>/metrics.jsonl` always (one JSON line per
log or evaluation), and Weights & Biases when `logger.wandb` allows it.

logger.wandb: on       online when a W&B key is available (WANDB_API_KEY or ~/.netrc), else offline
              offline  W&B's offline mode (sync later with `wandb sync <output_dir>/wandb/...`)
              off      no W&B at all (wandb is not imported)
WANDB_MODE=disabled in the environment wins (the tests set it). Runs are grouped by
`logger.group` (the experiment), tagged task / model / method, and carry the resolved config and
the trainable parameter count.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from .checks import wandb_mode


def _has_wandb_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path.home() / ".netrc"
    try:
        return netrc.is_file() and "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def resolve_mode(setting) -> str:
    """on/offline/off + the environment -> the W&B mode to use ("online", "offline" or "off")."""
    mode = wandb_mode(setting)
    if os.environ.get("WANDB_MODE", "").lower() in ("disabled", "dryrun") or mode == "off":
        return "off"
    if mode == "offline" or os.environ.get("WANDB_MODE", "").lower() == "offline":
        return "offline"
    return "online" if _has_wandb_key() else "offline"


class Tracker:
    """Logs to metrics.jsonl and (maybe) W&B. Only the main process should make one that is `active`."""

    def __init__(self, logger_cfg, *, output_dir, name: str, tags: list[str], config: dict, active: bool = True):
        self.active = active
        self.path = Path(output_dir) / "metrics.jsonl"
        self.run = None
        if not active:
            return
        self.mode = resolve_mode(logger_cfg.wandb)
        if self.mode == "off":
            return
        import wandb

        if self.mode == "offline" and wandb_mode(logger_cfg.wandb) == "on":
            print("[loretta] no W&B key found: logging to W&B offline (wandb sync to upload)", flush=True)
        try:
            self.run = wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group,
                                  name=name, tags=[*tags, *(logger_cfg.tags or [])], config=config,
                                  dir=str(output_dir), mode=self.mode, reinit="finish_previous")
        except Exception as e:  # no network, bad key...: the run goes on, results.json still gets written
            print(f"[loretta] W&B unavailable ({type(e).__name__}: {e}); continuing without it", flush=True)
            self.run = None

    def log(self, values: dict, step: int) -> None:
        if not self.active:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, "time": round(time.time(), 3), **values}) + "\n")
        if self.run is not None:
            self.run.log(values, step=step)

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
