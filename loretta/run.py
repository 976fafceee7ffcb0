"""Hydra entry point: `python -m loretta.run model=<m> task=<t> method=<meth> [overrides]`
(also the console script `loretta-run`). `--help` lists the choices of every config group;
`-m` runs a sweep (locally, or on SLURM with `hydra/launcher=slurm`). The configs are in
configs/ at the repository root; the work is done by `loretta.experiment.train`.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from loretta import hydra_resolvers  # noqa: F401  (registers ${model_tag:...} before Hydra composes)


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from loretta.experiment import ConfigError, train

    try:
        record = train(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.RUN:  # one run: the message alone; a sweep goes on to the next job
            print(f"loretta-run: error: {e}", file=sys.stderr)
            sys.exit(2)
        raise
    return record["metrics"].get(record["primary_metric"])  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
