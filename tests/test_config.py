"""Every group option composes, every _target_ binds, and bad values fail with one clear line."""
from __future__ import annotations

import inspect

import pytest
from hydra.utils import get_method
from omegaconf import OmegaConf

from adadf.cli import one_line
from adadf.config import validate_config
from adadf.config.schema import FusionConfig
from adadf.methods.adadf import resolve_detach_target
from adadf.errors import UserError
from conftest import CONF

GROUPS = ["dataset", "backbone", "fusion", "method", "optimizer", "scheduler", "trainer", "logger", "experiment", "debug"]

# What the composition root passes at instantiate time, by group.
RUNTIME = {
    "dataset": {"loader_seed": 0},
    "backbone": {"num_classes": 7, "drop_rate": 0.0},
    "optimizer": {"params": []},
    "scheduler": {"optimizer": None},
    "logger": {},
    "method": {"num_classes": 7, "pretrained": False},
}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


ALL = [(g, o) for g in GROUPS for o in options(g)]


def test_every_group_has_options():
    for group in GROUPS:
        assert options(group), f"adadf/conf/{group} is empty"


@pytest.mark.parametrize("group,option", ALL, ids=[f"{g}={o}" for g, o in ALL])
def test_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    typed = validate_config(cfg)
    fusion, trainer = typed["fusion"], typed["trainer"]
    assert 0 < fusion.threshold < 1
    assert trainer.epochs >= 1
    for key in ("root", "num_classes", "batch_size", "num_workers", "image_size"):
        assert key in cfg.dataset, f"{group}={option}: dataset.{key} missing"


@pytest.mark.parametrize("group,option", [(g, o) for g, o in ALL if g in RUNTIME])
def test_target_binds_to_signature(compose_cfg, group, option):
    cfg = compose_cfg([f"{group}={option}"])
    node = OmegaConf.to_container(cfg[group], resolve=True)
    target = get_method(node.pop("_target_"))
    node.pop("_partial_", None)
    signature = inspect.signature(target)
    signature.bind(**node, **RUNTIME[group])  # raises TypeError on an unknown or missing key


@pytest.mark.parametrize(
    "override,key",
    [
        ("fusion.threshold=1.5", "fusion.threshold"),
        ("fusion.threshold=0", "fusion.threshold"),
        ("fusion.beta=0.5", "fusion.beta"),
        ("fusion.beta=abc", "fusion.beta"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("fusion.ld_pass=sometimes", "fusion.ld_pass"),
        ("+fusion.thresold=0.5", "fusion.thresold"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("dataset.batch_size=0", "dataset.batch_size"),
        ("trainer.device=tpu", "trainer.device"),
    ],
)
def test_bad_value_names_key(compose_cfg, override, key):
    """Wrong types and unknown keys fail at composition (the schemas), ranges in validation: both
    reach the user as one line naming the key (``adadf.cli.one_line``)."""
    with pytest.raises(Exception) as err:
        validate_config(compose_cfg([override]))
    message = one_line(err.value)
    assert message is not None, f"{type(err.value).__name__} would print a traceback"
    assert key in message
    assert "\n" not in message


def test_min_weight_above_max_weight(compose_cfg):
    cfg = compose_cfg(["fusion.min_weight=0.9", "fusion.max_weight=0.5"])
    with pytest.raises(UserError, match="min_weight"):
        validate_config(cfg)


def test_defaults_are_the_reference(compose_cfg):
    cfg = compose_cfg([])
    fusion = validate_config(cfg)["fusion"]
    assert (fusion.threshold, fusion.beta, fusion.max_weight, fusion.min_weight) == (0.7, 3.0, 1.0, 0.2)
    assert (fusion.tops, fusion.margin, fusion.fallback_mass, fusion.detach_target) == (0.7, 0.07, 0.4, None)
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.scheduler.gamma == 0.9
    assert cfg.dataset._target_.endswith("build_synthetic")


@pytest.mark.parametrize("pretrained, expected", [(True, False), (False, True)])
def test_detach_target_auto_follows_the_checkpoint(pretrained, expected):
    """auto: the reference's non-detached target with a pretrained trunk, detached from scratch."""
    assert resolve_detach_target(FusionConfig(), pretrained).detach_target is expected


@pytest.mark.parametrize("explicit", [True, False])
def test_detach_target_explicit_value_wins(explicit):
    for pretrained in (True, False):
        assert resolve_detach_target(FusionConfig(detach_target=explicit), pretrained).detach_target is explicit
