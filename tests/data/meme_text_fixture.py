"""Meme captions with the quirks of real ones, for the text peer's tests: code-mixed Hindi-English
in Latin script, censored slurs (`ch#tiyo`), emoji, hashtags, a very long caption and blank ones.
Hateful captions (label 1) share censored insults and hostile code-mixed phrases; benign ones
share friendly phrases, so a character n-gram model can learn them and a broken one cannot."""
from __future__ import annotations

import random

import pandas as pd

from pipeline.paths import Paths
from pipeline.taxonomy import class_names
from tests.data.manifest_fixture import build_manifest, write_manifest

HATEFUL = ["ye log ch#tiyo hai 🤬", "k*tte jaise log #gobackhome", "in sabko bahar nikalo 😡",
           "f**king vermin everywhere", "saale g@ddar log #traitors", "these b@st@rds again 🤮"]
BENIGN = ["bahut accha din hai 😊", "chai pe charcha with friends ☕", "#blessed family trip",
          "happy diwali sabko 🪔✨", "mummy ke haath ka khana 😋", "weekend vibes #chill"]
FILLERS = ["lol", "yaar", "bro", "😂😂", "#meme", "kya baat", "at the office", "on the bus", ""]
LONG_CAPTION = " ".join(["bahut lamba caption yaar 😂 #thread"] * 600)  # ~21k characters
BLANKS = ["", "   \t "]


def caption(label: int, rng: random.Random) -> tuple[str, int]:
    """A caption and its kind: the index of its core phrase (benign) or -1 (hateful)."""
    kind = -1 if label else rng.randrange(len(BENIGN))
    core = rng.choice(HATEFUL) if label else BENIGN[kind]
    return " ".join(w for w in (rng.choice(FILLERS), core, rng.choice(FILLERS)) if w), kind


def captions(labels: list[int], seed: int) -> tuple[list[str], list[int]]:
    rng = random.Random(seed)
    pairs = [caption(label, rng) for label in labels]
    return [text for text, _ in pairs], [kind for _, kind in pairs]


def binary_labels(count: int, seed: int) -> list[int]:
    """About 40% hateful, both classes present."""
    rng = random.Random(seed)
    labels = [int(rng.random() < 0.4) for _ in range(count)]
    labels[0], labels[1] = 0, 1
    return labels


def quirky_frame(rows: dict[str, int], task: str = "hateful_memes",
                 seed: int = 0) -> pd.DataFrame:
    """id, split, text, label per row, with the long caption in train and blank captions in
    every split. Seven classes: hateful captions are Hate (6), each benign phrase is one of the
    classes 0-5."""
    records = []
    for k, (split, count) in enumerate(rows.items()):
        labels = binary_labels(count, seed + k)
        texts, kinds = captions(labels, seed + 10 + k)
        if task == "moderation7":
            labels = [6 if kind < 0 else kind for kind in kinds]
        if count > 4:
            texts[2:4] = BLANKS
        if split == "train" and count > 5:
            texts[4] = LONG_CAPTION
        records += [{"id": f"synthetic:{split}.{i:04d}", "split": split, "text": t, "label": y}
                    for i, (t, y) in enumerate(zip(texts, labels))]
    return pd.DataFrame.from_records(records)


def write_quirky_manifest(paths: Paths, task: str = "hateful_memes",
                          rows: dict[str, int] | None = None, seed: int = 0) -> pd.DataFrame:
    """A real clean manifest (images in the store, every contract column) whose captions and
    labels are the quirky ones."""
    rows = rows or {"train": 60, "val": 24, "test": 24}
    frame = build_manifest(paths, task, rows, write=False)
    quirky = quirky_frame(rows, task, seed)
    names = class_names(task)
    frame["text"] = quirky["text"].to_numpy()
    frame["label"] = quirky["label"].to_numpy()
    frame["label_name"] = [names[y] for y in frame["label"]]
    frame["valid_pair"] = frame["label"] == 0
    write_manifest(paths, frame)
    return frame
