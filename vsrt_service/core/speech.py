"""Word and line times made true to where the speech is, from the split's speech regions.

Pure Python, standard library only (it runs in the service). Aligners smear words over the
silence around them (Whisper's cross-attention times most, wav2vec2's less); the voice
activity regions say where speech really is, so:

- `snap_words`: no word starts or ends inside non-speech (beyond `MARGIN`); the first word
  of a region starts at its onset and the last one ends at its offset when they are close.
- `sentence_lines`: a chunk's unaligned text as sentence-level lines for the live view,
  timed by sharing the chunk's speech time by characters, boundaries moved into the
  pauses between regions where one is near.
"""

from __future__ import annotations

import bisect
import copy
import itertools
import math
import re
from collections.abc import Sequence
from typing import Any

from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.core.text import CJK_CLASS, is_clause_end, is_sentence_end

__all__ = ["MARGIN", "PULL", "Region", "normalize", "sentence_lines", "snap_words"]

Region = tuple[float, float]

#: A word edge this close outside a speech region counts as inside it (VAD frame jitter).
MARGIN = 0.05
#: Furthest a region's first (last) word start (end) is moved back (on) to the region's
#: onset (offset): speech there with no word in it is that word's, unless it is this long.
PULL = 0.5
#: Pauses between regions at least this long are fitted to a word boundary (shorter ones can
#: be a stop consonant's closure inside a word).
FIT_MIN_PAUSE = 0.15
#: Furthest (s) a word boundary may be from the pause it is fitted to.
FIT_REACH = 1.5
#: A pause is taken to fall after a sentence end this much (s) sooner than elsewhere.
FIT_SENTENCE_BONUS = 0.3
#: Seconds of bonus per second of silence the aligner itself left at a boundary in a pause.
FIT_SILENCE_WEIGHT = 0.1
#: A live line boundary moves to a pause between regions this close to it.
LINE_SNAP = 1.5
#: A pause between regions at least this long ends a live line even without punctuation.
LINE_PAUSE = 1.0
#: Longest live line, in characters, before a sentence is cut at a clause or between words.
LINE_CHARS = 84

_TOKEN = re.compile(f"(\\s*)([{CJK_CLASS}]|[^\\s{CJK_CLASS}]+)")


def normalize(speech: Sequence[Sequence[float]]) -> list[Region]:
    """Regions sorted, finite, positive and merged where they touch or overlap."""
    regions = sorted(
        (float(a), float(b))
        for a, b in (tuple(r)[:2] for r in speech)
        if math.isfinite(a) and math.isfinite(b) and b > a
    )
    out: list[Region] = []
    for a, b in regions:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


# --- words ------------------------------------------------------------------------------------


def _timed(word: dict[str, Any]) -> bool:
    start, end = word.get("start"), word.get("end")
    return all(
        isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t) for t in (start, end)
    )


class _Regions:
    """Lookups on sorted, merged regions."""

    def __init__(self, regions: list[Region], margin: float) -> None:
        self.regions = regions
        self.starts = [a for a, _ in regions]
        self.margin = margin

    def containing(self, t: float) -> int | None:
        """The region t lies in, `margin` either side included."""
        k = bisect.bisect_right(self.starts, t + self.margin) - 1
        if k >= 0 and t <= self.regions[k][1] + self.margin:
            return k
        return None

    def after(self, t: float) -> int | None:
        """The first region starting after t."""
        k = bisect.bisect_right(self.starts, t)
        return k if k < len(self.regions) else None

    def before(self, t: float) -> int | None:
        """The last region ending before t."""
        k = bisect.bisect_left(self.starts, t) - 1
        while k >= 0 and self.regions[k][1] >= t:
            k -= 1
        return k if k >= 0 else None


def _into_speech(start: float, end: float, rs: _Regions) -> tuple[float, float]:
    """A word's times with any edge in a pause moved to the speech next to it: a start to the
    next onset, an end to the previous offset; a word wholly in a pause goes into the
    nearer region, keeping its length up to the region's."""
    regions = rs.regions
    in_start, in_end = rs.containing(start), rs.containing(end)
    if in_start is not None and in_end is not None:
        return start, end
    nxt = rs.after(start) if in_start is None else None
    prv = rs.before(end) if in_end is None else None
    if in_start is None and in_end is None and (nxt is None or regions[nxt][0] > end):
        # Wholly in a pause (or past the last region, or before the first).
        length = end - start
        gap_before = start - regions[prv][1] if prv is not None else math.inf
        gap_after = regions[nxt][0] - end if nxt is not None else math.inf
        if gap_before <= gap_after and prv is not None:
            a, b = regions[prv]
            return max(a, b - length), b
        assert nxt is not None  # at least one region exists
        a, b = regions[nxt]
        return a, min(b, a + length)
    if in_start is None and nxt is not None:
        start = regions[nxt][0]
    if in_end is None and prv is not None:
        end = regions[prv][1]
    return start, max(start, end)


def snap_words(
    segments: Sequence[AlignedSegment],
    speech: Sequence[Sequence[float]],
    margin: float = MARGIN,
    pull: float = PULL,
) -> list[AlignedSegment]:
    """A copy of the aligned transcript with word (and segment) times moved into the speech;
    unchanged without regions (jobs split before they were kept). Words without times stay
    so: the cue builder interpolates them between their snapped neighbours."""
    out = [copy.deepcopy(s) for s in segments]
    regions = normalize(speech)
    if not regions:
        return out
    rs = _Regions(regions, margin)
    words: list[dict[str, Any]] = [
        w  # type: ignore[misc]
        for s in out
        for w in (s.get("words") or [])
        if isinstance(w, dict) and _timed(w)  # type: ignore[arg-type]
    ]
    sequence: list[dict[str, Any]] = []  # consecutive timed words, across segments
    for seg in out:
        for word in seg.get("words") or []:
            if isinstance(word, dict) and _timed(word):  # type: ignore[arg-type]
                sequence.append(word)  # type: ignore[arg-type]
            elif isinstance(word, dict):  # an untimed word's side of a pause is unknown
                _fit_pauses(sequence, regions)
                sequence = []
    _fit_pauses(sequence, regions)
    prev_start = -math.inf
    for w in words:
        start, end = _into_speech(float(w["start"]), float(w["end"]), rs)
        start = max(start, prev_start)  # in order, as the aligner gave them
        w["start"], w["end"] = start, max(start, end)
        prev_start = start
    # The first word starting in a region (no earlier word reaching into it) takes its
    # onset; the last word ending in one (no later word starting in it) takes its offset.
    for k, w in enumerate(words):
        region = rs.containing(w["start"])
        if region is not None:
            onset = regions[region][0]
            prev_end = words[k - 1]["end"] if k else -math.inf
            if prev_end <= onset + margin and 0 < w["start"] - onset <= pull:
                w["start"] = onset
        region = rs.containing(w["end"])
        if region is not None:
            offset = regions[region][1]
            next_start = words[k + 1]["start"] if k + 1 < len(words) else math.inf
            if next_start >= offset - margin and 0 < offset - w["end"] <= pull:
                w["end"] = offset
        w["start"], w["end"] = round(w["start"], 3), round(max(w["start"], w["end"]), 3)
    for seg in out:
        _snap_segment(seg, rs)
    return out


def _fit_pauses(words: list[dict[str, Any]], regions: list[Region]) -> None:
    """Each pause between regions among the words falls between two of them: in time order,
    each pause takes the boundary nearest to it (the silence the aligner left between the
    two words, measured against the pause) after the one the previous pause took, sentence
    and clause ends preferred. The word before then ends at the pause's start, the one after
    starts at its end, and the words between two pauses are stretched linearly onto the
    speech between them. Whisper's cross-attention times drift by a few hundred ms and
    spill into pauses; the pauses themselves are measured to 10 ms."""
    if len(words) < 2:
        return
    lo, hi = float(words[0]["start"]), float(words[-1]["end"])
    gaps = [
        (a1, b0)
        for (_, a1), (b0, _) in itertools.pairwise(regions)
        if b0 - a1 >= FIT_MIN_PAUSE and a1 > lo - FIT_REACH and b0 < hi + FIT_REACH
    ]
    # The silence between words k and k + 1 as the aligner put it.
    between = [
        tuple(sorted((float(words[k]["end"]), float(words[k + 1]["start"])))) for k in range(len(words) - 1)
    ]
    bonus = [_break_bonus(str(w.get("word", ""))) for w in words[:-1]]
    # No pause falls before punctuation written as a word of its own ("days", "?").
    admissible = [any(c.isalnum() for c in str(w.get("word", ""))) for w in words[1:]]
    matched: list[tuple[Region, int]] = []
    used = -1
    for a, b in gaps:
        best: tuple[float, int] | None = None
        for k in range(used + 1, len(between)):
            e, s = between[k]
            if e > b + FIT_REACH:
                break
            d = max(0.0, a - s, e - b)
            if d > FIT_REACH or not admissible[k]:
                continue
            # Inside the pause, prefer where the aligner itself left the most silence.
            silent = max(0.0, min(b, s) - max(a, e))
            cost = d - bonus[k] - FIT_SILENCE_WEIGHT * silent
            if best is None or cost < best[0]:
                best = (cost, k)
        if best is not None:
            used = best[1]
            matched.append(((a, b), used))
    # Runs of words between matched pauses, stretched onto the speech between them; a run
    # with a free end (the first or last words) is only held to its pause's side.
    edges: list[tuple[int, Region | None]] = [
        (-1, None),
        *((k, g) for g, k in matched),
        (len(words) - 1, None),
    ]
    for (k0, pause0), (k1, pause1) in itertools.pairwise(edges):
        run = words[k0 + 1 : k1 + 1]
        if not run:
            continue
        old_a, old_b = float(run[0]["start"]), float(run[-1]["end"])
        new_a = pause0[1] if pause0 is not None else old_a
        new_b = pause1[0] if pause1 is not None else old_b
        if new_b <= new_a:
            continue
        if pause0 is None or pause1 is None:
            scale, new_a, old_a = 1.0, 0.0, 0.0  # clamped below, not moved
        else:
            scale = (new_b - new_a) / (old_b - old_a) if old_b > old_a else 0.0
        lo_t = pause0[1] if pause0 is not None else -math.inf
        hi_t = pause1[0] if pause1 is not None else math.inf
        for w in run:
            for key in ("start", "end"):
                t = new_a + (float(w[key]) - old_a) * scale
                w[key] = round(min(max(t, lo_t), hi_t), 3)
        if pause0 is not None:
            run[0]["start"] = pause0[1]
        if pause1 is not None:
            run[-1]["end"] = pause1[0]


def _break_bonus(word: str) -> float:
    """How much nearer (s) a pause is taken to fall after this word: after a sentence most."""
    word = word.strip()
    if is_sentence_end(word):
        return FIT_SENTENCE_BONUS
    return FIT_SENTENCE_BONUS / 2 if is_clause_end(word) else 0.0


def _snap_segment(seg: AlignedSegment, rs: _Regions) -> None:
    """The segment's bounds into speech too, and around its snapped words."""
    start, end = seg.get("start"), seg.get("end")
    timed = [w for w in seg.get("words") or [] if isinstance(w, dict) and _timed(w)]  # type: ignore[arg-type]
    if not isinstance(start, int | float) or not isinstance(end, int | float):
        return
    if not (math.isfinite(start) and math.isfinite(end)):
        return
    if timed:
        first = min(float(w["start"]) for w in timed)
        last = max(float(w["end"]) for w in timed)
        a, b = _into_speech(float(start), float(end), rs)
        seg["start"], seg["end"] = round(min(a, first), 3), round(max(b, last), 3)
    else:
        a, b = _into_speech(float(start), float(end), rs)
        seg["start"], seg["end"] = round(a, 3), round(b, 3)


# --- live lines -------------------------------------------------------------------------------


def _tokens(text: str) -> list[tuple[str, str]]:
    """(separator, token) pairs: words between spaces, and single CJK characters."""
    return [(m.group(1), m.group(2)) for m in _TOKEN.finditer(text)]


def _sentences(tokens: list[tuple[str, str]], pauses: Sequence[int], line_chars: int) -> list[str]:
    """The text cut after each sentence end and before each token in `pauses` (where a long
    pause in the speech falls); a piece longer than `line_chars` is cut again after a clause
    or between words, so a live line reads like a subtitle's worth of text at most twice."""
    out: list[str] = []
    begin = 0
    breaks = set(pauses)
    for k, (_, token) in enumerate(tokens):
        if is_sentence_end(token) or k + 1 in breaks or k + 1 == len(tokens):
            piece = tokens[begin][1] + "".join(sep + tok for sep, tok in tokens[begin + 1 : k + 1])
            out.extend(_cut(piece, line_chars))
            begin = k + 1
    return [s for s in out if s]


def _cut(sentence: str, line_chars: int) -> list[str]:
    if len(sentence) <= line_chars:
        return [sentence]
    words = sentence.split(" ")
    if len(words) == 1:  # no spaces (CJK): cut by characters
        return [sentence[i : i + line_chars] for i in range(0, len(sentence), line_chars)]
    parts: list[str] = []
    current: list[str] = []
    for word in words:
        if current and len(" ".join([*current, word])) > line_chars:
            # Break after the last clause end in the line when it is not too early.
            cut = max(
                (i for i, w in enumerate(current) if is_clause_end(w) and i >= len(current) // 2),
                default=len(current) - 1,
            )
            parts.append(" ".join(current[: cut + 1]))
            current = current[cut + 1 :]
        current.append(word)
    if current:
        parts.append(" ".join(current))
    return parts


def _clip(regions: list[Region], start: float, end: float) -> list[Region]:
    clipped = [(max(a, start), min(b, end)) for a, b in regions if b > start and a < end]
    return [(a, b) for a, b in clipped if b > a] or [(start, max(start, end))]


def _at_speech_time(regions: list[Region], offset: float) -> float:
    """The moment `offset` seconds of speech into the regions have been spoken."""
    for a, b in regions:
        if offset <= b - a:
            return a + offset
        offset -= b - a
    return regions[-1][1]


def _pause_tokens(regions: list[Region], chars: list[int], total: float, min_pause: float) -> list[int]:
    """For each pause of at least `min_pause` between regions, the token the speech after it
    most likely starts with: the one whose share of characters starts nearest to the share
    of speech time spoken before the pause."""
    out: list[int] = []
    spoken = 0.0
    n = len(chars) - 1
    for (a0, a1), (b0, _) in itertools.pairwise(regions):
        spoken += a1 - a0
        if b0 - a1 < min_pause or n < 2 or total <= 0:
            continue
        at = spoken / total * chars[-1]
        k = min(range(1, n), key=lambda i: abs(chars[i] - at))
        if not out or k > out[-1]:
            out.append(k)
    return out


def sentence_lines(
    text: str,
    start: float,
    end: float,
    speech: Sequence[Sequence[float]],
    line_chars: int = LINE_CHARS,
    snap: float = LINE_SNAP,
    line_pause: float = LINE_PAUSE,
) -> list[tuple[float, float, str]]:
    """The chunk's unaligned text as (start, end, text) lines, a sentence each (or what lies
    between long pauses: Whisper does not always punctuate): the speech time inside
    [start, end] is shared by characters, and each boundary between lines moves to the
    nearest pause between regions within `snap` seconds (a pause used once)."""
    tokens = _tokens(" ".join(text.split()))
    if not tokens:
        return []
    regions = _clip(normalize([r for r in speech if r[1] > start and r[0] < end]), start, end)
    total = sum(b - a for a, b in regions)
    chars = [0]
    for k, (sep, token) in enumerate(tokens):
        chars.append(chars[-1] + (len(sep) if k else 0) + len(token))
    lines = _sentences(tokens, _pause_tokens(regions, chars, total, line_pause), line_chars)
    weight = sum(len(line) for line in lines) or 1
    # Line k spans speech time [cum[k], cum[k + 1]).
    cum = [0.0]
    for line in lines:
        cum.append(cum[-1] + total * len(line) / weight)
    bounds: list[tuple[float, float]] = []  # (end of line k, start of line k + 1)
    gaps = [(regions[i][1], regions[i + 1][0]) for i in range(len(regions) - 1)]
    used = -1
    for k in range(1, len(lines)):
        t = _at_speech_time(regions, cum[k])
        best: int | None = None
        best_d = snap
        for g in range(used + 1, len(gaps)):
            a, b = gaps[g]
            d = 0.0 if a <= t <= b else min(abs(t - a), abs(t - b))
            if d < best_d or (best is None and d <= best_d):
                best, best_d = g, d
        if best is not None:
            used = best
            bounds.append(gaps[best])
        else:
            bounds.append((t, t))
    out: list[tuple[float, float, str]] = []
    line_start = regions[0][0]
    for k, line in enumerate(lines):
        line_end = bounds[k][0] if k < len(bounds) else regions[-1][1]
        line_end = max(line_end, line_start)
        out.append((round(line_start, 3), round(line_end, 3), line))
        if k < len(bounds):
            line_start = max(bounds[k][1], line_end)
    return out
