"""validate stage: the Great Expectations suite over the clean manifest, good and bad inputs."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
import pytest

from pipeline import offline_html
from pipeline.errors import StageFailed
from pipeline.expectations import LEVELS, build_expectations
from pipeline.params import Params, parse_params
from pipeline.paths import Paths
from pipeline.stages import validate
from tests.data.manifest_fixture import build_manifest, write_manifest


@pytest.fixture()
def paths(tmp_path) -> Paths:
    return Paths(tmp_path)


@pytest.fixture()
def manifest(paths) -> pd.DataFrame:
    return build_manifest(paths)


def _results(paths: Paths) -> dict[str, dict]:
    document = json.loads((paths.validate_dir / "results.json").read_text())
    return {entry["name"]: entry for entry in document["expectations"]}


def _fails_with(paths: Paths, frame: pd.DataFrame, expectation: str,
                params: Params | None = None) -> str:
    write_manifest(paths, frame)
    with pytest.raises(StageFailed) as caught:
        validate.run(params or Params(), paths)
    message = str(caught.value)
    assert expectation in message
    assert _results(paths)[expectation]["success"] is False
    return message


def test_suite_has_one_expectation_per_level_entry():
    expectations = build_expectations(Params())
    names = [e.meta["name"] for e in expectations]
    assert sorted(names) == sorted(LEVELS)
    severities = {e.meta["name"]: e.severity.value for e in expectations}
    assert severities["id_unique"] == "critical"
    assert severities["class_share_per_split"] == "warning"


def test_good_manifest_passes_and_writes_results_and_data_docs(paths, manifest):
    summary = validate.run(Params(), paths)
    assert summary["failed_errors"] == [] and summary["failed_warnings"] == []
    assert summary["rows"] == len(manifest)
    results = _results(paths)
    assert set(results) == set(LEVELS)
    assert all(entry["success"] for entry in results.values())
    assert results["split_min_rows"]["observed_value"] == 12
    assert results["class_share_per_split"]["observed_value"] == pytest.approx(0.5)
    assert results["id_unique"]["level"] == "error" and results["id_unique"]["column"] == "id"
    index = paths.validate_dir / "data_docs" / "index.html"
    assert index.exists() and "manifest" in index.read_text()
    assert json.loads(paths.stats("validate").read_text())["rows"] == len(manifest)


def test_moderation7_manifest_passes(paths):
    build_manifest(paths, task="moderation7",
                   rows_per_split={"train": 28, "val": 14, "test": 14})
    params = parse_params({"task": "moderation7"})
    assert validate.run(params, paths)["failed_errors"] == []


def test_null_id_fails(paths, manifest):
    manifest.loc[3, "id"] = None
    _fails_with(paths, manifest, "id_not_null")


def test_duplicate_id_fails_and_names_the_id(paths, manifest):
    manifest.loc[5, "id"] = manifest.loc[4, "id"]
    message = _fails_with(paths, manifest, "id_unique")
    assert manifest.loc[4, "id"] in message


def test_unknown_label_fails(paths, manifest):
    manifest.loc[2, "label"] = 7
    _fails_with(paths, manifest, "label_in_range")


def test_unknown_label_name_fails(paths, manifest):
    manifest.loc[2, "label_name"] = "spicy"
    _fails_with(paths, manifest, "label_name_in_taxonomy")


def test_label_and_label_name_mismatch_fails(paths, manifest):
    row = manifest.index[manifest["label"] == 0][0]
    manifest.loc[row, "label_name"] = "hateful"  # a real class name, but not label 0's
    message = _fails_with(paths, manifest, "label_name_matches_label")
    assert manifest.loc[row, "id"] in message


def test_valid_pair_must_follow_label(paths, manifest):
    row = manifest.index[manifest["label"] == 1][0]
    manifest.loc[row, "valid_pair"] = True
    _fails_with(paths, manifest, "valid_pair_matches_label")


def test_valid_pair_must_be_boolean(paths, manifest):
    manifest["valid_pair"] = manifest["valid_pair"].astype(int)
    _fails_with(paths, manifest, "valid_pair_is_bool")


def test_missing_image_file_fails(paths, manifest):
    missing = paths.root / manifest.loc[6, "image_path"]
    missing.unlink()
    message = _fails_with(paths, manifest, "image_file_exists")
    assert manifest.loc[6, "id"] in message


def test_empty_text_fails(paths, manifest):
    manifest.loc[1, "text"] = ""
    _fails_with(paths, manifest, "text_length_in_range")


def test_null_text_fails(paths, manifest):
    manifest.loc[1, "text"] = None
    _fails_with(paths, manifest, "text_not_null")


def test_text_longer_than_limit_fails(paths, manifest):
    manifest.loc[1, "text"] = "x" * 1001
    _fails_with(paths, manifest, "text_length_in_range")


@pytest.mark.parametrize("bad_sha", ["ABC", "g" * 64, "A" * 64, "0" * 63])
def test_bad_sha_fails(paths, manifest, bad_sha):
    manifest.loc[0, "image_sha256"] = bad_sha
    _fails_with(paths, manifest, "image_sha256_is_hex64")


def test_image_side_out_of_range_fails(paths, manifest):
    manifest.loc[0, "width"] = 8
    _fails_with(paths, manifest, "width_in_range")


def test_tiny_split_fails(paths):
    build_manifest(paths, rows_per_split={"train": 24, "val": 12, "test": 4})
    message = _fails_with(paths, pd.read_parquet(paths.manifest), "split_min_rows")
    assert "'test': 4" in message  # the failure says which split is short


def test_missing_split_fails(paths, manifest):
    _fails_with(paths, manifest[manifest["split"] != "val"], "every_split_present")


def test_unknown_split_fails(paths, manifest):
    manifest.loc[0, "split"] = "holdout"
    _fails_with(paths, manifest, "split_in_set")


def test_wrong_task_fails(paths, manifest):
    manifest["task"] = "moderation7"
    _fails_with(paths, manifest, "task_matches_params")


def test_missing_required_column_fails_without_crashing(paths, manifest):
    message = _fails_with(paths, manifest.drop(columns=["label_name"]),
                          "required_columns_present")
    assert "label_name" in message


def test_every_failed_error_is_listed(paths, manifest):
    manifest.loc[0, "id"] = None
    manifest.loc[1, "text"] = ""
    manifest.loc[2, "image_sha256"] = "nope"
    message = _fails_with(paths, manifest, "id_not_null")
    for name in ("text_length_in_range", "image_sha256_is_hex64"):
        assert name in message


def test_dominant_class_is_only_a_warning(paths, manifest):
    # Make val all not_hateful: one class holds 100% of a split, above max_class_share 0.95.
    val = manifest["split"] == "val"
    manifest.loc[val, "label"] = 0
    manifest.loc[val, "label_name"] = "not_hateful"
    manifest.loc[val, "valid_pair"] = True
    write_manifest(paths, manifest)
    summary = validate.run(Params(), paths)
    assert summary["failed_errors"] == []
    assert summary["failed_warnings"] == ["class_share_per_split"]
    warning = _results(paths)["class_share_per_split"]
    assert warning["level"] == "warning" and warning["success"] is False
    assert warning["observed_value"] == pytest.approx(1.0)


def test_missing_manifest_is_a_stage_failure(paths):
    with pytest.raises(StageFailed, match="manifest"):
        validate.run(Params(), paths)


def test_rerun_replaces_stale_data_docs(paths, manifest):
    stale = paths.validate_dir / "data_docs" / "validations" / "stale.html"
    stale.parent.mkdir(parents=True)
    stale.write_text("old")
    validate.run(Params(), paths)
    assert not stale.exists()
    assert (paths.validate_dir / "data_docs" / "index.html").exists()


def test_empty_manifest_fails_without_crashing(paths, manifest):
    _fails_with(paths, manifest.iloc[0:0], "every_split_present")


def _site_files(site: Path) -> list[Path]:
    """The site's own pages and stylesheets (not the vendored packages)."""
    return sorted(p for p in site.rglob("*") if p.suffix in (".html", ".css")
                  and "vendor" not in p.relative_to(site).parts)


def test_data_docs_load_nothing_from_the_network(paths, manifest):
    validate.run(Params(), paths)
    site = paths.validate_dir / "data_docs"
    files = _site_files(site)
    assert len([f for f in files if f.suffix == ".html"]) == 3  # index, suite, one validation
    for file in files:
        urls = offline_html.resources(file.read_text(), css=file.suffix == ".css")
        assert [u for u in urls if offline_html.is_external(u)] == [], file
        for url in filter(offline_html.is_local, urls):  # and every local one is there
            target = (file.parent / urlsplit(url).path).resolve()
            assert target.is_file() and site.resolve() in target.parents, (file, url)
    vendored = {p.name for p in (site / "static" / "vendor").iterdir()}
    assert {"bootstrap-4.3.1", "jquery-3.7.1", "bootstrap-table-1.19.1", "vega-5.33.1",
            "fortawesome-fontawesome-free-6.6.0"} <= vendored
    assert (site / "static" / "vendor" / "jquery-3.7.1" / "LICENSE.txt").exists()


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _docs_writing_started(validate_dir: Path) -> bool:
    """A staging folder holds a file, or (writing in place) the site's index is gone."""
    staged = any(f.is_file() for d in validate_dir.glob(".data_docs.tmp-*") for f in d.rglob("*"))
    return staged or not (validate_dir / "data_docs" / "index.html").exists()


def test_a_killed_run_leaves_the_previous_data_docs_whole(paths, manifest):
    validate.run(Params(), paths)
    docs = paths.validate_dir / "data_docs"
    before = _snapshot(docs)
    # The same stage in a forked child, killed with SIGKILL while it writes the site.
    child = multiprocessing.get_context("fork").Process(target=validate.run,
                                                        args=(Params(), paths))
    child.start()
    try:
        deadline = time.monotonic() + 120
        while not _docs_writing_started(paths.validate_dir):
            assert child.is_alive() and time.monotonic() < deadline, "no site was written"
            time.sleep(0.01)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join()
    assert child.exitcode == -signal.SIGKILL
    assert _snapshot(docs) == before
    # The next run clears the killed run's staging folder and replaces the site.
    validate.run(Params(), paths)
    assert sorted(p.name for p in paths.validate_dir.iterdir()) == [
        "data_docs", "results.json", "stats.json"]
    assert _snapshot(docs).keys() != before.keys()  # a new validation page
