"""The gate's decision report: one self-contained HTML page per gate run.

Everything a reviewer needs to check the decision without the registry: both models' metrics of
record with their intervals, the difference and its paired interval, the operating point
(recall and FPR at the served threshold), calibration, the slice table and every reason, PASS
or FAIL, plus what the point-estimate rule would have said. Inline CSS only: no script, no
external asset, so the file opens offline and can be mailed or attached to a ticket.
`operations.gate` writes it (atomically) to artifacts/gate/report.html and logs it on the
challenger's MLflow run.
"""
from __future__ import annotations

import html
import math

from pipeline.registry.gate import GateDecision

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 70em; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; font-size: 0.92em; }
th { background: #f2f2f2; }
.promote { color: #176b2c; } .keep { color: #a11; }
li.pass { color: #176b2c; } li.fail { color: #a11; font-weight: 600; }
tr.regressed td { background: #fde2e2; } tr.skipped td { color: #888; }
.note { color: #555; font-size: 0.9em; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _interval(interval: dict | None, signed: bool = False) -> str:
    if not interval:
        return "n/a"
    return (f"{_num(interval.get('point'), signed)} [{_num(interval.get('lower'), signed)}, "
            f"{_num(interval.get('upper'), signed)}]")


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        css = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{css}>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _reasons(reasons: list[str]) -> str:
    items = "".join(f'<li class="{"pass" if r.startswith("PASS") else "fail"}">{_e(r)}</li>'
                    for r in reasons)
    return f'<ul id="reasons">{items}</ul>'


def _metrics_section(decision: GateDecision) -> str:
    evidence = decision.evidence
    challenger, champion = evidence.get("challenger", {}), evidence.get("champion", {})
    deltas = evidence.get("delta", {})
    rows = [[name, _interval(challenger.get(name)), _interval(champion.get(name)),
             _interval(deltas.get(name), signed=True)] for name in challenger]
    return ("<h2>Metrics of record</h2>"
            + _table(["metric", f"challenger v{decision.challenger}",
                      f"champion v{decision.champion_seen or '(none)'}",
                      "challenger - champion (paired)"], rows))


def _operating_section(evidence: dict) -> str:
    operating = evidence.get("operating")
    if not operating:
        return ""
    rows = []
    for side in ("challenger", "champion"):
        found = operating.get(side)
        if found:
            rows.append([side, _interval(found.get("recall")), _interval(found.get("fpr"))])
    if operating.get("recall_delta"):
        rows.append(["challenger - champion", _interval(operating["recall_delta"], True), ""])
    return (f"<h2>Operating point (threshold chosen on val for FPR "
            f"{_e(operating.get('fpr_target'))})</h2>"
            + _table(["model", "test recall", "test FPR (benign rows flagged)"], rows))


def _calibration_section(evidence: dict) -> str:
    found = evidence.get("calibration")
    if not found:
        return ""
    rows = [[side, _num(values.get("temperature")), _num(values.get("evaluate_test_ece_before")),
             _num(values.get("evaluate_test_ece_after")), _num(values.get("gate_ece"))]
            for side, values in found.items()]
    return ("<h2>Calibration</h2>"
            + _table(["model", "temperature (fitted on val)", "test ECE before (evaluate)",
                      "test ECE after (evaluate)", "ECE of the served probabilities here"],
                     rows))


def _slices_section(evidence: dict) -> str:
    table = evidence.get("slices") or []
    if not table:
        return ('<h2>Slices</h2><p class="note">No slice column with more than one value.</p>')
    rows, classes = [], []
    for r in table:
        if r.get("regressed"):
            verdict, css = "REGRESSED", "regressed"
        elif r.get("compared"):
            verdict, css = "no regression", ""
        else:
            verdict, css = f"not compared: {r.get('note', '')}", "skipped"
        level = r.get("level")
        rows.append([r["column"], r["value"], r["metric"] + ("" if r["higher_is_better"]
                                                              else " (lower is better)"),
                     str(r["rows"]), _num(r.get("challenger")), _num(r.get("champion")),
                     _interval(r.get("delta"), signed=True),
                     "" if level is None else f"{level:.2%}", verdict])
        classes.append(css)
    return ('<h2>Slices</h2>' + _table(
        ["column", "value", "metric", "rows", "challenger", "champion",
         "difference [interval]", "level (Bonferroni)", "verdict"], rows, classes)
        ).replace("<table>", '<table id="slices">', 1)


def render(decision: GateDecision) -> str:
    """The report as one HTML string."""
    evidence = decision.evidence
    verdict = "promote" if decision.promoted else "keep"
    old = evidence.get("point_estimate_rule") or {}
    old_line = ""
    if old:
        said = "promote" if old.get("promote") else "keep"
        old_line = (f'<h2>The point-estimate rule</h2><p>On the same scores, the older rule '
                    f'(floors and champion comparison on point estimates) would say '
                    f'<b>{said}</b>.</p>' + _reasons(old.get("reasons", []))
                    ).replace('id="reasons"', 'id="point-estimate-reasons"')
    method = ""
    if evidence:
        method = (f'<p class="note">Intervals: {evidence["level"]:.0%} percentile bootstrap, '
                  f'{evidence["resamples"]} resamples of the {evidence["rows"]} test rows '
                  f'within each class (seed {evidence["seed"]}); differences are paired (both '
                  'models on the same resampled rows); slice intervals are widened for the '
                  'number of slice comparisons (Bonferroni).</p>')
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>Gate decision: {_e(decision.name)} v{_e(decision.challenger)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_e(decision.name)} version {_e(decision.challenger)}: "
        f'<span class="{verdict}" id="decision">{verdict}</span></h1>',
        f"<p>Champion seen: {_e(decision.champion_seen or 'none')}; decision "
        f"{_e(decision.decision_id or '-')} at {_e(decision.evaluated_at or '-')}.</p>",
        "<h2>Reasons</h2>", _reasons(decision.reasons), method,
        _metrics_section(decision), _operating_section(evidence),
        _calibration_section(evidence), _slices_section(evidence), old_line,
        "</body></html>", ""])
