"""The two label spaces and how every source's labels map into them.

A mapping failure raises `UnknownLabel` with a reason that ingest writes to the quarantine.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

# ASCII digits only (str.isdigit also accepts "²" and other digits int() refuses), and few of
# them: a label is a small index, and int() raises on more than 4,300 digits.
_INTEGER = re.compile(r"-?[0-9]{1,18}")

TASKS = ("hateful_memes", "moderation7")

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "hateful_memes": ("not_hateful", "hateful"),
    "moderation7": (
        "True/Neutral",
        "Satire/Parody",
        "Misleading Content",
        "Imposter Content",
        "False Connection",
        "Manipulated Content",
        "Hate",
    ),
}

# Which task each source feeds. `synthetic` lands one folder per task.
SOURCE_TASKS: dict[str, tuple[str, ...]] = {
    "synthetic": ("hateful_memes", "moderation7"),
    "hateful_memes": ("hateful_memes",),
    "mmhs150k": ("moderation7",),
    "fakeddit": ("moderation7",),
    "coco": ("moderation7",),
    "incoming": ("hateful_memes", "moderation7"),  # batches carry labels of params.task
}

# Fakeddit's 6_way_label values, in Fakeddit's own order, are the first six moderation7 classes.
FAKEDDIT_6WAY = CLASS_NAMES["moderation7"][:6]
# MMHS150K annotator labels: 0 NotHate, 1 Racist, 2 Sexist, 3 Homophobe, 4 Religion, 5 OtherHate.
MMHS_LABELS = ("NotHate", "Racist", "Sexist", "Homophobe", "Religion", "OtherHate")


class UnknownLabel(ValueError):
    """A source label that has no place in the task's label space."""


def num_classes(task: str) -> int:
    return len(class_names(task))


def class_names(task: str) -> tuple[str, ...]:
    try:
        return CLASS_NAMES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; allowed: {', '.join(TASKS)}") from None


def _shown(raw: Any) -> str:
    """A label for a quarantine detail: its repr, cut short (labels can be megabytes)."""
    text = repr(raw)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} chars)"


def _as_int(raw: Any) -> int:
    if isinstance(raw, bool):
        raise UnknownLabel(f"boolean label {raw!r}")
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and _INTEGER.fullmatch(raw.strip()):
        return int(raw.strip())
    raise UnknownLabel(f"label {_shown(raw)} is not an integer")


def _by_name(task: str, raw: Any) -> int:
    names = class_names(task)
    if isinstance(raw, str) and raw in names:
        return names.index(raw)
    index = _as_int(raw)
    if 0 <= index < len(names):
        return index
    raise UnknownLabel(f"label {_shown(raw)} is not one of {list(names)}")


def mmhs_majority(annotator_labels: Any) -> int:
    """MMHS150K: Hate when most of the three annotators chose a hate class, else True/Neutral."""
    if not isinstance(annotator_labels, (list, tuple)) or len(annotator_labels) != 3:
        raise UnknownLabel(f"expected three annotator labels, got {_shown(annotator_labels)}")
    votes = [_as_int(v) for v in annotator_labels]
    if any(not 0 <= v < len(MMHS_LABELS) for v in votes):
        raise UnknownLabel(f"annotator label outside 0..5 in {votes}")
    hate_votes = sum(v != 0 for v in votes)
    names = CLASS_NAMES["moderation7"]
    return names.index("Hate") if hate_votes >= 2 else names.index("True/Neutral")


def map_label(source: str, raw_label: Any, task: str) -> tuple[int, str]:
    """Map a source's raw label into `task`'s label space: (index, name)."""
    if task not in SOURCE_TASKS.get(source, ()):
        raise UnknownLabel(f"source {source!r} does not feed task {task!r}")
    if raw_label is None:
        raise UnknownLabel("missing label")
    if source == "mmhs150k":
        index = mmhs_majority(raw_label)
    elif source == "fakeddit":
        index = _as_int(raw_label)
        if not 0 <= index < len(FAKEDDIT_6WAY):
            raise UnknownLabel(f"6_way_label {_shown(raw_label)} is outside 0..5")
    elif source == "coco":
        index = 0  # captions describe their image: True/Neutral
    else:  # synthetic, hateful_memes and incoming give an index or a class name of the task itself
        index = _by_name(task, raw_label)
    return index, class_names(task)[index]


def is_valid_pair(task: str, label: int) -> bool:
    """Pairs the contrastive loss may use: True/Neutral (moderation7), not hateful (binary)."""
    return label == 0


def counts_by_name(task: str, labels: list[int]) -> dict[str, int]:
    counts = Counter(labels)
    return {name: counts.get(i, 0) for i, name in enumerate(class_names(task))}
