"""The text peer: a TF-IDF character n-gram logistic regression over the caption alone.

A multimodal model that loses to it is not worth deploying (on a public meme set the shipped
model did: test AUROC 0.64 against the peer's 0.77), so every run trains it on the same train
split, tunes its C on val and scores it on the model's test rows; the gate refuses a challenger
that does not beat it (pipeline/registry/gate.py). Pure functions of texts and labels: the stage
(pipeline/stages/text_peer.py) does the file I/O, tests and benchmarks call these directly.

Rules, also in docs/architecture.md:
- C is the grid value with the best val score (AUROC; top-1 for seven classes); scores within
  TIE of each other are equal, and a tie goes to the smaller C (the more regularised model).
- Val that cannot rank the grid (one class: AUROC undefined for every C) → `fallback_c`.
- Train holding a single class → no regression can be fitted; the peer is the constant train
  prior (every row gets the train class shares: AUROC 0.5). Both fallbacks are named in `fallback`.
- An empty split, or train captions without a single n-gram → TextPeerError.
- A missing caption (null) is scored as the empty string and counted, never dropped.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve

from pipeline import metrics
from pipeline.params import TextPeerParams
from pipeline.paths import Paths
from pipeline.taxonomy import class_names

STAGE = "text_peer"
# Val scores closer than this are float noise (means over at most a few thousand rows).
TIE = 1e-9


class TextPeerError(ValueError):
    """The peer cannot be trained or scored on this data (empty split, no n-grams)."""


def output_dir(paths: Paths):
    return paths.artifacts / STAGE


def metrics_path(paths: Paths):
    """metrics.json of the text_peer stage: what register records and the gate compares."""
    return output_dir(paths) / "metrics.json"


def gate_metric(task: str) -> str:
    """The one score the gate compares with the challenger's: AUROC, or top-1 for seven classes."""
    return metrics.primary_metric(task)


def clean_texts(texts) -> tuple[list[str], int]:
    """Captions as strings (null → ""), and how many were null or blank."""
    out = ["" if t is None or (isinstance(t, float) and math.isnan(t)) else str(t)
           for t in texts]
    return out, sum(1 for t in out if not t.strip())


@dataclass
class Peer:
    """A fitted peer: the vectoriser, and the regression or (fallback) the constant prior."""
    n_classes: int
    vectorizer: TfidfVectorizer
    model: LogisticRegression | None = None
    prior: np.ndarray | None = None

    def predict_proba(self, texts) -> np.ndarray:
        """[N, n_classes] probabilities; classes absent from train get probability 0."""
        texts, _ = clean_texts(texts)
        if self.model is None:
            return np.tile(self.prior, (len(texts), 1))
        probs = np.zeros((len(texts), self.n_classes))
        if texts:
            probs[:, self.model.classes_] = self.model.predict_proba(
                self.vectorizer.transform(texts))
        return probs


@dataclass
class Tuned:
    peer: Peer
    c: float | None  # None: the constant prior (train held one class)
    val_scores: dict[float, float]  # C -> val score of record (NaN where undefined)
    fallback: str | None = None  # why the rule above did not apply, else None
    vocabulary: int = 0  # n-grams the vectoriser kept


def require_rows(split: str, labels: np.ndarray, purpose: str) -> None:
    if len(labels) == 0:
        raise TextPeerError(f"the {split} split has no rows: nothing to {purpose} the text "
                            "peer on")


def vectorizer(settings: TextPeerParams) -> TfidfVectorizer:
    # sublinear tf: a caption repeating a word is not that much more about it
    return TfidfVectorizer(analyzer=settings.analyzer,
                           ngram_range=(settings.ngram_min, settings.ngram_max),
                           max_features=settings.max_features, sublinear_tf=True,
                           lowercase=True, dtype=np.float32)


def _regression(settings: TextPeerParams, c: float) -> LogisticRegression:
    # lbfgs: multinomial for more than two classes, deterministic for a given input
    return LogisticRegression(C=c, max_iter=settings.max_iter, random_state=settings.seed)


def score(task: str, labels: np.ndarray, probs: np.ndarray) -> float:
    """The score of record of probabilities: AUROC (binary), top-1 (seven classes); NaN when
    undefined (a one-class binary split)."""
    if len(class_names(task)) == 2:
        return metrics.auroc(labels, probs[:, 1])
    return metrics.top_k_accuracy(labels, probs, 1)


def best_c(val_scores: dict[float, float]) -> float | None:
    """The C with the best val score; a tie (within TIE) goes to the smaller C. None when no
    score is defined."""
    defined = {c: s for c, s in val_scores.items() if math.isfinite(s)}
    if not defined:
        return None
    top = max(defined.values())
    return min(c for c, s in defined.items() if s >= top - TIE)


def tune(task: str, train_texts, train_labels, val_texts, val_labels,
         settings: TextPeerParams) -> Tuned:
    """Fit the vectoriser on train, one regression per C of the grid, keep the val-best."""
    n_classes = len(class_names(task))
    train_texts, _ = clean_texts(train_texts)
    val_texts, _ = clean_texts(val_texts)
    train_labels = np.asarray(train_labels, dtype=np.int64)
    val_labels = np.asarray(val_labels, dtype=np.int64)
    require_rows("train", train_labels, "train")
    require_rows("val", val_labels, "tune")
    vec = vectorizer(settings)
    try:
        x_train = vec.fit_transform(train_texts)
    except ValueError as exc:  # sklearn: "empty vocabulary; perhaps the documents only contain..."
        raise TextPeerError(f"the train captions hold no character n-gram of length "
                            f"{settings.ngram_min}-{settings.ngram_max} ({exc})") from None
    vocabulary = len(vec.vocabulary_)
    present = np.unique(train_labels)
    if len(present) < 2:
        prior = np.bincount(train_labels, minlength=n_classes) / len(train_labels)
        names = class_names(task)
        return Tuned(Peer(n_classes, vec, prior=prior), None, {},
                     fallback=f"train holds one class ({names[present[0]]}): the peer is the "
                              "constant train prior", vocabulary=vocabulary)
    x_val = vec.transform(val_texts)
    fitted, val_scores = {}, {}
    for c in sorted(settings.c_grid):
        model = _regression(settings, c).fit(x_train, train_labels)
        fitted[c] = Peer(n_classes, vec, model=model)
        probs = np.zeros((len(val_labels), n_classes))
        probs[:, model.classes_] = model.predict_proba(x_val)
        val_scores[c] = score(task, val_labels, probs)
    chosen, fallback = best_c(val_scores), None
    if chosen is None:
        chosen = settings.fallback_c
        fallback = (f"val cannot rank the grid ({gate_metric(task)} undefined for every C: "
                    f"val holds one class): C = fallback_c {chosen}")
        peer = fitted.get(chosen) or Peer(n_classes, vec, model=_regression(
            settings, chosen).fit(x_train, train_labels))
    else:
        peer = fitted[chosen]
    return Tuned(peer, chosen, val_scores, fallback=fallback, vocabulary=vocabulary)


def youden_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    """The threshold maximising TPR - FPR on val, as evaluate's default rule; 0.5 when val holds
    one class (no curve)."""
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = roc_curve(labels, scores)
    # roc_curve's first threshold is +inf ("predict nothing positive"); cap it at 1
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def split_metrics(task: str, labels: np.ndarray, probs: np.ndarray,
                  threshold: float | None) -> dict:
    """The scalar metrics of one split, named as evaluate names them: binary AUROC, accuracy,
    precision, recall, F1, confusion counts at `threshold`; seven classes top-1, top-2,
    macro-F1 and per-class recall."""
    labels = np.asarray(labels, dtype=np.int64)
    result: dict = {"samples": int(len(labels))}
    if not len(labels):
        return result
    if threshold is not None:
        return result | metrics.binary_metrics(labels, probs, threshold)
    full = metrics.multiclass_metrics(labels, probs)
    return result | {"top1": full["top1"], "top2": full["top2"], "macro_f1": full["macro_f1"],
                     "per_class_recall": dict(zip(class_names(task), full["per_class_recall"]))}
