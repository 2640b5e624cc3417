"""Shard throughput (make bench): ~1000 images of ~300 px, one process against a pool, side by side.

Prints images/s for each worker count and their ratio, measured in this one run.
"""
from __future__ import annotations

from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import shard
from tests.data.manifest_fixture import build_manifest

ROWS = {"train": 700, "val": 150, "test": 150}


def test_shard_throughput_one_process_against_pool(tmp_path):
    paths = Paths(tmp_path)
    build_manifest(paths, rows_per_split=ROWS, size=(320, 280))
    rates: dict[int, float] = {}
    # Alternate the two settings and keep each one's best run: other load on the machine then
    # hurts both alike instead of whichever ran during it.
    for workers in (1, 2, 1, 2):
        params = parse_params({"shard": {"workers": workers}})
        stats = shard.run(params, paths)
        assert stats["samples"] == sum(ROWS.values())
        rates[workers] = max(rates.get(workers, 0.0), stats["images_per_second"])
        print(f"\nshard: {stats['samples']} images of ~300 px, workers={workers}: "
              f"{stats['images_per_second']:.0f} images/s ({stats['seconds']:.2f} s)")
    print(f"shard best: one process {rates[1]:.0f} images/s, pool of 2 {rates[2]:.0f} images/s, "
          f"ratio {rates[2] / rates[1]:.2f}x")
