"""The drift stage on small manifests whose distributions we control, plus its bad inputs.

The monitored model is a random-init tiny model saved as artifacts/model (the stage's fallback
when the registry has no champion)."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline import drift_features
from pipeline.errors import StageFailed
from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import drift
from tests.data.synthetic_sides import save_tiny_model

WORDS = ("cat", "dog", "sun", "map", "red", "sky", "tea", "cup", "box", "pen", "owl", "fig")


def _item(rng: np.random.Generator) -> dict:
    """The random content of one item, before any shift is applied."""
    side_w, side_h = int(rng.integers(40, 64)), int(rng.integers(40, 64))
    return {"w": side_w, "h": side_h,
            "base": rng.integers(40, 150, size=3),  # a colour cast, room left for +80 brightness
            "noise": rng.integers(0, 30, size=(side_h, side_w, 3)),
            "words": list(rng.choice(WORDS, size=int(rng.integers(3, 12)))),
            "label": int(rng.integers(0, 2))}


def _write_rows(root: Path, items: list[dict], split: str, tag: str, brightness: int = 0,
                stretch_words: bool = False) -> list[dict]:
    rows = []
    for i, item in enumerate(items):
        # Adding one constant to every channel moves brightness but not colourfulness.
        pixels = np.clip(item["base"] + item["noise"] + brightness, 0, 255).astype(np.uint8)
        rel = Path("artifacts/ingest/images") / f"{tag}-{i}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels, "RGB").save(root / rel)
        # Longer words, same count: text length drifts, word count does not.
        words = [w * 3 if stretch_words else w for w in item["words"]]
        rows.append({"id": f"synthetic:{tag}-{i}", "source": "synthetic", "source_id": f"{tag}-{i}",
                     "task": "hateful_memes", "split": split, "image_path": str(rel),
                     "image_sha256": f"{tag}{i}", "width": item["w"], "height": item["h"],
                     "text": " ".join(words), "label": item["label"],
                     "label_name": ("not_hateful", "hateful")[item["label"]], "valid_pair": True})
    return rows


def _save(paths: Paths, rows: list[dict]) -> None:
    paths.manifest.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(paths.manifest)


PARAMS = parse_params({"drift": {"reference_split": "train", "current_split": "test",
                                 "drift_share": 0.2, "log_to_mlflow": False}})


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def paths(tmp_path, tiny_model) -> Paths:
    shutil.copytree(tiny_model, tmp_path / "artifacts" / "model")
    return Paths(tmp_path)


def test_halves_of_one_distribution_show_no_drift_and_reports_reach_mlflow(paths):
    from mlflow import MlflowClient

    rng = np.random.default_rng(1)
    items = [_item(rng) for _ in range(160)]
    _save(paths, _write_rows(paths.root, items[:80], "train", "a")
          + _write_rows(paths.root, items[80:], "test", "b"))
    params = parse_params({"drift": {"drift_share": 0.2},
                           "registry": {"tracking_uri": "sqlite:///mlflow.db"}})

    result = drift.run(params, paths)

    assert result["dataset_drift"] is False and result["verdict"] == "no drift"
    summary = json.loads((paths.drift_dir / "drift.json").read_text())
    assert summary["n_reference"] == 80 and summary["n_current"] == 80
    assert summary["drift_share"] < 0.2
    assert set(summary["embedding_drift"]) == {"image", "text"}
    # Judged by p-values at the corrected levels, not by a fixed score threshold.
    assert all(p > 0.05 / 4 for p in summary["embedding_p_values"].values())
    assert (paths.drift_dir / "report.html").stat().st_size > 10_000
    report = json.loads((paths.drift_dir / "report.json").read_text())
    embedding_metrics = [m for m in report["metrics"] if "EmbeddingsDrift" in m["config"]["type"]]
    assert len(embedding_metrics) == 2
    stats = json.loads(paths.stats("drift").read_text())
    assert set(stats["columns"]) == {*drift_features.IMAGE_FEATURES,
                                     *drift_features.TEXT_DESCRIPTORS, "label", "pred_label",
                                     "pred_confidence"}
    assert stats["families"]["embeddings"]["method"] == "mmd permutation test"
    # The report states the verdict's tests: each column at the Bonferroni level, each
    # embedding's permutation p-value and critical score; its flags are the verdict's.
    assert stats["levels"] == {"alpha": 0.05, "embedding": 0.0125, "column": 0.05 / 2 / 11}
    for column in stats["columns"].values():
        assert column["threshold"] == pytest.approx(0.05 / 2 / 11)
        assert column["report_drifted"] == column["drifted"] is False
    for metric in embedding_metrics:
        method = metric["config"]["drift_method"]
        modality = metric["config"]["embeddings_name"]
        assert method["p_value"] == summary["embedding_p_values"][modality]
        assert metric["value"] == pytest.approx(summary["embedding_drift"][modality])
    assert {t["status"] for t in report["tests"]} == {"SUCCESS"}
    assert stats["model"] == str(paths.model_dir)
    # No training run recorded: the reports go to a drift-monitor run.
    client = MlflowClient(f"sqlite:///{paths.root / 'mlflow.db'}")
    run = client.get_run(stats["mlflow_run_id"])
    assert run.info.run_name == "drift-monitor"
    assert run.data.metrics["drift.dataset_drift"] == 0.0
    [folder] = client.list_artifacts(run.info.run_id, "drift")
    logged = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, folder.path)}
    assert {"report.html", "report.json", "drift.json", "stats.json"} <= logged


def test_brightness_and_text_length_drift_alone_among_scalars(paths):
    rng = np.random.default_rng(2)
    items = [_item(rng) for _ in range(80)]
    # The current set holds the same content, brighter and with longer words.
    _save(paths, _write_rows(paths.root, items, "train", "ref")
          + _write_rows(paths.root, items, "test", "cur", brightness=80, stretch_words=True))

    result = drift.run(PARAMS, paths)

    stats = json.loads(paths.stats("drift").read_text())
    scalar = stats["families"]["scalar"]["drifted_columns"]
    assert scalar == ["brightness", "text_length"]
    assert result["dataset_drift"] is True and result["verdict"] == "drift"
    # Tripled words are new tokens to the model: its text embeddings move too.
    assert result["embedding_drifted"]["text"] is True


def test_explicit_manifests_compare_whole_files_and_count_unreadable_images(paths):
    rng = np.random.default_rng(3)
    items = [_item(rng) for _ in range(40)]
    old, new = paths.root / "old.parquet", paths.root / "new.parquet"
    pd.DataFrame(_write_rows(paths.root, items, "train", "old")).to_parquet(old)
    pd.DataFrame(_write_rows(paths.root, items, "val", "new", brightness=80)).to_parquet(new)
    out = paths.root / "monitoring"

    (paths.root / pd.read_parquet(new)["image_path"][0]).write_bytes(b"")  # one unreadable
    result = drift.run(PARAMS, paths, reference_manifest=old, current_manifest=new, out_dir=out)

    assert result["n_reference"] == 40 and result["n_current"] == 39
    assert "brightness" in result["drifted_columns"]
    assert (out / "drift.json").exists() and (out / "stats.json").exists()
    # The unreadable image is counted, not silently dropped.
    assert result["unreadable_images"] == {"reference": 0, "current": 1}
    assert not paths.drift_dir.exists()


# ---------------------------------------------------------------- bad input

def _two_sides(paths: Paths, seed: int, n: int = 40) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(seed)
    items = [_item(rng) for _ in range(2 * n)]
    return (_write_rows(paths.root, items[:n], "train", "r"),
            _write_rows(paths.root, items[n:], "test", "c"))


def test_empty_current_split_fails_clearly(paths):
    reference, _ = _two_sides(paths, 5)
    _save(paths, reference)
    with pytest.raises(StageFailed, match=r"current set is empty \(split 'test'"):
        drift.run(PARAMS, paths)
    assert not (paths.drift_dir / "drift.json").exists()


@pytest.mark.parametrize("case", ["one_row", "no_readable_image"])
def test_too_few_rows_is_a_verdict_not_a_crash(paths, case):
    reference, current = _two_sides(paths, 6)
    if case == "one_row":
        current = current[:1]
    else:
        for row in current:
            (paths.root / row["image_path"]).write_bytes(b"not an image")
    _save(paths, reference + current)

    result = drift.run(PARAMS, paths)

    assert result["dataset_drift"] is False
    assert result["verdict"].startswith("too few rows to judge: the current set has")
    summary = json.loads((paths.drift_dir / "drift.json").read_text())
    assert summary["verdict"] == result["verdict"]
    expected = 1 if case == "one_row" else 0
    assert summary["n_current"] == expected
    assert result["unreadable_images"]["current"] == (0 if case == "one_row" else 40)
    # The declared report files exist and carry the verdict instead of a report.
    assert "too few rows to judge" in (paths.drift_dir / "report.html").read_text()
    assert json.loads((paths.drift_dir / "report.json").read_text())["metrics"] == []


def test_missing_manifest_and_missing_text_column_fail_clearly(paths):
    with pytest.raises(StageFailed, match="not found"):
        drift.run(PARAMS, paths)
    reference, current = _two_sides(paths, 7)
    _save(paths, reference)
    no_text = paths.root / "no_text.parquet"
    pd.DataFrame(current).drop(columns="text").to_parquet(no_text)
    with pytest.raises(StageFailed, match=r"breaks the manifest contract: missing column text"):
        drift.run(PARAMS, paths, current_manifest=no_text)


@pytest.mark.parametrize("labels", [["Hate", "Satire/Parody"], [3, 6]])
def test_current_batch_from_another_tasks_label_space_fails(paths, labels):
    reference, current = _two_sides(paths, 8)
    for k, row in enumerate(current):
        row["label"] = labels[k % 2]
    other = paths.root / "moderation7.parquet"
    pd.DataFrame(current).to_parquet(other)
    _save(paths, reference)
    with pytest.raises(StageFailed, match="hateful_memes"):
        drift.run(PARAMS, paths, current_manifest=other)


def test_monitored_model_of_another_task_fails(paths):
    from pipeline.model import build_from_model_params, save_model
    from pipeline.params import Params

    shutil.rmtree(paths.model_dir)
    save_model(build_from_model_params(Params().model, "moderation7", seed=0), paths.model_dir)
    reference, current = _two_sides(paths, 9)
    _save(paths, reference + current)
    with pytest.raises(StageFailed, match=r"classifies .*not task 'hateful_memes'"):
        drift.run(PARAMS, paths)


def test_no_model_anywhere_fails_clearly(paths):
    shutil.rmtree(paths.model_dir)
    reference, current = _two_sides(paths, 10)
    _save(paths, reference + current)
    with pytest.raises(StageFailed, match="no @champion in the registry and no trained model"):
        drift.run(PARAMS, paths)


def test_unreachable_tracking_server_fails_clearly_without_falling_back(paths):
    """artifacts/model is there, but the stage must judge with the champion it cannot reach."""
    from tests.pipeline.registry_fixtures import free_port

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    reference, current = _two_sides(paths, 11)
    _save(paths, reference + current)
    params = parse_params({"drift": {"log_to_mlflow": False}, "registry": {"tracking_uri": uri}})
    with pytest.raises(StageFailed, match=f"cannot load the @champion.*{uri} is unreachable"):
        drift.run(params, paths)
    assert not (paths.drift_dir / "drift.json").exists()


def test_image_stats_and_unreadable_images(tmp_path):
    grey = tmp_path / "grey.png"
    Image.new("RGB", (40, 20), (128, 128, 128)).save(grey)
    features = drift_features.image_features(grey)
    assert features["colourfulness"] == pytest.approx(0.0)
    assert features["brightness"] == pytest.approx(128, abs=0.5)
    assert (features["image_width"], features["image_height"], features["image_aspect"]) == (40, 20, 2)

    big = tmp_path / "big.jpg"
    Image.new("RGB", (1200, 600), (255, 0, 0)).save(big)
    red = drift_features.image_features(big)
    assert red["image_width"] == 1200
    # Uniform pure red: no spread, so only the 0.3 * |mean opponent colour| term remains.
    assert red["colourfulness"] == pytest.approx(0.3 * math.hypot(255, 127.5), rel=0.02)

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    assert all(np.isnan(v) for v in drift_features.image_features(broken).values())
    assert all(np.isnan(v) for v in drift_features.image_features(tmp_path / "gone.png").values())
