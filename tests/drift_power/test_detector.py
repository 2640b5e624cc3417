"""The drift detector measured: detection and false-alarm rates over many synthetic seeds, per
feature family, through the real drift stage (Evidently report included). Its own tier
(`make drift-power`, minutes): not collected by `make test`.

Each trial compares all items of seed s (reference) with all items of seed 1000+s (current),
unshifted or with one shift knob turned. Printed: per shift, how often each family said drift.
"""
from __future__ import annotations

import pytest

from pipeline.params import parse_params
from pipeline.paths import Paths
from pipeline.stages import drift
from tests.data.synthetic_sides import SHIFTS, save_tiny_model, synthetic_batch

SEEDS = range(10)
ITEMS = 240
PARAMS = parse_params({"drift": {"log_to_mlflow": False}})


def _trial(root, seed: int, shift: str | None) -> dict:
    out = root / f"{shift or 'none'}-{seed}"
    drift.judge(PARAMS, Paths(root), synthetic_batch(seed, ITEMS),
                synthetic_batch(1000 + seed, ITEMS, shift), out)
    import json

    stats = json.loads((out / "stats.json").read_text())
    scalar_columns = stats["families"]["scalar"]["drifted_columns"]
    return {"overall": stats["dataset_drift"],
            "embeddings": stats["families"]["embeddings"]["drifted"],
            "scalar (share rule)": stats["families"]["scalar"]["drifted"],
            "scalar (any column)": bool(scalar_columns),
            "image_emb": stats["embedding_drift"]["image"],
            "text_emb": stats["embedding_drift"]["text"]}


def _rates(trials: list[dict]) -> dict:
    keys = ("overall", "embeddings", "scalar (share rule)", "scalar (any column)")
    return {key: sum(t[key] for t in trials) / len(trials) for key in keys}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    folder = tmp_path_factory.mktemp("power")
    save_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def unshifted(root):
    return [_trial(root, seed, None) for seed in SEEDS]


def _print(name: str, trials: list[dict]) -> None:
    rates = _rates(trials)
    scores = ", ".join(f"{t['image_emb']:.4f}/{t['text_emb']:.4f}" for t in trials)
    print(f"\n{name:18s} " + "  ".join(f"{k}={v:.0%}" for k, v in rates.items())
          + f"\n{'':18s} image/text embedding scores: {scores}")


def test_false_alarms_at_most_10_percent(unshifted):
    _print("unshifted", unshifted)
    assert _rates(unshifted)["overall"] <= 0.10


def test_novel_vocabulary_caught_by_embeddings_missed_by_scalars(root, unshifted):
    shifted = [_trial(root, seed, "novel_vocabulary") for seed in SEEDS]
    _print("novel_vocabulary", shifted)
    rates = _rates(shifted)
    assert rates["overall"] >= 0.90
    assert rates["embeddings"] >= 0.90
    # The captions keep their length, words and punctuation: the scalar features see nothing
    # more often than on unshifted data.
    assert rates["scalar (any column)"] <= _rates(unshifted)["scalar (any column)"] + 0.10


@pytest.mark.parametrize("shift", [s for s in SHIFTS if s != "novel_vocabulary"])
def test_other_shifts_reported_side_by_side(root, shift):
    """Measured and printed; only the hashtag captions must be caught (every family sees it)."""
    shifted = [_trial(root, seed, shift) for seed in SEEDS]
    _print(shift, shifted)
    if shift == "hashtag_captions":
        assert _rates(shifted)["overall"] >= 0.90
