"""Register every group's schema with Hydra's ConfigStore (called by each entry point before Hydra
composes). A group's YAML extends its schema with ``- /schema/<group>/<option>@_here_``."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from adadf.config.dataset import DATASET_SCHEMAS
from adadf.config.schema import GROUP_SCHEMAS


def register_schemas() -> None:
    """Idempotent: storing the same node again replaces it."""
    store = ConfigStore.instance()
    for group, options in {**GROUP_SCHEMAS, "dataset": DATASET_SCHEMAS}.items():
        for option, schema in options.items():
            store.store(group=f"schema/{group}", name=option, node=schema)
