"""The composition root: a composed Hydra config in, a finished (or cleanly stopped) run out.

This is the one place that reads the DictConfig; everything below takes typed arguments.
"""
from __future__ import annotations

import functools
import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from adadf.config import instantiate_node, validate_config
from adadf.config.schema import TrainerConfig, resolve_detach_target
from adadf.engine import distributed
from adadf.engine.checkpoint import load_checkpoint, seed_everything
from adadf.engine.interrupt import StopFlag, StopRequested
from adadf.engine.loop import StepContext
from adadf.engine.trainer import Trainer
from adadf.errors import UserError
from adadf.method import AdaDFMethod
from adadf.tracking import NullLogger, RunFiles
from adadf.tracking.sweep import sweep_group, sweep_tags

log = logging.getLogger(__name__)


class RunInterrupted(UserError):
    """SIGINT/SIGTERM stopped the run; the last completed epoch's checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.device={name}: CUDA is not available here (use auto or cpu)")
    return torch.device(name)


def step_context(params: TrainerConfig, device: torch.device) -> StepContext:
    """Autocast and gradient scaler for this device: no-ops unless ``trainer.amp``."""
    dtype = getattr(torch, params.amp_dtype)
    autocast = (
        functools.partial(torch.autocast, device_type=device.type, dtype=dtype) if params.amp else nullcontext
    )
    use_scaler = params.amp and dtype == torch.float16 and device.type == "cuda"
    return StepContext(
        device=device,
        autocast=autocast,
        scaler=torch.amp.GradScaler(device.type, enabled=use_scaler),
        channels_last=params.channels_last,
        progress=params.progress,
    )


def run_dir() -> Path:
    """Hydra's output dir for this job (the cwd when called outside Hydra, e.g. from a notebook)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def find_resume_checkpoint(resume: str | None, files: RunFiles) -> Path | None:
    """``trainer.resume``: null (refuse to overwrite), auto (this run dir), or a file/run dir."""
    if resume is None:
        if files.last_checkpoint.exists():
            raise UserError(
                f"{files.last_checkpoint} exists: pass trainer.resume=auto to continue that run, "
                "or choose another hydra.run.dir"
            )
        return None
    if resume == "auto":
        return files.last_checkpoint if files.last_checkpoint.exists() else None
    path = Path(resume).expanduser().resolve()
    if path.is_dir():
        candidates = [path / "checkpoints" / "last.pt", path / "last.pt"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        raise UserError(f"trainer.resume={resume}: no checkpoint at {path}")
    return path


def default_run_name(cfg: DictConfig) -> str:
    overrides = HydraConfig.get().job.override_dirname if HydraConfig.initialized() else ""
    return f"{cfg.name}-{overrides}" if overrides else str(cfg.name)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Build everything from ``cfg``, train, and return the run summary (also in summary.json)."""
    started = time.perf_counter()
    fusion_params, params = validate_config(cfg)
    # torchrun: join the process group; every rank uses rank 0's output dir, only rank 0 writes.
    world, device = distributed.init_distributed(resolve_device(params.device))
    files = RunFiles(distributed.broadcast_object(run_dir()))
    if not world.is_main:
        distributed.remove_empty_dir(run_dir(), keep=files.run_dir)
    resume_from = find_resume_checkpoint(params.resume, files) if world.is_main else None
    resume_from = distributed.broadcast_object(resume_from)
    seed_everything(cfg.seed)
    if params.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    ctx = step_context(params, device)

    with distributed.main_rank_first():  # rank 0 builds any dataset cache, the others read it
        data = instantiate_node(cfg.dataset, "dataset", loader_seed=cfg.seed)
    model, imported_dist = instantiate_node(
        cfg.backbone, "backbone", num_classes=data.num_classes, drop_rate=fusion_params.drop_rate
    )
    model = model.to(device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fusion_params = resolve_detach_target(fusion_params, cfg.backbone.get("checkpoint"))
    if fusion_params.detach_target and cfg.fusion.detach_target is None:
        log.info("fusion.detach_target=auto -> true: no backbone.checkpoint, training from scratch")
    method = AdaDFMethod(fusion_params, data.num_classes)
    if imported_dist is not None:
        method.load_state_dict({"class_dist": imported_dist})
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = instantiate_node(cfg.optimizer, "optimizer")(trainable)
    scheduler = instantiate_node(cfg.scheduler, "scheduler")(optimizer)
    if params.compile:
        model = torch.compile(model)
    model = distributed.wrap_model(model, device)  # DDP when distributed (rank 0's weights everywhere)
    rank_seed = cfg.seed + 10_000 * world.rank  # own augmentation stream per rank
    if world.rank:
        seed_everything(rank_seed)

    config = OmegaConf.to_container(cfg, resolve=True)
    config["fusion"]["detach_target"] = fusion_params.detach_target  # W&B and checkpoints: the value used
    logger_cfg = cfg.logger
    if "name" in logger_cfg and logger_cfg.name is None:
        logger_cfg = OmegaConf.merge(logger_cfg, {"name": default_run_name(cfg)})
    if "group" in logger_cfg and logger_cfg.group is None:  # all jobs of a multirun: one W&B group
        logger_cfg = OmegaConf.merge(logger_cfg, {"group": sweep_group()})
    if "tags" in logger_cfg and sweep_tags():
        logger_cfg = OmegaConf.merge(logger_cfg, {"tags": [*logger_cfg.tags, *sweep_tags()]})
    logger = instantiate_node(logger_cfg, "logger") if world.is_main else NullLogger()
    trainer = Trainer(
        model=model, method=method, optimizer=optimizer, scheduler=scheduler, data=data, ctx=ctx,
        files=files, logger=logger, epochs=params.epochs, ld_pass=fusion_params.ld_pass,
        seed=rank_seed, config=config, is_main=world.is_main,
        reduce=distributed.all_reduce_sum if world.enabled else None,
    )
    run_id = None
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        try:
            trainer.load_state_dict(state)
        except (RuntimeError, KeyError, ValueError) as err:
            raise UserError(f"{resume_from}: does not fit this config ({str(err).splitlines()[0]})") from None
        run_id = state.get("wandb_run_id")
        if world.rank:  # the checkpoint holds rank 0's RNG state; keep this rank's stream its own
            seed_everything(rank_seed + trainer.progress.epoch)
        log.info("resuming from %s after epoch %d", resume_from, trainer.progress.epoch)

    log.info("run dir %s  device %s  %d train batches/epoch", files.run_dir, device, len(data.train_loader))
    logger.start(files.run_dir, config, run_id=run_id)
    status, exit_code = "failed", 1
    try:
        with StopFlag() as stop:
            ctx.stop = distributed.AgreedStopFlag(stop) if world.enabled else stop
            trainer.fit()
        status, exit_code = "completed", 0
    except (StopRequested, KeyboardInterrupt) as stopped:  # KeyboardInterrupt: a second Ctrl-C
        status = "interrupted"
        raise RunInterrupted(
            f"stopped by {getattr(stopped, 'signame', 'SIGINT')} after epoch {trainer.progress.epoch}; "
            f"continue with trainer.resume=auto hydra.run.dir={files.run_dir}"
        ) from None
    finally:
        progress = trainer.progress
        summary = progress.summary(status, time.perf_counter() - started)
        summary["best_per_class_acc"] = dict(zip(data.class_names, progress.best_per_class_acc))
        if world.is_main:
            files.write_summary(summary)
        logger.log_summary({k: v for k, v in summary.items() if not isinstance(v, dict)})
        if progress.best_confusion:
            logger.log_evaluation(progress.best_per_class_acc, torch.tensor(progress.best_confusion),
                                  data.class_names, prefix="best")
        if status == "completed" and files.best_checkpoint.exists():
            logger.log_file(files.best_checkpoint, "model-best", "model")
        logger.finish(exit_code)
    log.info("best test acc %.2f%% (epoch %s), final %.2f%%", summary["best_acc"], summary["best_epoch"],
             summary["final_acc"])
    return summary
