"""Worker processes for the stages that decode images (ingest, shard): results in input order,
memory bounded, and a worker that dies fails the stage instead of hanging it.

multiprocessing.Pool waits forever for the results of a worker killed by a signal or by the
out-of-memory killer; concurrent.futures notices the dead process and raises BrokenProcessPool,
which becomes a StageFailed saying what happened.
"""
from __future__ import annotations

import itertools
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from functools import partial
from typing import Any

from pipeline.errors import StageFailed

# Items handed to the pool at a time: keeps every worker busy while holding only this many
# results in memory (a million-row source never sits in memory whole).
WINDOW = 1024
CHUNKSIZE = 16


def _ordered_map(pool: ProcessPoolExecutor, stage: str, function: Callable[[Any], Any],
                 items: Iterable[Any]) -> Iterator[Any]:
    iterator = iter(items)
    done = 0
    while window := list(itertools.islice(iterator, WINDOW)):
        try:
            results = list(pool.map(function, window, chunksize=CHUNKSIZE))
        except BrokenProcessPool:
            raise StageFailed(
                f"{stage}: a worker process died (killed by a signal or by the out-of-memory "
                f"killer?) after {done} items; nothing was written. Rerun with {stage}.workers: "
                "1 to find the item, or give the machine more memory.") from None
        done += len(window)
        yield from results


@contextmanager
def process_pool(workers: int, stage: str) -> Iterator[Callable[..., Iterator[Any]]]:
    """`ordered_map(function, items)` over `workers` forked processes, started on entry.

    fork: workers inherit the imported modules (torch, Pillow), so start-up costs milliseconds.
    The workers are forked here, before the caller starts threads such as tqdm's monitor:
    forking a threaded process is unsafe.
    """
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
    try:
        pool.submit(int).result()  # forks every worker now
        yield partial(_ordered_map, pool, stage)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
