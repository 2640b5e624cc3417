"""The weighted bootstrap metrics agree with the plain ones on the resampled rows, resamples keep
the class counts, and a paired interval sees what two unpaired ones cannot."""
from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from pipeline import bootstrap


def test_weighted_auroc_and_rates_equal_the_metric_on_the_drawn_rows():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(rng.normal(labels * 0.7, 1), 1)  # rounded: many ties
    hits = (scores > 0.5).astype(int)
    weights = bootstrap.resample_weights(labels, 20, bootstrap.rng_for(1, "t"))
    auroc = bootstrap.auroc(labels, scores)(weights)
    recall = bootstrap.rate(hits, labels == 1)(weights)
    for b, row in enumerate(weights):
        drawn = np.repeat(np.arange(labels.size), row.astype(int))
        assert abs(auroc[b] - roc_auc_score(labels[drawn], scores[drawn])) < 1e-12
        positives = drawn[labels[drawn] == 1]
        assert abs(recall[b] - hits[positives].mean()) < 1e-12
    # stratified: every resample holds the data's class counts
    assert (weights[:, labels == 1].sum(axis=1) == (labels == 1).sum()).all()


def test_paired_interval_is_narrow_where_unpaired_ones_overlap():
    """Two models whose scores share most of their noise: each one's own interval is wide and
    they overlap, yet the paired difference is clearly positive."""
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 200)
    shared = rng.normal(0, 1, 200)
    old = labels * 1.0 + shared
    new = labels * 1.3 + shared + rng.normal(0, 0.1, 200)
    weights = bootstrap.resample_weights(labels, 2000, bootstrap.rng_for(0))
    a = bootstrap.single(bootstrap.auroc(labels, new), weights, 0.95)
    b = bootstrap.single(bootstrap.auroc(labels, old), weights, 0.95)
    assert a.lower < b.upper  # the unpaired intervals overlap
    delta = bootstrap.paired(bootstrap.auroc(labels, new), bootstrap.auroc(labels, old),
                             weights, 0.95)
    assert delta.lower > 0 and abs(delta.point - (a.point - b.point)) < 1e-12


def test_undefined_resamples_are_left_out_and_counted():
    labels = np.array([0, 0, 0, 1])
    hits = np.array([1, 0, 0, 1])
    weights = bootstrap.resample_weights(np.zeros(4, int), 500, bootstrap.rng_for(0))
    interval = bootstrap.single(bootstrap.rate(hits, labels == 1), weights, 0.9)
    assert 0 < interval.resamples < 500  # some resamples miss the one positive row
    empty = bootstrap.single(bootstrap.auroc(np.zeros(3, int), np.ones(3)),
                             np.ones((10, 3)), 0.95)
    assert not empty.defined and empty.to_dict()["lower"] is None
