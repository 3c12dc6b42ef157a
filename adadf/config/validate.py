"""Turn a composed config into typed objects, or one line naming the bad key."""
from __future__ import annotations

from typing import Any, TypeVar

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adadf.config.schema import RANGES, FusionConfig, TrainerConfig
from adadf.errors import UserError

T = TypeVar("T")

_MISSING = object()


def typed(node: DictConfig, schema: type[T], key: str) -> T:
    """``node`` as an instance of the dataclass ``schema``; wrong types and unknown keys fail."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None) or getattr(err, "key", None)
        where = f"{key}.{sub}" if sub else key
        msg = str(err).splitlines()[0]
        if "not in struct" in msg or "not a key" in msg.lower() or "Key '" in msg and "not" in msg:
            raise UserError(f"{where}: unknown key (expected one of {', '.join(_field_names(schema))})") from None
        raise UserError(f"{where}: {msg}") from None


def _field_names(schema: type) -> list[str]:
    return list(schema.__dataclass_fields__)


def validate_config(cfg: DictConfig) -> tuple[FusionConfig, TrainerConfig]:
    """Check types and ranges of the whole config; return the typed fusion and trainer parts."""
    fusion = typed(cfg.fusion, FusionConfig, "fusion")
    trainer = typed(cfg.trainer, TrainerConfig, "trainer")
    values = {"fusion": fusion, "trainer": trainer}
    for key, (check, expected) in RANGES.items():
        group, _, name = key.partition(".")
        if not name:
            value = OmegaConf.select(cfg, key, default=_MISSING)
        elif group in values:
            value = getattr(values[group], name)
        else:
            value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is _MISSING:
            continue
        try:
            ok = check(value)
        except TypeError:
            ok = False
        if not ok:
            raise UserError(f"{key}={value!r}: expected {expected}")
    if fusion.min_weight > fusion.max_weight:
        raise UserError(
            f"fusion.min_weight={fusion.min_weight} > fusion.max_weight={fusion.max_weight}: "
            "expected min_weight <= max_weight"
        )
    return fusion, trainer


def instantiate_node(node: DictConfig, key: str, **runtime: Any) -> Any:
    """``hydra.utils.instantiate`` with errors turned into one line naming the config group.

    A ``UserError`` raised by the target (bad file, bad value) passes through unchanged.
    """
    try:
        return instantiate(node, **runtime)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, UserError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, TypeError) and "argument" in str(cause):
            raise UserError(f"{key}: {_short(cause)} (target {node.get('_target_')})") from None
        raise UserError(f"{key}: {_short(cause or err)}") from None


def _short(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__
