"""Subtitle cues from a word-aligned transcript, following Netflix-style timed-text rules.

Pure Python, standard library only. The pipeline:

1. `_pieces`: every word of every segment becomes a timed piece of text. Words without
   timings are interpolated, segments without words are spread over their span by
   character count, CJK (Chinese/Japanese) words are cut into single characters so text
   without spaces can break anywhere, and all times become whole milliseconds, clamped
   to be monotonic.
2. `_units`: pieces that must not be separated (closing punctuation, an opening
   bracket and what follows) are glued into the units a line or cue may break between.
3. `_Segmenter`: a dynamic programme picks where cues end, under hard limits (lines,
   characters, duration, long pauses) and soft costs (sentence ends, punctuation,
   pauses, reading speed, flash cues), so the result is the cheapest, deterministically.
4. `_break_lines`: each cue's units are broken into the fewest lines, balanced, bottom
   heavy rather than top heavy, preferably after punctuation.
5. `_timings`: cues start at their first word and end a short linger after their last;
   longer for minimum duration and reading speed, never closer than the minimum gap to
   the next speech; chained to the next cue only across a real pause under 0.5 s.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from vsrt_service.core.config import CueSettings
from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.core.speech import normalize
from vsrt_service.core.text import CJK_CLASS, CLOSING, has_cjk, is_clause_end, is_sentence_end

__all__ = ["UNTIMED_SECONDS_PER_CHAR", "Cue", "build_cues", "round_ms"]

#: A gap shorter than this between two cues is closed down to the minimum gap (chaining).
CHAIN_GAP_SECONDS = 0.5

#: Longest a word without timings is assumed to last, per character (digits are slow).
UNTIMED_SECONDS_PER_CHAR = 0.25

_DEFAULT_RULES = CueSettings()

# Soft costs of the cue segmentation (in "cue" units: one extra cue costs 1.0).
_COST_PER_CUE = 1.0
_COST_END_MID_PHRASE = 3.0
_COST_END_WEAK_WORD = 0.5
_COST_END_SEGMENT = 1.2
_COST_END_CLAUSE = 0.6
_COST_INNER_SENTENCE_END = 1.5
_COST_INNER_PAUSE_PER_S = 1.0
_INNER_PAUSE_FREE_S = 0.3
_COST_READING_SPEED = 3.0
_COST_FLASH = 2.0
_COST_FILL = 0.3
_COST_NO_ROOM = 1000.0

_CLOSING_PUNCT = frozenset(  # ASCII quotes left out: they may open as well as close
    CLOSING.replace("'", "").replace('"', "")
    + ".,;:?!%\u3002\uff0c\u3001\uff1b\uff1a\uff1f\uff01\u2026\u30fb\u2025"
)
_OPENING_PUNCT = frozenset(
    "([{\u00ab\u201c\u2018\u300c\u300e\uff08\u300a\u3008\u3010\u3014\uff3b\uff5b\u00bf\u00a1"
)
#: Japanese characters that never start a word: small kana and the long-vowel mark.
_JA_DEPENDENT = frozenset("ぁぃぅぇぉっゃゅょゎゕゖァィゥェォッャュョヮヵヶー")
_HYPHENS = frozenset("-\u2010\u2011")
#: Words that lead into what follows (English); a line or cue should not end on one.
_WEAK_ENDINGS = frozenset(
    "a an the and or but nor so to of in on at by for with from into as that than if "
    "my your his her its our their this these those i we you he she they is are was were".split()
)
_CJK_SPLIT = re.compile(
    "|".join(
        [
            f"[{CJK_CLASS}]",
            f"[^{CJK_CLASS}]+",
        ]
    )
)


@dataclass(frozen=True)
class Cue:
    """One subtitle: times in seconds (whole milliseconds), lines joined with "\\n".

    `speaker` is who says a one-speaker cue. A two-line dialogue cue has `speakers`, one per
    line in order, and no `speaker`: one label cannot say who says which line, and VTT needs
    a voice per line. Both empty: nobody is known (no diarization)."""

    start: float
    end: float
    text: str
    speaker: str | None = None
    speakers: tuple[str, ...] = ()


def round_ms(seconds: float) -> int:
    """Seconds to whole milliseconds, half up on the decimal value (3661.2346 -> 3661235)."""
    if isinstance(seconds, bool) or not math.isfinite(seconds):
        raise ValueError(f"not a finite time: {seconds!r}")
    try:
        value = Decimal(repr(float(seconds)))
    except InvalidOperation:  # pragma: no cover - repr of a finite float always parses
        raise ValueError(f"not a finite time: {seconds!r}") from None
    return int((value * 1000).quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- text helpers ------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Whisper words carry leading spaces; inner runs of whitespace become one space."""
    return " ".join(text.split())


def _is_weak_ending(text: str) -> bool:
    """An article, conjunction or preposition, which reads badly at the end of a line."""
    return text.lower() in _WEAK_ENDINGS


def _is_closing(text: str) -> bool:
    """Punctuation that must stay on the line of the word before it."""
    return all(c in _CLOSING_PUNCT for c in text)


def _is_opening(text: str) -> bool:
    """Punctuation that must stay on the line of the word after it."""
    return all(c in _OPENING_PUNCT for c in text)


# --- 1. words to timed pieces ---------------------------------------------------------------


@dataclass
class _Raw:
    """A word as read from the transcript; times may be missing."""

    text: str
    start: float | None
    end: float | None
    speaker: str | None = None


@dataclass(frozen=True)
class _Piece:
    """A word (or one CJK character) with timings in whole milliseconds."""

    text: str
    start: int
    end: int
    space_before: bool | None  # None: first of its segment, decided against the previous one
    segment_end: bool
    speaker: str | None = None


def _number(value: object) -> float | None:
    """A usable time: a finite number (not a bool), else None, as if the key were missing."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _speaker(value: object) -> str | None:
    """A speaker label as whisperx's assign_word_speakers sets it, else None (unknown)."""
    return value.strip() or None if isinstance(value, str) else None


def _raw_words(segment: AlignedSegment) -> list[_Raw]:
    """The segment's words, or its text cut at spaces when whisperx gave no words. A word
    without a speaker takes its segment's, when the segment has one."""
    words = segment.get("words") or []
    default = _speaker(segment.get("speaker"))
    raws = [
        _Raw(
            _clean(str(w.get("word", ""))),
            _number(w.get("start")),
            _number(w.get("end")),
            _speaker(w.get("speaker")) or default,
        )
        for w in words
        if isinstance(w, dict)
    ]
    raws = [r for r in raws if r.text]
    if raws:
        return raws
    return [_Raw(t, None, None, default) for t in str(segment.get("text") or "").split()]


def _spread(start: float, end: float, weights: Sequence[int]) -> list[tuple[float, float]]:
    """Share [start, end] between items in proportion to their weights (character counts)."""
    total = sum(weights) or 1
    spans: list[tuple[float, float]] = []
    done = 0
    for weight in weights:
        a = start + (end - start) * done / total
        done += weight
        spans.append((a, start + (end - start) * done / total))
    return spans


def _fill_times(raws: list[_Raw], seg_start: float, seg_end: float) -> list[tuple[float, float]]:
    """Times for every word: known ones kept, each run of words lacking a time interpolated
    between the neighbouring known words (or the segment bounds) by character count, and
    kept next to the word before it (or after it, at the start) when the gap is long."""
    out: list[tuple[float, float]] = []
    left = seg_start
    k = 0
    while k < len(raws):
        raw = raws[k]
        if raw.start is not None and raw.end is not None:
            out.append((raw.start, max(raw.start, raw.end)))
            left = max(left, raw.end)
            k += 1
            continue
        m = k
        while m < len(raws) and (raws[m].start is None or raws[m].end is None):
            m += 1
        after = raws[m].start if m < len(raws) else None
        right = seg_end if after is None else after
        if right < left:  # no room: squeeze the run against its known neighbour
            left, right = (right, right) if k == 0 else (left, left)
        weights = [len(r.text) for r in raws[k:m]]
        longest = sum(weights) * UNTIMED_SECONDS_PER_CHAR
        if right - left > longest and (k > 0 or after is not None):
            # Speech is continuous with the known neighbour, not spread over the silence.
            if k > 0:
                right = left + longest
            else:
                left = right - longest
        spans = _spread(left, right, weights)
        for part, (a, b) in zip(raws[k:m], spans, strict=True):
            a = part.start if part.start is not None else a  # half-known: keep what is known
            b = part.end if part.end is not None else b
            out.append((a, max(a, b)))
        left = max(left, out[-1][1])
        k = m
    return out


def _spaces_before(text: str, words: Sequence[str]) -> list[bool | None]:
    """Whether a space precedes each word, read from the segment text where the word is
    found there; otherwise a space unless either side is CJK. The first word gets None."""
    result: list[bool | None] = []
    pos = 0
    for k, word in enumerate(words):
        found = text.find(word, pos)
        if found >= 0:
            space = any(c.isspace() for c in text[pos:found])
            pos = found + len(word)
        else:
            space = not (has_cjk(word[:1]) or (k > 0 and has_cjk(words[k - 1][-1:])))
        result.append(None if k == 0 else space)
    return result


def _segment_bounds(segment: AlignedSegment, raws: list[_Raw]) -> tuple[float, float]:
    """The segment's span, falling back on its words' times when it lacks one."""
    starts = [r.start for r in raws if r.start is not None]
    ends = [r.end for r in raws if r.end is not None]
    start = _number(segment.get("start"))
    end = _number(segment.get("end"))
    if start is None:
        start = min(starts) if starts else 0.0
    if end is None:
        end = max(ends) if ends else start
    return start, max(start, end)


def _split_word(text: str, start: float, end: float) -> list[tuple[str, float, float]]:
    """A word holding CJK characters becomes one piece per character (runs of other
    characters, like "GPU" or "3.5", stay whole), its time shared by character count."""
    if not has_cjk(text):
        return [(text, start, end)]
    parts = [p for p in _CJK_SPLIT.findall(text) if p]
    spans = _spread(start, end, [len(p) for p in parts])
    return [(p, a, b) for p, (a, b) in zip(parts, spans, strict=True)]


def _segment_pieces(segment: AlignedSegment) -> list[_Piece]:
    """One segment's words as timed pieces (times not yet monotonic across segments)."""
    raws = _raw_words(segment)
    if not raws:
        return []
    seg_start, seg_end = _segment_bounds(segment, raws)
    times = _fill_times(raws, seg_start, seg_end)
    text = str(segment.get("text") or "")
    spaces = _spaces_before(text, [r.text for r in raws])
    pieces: list[_Piece] = []
    for raw, (start, end), space in zip(raws, times, spaces, strict=True):
        for n, (part, a, b) in enumerate(_split_word(raw.text, start, end)):
            pieces.append(
                _Piece(part, round_ms(a), round_ms(b), space if n == 0 else False, False, raw.speaker)
            )
    last = pieces[-1]
    pieces[-1] = _Piece(last.text, last.start, last.end, last.space_before, True, last.speaker)
    return pieces


def _pieces(segments: Sequence[AlignedSegment]) -> list[_Piece]:
    """All words of all segments, spaces decided, times monotonic and non-negative."""
    out: list[_Piece] = []
    prev_start = 0
    for segment in segments:
        for piece in _segment_pieces(segment):
            space = piece.space_before
            if space is None:
                prev = out[-1].text[-1:] if out else ""
                space = not (has_cjk(prev) and has_cjk(piece.text[:1]))
            start = max(piece.start, prev_start, 0)
            out.append(
                _Piece(piece.text, start, max(piece.end, start), space, piece.segment_end, piece.speaker)
            )
            prev_start = start
    return out


# --- 2. pieces to unbreakable units -----------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    """What a line or a cue may break between: a word, plus any punctuation glued to it."""

    text: str
    start: int
    end: int
    space_before: bool
    sentence_end: bool
    clause_end: bool
    segment_end: bool
    weak_ending: bool
    speaker: str | None = None


def _glued_to_previous(piece: _Piece, previous: _Piece) -> bool:
    """Whether nothing may separate the piece from the one before: no space between them
    (`24` `-hour`, `don` `'t`, `50` `%`, a Japanese small kana or `ー`; single CJK
    characters excepted, which break anywhere), closing punctuation after, opening
    punctuation before, or a hyphen starting a word (a line starting `-x` reads as a new
    speaker)."""
    if _is_closing(piece.text) and not piece.space_before:
        return True
    if _is_opening(previous.text) and not piece.space_before:
        return True
    if len(piece.text) > 1 and piece.text[0] in _HYPHENS and not piece.text[1].isspace():
        return True
    if piece.space_before:
        return False
    if piece.text[:1] in _JA_DEPENDENT:
        return True
    return not (has_cjk(piece.text[:1]) or has_cjk(previous.text[-1:]))


def _units(pieces: Sequence[_Piece]) -> list[_Unit]:
    """Glue pieces that must not be separated (`_glued_to_previous`) into one unit, so no line
    or cue starts with a full-width comma, `-hour` or `'s`, or ends with an opening bracket."""
    groups: list[list[_Piece]] = []
    for piece in pieces:
        glue = bool(groups) and _glued_to_previous(piece, groups[-1][-1])
        if glue:
            groups[-1].append(piece)
        else:
            groups.append([piece])
    units: list[_Unit] = []
    for group in groups:
        text = group[0].text + "".join((" " if p.space_before else "") + p.text for p in group[1:])
        units.append(
            _Unit(
                text=text,
                start=group[0].start,
                end=max(p.end for p in group),
                space_before=bool(group[0].space_before),
                sentence_end=is_sentence_end(text),
                clause_end=is_clause_end(text),
                segment_end=group[-1].segment_end,
                weak_ending=_is_weak_ending(text),
                speaker=next((p.speaker for p in group if p.speaker is not None), None),
            )
        )
    return _known_speakers(units)


def _known_speakers(units: list[_Unit]) -> list[_Unit]:
    """A unit without a speaker (a word outside every diarized turn) takes the one before it,
    or the first known after it at the start: it stays in its neighbours' cue rather than
    forcing a speaker change. Without any speaker the units are left as they are."""
    known = [u.speaker for u in units if u.speaker is not None]
    if not known:
        return units
    current: str | None = known[0]
    out: list[_Unit] = []
    for unit in units:
        if unit.speaker is None:
            unit = replace(unit, speaker=current)
        current = unit.speaker
        out.append(unit)
    return out


def _join(units: Sequence[_Unit]) -> str:
    """Units as one line of text, with the spaces the transcript had between them."""
    if not units:
        return ""
    return units[0].text + "".join((" " if u.space_before else "") + u.text for u in units[1:])


# --- 3. where cues end ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    """The rules in milliseconds, the unit every timing decision is made in."""

    line_chars: int
    lines: int
    min_ms: int
    max_ms: int
    gap_ms: int
    cps: float
    pause_ms: int
    linger_ms: int
    dialogue: bool  # two-line dialogue cues allowed (and room for their two lines)
    dash: str

    @classmethod
    def of(cls, rules: CueSettings) -> _Limits:
        # Clamped so hand-made settings (config.py validates loaded ones) cannot divide by 0.
        return cls(
            line_chars=max(1, rules.max_line_chars),
            lines=max(1, rules.max_lines),
            min_ms=max(0, round_ms(rules.min_cue_seconds)),
            max_ms=max(1, round_ms(rules.max_cue_seconds)),
            gap_ms=max(0, round_ms(rules.min_gap_seconds)),
            cps=max(0.001, rules.max_chars_per_second),
            pause_ms=round_ms(rules.min_silence_for_new_cue),
            linger_ms=max(0, round_ms(rules.linger_seconds)),
            dialogue=rules.dialogue_cues and rules.max_lines >= 2,
            dash=rules.dialogue_dash,
        )


#: A cue over units [i, j); for a two-line dialogue cue, where the second speaker's line
#: starts (`split`), else None.
_Span = tuple[int, int, int | None]


class _Segmenter:
    """Chooses cue boundaries by dynamic programming over the units (cheapest total cost).
    A speaker change is a hard boundary, crossed only by a two-line dialogue cue."""

    def __init__(self, units: Sequence[_Unit], limits: _Limits) -> None:
        self.units = units
        self.lim = limits
        n = len(units)
        self.gap_after = [units[k + 1].start - units[k].end if k + 1 < n else 0 for k in range(n)]
        # Prefix sums so a candidate cue's inner sentence ends and pauses cost O(1).
        self.sentences = [0] * (n + 1)
        self.pauses = [0.0] * (n + 1)
        for k, unit in enumerate(units):
            self.sentences[k + 1] = self.sentences[k] + unit.sentence_end
            excess = max(0.0, self.gap_after[k] / 1000 - _INNER_PAUSE_FREE_S)
            self.pauses[k + 1] = self.pauses[k] + excess
        # turn_end[k]: the first unit after k said by someone else (n: nobody else). All n
        # without speakers, so the speaker-less path is exactly what it was.
        self.turn_end = [n] * n
        for k in range(n - 2, -1, -1):
            same = units[k + 1].speaker == units[k].speaker
            self.turn_end[k] = self.turn_end[k + 1] if same else k + 1

    def choose(self) -> list[_Span]:
        """Cue spans [i, j) over the units, covering all of them in order."""
        n = len(self.units)
        best = [math.inf] * (n + 1)
        back: list[tuple[int, int | None]] = [(0, None)] * (n + 1)
        best[0] = 0.0
        for i in range(n):
            for j, chars, split in self._candidates(i):
                cost = best[i] + self._cost(i, j, chars, split)
                if cost < best[j]:
                    best[j] = cost
                    back[j] = (i, split)
        spans: list[_Span] = []
        j = n
        while j > 0:
            i, split = back[j]
            spans.append((i, j, split))
            j = i
        return spans[::-1]

    def _candidates(self, i: int) -> list[tuple[int, int, int | None]]:
        """Every end j for a cue starting at unit i that respects the hard limits, with the
        cue's length in characters and where a dialogue cue's second line starts (else
        None). A single unit is always allowed, however long."""
        units, lim = self.units, self.lim
        out: list[tuple[int, int, int | None]] = [(i + 1, len(units[i].text), None)]
        lines, line_len, chars = 1, len(units[i].text), len(units[i].text)
        speech_end = units[i].end
        for j in range(i + 2, self.turn_end[i] + 1):
            unit = units[j - 1]
            if self.gap_after[j - 2] > lim.pause_ms:
                break
            sep = 1 if unit.space_before else 0
            chars += sep + len(unit.text)
            if line_len + sep + len(unit.text) <= lim.line_chars:
                line_len += sep + len(unit.text)
            else:  # greedy filling gives the fewest lines
                lines, line_len = lines + 1, len(unit.text)
            speech_end = max(speech_end, unit.end)
            if lines > lim.lines or speech_end - units[i].start > lim.max_ms:
                break
            out.append((j, chars, None))
        if lim.dialogue and units[i].speaker is not None:
            out.extend(self._dialogues(i))
        return out

    def _line_len(self, a: int, b: int, most: int) -> int | None:
        """Characters of units [a, b) on one line, or None when they pass `most` or a long
        pause splits them (stopping there, so a long turn costs no more than a line)."""
        units = self.units
        length = len(units[a].text)
        for k in range(a + 1, b):
            if length > most or self.gap_after[k - 1] > self.lim.pause_ms:
                return None
            length += (1 if units[k].space_before else 0) + len(units[k].text)
        return length if length <= most else None

    def _dialogues(self, i: int) -> list[tuple[int, int, int | None]]:
        """Two-line dialogue cues from unit i: the rest of this speaker's turn on the first
        line, the start of the next speaker's on the second, each line (dash included)
        within the line length, the speech within the duration and no long pause inside,
        and the reading speed kept in the time there is before the next cue."""
        units, lim = self.units, self.lim
        n = len(units)
        split = self.turn_end[i]
        dash = len(lim.dash)
        if split >= n or self.gap_after[split - 1] > lim.pause_ms:
            return []
        first = self._line_len(i, split, lim.line_chars - dash)
        if first is None:
            return []
        out: list[tuple[int, int, int | None]] = []
        speech_end = max(u.end for u in units[i:split])
        second = -1  # the space before the second line's first unit is dropped
        for j in range(split + 1, self.turn_end[split] + 1):
            unit = units[j - 1]
            if j > split + 1 and self.gap_after[j - 2] > lim.pause_ms:
                break
            second += (1 if unit.space_before or j == split + 1 else 0) + len(unit.text)
            speech_end = max(speech_end, unit.end)
            if dash + second > lim.line_chars or speech_end - units[i].start > lim.max_ms:
                break
            chars = dash + first + 1 + dash + second
            room = lim.max_ms if j == n else min(lim.max_ms, units[j].start - lim.gap_ms - units[i].start)
            if room >= 1 and chars * 1000 <= lim.cps * room:
                out.append((j, chars, split))
        return out

    def _cost(self, i: int, j: int, chars: int, split: int | None = None) -> float:
        """How bad a cue over units [i, j) is: the sum of the soft rules it bends."""
        units, lim = self.units, self.lim
        start = units[i].start
        last = units[j - 1]
        cost = _COST_PER_CUE
        room = lim.max_ms
        if j < len(units):
            room = min(room, units[j].start - lim.gap_ms - start)
            if units[j].speaker == last.speaker:  # a speaker change ends a cue anyway
                cost += self._end_cost(last, self.gap_after[j - 1])
            if room < 1:
                cost += _COST_NO_ROOM  # the next cue would start before this one can end
        inner = self.sentences[j - 1] - self.sentences[i]
        if split is not None and units[split - 1].sentence_end:
            inner -= 1  # the first speaker's sentence ends their line, not inside it
        cost += _COST_INNER_SENTENCE_END * inner
        cost += _COST_INNER_PAUSE_PER_S * (self.pauses[j - 1] - self.pauses[i])
        room_s = max(room, 1) / 1000
        if chars / room_s > lim.cps:
            cost += _COST_READING_SPEED * (chars / room_s / lim.cps - 1)
        if room < lim.min_ms:  # (so min_ms > 0 here)
            cost += _COST_FLASH * (1 - max(room, 0) / lim.min_ms)
        fill = min(1.0, chars / (lim.line_chars * lim.lines))  # both are >= 1
        cost += _COST_FILL * (1 - fill) ** 2
        return cost

    @staticmethod
    def _end_cost(last: _Unit, gap_after_ms: int) -> float:
        """Ending a cue is free at a sentence end, cheap at a clause or a pause, dear mid-phrase."""
        if last.sentence_end:
            return 0.0
        base = _COST_END_MID_PHRASE
        if last.clause_end:
            base = _COST_END_CLAUSE
        elif last.segment_end:
            base = _COST_END_SEGMENT
        elif last.weak_ending:
            base += _COST_END_WEAK_WORD
        pause = min(max(gap_after_ms, 0), 500) / 500
        return base * (1 - 0.7 * pause)


# --- 4. lines within a cue ------------------------------------------------------------------


def _line_count(units: Sequence[_Unit], line_chars: int) -> int:
    """The fewest lines the units fit on (greedy filling), a too-long word alone on its line."""
    lines, length = 1, len(units[0].text)
    for unit in units[1:]:
        sep = 1 if unit.space_before else 0
        if length + sep + len(unit.text) <= line_chars:
            length += sep + len(unit.text)
        else:
            lines, length = lines + 1, len(unit.text)
    return lines


def _break_lines(units: Sequence[_Unit], line_chars: int) -> list[str]:
    """The cue's text on the fewest lines, choosing breaks that balance the lines (a longer
    bottom line is fine, a longer top line less so) and prefer following punctuation."""
    count = _line_count(units, line_chars)
    if count == 1:
        return [_join(units)]
    size = len(units)
    # chars[k]: characters of units[:k] on one line, so units[a:b] is a line of
    # chars[b] - chars[a] - (the space before units[a], which the break removes).
    chars = [0] * (size + 1)
    for k, unit in enumerate(units):
        chars[k + 1] = chars[k] + len(unit.text) + (1 if k and unit.space_before else 0)
    target = chars[size] / count
    bonus = 2 * (0.35 * line_chars) ** 2  # a clause break is worth ~15 characters at 42

    def line_cost(line: int, a: int, b: int) -> float:
        length = chars[b] - chars[a] - (1 if a and units[a].space_before else 0)
        weight = 1.5 if length > target and line < count - 1 else 1.0
        cost = weight * (length - target) ** 2
        if line < count - 1:
            last = units[b - 1]
            if last.sentence_end:
                cost -= 1.5 * bonus
            elif last.clause_end:
                cost -= bonus
            elif last.weak_ending:
                cost += 0.25 * bonus
        return cost

    best = [[math.inf] * (size + 1) for _ in range(count + 1)]
    back = [[0] * (size + 1) for _ in range(count + 1)]
    best[0][0] = 0.0
    for line in range(count):
        for a in range(size):
            if best[line][a] == math.inf:
                continue
            for b in range(a + 1, size + 1):
                too_long = chars[b] - chars[a] - (1 if a and units[a].space_before else 0)
                if too_long > line_chars and b - a > 1:
                    break  # longer lines only get longer; one over-long word may stand alone
                cost = best[line][a] + line_cost(line, a, b)
                if cost < best[line + 1][b]:
                    best[line + 1][b] = cost
                    back[line + 1][b] = a
    lines: list[str] = []
    b = size
    for line in range(count, 0, -1):
        a = back[line][b]
        lines.append(_join(units[a:b]))
        b = a
    return lines[::-1]


# --- 5. timings ---------------------------------------------------------------------------------


def _timings(
    spans: Sequence[tuple[int, int, int]], lim: _Limits, speech: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """Cue (start, end) in ms from (first word start, speech end, characters): each cue
    starts at its first word and ends `linger` after its speech; longer only for the minimum
    duration and reading speed, and then never into the next speech (the next cue, or a
    speech region without words) less the minimum gap. Cues are chained (the gap closed to
    the minimum) only when the real pause before the next speech is under half a second."""
    chain_ms = round_ms(CHAIN_GAP_SECONDS)
    onsets = [a for a, _ in speech]
    starts = [s for s, _, _ in spans]
    out: list[tuple[int, int]] = []
    for k, (_, speech_end, chars) in enumerate(spans):
        start = starts[k]
        if out:  # only when the words left no room: keep order, gap and positive length
            start = max(start, out[-1][1] + lim.gap_ms)
        next_speech = starts[k + 1] if k + 1 < len(spans) else math.inf
        later = bisect.bisect_right(onsets, speech_end)
        if later < len(onsets):  # speech the transcript has no words for is speech too
            next_speech = min(next_speech, onsets[later])
        reading = math.ceil(chars * 1000 / lim.cps)
        end = max(speech_end + lim.linger_ms, start + lim.min_ms, start + reading)
        limit = start + lim.max_ms
        if next_speech < math.inf:
            next_limit = int(next_speech) - lim.gap_ms
            if k + 1 < len(spans) and next_speech - speech_end < chain_ms:
                end = next_limit
            limit = min(limit, next_limit)
        end = max(min(end, limit), start + 1)
        out.append((start, end))
    return out


# --- public -------------------------------------------------------------------------------------


def build_cues(
    segments: Sequence[AlignedSegment],
    rules: CueSettings = _DEFAULT_RULES,
    speech: Sequence[Sequence[float]] = (),
) -> list[Cue]:
    """Subtitle cues for an aligned transcript, sorted, never overlapping, deterministic.
    `speech`: the job's speech regions (seconds), so no cue lingers into speech that has no
    words (music, a voice Whisper skipped); words are expected snapped to them already."""
    units = _units(_pieces(segments))
    if not units:
        return []
    lim = _Limits.of(rules)
    chosen = _Segmenter(units, lim).choose()
    texts: list[tuple[str, str | None, tuple[str, ...]]] = []
    spans: list[tuple[int, int, int]] = []
    for i, j, split in chosen:
        part = units[i:j]
        if split is None:
            text = "\n".join(_break_lines(part, lim.line_chars))
            texts.append((text, part[0].speaker, ()))
            chars = len(_join(part))
        else:
            lines = [lim.dash + _join(units[i:split]), lim.dash + _join(units[split:j])]
            who = (units[i].speaker or "", units[split].speaker or "")
            texts.append(("\n".join(lines), None, who))
            chars = len(lines[0]) + 1 + len(lines[1])
        spans.append((part[0].start, max(u.end for u in part), chars))
    regions = [(round_ms(a), round_ms(b)) for a, b in normalize(speech)]
    return [
        Cue(start / 1000, end / 1000, text, speaker, speakers)
        for (start, end), (text, speaker, speakers) in zip(_timings(spans, lim, regions), texts, strict=True)
    ]
