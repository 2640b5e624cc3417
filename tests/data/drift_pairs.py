"""Synthetic drift sides of any size as the model sees them, and the fixed-threshold rule the
calibrated verdict replaced: shared by the calibration tests and `make drift-power`."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline import drift_features
from pipeline.stages import drift
from pipeline.stages.drift import Batch
from tests.data.synthetic_sides import synthetic_batch

MIN_GENERATED = 60  # synthetic.items_per_task's minimum
# The replaced rule: MMD above 0.01 on either modality (measured once, on 200 rows a side), or
# half of the columns drifted by Evidently's default per-column tests.
OLD_MMD_THRESHOLD, OLD_DRIFT_SHARE = 0.01, 0.5


def side_features(model, seed: int, items: int, shift: str | None = None) -> pd.DataFrame:
    """All clean items of synthetic seed `seed` (with a shift knob turned) as the stage's
    features. The generator makes at least 60 items a seed; a smaller side is a seeded random
    subset of them, as a small batch of traffic would be."""
    batch = synthetic_batch(seed, max(items, MIN_GENERATED), shift)
    if items < len(batch.rows):
        keep = sorted(np.random.default_rng(seed).choice(len(batch.rows), items, replace=False))
        batch = Batch(batch.rows.iloc[keep].reset_index(drop=True),
                      [batch.images[k] for k in keep], batch.where)
    return drift.features(batch, model, model.class_names)


def old_mmd_scores(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, float]:
    """Evidently's MMDDriftMethod score per modality, over all rows, as the old stage ran it."""
    from evidently.legacy.metrics.data_drift.embedding_drift_methods import MMDDriftMethod

    method = MMDDriftMethod(threshold=OLD_MMD_THRESHOLD)
    scores = {}
    for modality in drift_features.MODALITIES:
        columns = [c for c in reference.columns if c.startswith(f"{modality}_emb_")]
        scores[modality], _, _ = method(current[columns].copy(), reference[columns].copy())
    return scores


def old_verdict(reference: pd.DataFrame, current: pd.DataFrame) -> dict:
    """The replaced rule over the same 11 columns the stage tests."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    embeddings = any(s > OLD_MMD_THRESHOLD for s in old_mmd_scores(reference, current).values())
    numerical = [*drift_features.IMAGE_FEATURES, *drift_features.PREDICTION_NUMERICAL]
    categorical = [*drift_features.PREDICTION_CATEGORICAL, drift_features.LABEL]
    definition = DataDefinition(id_column="id", numerical_columns=numerical,
                                categorical_columns=categorical, text_columns=["text"])
    keep = ["id", "text", *numerical, *categorical]
    tested = [*numerical, *drift_features.TEXT_DESCRIPTORS, *categorical]
    sides = [Dataset.from_pandas(frame[keep], data_definition=definition,
                                 descriptors=drift_features.text_descriptors())
             for frame in (current, reference)]
    snapshot = Report([DataDriftPreset(columns=tested, drift_share=OLD_DRIFT_SHARE)],
                      include_tests=True).run(*sides)
    columns = drift._column_results(snapshot.dict())
    drifted = [name for name in tested if columns[name]["report_drifted"]]
    share_rule = len(drifted) / len(tested) >= OLD_DRIFT_SHARE
    return {"overall": embeddings or share_rule, "embeddings": embeddings,
            "any column": bool(drifted)}
