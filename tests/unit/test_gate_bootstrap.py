"""The gate's bootstrap rule as a pure function of per-row answers: noise is not improvement, a
real improvement is, an operating point that does not hold or a slice that regresses refuses."""
from __future__ import annotations

import numpy as np

from pipeline.operating_points import flags, fpr_threshold
from pipeline.params import GateParams
from pipeline.registry import GateDecision, GateRows, ModelRows, decide, decide_point_estimate

GATE = GateParams()  # the defaults: 95% intervals, 2000 resamples, min_delta 0
BEATEN_PEER = {"auroc": 0.0, "top1": 0.0}


def scores(labels, seed, signal=1.0):
    """P(hateful) of a model whose logit is signal * label + unit noise (its own seed)."""
    z = signal * labels + np.random.default_rng(seed).normal(0, 1, labels.size)
    p = 1 / (1 + np.exp(-z))
    return np.stack([1 - p, p], axis=1)


def served(labels, probs, target=0.05):
    """A model as the served pyfunc answers: probabilities and flags at the FPR threshold."""
    return ModelRows(probs, flags(probs[:, 1], fpr_threshold(labels, probs[:, 1], target)),
                     target)


def balanced(n_per_class, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat([0, 1], n_per_class))


def failures(reasons):
    return [r for r in reasons if r.startswith("FAIL")]


def test_two_models_that_differ_only_by_noise_old_rule_promotes_bootstrap_refuses():
    """Same signal, different noise draw: on 200 rows the challenger's AUROC comes out 0.047
    higher. The point-estimate rule calls that an improvement; the paired interval includes 0."""
    labels = balanced(100)
    champion, challenger = scores(labels, 100), scores(labels, 104)
    rows = GateRows(labels, served(labels, challenger), served(labels, champion))
    promoted, reasons, evidence = decide("hateful_memes", GATE, True, rows,
                                         text_peer=BEATEN_PEER)
    delta = evidence["delta"]["auroc"]
    assert delta["point"] > 0.04 and delta["lower"] < 0 < delta["upper"]
    assert not promoted
    assert [r.split(":")[1].strip().split()[0] for r in failures(reasons)] == ["auroc"]
    assert "not shown to be better than the champion" in failures(reasons)[0]

    old_promoted, old_reasons = decide_point_estimate(
        "hateful_memes", GATE, True, {"auroc": evidence["challenger"]["auroc"]["point"]},
        {"auroc": evidence["champion"]["auroc"]["point"]}, text_peer=BEATEN_PEER)
    assert old_promoted and not failures(old_reasons)
    assert evidence["point_estimate_rule"] == {"promote": True, "reasons": old_reasons}


def test_a_real_improvement_is_promoted():
    labels = balanced(100)
    rows = GateRows(labels, served(labels, scores(labels, 1, signal=3.0)),
                    served(labels, scores(labels, 2, signal=1.0)))
    promoted, reasons, evidence = decide("hateful_memes", GATE, True, rows,
                                         text_peer=BEATEN_PEER)
    assert promoted, failures(reasons)
    assert evidence["delta"]["auroc"]["lower"] > 0
    assert evidence["operating"]["recall_delta"]["point"] > 0


def test_first_model_is_judged_by_its_own_lower_bound():
    """No champion: AUROC 0.56 on 100 rows passes the old floor (> 0.5) but its interval
    reaches below 0.5."""
    labels = balanced(50)
    weak = scores(labels, 7, signal=0.35)
    promoted, reasons, evidence = decide("hateful_memes", GATE, True,
                                         GateRows(labels, served(labels, weak)),
                                         text_peer=BEATEN_PEER)
    own = evidence["challenger"]["auroc"]
    assert own["point"] > 0.5 >= own["lower"]
    assert not promoted and failures(reasons)[0].startswith("FAIL: auroc")
    assert "lower bound" in failures(reasons)[0]
    assert evidence["point_estimate_rule"]["promote"]
    strong = scores(labels, 7, signal=2.0)
    assert decide("hateful_memes", GATE, True, GateRows(labels, served(labels, strong)),
                  text_peer=BEATEN_PEER)[0]


def test_a_challenger_better_overall_but_worse_on_one_slice_is_refused_naming_it():
    """Four groups. The challenger separates the classes far better in three of them, and
    not at all in group g3 (150 rows), where the champion does fine."""
    rng = np.random.default_rng(5)
    group = np.repeat(["g1", "g2", "g3", "g4"], [250, 250, 150, 250])
    labels = rng.integers(0, 2, group.size)
    champion = scores(labels, 11, signal=1.5)
    signal = np.where(group == "g3", 0.0, 4.0)
    z = signal * labels + np.random.default_rng(12).normal(0, 1, labels.size)
    challenger = np.stack([1 - 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(-z))], axis=1)
    rows = GateRows(labels, served(labels, challenger), served(labels, champion),
                    slices={"group": group, "source": np.full(group.size, "synthetic")})
    promoted, reasons, evidence = decide("hateful_memes", GATE, True, rows,
                                         text_peer=BEATEN_PEER)
    assert evidence["delta"]["auroc"]["lower"] > 0  # overall: a clear improvement
    assert not promoted
    failed = failures(reasons)
    assert failed and all(r.startswith("FAIL: slice group=g3 ") for r in failed), failed
    assert any(" auroc " in r for r in failed)
    regressed = {(r["column"], r["value"]) for r in evidence["slices"] if r["regressed"]}
    assert regressed == {("group", "g3")}
    # a column with a single value is the whole set: not a slice
    assert all(r["column"] != "source" for r in evidence["slices"])
    # the other groups were compared at the Bonferroni-widened level
    compared = [r for r in evidence["slices"] if r["compared"]]
    assert compared and all(abs(r["level"] - (1 - 0.05 / len(compared))) < 1e-12
                            for r in compared)
    # the point-estimate rule sees only the overall improvement
    assert evidence["point_estimate_rule"]["promote"]


def test_small_slices_are_listed_but_not_judged():
    labels = balanced(100)
    group = np.where(np.arange(200) < 10, "tiny", "big")
    model = scores(labels, 3)
    other = scores(labels, 4)
    # the challenger is hopeless on the ten rows of "tiny"
    other[:10] = other[:10, ::-1]
    rows = GateRows(labels, served(labels, other), served(labels, model), {"group": group})
    _, reasons, evidence = decide("hateful_memes", GATE.model_copy(update={"min_delta": -1.0}),
                                  True, rows, text_peer=BEATEN_PEER)
    tiny = [r for r in evidence["slices"] if r["value"] == "tiny"]
    assert tiny and not any(r["compared"] for r in tiny)
    assert all("fewer than min_slice_rows 20" in r["note"] for r in tiny if r["rows"])
    assert not any("slice group=tiny" in r for r in failures(reasons))


def test_operating_point_must_hold_its_fpr_and_keep_the_champions_recall():
    labels = balanced(200)
    champion = served(labels, scores(labels, 1, signal=2.0))
    probs = scores(labels, 2, signal=2.0)
    # flags a third of benign rows although its threshold was chosen for 5%
    loose = ModelRows(probs, flags(probs[:, 1], np.quantile(probs[labels == 0, 1], 0.66)), 0.05)
    promoted, reasons, evidence = decide(
        "hateful_memes", GATE.model_copy(update={"min_delta": -1.0}), True,
        GateRows(labels, loose, champion), text_peer=BEATEN_PEER)
    assert not promoted and evidence["operating"]["challenger"]["fpr"]["lower"] > 0.05
    assert any("even the lower bound is above 0.05" in r for r in failures(reasons))
    # same scores, but it flags only the top 1% of rows: recall far below the champion's
    strict = ModelRows(probs, flags(probs[:, 1], np.quantile(probs[:, 1], 0.99)), 0.05)
    promoted, reasons, evidence = decide(
        "hateful_memes", GATE.model_copy(update={"min_delta": -1.0}), True,
        GateRows(labels, strict, champion), text_peer=BEATEN_PEER)
    assert not promoted and evidence["operating"]["recall_delta"]["upper"] < 0
    assert [r for r in failures(reasons) if "recall at FPR 0.05" in r]
    # without a served threshold the challenger cannot be judged at all
    bare = ModelRows(probs)
    promoted, reasons, _ = decide("hateful_memes", GATE, True, GateRows(labels, bare, champion),
                                  text_peer=BEATEN_PEER)
    assert not promoted and any("carries no operating threshold" in r
                                for r in failures(reasons))


def test_seven_classes_are_judged_on_top1_paired_and_top2_may_not_regress():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 400)

    def model(seed, signal):
        logits = np.random.default_rng(seed).normal(0, 1, (labels.size, 7))
        logits[np.arange(labels.size), labels] += signal
        e = np.exp(logits)
        return ModelRows(e / e.sum(axis=1, keepdims=True))

    gate = GateParams(min_top1=0.3, min_top2=0.4)
    promoted, reasons, evidence = decide("moderation7", gate, True,
                                         GateRows(labels, model(1, 3.0), model(2, 1.0)),
                                         text_peer=BEATEN_PEER)
    assert promoted, failures(reasons)
    assert set(evidence["delta"]) == {"top1", "top2"}
    promoted, reasons, _ = decide("moderation7", gate, True,
                                  GateRows(labels, model(3, 1.5), model(4, 1.5)),
                                  text_peer=BEATEN_PEER)
    assert not promoted and failures(reasons)[0].startswith("FAIL: top1")


def test_identical_answers_are_not_an_improvement():
    """A tie (e.g. the same weights under another content hash): the old rule gives it to the
    challenger, the bootstrap rule does not (the difference is exactly 0 in every resample)."""
    labels = balanced(50)
    same = served(labels, scores(labels, 1))
    promoted, reasons, evidence = decide("hateful_memes", GATE, True,
                                         GateRows(labels, same, same), text_peer=BEATEN_PEER)
    assert evidence["delta"]["auroc"] == {"point": 0.0, "lower": 0.0, "upper": 0.0,
                                          "level": 0.95, "resamples": 2000}
    assert not promoted and evidence["point_estimate_rule"]["promote"]
    # a non-inferiority margin (min_delta < 0) lets an equal model through
    assert decide("hateful_memes", GATE.model_copy(update={"min_delta": -0.01}), True,
                  GateRows(labels, same, same), text_peer=BEATEN_PEER)[0]


def test_the_text_peer_and_checks_still_refuse_under_the_bootstrap_rule():
    labels = balanced(100)
    rows = GateRows(labels, served(labels, scores(labels, 1, signal=3.0)))
    promoted, reasons, _ = decide("hateful_memes", GATE, True, rows, text_peer={"auroc": 0.999})
    assert not promoted and "does not beat the text peer" in failures(reasons)[0]
    promoted, reasons, _ = decide("hateful_memes", GATE, False, rows, text_peer=BEATEN_PEER)
    assert not promoted and failures(reasons)[0].startswith("FAIL: prediction checks")


def test_the_evidence_round_trips_through_the_decision_file():
    labels = balanced(40)
    _, reasons, evidence = decide("hateful_memes", GATE, True,
                                  GateRows(labels, served(labels, scores(labels, 1))),
                                  text_peer=BEATEN_PEER)
    decision = GateDecision("keep", "m", "2", None, reasons, {"auroc": 0.7}, {}, "id", "t",
                            evidence)
    import json
    assert GateDecision.from_dict(json.loads(json.dumps(decision.to_dict()))) == decision
