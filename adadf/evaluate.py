"""Evaluate a trained checkpoint on a dataset's test split.

    python -m adadf.evaluate checkpoint=outputs/.../checkpoints/best.pt      # its own dataset
    python -m adadf.evaluate checkpoint=model_best.pth.tar dataset=raf dataset.root=PATH
    adadf-eval checkpoint=... logger=wandb                                  # also to W&B

Writes into the output dir (``hydra.run.dir``, default ``outputs/eval/<date>/<time>``):
``eval_summary.json`` (overall, mean-class and per-class accuracy), ``per_class_acc.csv``,
``confusion_matrix.csv`` (rows: true class, columns: predicted class) and ``confusion_matrix.png``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from adadf.cli import job
from adadf.conf import CONFIG_PATH
from adadf.config.dataset import dataset_name
from adadf.errors import UserError
from adadf.tracking import plots
from adadf.words import counted

if TYPE_CHECKING:
    from adadf.engine.loop import EvalResult

log = logging.getLogger(__name__)


def write_confusion_csv(confusion: torch.Tensor, names: Sequence[str], path: Path) -> None:
    """confusion [C, C] int counts; row = true class, column = predicted class."""
    import pandas as pd

    from adadf.tracking.files import write_text_atomic

    frame = pd.DataFrame(confusion.tolist(), index=list(names), columns=list(names))
    frame.index.name = "true \\ predicted"
    write_text_atomic(path, frame.to_csv())


def write_report(result: EvalResult, names: Sequence[str], out_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """Write the evaluation files into ``out_dir``; returns the summary written to eval_summary.json.
    Accuracies in percent, as everywhere in adadf."""
    import json

    import pandas as pd

    from adadf.tracking.files import write_text_atomic

    confusion = result.confusion
    support = confusion.sum(1).tolist()
    per_class = pd.DataFrame({
        "class": list(names), "support": support, "correct": confusion.diag().tolist(),
        "accuracy": result.per_class_acc,
    })
    write_text_atomic(out_dir / "per_class_acc.csv", per_class.to_csv(index=False))
    write_confusion_csv(confusion, names, out_dir / "confusion_matrix.csv")
    plots.confusion_heatmap(confusion.numpy(), names, out_dir / "confusion_matrix.png",
                            title=f"acc {result.acc:.2f}%  mean-class {result.mean_class_acc:.2f}%")
    summary = {
        **info,
        "num_images": int(confusion.sum()),
        "acc": result.acc,
        "mean_class_acc": result.mean_class_acc,
        "per_class_acc": dict(zip(names, result.per_class_acc)),
    }
    write_text_atomic(out_dir / "eval_summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def evaluate_checkpoint(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The composition root of the command: checkpoint + dataset -> metrics files (+ W&B)."""
    from adadf import app, inference
    from adadf.engine.loop import StepContext, evaluate

    if cfg.checkpoint is None:
        raise UserError("checkpoint: missing; expected checkpoint=PATH (an adadf .pt or an Ada-DF .pth.tar)")
    checkpoint = inference.read_checkpoint(cfg.checkpoint, bool(cfg.get("allow_pickle", False)))
    dataset = inference.dataset_config(checkpoint, cfg.get("dataset"), "python -m adadf.evaluate")
    train_seed = int((checkpoint.config or {}).get("seed", 0))
    data = app.build_data(app.dataset_node(dataset), train_seed)
    if checkpoint.class_names is not None and checkpoint.class_names != list(data.class_names):
        raise UserError(
            f"{checkpoint.path}: trained on classes {checkpoint.class_names} but the dataset has "
            f"{list(data.class_names)}; expected the same classes in the same order"
        )
    device = app.resolve_device(str(cfg.device))
    backbone = cfg.backbone.name if cfg.get("backbone") else None
    model = inference.load_model(checkpoint, data.num_classes, backbone, device)
    ctx = StepContext(device=device, progress=bool(cfg.progress))
    result = evaluate(model, data.test_loader, data.num_classes, ctx, batch_transform=data.eval_batch_transform)

    info = {"checkpoint": str(checkpoint.path), "format": checkpoint.format, "epoch": checkpoint.epoch,
            "dataset": dataset_name(dataset), "dataset_root": dataset.get("root")}
    summary = write_report(result, data.class_names, out_dir, info)
    log.info("%s on %s: acc %.2f%%, mean-class %.2f%% (%s); results in %s", checkpoint.path.name,
             info["dataset"], result.acc, result.mean_class_acc, counted(summary["num_images"], "image"), out_dir)

    logger = app.build_logger(cfg, job_type="eval", name=f"eval-{checkpoint.path.stem}")
    logger.start(out_dir, {"evaluate": OmegaConf.to_container(cfg, resolve=True), "dataset": dataset})
    exit_code = 1
    try:
        logger.log_summary({"test/acc": result.acc, "test/mean_class_acc": result.mean_class_acc,
                            "test/num_images": summary["num_images"]})
        logger.log_evaluation(result.per_class_acc, result.confusion, data.class_names, prefix="test")
        logger.log_file(out_dir / "confusion_matrix.png", "confusion-matrix", "evaluation")
        exit_code = 0
    finally:
        logger.finish(exit_code)
    return summary


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
@job
def _main(cfg: DictConfig) -> float:
    from adadf.app import command_dir

    return evaluate_checkpoint(cfg, command_dir(cfg, "eval"))["acc"]


def main() -> None:
    """``python -m adadf.evaluate`` / ``adadf-eval``."""
    from adadf.cli import launch

    launch(_main)


if __name__ == "__main__":
    main()
