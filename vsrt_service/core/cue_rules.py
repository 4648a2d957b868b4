"""The cue rules of one job, and what a set of cues breaks of them.

The cue builder obeys the rules; a person editing cues may not, and that is their call:
`check_cues` names each broken rule per cue so the server can warn (never refuse) and the
editor can colour the cue. The editor's own live indicators (static/cuecheck.js) apply the
same rules with the `rules` the server sends, so both say the same thing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from enum import StrEnum
from typing import Any, TypedDict

from vsrt_service.core.config import CueSettings, Settings
from vsrt_service.core.cues import Cue, round_ms
from vsrt_service.core.options import JobOptions


class CueProblem(StrEnum):
    """What a cue can break; on the wire as the plain string."""

    EMPTY = "empty"
    TOO_MANY_LINES = "too_many_lines"
    LINE_TOO_LONG = "line_too_long"
    TOO_FAST = "too_fast"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    OVERLAP = "overlap"
    GAP_TOO_SMALL = "gap_too_small"
    MIXED_SPEAKERS = "mixed_speakers"


class CueWarning(TypedDict):
    index: int  # 0-based, in the order the cues were given
    code: str  # a CueProblem
    message: str


def cue_rules(settings: Settings, options: JobOptions) -> CueSettings:
    """The rules a job's cues are built and checked with: its options over the config."""
    return CueSettings(
        max_line_chars=options.max_line_chars,
        max_lines=options.max_lines,
        min_cue_seconds=min(settings.cues.min_cue_seconds, options.max_cue_seconds / 2),
        max_cue_seconds=options.max_cue_seconds,
        min_gap_seconds=settings.cues.min_gap_seconds,
        max_chars_per_second=options.max_chars_per_second,
        linger_seconds=settings.cues.linger_seconds,
        min_silence_for_new_cue=options.min_silence_for_new_cue,
        dialogue_cues=settings.cues.dialogue_cues,
        dialogue_dash=settings.cues.dialogue_dash,
    )


def rules_json(rules: CueSettings) -> dict[str, Any]:
    """The rules as the editor reads them."""
    return asdict(rules)


def reading_chars(text: str) -> int:
    """Characters a viewer reads: line breaks and the spaces around them do not count."""
    return sum(len(line.strip()) for line in text.split("\n"))


def mixed_speakers(cue: Cue, lines: Sequence[str], dash: str) -> int:
    """How many people a cue holds when that is more than one and the cue is not the
    dialogue form (two lines, one speaker each, each starting with the dash); else 0."""
    who = cue.speakers or ((cue.speaker,) if cue.speaker is not None else ())
    count = len(set(who))
    dialogue = len(lines) == 2 == len(cue.speakers) and all(line.startswith(dash) for line in lines)
    return count if count > 1 and not dialogue else 0


def check_cues(cues: Sequence[Cue], rules: CueSettings) -> list[CueWarning]:
    """Every rule each cue breaks, in cue order. Times are compared in whole milliseconds,
    as the files carry them."""
    out: list[CueWarning] = []

    def warn(index: int, code: CueProblem, message: str) -> None:
        out.append({"index": index, "code": code.value, "message": message})

    previous_end: int | None = None
    for index, cue in enumerate(cues):
        start, end = round_ms(cue.start), round_ms(cue.end)
        lines = [line.strip() for line in cue.text.split("\n") if line.strip()]
        if not lines:
            warn(index, CueProblem.EMPTY, "the cue has no text")
        if len(lines) > rules.max_lines:
            warn(index, CueProblem.TOO_MANY_LINES, f"{len(lines)} lines, at most {rules.max_lines}")
        longest = max((len(line) for line in lines), default=0)
        if longest > rules.max_line_chars:
            warn(
                index,
                CueProblem.LINE_TOO_LONG,
                f"a line of {longest} characters, at most {rules.max_line_chars}",
            )
        seconds = (end - start) / 1000
        if seconds > 0 and lines:
            cps = reading_chars(cue.text) / seconds
            if cps > rules.max_chars_per_second + 1e-9:
                warn(
                    index,
                    CueProblem.TOO_FAST,
                    f"{cps:.1f} characters per second, at most {rules.max_chars_per_second:g}",
                )
        if end - start < round_ms(rules.min_cue_seconds):
            warn(
                index,
                CueProblem.TOO_SHORT,
                f"{seconds:.3f} s on screen, at least {rules.min_cue_seconds:g} s",
            )
        if end - start > round_ms(rules.max_cue_seconds):
            warn(
                index, CueProblem.TOO_LONG, f"{seconds:.3f} s on screen, at most {rules.max_cue_seconds:g} s"
            )
        mixed = mixed_speakers(cue, lines, rules.dialogue_dash)
        if mixed:
            warn(
                index,
                CueProblem.MIXED_SPEAKERS,
                f"{mixed} speakers in one cue: only a two-line dialogue cue,"
                f" each line starting with '{rules.dialogue_dash}'",
            )
        if previous_end is not None:
            if start < previous_end:
                warn(index, CueProblem.OVERLAP, "starts before the previous cue ends")
            elif start - previous_end < round_ms(rules.min_gap_seconds):
                warn(
                    index,
                    CueProblem.GAP_TOO_SMALL,
                    f"{(start - previous_end) / 1000:.3f} s after the previous cue,"
                    f" at least {rules.min_gap_seconds:g} s",
                )
        previous_end = end if previous_end is None else max(previous_end, end)
    return out
