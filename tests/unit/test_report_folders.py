"""Report folders are replaced whole: evaluate's plots/ survives a plot that fails part-way, and a
killed writer's staging folder is cleared by the next write (pipeline/atomic.py)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from pipeline import atomic, plots
from pipeline.prediction_checks import probability_column

CLASSES = ["not_hateful", "hateful"]


def _predictions(names: list[str], rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, rows)
    hateful = np.clip(labels * 0.6 + rng.uniform(0, 0.4, rows), 0, 1)
    return pd.DataFrame({"label": labels, "prediction": (hateful > 0.5).astype(int),
                         probability_column(names[0]): 1 - hateful,
                         probability_column(names[1]): hateful})


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_a_plot_failing_part_way_leaves_the_previous_plots_whole(tmp_path):
    out = tmp_path / "evaluate" / "plots"
    written = plots.write_plots(_predictions(CLASSES), CLASSES, out)
    assert sorted(p.name for p in written) == sorted(p.name for p in out.iterdir())
    assert len(written) == 8
    before = _snapshot(out)

    # A class name matplotlib cannot typeset: the four CSVs are written, then the first
    # figure (ROC, whose legend names the class) raises.
    untypesettable = [CLASSES[0], r"$\frac$"]
    with pytest.raises(ValueError, match=r"\\frac"):
        plots.write_plots(_predictions(untypesettable), untypesettable, out)

    assert _snapshot(out) == before
    assert [p.name for p in out.parent.iterdir()] == ["plots"]  # no staging folder left


def test_a_killed_writers_staging_folder_goes_at_the_next_write(tmp_path):
    dest = tmp_path / "data_docs"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    left = tmp_path / f".data_docs{atomic.TMP_MARK}{dead.stdout.strip()}-k2j4h"
    (left / "static").mkdir(parents=True)
    (left / "static" / "half.css").write_text("a killed writer's")
    live = tmp_path / f".data_docs{atomic.TMP_MARK}1-x9y8z"  # pid 1 is always running
    live.mkdir()

    with atomic.directory(dest) as staging:
        (staging / "index.html").write_text("new")

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data_docs", live.name])
