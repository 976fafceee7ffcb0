"""Hydra entry point: `python -m loretta.run model=<m> task=<t> method=<meth> [overrides]`
(also the console script `loretta-run`). `--help` lists the choices of every config group;
`-m` runs a sweep (locally, or on SLURM with `hydra/launcher=slurm`). The configs are in
configs/ at the repository root; the work is done by `loretta.experiment.train`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from loretta.experiment import train

    record = train(cfg)
    return record["metrics"].get(record["primary_metric"])  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
