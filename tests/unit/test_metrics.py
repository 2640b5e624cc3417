"""The metric functions on known values (numpy in, no model)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline import metrics as M


def test_metrics_on_known_values():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.35, 0.65], [0.2, 0.8]])
    out = M.binary_metrics(labels, probs)
    assert out["auroc"] == pytest.approx(1.0)
    assert (out["tp"], out["tn"], out["fp"], out["fn"]) == (2, 1, 1, 0)
    assert out["accuracy"] == 0.75 and out["f1"] == pytest.approx(0.8)
    assert math.isnan(M.auroc(np.array([1, 1]), np.array([0.2, 0.9])))
    three = np.array([[0.5, 0.3, 0.2], [0.1, 0.5, 0.4], [0.6, 0.3, 0.1]])
    multi = M.multiclass_metrics(np.array([0, 2, 1]), three)
    assert multi["top1"] == pytest.approx(1 / 3) and multi["top2"] == pytest.approx(1.0)
    assert multi["per_class_recall"] == [1.0, 0.0, 0.0]
    assert M.task_metrics("moderation7", np.array([0, 2, 1]), three).keys() == {
        "top1", "top2", "macro_f1"}
    with pytest.raises(ValueError, match="shape"):
        M.binary_metrics(np.array([0, 1]), np.array([0.3, 0.7]))
    with pytest.raises(ValueError, match="labels must lie"):
        M.top_k_accuracy(np.array([0, 5]), three[:2], 1)
