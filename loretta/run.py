"""Hydra entry point: `python -m loretta.run model=<m> task=<t> method=<meth> [overrides]`
(also the console script `loretta-run`). `--help` lists the choices of every config group;
`-m` runs a sweep (locally, or on SLURM with `hydra/launcher=slurm`). The configs are in
configs/ at the repository root; the work is done by `loretta.experiment.train`.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from loretta import hydra_resolvers  # noqa: F401  (registers ${model_tag:...} before Hydra composes)


# an absolute path: a relative one is read against the calling module's package when the run starts
# from the `loretta-run` console script ("Primary config module 'configs' not found")
CONFIGS = str(Path(__file__).resolve().parents[1] / "configs")


@hydra.main(config_path=CONFIGS, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from loretta.experiment import ConfigError, train

    try:
        record = train(cfg)
    except BaseException as e:
        drop_unstarted_run_folder(Path(HydraConfig.get().runtime.output_dir), Path(str(cfg.output_root)))
        if isinstance(e, ConfigError) and HydraConfig.get().mode == RunMode.RUN:
            # one run: the message alone; a sweep goes on to the next job
            print(f"loretta-run: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    return record["metrics"].get(record["primary_metric"])  # what a Hydra sweeper would optimise


def drop_unstarted_run_folder(folder: Path, root: Path) -> None:
    """Hydra makes the run's folder (its .hydra/ record and an empty run.log) before the run starts;
    a run that stops before writing anything of its own (a bad value, a model package not
    installed) removes it, and the folders above it that it leaves empty up to `root`, so results/
    is left as it was. A folder with anything else in it (a checkpoint, metrics, an earlier run's
    results) is kept."""
    if not folder.is_dir():
        return
    entries = {entry.name: entry for entry in folder.iterdir()}
    log = entries.get("run.log")
    if not (set(entries) <= {".hydra", "run.log"} and (log is None or log.stat().st_size == 0)):
        return
    shutil.rmtree(folder)
    root = root.resolve()
    parent = folder.resolve().parent
    while parent != root and parent.is_relative_to(root) and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


if __name__ == "__main__":
    main()
