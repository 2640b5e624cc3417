"""The text peer's pure functions (pipeline/text_peer.py) on meme captions with real quirks:
it trains, picks C on val, scores; one-class splits fall back as documented; empty splits and
captions without n-grams stop with a clear error."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest

from pipeline import metrics, text_peer
from pipeline.params import ParamsError, TextPeerParams, parse_params
from tests.data.meme_text_fixture import LONG_CAPTION, quirky_frame

SETTINGS = TextPeerParams()
ROWS = {"train": 80, "val": 30, "test": 30}


def splits(task: str = "hateful_memes", rows=ROWS):
    frame = quirky_frame(rows, task)
    return {s: frame[frame["split"] == s] for s in rows}


def tune(data, task="hateful_memes", settings=SETTINGS):
    return text_peer.tune(task, data["train"]["text"], data["train"]["label"],
                          data["val"]["text"], data["val"]["label"], settings)


def test_the_peer_learns_quirky_captions_and_scores_test():
    data = splits()
    assert LONG_CAPTION in set(data["train"]["text"])  # ~21k characters, vectorised like any
    assert {"", "   \t "} <= set(data["test"]["text"])
    tuned = tune(data)
    assert tuned.fallback is None and tuned.vocabulary > 100
    probs = tuned.peer.predict_proba(list(data["test"]["text"]) + [None])  # null → ""
    assert probs.shape == (31, 2) and np.allclose(probs.sum(axis=1), 1)
    # censored insults, emoji and code-mixed phrases are learnable from character n-grams
    assert text_peer.score("hateful_memes", data["test"]["label"].to_numpy(), probs[:30]) > 0.9


@pytest.mark.parametrize("task", ["hateful_memes", "moderation7"])
def test_c_is_the_grid_value_with_the_best_val_score(task):
    data = splits(task)
    tuned = tune(data, task)
    assert set(tuned.val_scores) == set(SETTINGS.c_grid)
    best = max(tuned.val_scores.values())
    assert tuned.val_scores[tuned.c] == best
    assert tuned.c == min(c for c, s in tuned.val_scores.items() if s == best)
    if task == "moderation7":  # here the grid ranks: strong regularisation loses on val
        assert tuned.val_scores[min(SETTINGS.c_grid)] < best
    # the returned model is the one that earned that score on val
    val = tuned.peer.predict_proba(list(data["val"]["text"]))
    assert text_peer.score(task, data["val"]["label"].to_numpy(), val) == pytest.approx(best)


def test_ties_go_to_the_smaller_c_and_undefined_scores_are_skipped():
    assert text_peer.best_c({0.1: 0.8, 1.0: 0.8 + 1e-12, 10.0: 0.7}) == 0.1
    assert text_peer.best_c({0.1: math.nan, 1.0: 0.6, 10.0: 0.9}) == 10.0
    assert text_peer.best_c({0.1: math.nan}) is None


def test_one_class_train_falls_back_to_the_constant_prior():
    data = splits()
    only_benign = data["train"][data["train"]["label"] == 0]
    tuned = text_peer.tune("hateful_memes", only_benign["text"], only_benign["label"],
                           data["val"]["text"], data["val"]["label"], SETTINGS)
    assert tuned.c is None and "train holds one class (not_hateful)" in tuned.fallback
    probs = tuned.peer.predict_proba(list(data["test"]["text"]))
    assert np.array_equal(probs, np.tile([1.0, 0.0], (30, 1)))
    assert text_peer.score("hateful_memes", data["test"]["label"].to_numpy(), probs) == 0.5


def test_one_class_val_uses_fallback_c():
    data = splits()
    val = data["val"][data["val"]["label"] == 1]
    settings = TextPeerParams(c_grid=(0.1, 10.0), fallback_c=3.0)
    tuned = text_peer.tune("hateful_memes", data["train"]["text"], data["train"]["label"],
                           val["text"], val["label"], settings)
    assert tuned.c == 3.0 and "val cannot rank the grid" in tuned.fallback
    assert all(math.isnan(s) for s in tuned.val_scores.values())
    assert tuned.peer.model.C == 3.0


@pytest.mark.parametrize("empty", ["train", "val"])
def test_an_empty_split_is_a_clear_error(empty):
    data = splits()
    data[empty] = data[empty].iloc[:0]
    with pytest.raises(text_peer.TextPeerError, match=f"the {empty} split has no rows"):
        tune(data)


def test_captions_without_ngrams_are_a_clear_error():
    data = splits()
    data["train"] = data["train"].assign(text=["", " ", "\t\n"] * 26 + ["", ""])
    with pytest.raises(text_peer.TextPeerError, match="no character n-gram of length 2-5"):
        tune(data)


def test_seven_classes_are_a_multinomial_peer_judged_on_top1():
    data = splits("moderation7")
    hate = data["train"]["label"] != 5  # class 5 never seen in train
    tuned = text_peer.tune("moderation7", data["train"]["text"][hate],
                           data["train"]["label"][hate], data["val"]["text"],
                           data["val"]["label"], SETTINGS)
    assert text_peer.gate_metric("moderation7") == "top1"
    probs = tuned.peer.predict_proba(list(data["test"]["text"]))
    assert probs.shape == (30, 7) and np.all(probs[:, 5] == 0)
    labels = data["test"]["label"].to_numpy()
    result = text_peer.split_metrics("moderation7", labels, probs, None)
    assert result["top1"] == text_peer.score("moderation7", labels, probs) \
        == metrics.top_k_accuracy(labels, probs, 1)
    assert result["top2"] >= result["top1"] > 0.5 and "auroc" not in result


def test_params_are_validated():
    for bad, message in (({"ngram_min": 6}, "ngram_min (6) must not exceed ngram_max"),
                         ({"c_grid": []}, "c_grid must hold at least one"),
                         ({"c_grid": [1.0, -1.0]}, "c_grid must hold at least one"),
                         ({"c_grid": [1.0, 1.0]}, "lists a C twice"),
                         ({"analyzer": "word"}, "text_peer.analyzer")):
        with pytest.raises(ParamsError, match=re.escape(message)):
            parse_params({"text_peer": bad})
    with pytest.raises(ParamsError, match="min_gain_over_text_peer"):
        parse_params({"registry": {"gate": {"min_gain_over_text_peer": -0.1}}})
