"""One background thread that writes a run's reports (pictures, CSVs, W&B media) while the next
epoch trains, so nothing slow that is not training sits between two epochs."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Callable

from adadf.errors import first_line
from adadf.tracking.callbacks import Callback

log = logging.getLogger(__name__)

_STOP = object()  # the queue's last item: close() was called
_POLL_S = 0.5  # how often an idle thread checks that the main thread still runs


class BackgroundWriter(Callback):
    """Runs submitted tasks one at a time, in order, on one thread.

    - One thread only: matplotlib (an Agg canvas, no pyplot) is safe from one thread at a time, and
      the tasks of one run keep their order (a picture before the W&B record of it).
    - Bounded: ``submit`` blocks while ``max_pending`` tasks wait, so a writer slower than the epochs
      holds training back instead of piling up copies of the scores.
    - A task that fails is a warning naming it, at once and again at ``close`` (never lost silently);
      the run goes on.
    - ``close`` (``end_run``) waits for every task. A writer never closed still finishes its queue
      before the interpreter exits: its thread is not a daemon and stops once the queue is empty and
      the main thread has ended.
    - Tasks must not draw from the global random generators (torch, numpy, random): the training
      thread's draws would then depend on the writer's timing.
    - ``background=False`` runs each task at once, on the caller's thread (same files, same order).
    """

    def __init__(self, max_pending: int = 4, background: bool = True, name: str = "adadf-writer") -> None:
        self.background = background
        self.name = name
        self.failures: list[str] = []
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._thread: threading.Thread | None = None

    def submit(self, what: str, task: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``task(*args, **kwargs)`` on the writer's thread; ``what`` names it in a warning."""
        if not self.background:
            self._run(what, task, args, kwargs)
            return
        if self._thread is None:  # started on first use: ranks and runs that write nothing have no thread
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=False)
            self._thread.start()
        self._queue.put((what, task, args, kwargs))

    def close(self) -> None:
        """Wait until every submitted task has run, then stop the thread; warn about failed tasks."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None
        if self.failures:
            log.warning("%d report(s) not written: %s", len(self.failures), "; ".join(self.failures))
            self.failures = []

    def end_run(self, completed: bool) -> None:
        self.close()

    def _run(self, what: str, task: Callable[..., Any], args: tuple, kwargs: dict) -> None:
        try:
            task(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a report that fails must not stop the training
            self.failures.append(f"{what} ({first_line(err)})")
            log.warning("%s not written: %s", what, first_line(err))

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=_POLL_S)
            except queue.Empty:
                if not threading.main_thread().is_alive():  # the interpreter is exiting: queue done
                    return
                continue
            if item is _STOP:
                return
            self._run(*item)
