"""Classification metrics as plain functions of numpy arrays (shared by train and evaluate).

`labels` is an int array [N]; `probs` a float array [N, C] of class probabilities (rows sum to 1).
A metric that is undefined for the data (AUROC with one class present) is NaN, never an error:
a tiny validation split must not crash training.
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

# The metric each task is judged by: early stopping, best checkpoint and the registry gate use it.
PRIMARY_METRIC = {"hateful_memes": "auroc", "moderation7": "top1"}


def _check(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0]:
        raise ValueError(f"probs must be [N, C] with N = len(labels) = {labels.shape[0]}, "
                         f"got shape {probs.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    return labels, probs


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUROC of `scores` (probability of class 1); NaN when only one class is present."""
    labels = np.asarray(labels).reshape(-1)
    if len(np.unique(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    labels, probs = _check(labels, probs)
    if labels.size == 0:
        return math.nan
    k = min(k, probs.shape[1])
    # argsort is stable, so ties resolve toward the lower class index the same way every run
    top = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def binary_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """AUROC, accuracy, precision, recall, F1 and the confusion counts at `threshold`."""
    labels, probs = _check(labels, probs)
    if probs.shape[1] != 2:
        raise ValueError(f"binary metrics need probs [N, 2], got {probs.shape}")
    scores = probs[:, 1]
    predicted = (scores >= threshold).astype(np.int64)
    tp = int(((predicted == 1) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    n = max(labels.size, 1)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"auroc": auroc(labels, scores), "accuracy": (tp + tn) / n, "precision": precision,
            "recall": recall, "f1": f1, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
            "threshold": float(threshold)}


def multiclass_metrics(labels: np.ndarray, probs: np.ndarray) -> dict:
    """Top-1, top-2, macro-F1, per-class recall and the confusion matrix (rows: true class)."""
    labels, probs = _check(labels, probs)
    classes = np.arange(probs.shape[1])
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(labels, predicted, labels=classes)
    support = matrix.sum(axis=1)
    recall = np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)
    # macro-F1 over the classes present in labels or predictions; absent classes would add 0s
    present = np.union1d(labels, predicted)
    macro_f1 = (float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0))
                if labels.size else math.nan)
    return {"top1": top_k_accuracy(labels, probs, 1), "top2": top_k_accuracy(labels, probs, 2),
            "macro_f1": macro_f1, "per_class_recall": [float(r) for r in recall],
            "confusion": matrix.tolist()}


def task_metrics(task: str, labels: np.ndarray, probs: np.ndarray) -> dict:
    """The per-epoch scalar metrics of a task: binary → auroc/accuracy/f1; moderation7 →
    top1/top2/macro_f1. Keys carry no split prefix; callers add `val_`."""
    if task == "hateful_memes":
        full = binary_metrics(labels, probs)
        return {key: full[key] for key in ("auroc", "accuracy", "f1")}
    if task == "moderation7":
        full = multiclass_metrics(labels, probs)
        return {key: full[key] for key in ("top1", "top2", "macro_f1")}
    raise ValueError(f"unknown task {task!r}; allowed: {', '.join(PRIMARY_METRIC)}")


def primary_metric(task: str) -> str:
    try:
        return PRIMARY_METRIC[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(PRIMARY_METRIC)}") from None
