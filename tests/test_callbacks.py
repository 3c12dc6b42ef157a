"""The trainer's callback seam (adadf.tracking.callbacks): reports subscribe to the loop's events,
and the trainer calls them in order, also on the way out of a failed run."""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from adadf import app
from adadf.tracking.callbacks import CLASS_DIST_PASS, TRAIN_PASS, Callback, CallbackList
from adadf.tracking.writer import BackgroundWriter
from test_resume import train_here


class Recorder(Callback):
    def __init__(self, name: str, events: list, row: dict | None = None, fail_at_end: bool = False) -> None:
        self.name, self.events, self.row, self.fail_at_end = name, events, row or {}, fail_at_end

    def begin_pass(self, kind):
        return (lambda outputs, labels, n: self.events.append((self.name, kind, n))) if kind == TRAIN_PASS else None

    def end_epoch(self, epoch, reduce=None):
        self.events.append((self.name, "end_epoch", epoch))
        return self.row

    def end_run(self, completed):
        self.events.append((self.name, "end_run", completed))
        if self.fail_at_end:
            raise RuntimeError(f"{self.name} failed")


def test_callback_list_calls_every_callback_in_order():
    events: list = []
    callbacks = CallbackList([Recorder("a", events, {"x": 1}), Recorder("b", events, {"y": 2})])
    hook = callbacks.begin_pass(TRAIN_PASS)
    hook(None, None, 4)
    assert callbacks.begin_pass(CLASS_DIST_PASS) is None  # nobody watches that pass
    assert callbacks.end_epoch(3) == {"x": 1, "y": 2}
    assert events == [("a", "train", 4), ("b", "train", 4), ("a", "end_epoch", 3), ("b", "end_epoch", 3)]


def test_end_run_reaches_every_callback_even_after_one_fails(caplog):
    events: list = []
    callbacks = CallbackList([Recorder("a", events, fail_at_end=True), Recorder("writer", events)])
    with pytest.raises(RuntimeError, match="a failed"):
        callbacks.end_run(completed=True)
    assert ("writer", "end_run", True) in events
    with caplog.at_level(logging.WARNING):
        callbacks.end_run(completed=False)  # a failed run: logged, the run's own error stays the one raised
    assert ("writer", "end_run", False) in events
    assert any("a failed" in r.getMessage() for r in caplog.records)


def test_the_trainer_calls_the_callbacks_and_ends_them_after_a_failure(tmp_path: Path, cache_dir: Path, monkeypatch):
    """A callback that fails in epoch 2: the run fails, yet every callback's end_run ran (completed
    false) and the writer wrote epoch 1's files before the run ended."""
    events: list = []

    class FailsInEpoch2(Recorder):
        def end_epoch(self, epoch, reduce=None):
            super().end_epoch(epoch, reduce)
            if epoch == 2:
                raise RuntimeError("report broke")
            return {"extra_metric": 0.5}

    def with_recorder(parts, files, logger, is_main=True):
        callbacks = build(parts, files, logger, is_main)
        assert isinstance(callbacks[-1], BackgroundWriter)  # the writer is joined last
        return [FailsInEpoch2("probe", events), *callbacks]

    build = app.build_callbacks
    monkeypatch.setattr(app, "build_callbacks", with_recorder)
    with pytest.raises(RuntimeError, match="report broke"):
        train_here(tmp_path, cache_dir, "trainer.epochs=3")
    assert [e for e in events if e[1] != TRAIN_PASS] == [
        ("probe", "end_epoch", 1), ("probe", "end_epoch", 2), ("probe", "end_run", False)]
    assert len([e for e in events if e[1] == TRAIN_PASS]) == 2 * 3  # 3 batches of 8 in each epoch
    assert (tmp_path / "plots" / "attention_e001.png").is_file()
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["epoch"].tolist() == [1] and metrics["extra_metric"].tolist() == [0.5]  # a callback's column
