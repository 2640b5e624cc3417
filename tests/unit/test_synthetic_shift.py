"""The synthetic source's shift knobs: each moves only what it names, and off means unchanged."""
from __future__ import annotations

from pipeline.params import parse_params
from pipeline.sources import synthetic


def _items(task: str, **shift):
    return synthetic.generate_items(parse_params({"synthetic": {"items_per_task": 80,
                                                                "shift": shift}}), task)


def test_knobs_off_are_the_default_generation():
    for task in synthetic.TASK_CODES:
        assert _items(task) == _items(task, novel_shapes=False, novel_vocabulary=False,
                                      caption_style="plain")


def test_novel_vocabulary_changes_captions_only():
    base, shifted = _items("hateful_memes"), _items("hateful_memes", novel_vocabulary=True)
    assert [i.image for i in base] == [i.image for i in shifted]
    assert [i.label for i in base] == [i.label for i in shifted]
    old_words = {w for i in base for w in i.text.split()}
    new_words = {w for i in shifted for w in i.text.split()}
    assert {"Krellans", "kettles"} & new_words and not {"Glorpians", "toasters"} & new_words
    assert {"Glorpians", "toasters"} & old_words


def test_novel_shapes_keep_size_colour_and_place():
    base, shifted = _items("hateful_memes"), _items("hateful_memes", novel_shapes=True)
    assert [i.text for i in base] == [i.text for i in shifted]
    for old, new in zip(base, shifted):
        assert (old.image.width, old.image.height, old.image.rgb, old.image.cx, old.image.radius) \
            == (new.image.width, new.image.height, new.image.rgb, new.image.cx, new.image.radius)
    assert {i.image.shape for i in shifted} <= {*synthetic.NOVEL_HOSTILE_SHAPES,
                                                *synthetic.NOVEL_NEUTRAL_SHAPES}
    synthetic.render_image(next(i.image for i in shifted if i.image.shape == "arrow"))


def test_hashtag_captions_tag_every_word():
    shifted = _items("moderation7", caption_style="hashtags")
    assert all(word.startswith("#") for item in shifted for word in item.text.split())
