"""Data-layer benchmark on the default embedded dataset (make bench).

Prints: ingest / dedupe / shard throughput in images/s, the cold `dvc repro` time through shard and
the no-op `dvc repro` time, all measured in this one run.
"""
import shutil
import time

from pipeline.params import load_params
from pipeline.paths import Paths
from pipeline.sources import get_source
from pipeline.stages import dedupe, ingest, shard, validate
from tests.project import make_project, run

DATA_STAGES = ["ingest", "dedupe", "validate", "shard"]


def _timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def test_data_layer_throughput_and_repro_times(tmp_path):
    root = make_project(tmp_path / "project")
    params = load_params(root / "params.yaml")
    paths = Paths(root)
    _, fetch_s = _timed(get_source("synthetic").fetch, paths.source_dir("synthetic"), params)

    ingest_stats, ingest_s = _timed(ingest.run, params, paths)
    dedupe_stats, dedupe_s = _timed(dedupe.run, params, paths)
    _, validate_s = _timed(validate.run, params, paths)
    _, shard_s = _timed(shard.run, params, paths)
    rows_in, kept = ingest_stats["rows_in"], dedupe_stats["kept"]
    data_s = ingest_s + dedupe_s + shard_s

    shutil.rmtree(paths.artifacts)
    run(["dvc", "add", "-q", "data"], root)
    start = time.perf_counter()
    run(["dvc", "repro", *DATA_STAGES], root)
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    noop = run(["dvc", "repro", *DATA_STAGES], root)
    noop_s = time.perf_counter() - start
    assert "Running stage" not in noop.stdout

    print(f"\n[bench data] task={params.task} rows_in={rows_in} kept={kept}")
    print(f"[bench data] synthetic fetch   {fetch_s:7.2f} s")
    print(f"[bench data] ingest            {ingest_s:7.2f} s  {rows_in / ingest_s:8.1f} images/s")
    print(f"[bench data] dedupe            {dedupe_s:7.2f} s  {rows_in / dedupe_s:8.1f} images/s")
    print(f"[bench data] validate          {validate_s:7.2f} s")
    print(f"[bench data] shard             {shard_s:7.2f} s  {kept / shard_s:8.1f} images/s")
    print(f"[bench data] ingest+dedupe+shard {data_s:5.2f} s  {rows_in / data_s:8.1f} images/s")
    print(f"[bench data] dvc repro cold    {cold_s:7.2f} s")
    print(f"[bench data] dvc repro no-op   {noop_s:7.2f} s  (cold / no-op = {cold_s / noop_s:.1f}x)")
