"""The embedded default before and after the pretrained towers, side by side in one run (make
bench, or alone: `.venv/bin/python -m pytest tests/bench/test_bench_defaults.py -s
-p no:cacheprovider`).

Two fresh copies of the project, cold (no data, no DVC cache, no metadata DB), one after the
other: the committed params.yaml (pretrained towers, frozen, through the embed stage's cache)
and the same params with the previous model defaults (`tiny`, random init, LoRA). Each runs
`mmguard run` (the retrain DAG through Airflow, what `make run` runs after installing); prints
wall time, test AUROC, the text peer on the same test rows and the gate's decision.
"""
import json
import time

from tests.project import make_project, run

PREVIOUS = {"model": {"name": "tiny", "pretrained": None, "finetune": "lora"}}


def _cold_run(root) -> dict:
    start = time.perf_counter()
    report = run(["mmguard", "run"], root).stdout
    wall = time.perf_counter() - start
    evaluated = json.loads((root / "artifacts" / "evaluate" / "metrics.json").read_text())
    peer = json.loads((root / "artifacts" / "text_peer" / "metrics.json").read_text())
    decision = json.loads((root / "artifacts" / "gate" / "decision.json").read_text())
    return {"wall_s": wall, "auroc": evaluated["test"]["auroc"],
            "peer": peer["test"]["auroc"], "decision": decision["decision"],
            "ok": "mmguard_retrain: success" in report}


def test_pretrained_default_against_the_previous_one(tmp_path):
    results = {"pretrained towers (committed)": _cold_run(make_project(tmp_path / "now")),
               "tiny random init (previous)": _cold_run(make_project(tmp_path / "before",
                                                                     PREVIOUS))}
    print("\n[bench] cold `mmguard run` on the embedded data, one after the other:")
    for name, row in results.items():
        print(f"  {name:30s} {row['wall_s']:7.1f} s  test AUROC {row['auroc']:.4f}  "
              f"text peer {row['peer']:.4f}  gate: {row['decision']}")
    now, before = results.values()
    print(f"[bench] wall time now / before: {now['wall_s'] / before['wall_s']:.2f}x")
    assert now["ok"] and before["ok"]
