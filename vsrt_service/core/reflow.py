"""Re-split a run of cues with the cue builder: the editor's "reflow" of a selection.

The user's text wins; the machine's word times are reused where they still fit it. When the
selection holds as many words as the aligned words under it, each word keeps its measured
time (spelling fixes keep perfect timing); otherwise the words are spread over each cue's
own span, as the builder does for unaligned text. Each word keeps the speaker of the cue (or the
dialogue line) it was typed in, so the rebuilt cues carry the user's speakers (renamed ones too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

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


def _turns(cue: Cue, dash: str) -> list[tuple[str | None, list[str]]]:
    """The cue's words by who says them: one turn for a one-speaker cue, one per line of a
    dialogue cue (its dash taken off: the builder puts dashes back where they belong)."""
    if not cue.speakers:
        return [(cue.speaker, cue.text.split())]
    lines = [line.strip() for line in cue.text.split("\n") if line.strip()]
    last = len(cue.speakers) - 1
    turns: list[tuple[str | None, list[str]]] = []
    for k, line in enumerate(lines):
        mark = dash.strip()
        if line.startswith(mark):
            line = line[len(mark) :]
        turns.append((cue.speakers[min(k, last)], line.split()))
    return turns


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
    turns = [(cue, _turns(cue, rules.dialogue_dash)) for cue in ordered]
    said = [(who, token) for _, cue_turns in turns for who, tokens in cue_turns for token in tokens]
    if not said:
        return []
    words = _words_within(result or (), start, end)
    segments: list[AlignedSegment]
    if len(words) == len(said):
        timed: list[Word] = []
        for (who, token), w in zip(said, words, strict=True):
            word: Word = {"word": token, "start": w["start"], "end": w["end"]}
            if who is not None:
                word["speaker"] = who
            timed.append(word)
        segments = [{"start": start, "end": end, "text": " ".join(t for _, t in said), "words": timed}]
    else:
        segments = []
        for cue, cue_turns in turns:
            spoken = [(who, tokens) for who, tokens in cue_turns if tokens]
            # A dialogue cue's span is shared between its lines by their length.
            total = sum(len(" ".join(tokens)) for _, tokens in spoken) or 1
            at = cue.start
            for who, tokens in spoken:
                text = " ".join(tokens)
                until = at + (cue.end - cue.start) * len(text) / total
                segment: AlignedSegment = {"start": at, "end": until, "text": text, "words": []}
                if who is not None:
                    segment["speaker"] = who
                segments.append(segment)
                at = until
    cues = build_cues(segments, rules, speech)
    # The selection's span is the user's: nothing lingers onto the cues after it.
    return [
        replace(c, start=max(c.start, start), end=min(c.end, end))
        for c in cues
        if min(c.end, end) > max(c.start, start)
    ]
