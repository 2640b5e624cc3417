"""The stage's verdict is calibrated per comparison: undrifted synthetic seed pairs read "no
drift" at 30 rows a side, where the old fixed MMD threshold (0.01, measured on 200 rows) fired.
The 5,000-row pair (minutes of model time) and the rates over many pairs are `make
drift-power`'s (tests/drift_power/)."""
from __future__ import annotations

from functools import lru_cache

from pipeline.params import parse_params
from pipeline.stages import drift
from tests.data.drift_pairs import OLD_MMD_THRESHOLD, old_mmd_scores, side_features
from tests.data.synthetic_sides import TASK

SETTINGS = parse_params({}).drift  # the shipped defaults


@lru_cache(maxsize=1)
def _model():
    from pipeline.model import build_from_model_params
    from pipeline.params import Params

    return build_from_model_params(Params().model, TASK, seed=0)


def test_undrifted_30_row_pair_is_no_drift_where_the_fixed_threshold_fired():
    reference, current = (side_features(_model(), seed, 30) for seed in (0, 1000))
    assert max(old_mmd_scores(reference, current).values()) > OLD_MMD_THRESHOLD

    result = drift.compare(reference, current, SETTINGS, None)

    assert result["dataset_drift"] is False, result["embedding_p_values"]
    assert all(p > SETTINGS.alpha / 4 for p in result["embedding_p_values"].values())
    assert result["drifted_columns"] == []
    # The same 30 rows against captions in another style: caught, by the text embeddings.
    hashtags = side_features(_model(), 1000, 30, "hashtag_captions")
    shifted = drift.compare(reference, hashtags, SETTINGS, None)
    assert shifted["dataset_drift"] is True and shifted["embedding_drifted"]["text"] is True
