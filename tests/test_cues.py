"""The cue builder: subtitle conventions (lines, durations, gaps, reading speed) on
word-aligned transcripts, including whisperx's quirks (missing word times, empty word
lists, CJK characters as words)."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Sequence
from typing import Any, cast

import pytest

from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue, build_cues, round_ms
from vsrt_service.core.protocol import AlignedSegment

RULES = CueSettings()


def ms(seconds: float) -> int:
    return round_ms(seconds)


def build(segments: Sequence[dict[str, Any]], rules: CueSettings = RULES) -> list[Cue]:
    """build_cues on raw whisperx-shaped dicts (which may lack keys the TypedDict names)."""
    return build_cues(cast(Sequence[AlignedSegment], segments), rules)


def segment(text: str, start: float = 0.0, word_s: float = 0.25, gap_s: float = 0.05) -> dict[str, Any]:
    """An aligned segment with evenly timed words, as whisperx returns it."""
    words = []
    t = start
    for w in text.split():
        words.append({"word": " " + w, "start": round(t, 3), "end": round(t + word_s, 3), "score": 0.9})
        t += word_s + gap_s
    return {"start": start, "end": round(t - gap_s, 3), "text": " " + text, "words": words}


def cue_words(cues: Sequence[Cue]) -> list[str]:
    return [w for cue in cues for w in cue.text.split()]


def check_invariants(cues: Sequence[Cue], rules: CueSettings) -> None:
    """What must hold for any input: order, positive length, gaps, line limits."""
    gap = ms(rules.min_gap_seconds)
    for cue in cues:
        assert ms(cue.end) > ms(cue.start) >= 0
        assert ms(cue.end) - ms(cue.start) <= ms(rules.max_cue_seconds)
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= rules.max_lines, cue
        for line in lines:
            assert line == line.strip() and line, cue
            assert len(line) <= rules.max_line_chars or " " not in line, cue
            # A leading dash marks a new speaker ("- Yes."); a word is never cut before one.
            assert not line.startswith("-") or line.startswith("- "), cue
    for a, b in itertools.pairwise(cues):
        assert ms(b.start) - ms(a.end) >= gap, (a, b)


# --- property tests over random word streams ---------------------------------------------
# The checks are plain functions: hypothesis drives them where it is installed (it shrinks a
# failure to a minimal stream), and a seeded random loop always drives them too.

Stream = list[tuple[str, int, int]]  # (word, start ms, end ms), monotonic, non-overlapping

CJK_CHARS = [
    *"我们今天去公园散步天气很好人跑小朋友放风筝觉得周末愉快",
    "\u3002",
    "\uff0c",
    "\u3001",
]  # full stop, full-width comma, enumeration comma


def to_segments(words: Stream, cuts: Sequence[int]) -> list[dict[str, Any]]:
    """The stream cut into whisperx segments at the given word indices."""
    bounds = [*sorted({c % len(words) for c in cuts} | {0}), len(words)]
    segments = []
    for a, b in itertools.pairwise(bounds):
        if a == b:
            continue
        part = words[a:b]
        segments.append(
            {
                "start": part[0][1] / 1000,
                "end": part[-1][2] / 1000,
                "text": " " + " ".join(w for w, _, _ in part),
                "words": [
                    {"word": " " + w, "start": s / 1000, "end": e / 1000, "score": 0.5} for w, s, e in part
                ],
            }
        )
    return segments


def assign_words(cues: Sequence[Cue], words: Stream) -> list[Stream]:
    """Which input words each cue shows (the cue texts split back into words, in order)."""
    groups = []
    k = 0
    for cue in cues:
        n = len(cue.text.split())
        groups.append(words[k : k + n])
        k += n
    return groups


def check_stream(words: Stream, cuts: Sequence[int], rules: CueSettings) -> None:
    """Every rule that must hold for a word stream, where the input permits it."""
    segments = to_segments(words, cuts)
    cues = build(segments, rules)
    check_invariants(cues, rules)
    assert cues == build(segments, rules)  # deterministic

    # No word lost, duplicated, reordered or split.
    assert cue_words(cues) == [w for w, _, _ in words]

    gap = ms(rules.min_gap_seconds)
    groups = assign_words(cues, words)
    for k, (cue, group) in enumerate(zip(cues, groups, strict=True)):
        assert group
        start, end = ms(cue.start), ms(cue.end)
        # Starts at its first word (later only when the previous cue left no room at all).
        assert start >= group[0][1]
        if start != group[0][1]:
            assert k > 0 and start == ms(cues[k - 1].end) + gap
        nxt = ms(cues[k + 1].start) if k + 1 < len(cues) else math.inf
        room = min(nxt - gap, start + ms(rules.max_cue_seconds))
        # Lasts the minimum duration, the reading time and the speech where the pauses allow.
        chars = len(cue.text.replace("\n", " "))
        need = max(ms(rules.min_cue_seconds), math.ceil(chars * 1000 / rules.max_chars_per_second))
        assert end >= min(start + need, room)
        assert end >= min(max(e for _, _, e in group), room)
        assert end <= room or end == start + 1
        # Ends a linger after the speech, longer only for the rules or to chain across a
        # real pause under 0.5 s.
        speech_end = max(e for _, _, e in group)
        if end > max(speech_end + ms(rules.linger_seconds), start + need, start + 1):
            assert end == nxt - gap and nxt - speech_end < 500, (cue, group)
        # A long pause always ends a cue.
        for (_, _, e1), (_, s2, _) in itertools.pairwise(group):
            assert s2 - e1 <= CueSettings().min_silence_for_new_cue * 1000
        # Several words in a cue: their speech fits the maximum duration.
        if len(group) > 1:
            assert max(e for _, _, e in group) - group[0][1] <= ms(rules.max_cue_seconds)


def check_cjk_stream(chars: Sequence[str], step_ms: int, rules: CueSettings) -> None:
    """Chinese text, one character per word: nothing lost, no spaces, lines within limits."""
    text = "".join(chars)
    words = [
        {"word": c, "start": i * step_ms / 1000, "end": (i * step_ms + step_ms - 30) / 1000, "score": 0.9}
        for i, c in enumerate(chars)
    ]
    cues = build([{"start": 0.0, "end": len(chars) * step_ms / 1000, "text": text, "words": words}], rules)
    check_invariants(cues, rules)
    assert "".join(c.text.replace("\n", "") for c in cues) == text
    for cue in cues:
        assert " " not in cue.text
        for line in cue.text.split("\n"):
            assert len(line) <= rules.max_line_chars


def random_word(rng: random.Random) -> str:
    if rng.random() < 0.05:
        word = "x" * rng.randint(45, 60)  # longer than any line
    else:
        word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz'") for _ in range(rng.randint(1, 12)))
    return word + rng.choice(["", "", "", ",", ".", "?", ";"])


def random_stream(rng: random.Random) -> Stream:
    out = []
    t = rng.randint(0, 5000)
    for _ in range(rng.randint(1, 80)):
        dur = rng.randint(20, 900)
        out.append((random_word(rng), t, t + dur))
        t += dur + (rng.randint(0, 200) if rng.random() < 0.8 else rng.randint(0, 3000))
    return out


def random_rules(rng: random.Random) -> CueSettings:
    return CueSettings(
        max_line_chars=rng.randint(10, 50),
        max_lines=rng.randint(1, 3),
        min_cue_seconds=rng.choice([0.5, 0.83, 1.2]),
        max_cue_seconds=rng.choice([3.0, 5.0, 7.0]),
        min_gap_seconds=rng.choice([0.0, 0.042, 0.083, 0.2]),
        max_chars_per_second=rng.choice([12.0, 17.0, 20.0, 25.0]),
    )


@pytest.mark.parametrize("seed", range(8))
def test_seeded_random_streams_obey_the_rules(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(40):
        rules = RULES if rng.random() < 0.3 else random_rules(rng)
        cuts = [rng.randint(0, 100) for _ in range(rng.randint(0, 4))]
        check_stream(random_stream(rng), cuts, rules)
        chars = [rng.choice(CJK_CHARS) for _ in range(rng.randint(1, 200))]
        check_cjk_stream(chars, rng.randint(80, 400), rules)


try:
    from hypothesis import (  # type: ignore[import-not-found, unused-ignore]
        HealthCheck,
        given,
        settings,
    )
    from hypothesis import strategies as st  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - the seeded tests above still run
    pass
else:
    # Strings from sampled characters rather than st.text: no charmap cache on disk.
    word_text = st.one_of(
        st.lists(st.sampled_from("abcdefghijklmnopqrstuvwxyzABC'"), min_size=1, max_size=12).map("".join),
        st.lists(st.sampled_from("xyz"), min_size=45, max_size=60).map("".join),  # longer than any line
    ).flatmap(lambda w: st.sampled_from([w, w + ",", w + ".", w + "?", w + ";"]))

    @st.composite
    def word_streams(draw: st.DrawFn) -> Stream:
        """Words with monotonic, non-overlapping timings in ms: (text, start, end)."""
        t = draw(st.integers(min_value=0, max_value=5000))
        out = []
        for _ in range(draw(st.integers(min_value=1, max_value=80))):
            text = draw(word_text)
            dur = draw(st.integers(min_value=20, max_value=900))
            out.append((text, t, t + dur))
            t += dur + draw(st.one_of(st.integers(0, 200), st.integers(0, 3000)))
        return out

    rules_strategy = st.one_of(
        st.just(RULES),
        st.builds(
            CueSettings,
            max_line_chars=st.integers(10, 50),
            max_lines=st.integers(1, 3),
            min_cue_seconds=st.sampled_from([0.5, 0.83, 1.2]),
            max_cue_seconds=st.sampled_from([3.0, 5.0, 7.0]),
            min_gap_seconds=st.sampled_from([0.0, 0.042, 0.083, 0.2]),
            max_chars_per_second=st.sampled_from([12.0, 17.0, 20.0, 25.0]),
        ),
    )

    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(words=word_streams(), cuts=st.lists(st.integers(0, 100), max_size=4), rules=rules_strategy)
    def test_random_streams_obey_the_rules(words: Stream, cuts: list[int], rules: CueSettings) -> None:
        check_stream(words, cuts, rules)

    @settings(max_examples=150, deadline=None, database=None)
    @given(
        chars=st.lists(st.sampled_from(CJK_CHARS), min_size=1, max_size=200),
        step=st.integers(80, 400),
        rules=rules_strategy,
    )
    def test_random_cjk_streams(chars: list[str], step: int, rules: CueSettings) -> None:
        check_cjk_stream(chars, step, rules)


# --- specific behaviour ----------------------------------------------------------------------


def test_empty_input_gives_no_cues() -> None:
    assert build([]) == []
    assert build([{"start": 0.0, "end": 1.0, "text": "  ", "words": []}]) == []


def test_short_sentence_is_one_line_cue_starting_at_first_word() -> None:
    cues = build([segment("Hello there, my friend.", start=12.34)])
    assert cues == [Cue(12.34, cues[0].end, "Hello there, my friend.")]
    assert cues[0].end >= 12.34 + 1.15  # the last word ends at 13.49


def test_line_break_prefers_punctuation() -> None:
    with_comma = build([segment("When we got there, the place was packed with people.")])
    without = build([segment("When we got there the place was packed with people.")])
    assert [c.text for c in with_comma] == ["When we got there,\nthe place was packed with people."]
    assert len(without) == 1 and without[0].text.count("\n") == 1
    assert not without[0].text.startswith("When we got there\n")


def test_two_lines_are_balanced_not_full_top_and_orphan_bottom() -> None:
    # 47 characters: filling the top line first would leave "home" alone at the bottom.
    text = "the quick brown fox jumps over the lazy dog ran home"
    (cue,) = build([segment(text)])
    top, bottom = cue.text.split("\n")
    assert abs(len(top) - len(bottom)) <= 8, cue.text
    # Two equally balanced breaks (19/24 or 24/19 characters): the bottom-heavy one wins.
    (cue,) = build([segment("blue fish swim past dark rock near deep cave")])
    assert cue.text == "blue fish swim past\ndark rock near deep cave"


def test_single_line_when_it_fits() -> None:
    (cue,) = build([segment("This fits on one line easily.")])
    assert "\n" not in cue.text


def test_sentence_end_starts_a_new_cue() -> None:
    cues = build([segment("This is the first sentence here. And this is the second one that follows.")])
    assert [c.text for c in cues] == [
        "This is the first sentence here.",
        "And this is the second one that follows.",
    ]


def test_cue_prefers_ending_at_a_clause_to_mid_phrase() -> None:
    text = (
        "I asked the man at the stall and he just shrugged, said something about the "
        "weather and the trucks, and went back to counting his coins."
    )
    cues = build([segment(text)])
    assert all(c.text.endswith((",", ".")) for c in cues), cues


def test_flash_cue_is_extended_into_silence() -> None:
    cues = build([segment("Yes.", start=10.0, word_s=0.2), segment("Okay then, let us go.", start=13.0)])
    assert [c.text for c in cues] == ["Yes.", "Okay then, let us go."]
    assert cues[0].start == 10.0
    assert math.isclose(cues[0].end, 10.83)


def test_flash_cue_stops_short_of_the_next_cue() -> None:
    # A sentence end, then the next words 0.5 s later: "No." can't last 0.83 s alone,
    # so it either shares a cue or ends a minimum gap before the next one.
    cues = build(
        [
            segment("No.", start=1.0, word_s=0.2),
            segment("I will not do that for you today, whatever you say.", start=1.7),
        ]
    )
    check_invariants(cues, RULES)
    assert cue_words(cues)[0] == "No."
    for a, b in itertools.pairwise(cues):
        assert b.start - a.end >= 0.083 - 1e-9


def test_reading_speed_extends_into_the_following_silence() -> None:
    text = "Everything happened so quickly that nobody saw it coming at all."
    fast = segment(text, start=2.0, word_s=0.1, gap_s=0.02)  # ~64 chars in 1.3 s
    cues = build([fast, segment("Later.", start=9.0)])
    assert cues[0].text.replace("\n", " ") == text
    chars = len(text)
    assert cues[0].end - cues[0].start >= chars / 20 - 1e-9
    assert cues[0].end <= 9.0 - 0.083 + 1e-9


def test_reading_speed_accepted_when_no_pause_allows_it() -> None:
    # Fast speech directly followed by more speech: the cue ends a minimum gap before the
    # next one even if that is too fast to read, rather than overlapping it.
    first = segment(
        "Everything happened so quickly that nobody saw it coming.", start=0.0, word_s=0.1, gap_s=0.02
    )
    second = segment("Then the lights went out and we all ran outside.", start=1.35)
    cues = build([first, second])
    check_invariants(cues, RULES)
    assert ms(cues[1].start) - ms(cues[0].end) == 83


def test_small_gap_between_cues_is_closed_to_the_minimum() -> None:
    # The first sentence's speech ends at 1.75 s: a real pause of 0.45 s.
    cues = build(
        [
            segment("This is the first sentence here."),
            segment("And this is the second one that follows.", start=2.2),
        ]
    )
    assert len(cues) == 2
    assert ms(cues[1].start) - ms(cues[0].end) == 83


def test_long_pause_ends_a_cue() -> None:
    cues = build(
        [
            {
                "start": 0.0,
                "end": 4.0,
                "text": " wait for it now",
                "words": [
                    {"word": " wait", "start": 0.0, "end": 0.3, "score": 0.9},
                    {"word": " for", "start": 0.35, "end": 0.5, "score": 0.9},
                    {"word": " it", "start": 2.2, "end": 2.4, "score": 0.9},
                    {"word": " now", "start": 2.45, "end": 2.7, "score": 0.9},
                ],
            }
        ]
    )
    assert [c.text for c in cues] == ["wait for", "it now"]
    assert cues[1].start == 2.2


def test_max_duration_splits_long_speech() -> None:
    text = " ".join(["word"] * 60)  # 18 s of speech without punctuation or pauses
    cues = build([segment(text)])
    assert len(cues) >= 3
    for cue in cues:
        assert cue.end - cue.start <= 7.0 + 1e-9
    assert cue_words(cues) == text.split()


def test_over_long_word_kept_whole_on_its_own_line() -> None:
    long_word = "Pneumonoultramicroscopicsilicovolcanoconiosis-like"  # 50 chars
    cues = build([segment(f"he said {long_word} twice")])
    lines = [line for c in cues for line in c.text.split("\n")]
    assert long_word in lines
    assert cue_words(cues) == ["he", "said", long_word, "twice"]


def test_words_are_stripped_and_never_split() -> None:
    seg = segment("alpha beta gamma")
    seg["words"][1]["word"] = "  beta  "
    (cue,) = build([seg])
    assert cue.text == "alpha beta gamma"


def test_missing_word_times_are_interpolated_from_neighbours() -> None:
    cues = build(
        [
            {
                "start": 5.0,
                "end": 9.0,
                "text": " 2024 was a good year. In 1999 it was not.",
                "words": [
                    {"word": " 2024"},  # no times: wav2vec2 could not align digits
                    {"word": " was", "start": 6.0, "end": 6.2, "score": 0.9},
                    {"word": " a", "start": 6.25, "end": 6.3, "score": 0.9},
                    {"word": " good", "start": 6.35, "end": 6.6, "score": 0.9},
                    {"word": " year.", "start": 6.65, "end": 6.9, "score": 0.9},
                    {"word": " In", "start": 7.0, "end": 7.1, "score": 0.9},
                    {"word": " 1999", "score": None},
                    {"word": " it", "start": 8.0, "end": 8.1, "score": 0.9},
                    {"word": " was", "start": 8.15, "end": 8.3, "score": 0.9},
                    {"word": " not.", "start": 8.35, "end": 8.6, "score": 0.9},
                ],
            }
        ]
    )
    assert cue_words(cues) == "2024 was a good year. In 1999 it was not.".split()
    # "2024" is placed just before "was" (at most 0.25 s a character), not at 5.0.
    assert math.isclose(cues[0].start, 6.0 - 4 * 0.25)
    check_invariants(cues, RULES)


def test_missing_times_follow_the_previous_word_not_the_silence() -> None:
    cues = build(
        [
            {
                "start": 0.0,
                "end": 12.0,
                "text": " wait 1999 and then",
                "words": [
                    {"word": " wait", "start": 0.0, "end": 0.5, "score": 0.9},
                    {"word": " 1999"},  # untimed, in a 9.5 s silence
                    {"word": " and", "start": 10.0, "end": 10.2, "score": 0.9},
                    {"word": " then", "start": 10.3, "end": 10.6, "score": 0.9},
                ],
            }
        ]
    )
    # "1999" follows "wait" (0.5 .. 1.5 s), not stretched over the whole silence,
    # and the long pause after it still ends the cue.
    assert [c.text for c in cues] == ["wait 1999", "and then"]
    assert cues[0].start == 0.0
    assert 1.5 <= cues[0].end < 3.0
    assert cues[1].start == 10.0


def test_nan_and_non_monotonic_times_are_clamped() -> None:
    cues = build(
        [
            {
                "start": 1.0,
                "end": 3.0,
                "text": " one two three four",
                "words": [
                    {"word": " one", "start": 1.0, "end": 1.4, "score": 0.9},
                    {"word": " two", "start": 0.9, "end": 1.6, "score": 0.9},  # starts earlier
                    {"word": " three", "start": float("nan"), "end": 2.0, "score": 0.9},
                    {"word": " four", "start": 2.1, "end": 2.05, "score": 0.9},  # ends before start
                ],
            },
            segment("five six", start=1.5),
        ]
    )  # a segment overlapping the previous one
    check_invariants(cues, RULES)
    assert cue_words(cues) == ["one", "two", "three", "four", "five", "six"]
    assert all(a.start <= b.start for a, b in itertools.pairwise(cues))


def test_empty_words_list_spreads_text_over_segment() -> None:
    text = (
        "This segment came back without any word timings so its text is spread over "
        "the span by character count, which is the best guess we have about it all."
    )
    cues = build([{"start": 10.0, "end": 20.0, "text": " " + text, "words": []}])
    assert cue_words(cues) == text.split()
    assert cues[0].start == 10.0
    assert cues[-1].end >= 20.0 - 1e-9
    check_invariants(cues, RULES)
    # Each cue starts about where its first character falls in the text.
    offset = 0
    for cue in cues:
        expected = 10.0 + 10.0 * offset / len(text)
        assert abs(cue.start - expected) < 0.3, (cue, expected)
        offset += len(cue.text) + 1


CHINESE_60 = (
    "今天天气很好\uff0c我们一起去公园散步吧。公园里有很多人在跑步、打太极拳\uff0c"
    "还有小朋友在放风筝。我觉得这样的周末真的非常愉快呢。"
)


def test_chinese_text_breaks_between_characters_within_line_limits() -> None:
    assert len(CHINESE_60) == 60
    words: list[dict[str, Any]] = [
        {"word": c, "start": round(i * 0.1, 3), "end": round(i * 0.1 + 0.08, 3), "score": 0.9}
        for i, c in enumerate(CHINESE_60)
    ]
    for w in words:  # wav2vec2 gives punctuation no times
        if w["word"] in "\uff0c\u3002\u3001":
            del w["start"], w["end"]
    cues = build([{"start": 0.0, "end": 6.0, "text": CHINESE_60, "words": words}])
    check_invariants(cues, RULES)
    assert "".join(c.text.replace("\n", "") for c in cues) == CHINESE_60
    lines = [line for c in cues for line in c.text.split("\n")]
    assert all(0 < len(line) <= 42 for line in lines)
    assert len(lines) >= 2  # 60 characters cannot be one line
    assert all(" " not in line for line in lines)
    # Punctuation stays with the text before it and lines break after it.
    assert not any(line[0] in "\uff0c\u3002\u3001" for line in lines)
    assert all(line[-1] in "\uff0c\u3002\u3001" for line in lines)


def test_chinese_segment_without_words_is_split_by_character() -> None:
    cues = build([{"start": 0.0, "end": 15.0, "text": CHINESE_60, "words": []}])
    assert "".join(c.text.replace("\n", "") for c in cues) == CHINESE_60
    assert len(cues) >= 3  # 15 s of speech cannot be one 7 s cue
    check_invariants(cues, RULES)


def test_chinese_multi_character_words_and_latin_runs() -> None:
    text = "我们用GPU训练了3.5个小时的模型\uff0c效果很好。"
    words = [
        {"word": w, "start": 0.3 * i, "end": 0.3 * i + 0.25, "score": 0.9}
        for i, w in enumerate(
            ["我们", "用", "GPU", "训练", "了", "3.5", "个", "小时", "的", "模型\uff0c", "效果", "很好。"]
        )
    ]
    cues = build([{"start": 0.0, "end": 3.6, "text": text, "words": words}], CueSettings(max_line_chars=10))
    joined = "".join(c.text.replace("\n", "") for c in cues)
    assert joined == text
    lines = [line for c in cues for line in c.text.split("\n")]
    assert all(len(line) <= 10 for line in lines)
    assert not any("GP" in line and "GPU" not in line for line in lines)
    assert not any(line.startswith(("\uff0c", "\u3002")) for line in lines)


def test_segments_join_with_spaces_only_between_non_cjk() -> None:
    cues = build(
        [
            {"start": 0.0, "end": 0.5, "text": "你好。", "words": []},
            {"start": 0.6, "end": 1.0, "text": "世界。", "words": []},
        ]
    )
    assert [c.text for c in cues] == ["你好。世界。"]
    cues = build([segment("Hello."), segment("World.", start=0.4)])
    assert cue_words(cues) == ["Hello.", "World."]
    assert "Hello.World." not in "".join(c.text for c in cues)


def test_custom_rules_are_respected() -> None:
    rules = CueSettings(
        max_line_chars=20, max_lines=1, max_cue_seconds=3.0, min_cue_seconds=1.0, min_gap_seconds=0.1
    )
    text = "a fairly long sentence that will need several short single line cues to show"
    cues = build([segment(text)], rules)
    check_invariants(cues, rules)
    assert all("\n" not in c.text and len(c.text) <= 20 for c in cues)
    assert cue_words(cues) == text.split()
    for a, b in itertools.pairwise(cues):
        assert ms(b.start) - ms(a.end) >= 100


def test_cue_times_are_whole_milliseconds() -> None:
    cues = build([segment("Some words here.", start=1.23456)])
    assert cues[0].start == 1.235
    for cue in cues:
        assert cue.start == ms(cue.start) / 1000 and cue.end == ms(cue.end) / 1000


# --- glued tokens ------------------------------------------------------------------------------


def whisper_segment(text: str, tokens: Sequence[str], start: float = 0.0) -> dict[str, Any]:
    """A segment as Whisper's own word timings give it: words stripped of their spaces, so
    the segment text alone says that "24" and "-hour" are one written word."""
    words = []
    t = start
    for token in tokens:
        words.append({"word": token, "start": round(t, 3), "end": round(t + 0.25, 3), "score": 0.9})
        t += 0.3
    return {"start": start, "end": round(t, 3), "text": " " + text, "words": words}


def test_hyphenated_word_from_whisper_is_not_cut_at_a_line_break() -> None:
    # Whisper's DTW words for "a 24-hour service" are " 24" and "-hour": the line break
    # falls between them unless they are one unit.
    prefix = "The city has finally opened a"
    text = prefix + " 24-hour service for everyone in town."
    tokens = [*prefix.split(), " 24", "-hour", "service", "for", "everyone", "in", "town."]
    cues = build([whisper_segment(text, tokens)])
    check_invariants(cues, RULES)
    lines = [line for c in cues for line in c.text.split("\n")]
    assert any("24-hour" in line for line in lines), lines
    assert " ".join(lines) == text


@pytest.mark.parametrize(
    ("text", "tokens", "whole"),
    [
        ("It is the company's best year so far by a long way, they say.", ["company", "'s"], "company's"),
        ("Prices went up by 12% in one year and nobody was surprised at all.", ["12", "%"], "12%"),
        ("They really didn't want to go to the party on a school night.", ["did", "n't"], "didn't"),
    ],
)
def test_tokens_without_a_leading_space_stay_with_the_word_before(
    text: str, tokens: list[str], whole: str
) -> None:
    words = text.split()
    at = words.index(whole if whole in words else whole + ",")
    split = [*words[:at], *tokens, *words[at + 1 :]]
    # Narrow lines put a break everywhere it is allowed.
    for width in range(8, 30):
        rules = CueSettings(max_line_chars=width)
        cues = build([whisper_segment(text, split)], rules)
        check_invariants(cues, rules)
        pieces = [w for c in cues for line in c.text.split("\n") for w in line.split()]
        assert pieces == words, (width, cues)


def test_japanese_small_kana_and_long_vowel_mark_never_start_a_line() -> None:
    text = "コーヒーとチョコレートをちょっとだけ"
    words = [{"word": c, "start": i * 0.2, "end": i * 0.2 + 0.15, "score": 0.9} for i, c in enumerate(text)]
    for width in range(3, 10):
        rules = CueSettings(max_line_chars=width)
        cues = build([{"start": 0.0, "end": len(text) * 0.2, "text": text, "words": words}], rules)
        lines = [line for c in cues for line in c.text.split("\n")]
        assert "".join(lines) == text
        assert not any(line[0] in "ーゃゅょっョッ" for line in lines), lines
        assert max(len(line) for line in lines) <= width + 1  # glued pairs may overrun by one


# --- timing to the speech -----------------------------------------------------------------------


def test_lone_word_before_a_long_silence_lingers_briefly() -> None:
    # "Weekdays." then 7 s of silence: on screen for the minimum duration, not the silence.
    cues = build([segment("Weekdays.", start=3.0, word_s=0.6), segment("Good morning.", start=10.6)])
    assert [c.text for c in cues] == ["Weekdays.", "Good morning."]
    assert cues[0].start == 3.0
    assert math.isclose(cues[0].end, 3.6 + RULES.linger_seconds)  # the speech end plus the linger
    cues = build([segment("Yes.", start=3.0, word_s=0.3), segment("Good morning.", start=10.6)])
    assert math.isclose(cues[0].end, 3.83)  # the minimum duration (speech + linger is 3.7 s)


def test_cue_ends_a_linger_after_its_speech_before_a_pause() -> None:
    first = segment("This is the first sentence here.")  # speech ends at 1.75 s
    cues = build([first, segment("And this is the second one that follows.", start=2.6)])
    assert math.isclose(cues[0].end, 1.75 + RULES.linger_seconds)  # the real pause is 0.85 s: not chained
    cues = build([first, segment("And this is the second one.", start=4.0)])
    assert math.isclose(cues[0].end, 1.75 + RULES.linger_seconds)


def test_no_linger_into_speech_that_has_no_words() -> None:
    # Music or a voice Whisper skipped from 2.2 s: the cue stops a minimum gap before it.
    segments = [segment("Right.", start=1.0, word_s=0.3), segment("Then we left.", start=9.0)]
    speech = [(1.0, 1.3), (1.5, 1.9), (9.0, 9.9)]
    cues = build_cues(cast(Sequence[AlignedSegment], segments), RULES, speech)
    assert cues[0].start == 1.0 and math.isclose(cues[0].end, 1.5 - 0.083)
    assert math.isclose(build(segments)[0].end, 1.83)  # without regions: the minimum duration
