"""The drift stage on small manifests whose distributions we control, plus its bad inputs."""
from __future__ import annotations

import json
import math
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
                                 "drift_share": 0.2}})


def test_halves_of_one_distribution_show_no_dataset_drift(tmp_path):
    paths = Paths(tmp_path)
    rng = np.random.default_rng(1)
    items = [_item(rng) for _ in range(160)]
    _save(paths, _write_rows(tmp_path, items[:80], "train", "a")
          + _write_rows(tmp_path, items[80:], "test", "b"))

    result = drift.run(PARAMS, paths)

    assert result["dataset_drift"] is False
    summary = json.loads((paths.drift_dir / "drift.json").read_text())
    assert summary["n_reference"] == 80 and summary["n_current"] == 80
    assert summary["drift_share"] < 0.2
    assert (paths.drift_dir / "report.html").stat().st_size > 10_000
    assert "metrics" in json.loads((paths.drift_dir / "report.json").read_text())
    stats = json.loads(paths.stats("drift").read_text())
    assert set(stats["columns"]) == {*drift_features.NUMERICAL_FEATURES,
                                     *drift_features.CATEGORICAL_FEATURES}
    assert result["prediction_features"] == "skipped: no predictions file"


def test_shifted_brightness_and_text_length_drift_alone(tmp_path):
    paths = Paths(tmp_path)
    rng = np.random.default_rng(2)
    items = [_item(rng) for _ in range(80)]
    # The current set holds the same content, brighter and with longer words.
    _save(paths, _write_rows(tmp_path, items, "train", "ref")
          + _write_rows(tmp_path, items, "test", "cur", brightness=80, stretch_words=True))

    result = drift.run(PARAMS, paths)

    summary = json.loads((paths.drift_dir / "drift.json").read_text())
    assert summary["drifted_columns"] == ["brightness", "text_length"]
    assert summary["drift_share"] == pytest.approx(2 / 9)
    assert summary["dataset_drift"] is True and result["dataset_drift"] is True


def test_explicit_manifests_compare_whole_files(tmp_path):
    paths = Paths(tmp_path)
    rng = np.random.default_rng(3)
    items = [_item(rng) for _ in range(40)]
    old, new = tmp_path / "old.parquet", tmp_path / "new.parquet"
    pd.DataFrame(_write_rows(tmp_path, items, "train", "old")).to_parquet(old)
    pd.DataFrame(_write_rows(tmp_path, items, "val", "new", brightness=80)).to_parquet(new)
    out = tmp_path / "monitoring"

    (tmp_path / pd.read_parquet(new)["image_path"][0]).write_bytes(b"")  # one unreadable image
    result = drift.run(PARAMS, paths, reference_manifest=old, current_manifest=new, out_dir=out)

    assert result["n_reference"] == 40 and result["n_current"] == 40
    assert result["drifted_columns"] == ["brightness"]
    assert (out / "drift.json").exists() and (out / "stats.json").exists()
    # The unreadable image is counted, not silently dropped.
    assert result["unreadable_images"] == {"reference": 0, "current": 1}
    assert not paths.drift_dir.exists()


def test_predictions_join_only_when_both_sides_are_scored(tmp_path):
    paths = Paths(tmp_path)
    rng = np.random.default_rng(4)
    items = [_item(rng) for _ in range(60)]
    rows = _write_rows(tmp_path, items[:30], "val", "v") + _write_rows(tmp_path, items[30:], "test", "t")
    _save(paths, rows)
    probs = rng.uniform(0, 1, len(rows))
    paths.predictions.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": [r["id"] for r in rows], "split": [r["split"] for r in rows],
                  "label": [r["label"] for r in rows], "prob_not_hateful": 1 - probs,
                  "prob_hateful": probs, "prediction": (probs > 0.5).astype(int)}
                 ).to_parquet(paths.predictions)

    scored = drift.run(parse_params({"drift": {"reference_split": "val"}}), paths)
    assert scored["prediction_features"] == "included"
    columns = json.loads(paths.stats("drift").read_text())["columns"]
    assert {"pred_label", "pred_confidence"} <= set(columns)

    # Reference (train) rows without predictions: the prediction features stay out.
    _save(paths, rows + _write_rows(tmp_path, items[:10], "train", "unscored"))
    partial = drift.run(parse_params({"drift": {"reference_split": "train"}}), paths)
    assert partial["prediction_features"].startswith("skipped: predictions cover 0%")


def test_empty_current_split_fails_clearly(tmp_path):
    paths = Paths(tmp_path)
    rng = np.random.default_rng(5)
    _save(paths, _write_rows(tmp_path, [_item(rng) for _ in range(20)], "train", "only"))
    with pytest.raises(StageFailed, match=r"current set is empty \(split 'test'"):
        drift.run(PARAMS, paths)
    assert not (paths.drift_dir / "drift.json").exists()


def test_missing_manifest_and_bad_predictions_fail(tmp_path):
    paths = Paths(tmp_path)
    with pytest.raises(StageFailed, match="not found"):
        drift.run(PARAMS, paths)
    rng = np.random.default_rng(6)
    items = [_item(rng) for _ in range(20)]
    _save(paths, _write_rows(tmp_path, items[:10], "train", "a")
          + _write_rows(tmp_path, items[10:], "test", "b"))
    paths.predictions.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ["x"], "score": [0.3]}).to_parquet(paths.predictions)
    with pytest.raises(StageFailed, match="predictions need"):
        drift.run(PARAMS, paths)


def test_image_features_and_unreadable_images(tmp_path):
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
    assert drift_features.text_features("  two   words ") == {"text_length": 14, "word_count": 2}
