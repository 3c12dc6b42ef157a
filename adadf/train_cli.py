"""``adadf-train`` / ``python -m adadf.train_cli``: what ``python run.py`` does in a checkout.

``adadf-train [group=option ...] [key=value ...]``, ``-m`` for sweeps (``-m sweep=<name>``). The
configs ship inside the package (``adadf.conf``), so the command works from any directory after a
plain ``pip install``. Hydra names the job ``run`` (``hydra.job.name`` in ``config.yaml``): the
log is ``run.log`` whichever of the two commands started it.
"""
import sys

import hydra
from omegaconf import DictConfig

from adadf.cli import job, launch
from adadf.conf import CONFIG_PATH
from adadf.engine.distributed import hydra_argv_for_rank


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
@job
def _main(cfg: DictConfig) -> float | None:
    from adadf.task import run_task  # imported here so `--help` and config errors stay fast

    return run_task(cfg)  # the objective; in a multirun a failed job is recorded, not raised


def main() -> None:
    """The command: under torchrun only rank 0's Hydra writes files; user errors are one line."""
    sys.argv = hydra_argv_for_rank(sys.argv)
    launch(_main)


if __name__ == "__main__":
    main()
