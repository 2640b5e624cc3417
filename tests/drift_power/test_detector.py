"""The drift detector measured: detection and false-alarm rates over many synthetic seeds, per
feature family. Its own tier (`make drift-power`, many minutes on a loaded 2-core machine): not
collected by `make test`.

Each trial compares all items of seed s (reference) with all items of seed 1000+s (current),
unshifted or with one shift knob turned, embedded by the tiny random-init model. The families
are judged by the same Evidently code the drift stage runs: the embedding drift method object the
stage hands to `EmbeddingsDrift` (`drift.embedding_method`, whose flag is the stage's verdict),
and `DataDriftPreset` on the scalar columns. The stage's full report is left out here only
because its `EmbeddingsDrift` also fits a t-SNE picture per modality for the HTML, which costs
more than the verdicts themselves; tests/data/test_drift.py runs the full report.
"""
from __future__ import annotations

from functools import lru_cache

import pandas as pd
import pytest

from pipeline import drift_features
from pipeline.params import parse_params
from pipeline.stages import drift
from tests.data.synthetic_sides import SHIFTS, TASK, synthetic_batch

SEEDS = range(10)
ITEMS = 200
SETTINGS = parse_params({}).drift
SCALAR = [*drift_features.IMAGE_FEATURES, *drift_features.TEXT_DESCRIPTORS]


@lru_cache(maxsize=1)
def _model():
    from pipeline.model import build_from_model_params
    from pipeline.params import Params

    return build_from_model_params(Params().model, TASK, seed=0)


@lru_cache(maxsize=None)
def _features(seed: int, shift: str | None) -> pd.DataFrame:
    model = _model()
    return drift.features(synthetic_batch(seed, ITEMS, shift), model, model.class_names)


def _scalar_drifted(reference: pd.DataFrame, current: pd.DataFrame) -> list[str]:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(id_column="id", numerical_columns=list(
        drift_features.IMAGE_FEATURES), text_columns=["text"])
    keep = ["id", "text", *drift_features.IMAGE_FEATURES]
    sides = [Dataset.from_pandas(frame[keep], data_definition=definition,
                                 descriptors=drift_features.text_descriptors())
             for frame in (current, reference)]
    snapshot = Report([DataDriftPreset(columns=SCALAR)], include_tests=True).run(*sides)
    columns, _ = drift._results(snapshot.dict())
    return sorted(name for name, result in columns.items() if result["drifted"])


def _trial(seed: int, shift: str | None) -> dict:
    reference, current = _features(seed, None), _features(1000 + seed, shift)
    scores, flags = {}, {}
    for modality in drift_features.MODALITIES:
        columns = [c for c in reference.columns if c.startswith(f"{modality}_emb_")]
        score, flag, _ = drift.embedding_method(SETTINGS)(current[columns].copy(),
                                                          reference[columns].copy())
        scores[modality], flags[modality] = score, flag
    scalar = _scalar_drifted(reference, current)
    share_rule = len(scalar) / len(SCALAR) >= SETTINGS.drift_share
    return {"embeddings": any(flags.values()), "scalar (share rule)": share_rule,
            "scalar (any column)": bool(scalar), "overall": any(flags.values()) or share_rule,
            "scores": scores, "scalar_columns": scalar}


def _rates(trials: list[dict]) -> dict:
    keys = ("overall", "embeddings", "scalar (share rule)", "scalar (any column)")
    return {key: sum(t[key] for t in trials) / len(trials) for key in keys}


def _print(name: str, trials: list[dict]) -> None:
    rates = _rates(trials)
    scores = ", ".join(f"{t['scores']['image']:.4f}/{t['scores']['text']:.4f}" for t in trials)
    print(f"\n{name:18s} " + "  ".join(f"{k}={v:.0%}" for k, v in rates.items())
          + f"\n{'':18s} image/text {SETTINGS.embeddings.method} scores: {scores}"
          + f"\n{'':18s} drifted scalar columns: {[t['scalar_columns'] for t in trials]}")


@pytest.fixture(scope="module")
def unshifted():
    trials = [_trial(seed, None) for seed in SEEDS]
    _print("unshifted", trials)
    return trials


def test_false_alarms_at_most_10_percent(unshifted):
    assert _rates(unshifted)["overall"] <= 0.10


def test_novel_vocabulary_caught_by_embeddings_missed_by_scalars(unshifted):
    shifted = [_trial(seed, "novel_vocabulary") for seed in SEEDS]
    _print("novel_vocabulary", shifted)
    rates = _rates(shifted)
    assert rates["overall"] >= 0.90 and rates["embeddings"] >= 0.90
    # The captions keep their length, words and punctuation: the scalar features fire no more
    # often than they do on unshifted data.
    assert rates["scalar (any column)"] <= _rates(unshifted)["scalar (any column)"] + 0.10


@pytest.mark.parametrize("shift", [s for s in SHIFTS if s != "novel_vocabulary"])
def test_other_shifts_reported_side_by_side(shift):
    """Measured and printed; only the hashtag captions must be caught (every family sees it)."""
    shifted = [_trial(seed, shift) for seed in SEEDS]
    _print(shift, shifted)
    if shift == "hashtag_captions":
        assert _rates(shifted)["overall"] >= 0.90
