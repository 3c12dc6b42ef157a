"""Turn a composed config into typed objects, or one line naming the bad key."""
from __future__ import annotations

import dataclasses
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adadf.config.fields import check_ranges
from adadf.config.schema import field_names
from adadf.errors import UserError, first_line


def typed_group(cfg: DictConfig, key: str) -> Any:
    """The group ``key`` as its schema's dataclass instance, ranges checked (a plain node as a dict)."""
    node = cfg[key]
    try:
        obj = OmegaConf.to_object(node) if isinstance(node, DictConfig) else node
    except OmegaConfBaseException as err:
        sub = getattr(err, "full_key", None) or key
        raise UserError(f"{sub}: {first_line(err)}") from None
    if dataclasses.is_dataclass(obj):
        fields = [f.name for f in dataclasses.fields(obj)]
        extra = [k for k in node if k not in fields]  # `+group.key=...` gets past the schema
        if extra:
            names = ", ".join(field_names(type(obj)))
            raise UserError(f"{key}.{extra[0]}: unknown key (expected one of {names})")
        check_ranges(obj, key)
    return obj


# The keys of a training config (adadf/conf/config.yaml): its two values and its groups.
TRAINING_KEYS = ("seed", "name", "dataset", "backbone", "fusion", "method", "optimizer", "scheduler", "trainer",
                 "logger")
# numpy's seeds are 32-bit: a larger seed would repeat a smaller one's draws (2**32 the same as 0).
SEED_MAX = 2**32 - 1


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check ``cfg``'s keys, seed and every group against its schema's ranges; return the typed groups
    by name. A key no group knows (``+foo=bar``) is refused, not silently carried along."""
    unknown = [key for key in cfg if key not in TRAINING_KEYS]
    if unknown:
        raise UserError(f"{unknown[0]}: unknown key (expected one of {', '.join(TRAINING_KEYS)})")
    seed = cfg.get("seed")
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
        raise UserError(f"seed={seed!r}: expected an integer in [0, {SEED_MAX}] (seeds are 32-bit: a larger "
                        "one would repeat a smaller one's draws)")
    return {key: typed_group(cfg, key) for key, node in cfg.items() if isinstance(node, DictConfig)}


def instantiate_node(node: DictConfig, key: str, **runtime: Any) -> Any:
    """``hydra.utils.instantiate`` with errors turned into one line naming the config group.

    A ``UserError`` raised by the target (bad file, bad value) passes through unchanged.
    """
    try:
        return instantiate(node, _convert_="object", **runtime)
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
