"""The cue rules as warnings (`core.cue_rules`) and the editor's reflow (`core.reflow`)."""

from __future__ import annotations

import random

from tests.test_cues import check_invariants
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cue_rules import check_cues
from vsrt_service.core.cues import Cue, build_cues
from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.core.reflow import reflow

RULES = CueSettings()


def codes(cues: list[Cue], rules: CueSettings = RULES) -> list[tuple[int, str]]:
    return [(w["index"], w["code"]) for w in check_cues(cues, rules)]


def test_each_broken_rule_is_named_on_its_cue() -> None:
    cues = [
        Cue(0.0, 2.0, "Fine and short."),
        Cue(1.5, 3.0, "Starts too early."),  # overlap
        Cue(3.02, 4.0, "Too close."),  # 20 ms after the previous: under the gap
        Cue(5.0, 5.3, "Gone."),  # too short
        Cue(6.0, 15.0, "Stays up far too long."),  # too long
        Cue(16.0, 17.0, "one\ntwo\nthree"),  # too many lines
        Cue(18.0, 21.0, "x" * 50),  # one line of 50 characters
        Cue(22.0, 23.0, "Forty characters read in one second flat."),  # too fast
        Cue(24.0, 25.0, "  \n "),  # no text
    ]
    assert codes(cues) == [
        (1, "overlap"),
        (2, "gap_too_small"),
        (3, "too_short"),
        (4, "too_long"),
        (5, "too_many_lines"),
        (6, "line_too_long"),
        (7, "too_fast"),
        (8, "empty"),
    ]
    messages = {w["code"]: w["message"] for w in check_cues(cues, RULES)}
    assert messages["line_too_long"] == "a line of 50 characters, at most 42"
    assert messages["too_fast"].endswith("at most 20")


def test_cues_the_builder_makes_break_no_layout_rule() -> None:
    rng = random.Random(7)
    vocabulary = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex".split()
    for _ in range(50):
        t, words = 0.0, []
        for _ in range(rng.randint(5, 120)):
            t += rng.uniform(0.05, 1.2 if rng.random() < 0.1 else 0.2)
            d = rng.uniform(0.15, 0.5)
            words.append((rng.choice(vocabulary), t, t + d))
            t += d
        cues = build_cues([aligned(words)], RULES)
        layout = {"overlap", "gap_too_small", "too_many_lines", "line_too_long", "too_long", "empty"}
        assert not [c for c in codes(cues) if c[1] in layout], cues


def aligned(words: list[tuple[str, float, float]]) -> AlignedSegment:
    return {
        "start": words[0][1],
        "end": words[-1][2],
        "text": " ".join(w for w, _, _ in words),
        "words": [{"word": w, "start": a, "end": b} for w, a, b in words],
    }


WORDS = [
    ("When", 0.50, 0.70), ("the", 0.72, 0.80), ("sunlight", 0.85, 1.30), ("strikes", 1.35, 1.80),
    ("raindrops", 1.85, 2.40), ("in", 2.45, 2.55), ("the", 2.57, 2.65), ("air,", 2.70, 3.00),
    ("they", 3.40, 3.60), ("act", 3.65, 3.90), ("as", 3.95, 4.05), ("a", 4.08, 4.12),
    ("prism", 4.15, 4.60), ("and", 4.65, 4.80), ("form", 4.85, 5.10), ("a", 5.12, 5.16),
    ("rainbow.", 5.20, 5.90),
]  # fmt: skip


def test_reflow_keeps_word_times_when_the_words_still_match() -> None:
    result = [aligned(WORDS)]
    # The user fixed a spelling and crammed everything into one long line.
    text = " ".join(w for w, _, _ in WORDS).replace("prism", "prysm")
    out = reflow([Cue(0.5, 6.2, text)], result, RULES)
    check_invariants(out, RULES)
    assert len(out) >= 2 and " ".join(" ".join(c.text.split()) for c in out) == text
    assert out[0].start == 0.5
    starts = {a for _, a, _ in WORDS}
    assert all(c.start in starts for c in out), out  # every cue starts on a measured word
    assert out[-1].end <= 6.2


def test_reflow_of_new_words_spreads_them_over_the_span() -> None:
    result = [aligned(WORDS)]
    text = "An entirely different sentence that the user typed in, much longer than the old one ever was."
    out = reflow([Cue(0.5, 3.0, "old"), Cue(3.4, 6.0, text)], result, RULES)
    check_invariants(out, RULES)
    assert " ".join(" ".join(c.text.split()) for c in out) == f"old {text}"
    assert out[0].start >= 0.5 and out[-1].end <= 6.0
    assert reflow([], result, RULES) == [] and reflow([Cue(0, 1, " ")], result, RULES) == []


def said_by(cues: list[Cue], dash: str = RULES.dialogue_dash) -> list[tuple[str | None, str]]:
    """(speaker, word) of every word of the cues, dialogue dashes left out."""
    out: list[tuple[str | None, str]] = []
    for cue in cues:
        lines = cue.text.split("\n")
        for k, line in enumerate(lines):
            who = cue.speakers[min(k, len(cue.speakers) - 1)] if cue.speakers else cue.speaker
            words = line.removeprefix(dash).split() if cue.speakers else line.split()
            out.extend((who, w) for w in words)
    return out


def test_reflow_keeps_each_words_speaker_with_the_aligned_times() -> None:
    result = [aligned(WORDS)]
    first = " ".join(w for w, _, _ in WORDS[:8])
    second = " ".join(w for w, _, _ in WORDS[8:])
    # The user renamed the speakers: their names win over the machine's labels.
    selection = [Cue(0.5, 3.0, first, speaker="Ana"), Cue(3.4, 6.0, second, speaker="Ben")]
    out = reflow(selection, result, RULES)
    check_invariants(out, RULES)
    assert said_by(out) == [("Ana", w) for w in first.split()] + [("Ben", w) for w in second.split()]
    assert all(c.speaker is not None or len(c.speakers) == 2 for c in out), out
    assert "mixed_speakers" not in {code for _, code in codes(out)}


def test_reflow_of_a_dialogue_cue_keeps_who_says_which_line() -> None:
    dialogue = Cue(1.0, 3.0, "- I didn't know you were there.\n- Neither did I.", speakers=("Ana", "Ben"))
    out = reflow([dialogue, Cue(3.5, 5.0, "Well, now we know.", speaker="Ana")], None, RULES)
    check_invariants(out, RULES)
    words = "I didn't know you were there.".split()
    assert said_by(out) == [
        *[("Ana", w) for w in words],
        ("Ben", "Neither"),
        ("Ben", "did"),
        ("Ben", "I."),
        *[("Ana", w) for w in "Well, now we know.".split()],
    ]
    assert "mixed_speakers" not in {code for _, code in codes(out)}
    # Without speakers nothing changes: no cue gets one.
    plain = reflow([Cue(1.0, 3.0, "Just some words here.")], None, RULES)
    assert [(c.speaker, c.speakers) for c in plain] == [(None, ())]
