"""Torch's intra-op thread count for a block of work, restored afterwards."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator


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
