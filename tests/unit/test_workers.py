"""The stages' worker pool: input order kept, and a worker killed for real fails the stage."""
from __future__ import annotations

import os
import signal

import pytest

from pipeline.errors import StageFailed
from pipeline.workers import process_pool


def _square_or_die(value: int) -> int:
    if value == 37:
        os.kill(os.getpid(), signal.SIGKILL)  # what the out-of-memory killer does
    return value * value


def test_results_keep_the_input_order():
    with process_pool(2, "shard") as ordered_map:
        assert list(ordered_map(_square_or_die, range(30))) == [v * v for v in range(30)]


def test_a_killed_worker_fails_the_stage():
    with pytest.raises(StageFailed, match="shard: a worker process died"):
        with process_pool(2, "shard") as ordered_map:
            list(ordered_map(_square_or_die, range(100)))
