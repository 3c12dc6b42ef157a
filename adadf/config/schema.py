"""The schema of every config group: one default and one range per field, here and nowhere else.

Each dataclass is registered with Hydra's ConfigStore (``adadf.config.store``) as its group's
base; a group's YAML file names it in its defaults list and holds only what differs. So a typo'd
key or a wrong type fails at composition, and a value out of range fails in ``check_ranges`` with
one line naming the key. Dataset schemas live in ``adadf.config.dataset``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Dict, List, Optional, Union

from adadf.config.fields import at_least, closed01, half_open01, one_of, open01, positive, ranged
from adadf.errors import UserError


class LDPass(str, Enum):
    """Where the class-distribution statistics come from after each epoch."""

    augmented = "augmented"  # reference: an eval-mode pass over the training loader as is
    clean = "clean"  # test transform, every training sample once
    online = "online"  # accumulated during the training epoch itself (no extra pass)


@dataclass
class FusionConfig:
    """Ada-DF's hyper-parameters (docs/method.md); defaults are the reference's (RAF-DB)."""

    threshold: float = ranged(0.7, *open01())  # t: initial LD diagonal and acceptance threshold
    beta: float = ranged(3.0, *at_least(1.0))  # epoch at which the KL/CE weight schedule switches
    max_weight: float = ranged(1.0, *closed01())  # attention -> fusion weight range
    min_weight: float = ranged(0.2, *closed01())
    tops: float = ranged(0.7, *open01())  # rank regularisation: fraction of the batch in the high group
    margin: float = ranged(0.07, *at_least(0.0))  # rank regularisation margin
    sharpen: bool = False  # sharpen class distributions with temperature T
    T: float = ranged(1.2, *positive())
    drop_rate: float = ranged(0.0, *half_open01())  # dropout after the shared trunk
    label_smoothing: float = ranged(0.0, *half_open01())  # for the cross-entropy term
    alpha: Optional[float] = ranged(None, *closed01())  # fixed KL weight (CE 1 - alpha) instead of the schedule
    fallback_mass: float = ranged(0.4, *closed01())  # off-diagonal mass of a fallback row
    detach_target: Optional[bool] = None  # None: auto (see adadf.methods.adadf.resolve_detach_target)
    ld_pass: LDPass = LDPass.augmented
    update_class_dist: bool = True  # false: LD stays the initial matrix (ablation method=adadf_static_class_dist)

    def __post_init__(self) -> None:
        if self.min_weight > self.max_weight:
            raise UserError(
                f"fusion.min_weight={self.min_weight} > fusion.max_weight={self.max_weight}: "
                "expected min_weight <= max_weight"
            )


# Ada-DF switches that name a part a plain classifier does not have: key -> (default, the part).
# Hyper-parameters the paper's recipes set (threshold, beta, ...) are not among them.
ADADF_SWITCHES = {
    "ld_pass": (LDPass.augmented, "class distributions"),
    "update_class_dist": (True, "class distributions"),
    "sharpen": (False, "class distributions"),
    "alpha": (None, "KL/CE weight schedule"),
    "detach_target": (None, "fused target"),
}


def refuse_switches(params: object, method: str) -> None:
    """One line naming the first Ada-DF switch set for a method that has no such part. Anything but a
    ``FusionConfig`` passes: a method rebuilt from a checkpoint (adadf-eval) gets the recorded dict,
    which was checked when that run started."""
    if not isinstance(params, FusionConfig):
        return
    for key, (default, part) in ADADF_SWITCHES.items():
        value = getattr(params, key)
        if value != default:
            shown = value.value if isinstance(value, LDPass) else value
            raise UserError(f"fusion.{key}={shown}: method={method} has no {part} (leave it at its default)")


def fix_fusion(params: FusionConfig, fixed: dict[str, Any]) -> FusionConfig:
    """``params`` with the keys an ablation fixes (``method.fixed``). A ``fusion.<key>`` set to
    another value than its default and the ablation's is refused: the run would not be the
    ablation its name says."""
    defaults = FusionConfig()
    for key, value in fixed.items():
        if not hasattr(defaults, key):
            raise UserError(f"method.fixed.{key}: not a fusion key")
        given = getattr(params, key)
        if given != getattr(defaults, key) and given != value:
            raise UserError(f"fusion.{key}={given}: this Ada-DF ablation fixes fusion.{key}={value}")
    return dataclasses.replace(params, **fixed)


@dataclass
class TrainerConfig:
    epochs: int = ranged(5, *at_least(1))  # the embedded default finishes in minutes; experiments set 75
    device: str = ranged("auto", lambda x: x in ("auto", "cpu", "cuda") or x.startswith("cuda:"),
                         "auto, cpu, cuda or cuda:N")
    # auto: fp32 on the CPU; on CUDA adadf.app.AUTO_AMP_ON_CUDA decides (recorded as trainer.amp_resolved).
    # true: autocast to amp_dtype anywhere; false: fp32 anywhere (the reference).
    amp: Union[bool, str] = ranged("auto", lambda x: x is True or x is False or x == "auto", "auto, true or false")
    amp_dtype: str = ranged("bfloat16", *one_of("bfloat16", "float16"))  # float16 uses a gradient scaler
    # auto: on where AMP runs on CUDA (recorded as trainer.channels_last_resolved).
    channels_last: Union[bool, str] = ranged("auto", lambda x: x is True or x is False or x == "auto",
                                             "auto, true or false")
    compile: bool = False  # torch.compile the model
    # with compile=true: default (graph capture of the kernels) | reduce-overhead (also CUDA graphs)
    compile_mode: str = ranged("default", *one_of("default", "reduce-overhead"))
    # the test and validation passes' batch; null: dataset.batch_size (adadf.app.eval_batch_size, docs/speed.md)
    eval_batch_size: Optional[int] = ranged(None, *at_least(1))
    resume: Optional[str] = None  # null | auto (this run dir's last.pt) | a checkpoint or run dir
    resume_allow_changes: bool = False  # resume although fusion/method/optimizer/scheduler values changed
    # last.pt (~3x best.pt: optimizer state) after a run completes: auto drops it for a sweep's jobs (kept
    # while any run can be resumed or extended, and outside sweeps); true keeps it; false drops it.
    keep_last: Union[bool, str] = ranged("auto", lambda x: x is True or x is False or x == "auto",
                                         "auto, true or false")
    progress: bool = True  # tqdm progress bars on interactive terminals
    deterministic: bool = False  # torch.use_deterministic_algorithms
    # The training images to re-check (docs/research.md), ranked by one of the method's per-sample
    # scores (aux_loss: high label loss; attention: low; a method's own); checked at the first batch.
    suspects_by: str = ranged("aux_loss", lambda x: isinstance(x, str) and x.isidentifier(),
                              "a per-sample score's name (aux_loss, attention, a method's own)")
    suspects: int = ranged(36, *at_least(0))  # how many (0: none)
    # Per-epoch pictures, train_attention.csv and their W&B media: every N epochs and after the last,
    # drawn and written on a background thread while the next epoch trains.
    plots_every: int = ranged(1, *at_least(1))


@dataclass
class BackboneConfig:
    _target_: str = "adadf.models.build_model"
    name: str = "resnet18"  # a timm ResNet-family model
    checkpoint: Optional[str] = None  # a local pretrained / Ada-DF / adadf checkpoint file
    allow_pickle: bool = False  # load a checkpoint that needs full unpickling: it runs any code the file holds


@dataclass
class MethodConfig:
    """A training method: ``_target_`` builds it with ``num_classes`` and ``pretrained`` at run time."""

    _target_: str = "adadf.methods.adadf.AdaDFMethod"


@dataclass
class AdaDFMethodConfig(MethodConfig):
    """Ada-DF; its hyper-parameters are the ``fusion.*`` keys (a contract of the command line)."""

    _target_: str = "adadf.methods.adadf.AdaDFMethod"
    params: Any = "${fusion}"
    # fusion.* keys an ablation fixes whatever fusion.* says (conf/method/adadf_*.yaml), e.g. {margin: 0}
    fixed: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:  # at validation, before any work (params is typed by then)
        if isinstance(self.params, FusionConfig):
            fix_fusion(self.params, self.fixed)


@dataclass
class CEMethodConfig(MethodConfig):
    """Cross-entropy baseline on the target branch (plain classifier head, no attention scaling)."""

    _target_: str = "adadf.methods.ce.CEMethod"
    label_smoothing: float = ranged("${fusion.label_smoothing}", *half_open01())
    params: Any = "${fusion}"  # read only to refuse Ada-DF switches that CE has no part for

    def __post_init__(self) -> None:
        if isinstance(self.params, FusionConfig):
            refuse_switches(self.params, "ce")


@dataclass
class ComparisonMethodConfig(MethodConfig):
    """A comparison method on the single-branch network (docs/methods.md): the Ada-DF switches
    (``fusion.*``) do not apply and are refused when set."""

    NAME: ClassVar[str] = ""  # the method=<name> option, for messages
    params: Any = "${fusion}"  # read only to refuse Ada-DF switches the method has no part for
    drop_rate: float = ranged(0.0, *half_open01())  # dropout on the classifier's input features

    def __post_init__(self) -> None:
        if isinstance(self.params, FusionConfig):
            refuse_switches(self.params, self.NAME)


@dataclass
class FullNetworkCEMethodConfig(ComparisonMethodConfig):
    """Cross-entropy on the single-branch network SCN, RUL and EAC use (every layer trained)."""

    NAME: ClassVar[str] = "ce_full"
    _target_: str = "adadf.methods.ce.FullNetworkCEMethod"
    label_smoothing: float = ranged(0.0, *half_open01())


@dataclass
class SCNMethodConfig(ComparisonMethodConfig):
    """SCN (Wang et al., CVPR 2020), with its original code's values for RAF-DB at batch 64."""

    NAME: ClassVar[str] = "scn"
    _target_: str = "adadf.methods.scn.SCNMethod"
    beta: float = ranged(0.7, *open01())  # fraction of the batch in the high-importance group
    margin_1: float = ranged(0.07, *at_least(0.0))  # rank regularisation margin (the README's, batch 64)
    margin_2: float = ranged(0.2, *at_least(0.0))  # relabelling margin: P_max - P_label > margin_2
    # relabel from this (1-based) epoch on; null: the original's 10, and none in a shorter run (logged)
    relabel_epoch: Optional[int] = ranged(None, *at_least(1))
    relabel_low_only: bool = False  # true: relabel only the low-importance group (the paper); the code: all


@dataclass
class RULMethodConfig(ComparisonMethodConfig):
    """RUL (Zhang et al., NeurIPS 2021), with its original code's values."""

    NAME: ClassVar[str] = "rul"
    _target_: str = "adadf.methods.rul.RULMethod"
    feature_dim: int = ranged(64, *at_least(1))  # the mu / log-variance heads' output
    head_dropout: float = ranged(0.4, *half_open01())  # in both heads, before their Linear
    fc_lr_scale: float = ranged(10.0, *positive())  # the classifier's lr / the rest's (2e-3 / 2e-4)
    seed: int = "${seed}"  # the pairings' generator (checkpointed): the run's seed


@dataclass
class EACMethodConfig(ComparisonMethodConfig):
    """EAC (Zhang et al., ECCV 2022), with its original code's values."""

    NAME: ClassVar[str] = "eac"
    _target_: str = "adadf.methods.eac.EACMethod"
    lam: float = ranged(5.0, *at_least(0.0))  # weight of the attention-map consistency loss


@dataclass
class OptimizerConfig:
    _target_: str = "torch.optim.Adam"
    _partial_: bool = True
    lr: float = ranged(0.001, *positive())
    weight_decay: float = ranged(0.0, *at_least(0.0))
    # torch's implementation; null: auto (fused on CUDA, foreach on the CPU: same bits there), as
    # adadf.app.optimizer_kernels resolves and records them
    fused: Optional[bool] = None
    foreach: Optional[bool] = None


@dataclass
class AdamWConfig(OptimizerConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = ranged(0.05, *at_least(0.0))


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = ranged(0.01, *positive())
    momentum: float = ranged(0.9, *at_least(0.0))
    weight_decay: float = ranged(0.0005, *at_least(0.0))
    nesterov: bool = True


@dataclass
class ExponentialConfig:
    """Stepped once per epoch, as in the reference."""

    _target_: str = "torch.optim.lr_scheduler.ExponentialLR"
    _partial_: bool = True
    gamma: float = ranged(0.9, *positive())


@dataclass
class CosineConfig:
    _target_: str = "torch.optim.lr_scheduler.CosineAnnealingLR"
    _partial_: bool = True
    T_max: int = ranged("${trainer.epochs}", *at_least(1))
    eta_min: float = ranged(0.0, *at_least(0.0))


@dataclass
class ConstantConfig:
    """A scheduler that never changes the rate, so the loop and checkpoints stay uniform."""

    _target_: str = "torch.optim.lr_scheduler.ConstantLR"
    _partial_: bool = True
    factor: float = 1.0
    total_iters: int = 0


@dataclass
class WandbLoggerConfig:
    _target_: str = "adadf.tracking.WandbLogger"
    mode: str = ranged("offline", *one_of("offline", "online", "disabled"))
    project: str = "adadf"
    entity: Optional[str] = None
    group: Optional[str] = None  # null: a multirun's jobs share one group named after the sweep dir
    tags: List[str] = field(default_factory=list)
    name: Optional[str] = None  # null: the run name plus the job's overrides
    job_type: Optional[str] = None  # null: train, eval, ... (the command's)
    log_checkpoint: bool = False


@dataclass
class NullLoggerConfig:
    _target_: str = "adadf.tracking.NullLogger"


# group -> option -> schema; "base" options are registered as schema/<group>/<option>.
GROUP_SCHEMAS: dict[str, dict[str, type]] = {
    "fusion": {"default": FusionConfig},
    "trainer": {"default": TrainerConfig},
    "backbone": {"resnet": BackboneConfig},
    "method": {"base": MethodConfig, "adadf": AdaDFMethodConfig, "ce": CEMethodConfig, "ce_full": FullNetworkCEMethodConfig,
               "scn": SCNMethodConfig,
               "rul": RULMethodConfig, "eac": EACMethodConfig},
    "optimizer": {"adam": OptimizerConfig, "adamw": AdamWConfig, "sgd": SGDConfig},
    "scheduler": {"exponential": ExponentialConfig, "cosine": CosineConfig, "none": ConstantConfig},
    "logger": {"wandb": WandbLoggerConfig, "none": NullLoggerConfig},
}


def field_names(schema: type) -> list[str]:
    return [f.name for f in dataclasses.fields(schema) if not f.name.startswith("_")]
