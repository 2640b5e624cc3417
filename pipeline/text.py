"""Text normalisation shared by ingest (what is stored) and dedupe (what counts as the same text).

Rejections carry a reason code that ingest writes to the quarantine.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

_WHITESPACE = re.compile(r"\s+")
# Byte-order marks and zero-width spaces survive NFC and look like nothing; they would make two
# identical captions differ. Zero-width (non-)joiners are kept: emoji and some scripts need them.
_INVISIBLE = dict.fromkeys(map(ord, "\ufeff\u200b\u2060"), None)


class TextRejected(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CleanText:
    text: str
    truncated: bool


def decode(raw: str | bytes | None) -> str | None:
    """Sources hand over bytes when they could not decode them; only UTF-8 is accepted."""
    if raw is None or isinstance(raw, str):
        return raw
    try:
        return bytes(raw).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TextRejected("invalid_utf8",
                           f"text is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def _is_dropped(char: str) -> bool:
    # Cc: control characters, except tabs and newlines, which the collapse step turns into a
    # space. Cs: lone surrogates from JSON escapes like "\ud800" cannot be written as UTF-8.
    return unicodedata.category(char) in ("Cc", "Cs") and not char.isspace()


def normalise(text: str) -> str:
    """NFC; invisible and control characters removed; whitespace collapsed to a space; stripped."""
    text = unicodedata.normalize("NFC", text).translate(_INVISIBLE)
    text = "".join(char for char in text if not _is_dropped(char))
    return _WHITESPACE.sub(" ", text).strip()


def truncate_at_word(text: str, max_chars: int) -> tuple[str, bool]:
    """Cut to at most `max_chars`, at the last space when that keeps at least half the budget
    (a single very long token is cut mid-word instead of losing everything)."""
    if len(text) <= max_chars:
        return text, False
    head = text[:max_chars]
    if text[max_chars] != " ":
        space = head.rfind(" ")
        if space >= max_chars // 2:
            head = head[:space]
    return head.rstrip(), True


def clean(raw: str | bytes | None, max_chars: int) -> CleanText:
    """The stored form of a caption, or TextRejected (`invalid_utf8`, `empty_text`)."""
    decoded = decode(raw)
    if decoded is None:
        raise TextRejected("empty_text", "text is missing")
    normalised = normalise(decoded)
    if not normalised:
        raise TextRejected("empty_text",
                           f"text is empty after normalisation (was {decoded[:40]!r})")
    text, truncated = truncate_at_word(normalised, max_chars)
    return CleanText(text, truncated)


def match_key(text: str) -> str:
    """Two captions are 'the same text' for dedupe when their keys are equal."""
    return normalise(text).casefold()
