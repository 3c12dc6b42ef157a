"""Makes `python run.py -m sweep=<name>` find the sweep definitions in the repository's `sweeps/`.

Hydra finds config groups as directories of a search-path root, so a group called `sweep` would have
to live in `conf/sweep/`. This plugin serves the group `sweep` from `<repo>/sweeps/` instead
(`sweeps/fusion_grid.yaml` is `sweep=fusion_grid`), where `<repo>` is the parent of the app's primary
config dir (`conf/`). Hydra discovers it because `hydra_plugins` is a namespace package: the
repository root is on `sys.path` when `run.py` runs (and after `pip install -e .`).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

from hydra._internal.core_plugins.file_config_source import FileConfigSource
from hydra.core.config_search_path import ConfigSearchPath
from hydra.core.object_type import ObjectType
from hydra.plugins.config_source import ConfigLoadError, ConfigResult, ConfigSource
from hydra.plugins.search_path_plugin import SearchPathPlugin

GROUP = "sweep"
SCHEME = "adadf-sweeps"


class SweepsConfigSource(ConfigSource):
    """A config source with one flat group, `sweep`, whose options are the YAML files of a directory
    (subdirectories, such as `sweeps/wandb/` with W&B's own sweep files, are not options)."""

    def __init__(self, provider: str, path: str) -> None:
        super().__init__(provider=provider, path=path)
        self._files = FileConfigSource(provider=provider, path=f"file://{self.path}")

    @staticmethod
    def scheme() -> str:
        return SCHEME

    @staticmethod
    def _inner(config_path: str) -> Optional[str]:
        """`sweep/<name>` -> `<name>` (`sweep` -> ``""``); None for anything outside the group."""
        head, _, rest = config_path.partition("/")
        return rest if head == GROUP and "/" not in rest else None

    def available(self) -> bool:
        return self._files.available()

    def is_group(self, config_path: str) -> bool:
        return config_path in ("", GROUP)

    def is_config(self, config_path: str) -> bool:
        inner = self._inner(config_path)
        return bool(inner) and self._files.is_config(inner)

    def load_config(self, config_path: str) -> ConfigResult:
        inner = self._inner(config_path)
        if not inner:
            raise ConfigLoadError(f"Config not found: {config_path}")
        return self._files.load_config(inner)

    def list(self, config_path: str, results_filter: Optional[ObjectType]) -> List[str]:
        if config_path == "":
            return [GROUP] if results_filter in (None, ObjectType.GROUP) else []
        if config_path != GROUP or results_filter == ObjectType.GROUP:
            return []
        return self._files.list("", ObjectType.CONFIG)


class AdadfSweepsSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for element in search_path.get_path():
            if element.provider == "main" and "://" not in element.path.replace("file://", "", 1):
                repo = Path(element.path.replace("file://", "", 1)).resolve().parent
                if (repo / "sweeps").is_dir() and (repo / "adadf").is_dir():
                    search_path.append("adadf-sweeps", f"{SCHEME}://{repo / 'sweeps'}")
                return
