"""The promotion gate as a pure function of scores: no MLflow, no files.

Comparison rule (also in docs/architecture.md, "Decisions"): scores within SCORE_EPSILON of each
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

from pipeline.params import GateParams
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

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict:
        return {"decision": self.decision, "name": self.name, "challenger": self.challenger,
                "champion_seen": self.champion_seen, "reasons": self.reasons,
                "challenger_metrics": self.challenger_metrics,
                "champion_metrics": self.champion_metrics,
                "decision_id": self.decision_id, "evaluated_at": self.evaluated_at}

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
                   data.get("decision_id"), data.get("evaluated_at"))


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


def decide(task: str, gate: GateParams, checks_passed: bool, challenger: dict,
           champion: dict | None, *, text_peer: dict | None,
           test_samples: int | None = None) -> tuple[bool, list[str]]:
    """Apply the promotion gate. Returns (promote?, one reason per criterion, PASS or FAIL).
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
