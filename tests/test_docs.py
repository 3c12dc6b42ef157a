"""The docs name what exists (issue 19 item 11): every config group and option named in README.md and
docs/ exists in adadf/conf/, and every option there is listed in docs/configuration.md's table and
README.md's summary. Catches the drift a test can: names, not prose."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "adadf" / "conf"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Groups whose options are files in adadf/conf/<group>/ (fusion and trainer have one, `default`).
GROUPS = ("dataset", "backbone", "fusion", "method", "optimizer", "scheduler", "trainer", "logger", "experiment",
          "recipe", "sweep", "debug", "detector")
# group=option written on purpose for an option that is not in adadf/conf/: the test plugin's own
# method (tests/plugins/conf) and the example of a composition error.
NOT_OPTIONS = {("method", "tiny"), ("dataset", "nope")}


def options(group: str) -> set[str]:
    return {p.stem for p in (CONF / group).glob("*.yaml")}


def test_every_group_option_the_docs_name_exists():
    pattern = re.compile(rf"\b({'|'.join(GROUPS)})=([a-z0-9_]+)\b")
    named = {(m[1], m[2], doc.name) for doc in DOCS for m in pattern.finditer(doc.read_text())}
    missing = sorted(f"{doc}: {g}={o}" for g, o, doc in named if o not in options(g) and (g, o) not in NOT_OPTIONS)
    assert not missing, "named in the docs but not in adadf/conf/: " + ", ".join(missing)


@pytest.mark.parametrize("group", GROUPS)
def test_configuration_table_lists_every_option(group: str):
    rows = [line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines()
            if line.startswith(f"| `{group}` |")]
    assert len(rows) == 1, f"docs/configuration.md: expected one table row for `{group}`"
    listed = set(re.findall(r"`([a-z0-9_]+)`", rows[0].split("|")[2]))
    assert listed == options(group), f"docs/configuration.md `{group}` row: {sorted(listed)} vs adadf/conf/{group}/"


def test_readme_summary_lists_every_option():
    text = " ".join((ROOT / "README.md").read_text().split())  # the summary wraps lines
    for group in ("dataset", "method", "backbone", "optimizer", "scheduler", "logger"):
        found = re.search(rf"`{group}` \(([^)]*)\)", text)
        assert found, f"README.md: expected `{group}` (option | option ...) in the configuration summary"
        listed = {o.strip() for o in found[1].split(":")[0].split("|")}
        assert listed == options(group), f"README.md `{group}`: {sorted(listed)} vs adadf/conf/{group}/"
