"""The calibrated drift tests and the one verdict function (pipeline/drift_verdict.py), on
embeddings and categories drawn here, so their false-alarm rates can be counted in seconds."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline import drift_verdict
from pipeline.params import ParamsError, parse_params

SETTINGS = parse_params({}).drift


def _gaussian(rng: np.random.Generator, rows: int, shift: float = 0.0, dim: int = 8):
    return rng.normal(size=(rows, dim)) + shift


def test_score_is_evidently_mmd_and_the_critical_score_is_the_p_value_rule():
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod

    rng = np.random.default_rng(0)
    for shift, pca in ((0.0, None), (1.0, 3), (0.6, None)):
        reference, current = _gaussian(rng, 40), _gaussian(rng, 35, shift)
        test = drift_verdict.mmd_permutation_test(reference, current, 199, 0, 0.05, pca)
        evidently, _, _ = MMDDriftMethod(pca_components=pca)(pd.DataFrame(current),
                                                              pd.DataFrame(reference))
        assert test.score == pytest.approx(evidently, abs=1e-12)
        # Evidently's report states "score <= critical"; that must be the p-value's verdict.
        assert test.drifted == (test.score > test.critical)
        assert test.distinct_rows == (40, 35) and test.permutations == 199
    assert test.drifted  # the shifted pairs are seen
    assert drift_verdict.mmd_permutation_test(*(_gaussian(rng, 40, 1.0), _gaussian(rng, 40)),
                                              199, 0, 0.05).p_value == 1 / 200


def _false_alarms(pairs: int, draw) -> float:
    rng = np.random.default_rng(1)
    hits = 0
    for seed in range(pairs):
        reference, current = draw(rng)
        hits += drift_verdict.mmd_permutation_test(reference, current, 99, seed, 0.05).drifted
    return hits / pairs


def test_permutation_test_holds_its_level_on_30_rows_even_with_repeated_rows():
    """The reason for a per-comparison test: a fixed threshold's false-alarm rate depends on
    the side sizes; a permutation p-value's does not. Repeats (a meme and its confounder share
    an image) must not break it: each side's distinct rows are tested."""
    independent = _false_alarms(300, lambda rng: (_gaussian(rng, 30), _gaussian(rng, 30)))

    def with_repeats(rng):  # 15 distinct rows a side, each twice
        return (np.repeat(_gaussian(rng, 15), 2, axis=0), np.repeat(_gaussian(rng, 15), 2, axis=0))

    repeated = _false_alarms(300, with_repeats)
    # 300 pairs at level 0.05: above 0.08 happens by chance with probability < 0.01.
    assert independent <= 0.08 and repeated <= 0.08
    assert drift_verdict.first_occurrences(np.array([[1.0], [2.0], [1.0 + 1e-9], [3.0]])) \
        .tolist() == [True, True, False, True]


def test_one_distinct_row_on_a_side_is_no_evidence():
    test = drift_verdict.mmd_permutation_test(np.ones((30, 4)), np.zeros((30, 4)), 99, 0, 0.05)
    assert (test.p_value, test.drifted, test.distinct_rows) == (1.0, False, (1, 1))


def test_categorical_permutation_test_holds_its_level_where_evidently_chisquare_does_not():
    from evidently.legacy.calculations.stattests.chisquare_stattest import _chi_stat_test
    from evidently.legacy.core import ColumnType

    rng = np.random.default_rng(2)
    classes, shares = [f"c{k}" for k in range(7)], [0.3, 0.2, 0.15, 0.15, 0.1, 0.05, 0.05]
    ours = evidently = 0
    for _ in range(300):
        reference, current = (list(rng.choice(classes, size=30, p=shares)) for _ in range(2))
        ours += drift_verdict.categorical_pvalue(reference, current) <= 0.05
        evidently += _chi_stat_test(pd.Series(reference), pd.Series(current),
                                    ColumnType.Categorical, 0.05)[1]
    assert ours / 300 <= 0.08
    # Evidently's chisquare takes the reference counts as exact: far above its level.
    assert evidently / 300 > 0.15
    assert drift_verdict.categorical_pvalue(["a"] * 30, ["b"] * 30) <= 0.002
    assert drift_verdict.categorical_pvalue(["a", None], ["a", float("nan")]) == 1.0


def test_verdict_splits_alpha_between_embeddings_and_columns():
    columns = {f"col{k}": 0.5 for k in range(10)}
    calm = drift_verdict.verdict(columns, {"image": 0.5, "text": 0.5}, SETTINGS)
    assert calm["dataset_drift"] is False and calm["drifted_columns"] == []
    assert calm["levels"] == {"alpha": 0.05, "embedding": 0.0125, "column": 0.0025}
    # An embedding at its level decides alone; just above it does not.
    assert drift_verdict.verdict(columns, {"image": 0.0125, "text": 0.5},
                                 SETTINGS)["dataset_drift"] is True
    assert drift_verdict.verdict(columns, {"image": 0.013, "text": 0.5},
                                 SETTINGS)["dataset_drift"] is False
    # Columns count at the Bonferroni level, towards drift_share (0.5 of 10 = 5 columns).
    four = {**columns, **{f"col{k}": 0.002 for k in range(4)}, "col9": 0.01}
    result = drift_verdict.verdict(four, {"image": 0.5, "text": 0.5}, SETTINGS)
    assert result["drifted_columns"] == ["col0", "col1", "col2", "col3"]
    assert result["drift_share"] == 0.4 and result["dataset_drift"] is False
    five = {**four, "col4": None, "col5": 0.0}  # no p-value: tested, not drifted
    assert drift_verdict.verdict(five, {}, SETTINGS)["drift_share"] == 0.5
    with pytest.raises(ValueError, match="unknown embedding modalities"):
        drift_verdict.verdict(columns, {"audio": 0.5}, SETTINGS)


def test_permutations_must_reach_the_per_modality_level():
    assert parse_params({"drift": {"alpha": 0.05, "embeddings": {"permutations": 79}}})
    with pytest.raises(ParamsError, match=r"drift.*permutations=78 cannot reach .*at least 79"):
        parse_params({"drift": {"embeddings": {"permutations": 78}}})
    with pytest.raises(ParamsError, match="threshold: unknown key"):
        parse_params({"drift": {"embeddings": {"threshold": 0.01}}})
