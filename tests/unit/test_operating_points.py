"""Operating points: the threshold chosen on val at a false-positive rate holds that rate on
held-out rows from the same distribution, within the interval evaluate reports."""
from __future__ import annotations

import numpy as np

from pipeline import operating_points


def draw(n, seed):
    """Scores of benign (label 0) and harmful (label 1) rows, half each: Beta(2, 5) vs
    Beta(5, 2), a model that separates them imperfectly."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat([0, 1], n // 2))
    scores = np.where(labels == 1, rng.beta(5, 2, n), rng.beta(2, 5, n))
    return labels, scores


def test_threshold_at_fpr_005_holds_on_a_held_out_sample_within_the_interval():
    val_labels, val_scores = draw(2000, 1)
    test_labels, test_scores = draw(1000, 2)
    held_labels, held_scores = draw(200_000, 3)
    point = operating_points.operating_point(0.05, val_labels, val_scores, test_labels,
                                             test_scores, resamples=2000, alpha=0.05, seed=0)
    threshold = point["threshold"]
    assert point["val"]["fpr"] <= 0.05 and point["val"]["fp"] == 50  # the budget, used fully
    held_fpr = (held_scores[held_labels == 0] >= threshold).mean()
    interval = point["test"]["fpr_interval"]
    assert interval["lower"] <= held_fpr <= interval["upper"], (interval, held_fpr)
    assert held_fpr <= 0.05 + 0.01  # the true rate: 0.05 up to the noise of 1000 val negatives
    held_recall = (held_scores[held_labels == 1] >= threshold).mean()
    recall = point["test"]["recall_interval"]
    assert recall["lower"] <= held_recall <= recall["upper"]


def test_fpr_threshold_edges():
    labels = np.array([0, 0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.95])
    # 4 negatives: FPR 0.25 allows one false positive (0.9), so 0.8 is flagged too
    assert operating_points.fpr_threshold(labels, scores, 0.25) == 0.8
    # FPR 0.05 allows none: the lowest threshold above every negative is the 0.95 positive
    assert operating_points.fpr_threshold(labels, scores, 0.05) == 0.95
    # no val score above the highest negative: a threshold just above it flags nothing there
    top = operating_points.fpr_threshold(np.array([0, 1]), np.array([0.9, 0.5]), 0.01)
    assert top > 0.9 and operating_points.flags(np.array([0.9, 0.5]), top).sum() == 0
    # ties: a tied negative is never flagged by the chosen threshold
    tied = operating_points.fpr_threshold(np.array([0, 0, 1]), np.array([0.7, 0.7, 0.7]), 0.4)
    assert tied > 0.7
    assert operating_points.fpr_threshold(np.array([1, 1]), np.array([0.2, 0.4]), 0.05) is None


def test_primary_point_is_the_configured_target():
    labels, scores = draw(400, 4)
    found = operating_points.operating_points((0.01, 0.05), 0.05, labels, scores, labels, scores,
                                              resamples=200, alpha=0.05, seed=0)
    assert [p["fpr_target"] for p in found["points"]] == [0.01, 0.05]
    assert operating_points.primary_point(found)["fpr_target"] == 0.05
    no_negatives = operating_points.operating_point(0.05, np.ones(4, int), np.ones(4), labels,
                                                    scores, resamples=200, alpha=0.05, seed=0)
    assert no_negatives["threshold"] is None and "no negatives" in no_negatives["reason"]
