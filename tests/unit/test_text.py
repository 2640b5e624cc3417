import pytest

from pipeline import text


def test_normalise_nfc_collapses_whitespace_and_strips():
    decomposed = "Cafe\u0301"  # e + combining acute
    assert text.normalise(f"  {decomposed}\t\n  au\u00a0lait  ") == "Caf\u00e9 au lait"


def test_normalise_removes_control_invisible_and_surrogate_characters():
    assert text.normalise("a\x00b\x07c\ufeff\u200bd\ud800e") == "abcde"


def test_normalise_keeps_zero_width_joiner_in_emoji():
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    assert text.normalise(family) == family


@pytest.mark.parametrize("raw", [None, "", "   ", "\t\n\r", "\x00\x01", "\u200b"])
def test_clean_rejects_missing_or_blank_text(raw):
    with pytest.raises(text.TextRejected) as caught:
        text.clean(raw, max_chars=100)
    assert caught.value.reason == "empty_text"


def test_clean_rejects_bytes_that_are_not_utf8():
    with pytest.raises(text.TextRejected) as caught:
        text.clean(b"caf\xe9 latin-1", max_chars=100)
    assert caught.value.reason == "invalid_utf8"
    assert "byte 3" in caught.value.detail


def test_clean_accepts_utf8_bytes():
    assert text.clean("café".encode(), max_chars=100).text == "café"


def test_truncate_cuts_at_a_word_boundary():
    cut, truncated = text.truncate_at_word("alpha beta gamma delta", 13)
    assert (cut, truncated) == ("alpha beta", True)


def test_truncate_keeps_a_word_ending_exactly_at_the_limit():
    assert text.truncate_at_word("alpha beta gamma", 10) == ("alpha beta", True)


def test_truncate_cuts_a_single_long_token_hard():
    cut, truncated = text.truncate_at_word("a " + "x" * 50, 20)
    assert truncated and len(cut) == 20


def test_short_text_is_not_truncated():
    assert text.clean("short one", max_chars=100) == text.CleanText("short one", False)


def test_long_text_is_within_limit_after_clean():
    cleaned = text.clean("word " * 500, max_chars=100)
    assert cleaned.truncated and len(cleaned.text) <= 100 and not cleaned.text.endswith(" ")


def test_match_key_ignores_case_and_spacing():
    assert text.match_key("Hello   WORLD ") == text.match_key("hello world")
    assert text.match_key("Straße") == text.match_key("STRASSE")
    assert text.match_key("hello world") != text.match_key("hello, world")
