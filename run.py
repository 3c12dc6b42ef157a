"""adadf entry point: `python run.py [group=option ...] [key=value ...]`, `-m` for sweeps."""
import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from adadf.train import train  # imported here so `--help` and config errors stay fast

    return train(cfg)["best_acc"]


if __name__ == "__main__":
    main()
