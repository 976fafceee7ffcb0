"""The results record of a run (`<output_dir>/results.json`) and how it is written: atomically (a
temporary file in the same folder, then a rename), so a reader sees the old record or the new one,
never half of one; a run that fails writes none."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import tempfile
from pathlib import Path

import torch

RESULTS = "results.json"
COMPLETED = "completed"
REPO = Path(__file__).resolve().parents[2]


def write_json_atomic(path: str | Path, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's file is private (0600); the record is not
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # reading it means setting it: put it straight back
    os.umask(mask)
    return mask


def read_completed(output_dir: str | Path) -> dict | None:
    """The record of a completed run in `output_dir`, else None."""
    path = Path(output_dir) / RESULTS
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("status") == COMPLETED else None


def git_commit() -> str:
    """HEAD of the repository the code runs from ("+dirty" when it has uncommitted changes)."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(REPO), *a], capture_output=True, text=True, timeout=10)  # noqa: E731
        head = run("rev-parse", "HEAD")
        if head.returncode != 0:
            return "unknown"
        dirty = run("status", "--porcelain", "--untracked-files=no").stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    import accelerate
    import peft
    import transformers

    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "accelerate": accelerate.__version__}


def reset_peak_memory() -> None:
    """Start measuring this run's peak: the jobs of a Hydra multirun share one process, and CUDA's peak
    would otherwise be the largest of every job so far. (A process's peak RSS cannot be reset.)"""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory() -> tuple[int, str]:
    """(bytes, what was measured): the accelerator's peak allocation since `reset_peak_memory`, else the
    process's peak RSS (over its whole life: in a multirun, earlier jobs' too)."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), each parameter once."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        numel = p.numel()
        if type(p).__name__ == "Params4bit":  # bitsandbytes packs two 4-bit values per byte of storage
            numel *= 2 * p.element_size()
        total += numel
        trainable += numel if p.requires_grad else 0
    return trainable, total
