"""Temperature scaling fitted on val lowers the calibration error of an over-confident model on
held-out rows, and changes no ranking."""
from __future__ import annotations

import numpy as np

from pipeline import calibration, metrics


def over_confident(n, seed, sharpness=4.0):
    """Labels and P(class) of a model whose logits are `sharpness` times what they should be:
    the true P(1) is sigmoid(z), the model says sigmoid(sharpness * z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-sharpness * z))
    return labels, np.stack([1 - p, p], axis=1)


def test_temperature_fitted_on_val_lowers_ece_on_held_out_rows():
    val_labels, val_probs = over_confident(1000, 1)
    test_labels, test_probs = over_confident(5000, 2)
    fitted = calibration.fit_temperature(val_labels, val_probs)
    assert fitted.fitted and 3.0 < fitted.value < 5.5  # the model is 4x too sharp
    assert fitted.nll_after < fitted.nll_before
    before = calibration.ece(test_labels, test_probs)
    after = calibration.ece(test_labels, calibration.scale(test_probs, fitted.value))
    assert before > 0.1 and after < before / 3, (before, after)
    # ranking untouched: same AUROC, same argmax
    scaled = calibration.scale(test_probs, fitted.value)
    assert metrics.auroc(test_labels, scaled[:, 1]) == metrics.auroc(test_labels,
                                                                     test_probs[:, 1])
    assert (scaled.argmax(axis=1) == test_probs.argmax(axis=1)).all()


def test_an_under_confident_model_is_sharpened_and_seven_classes_work_too():
    labels, probs = over_confident(2000, 3, sharpness=0.4)
    assert calibration.fit_temperature(labels, probs).value < 1
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 7, 3000)
    logits = rng.normal(0, 1, (3000, 7))
    logits[np.arange(3000), labels] += 1.0
    sharp = np.exp(5 * logits)
    sharp /= sharp.sum(axis=1, keepdims=True)
    fitted = calibration.fit_temperature(labels[:1000], sharp[:1000])
    assert fitted.value > 2
    assert calibration.ece(labels[1000:], calibration.scale(sharp[1000:], fitted.value)) < \
        calibration.ece(labels[1000:], sharp[1000:]) / 2


def test_val_that_cannot_support_a_fit_keeps_temperature_one_and_says_why():
    labels, probs = over_confident(200, 5)
    one_class = calibration.fit_temperature(np.zeros(200, int), probs)
    assert (one_class.value, one_class.fitted) == (1.0, False)
    assert one_class.reason == "not fitted: val holds one class"
    few = calibration.fit_temperature(labels[:5], probs[:5])
    assert not few.fitted and "5 val rows" in few.reason
    np.testing.assert_array_equal(calibration.scale(probs, 1.0), probs)


def test_scaling_saturated_probabilities_stays_finite():
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    scaled = calibration.scale(probs, 3.0)
    assert np.isfinite(scaled).all() and np.allclose(scaled.sum(axis=1), 1)
    assert scaled[0, 0] < 1 and scaled[2, 0] == 0.5


def test_ece_matches_the_reliability_bins():
    labels = np.array([1, 1, 0, 0])
    probs = np.array([[0.1, 0.9], [0.1, 0.9], [0.9, 0.1], [0.25, 0.75]])
    bins = calibration.reliability_bins(labels, probs)
    assert [(b["bin"], b["count"]) for b in bins] == [(1, 1), (7, 1), (9, 2)]
    # |0.1 - 0| + |0.75 - 0| + 2 * |0.9 - 1|, over 4 rows
    assert abs(calibration.ece(labels, probs) - (0.1 + 0.75 + 0.2) / 4) < 1e-12
