"""Evaluation plots: ROC, precision-recall, confusion and calibration, as PNG and as the CSV
files `dvc plots` reads.

Figures are built on `matplotlib.figure.Figure` with the Agg canvas, never pyplot, so nothing
needs a display and no global figure state leaks between calls. `write_plots` replaces its folder
whole (pipeline/atomic.py), as the stages write every other output.

CSV files (one row per point):
- roc.csv          class, fpr, tpr, threshold      (binary: the positive class; else one-vs-rest)
- pr.csv           class, recall, precision, threshold
- confusion.csv    actual, predicted               (class names; DVC's confusion template)
- calibration.csv  bin, mean_confidence, observed_frequency, count
  (binary: positive-class probability vs share of positives; multi-class: top-label confidence
  vs accuracy). These are the probabilities in the frame, which evaluate has temperature-scaled
  (what the served model returns); calibration.png also draws the bins before scaling when
  they are given (`uncalibrated`, pipeline/calibration.py `reliability_bins`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_curve

from pipeline import atomic, calibration
from pipeline.prediction_checks import probability_column

CALIBRATION_BINS = calibration.CALIBRATION_BINS


def _one_vs_rest(labels: np.ndarray, probs: np.ndarray, class_names) -> list[tuple]:
    """(class, is_class, score) for each curve to draw; binary draws the positive class only."""
    indices = [1] if len(class_names) == 2 else range(len(class_names))
    curves = []
    for k in indices:
        is_class = (labels == k).astype(int)
        if 0 < is_class.sum() < len(is_class):  # a curve needs both outcomes
            curves.append((class_names[k], is_class, probs[:, k]))
    return curves


def roc_points(labels, probs, class_names) -> pd.DataFrame:
    frames = []
    for name, truth, score in _one_vs_rest(labels, probs, class_names):
        fpr, tpr, thresholds = roc_curve(truth, score)
        frames.append(pd.DataFrame({"class": name, "fpr": fpr, "tpr": tpr,
                                    "threshold": np.clip(thresholds, 0, 1)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["class", "fpr", "tpr", "threshold"])


def pr_points(labels, probs, class_names) -> pd.DataFrame:
    frames = []
    for name, truth, score in _one_vs_rest(labels, probs, class_names):
        precision, recall, thresholds = precision_recall_curve(truth, score)
        # sklearn gives one threshold fewer than points; the last point (recall 0) has none.
        thresholds = np.append(thresholds, np.nan)
        frames.append(pd.DataFrame({"class": name, "recall": recall, "precision": precision,
                                    "threshold": thresholds}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["class", "recall", "precision", "threshold"])


CALIBRATION_COLUMNS = ["bin", "mean_confidence", "observed_frequency", "count"]


def calibration_points(labels, probs, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    return pd.DataFrame(calibration.reliability_bins(labels, probs, bins),
                        columns=CALIBRATION_COLUMNS)


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _curve_png(points: pd.DataFrame, x: str, y: str, title: str, path: Path,
               diagonal: bool) -> None:
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    for name, curve in points.groupby("class", sort=False):
        axes.plot(curve[x], curve[y], label=str(name))
    if diagonal:
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    axes.set(xlabel=x, ylabel=y, title=title, xlim=(0, 1), ylim=(0, 1.02))
    if len(points):
        axes.legend(fontsize=7, loc="lower right")
    _save(figure, path)


def _confusion_png(matrix: np.ndarray, class_names, path: Path) -> None:
    size = 3 + 0.6 * len(class_names)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right", fontsize=7)
    axes.set_yticks(ticks, class_names, fontsize=7)
    axes.set(xlabel="predicted", ylabel="actual", title="confusion")
    peak = matrix.max() if matrix.size else 0
    for i in ticks:
        for j in ticks:
            axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                      color="white" if peak and matrix[i, j] > peak / 2 else "black")
    _save(figure, path)


def _calibration_png(points: pd.DataFrame, path: Path,
                     uncalibrated: pd.DataFrame | None = None) -> None:
    figure = Figure(figsize=(5, 5))
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    if uncalibrated is not None and len(uncalibrated):
        axes.plot(uncalibrated["mean_confidence"], uncalibrated["observed_frequency"],
                  marker="x", linestyle=":", color="tab:orange", label="before scaling")
    axes.plot(points["mean_confidence"], points["observed_frequency"], marker="o",
              color="tab:blue",
              label="temperature-scaled" if uncalibrated is not None else "model")
    axes.set(xlabel="mean predicted confidence", ylabel="observed frequency",
             title="calibration", xlim=(0, 1), ylim=(0, 1))
    axes.legend(fontsize=7, loc="upper left")
    _save(figure, path)


def write_plots(frame: pd.DataFrame, class_names, out_dir: Path,
                uncalibrated: list[dict] | None = None) -> list[Path]:
    """Write the four plots (PNG + CSV) for one predictions frame; returns the files written.
    `uncalibrated`: the reliability bins before temperature scaling, drawn beside the frame's.

    They are drawn into a staging folder that replaces `out_dir` whole, so a plot that fails (or
    a killed stage) leaves the previous folder as it was, never a mix of old and new files."""
    with atomic.directory(out_dir) as staging:
        names = _draw_all(frame, class_names, staging, uncalibrated)
    return [out_dir / name for name in names]


def _draw_all(frame: pd.DataFrame, class_names, out_dir: Path,
              uncalibrated: list[dict] | None = None) -> list[str]:
    labels = frame["label"].to_numpy(dtype=int)
    probs = frame[[probability_column(n) for n in class_names]].to_numpy(dtype=float)
    predicted = frame["prediction"].to_numpy(dtype=int)

    roc, pr = roc_points(labels, probs, class_names), pr_points(labels, probs, class_names)
    calibration_table = calibration_points(labels, probs)
    names = np.asarray(class_names, dtype=object)
    confusion = pd.DataFrame({"actual": names[labels], "predicted": names[predicted]})
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(class_names))))

    written = []
    for name, table in (("roc", roc), ("pr", pr), ("confusion", confusion),
                        ("calibration", calibration_table)):
        table.to_csv(out_dir / f"{name}.csv", index=False)
        written.append(f"{name}.csv")
    _curve_png(roc, "fpr", "tpr", "ROC", out_dir / "roc.png", diagonal=True)
    _curve_png(pr, "recall", "precision", "precision-recall", out_dir / "pr.png", diagonal=False)
    _confusion_png(matrix, class_names, out_dir / "confusion.png")
    before = (None if uncalibrated is None
              else pd.DataFrame(uncalibrated, columns=CALIBRATION_COLUMNS))
    _calibration_png(calibration_table, out_dir / "calibration.png", before)
    return written + [f"{name}.png" for name in ("roc", "pr", "confusion", "calibration")]
