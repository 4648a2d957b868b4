"""The quality benchmark's metrics on hand-made cues: the figures it prints must mean what
they say, or the before/after comparison of cue timing is worthless."""

from __future__ import annotations

import pytest

from bench.quality import rule_breaks, sentence_errors, silences, targets, timing_stats
from tests.media import Sentence
from vsrt_service.core.cues import Cue

SENTENCES = [
    Sentence("The cat sat on the mat.", 1.0, 2.5),
    Sentence("A dog ran home.", 2.8, 4.0),
    Sentence("Twenty-four hours.", 10.0, 11.0),
    Sentence("Nobody heard this.", 13.0, 14.0),
]


def test_sentence_errors_match_words_across_cues_and_substitutions() -> None:
    cues = [
        Cue(0.9, 2.0, "The cat sat"),
        Cue(2.083, 3.5, "on the mat.\nA dog"),  # the end of one sentence, the start of the next
        Cue(3.583, 4.4, "ran hone."),  # a misheard word still shows that speech
        Cue(9.8, 11.7, "24 hours."),  # digits are spelled out before matching
    ]
    errors = sentence_errors(SENTENCES, cues)
    got = [(e.first_cue, e.last_cue, e.start_error, e.end_error) for e in errors]
    assert got == [
        (0, 1, -0.1, 1.0),
        (1, 2, -0.717, 0.4),
        (3, 3, -0.2, 0.7),
        (None, None, None, None),  # no cue holds any of its words
    ]
    stats = timing_stats(errors)
    assert stats == {
        "sentences": 4,
        "missed": 1,
        "start_abs_median": 0.2,
        "start_abs_p90": 0.717,
        "start_within": 0.5,  # 2 of 4: the missed sentence counts as outside
        "end_median": 0.7,
        "end_abs_median": 0.7,
        "end_abs_p90": 1.0,
    }


def test_silences_are_the_long_gaps_without_speech_overlaps_included() -> None:
    # 11-13 s is exactly 2 s: not longer than LONG_SILENCE
    assert silences(SENTENCES, 17.0) == [(4.0, 10.0), (14.0, 17.0)]
    overlapping = [Sentence("a", 0.5, 6.0), Sentence("b", 1.0, 2.0), Sentence("c", 9.0, 9.5)]
    assert silences(overlapping, 9.6) == [(6.0, 9.0)]


def test_rule_breaks_name_each_broken_rule_once() -> None:
    sentences = [Sentence("x", 0.0, 1.0), Sentence("y", 5.0, 30.0)]
    cues = [
        Cue(0.0, 2.0, "- a line that starts with a dash"),  # 0: dash
        Cue(2.1, 4.0, "one\ntwo\nthree"),  # 1: three lines, and over the silence 1-5 s
        Cue(4.05, 4.5, "short, room after"),  # 2: gap 0.05 before it; short with room
        Cue(5.0, 5.5, "short, forced"),  # 3: no break: the next cue leaves no room
        Cue(5.6, 13.0, "x" * 43),  # 4: 43 chars, 7.4 s, overlaps the next
        Cue(12.9, 14.0, "fine"),  # 5
        Cue(29.5, 30.0, "last, at the end"),  # 6: too short, but the media ends
    ]
    got = sorted((b.cue, b.kind) for b in rule_breaks(cues, sentences, 30.2))
    assert got == [
        (0, "dash"),
        (1, ">2 lines"),
        (1, "gap<2f"),
        (1, "silence"),
        (2, "<0.83s"),
        (4, ">7s"),
        (4, "line>42"),
        (4, "overlap"),
    ]


@pytest.mark.parametrize(
    ("row", "peer_wers", "expected"),
    [
        (
            {
                "start_abs_median": 0.1,
                "start_within": 0.95,
                "end_abs_median": 0.3,
                "wer": 0.05,
                "rule_breaks": 0,
            },
            [0.05, 0.2],
            [True, True, True, True, True],
        ),
        (
            {
                "start_abs_median": 0.11,
                "start_within": 0.9,
                "end_abs_median": 0.7,
                "wer": 0.06,
                "rule_breaks": 1,
            },
            [0.05],
            [False, False, False, False, False],
        ),
        (
            {
                "start_abs_median": None,
                "start_within": 0.0,
                "end_abs_median": None,
                "wer": 1.0,
                "rule_breaks": 0,
            },
            [],
            [None, False, None, None, True],
        ),
    ],
)
def test_targets(row: dict[str, float | None], peer_wers: list[float], expected: list[bool | None]) -> None:
    assert list(targets(row, peer_wers).values()) == expected
