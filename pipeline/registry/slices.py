"""No regression on any slice: the gate's per-slice comparison of challenger and champion.

Slices come from the data: every value of every slice column the gate was given (source, class,
and the grouping columns a source provides, e.g. synthetic `group`). A column with one value is
the whole test set, judged by the overall criteria, and is skipped.

Per slice the metrics compared are (challenger - champion, paired bootstrap on the slice's own
rows, resampled within each class):
- binary: AUROC (slices holding both classes), recall at each model's served threshold (on the
  slice's positives: harmful posts of that group missed) and FPR there (on its negatives:
  benign posts of that group removed; lower is better);
- seven classes: top-1 accuracy.
A comparison is made when the rows it is computed on (the slice; its positives for recall, its
negatives for FPR) number at least `gate.min_slice_rows`. Each interval is at level
1 - alpha / m for the m comparisons made (Bonferroni): with a dozen slices, 95% intervals would
refuse an equal challenger on some slice by chance far more often than 5% of the time.

A slice regresses when its whole interval lies on the worse side of `gate.slice_tolerance`
(upper bound below -tolerance; for FPR, lower bound above +tolerance); any regression refuses
the challenger, and the reason names the slice.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from pipeline import bootstrap
from pipeline.params import GateParams
from pipeline.taxonomy import class_names

EPSILON = 1e-9


@dataclass(frozen=True)
class _Candidate:
    column: str
    value: str
    metric: str
    higher_is_better: bool
    mask: np.ndarray  # the rows the metric is computed on


@dataclass
class SliceTable:
    """One row per (slice, metric): compared or why not, the interval, regressed or not."""
    rows: list[dict] = field(default_factory=list)
    comparisons: int = 0
    level: float | None = None
    min_rows: int = 0
    tolerance: float = 0.0

    def regressions(self) -> list[dict]:
        return [r for r in self.rows if r.get("regressed")]

    def reasons(self) -> list[str]:
        """One FAIL per regressed slice, or one PASS saying what was compared."""
        failed = [self._fail(r) for r in self.regressions()]
        if failed:
            return failed
        if not self.comparisons:
            return [f"PASS: no slice has {self.min_rows} or more rows to compare on; no slice "
                    "was judged"]
        small = sum(1 for r in self.rows if not r["compared"])
        return [f"PASS: no slice regresses ({self.comparisons} slice comparisons at "
                f"{self.level:.2%} paired intervals, Bonferroni; {small} too small or "
                "undefined to judge)"]

    def _fail(self, row: dict) -> str:
        delta = row["delta"]
        side = (f"upper bound {delta['upper']:+.4f} is below -{self.tolerance}"
                if row["higher_is_better"] else
                f"lower bound {delta['lower']:+.4f} is above +{self.tolerance}")
        counted = {"recall": "positive rows", "fpr": "benign rows"}.get(row["metric"], "rows")
        return (f"FAIL: slice {row['column']}={row['value']} ({row['rows']} {counted}): "
                f"{row['metric']} {_fmt(row['challenger'])} vs champion "
                f"{_fmt(row['champion'])}, difference {delta['point']:+.4f} "
                f"[{delta['lower']:+.4f}, {delta['upper']:+.4f}] ({self.level:.2%} paired "
                f"bootstrap, Bonferroni over {self.comparisons} slice comparisons); {side}")


def _fmt(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _candidates(task: str, rows) -> list[_Candidate]:
    binary = len(class_names(task)) == 2
    labels = rows.labels
    found = []
    for column in sorted(rows.slices):
        values = np.asarray([str(v) for v in rows.slices[column]], dtype=object)
        distinct = sorted(set(values))
        if len(distinct) < 2:  # the whole test set: judged by the overall criteria
            continue
        for value in distinct:
            inside = values == value
            if binary:
                found += [_Candidate(column, value, "auroc", True, inside),
                          _Candidate(column, value, "recall", True, inside & (labels == 1)),
                          _Candidate(column, value, "fpr", False, inside & (labels == 0))]
            else:
                found.append(_Candidate(column, value, "top1", True, inside))
    return found


def _metric(candidate: _Candidate, labels: np.ndarray, model) -> bootstrap.Metric | None:
    """The candidate's metric over the masked rows of one model, or None when it cannot be
    computed (AUROC with one class, recall/FPR without served decisions)."""
    rows = candidate.mask
    if candidate.metric == "auroc":
        if np.unique(labels[rows]).size < 2:
            return None
        return bootstrap.auroc(labels[rows], model.probs[rows, 1])
    if candidate.metric == "top1":
        return bootstrap.top_k(labels[rows], model.probs[rows], 1)
    if model.flags is None:
        return None
    return bootstrap.rate(np.asarray(model.flags)[rows])


def compare(task: str, gate: GateParams, rows) -> SliceTable:
    """The slice table of `rows` (a gate.GateRows; gate imports this module, not the reverse)."""
    labels = np.asarray(rows.labels).reshape(-1)
    table = SliceTable(min_rows=gate.min_slice_rows, tolerance=gate.slice_tolerance)
    planned = []
    for candidate in _candidates(task, rows):
        count = int(candidate.mask.sum())
        new = _metric(candidate, labels, rows.challenger)
        old = None if rows.champion is None else _metric(candidate, labels, rows.champion)
        entry = {"column": candidate.column, "value": candidate.value,
                 "metric": candidate.metric, "higher_is_better": candidate.higher_is_better,
                 "rows": count, "compared": False, "regressed": False, "delta": None,
                 "challenger": None if new is None else _point(new, count),
                 "champion": None if old is None else _point(old, count)}
        if count == 0:
            continue
        if new is None or (rows.champion is not None and old is None):
            entry["note"] = "undefined here (one class, or no served decisions)"
        elif rows.champion is None:
            entry["note"] = "no champion to compare with"
        elif count < gate.min_slice_rows:
            entry["note"] = f"{count} rows, fewer than min_slice_rows {gate.min_slice_rows}"
        else:
            planned.append((entry, candidate, new, old))
        table.rows.append(entry)
    table.comparisons = len(planned)
    if not planned:
        return table
    table.level = 1.0 - gate.alpha / len(planned)
    for entry, candidate, new, old in planned:
        name = f"slice:{candidate.column}={candidate.value}:{candidate.metric}"
        weights = bootstrap.resample_weights(labels[candidate.mask], gate.bootstrap_resamples,
                                             bootstrap.rng_for(gate.seed, name))
        delta = bootstrap.paired(new, old, weights, table.level)
        if candidate.higher_is_better:
            worse = delta.defined and delta.upper < -gate.slice_tolerance - EPSILON
        else:
            worse = delta.defined and delta.lower > gate.slice_tolerance + EPSILON
        entry.update(compared=True, regressed=bool(worse), delta=delta.to_dict(),
                     level=table.level)
    return table


def _point(metric: bootstrap.Metric, count: int) -> float | None:
    value = float(metric(np.ones((1, count)))[0])
    return value if math.isfinite(value) else None
