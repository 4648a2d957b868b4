"""Word and live-line times moved to where the speech is (core/speech.py), on hand-made
transcripts and speech regions whose right answers are known."""

from __future__ import annotations

from typing import Any, cast

import pytest

from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.core.speech import MARGIN, normalize, sentence_lines, snap_words


def seg(words: list[tuple[str, float, float]], start: float | None = None, end: float | None = None) -> Any:
    return {
        "start": words[0][1] if start is None else start,
        "end": words[-1][2] if end is None else end,
        "text": " ".join(w for w, _, _ in words),
        "words": [{"word": w, "start": a, "end": b, "score": 0.9} for w, a, b in words],
    }


def times(segments: list[AlignedSegment]) -> list[tuple[float, float]]:
    return [(w["start"], w["end"]) for s in segments for w in s["words"]]


def snap(segments: list[Any], speech: list[tuple[float, float]]) -> list[AlignedSegment]:
    return snap_words(cast(list[AlignedSegment], segments), speech)


def test_nothing_changes_without_regions() -> None:
    segments = [seg([("Hello", 0.2, 0.9), ("there.", 3.0, 5.0)])]
    assert snap(segments, []) == segments
    assert snap(segments, []) is not segments


def test_start_in_a_pause_moves_to_the_next_onset_and_end_to_the_previous_offset() -> None:
    # Whisper's times smear "Weekdays." over the 7 s of silence after it and "Then" over the
    # 2 s before it.
    segments = [
        seg([("Open", 1.0, 1.4), ("weekdays.", 1.45, 6.0)]),
        seg([("Then", 7.1, 9.3), ("go.", 9.3, 9.6)]),
    ]
    speech = [(1.0, 2.1), (9.0, 9.6)]
    out = snap(segments, speech)
    assert times(out) == [(1.0, 1.4), (1.45, 2.1), (9.0, 9.3), (9.3, 9.6)]
    assert (out[0]["start"], out[0]["end"]) == (1.0, 2.1)
    assert (out[1]["start"], out[1]["end"]) == (9.0, 9.6)
    assert segments[0]["words"][1]["end"] == 6.0  # the input is not changed


def test_edges_within_the_margin_stay() -> None:
    segments = [seg([("a", 0.96, 1.3), ("b", 1.35, 2.04)])]
    assert times(snap(segments, [(1.0, 2.0)])) == [(0.96, 1.3), (1.35, 2.04)]
    assert MARGIN >= 0.04


def test_first_and_last_word_of_a_region_take_its_onset_and_offset_when_close() -> None:
    segments = [seg([("one", 5.3, 5.6), ("two", 5.7, 6.1)]), seg([("three", 8.9, 9.4)])]
    out = snap(segments, [(5.0, 6.4), (8.0, 9.5)])
    # 0.3 s of speech before "one" and after "two" are theirs; after the pause, "three" starts
    # with the speech (the aligner put it 0.9 s late).
    assert times(out) == [(5.0, 5.6), (5.7, 6.4), (8.0, 9.5)]


def test_word_wholly_in_a_pause_goes_into_the_nearer_region() -> None:
    segments = [seg([("so", 2.1, 2.3), ("um", 3.5, 3.8), ("yes", 8.2, 8.5)])]
    out = snap(segments, [(1.0, 2.0), (8.0, 9.0)])
    # "um" is 1.5 s after the first region and 4.2 s before the second; order is kept.
    assert times(out) == [(1.8, 2.0), (1.8, 2.0), (8.0, 9.0)]
    segments = [seg([("yes", 6.5, 6.9), ("no", 8.2, 8.5)])]
    assert times(snap(segments, [(1.0, 2.0), (7.0, 9.0)])) == [(7.0, 7.4), (8.2, 9.0)]


def test_words_without_times_stay_untimed() -> None:
    segments = [
        {
            "start": 0.0,
            "end": 4.0,
            "text": "one 2 three",
            "words": [
                {"word": "one", "start": 0.0, "end": 0.4},
                {"word": "2"},
                {"word": "three", "start": 3.5, "end": 4.0},
            ],
        }
    ]
    out = snap(segments, [(0.5, 1.5), (3.0, 3.8)])
    assert out[0]["words"][1] == {"word": "2"}
    assert times([{**out[0], "words": [out[0]["words"][0], out[0]["words"][2]]}]) == [(0.5, 0.9), (3.0, 3.8)]


def test_normalize_sorts_merges_and_drops_bad_regions() -> None:
    assert normalize([(3.0, 4.0), (1.0, 2.0), (1.5, 2.5), (5.0, 5.0), (float("nan"), 1.0)]) == [
        (1.0, 2.5),
        (3.0, 4.0),
    ]


# --- live lines -------------------------------------------------------------------------------------


def test_chunk_text_becomes_sentence_lines_at_the_pauses() -> None:
    text = "The quick brown fox jumps. She sells bread. We walked home."
    speech = [(10.2, 12.5), (13.4, 15.0), (16.0, 17.8)]
    lines = sentence_lines(text, 10.0, 18.0, speech)
    assert lines == [
        (10.2, 12.5, "The quick brown fox jumps."),
        (13.4, 15.0, "She sells bread."),
        (16.0, 17.8, "We walked home."),
    ]


def test_line_times_are_shared_by_characters_over_speech_not_silence() -> None:
    # One continuous region then a long silence: both lines fall inside the speech.
    lines = sentence_lines("Aaaa aaaa. Bbbb bbbb.", 0.0, 30.0, [(1.0, 5.0)])
    assert [(a, b) for a, b, _ in lines] == [(1.0, 3.0), (3.0, 5.0)]


def test_boundary_far_from_any_pause_is_not_snapped() -> None:
    lines = sentence_lines("One two. Three four.", 0.0, 20.0, [(0.0, 8.0), (8.8, 10.0)], snap=1.0)
    assert lines[0][1] == pytest.approx(9.2 * 8 / 19, abs=0.001)  # 8 of 19 characters
    assert lines[1][0] == lines[0][1]


def test_unpunctuated_text_is_cut_at_long_pauses() -> None:
    # tiny.en often writes a chunk without punctuation; the long pauses still end lines.
    text = "Good morning and welcome to the city library Weekdays We now run a 24 hour service for everyone"
    speech = [(0.689, 3.743), (10.072, 10.797), (17.733, 20.922), (29.292, 31.553)]
    assert sentence_lines(text, 0.5, 21.0, speech) == [
        (0.689, 3.743, "Good morning and welcome to the city library"),
        (10.072, 10.797, "Weekdays"),
        (17.733, 20.922, "We now run a 24 hour service for everyone"),
    ]


def test_long_sentence_is_cut_and_empty_text_gives_no_lines() -> None:
    words = ["word"] * 40
    lines = sentence_lines(" ".join(words) + ".", 0.0, 20.0, [(0.0, 20.0)])
    assert len(lines) >= 2 and all(len(t) <= 84 for _, _, t in lines)
    assert " ".join(t for _, _, t in lines) == " ".join(words) + "."
    assert sentence_lines("   ", 0.0, 5.0, [(0.0, 5.0)]) == []
    # No regions inside the chunk (old jobs): the chunk's own span.
    assert sentence_lines("Hi. Bye.", 2.0, 4.0, []) == [(2.0, 2.857, "Hi."), (2.857, 4.0, "Bye.")]


def test_chinese_lines_end_at_full_width_marks() -> None:
    text = "\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002\u6211\u4eec\u53bb\u516c\u56ed\u5427\uff01"
    lines = sentence_lines(text, 0.0, 6.0, [(0.5, 2.5), (3.5, 5.5)])
    assert lines == [(0.5, 2.5, text[:7]), (3.5, 5.5, text[7:])]


def test_pauses_fall_between_the_right_words_when_the_aligner_drifts() -> None:
    # Whisper's cross-attention times as they come for "Which days? Weekdays. He reads.":
    # "?" a word of its own on the pause, "Weekdays" smeared late over a 7 s silence.
    segments = [
        seg(
            [
                ("Which", 6.2, 6.39),
                ("days", 6.39, 6.86),
                ("?", 7.25, 7.81),
                ("Weekdays", 7.9, 14.867),
                (".", 14.867, 15.914),
                ("He", 15.914, 16.36),
                ("reads.", 16.36, 17.21),
            ]
        )
    ]
    speech = [(6.2, 6.86), (7.25, 7.81), (14.8, 17.21)]
    out = snap(segments, speech)
    words = {w["word"]: (w["start"], w["end"]) for w in out[0]["words"]}
    assert words["Weekdays"][0] == 7.25 and words["."][1] <= 7.81  # in its own region
    assert words["He"][0] == 14.8 and words["days"][1] == 6.86


def test_words_between_two_pauses_are_stretched_onto_the_speech_between_them() -> None:
    # The aligner runs 0.6 s late through a sentence: both pauses are measured.
    segments = [seg([("dog.", 2.9, 3.9), ("She", 4.2, 4.5), ("sells", 4.5, 6.4), ("bread.", 6.4, 6.9)])]
    out = snap(segments, [(0.7, 3.3), (3.59, 6.19), (6.58, 9.0)])
    assert times(out)[1][0] == 3.59 and times(out)[2][1] <= 6.19
    assert times(out)[0][1] == 3.3
