"""Drift monitoring benchmarks (make bench), each printing numbers measured side by side in one
run:

- capture overhead: per-request latency of the pyfunc (one row per request, as served) with the
  capture log on and off, requests interleaved so machine load hits both alike; p50 and p95;
- the drift stage (`mmguard drift` in a subprocess, wall time and peak RSS from /usr/bin/time)
  on the default data size (1680 reference vs 360 current items, the default synthetic train and
  test splits) and on 10x as many rows.

MMGUARD_BENCH_REQUESTS (default 200) and MMGUARD_BENCH_DRIFT_SCALES (default "1,10") size them.
"""
from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from mlflow.pyfunc import PythonModelContext

from pipeline.monitoring import capture
from pipeline.serving import MMGuardPyfunc
from tests.bench.test_bench_inference import inputs
from pipeline.params import parse_params
from pipeline.sources import synthetic
from tests.data.synthetic_sides import TASK, save_tiny_model

REQUESTS = int(os.environ.get("MMGUARD_BENCH_REQUESTS", 200))
SCALES = [int(s) for s in os.environ.get("MMGUARD_BENCH_DRIFT_SCALES", "1,10").split(",")]
DEFAULT_REFERENCE, DEFAULT_CURRENT = 1680, 360  # train / test of 2400 items at 70/15/15


def test_capture_overhead_per_request(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(capture.ENV_URI, str(tmp_path / "log"))
    monkeypatch.setattr(capture, "_LOG", None)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"monitoring": {"flush_rows": 32}}))
    model = MMGuardPyfunc()
    context = PythonModelContext({"model_dir": str(save_tiny_model(tmp_path))}, {})
    model.load_context(context)
    rows = inputs(REQUESTS)
    timings: dict[str, list[float]] = {"off": [], "on": []}
    monkeypatch.setenv(capture.ENV_SWITCH, "0")
    for warm in range(5):
        model.predict(context, rows.iloc[[warm]])
    for index in range(REQUESTS):
        for mode in (("on", "off") if index % 2 else ("off", "on")):
            monkeypatch.setenv(capture.ENV_SWITCH, "1" if mode == "on" else "0")
            start = time.perf_counter()
            model.predict(context, rows.iloc[[index]])
            timings[mode].append(time.perf_counter() - start)
    capture.flush()
    written = capture._LOG.written
    stats = {mode: (np.percentile(t, 50) * 1e3, np.percentile(t, 95) * 1e3)
             for mode, t in timings.items()}
    print(f"\ncapture overhead, {REQUESTS} one-row requests each, interleaved:")
    for mode, (p50, p95) in stats.items():
        print(f"  capture {mode:3s}  p50 {p50:7.2f} ms  p95 {p95:7.2f} ms")
    print(f"  ratio on/off  p50 {stats['on'][0] / stats['off'][0]:.3f}  "
          f"p95 {stats['on'][1] / stats['off'][1]:.3f}   ({written} rows captured)")
    assert written == REQUESTS  # every "on" request, none of the "off" or warm-up ones


def _project(root: Path, scale: int) -> None:
    """A project whose clean manifest holds scale x the default split sizes (images rendered
    and written one at a time, so the bench's own memory stays small)."""
    save_tiny_model(root)
    rows = []
    for split, n, seed in (("train", DEFAULT_REFERENCE, 0), ("test", DEFAULT_CURRENT, 1)):
        params = parse_params({"synthetic": {"seed": seed, "items_per_task": int(n * scale / 0.7)}})
        for k, item in enumerate(synthetic.generate_items(params, TASK)[:n * scale]):
            rel = f"artifacts/ingest/images/{split}-{k}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            synthetic.render_image(item.image).save(root / rel, quality=90)
            rows.append({"id": f"{split}-{k}", "split": split, "image_path": rel,
                         "text": item.text, "label": item.label})
    (root / "artifacts/dedupe").mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(root / "artifacts/dedupe/manifest.parquet")
    (root / "params.yaml").write_text(yaml.safe_dump({"drift": {"log_to_mlflow": False}}))


def test_drift_stage_time_and_memory(tmp_path):
    results = []
    for scale in SCALES:
        root = tmp_path / f"x{scale}"
        _project(root, scale)
        report = subprocess.run(
            ["/usr/bin/time", "-v", "mmguard", "drift", "--root", str(root), "--params",
             str(root / "params.yaml")], capture_output=True, text=True, check=True,
            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        wall = re.search(r"Elapsed \(wall clock\) time.*: (.+)", report.stderr).group(1)
        rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", report.stderr)
                  .group(1))
        parts = [float(p) for p in wall.split(":")]
        seconds = sum(p * 60 ** k for k, p in enumerate(reversed(parts)))
        # CPU seconds too: on a shared machine wall time mostly measures the neighbours.
        cpu = sum(float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", report.stderr)
                        .group(1)) for kind in ("User", "System"))
        results.append((scale, seconds, rss / 1024, cpu))
        assert '"verdict"' in report.stdout
    print("\ndrift stage (mmguard drift, subprocess):")
    for scale, seconds, mib, cpu in results:
        print(f"  {scale:2d}x rows ({DEFAULT_REFERENCE * scale} vs {DEFAULT_CURRENT * scale})"
              f"  wall {seconds:7.1f} s  cpu {cpu:7.1f} s  peak RSS {mib:7.0f} MiB")
    if len(results) > 1:
        print(f"  ratio {results[-1][0]}x/{results[0][0]}x  time "
              f"{results[-1][1] / results[0][1]:.2f}  memory {results[-1][2] / results[0][2]:.2f}")
