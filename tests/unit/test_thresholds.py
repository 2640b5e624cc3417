"""How evaluate picks the binary decision threshold on the validation split."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.params import EvaluateParams
from pipeline.stages import evaluate


def test_youden_picks_the_threshold_that_separates():
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.35, 0.4, 0.8, 0.9])
    threshold, rule = evaluate.choose_threshold(labels, scores, EvaluateParams())
    assert rule == "youden" and threshold == pytest.approx(0.4)


def test_f1_rule_and_fixed_rule():
    labels = np.array([0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.6, 0.3, 0.7, 0.9])
    threshold, rule = evaluate.choose_threshold(labels, scores,
                                                EvaluateParams(threshold_rule="f1"))
    assert rule == "f1" and threshold == pytest.approx(0.3)  # all 3 positives, 1 FP: F1 0.857
    fixed = EvaluateParams(threshold_rule="fixed", fixed_threshold=0.42)
    assert evaluate.choose_threshold(labels, scores, fixed) == (0.42, "fixed")


def test_single_class_val_falls_back_to_fixed_and_says_so():
    threshold, rule = evaluate.choose_threshold(np.zeros(4, int), np.random.rand(4),
                                                EvaluateParams(fixed_threshold=0.3))
    assert threshold == 0.3 and "fallback" in rule


def test_youden_threshold_is_never_infinite():
    # a useless score: best J is at the first (infinite) roc_curve threshold
    threshold, _ = evaluate.choose_threshold(np.array([0, 1, 0, 1]),
                                             np.array([0.9, 0.1, 0.8, 0.2]), EvaluateParams())
    assert 0 <= threshold <= 1
