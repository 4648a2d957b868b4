"""Speakers for aligned words, from the diarization's speaker turns (pure, standard library).

This runs in the service, not the runner: the runner's `diarize` answers only the turns (a
few hundred bytes a minute), which the job checkpoints on their own; words are then given
speakers here, again whenever the alignment is redone, without the model or the pipe's line
limit, and the rule can be unit-tested over many random streams.

The choice for a timed word is whisperx's `assign_word_speakers(fill_nearest=True)`: the
speaker whose turns overlap it longest in total, else the speaker of the turn whose middle
is nearest. A word the aligner could not time (digits...) takes its neighbour's speaker, the
word before it, or after it for the first words, so every word has one when there are turns.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import TypedDict

from vsrt_service.core.protocol import AlignedSegment, Word


class SpeakerTurn(TypedDict):
    """A stretch of one speaker's speech, seconds from the start of the audio."""

    start: float
    end: float
    speaker: str


class _Turns:
    """Turns sorted by start (as whisperx's IntervalTree), with what the lookups need."""

    def __init__(self, turns: Sequence[SpeakerTurn]) -> None:
        ordered = sorted(turns, key=lambda t: t["start"])
        self.starts = [float(t["start"]) for t in ordered]
        self.ends = [float(t["end"]) for t in ordered]
        self.speakers = [t["speaker"] for t in ordered]
        self.longest = max((e - s for s, e in zip(self.starts, self.ends, strict=True)), default=0.0)
        mids = [(s + e) / 2 for s, e in zip(self.starts, self.ends, strict=True)]
        self.by_mid = sorted(range(len(mids)), key=lambda i: (mids[i], i))
        self.mids = mids
        self.sorted_mids = [mids[i] for i in self.by_mid]

    def overlapping(self, start: float, end: float) -> str | None:
        """The speaker with the most overlap in total (the first such turn's on a tie)."""
        hi = bisect.bisect_left(self.starts, end)
        lo = bisect.bisect_left(self.starts, start - self.longest)
        totals: dict[str, float] = {}
        for i in range(lo, hi):
            if self.ends[i] > start:
                overlap = min(self.ends[i], end) - max(self.starts[i], start)
                if overlap > 0:
                    totals[self.speakers[i]] = totals.get(self.speakers[i], 0.0) + overlap
        if not totals:
            return None
        best = max(totals.values())
        return next(speaker for speaker, total in totals.items() if total == best)

    def nearest(self, time: float) -> str:
        """The speaker of the turn whose middle is nearest (the earliest-starting on a tie)."""
        at = bisect.bisect_left(self.sorted_mids, time)
        candidates = [k for k in (at - 1, at) if 0 <= k < len(self.sorted_mids)]
        distance = min(abs(self.sorted_mids[k] - time) for k in candidates)
        tied: list[int] = []
        for k in candidates:
            step = -1 if k < at else 1
            while 0 <= k < len(self.sorted_mids) and abs(self.sorted_mids[k] - time) == distance:
                tied.append(self.by_mid[k])
                k += step
        return self.speakers[min(tied)]


def assign_speakers(segments: Sequence[AlignedSegment], turns: Sequence[SpeakerTurn]) -> list[AlignedSegment]:
    """Copies of `segments` whose words carry `speaker` (none at all when there are no turns)."""
    out: list[AlignedSegment] = [{**seg, "words": [Word(**w) for w in seg["words"]]} for seg in segments]
    if not turns:
        return out
    index = _Turns(turns)
    words = [w for seg in out for w in seg["words"]]
    for w in words:
        if "start" in w:
            start = float(w["start"])
            end = float(w.get("end", start))
            w["speaker"] = index.overlapping(start, end) or index.nearest((start + end) / 2)
    previous: str | None = None
    for w in words:  # untimed words: the speaker before them
        if "speaker" in w:
            previous = w["speaker"]
        elif previous is not None:
            w["speaker"] = previous
    following: str | None = None
    for w in reversed(words):  # and at the very start, the first one after
        if "speaker" in w:
            following = w["speaker"]
        elif following is not None:
            w["speaker"] = following
    return out
