"""Re-split a run of cues with the cue builder: the editor's "reflow" of a selection.

The user's text wins; the machine's word times are reused where they still fit it. When the
selection holds as many words as the aligned words under it, each word keeps its measured
time (spelling fixes keep perfect timing); otherwise the words are spread over each cue's
own span, as the builder does for unaligned text.
"""

from __future__ import annotations

from collections.abc import Sequence

from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue, build_cues
from vsrt_service.core.protocol import AlignedSegment, Word

#: A word belongs to the selection when it lies inside it give or take this much (seconds).
EDGE_SLACK = 0.05


def _words_within(result: Sequence[AlignedSegment], start: float, end: float) -> list[Word]:
    """The aligned words inside [start, end], in time order; None when one has no time."""
    words = []
    for segment in result:
        for word in segment.get("words") or ():
            if "start" not in word or "end" not in word:
                continue
            if word["start"] >= start - EDGE_SLACK and word["end"] <= end + EDGE_SLACK:
                words.append(word)
    return sorted(words, key=lambda w: w["start"])


def reflow(
    selection: Sequence[Cue],
    result: Sequence[AlignedSegment] | None,
    rules: CueSettings,
    speech: Sequence[Sequence[float]] = (),
) -> list[Cue]:
    """New cues for the selection's text, within the selection's span, by the rules."""
    ordered = sorted(selection, key=lambda c: c.start)
    if not ordered:
        return []
    start = ordered[0].start
    end = max(c.end for c in ordered)
    tokens = [t for cue in ordered for t in cue.text.split()]
    if not tokens:
        return []
    words = _words_within(result or (), start, end)
    segments: list[AlignedSegment]
    if len(words) == len(tokens):
        timed: list[Word] = [
            {"word": token, "start": w["start"], "end": w["end"]}
            for token, w in zip(tokens, words, strict=True)
        ]
        segments = [{"start": start, "end": end, "text": " ".join(tokens), "words": timed}]
    else:
        segments = [
            {"start": c.start, "end": c.end, "text": " ".join(c.text.split()), "words": []}
            for c in ordered
            if c.text.split()
        ]
    cues = build_cues(segments, rules, speech)
    # The selection's span is the user's: nothing lingers onto the cues after it.
    return [
        Cue(max(c.start, start), min(c.end, end), c.text)
        for c in cues
        if min(c.end, end) > max(c.start, start)
    ]
