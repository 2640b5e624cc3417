import pytest

from pipeline import taxonomy
from pipeline.taxonomy import UnknownLabel, map_label


def test_label_spaces():
    assert taxonomy.num_classes("hateful_memes") == 2
    assert taxonomy.class_names("moderation7")[0] == "True/Neutral"
    assert taxonomy.class_names("moderation7")[-1] == "Hate"
    with pytest.raises(ValueError, match="allowed: hateful_memes, moderation7"):
        taxonomy.class_names("memes")


@pytest.mark.parametrize(
    ("source", "raw", "task", "expected"),
    [
        ("hateful_memes", 1, "hateful_memes", (1, "hateful")),
        ("hateful_memes", "0", "hateful_memes", (0, "not_hateful")),
        ("synthetic", "hateful", "hateful_memes", (1, "hateful")),
        ("synthetic", "Satire/Parody", "moderation7", (1, "Satire/Parody")),
        ("fakeddit", 5, "moderation7", (5, "Manipulated Content")),
        ("fakeddit", "0", "moderation7", (0, "True/Neutral")),
        ("coco", "anything", "moderation7", (0, "True/Neutral")),
        ("mmhs150k", [0, 1, 2], "moderation7", (6, "Hate")),
        ("mmhs150k", [0, 0, 4], "moderation7", (0, "True/Neutral")),
        ("mmhs150k", ["5", 5, 0], "moderation7", (6, "Hate")),
    ],
)
def test_map_label(source, raw, task, expected):
    assert map_label(source, raw, task) == expected


@pytest.mark.parametrize(
    ("source", "raw", "task"),
    [
        ("hateful_memes", 2, "hateful_memes"),
        ("hateful_memes", "maybe", "hateful_memes"),
        ("hateful_memes", None, "hateful_memes"),
        ("hateful_memes", True, "hateful_memes"),
        ("fakeddit", 6, "moderation7"),
        ("fakeddit", 1.5, "moderation7"),
        ("mmhs150k", [0, 1], "moderation7"),
        ("mmhs150k", [0, 1, 9], "moderation7"),
        ("mmhs150k", "1,2,3", "moderation7"),
        ("fakeddit", 1, "hateful_memes"),  # fakeddit does not feed the binary task
    ],
)
def test_unknown_labels_raise_with_a_reason(source, raw, task):
    with pytest.raises(UnknownLabel):
        map_label(source, raw, task)


def test_valid_pairs_are_the_neutral_class_only():
    assert taxonomy.is_valid_pair("moderation7", 0)
    assert not any(taxonomy.is_valid_pair("moderation7", k) for k in range(1, 7))
    assert taxonomy.is_valid_pair("hateful_memes", 0)
    assert not taxonomy.is_valid_pair("hateful_memes", 1)
