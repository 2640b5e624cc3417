"""The promotion gate as a pure function of scores: no MLflow, no files.

Comparison rule (also in docs/architecture.md, "Decisions"): scores within SCORE_EPSILON of each
other are equal. Floors: AUROC must be strictly above `min_auroc` (an AUROC equal to the floor
fails), top-1/top-2 must reach `min_top1`/`min_top2` (equal passes). Against the champion, the
challenger wins a tie: it passes when it is at most `regression_tolerance` below the champion,
so an equal score promotes the challenger, the model trained on the newer data.
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

    @property
    def promoted(self) -> bool:
        return self.decision == PROMOTE

    def to_dict(self) -> dict:
        return {"decision": self.decision, "name": self.name, "challenger": self.challenger,
                "champion_seen": self.champion_seen, "reasons": self.reasons,
                "challenger_metrics": self.challenger_metrics,
                "champion_metrics": self.champion_metrics}

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
                   dict(data.get("champion_metrics") or {}))


def gate_metrics(task: str) -> tuple[str, ...]:
    """The metrics of record the gate compares: AUROC (binary); top-1 and top-2 (seven classes)."""
    return ("auroc",) if len(class_names(task)) == 2 else ("top1", "top2")


def fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _at_least(value: float, bound: float) -> bool:
    return value >= bound - SCORE_EPSILON


def decide(task: str, gate: GateParams, checks_passed: bool, challenger: dict,
           champion: dict | None) -> tuple[bool, list[str]]:
    """Apply the promotion gate. Returns (promote?, one reason per criterion, PASS or FAIL)."""
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
