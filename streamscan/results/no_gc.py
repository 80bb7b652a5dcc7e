"""no_gc: the cyclic garbage collector paused while many long-lived objects are built.

Reading a 70k-matrix journal and writing its outputs allocate hundreds of thousands of objects (records,
table rows, strings) and make no reference cycles: the collector's passes over the ever-growing heap
found nothing and cost a sixth of a `merge`. Reference counting still frees everything as usual; the
collector runs again (if it was on) when the block ends, the block's objects then in its oldest
generation (collected in a full collection, as long-lived objects are).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause the cyclic collector for the block (nestable: only the outermost block turns it back on)."""
    paused = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if paused:
            # what the block made would all sit in the youngest generation, whose next collection (on the
            # next allocation) would walk every one of them: move them to the oldest instead, unwalked
            gc.freeze()
            gc.unfreeze()
            gc.enable()
