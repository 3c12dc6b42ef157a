"""docs/research.md's comparison table is what its per-job figures give (docs/data/compare_jobs.csv,
through docs/data/compare_table.py), and that script reads a sweep's jobs the way the sweep table does."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "docs" / "data" / "compare_table.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_published_tables_are_the_csvs(compare):
    published = (ROOT / "docs" / "research.md").read_text()
    for line in compare.tables(pd.read_csv(compare.CSV)).splitlines():
        assert line in published, f"docs/research.md lacks the table line {line!r}: rerun {SCRIPT.name} table"


def test_every_setting_has_every_seed(compare):
    jobs = pd.read_csv(compare.CSV)
    counts = jobs.groupby(["method", "label_noise"])["seed"].nunique()
    assert len(counts) == len(compare.METHODS) * len(compare.NOISES)
    assert counts.min() == counts.max() == jobs["seed"].nunique()
    assert not jobs.duplicated(["method", "label_noise", "seed"]).any()


def test_paired_differences_are_per_seed(compare):
    rows = []
    for seed, (base, scn) in enumerate([(50.0, 54.0), (60.0, 62.0)]):
        for m in compare.METHODS:
            for n in compare.NOISES:
                acc = {"ce_full": base, "scn": scn}.get(m, 40.0)
                rows.append({"method": m, "label_noise": n, "seed": seed, "best_acc": acc,
                             "noise_auroc_aux_loss": math.nan, "noise_auroc_own": math.nan})
    text = compare.tables(pd.DataFrame(rows))
    # scn - ce_full: +4 and +2 -> 3.0 ± 1.4 (the means alone would give 58 - 55 as well, the std not)
    assert "| scn - ce_full | +3.0 ± 1.4 | +3.0 ± 1.4 | +3.0 ± 1.4 |" in text
    assert "| rul - ce_full | -15.0 ± 7.1 |" in text


def test_add_reads_the_sweep_jobs_and_their_own_scores(compare, tmp_path: Path):
    sweep = tmp_path / "sweep"
    jobs = [("scn", 0.2, 1, {"noise_auroc_importance": 55.556}), ("adadf", 0.2, 1, {"noise_auroc": 61.0}),
            ("ce_full", 0.4, 2, {}), ("rul", 0.4, 2, None)]
    for i, (method, noise, seed, scores) in enumerate(jobs):
        d = sweep / str(i)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text(
            f"- method={method}\n- dataset.label_noise={noise}\n- seed={seed}\n- sweep=compare\n")
        if scores is not None:  # the last job never finished: not added
            (d / "summary.json").write_text(json.dumps(
                {"status": "completed", "best_acc": 70.0 + i, "noise_auroc_aux_loss": 90.0} | scores))
    csv = tmp_path / "jobs.csv"
    compare.add(sweep, "test", csv)
    added = pd.read_csv(csv)
    assert added["method"].tolist() == ["scn", "adadf", "ce_full"]
    assert added["seed"].tolist() == [1, 1, 2]
    assert added["own_score"].fillna("").tolist() == ["importance", "attention", ""]
    assert added["noise_auroc_own"].tolist()[:2] == [55.56, 61.0] and math.isnan(added["noise_auroc_own"][2])
    compare.add(sweep, "again", csv)  # the same jobs again: replaced, not doubled
    again = pd.read_csv(csv)
    assert len(again) == 3 and set(again["source"]) == {"again"}
