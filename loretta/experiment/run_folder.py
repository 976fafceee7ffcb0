"""Who may write into a run's folder (`<output_dir>`), and from when.

A folder holds one run. A new run (neither `resume` nor `overwrite`) starts only in a folder that holds
no earlier run's files, so a finished result is never replaced by accident: by a second command, or by a
sweep over a setting that is not in the folder's name (both jobs would share one folder). Otherwise:

  completed (results.json)        resume=true: left as it is, only with the settings it was run with;
                                  overwrite=true: removed, run again
  unfinished (checkpoint/, metrics.jsonl, or the marker of a run that is going or was killed)
                                  resume=true: continued from checkpoint/last.pt, only with the settings
                                  it was started with; overwrite=true: removed, run again

While a run goes, `.running` marks its folder (made with O_EXCL, so two runs started together into one
folder cannot both pass); it is removed when the run ends, however it ends, except on SIGKILL.

A run is refused early (`refuse_if_taken`, before anything is loaded) but claims the folder (`claim`:
the earlier run removed, the marker made) only once its data, model and method are built: until then it
has changed nothing in the folder, so an error or a kill while building (a bad method value, a missing
data file, a model too large for memory) leaves an earlier run there as it was, with overwrite=true too.
(Rather than setting the earlier run aside at the start and restoring it on an error: a SIGKILL, the
out-of-memory killer's, would leave it set aside, and the folder in a state of its own to recover from.)
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .checks import ConfigError
from .results import RESULTS, read_completed, write_json_atomic

RUNNING = ".running"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint"
RUN_CONFIG = "run_config.json"  # in checkpoint/: the settings the checkpoint's run was started with
# what a run writes (Hydra's .hydra/ record and run.log are Hydra's, and stay)
RUN_FILES = (RESULTS, METRICS, CHECKPOINT, "adapter", "wandb", RUNNING)
# settings a resumed run may change: where it logs and what it keeps, not what it computes
MAY_CHANGE_ON_RESUME = ("resume", "overwrite", "logger", "output_root", "output_dir", "experiment_name",
                        "experiment_preset", "task.data_dir", "train.progress_bar", "train.num_workers",
                        "train.keep_checkpoint", "train.save_adapter")


def earlier_run(out: Path) -> str | None:
    """What `out` holds of an earlier run, in words; None if nothing."""
    done = read_completed(out)
    if done is not None:
        metric = done.get("primary_metric")
        score = (done.get("metrics") or {}).get(metric)
        return f"a completed run ({RESULTS}" + (f": {metric} {score:.4f})" if isinstance(score, float) else ")")
    if (out / RUNNING).exists():
        return f"a run that is going or was killed ({RUNNING}: {_read_marker(out / RUNNING)})"
    found = [name for name in RUN_FILES if (out / name).exists()]
    return f"an unfinished run ({', '.join(found)})" if found else None


def refuse_if_taken(out: Path, resume: bool, overwrite: bool) -> None:
    """The rules above, read-only: a run neither resumed nor told to overwrite stops here if `out` already
    holds a run."""
    found = earlier_run(out)
    if found is not None and not (resume or overwrite):
        raise ConfigError(
            f"output_dir {out} already holds {found}. Pass resume=true to continue (a completed run is left "
            "as it is), overwrite=true to replace it, or give this run its own folder (variant=_<name>, "
            "output_root=..., or output_dir=...); a sweep over a setting that is not in the folder's name "
            "needs variant=... for each value")


def claim(out: Path, resume: bool, overwrite: bool) -> None:
    """Make `out` this run's, per the rules above (a completed run with resume=true never gets here: the
    loop returns its record first). Only the main process calls it, once the run is built (see above):
    from here on an earlier run's files are gone."""
    refuse_if_taken(out, resume, overwrite)  # again: another run may have started in the meantime
    if overwrite or (resume and not (out / CHECKPOINT / "last.pt").is_file()):
        remove_run_files(out)  # resume without a checkpoint starts from scratch: nothing earlier is kept
    out.mkdir(parents=True, exist_ok=True)
    (out / RUNNING).unlink(missing_ok=True)  # a killed run's marker (resume / overwrite: the user's choice)
    _make_marker(out / RUNNING)


def release(out: Path) -> None:
    (out / RUNNING).unlink(missing_ok=True)


def remove_run_files(out: Path) -> None:
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _make_marker(path: Path) -> None:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        raise ConfigError(f"another run started writing into {path.parent} just now ({_read_marker(path)}); "
                          "give each run its own folder") from None
    with os.fdopen(fd, "w") as f:
        json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)


def _read_marker(path: Path) -> str:
    try:
        marker = json.loads(path.read_text())
        return f"pid {marker['pid']} on {marker['host']}, started {marker['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "no details"


@contextmanager
def sigterm_raises_system_exit():
    """SIGTERM (a scheduler's time limit, `kill`) ends the run as an exception does: the clean-up runs
    (the marker, a half-written checkpoint, an unstarted folder) and the exit status is 143, as for an
    unhandled SIGTERM. The last checkpoint stays for resume=true."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def save_hydra_record(out: Path, cfg) -> None:
    """Hydra's record of the run (.hydra/config.yaml, hydra.yaml, overrides.yaml), written once the folder
    is this run's: Hydra itself would write it before the run starts (hydra.output_subdir, null in
    configs/config.yaml), over the record of a finished run that this one is then refused to replace."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return  # train() called directly (tests, notebooks)
    hydra_cfg = HydraConfig.get()
    record = out / ".hydra"
    record.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, record / "config.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), record / "hydra.yaml")
    OmegaConf.save(hydra_cfg.overrides.task, record / "overrides.yaml")


# -- resuming ---------------------------------------------------------------------------------------


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat or {prefix: {}}


def _may_change(key: str) -> bool:
    key = key.rstrip(".")
    return any(key == k or key.startswith(k + ".") for k in MAY_CHANGE_ON_RESUME)


def save_run_config(out: Path, config: dict) -> None:
    """Once per run, beside its first checkpoint (a folder's earlier run files are gone by then: claim)."""
    path = out / CHECKPOINT / RUN_CONFIG
    if not path.is_file():
        write_json_atomic(path, config)


def recorded_settings(out: Path) -> tuple[str, str, dict] | None:
    """The settings the run in `out` was made with, as (what it is, what the message calls its values,
    settings): a completed run's (its results.json), else its checkpoint's (checkpoint/run_config.json);
    None where neither records them (a run from before they were recorded is trusted)."""
    done = read_completed(out)
    if done is not None:
        return (f"the completed run in {out}", "the completed run", done["config"]) if "config" in done else None
    path = out / CHECKPOINT / RUN_CONFIG
    if (out / CHECKPOINT / "last.pt").is_file() and path.is_file():
        return str(out / CHECKPOINT), "the checkpoint's run", json.loads(path.read_text())
    return None


def check_resume_config(out: Path, config: dict) -> None:
    """resume=true continues, or leaves as it is, only the run made with these settings, but for where
    it logs and what it keeps (MAY_CHANGE_ON_RESUME): a completed run made with others would otherwise
    stand for these (a sweep over train.lr with resume=true would find every value "done")."""
    found = recorded_settings(out)
    if found is None:
        return
    what, theirs, recorded = found
    before, now = _flat(recorded), _flat(config)
    changed = sorted(k for k in set(before) | set(now) if not _may_change(k) and before.get(k) != now.get(k))
    if changed:
        shown = "; ".join(f"{k.rstrip('.')}={now.get(k)!r} ({theirs}: {before.get(k)!r})" for k in changed[:8])
        raise ConfigError(
            f"resume=true: {what} was made with other settings: {shown}"
            + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
            + ". Resume with the settings it was started with, pass overwrite=true to run again with these, "
            "or give this run its own folder (variant=_<name>)")


def truncate_metrics(out: Path, step: int) -> None:
    """metrics.jsonl as it was at the checkpoint (`step`): the lines a killed run logged after it are
    logged again by the resumed run."""
    path = out / METRICS
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    tmp.replace(path)

