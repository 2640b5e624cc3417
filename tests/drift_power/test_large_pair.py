"""One 5,000-row pair through the drift stage's own compare: undrifted seeds read "no drift",
and a shift to larger images that the old fixed MMD threshold (0.01) was blind to at this size is
caught by the permutation test. Minutes of model time on 2 cores, so it runs with `make
drift-power`, not in CI."""
from __future__ import annotations

from pipeline.stages import drift
from tests.data.drift_pairs import OLD_MMD_THRESHOLD, old_mmd_scores, side_features
from tests.data.test_drift_calibration import SETTINGS, _model


def test_5000_row_pairs_undrifted_is_no_drift_and_larger_images_are_caught():
    reference, current = (side_features(_model(), seed, 5000) for seed in (0, 1000))

    result = drift.compare(reference, current, SETTINGS, None)

    assert result["dataset_drift"] is False, result["embedding_p_values"]
    assert result["drifted_columns"] == []
    larger = side_features(_model(), 1000, 5000, "larger_images")
    shifted = drift.compare(reference, larger, SETTINGS, None)
    assert shifted["embedding_drifted"]["image"] is True
    # The MMD estimate shrinks like 1/n: at 5,000 rows the old fixed threshold missed it.
    assert old_mmd_scores(reference, larger)["image"] <= OLD_MMD_THRESHOLD
