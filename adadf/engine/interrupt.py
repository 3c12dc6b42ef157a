"""Stop cleanly on SIGINT/SIGTERM: finish the current batch, keep the last checkpoint."""
from __future__ import annotations

import signal
import threading
from types import FrameType


class StopRequested(Exception):
    """Raised inside the loop after a stop signal arrived."""

    def __init__(self, signame: str) -> None:
        super().__init__(signame)
        self.signame = signame


class StopFlag:
    """Set by a signal handler, checked by the loops between batches (no work lost mid-step)."""

    def __init__(self) -> None:
        self.signame: str | None = None
        self._previous: dict[int, object] = {}

    def check(self) -> None:
        if self.signame is not None:
            raise StopRequested(self.signame)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signame is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.signame = signal.Signals(signum).name

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()
