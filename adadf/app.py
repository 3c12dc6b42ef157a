"""The composition root: the one place that turns a composed Hydra config into typed parts.

Training (``adadf.train``), ``evaluate``, ``predict`` and the benchmarks all build what they need
here; below this layer nothing reads a ``DictConfig`` or Hydra's runtime state.
"""
from __future__ import annotations

import copy
import functools
import inspect
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import hydra.utils
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, read_write
from torch import nn

from adadf.cli import in_multirun
from adadf.config import TrainerConfig, instantiate_node, validate_config
from adadf.config.dataset import dataset_schema
from adadf.config.schema import GROUP_SCHEMAS, ComparisonMethodConfig
from adadf.data.bundle import DataBundle
from adadf.data.images import resolve_pipeline
from adadf.data import resident
from adadf.engine import distributed
from adadf.engine.rundir import LOCK_NAME
from adadf.engine.loop import StepContext
from adadf.errors import UserError
from adadf.methods.base import Method
from adadf.tracking import Logger, NullLogger, RunFiles
from adadf.tracking.callbacks import Callback
from adadf.tracking.class_distributions import ClassDistributionPictures
from adadf.tracking.samples import SampleDetector
from adadf.tracking.writer import BackgroundWriter

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


# What ``trainer.amp=auto`` runs on CUDA: AMP (``trainer.amp_dtype``, bf16) + channels_last when True,
# fp32 when False. The GPU check measures both (benchmarks/gpu_check.py, "step") and says which is
# faster; fp32 until AMP measures faster there (docs/speed.md, "A faster step"). The CPU: always fp32.
AUTO_AMP_ON_CUDA = False


@dataclass(frozen=True)
class Precision:
    """``trainer.amp`` / ``channels_last`` resolved for a device."""

    dtype: torch.dtype | None  # autocast's dtype; None: fp32, no autocast
    channels_last: bool

    @property
    def name(self) -> str | bool:  # as recorded: trainer.amp_resolved
        return str(self.dtype).removeprefix("torch.") if self.dtype is not None else False


def resolve_precision(params: TrainerConfig, device: torch.device, bf16: bool | None = None) -> Precision:
    """``trainer.amp`` (auto | true | false) and ``trainer.channels_last`` (auto | true | false) on
    ``device``. auto: fp32 on the CPU; on CUDA AMP + channels_last if :data:`AUTO_AMP_ON_CUDA`, in
    bfloat16, or float16 with a gradient scaler (logged) on a GPU without bfloat16 (``bf16``: whether
    it has it; None: ask torch). true / false: AMP in ``amp_dtype`` / fp32, on any device."""
    amp, dtype = params.amp, getattr(torch, params.amp_dtype)
    if amp == "auto":
        amp = device.type == "cuda" and AUTO_AMP_ON_CUDA
        if amp and dtype == torch.bfloat16 and not (torch.cuda.is_bf16_supported() if bf16 is None else bf16):
            dtype = torch.float16
            log.warning("trainer.amp=auto: this GPU has no bfloat16; AMP runs in float16 with a gradient scaler")
    channels_last = params.channels_last
    if channels_last == "auto":
        channels_last = bool(amp) and device.type == "cuda"
    return Precision(dtype if amp else None, bool(channels_last))


def step_context(params: TrainerConfig, device: torch.device, precision: Precision | None = None) -> StepContext:
    """Autocast and gradient scaler for this device: no-ops unless AMP runs (``precision``:
    :func:`resolve_precision`'s, resolved when not given)."""
    precision = precision or resolve_precision(params, device)
    dtype = precision.dtype
    autocast = (
        functools.partial(torch.autocast, device_type=device.type, dtype=dtype) if dtype is not None else nullcontext
    )
    use_scaler = dtype == torch.float16 and device.type == "cuda"
    return StepContext(
        device=device,
        autocast=autocast,
        scaler=torch.amp.GradScaler(device.type, enabled=use_scaler),
        channels_last=precision.channels_last,
        progress=params.progress,
    )


def eval_batch_size(params: TrainerConfig, batch_size: int) -> int:
    """The test and validation passes' batch: ``trainer.eval_batch_size``, or when null (auto)
    ``batch_size`` (``dataset.batch_size``, today's). Another batch can change a logit's last bits
    (other kernel blocking; measured on the CPU), so a larger one is an opt-in (docs/speed.md)."""
    return batch_size if params.eval_batch_size is None else params.eval_batch_size


def optimizer_kernels(node: DictConfig, device: torch.device) -> dict[str, bool]:
    """``optimizer.fused`` / ``foreach`` when both are null: fused on CUDA, foreach on the CPU
    (the same bits as torch's per-parameter loop there, a test checks it), where the optimizer
    class takes them; nothing else changes. Empty when either is set or nothing applies."""
    if node.get("fused") is not None or node.get("foreach") is not None:
        return {}
    try:
        accepted = inspect.signature(hydra.utils.get_class(node._target_)).parameters
    except Exception:  # an unknown target: instantiation names it
        return {}
    key = {"cuda": "fused", "cpu": "foreach"}.get(device.type)
    return {key: True} if key in accepted else {}


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
    refuse_fusion_overrides(cfg)
    logger = cfg.get("logger") or {}
    if str(logger.get("_target_", "")).endswith("WandbLogger") and logger.get("mode") == "online":
        from adadf.tracking.loggers import wandb_logged_in

        if not wandb_logged_in():
            raise UserError("logger.mode=online: no W&B login here; run `wandb login` (or set WANDB_API_KEY), "
                            "or log offline with logger.mode=offline and upload later with `wandb sync`")


def refuse_fusion_overrides(cfg: DictConfig) -> None:
    """``fusion.*`` set on the command line for a comparison method (SCN, RUL, EAC), which has no
    Ada-DF fusion: one line, instead of a run that silently ignores it."""
    target = str(cfg.method.get("_target_", ""))
    schema = next((s for s in GROUP_SCHEMAS["method"].values() if s._target_ == target), None)
    if schema is None or not issubclass(schema, ComparisonMethodConfig) or not HydraConfig.initialized():
        return
    for override in HydraConfig.get().overrides.task:
        key = override.lstrip("+~").partition("=")[0]
        if key.startswith("fusion."):
            name = HydraConfig.get().runtime.choices.get("method") or target
            raise UserError(f"{override}: method={name} has no Ada-DF fusion (fusion.* are Ada-DF's keys); "
                            f"its own keys are method.* (python run.py method={name} --cfg job)")


def build_data(node: DictConfig, seed: int, device: torch.device | None = None) -> DataBundle:
    """The dataset group's loaders (rank 0 first under torchrun: it builds any cache, the others read it).

    ``dataset.pipeline=auto`` is resolved here for the training ``device`` (None: CUDA when
    available): the exact-order ``device`` pipeline on CUDA, ``reference`` elsewhere. Its resident
    sets (``dataset.resident``) are then placed for that device (:func:`adadf.data.resident.place`)."""
    if node.get("pipeline") == "auto":
        node = OmegaConf.merge(node, {"pipeline": resolve_pipeline("auto", device)})
    with distributed.main_rank_first():
        data = instantiate_node(node, "dataset", loader_seed=seed)
    return resident.place(data, device)


def build_model(cfg: DictConfig, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """The backbone group's network, weights loaded (any class distributions in ``imported_state``)."""
    return instantiate_node(cfg.backbone, "backbone", num_classes=num_classes, drop_rate=drop_rate)


def build_method(cfg: DictConfig, num_classes: int) -> Method:
    pretrained = cfg.backbone.get("checkpoint") is not None
    method = instantiate_node(cfg.method, "method", num_classes=num_classes, pretrained=pretrained)
    if not isinstance(method, Method):
        raise UserError(f"method._target_={cfg.method._target_}: expected a subclass of adadf.methods.Method")
    return method


def param_groups(model: nn.Module, method: Method, lr: float) -> list[nn.Parameter] | list[dict[str, Any]]:
    """The trainable parameters as the method groups them (``Method.param_groups``; a group's
    ``lr_scale`` becomes its ``lr``), or all of them as one group."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    groups = method.param_groups(trainable)
    if groups is None:
        return [p for _, p in trainable]
    return [{**{k: v for k, v in g.items() if k != "lr_scale"}, "lr": lr * g.get("lr_scale", 1.0)}
            if "lr_scale" in g else g for g in groups]


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
    precision = resolve_precision(trainer, device)
    data = build_data(cfg.dataset, cfg.seed, device)
    data = data.with_eval_batch_size(eval_batch_size(trainer, data.train_loader.batch_size))
    method = build_method(cfg, data.num_classes)
    model = method.build_network(typed["backbone"], data.num_classes, int(cfg.dataset.image_size))
    if model is None:  # the backbone group's Ada-DF network
        model = build_model(cfg, data.num_classes, typed["fusion"].drop_rate)
        model.scale_logits = method.scaled_logits  # the method's head: attention-scaled or plain logits
    model = model.to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method.freeze_untrained(model)  # parts the method never trains stay out of the optimizer and DDP
    method.start_from(getattr(model, "imported_state", {}))
    method.begin_training(data.train_labels, trainer.epochs)
    kernels = optimizer_kernels(cfg.optimizer, device)
    optimizer = instantiate_node(cfg.optimizer, "optimizer", **kernels)(param_groups(model, method, cfg.optimizer.lr))
    scheduler = instantiate_node(cfg.scheduler, "scheduler")(optimizer)
    if trainer.compile:
        model = torch.compile(model, mode=trainer.compile_mode)
    model = distributed.wrap_model(model, device)  # DDP when distributed (rank 0's weights everywhere)
    config = OmegaConf.to_container(cfg, resolve=True)
    for group, values in method.config_updates().items():  # W&B and checkpoints: the values used
        config.setdefault(group, {}).update(values)
    if data.pipeline is not None:  # the input pipeline that runs (dataset.pipeline=auto resolved)
        config.setdefault("dataset", {})["pipeline_resolved"] = data.pipeline
    config.setdefault("optimizer", {}).update(kernels)  # fused / foreach as they run
    config.setdefault("trainer", {}).update(  # auto keys as they run on this device
        amp_resolved=precision.name, channels_last_resolved=precision.channels_last,
        eval_batch_size_resolved=data.test_loader.batch_size)
    if trainer.amp == "auto" or trainer.channels_last == "auto":
        log.info("trainer.amp=%s -> %s, channels_last %s on %s", trainer.amp, precision.name or "fp32",
                 precision.channels_last, device.type)
    return Parts(data=data, model=model, method=method, optimizer=optimizer, scheduler=scheduler,
                 ctx=step_context(trainer, device, precision), trainer=trainer, config=config)


def build_callbacks(parts: Parts, files: RunFiles, logger: Logger, is_main: bool = True) -> list[Callback]:
    """The reports a training run subscribes to the trainer's events: the per-sample detector and the
    class-distribution pictures, whose files one background writer draws and writes while the next
    epoch trains. The writer comes last: its ``end_run`` waits for what the others submitted."""
    trainer = parts.trainer
    writer = BackgroundWriter()
    every = {"epochs": trainer.epochs, "plots_every": trainer.plots_every, "is_main": is_main}
    return [
        SampleDetector(parts.data, parts.method, parts.ctx.device, files.run_dir, logger, writer,
                       suspects_by=trainer.suspects_by, suspects=trainer.suspects, **every),
        ClassDistributionPictures(parts.method, parts.data.class_names, files.run_dir, logger, writer, **every),
        writer,
    ]
