"""The promotion gate as a pure function of scores: no MLflow, no files.

Two rules. `decide` (what `mmguard gate` applies) judges per-row predictions of the challenger
and the champion on the same test rows with a paired bootstrap (pipeline/bootstrap.py):
- the metric of record (AUROC; top-1 for seven classes): promoted only when the lower bound of
  the (1 - alpha) interval of challenger - champion is above `min_delta`; with no champion, the
  lower bound of the challenger's own interval must clear the floors (`min_auroc` strictly,
  `min_top1`/`min_top2` or equal). Seven classes: top-2 must not regress (its interval's upper
  bound below -regression_tolerance refuses);
- binary operating point: the served threshold's test FPR may not be above its target beyond
  noise (the lower bound of its interval above the target refuses), and recall there may not
  fall below the champion's (the upper bound of the paired recall difference below
  -recall_tolerance refuses);
- slices (pipeline/registry/slices.py): no source, class or group slice may regress beyond its
  interval;
- and the checks, rolled-back and text-peer criteria below, as in the point-estimate rule;
- with `require_shadow_rows` set, enough shadow rows of the challenger (`shadow_reason`).
`decide_point_estimate` is the older rule on point scores, kept to show what it would have said
(decision reports, tests/bench/test_bench_gate.py).

Point-estimate comparison rule (also in docs/architecture.md, "Decisions"): scores within SCORE_EPSILON of each
other are equal. Floors: AUROC must be strictly above `min_auroc` (an AUROC equal to the floor
fails), top-1/top-2 must reach `min_top1`/`min_top2` (equal passes). Against the champion, the
challenger wins a tie: it passes when it is at most `regression_tolerance` below the champion,
so an equal score promotes the challenger, the model trained on the newer data. Against the text
peer (the TF-IDF caption baseline of the same run, pipeline/text_peer.py) the challenger must
win: its metric of record (AUROC; top-1 for seven classes) minus the peer's must exceed
`min_gain_over_text_peer` by more than SCORE_EPSILON, so a gain equal to it (a tie, at the
default 0) fails, and so does a peer score that is missing, undefined or from other test rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline import bootstrap, calibration, metrics
from pipeline.params import GateParams
from pipeline.registry import slices as slice_checks
from pipeline.taxonomy import class_names

PROMOTE, KEEP = "promote", "keep"
# Scores are means over at most a few thousand rows: differences below this are float noise.
SCORE_EPSILON = 1e-9


@dataclass
class GateDecision:
    """What the gate decided about one challenger, against the champion it saw."""
    decision: str  # PROMOTE or KEEP
    name: str
    challenger: str
    champion_seen: str | None
    reasons: list[str]
    challenger_metrics: dict = field(default_factory=dict)
    champion_metrics: dict = field(default_factory=dict)
    # Which gate run decided: also tags of the challenger (`gate.decision_id`,
    # `gate.evaluated_at`), so a decision file applies only while no later gate run has replaced
    # it. None when nothing was recorded (the challenger already is champion).
    decision_id: str | None = None
    evaluated_at: str | None = None
    # The bootstrap rule's numbers (intervals, operating points, the slice table, what the
    # point-estimate rule would have said); JSON-safe. Empty when no scoring happened.
    evidence: dict = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict:
        return {"decision": self.decision, "name": self.name, "challenger": self.challenger,
                "champion_seen": self.champion_seen, "reasons": self.reasons,
                "challenger_metrics": self.challenger_metrics,
                "champion_metrics": self.champion_metrics,
                "decision_id": self.decision_id, "evaluated_at": self.evaluated_at,
                "evidence": self.evidence}

    @classmethod
    def from_dict(cls, data: dict) -> "GateDecision":
        missing = {"decision", "name", "challenger", "champion_seen", "reasons"} - set(data)
        if missing or data["decision"] not in (PROMOTE, KEEP):
            raise ValueError(f"not a gate decision (missing {sorted(missing)} or decision "
                             f"{data.get('decision')!r} is neither {PROMOTE!r} nor {KEEP!r})")
        seen = data["champion_seen"]
        return cls(data["decision"], str(data["name"]), str(data["challenger"]),
                   None if seen is None else str(seen), list(data["reasons"]),
                   dict(data.get("challenger_metrics") or {}),
                   dict(data.get("champion_metrics") or {}),
                   data.get("decision_id"), data.get("evaluated_at"),
                   dict(data.get("evidence") or {}))


def gate_metrics(task: str) -> tuple[str, ...]:
    """The metrics of record the gate compares: AUROC (binary); top-1 and top-2 (seven classes)."""
    return ("auroc",) if len(class_names(task)) == 2 else ("top1", "top2")


def fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _at_least(value: float, bound: float) -> bool:
    return value >= bound - SCORE_EPSILON


def text_peer_reason(task: str, gate: GateParams, challenger: dict, text_peer: dict | None,
                     test_samples: int | None = None) -> str:
    """PASS when the challenger beats the text peer by more than min_gain_over_text_peer on the
    metric of record; `text_peer` holds that metric and `samples` (rows it was scored on)."""
    name = gate_metrics(task)[0]  # auroc, or top1: the one score the peer is judged by
    if not text_peer:
        return ("FAIL: no text peer score was registered with this version (run the text_peer "
                "stage before register)")
    peer_rows = text_peer.get("samples")
    if test_samples is not None and peer_rows is not None and int(peer_rows) != test_samples:
        return (f"FAIL: the text peer was scored on {int(peer_rows)} test rows, the gate's test "
                f"set has {test_samples}: not the same rows, no comparison")
    new, peer = float(challenger.get(name, math.nan)), float(text_peer.get(name, math.nan))
    if not math.isfinite(peer):
        return f"FAIL: the text peer's {name} is undefined, so no model can be shown to beat it"
    need = gate.min_gain_over_text_peer
    ok = math.isfinite(new) and new - peer > need + SCORE_EPSILON
    if ok:
        return (f"PASS: {name} {fmt(new)} beats the text peer's {fmt(peer)} by "
                f"{fmt(new - peer)} (must be > {need})")
    return (f"FAIL: {name} {fmt(new)} does not beat the text peer's {fmt(peer)} by more than "
            f"{need} (gain {fmt(new - peer)})")


def shadow_reason(required: int, shadow_rows: int | None, has_champion: bool) -> str | None:
    """The `require_shadow_rows` criterion: the challenger must have scored at least `required`
    served requests in shadow (pipeline/monitoring/shadow.py) before it may replace a champion.
    None when not required (0). With no champion nothing served traffic to shadow, so it
    passes; `shadow_rows` None means the capture log could not be read, which fails."""
    if required <= 0:
        return None
    if not has_champion:
        return "PASS: no champion yet, so no served traffic to shadow"
    if shadow_rows is None:
        return (f"FAIL: {required} shadow rows are required but the capture log could not be "
                "read")
    ok = shadow_rows >= required
    return (f"{'PASS' if ok else 'FAIL'}: {shadow_rows} shadow rows scored by this version in "
            f"the traffic window (required: at least {required})")


def decide_point_estimate(task: str, gate: GateParams, checks_passed: bool, challenger: dict,
                          champion: dict | None, *, text_peer: dict | None,
                          test_samples: int | None = None) -> tuple[bool, list[str]]:
    """The point-estimate rule (the gate before intervals): floors and the champion comparison
    on the scores as measured, within `regression_tolerance`; kept to show what it would have
    said. Returns (promote?, one reason per criterion, PASS or FAIL).
    `text_peer`: the text peer's registered scores ({metric: value, "samples": rows}); None
    when none was registered (a refusal). `test_samples`: rows of the gate's test set."""
    reasons = [("PASS" if checks_passed else "FAIL") + ": prediction checks "
               + ("passed" if checks_passed else "did not pass (or no report was registered)")]
    minimum = {"auroc": (gate.min_auroc, ">"), "top1": (gate.min_top1, ">="),
               "top2": (gate.min_top2, ">=")}
    for name in gate_metrics(task):
        value = float(challenger.get(name, math.nan))
        floor, op = minimum[name]
        above = value > floor + SCORE_EPSILON if op == ">" else _at_least(value, floor)
        ok = math.isfinite(value) and above
        reasons.append(f"{'PASS' if ok else 'FAIL'}: {name} {fmt(value)} {op} {floor}")
    reasons.append(text_peer_reason(task, gate, challenger, text_peer, test_samples))
    if champion is None:
        reasons.append("PASS: no champion yet, nothing to regress against")
    else:
        for name in gate_metrics(task):
            new, old = float(challenger.get(name, math.nan)), float(champion.get(name, math.nan))
            if not math.isfinite(old):
                reasons.append(f"PASS: champion {name} is undefined on this test set")
                continue
            ok = math.isfinite(new) and _at_least(new, old - gate.regression_tolerance)
            tie = " (a tie goes to the challenger)" if ok and abs(new - old) <= SCORE_EPSILON \
                else ""
            reasons.append(f"{'PASS' if ok else 'FAIL'}: {name} {fmt(new)} vs champion "
                           f"{fmt(old)} (tolerance {gate.regression_tolerance}){tie}")
    return all(r.startswith("PASS") for r in reasons), reasons


# ---------------------------------------------------------------- the bootstrap rule

@dataclass(frozen=True)
class ModelRows:
    """One model's answers on the gate's rows, as its served pyfunc gave them."""
    probs: np.ndarray                  # [N, C] class probabilities
    flags: np.ndarray | None = None    # binary: its `decision` column, 1 = flagged
    fpr_target: float | None = None    # the FPR its served threshold was chosen for on val


@dataclass(frozen=True)
class GateRows:
    """The gate's test rows: labels, slice columns, and both models' answers on the same rows."""
    labels: np.ndarray
    challenger: ModelRows
    champion: ModelRows | None = None
    # column -> value per row (source, class, group, ...): the slices checked for regressions
    slices: dict[str, np.ndarray] = field(default_factory=dict)


def _record_metrics(task: str, labels: np.ndarray, model: ModelRows
                    ) -> dict[str, bootstrap.Metric]:
    if len(class_names(task)) == 2:
        return {"auroc": bootstrap.auroc(labels, model.probs[:, 1])}
    return {"top1": bootstrap.top_k(labels, model.probs, 1),
            "top2": bootstrap.top_k(labels, model.probs, 2)}


def point_scores(task: str, labels: np.ndarray, model: ModelRows) -> dict:
    """The metrics of record measured on the rows as they are (what the old rule compares)."""
    if len(class_names(task)) == 2:
        return {"auroc": metrics.auroc(labels, model.probs[:, 1])}
    return {"top1": metrics.top_k_accuracy(labels, model.probs, 1),
            "top2": metrics.top_k_accuracy(labels, model.probs, 2)}


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def signed(interval: bootstrap.Interval) -> str:
    def one(value: float) -> str:
        return f"{value:+.4f}" if math.isfinite(value) else "nan"
    return f"{one(interval.point)} [{one(interval.lower)}, {one(interval.upper)}]"


def _level_words(level: float, resamples: int, paired: bool) -> str:
    return f"{level:.1%} {'paired ' if paired else ''}bootstrap, {resamples} resamples"


def _floor_reason(name: str, interval: bootstrap.Interval, floor: float, strict: bool,
                  words: str) -> str:
    bound = interval.lower
    ok = interval.defined and (bound > floor + SCORE_EPSILON if strict
                               else bound >= floor - SCORE_EPSILON)
    op = ">" if strict else ">="
    verdict = "PASS" if ok else "FAIL"
    return (f"{verdict}: {name} {interval.text()} ({words}): lower bound {fmt(bound)} "
            f"{op if ok else 'is not ' + op} {floor}")


def _champion_reasons(task: str, gate: GateParams, rows: GateRows,
                      weights: np.ndarray, level: float, evidence: dict) -> list[str]:
    new = _record_metrics(task, rows.labels, rows.challenger)
    old = _record_metrics(task, rows.labels, rows.champion)
    words = _level_words(level, gate.bootstrap_resamples, paired=True)
    reasons, deltas = [], {}
    for position, name in enumerate(gate_metrics(task)):
        delta = bootstrap.paired(new[name], old[name], weights, level)
        deltas[name] = delta.to_dict()
        champion_point = float(old[name](np.ones((1, rows.labels.size)))[0])
        new_point = float(new[name](np.ones((1, rows.labels.size)))[0])
        if not math.isfinite(champion_point):
            reasons.append(f"PASS: champion {name} is undefined on this test set")
            continue
        head = f"{name} {fmt(new_point)} vs champion {fmt(champion_point)}: difference " \
               f"{signed(delta)} ({words})"
        if position == 0:  # the metric of record: the challenger must be shown better
            ok = delta.defined and delta.lower > gate.min_delta + SCORE_EPSILON
            tail = (f"lower bound above min_delta {gate.min_delta}" if ok else
                    f"lower bound {fmt(delta.lower)} is not above min_delta {gate.min_delta}: "
                    "not shown to be better than the champion")
        else:  # top-2 of seven classes: it may not be shown worse
            ok = not (delta.defined and delta.upper < -gate.regression_tolerance - SCORE_EPSILON)
            tail = (f"upper bound not below -{gate.regression_tolerance}" if ok else
                    f"upper bound {fmt(delta.upper)} is below -{gate.regression_tolerance}: "
                    "shown to be worse than the champion")
        reasons.append(f"{'PASS' if ok else 'FAIL'}: {head}; {tail}")
    evidence["delta"] = deltas
    return reasons


def _operating_reasons(gate: GateParams, rows: GateRows, weights: np.ndarray, level: float,
                       evidence: dict) -> list[str]:
    """Binary: the challenger's served threshold holds its FPR on test, and its recall there
    is not shown below the champion's."""
    new, old, labels = rows.challenger, rows.champion, rows.labels
    if new.flags is None or new.fpr_target is None:
        return ["FAIL: the challenger carries no operating threshold, so its served `decision` "
                "cannot be judged (evaluate writes operating_points; register after it)"]
    target = new.fpr_target
    positives, negatives = labels == 1, labels == 0
    fpr = bootstrap.single(bootstrap.rate(new.flags, negatives), weights, level)
    recall = bootstrap.single(bootstrap.rate(new.flags, positives), weights, level)
    operating = {"fpr_target": target, "challenger": {"fpr": fpr.to_dict(),
                                                      "recall": recall.to_dict()}}
    evidence["operating"] = operating
    words = _level_words(level, gate.bootstrap_resamples, paired=False)
    held = not (fpr.defined and fpr.lower > target + SCORE_EPSILON)
    reasons = [f"{'PASS' if held else 'FAIL'}: at its threshold for FPR {target:g} the "
               f"challenger flags {fpr.text()} of benign test rows ({words}); "
               + ("the lower bound is not above the target" if held else
                  f"even the lower bound is above {target:g}")]
    if old is None:
        return reasons
    if old.flags is None or old.fpr_target is None:
        return reasons + ["PASS: the champion carries no operating threshold; recall at the "
                          "operating point is not compared"]
    if abs(old.fpr_target - target) > 1e-12:
        return reasons + [f"PASS: the champion's threshold was chosen for FPR "
                          f"{old.fpr_target:g}, the challenger's for {target:g}; recall at "
                          "the operating point is not compared"]
    delta = bootstrap.paired(bootstrap.rate(new.flags, positives),
                             bootstrap.rate(old.flags, positives), weights, level)
    old_recall = bootstrap.single(bootstrap.rate(old.flags, positives), weights, level)
    operating["champion"] = {
        "fpr": bootstrap.single(bootstrap.rate(old.flags, negatives), weights, level).to_dict(),
        "recall": old_recall.to_dict()}
    operating["recall_delta"] = delta.to_dict()
    tolerance = gate.recall_tolerance
    ok = not (delta.defined and delta.upper < -tolerance - SCORE_EPSILON)
    words = _level_words(level, gate.bootstrap_resamples, paired=True)
    return reasons + [
        f"{'PASS' if ok else 'FAIL'}: recall at FPR {target:g} {fmt(recall.point)} vs champion "
        f"{fmt(old_recall.point)}: difference {signed(delta)} "
        f"({words}); " + (f"upper bound not below -{tolerance}" if ok else
                          f"upper bound {fmt(delta.upper)} is below -{tolerance}: the "
                          "challenger misses harmful posts the champion catches")]


def decide(task: str, gate: GateParams, checks_passed: bool, rows: GateRows, *,
           text_peer: dict | None, test_samples: int | None = None
           ) -> tuple[bool, list[str], dict]:
    """The bootstrap rule (module docstring). Returns (promote?, one reason per criterion,
    PASS or FAIL, evidence: intervals, operating points, slice table and the point-estimate
    rule's verdict, JSON-safe)."""
    labels = np.asarray(rows.labels).reshape(-1)
    rows = GateRows(labels, rows.challenger, rows.champion, rows.slices)
    level = 1.0 - gate.alpha
    weights = bootstrap.resample_weights(labels, gate.bootstrap_resamples,
                                         bootstrap.rng_for(gate.seed, "overall"))
    own = _record_metrics(task, labels, rows.challenger)
    challenger = {name: bootstrap.single(metric, weights, level) for name, metric in own.items()}
    evidence: dict = {"rule": "paired bootstrap", "level": level,
                      "resamples": gate.bootstrap_resamples, "seed": gate.seed,
                      "rows": int(labels.size),
                      "challenger": {k: v.to_dict() for k, v in challenger.items()}}
    if rows.champion is not None:
        champion_own = _record_metrics(task, labels, rows.champion)
        evidence["champion"] = {k: bootstrap.single(m, weights, level).to_dict()
                                for k, m in champion_own.items()}

    reasons = [("PASS" if checks_passed else "FAIL") + ": prediction checks "
               + ("passed" if checks_passed else "did not pass (or no report was registered)")]
    floors = {"auroc": (gate.min_auroc, True), "top1": (gate.min_top1, False),
              "top2": (gate.min_top2, False)}
    words = _level_words(level, gate.bootstrap_resamples, paired=False)
    for name in gate_metrics(task):
        floor, strict = floors[name]
        reasons.append(_floor_reason(name, challenger[name], floor, strict, words))
    new_points = point_scores(task, labels, rows.challenger)
    reasons.append(text_peer_reason(task, gate, new_points, text_peer, test_samples))
    if rows.champion is None:
        reasons.append("PASS: no champion yet, nothing to regress against")
    else:
        reasons += _champion_reasons(task, gate, rows, weights, level, evidence)
    if len(class_names(task)) == 2:
        reasons += _operating_reasons(gate, rows, weights, level, evidence)
    evidence["calibration"] = {
        side: {"gate_ece": _finite_or_none(calibration.ece(labels, model.probs))}
        for side, model in (("challenger", rows.challenger), ("champion", rows.champion))
        if model is not None}
    table = slice_checks.compare(task, gate, rows)
    evidence["slices"] = table.rows
    if rows.champion is not None:
        reasons += table.reasons()

    old_points = (None if rows.champion is None
                  else point_scores(task, labels, rows.champion))
    old_rule = decide_point_estimate(task, gate, checks_passed, new_points, old_points,
                                     text_peer=text_peer, test_samples=test_samples)
    evidence["point_estimate_rule"] = {"promote": old_rule[0], "reasons": old_rule[1]}
    return all(r.startswith("PASS") for r in reasons), reasons, evidence
