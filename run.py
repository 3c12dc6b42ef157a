"""adadf entry point: `python run.py [group=option ...] [key=value ...]`, `-m` for sweeps."""
import sys

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from adadf.tracking.sweep import run_job  # imported here so `--help` and config errors stay fast
    from adadf.train import train

    return run_job(train, cfg)  # best accuracy; in a multirun a failed job is recorded, not raised


if __name__ == "__main__":
    from adadf.engine.distributed import hydra_argv_for_rank

    sys.argv = hydra_argv_for_rank(sys.argv)  # torchrun: only rank 0's Hydra writes files
    main()
