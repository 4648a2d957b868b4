"""What the subtitle code knows about written text: CJK script, and where sentences and
clauses end. One vocabulary for cue building (`cues`) and live lines (`speech`)."""

from __future__ import annotations

__all__ = ["CJK_CLASS", "CLOSING", "has_cjk", "is_cjk", "is_clause_end", "is_sentence_end"]

CJK_RANGES = (
    (0x3000, 0x303F),  # CJK symbols and punctuation
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF00, 0xFFEF),  # Halfwidth and fullwidth forms
    (0x20000, 0x2FA1F),  # CJK Extensions B.. and compatibility supplement
)
#: The CJK ranges as the inside of a regular expression's character class.
CJK_CLASS = "".join(f"{chr(a)}-{chr(b)}" for a, b in CJK_RANGES)

# Punctuation, full-width forms written as escapes (ruff RUF001): ideographic full stop
# \u3002, full-width ? ! , ; : (\uff1f \uff01 \uff0c \uff1b \uff1a), ideographic comma \u3001.
SENTENCE_END = frozenset(".?!\u3002\uff1f\uff01")
CLAUSE_END = frozenset(",;:\uff0c\u3001\uff1b\uff1a\u2014\u2013\u2026")
#: Closing quotes and brackets, which may follow a sentence's or a clause's mark.
CLOSING = "\"')]}\u201d\u2019\u00bb\u300d\u300f\uff09\u300b\u3009\u3011\u3015\uff3d\uff5d"
ABBREVIATIONS = frozenset(
    {"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "prof.", "jr.", "sr."}
)


def is_cjk(char: str) -> bool:
    """Chinese/Japanese script characters, which are written without spaces between words."""
    return bool(char) and any(lo <= ord(char) <= hi for lo, hi in CJK_RANGES)


def has_cjk(text: str) -> bool:
    return any(is_cjk(c) for c in text)


def is_sentence_end(word: str) -> bool:
    """A word ending a sentence (closing quotes allowed after the mark; not "Mr.", "...")."""
    core = word.rstrip(CLOSING)
    if not core or core[-1] not in SENTENCE_END:
        return False
    return not (core.endswith("..") or core.lower() in ABBREVIATIONS)


def is_clause_end(word: str) -> bool:
    """A word after which a line or cue break reads naturally (comma, semicolon, ellipsis)."""
    core = word.rstrip(CLOSING)
    return bool(core) and (core[-1] in CLAUSE_END or core.endswith(".."))
