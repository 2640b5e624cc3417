"""One odd record never stops ingest: it becomes one quarantine row and the rest go on. A dead
image worker fails the stage with a clear message instead of hanging. The conservation check
counts the records read, not the outcomes derived from them."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import StageFailed
from pipeline.paths import Paths
from pipeline.sources.base import RawRecord
from pipeline.stages import ingest
from tests.data import fixtures as fx
from tests.data.fixtures import Item
from tests.data.test_ingest import (TASK, assert_conserved, make_params, manifest, quarantine,
                                    reasons, run_ingest)


def line(**fields) -> bytes:
    return json.dumps({"text": "a caption", "label": 0, **fields}).encode()


def test_odd_rows_each_become_one_quarantine_row(tmp_path):
    stats = run_ingest(tmp_path, [
        Item("good"),
        Item("nul", raw_line=line(id="nul", img="img/a\u0000b.png")),
        Item("superscript", label="\u00b2"),  # str.isdigit() says yes, int() says no
        Item("huge", raw_line=b'{"id": "huge", "img": "img/good.png", "text": "t", "label": '
             + b"7" * 5000 + b"}"),
        Item("surrogate", raw_line=b'{"id": "bad\\ud800id", "img": "img/good.png", '
                                   b'"text": "t", "label": 0}'),
        Item("deep", raw_line=b'{"id": "deep", "label": ' + b"[" * 100_000 + b"]" * 100_000
             + b"}"),
        Item("after"),
    ])
    assert reasons(tmp_path) == {
        "synthetic:nul": "path_outside_dataset",
        "synthetic:superscript": "unknown_label",
        "synthetic:huge": "unknown_label",
        "synthetic:bad\\ud800id": "invalid_id",  # the lone surrogate spelt as an escape
        "synthetic:train.jsonl:6": "malformed_json",
    }
    assert list(manifest(tmp_path).index) == ["synthetic:after", "synthetic:good"]
    assert "(5002 chars)" in quarantine(tmp_path).loc["synthetic:huge", "detail"]
    assert_conserved(stats, tmp_path)


def test_an_exception_examining_a_row_becomes_internal_error(tmp_path):
    image = tmp_path / "data" / "one.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(fx.png_bytes(1))

    records = [RawRecord("synthetic", "ok", "train", image, "fine", 0, TASK),
               RawRecord("synthetic", "odd", "train", image, "x", object(), TASK),
               RawRecord("synthetic", "weird", "train", image, "fine", {"a": [1]}, TASK),
               RawRecord("synthetic", "bytes_path", "train", b"img/\xff.png", "fine", 0, TASK)]
    stats = ingest.ingest_records(records, make_params(), Paths(tmp_path), workers=1)
    held = quarantine(tmp_path)
    assert held.loc["synthetic:bytes_path", "reason"] == "internal_error"
    assert held.loc["synthetic:bytes_path", "detail"].startswith("TypeError")
    assert held.loc["synthetic:odd", "reason"] == "unknown_label"
    assert list(manifest(tmp_path).index) == ["synthetic:ok"]
    assert_conserved(stats, tmp_path)


def test_conservation_compares_records_read_with_rows_written(tmp_path):
    paths = Paths(tmp_path)
    for dest, schema in ((paths.ingest_manifest, ingest.MANIFEST_SCHEMA),
                         (paths.ingest_quarantine, ingest.QUARANTINE_SCHEMA)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist([], schema=schema), dest)
    ingest._check_conservation(0, paths)
    with pytest.raises(StageFailed, match="3 records read, 0 written"):
        ingest._check_conservation(3, paths)


def test_counted_records_are_counted_as_they_are_read():
    counted = ingest._Counted(iter(range(5)))
    assert counted.count == 0 and list(counted) == [0, 1, 2, 3, 4] and counted.count == 5


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(child) for child in text]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_worker_fails_the_stage_instead_of_hanging(tmp_path):
    """A real SIGKILL to one of ingest's worker processes, as the out-of-memory killer sends."""
    image = tmp_path / "data" / "one.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(fx.png_bytes(1, (256, 256)))
    script = textwrap.dedent(f"""
        from pathlib import Path
        from pipeline.errors import StageFailed
        from pipeline.params import parse_params
        from pipeline.paths import Paths
        from pipeline.sources.base import RawRecord
        from pipeline.stages import ingest

        records = (RawRecord("synthetic", str(i), "train", Path({str(image)!r}), "t", 0,
                             "hateful_memes") for i in range(200_000))
        params = parse_params({{"task": "hateful_memes"}})
        try:
            ingest.ingest_records(records, params, Paths(Path({str(tmp_path)!r})), workers=2)
        except StageFailed as exc:
            raise SystemExit(f"STAGE FAILED: {{exc}}")
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        workers: list[int] = []
        while len(workers) < 2 and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
            workers = _children(process.pid)
        assert len(workers) >= 2, "ingest never started its workers"
        time.sleep(1.0)  # let them get busy
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)  # before the fix: waits forever
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert "STAGE FAILED: ingest: a worker process died" in stderr
    assert not Paths(tmp_path).ingest_manifest.exists()  # nothing half-written
