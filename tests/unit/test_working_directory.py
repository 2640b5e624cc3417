"""No test depends on the state of the checkout it runs in (tests/conftest.py plants, in each
test's own working directory, what `make run` leaves in a checkout)."""
from __future__ import annotations

from pathlib import Path

from tests.conftest import PLANTED_CHECKOUT_STATE

CHECKOUT = Path(__file__).resolve().parents[2]


def test_each_test_runs_in_a_folder_of_its_own_holding_stale_run_state():
    here = Path.cwd().resolve()
    assert here != CHECKOUT and CHECKOUT not in here.parents
    for name in PLANTED_CHECKOUT_STATE:
        assert (here / name).exists(), name  # a test asserting its absence fails every time
    assert not Path("mlflow.db").read_bytes().startswith(b"SQLite format")  # not a store

