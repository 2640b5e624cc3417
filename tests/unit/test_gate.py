"""The promotion gate as a pure function: every criterion can block, every reason is reported."""
from __future__ import annotations

import math

import pytest

from pipeline.params import GateParams
from pipeline.registry import KEEP, PROMOTE, GateDecision, gate_metrics
from pipeline.registry import decide_point_estimate as decide_with_peer

GATE = GateParams(min_auroc=0.6, min_top1=0.5, min_top2=0.7, regression_tolerance=0.01)


def decide(*args):
    """These tests are about the other criteria: a text peer every challenger beats (the peer's
    own criterion: tests/unit/test_gate_text_peer.py)."""
    return decide_with_peer(*args, text_peer={"auroc": 0.0, "top1": 0.0})


def failures(reasons):
    return [r for r in reasons if r.startswith("FAIL")]


def test_metrics_of_record_per_task():
    assert gate_metrics("hateful_memes") == ("auroc",)
    assert gate_metrics("moderation7") == ("top1", "top2")


def test_first_binary_model_above_floor_passes():
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.7}, None)
    assert promoted
    assert any("no champion yet" in r for r in reasons) and not failures(reasons)


def test_failed_checks_block_even_a_strong_model():
    promoted, reasons = decide("hateful_memes", GATE, False, {"auroc": 0.99}, {"auroc": 0.6})
    assert not promoted
    assert failures(reasons) == ["FAIL: prediction checks did not pass "
                                 "(or no report was registered)"]


@pytest.mark.parametrize("auroc", [0.6, 0.55, math.nan])
def test_auroc_must_be_strictly_above_floor(auroc):
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": auroc}, None)
    floor = [r for r in failures(reasons) if "text peer" not in r]  # NaN beats no peer either
    assert not promoted and len(floor) == 1 and "auroc" in floor[0]


def test_regression_beyond_tolerance_blocks_within_tolerance_passes():
    assert decide("hateful_memes", GATE, True, {"auroc": 0.795}, {"auroc": 0.80})[0]
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.78}, {"auroc": 0.80})
    assert not promoted
    assert "vs champion 0.8000" in failures(reasons)[0]


def test_undefined_champion_metric_does_not_block():
    promoted, reasons = decide("hateful_memes", GATE, True, {"auroc": 0.7}, {"auroc": math.nan})
    assert promoted and any("champion auroc is undefined" in r for r in reasons)


def test_seven_classes_need_top1_and_top2_floors():
    assert decide("moderation7", GATE, True, {"top1": 0.5, "top2": 0.7}, None)[0]  # ≥ floors
    promoted, reasons = decide("moderation7", GATE, True, {"top1": 0.6, "top2": 0.69}, None)
    assert not promoted and "top2" in failures(reasons)[0]


def test_seven_classes_regression_on_either_metric_blocks():
    champion = {"top1": 0.6, "top2": 0.8}
    promoted, reasons = decide("moderation7", GATE, True, {"top1": 0.7, "top2": 0.78}, champion)
    assert not promoted and len(failures(reasons)) == 1 and "top2" in failures(reasons)[0]
    assert decide("moderation7", GATE, True, {"top1": 0.7, "top2": 0.81}, champion)[0]


def test_every_criterion_is_reported():
    _, reasons = decide("moderation7", GATE, True, {"top1": 0.7, "top2": 0.9},
                        {"top1": 0.6, "top2": 0.8})
    # checks + two floors + the text peer + two regressions
    assert len(reasons) == 6


def test_equal_scores_follow_the_documented_rule():
    """A tie with the champion goes to the challenger (also with no tolerance at all); a tie
    with the AUROC floor fails (strictly above); a tie with the top-k floors passes."""
    strict = GateParams(min_auroc=0.6, min_top1=0.5, min_top2=0.7, regression_tolerance=0.0)
    promoted, reasons = decide("hateful_memes", strict, True, {"auroc": 0.8}, {"auroc": 0.8})
    assert promoted and "a tie goes to the challenger" in reasons[-1]
    # float noise is a tie, a real difference is not
    assert decide("hateful_memes", strict, True, {"auroc": 0.1 + 0.7}, {"auroc": 0.8})[0]
    assert not decide("hateful_memes", strict, True, {"auroc": 0.7999}, {"auroc": 0.8})[0]
    # exactly at the tolerance boundary passes; the AUROC floor itself does not
    assert decide("hateful_memes", GATE, True, {"auroc": 0.79}, {"auroc": 0.80})[0]
    assert not decide("hateful_memes", GATE, True, {"auroc": 0.6}, None)[0]
    assert decide("moderation7", GATE, True, {"top1": 0.5, "top2": 0.7}, None)[0]
    champion = {"top1": 0.6, "top2": 0.8}
    assert decide("moderation7", strict, True, dict(champion), champion)[0]


def test_a_decision_round_trips_through_its_file_form():
    decision = GateDecision(PROMOTE, "m", "3", "2", ["PASS: x"], {"auroc": 0.9}, {"auroc": 0.8})
    assert GateDecision.from_dict(decision.to_dict()) == decision
    first = GateDecision(KEEP, "m", "1", None, ["FAIL: y"])
    assert GateDecision.from_dict(first.to_dict()) == first and not first.promoted
    with pytest.raises(ValueError, match="not a gate decision"):
        GateDecision.from_dict({"decision": "maybe", "name": "m", "challenger": "1",
                                "champion_seen": None, "reasons": []})
    with pytest.raises(ValueError, match="missing"):
        GateDecision.from_dict({"decision": "promote"})
