"""Work spread over threads: torch's intra-op thread count for a block, restored afterwards; a
threaded map with a progress bar (on a terminal only)."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@contextlib.contextmanager
def torch_threads(threads: Any) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: leave torch's setting), then
    restore the caller's count. Nothing is set when the count already matches (hot paths use this)."""
    import torch

    before = torch.get_num_threads()
    if threads is None or max(1, int(threads)) == before:
        yield
        return
    torch.set_num_threads(max(1, int(threads)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bar_disabled(progress: bool) -> bool | None:
    """tqdm's ``disable=`` for a ``progress`` switch: None draws the bar on a terminal only, so a log
    file or a pipe never gets carriage-return lines; True never draws it."""
    return None if progress else True


def threaded_map(fn: Callable[[T], R], items: Sequence[T], workers: int, *, desc: str, unit: str = "img",
                 progress: bool = True) -> Iterator[R]:
    """``fn`` over ``items`` in ``workers`` threads (torch and Pillow release the GIL, so threads
    overlap), results in the input's order, with a progress bar. Stopping early (an error, Ctrl-C)
    cancels the items not started."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool, \
            tqdm(total=len(items), desc=desc, unit=unit, disable=bar_disabled(progress)) as bar:
        for result in pool.map(fn, items):
            bar.update()
            yield result
