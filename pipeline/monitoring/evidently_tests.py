"""The calibrated drift tests (pipeline/drift_verdict.py) as Evidently objects, so the report
states exactly the tests the verdict decides on.

- `CATEGORICAL_TEST`: the permutation chi-square test, registered in Evidently's stattest
  registry for categorical columns (Evidently's own `chisquare` is not a two-sample test).
- `PermutationMMD`: an EmbeddingsDrift method that reports a permutation test already run on the
  same embeddings (`drift_verdict.mmd_permutation_test`): score, p-value, level and critical
  score go into the report's metric config, and Evidently's flag is the verdict's. Running the
  test once, outside Evidently, lets the verdict read the p-value, which EmbeddingsDrift does
  not keep.

Imports Evidently (seconds): only the drift stage's comparison loads this module.
"""
from __future__ import annotations

from typing import Tuple

import pandas as pd
from evidently.legacy.calculations.stattests.registry import StatTest, register_stattest
from evidently.legacy.core import ColumnType
from evidently.legacy.metrics.data_drift.embedding_drift_methods import DriftMethod

from pipeline import drift_verdict

CATEGORICAL_TEST = drift_verdict.CATEGORICAL_TEST


def _categorical(reference_data: pd.Series, current_data: pd.Series, feature_type: ColumnType,
                 threshold: float) -> Tuple[float, bool]:
    p_value = drift_verdict.categorical_pvalue(reference_data.tolist(), current_data.tolist())
    return p_value, p_value <= threshold  # <=, as Evidently's KS test and the verdict decide


register_stattest(StatTest(name=CATEGORICAL_TEST, display_name="chi-square permutation p_value",
                           allowed_feature_types=[ColumnType.Categorical]),
                  default_impl=_categorical)


class PermutationMMD(DriftMethod):
    class Config:
        type_alias = "mmguard:drift_method:PermutationMMD"

    score: float
    p_value: float
    level: float
    critical: float
    permutations: int
    distinct_rows: Tuple[int, int]  # (reference, current) rows the test saw, duplicates merged
    rows: Tuple[int, int]  # (reference, current) rows Evidently hands over: must match

    @classmethod
    def of(cls, test: drift_verdict.EmbeddingTest, rows: tuple[int, int]) -> "PermutationMMD":
        return cls(score=test.score, p_value=test.p_value, level=test.level,
                   critical=test.critical, permutations=test.permutations,
                   distinct_rows=test.distinct_rows, rows=rows)

    def __call__(self, current_emb: pd.DataFrame,
                 reference_emb: pd.DataFrame) -> Tuple[float, bool, str]:
        if (len(reference_emb), len(current_emb)) != tuple(self.rows):
            raise ValueError(f"this test was run on {self.rows} rows, not "
                             f"{(len(reference_emb), len(current_emb))}")
        return (self.score, self.p_value <= self.level,
                f"mmd, permutation p={self.p_value:.4g} (level {self.level:g})")
