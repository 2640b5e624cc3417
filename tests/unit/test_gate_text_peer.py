"""The gate's text-peer criterion as a pure function: a challenger must beat the TF-IDF caption
baseline of its own run by more than gate.min_gain_over_text_peer on the metric of record."""
from __future__ import annotations

import json
import math

from pipeline import text_peer
from pipeline.params import GateParams
from pipeline.paths import Paths
from pipeline.registry import decide_point_estimate as decide
from pipeline.registry import lineage
from pipeline.registry.gate import SCORE_EPSILON

GATE = GateParams(min_auroc=0.5, min_top1=0.3, min_top2=0.5, regression_tolerance=0.01)


def peer_reason(reasons):
    found = [r for r in reasons if "text peer" in r]
    assert len(found) == 1, reasons
    return found[0]


def test_a_challenger_that_loses_to_the_text_peer_is_refused_one_that_beats_it_promoted():
    # the public-set case: the model 0.64, TF-IDF 0.77
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.64}, None,
                               text_peer={"auroc": 0.77, "samples": 100}, test_samples=100)
    assert not promoted
    assert peer_reason(reasons) == ("FAIL: auroc 0.6400 does not beat the text peer's 0.7700 "
                                    "by more than 0.0 (gain -0.1300)")
    # every other criterion passed: the peer alone refused it
    assert [r for r in reasons if r.startswith("FAIL")] == [peer_reason(reasons)]
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.81}, {"auroc": 0.80},
                               text_peer={"auroc": 0.77, "samples": 100}, test_samples=100)
    assert promoted
    assert peer_reason(reasons).startswith("PASS: auroc 0.8100 beats the text peer's 0.7700")


def test_a_tie_with_the_peer_fails_and_min_gain_must_be_exceeded():
    """Beating means gain > min_gain + SCORE_EPSILON: a tie fails at the default 0, a gain equal
    to min_gain fails, float noise around a tie is a tie."""
    tie = decide("hateful_memes", GATE, True, {"auroc": 0.1 + 0.7}, None,
                 text_peer={"auroc": 0.8})
    assert not tie[0] and peer_reason(tie[1]).startswith("FAIL")
    assert decide("hateful_memes", GATE, True, {"auroc": 0.8 + 10 * SCORE_EPSILON}, None,
                  text_peer={"auroc": 0.8})[0]
    demanding = GATE.model_copy(update={"min_gain_over_text_peer": 0.05})
    assert not decide("hateful_memes", demanding, True, {"auroc": 0.85}, None,
                      text_peer={"auroc": 0.8})[0]  # gain 0.05 = min_gain: not more
    assert decide("hateful_memes", demanding, True, {"auroc": 0.8501}, None,
                  text_peer={"auroc": 0.8})[0]


def test_missing_undefined_or_other_rows_peer_refuses():
    _, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.9}, None, text_peer=None)
    assert "no text peer score was registered" in peer_reason(reasons)
    _, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.9}, None,
                        text_peer={"auroc": math.nan})
    assert peer_reason(reasons).startswith("FAIL: the text peer's auroc is undefined")
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.9}, None,
                               text_peer={"auroc": 0.6, "samples": 90}, test_samples=91)
    assert not promoted and "scored on 90 test rows, the gate's test set has 91" in \
        peer_reason(reasons)


def test_seven_classes_are_compared_on_top1():
    # top-2 far below the peer's does not matter; top-1 decides
    promoted, reasons = decide("moderation7", GATE, True, {"top1": 0.62, "top2": 0.80}, None,
                               text_peer={"top1": 0.60, "top2": 0.95})
    assert promoted and peer_reason(reasons).startswith("PASS: top1 0.6200 beats")
    promoted, reasons = decide("moderation7", GATE, True, {"top1": 0.58, "top2": 0.99}, None,
                               text_peer={"top1": 0.60, "top2": 0.70})
    assert not promoted and peer_reason(reasons).startswith("FAIL: top1 0.5800 does not beat")


def test_the_peer_reaches_the_gate_through_version_tags(tmp_path):
    """register writes artifacts/text_peer/metrics.json as tags; the gate reads them back."""
    paths = Paths(tmp_path)
    assert lineage.text_peer_tags(paths) == {}  # the stage did not run: no tags, a refusal
    assert lineage.text_peer_scores({"metric.test.auroc": "0.9"}) is None
    text_peer.output_dir(paths).mkdir(parents=True)
    text_peer.metrics_path(paths).write_text(json.dumps({
        "c": 10.0, "fallback": None, "gain": -0.13,
        "test": {"auroc": 0.77, "accuracy": 0.7, "samples": 91,
                 "per_class_recall": {"a": 1.0}}}))
    tags = lineage.text_peer_tags(paths)
    assert tags == {"text_peer.test.auroc": "0.77", "text_peer.test.accuracy": "0.7",
                    "text_peer.test.samples": "91", "text_peer.c": "10.0",
                    "text_peer.fallback": "None", "text_peer.gain": "-0.13"}
    scores = lineage.text_peer_scores(tags | {"metric.test.auroc": "0.5"})
    assert scores == {"auroc": 0.77, "accuracy": 0.7, "samples": 91}
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.8}, None,
                               text_peer=scores, test_samples=90)
    assert not promoted and "scored on 91 test rows" in peer_reason(reasons)
    # an undefined peer score (null in metrics.json) comes back as NaN: a refusal
    undefined = lineage.text_peer_scores({"text_peer.test.auroc": "None",
                                          "text_peer.test.samples": "None"})
    assert math.isnan(undefined["auroc"]) and "samples" not in undefined
