"""adadf entry point: `python run.py [group=option ...] [key=value ...]`, `-m` for sweeps."""
import sys

import hydra
from omegaconf import DictConfig

from adadf.cli import job, launch
from adadf.engine.distributed import hydra_argv_for_rank


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@job
def main(cfg: DictConfig) -> float | None:
    from adadf.task import run_task  # imported here so `--help` and config errors stay fast

    return run_task(cfg)  # the objective; in a multirun a failed job is recorded, not raised


if __name__ == "__main__":
    sys.argv = hydra_argv_for_rank(sys.argv)  # torchrun: only rank 0's Hydra writes files
    launch(main)
