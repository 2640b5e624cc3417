"""Optional grouping columns (contracts.GROUPING_COLUMNS): read from the jsonl layout, kept by
ingest and dedupe when a source gives them, absent from the manifest when none does, a bad
value quarantined; the synthetic source writes each item's target group and confounder role."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline import contracts
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.sources import synthetic as syn
from pipeline.sources.jsonl_layout import read_layout
from pipeline.stages import dedupe, ingest
from tests.data import fixtures as fx

TASK = "hateful_memes"


def write_folder(root: Path, rows: list[dict]) -> Path:
    (root / "img").mkdir(parents=True)
    for i, row in enumerate(rows):
        (root / "img" / f"{row['id']}.png").write_bytes(fx.png_bytes(100 + i))
    (root / "train.jsonl").write_text("".join(
        json.dumps({"img": f"img/{r['id']}.png", "text": f"caption {r['id']}", "label": 0, **r})
        + "\n" for r in rows))
    return root


def test_grouping_columns_are_read_kept_and_a_bad_one_is_quarantined(tmp_path):
    folder = write_folder(tmp_path / "data" / "synthetic" / TASK, [
        {"id": "a", "group": " targets_group ", "confounder": "hateful"},
        {"id": "b", "group": "no_group_target"},
        {"id": "c"},
        {"id": "d", "group": 3},
        {"id": "e", "group": ""},
        {"id": "f", "confounder": "x" * 65},
    ])
    records = list(read_layout(folder, "synthetic", TASK))
    assert records[0].groups == {"group": "targets_group", "confounder": "hateful"}
    assert records[2].groups is None and records[2].problem is None
    assert records[3].problem.startswith("invalid_group: group must be a string")
    assert records[5].problem.startswith("invalid_group: confounder must be a string")

    params = parse_params({"task": TASK, "ingest": {"workers": 1}})
    paths = Paths(tmp_path)
    stats = ingest.run(params, paths)
    assert stats["quarantined_by_reason"] == {"invalid_group": 3}
    manifest = pd.read_parquet(paths.ingest_manifest).set_index("source_id")
    assert list(manifest.columns[-2:]) == ["group", "confounder"]
    assert manifest["group"].to_dict() == {"a": "targets_group", "b": "no_group_target",
                                           "c": None}
    assert manifest.loc["b", "confounder"] is None
    contracts.require(manifest.reset_index(), contracts.MANIFEST, stage="t", path="m")
    dedupe.run(params, paths)  # the clean manifest keeps them
    assert contracts.parquet_columns(paths.manifest)[-2:] == ["group", "confounder"]


def test_a_source_without_groups_writes_the_manifest_as_before(tmp_path):
    write_folder(tmp_path / "data" / "synthetic" / TASK, [{"id": "a"}, {"id": "b"}])
    paths = Paths(tmp_path)
    ingest.run(parse_params({"task": TASK, "ingest": {"workers": 1}}), paths)
    assert contracts.parquet_columns(paths.ingest_manifest) == contracts.MANIFEST.names


def test_synthetic_lines_carry_each_items_group_and_role(tmp_path):
    params = parse_params({"synthetic": {"items_per_task": 60}})
    for task in ("hateful_memes", "moderation7"):
        syn.write_task(tmp_path / task, params, task)
        lines = {}
        for split in ("train", "val", "test"):
            for line in (tmp_path / task / f"{split}.jsonl").read_text().splitlines():
                row = json.loads(line)
                lines[row["id"]] = row
        for item in syn.generate_items(params, task):
            row = lines[item.id]
            assert row["group"] == ("targets_group" if item.group_target
                                    else "no_group_target")
            assert row.get("confounder") == (item.role if task == "hateful_memes" else None)
        assert {r["group"] for r in lines.values()} == {"targets_group", "no_group_target"}
