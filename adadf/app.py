"""The composition root: the one place that turns a composed Hydra config into typed parts.

Training (``adadf.train``), ``evaluate``, ``predict`` and the benchmarks all build what they need
here; below this layer nothing reads a ``DictConfig`` or Hydra's runtime state.
"""
from __future__ import annotations

import copy
import functools
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, read_write
from torch import nn

from adadf.cli import in_multirun
from adadf.config import TrainerConfig, instantiate_node, validate_config
from adadf.config.dataset import dataset_schema
from adadf.data.bundle import DataBundle
from adadf.data.images import resolve_pipeline
from adadf.engine import distributed
from adadf.engine.rundir import LOCK_NAME
from adadf.engine.loop import StepContext
from adadf.errors import UserError
from adadf.methods.base import Method
from adadf.tracking import Logger, NullLogger, RunFiles

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- Hydra's runtime
def run_dir() -> Path:
    """Hydra's output dir for this job (the cwd when called outside Hydra, e.g. from a notebook)."""
    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path.cwd()


def job_number() -> int:
    """This job's number in its multirun (0 outside one)."""
    return int(HydraConfig.get().job.num) if in_multirun() else 0


def sweep_dir() -> Path | None:
    return Path(HydraConfig.get().sweep.dir) if in_multirun() else None


def sweep_group() -> str | None:
    """The W&B group of a multirun job, None outside a multirun.

    Named after the sweep dir's last two parts (``multirun/fusion_grid/2026-01-01_10-00-00`` ->
    ``fusion_grid-2026-01-01_10-00-00``), so all jobs of one sweep share it and two sweeps do not.
    """
    if not in_multirun():
        return None
    return "-".join(sweep_dir().resolve().parts[-2:])[-128:]  # W&B's limit


def sweep_tags() -> list[str]:
    """W&B tags a multirun job adds to ``logger.tags``: ``multirun`` and the sweep config's name."""
    if not in_multirun():
        return []
    choice = HydraConfig.get().runtime.choices.get("sweep")
    return ["multirun"] + ([str(choice)] if choice else [])


def hydra_record(cfg: DictConfig) -> dict[str, str]:
    """What Hydra itself writes to ``.hydra/`` (config.yaml, hydra.yaml, overrides.yaml), for the
    task to write once the job has claimed its dir; only config.yaml outside Hydra (compose API)."""
    record = {"config.yaml": OmegaConf.to_yaml(cfg)}
    if HydraConfig.initialized():
        hydra_cfg = copy.deepcopy(HydraConfig.instance().cfg)
        with read_write(hydra_cfg.hydra):
            hydra_cfg.hydra.output_subdir = ".hydra"  # where it is written (null only stops Hydra writing it)
        record["hydra.yaml"] = OmegaConf.to_yaml(hydra_cfg)
        record["overrides.yaml"] = OmegaConf.to_yaml(HydraConfig.get().overrides.task)
    return record


def command_dir(cfg: DictConfig, kind: str) -> Path:
    """Where ``adadf-eval`` / ``adadf-predict`` write (``kind``: eval, predict): Hydra's run dir, or a
    subdirectory ``<kind>/<date>_<time>`` of it when it holds a training run (``hydra.run.dir=<run>``),
    so the run's own files and ``.hydra/`` are never replaced. The command's ``.hydra/`` goes there."""
    out = run_dir()
    if RunFiles(out).run_record() or (out / LOCK_NAME).exists():
        out = out / kind / time.strftime("%Y-%m-%d_%H-%M-%S")
        log.info("%s holds a training run: writing into %s", out.parents[1], out)
    RunFiles(out).write_hydra_record(hydra_record(cfg))
    return out


def default_run_name(cfg: DictConfig) -> str:
    overrides = HydraConfig.get().job.override_dirname if HydraConfig.initialized() else ""
    return f"{cfg.name}-{overrides}" if overrides else str(cfg.name)


# ------------------------------------------------------------------------------------- parts
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


def dataset_node(config: Mapping[str, Any]) -> DictConfig:
    """A dataset config recorded as a plain dict (in a checkpoint) on top of its schema, so keys
    added since it was written get their defaults."""
    schema = dataset_schema(config.get("_target_"))
    if schema is None:
        return OmegaConf.create(dict(config))
    known = {k: v for k, v in config.items() if k in schema.__dataclass_fields__}
    return OmegaConf.merge(OmegaConf.structured(schema), known)


def preflight(cfg: DictConfig) -> None:
    """What a training run needs that can be checked before any work (before the data are decoded):
    the backbone file, and a W&B login when logging online. One line naming the key and the fix."""
    checkpoint = cfg.backbone.get("checkpoint")
    if checkpoint is not None and str(checkpoint).strip():
        path = Path(str(checkpoint)).expanduser().resolve()
        if not path.is_file():
            raise UserError(
                f"backbone.checkpoint={checkpoint}: no file at {path}; the paper's MS-Celeb-1M ResNet-18 "
                "and where to get it: docs/datasets.md#the-pretrained-backbone-and-reproducing-the-paper; "
                "backbone.checkpoint=null trains from scratch"
            )
    logger = cfg.get("logger") or {}
    if str(logger.get("_target_", "")).endswith("WandbLogger") and logger.get("mode") == "online":
        from adadf.tracking.loggers import wandb_logged_in

        if not wandb_logged_in():
            raise UserError("logger.mode=online: no W&B login here; run `wandb login` (or set WANDB_API_KEY), "
                            "or log offline with logger.mode=offline and upload later with `wandb sync`")


def build_data(node: DictConfig, seed: int, device: torch.device | None = None) -> DataBundle:
    """The dataset group's loaders (rank 0 first under torchrun: it builds any cache, the others read it).

    ``dataset.pipeline=auto`` is resolved here for the training ``device`` (None: CUDA when
    available): the exact-order ``device`` pipeline on CUDA, ``reference`` elsewhere."""
    if node.get("pipeline") == "auto":
        node = OmegaConf.merge(node, {"pipeline": resolve_pipeline("auto", device)})
    with distributed.main_rank_first():
        return instantiate_node(node, "dataset", loader_seed=seed)


def build_model(cfg: DictConfig, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """The backbone group's network, weights loaded (any class distributions in ``imported_state``)."""
    return instantiate_node(cfg.backbone, "backbone", num_classes=num_classes, drop_rate=drop_rate)


def build_method(cfg: DictConfig, num_classes: int) -> Method:
    pretrained = cfg.backbone.get("checkpoint") is not None
    method = instantiate_node(cfg.method, "method", num_classes=num_classes, pretrained=pretrained)
    if not isinstance(method, Method):
        raise UserError(f"method._target_={cfg.method._target_}: expected a subclass of adadf.methods.Method")
    return method


def build_logger(cfg: DictConfig, is_main: bool = True, **defaults: Any) -> Logger:
    """The logger group, with the run's name and a multirun's W&B group and tags filled in.

    ``defaults`` fill keys the user left null (e.g. ``job_type``); a logger without such a key
    ignores it.
    """
    if not is_main:
        return NullLogger()
    node = cfg.logger
    fill = {"group": sweep_group(), **defaults}
    if "name" not in fill:
        fill["name"] = default_run_name(cfg)
    updates = {k: v for k, v in fill.items() if k in node and node[k] is None and v is not None}
    if "tags" in node and sweep_tags():
        updates["tags"] = [*node.tags, *sweep_tags()]
    return instantiate_node(OmegaConf.merge(node, updates) if updates else node, "logger")


@dataclass
class Parts:
    """Everything a training run is made of, ready to use on ``ctx.device``."""

    data: DataBundle
    model: nn.Module  # on the device; channels_last / compiled / DDP-wrapped as configured
    method: Method
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    ctx: StepContext
    trainer: TrainerConfig
    config: dict[str, Any]  # the resolved config as recorded in W&B and checkpoints


def build(cfg: DictConfig, device: torch.device | None = None) -> Parts:
    """Validate ``cfg`` and build every part of a training run (``device``: resolved from the
    config when not given)."""
    typed = validate_config(cfg)
    trainer: TrainerConfig = typed["trainer"]
    device = device or resolve_device(trainer.device)
    data = build_data(cfg.dataset, cfg.seed, device)
    model = build_model(cfg, data.num_classes, typed["fusion"].drop_rate).to(device)
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = build_method(cfg, data.num_classes)
    model.scale_logits = method.scaled_logits  # the method's head: attention-scaled or plain logits
    method.freeze_untrained(model)  # parts the method never trains stay out of the optimizer and DDP
    method.start_from(getattr(model, "imported_state", {}))
    optimizer = instantiate_node(cfg.optimizer, "optimizer")([p for p in model.parameters() if p.requires_grad])
    scheduler = instantiate_node(cfg.scheduler, "scheduler")(optimizer)
    if trainer.compile:
        model = torch.compile(model)
    model = distributed.wrap_model(model, device)  # DDP when distributed (rank 0's weights everywhere)
    config = OmegaConf.to_container(cfg, resolve=True)
    for group, values in method.config_updates().items():  # W&B and checkpoints: the values used
        config.setdefault(group, {}).update(values)
    if data.pipeline is not None:  # the input pipeline that runs (dataset.pipeline=auto resolved)
        config.setdefault("dataset", {})["pipeline_resolved"] = data.pipeline
    return Parts(data=data, model=model, method=method, optimizer=optimizer, scheduler=scheduler,
                 ctx=step_context(trainer, device), trainer=trainer, config=config)
