"""The composed config of the default run and of each experiment is what it was: a refactor of the
config layer must not move a value. ``tests/data/config_snapshots/<name>.yaml`` hold the output of
``python run.py [experiment=<name>] --cfg job``; a deliberate change updates them in its own commit."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

SNAPSHOTS = Path(__file__).parent / "data" / "config_snapshots"
NAMES = sorted(p.stem for p in SNAPSHOTS.glob("*.yaml"))


def test_every_experiment_has_a_snapshot():
    experiments = {p.stem for p in (Path(__file__).parents[1] / "adadf" / "conf" / "experiment").glob("*.yaml")}
    assert experiments | {"default"} == set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_composed_config_matches_snapshot(compose_cfg, name):
    cfg = compose_cfg([] if name == "default" else [f"experiment={name}"])
    composed = yaml.safe_load(OmegaConf.to_yaml(cfg))
    expected = yaml.safe_load((SNAPSHOTS / f"{name}.yaml").read_text())
    for group in sorted(set(composed) | set(expected)):
        assert composed.get(group) == expected.get(group), f"{name}: {group} moved"
