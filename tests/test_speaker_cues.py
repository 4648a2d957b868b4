"""Speaker-aware cues (issue 13): a speaker change is a strong cue boundary, two short turns
may share one two-line dialogue cue (each line starting with the dialogue dash), and the
formats carry speakers (VTT voice spans, JSON fields, TXT turns). Pure unit tests."""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Sequence
from typing import Any

import pytest

from tests.test_cue_rules import codes
from tests.test_cues import (
    RULES,
    Stream,
    build,
    check_invariants,
    random_rules,
    random_stream,
    to_segments,
)
from vsrt_service.core.config import ConfigError, CueSettings, load_settings
from vsrt_service.core.cue_rules import check_cues, cue_rules
from vsrt_service.core.cues import Cue
from vsrt_service.core.formats import cues_from_json, parse_vtt, render, to_json, to_srt, to_txt, to_vtt
from vsrt_service.core.options import OptionError, parse_options

SpeakerStream = list[tuple[str, int, int, str | None]]  # (word, start ms, end ms, speaker)


def speaker_segments(words: SpeakerStream, cuts: Sequence[int]) -> list[dict[str, Any]]:
    """`to_segments` of the stream, each word carrying its speaker as whisperx's
    assign_word_speakers puts it (no `speaker` key where the word has none)."""
    plain: Stream = [(w, s, e) for w, s, e, _ in words]
    segments = to_segments(plain, cuts)
    flat = [w for seg in segments for w in seg["words"]]
    for word, (_, _, _, speaker) in zip(flat, words, strict=True):
        if speaker is not None:
            word["speaker"] = speaker
    return segments


def turn(text: str, speaker: str, start: float, word_s: float = 0.25, gap_s: float = 0.05) -> dict[str, Any]:
    """One speaker's segment with evenly timed words, as whisperx returns it after diarization."""
    words = []
    t = start
    for w in text.split():
        words.append({"word": w, "start": round(t, 3), "end": round(t + word_s, 3), "speaker": speaker})
        t += word_s + gap_s
    return {"start": start, "end": round(t - gap_s, 3), "text": text, "words": words, "speaker": speaker}


def line_words(line: str, dash: str) -> list[str]:
    return line.removeprefix(dash).split()


def is_dialogue(cue: Cue) -> bool:
    return len(cue.speakers) == 2


# --- the builder ---------------------------------------------------------------------------


def test_two_short_turns_become_one_dialogue_cue() -> None:
    cues = build(
        [
            turn("I didn't know you were there.", "SPEAKER_00", 1.0),
            turn("Neither did I.", "SPEAKER_01", 3.0),
        ]
    )
    assert [c.text for c in cues] == ["- I didn't know you were there.\n- Neither did I."]
    assert cues[0].speakers == ("SPEAKER_00", "SPEAKER_01")
    assert cues[0].speaker is None
    assert cues[0].start == 1.0
    assert not codes(cues)


def test_dialogue_dash_style_and_switch() -> None:
    segments = [turn("Where to?", "A", 0.0), turn("Home.", "B", 1.0)]
    assert [c.text for c in build(segments, CueSettings(dialogue_dash="\u2013 "))] == [
        "\u2013 Where to?\n\u2013 Home."
    ]
    off = build(segments, CueSettings(dialogue_cues=False))
    assert [(c.text, c.speaker, c.speakers) for c in off] == [("Where to?", "A", ()), ("Home.", "B", ())]
    one_line = build(segments, CueSettings(max_lines=1))
    assert [c.text for c in one_line] == ["Where to?", "Home."]


def test_a_speaker_change_ends_a_cue_even_mid_sentence() -> None:
    # One sentence that fits a cue, but two people say it: never one cue without dashes.
    segments = [turn("So you think that we", "A", 0.0), turn("should go home now and rest a while", "B", 1.5)]
    cues = build(segments, CueSettings(dialogue_cues=False))
    assert [c.speaker for c in cues] == ["A", "B"]
    assert cues[0].text == "So you think that we"
    assert all(not line.startswith("-") for c in cues for line in c.text.split("\n"))


def test_a_turn_too_long_for_one_line_is_not_a_dialogue_line() -> None:
    long = "I was walking down the road when I saw the strangest thing."  # 59 characters
    cues = build([turn(long, "A", 0.0), turn("What?", "B", 4.0)])
    assert [c.speaker for c in cues] == ["A", "B"]
    assert cues[-1].text == "What?"
    assert not any(is_dialogue(c) for c in cues)


def test_no_dialogue_when_the_reading_speed_would_break() -> None:
    # Two quick turns: 27 characters of dialogue in the 0.7 s before the next speech is too
    # fast at 12 characters per second; the third turn is too long for a dialogue line.
    segments = [
        turn("Really now?", "A", 0.0, word_s=0.15, gap_s=0.05),
        turn("Yes indeed.", "B", 0.4, word_s=0.15, gap_s=0.05),
        turn("Then let us go and find the others before it gets dark outside.", "C", 0.8),
    ]
    cues = build(segments, CueSettings(max_chars_per_second=12.0))
    assert cues[0].text == "Really now?"
    assert not any(is_dialogue(c) for c in cues), cues
    # With time to read them, the same two turns do share a cue.
    assert is_dialogue(build(segments[:2], CueSettings(max_chars_per_second=12.0))[0])


def test_words_without_a_speaker_take_their_neighbours() -> None:
    segment = turn("Well I think so too.", "A", 0.0)
    del segment["words"][1]["speaker"]  # whisperx leaves words outside every speaker turn bare
    del segment["speaker"]
    cues = build([segment])
    assert [(c.text, c.speaker) for c in cues] == [("Well I think so too.", "A")]
    # A segment's speaker stands in for its words when none of them has one.
    bare = turn("Fine.", "B", 3.0)
    for w in bare["words"]:
        del w["speaker"]
    assert [c.speaker for c in build([bare])] == ["B"]


# --- property tests over random word streams with known speakers -------------------------


def check_speaker_stream(words: SpeakerStream, cuts: Sequence[int], rules: CueSettings) -> None:
    """No cue holds two speakers except the two-line dialogue form, dashes only there, every
    rule of the speaker-less checker still obeyed, and no word lost."""
    segments = speaker_segments(words, cuts)
    cues = build(segments, rules)
    check_invariants(cues, rules)
    assert cues == build(segments, rules)  # deterministic
    dash = rules.dialogue_dash
    shown: list[str] = []
    k = 0
    for cue in cues:
        lines = cue.text.split("\n")
        if is_dialogue(cue):
            assert rules.dialogue_cues and rules.max_lines >= 2
            assert len(lines) == 2 and all(line.startswith(dash) for line in lines), cue
            assert cue.speaker is None and cue.speakers[0] != cue.speakers[1]
            assert all(len(line) <= rules.max_line_chars for line in lines), cue
            line_speakers: list[str | None] = list(cue.speakers)
        else:
            assert cue.speakers == ()
            assert not any(line.startswith(dash.strip() or dash) for line in lines), cue
            line_speakers = [cue.speaker] * len(lines)
        for line, speaker in zip(lines, line_speakers, strict=True):
            for word in line_words(line, dash if is_dialogue(cue) else ""):
                w, _, _, said_by = words[k]
                assert word == w
                # A word's own speaker is its cue's (line's); a word without one takes its cue's.
                assert said_by is None or said_by == speaker, (cue, words[k])
                shown.append(word)
                k += 1
    assert shown == [w for w, _, _, _ in words]
    assert "mixed_speakers" not in {c for _, c in codes(cues, rules)}
    # A dialogue cue is offered only within the reading speed.
    for index, code in codes(cues, rules):
        assert not (code == "too_fast" and is_dialogue(cues[index])), cues[index]


def check_speakerless_path(plain: Stream, cuts: Sequence[int], rules: CueSettings) -> None:
    """No speakers, or one speaker throughout: the same cues as before speakers existed."""
    segments = to_segments(plain, cuts)
    before = build(segments, rules)
    none = speaker_segments([(w, s, e, None) for w, s, e in plain], cuts)
    assert build(none, rules) == before
    for fmt in ("srt", "vtt", "json", "txt"):
        assert render(fmt, build(none, rules)) == render(fmt, before)
    one = build(speaker_segments([(w, s, e, "S") for w, s, e in plain], cuts), rules)
    assert [dataclasses.replace(c, speaker=None) for c in one] == before
    assert {c.speaker for c in one} == {"S"}


def random_speakers(rng: random.Random, plain: Stream) -> SpeakerStream:
    """Turns of a few words by two or three people, some words without a speaker."""
    out: SpeakerStream = []
    speaker = rng.choice("ABC")
    for w, s, e in plain:
        if rng.random() < 0.25:
            speaker = rng.choice("ABC")
        out.append((w, s, e, None if rng.random() < 0.1 else f"SPEAKER_0{'ABC'.index(speaker)}"))
    return out


def random_dialogue_rules(rng: random.Random) -> CueSettings:
    base = RULES if rng.random() < 0.3 else random_rules(rng)
    return dataclasses.replace(
        base, dialogue_dash=rng.choice(["- ", "- ", "\u2013 ", "\u2013"]), dialogue_cues=rng.random() < 0.85
    )


@pytest.mark.parametrize("seed", range(4))
def test_seeded_speaker_streams_obey_the_rules(seed: int) -> None:
    rng = random.Random(1000 + seed)
    dialogues = 0
    for _ in range(30):
        rules = random_dialogue_rules(rng)
        cuts = [rng.randint(0, 100) for _ in range(rng.randint(0, 4))]
        plain = random_stream(rng)
        words = random_speakers(rng, plain)
        check_speaker_stream(words, cuts, rules)
        check_speakerless_path(plain, cuts, rules)
        dialogues += sum(is_dialogue(c) for c in build(speaker_segments(words, cuts), rules))
    assert dialogues  # the streams do exercise the dialogue form


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
    from tests.test_cues import rules_strategy, word_streams

    @st.composite
    def speaker_streams(draw: st.DrawFn) -> SpeakerStream:
        plain = draw(word_streams())
        labels = draw(
            st.lists(
                st.sampled_from(["SPEAKER_00", "SPEAKER_01", "SPEAKER_02", None]), min_size=1, max_size=8
            )
        )
        # Turns: each label held for a drawn number of words.
        out: SpeakerStream = []
        k = 0
        for label in labels * (len(plain) // len(labels) + 1):
            for _ in range(draw(st.integers(1, 6))):
                if k == len(plain):
                    return out
                w, s, e = plain[k]
                out.append((w, s, e, label))
                k += 1
        return out

    dialogue_rules = st.builds(
        dataclasses.replace,
        rules_strategy,
        dialogue_dash=st.sampled_from(["- ", "\u2013 ", "\u2013"]),
        dialogue_cues=st.booleans(),
    )

    @settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(words=speaker_streams(), cuts=st.lists(st.integers(0, 100), max_size=4), rules=dialogue_rules)
    def test_random_speaker_streams_obey_the_rules(
        words: SpeakerStream, cuts: list[int], rules: CueSettings
    ) -> None:
        check_speaker_stream(words, cuts, rules)

    @settings(max_examples=30, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(words=word_streams(), cuts=st.lists(st.integers(0, 100), max_size=4), rules=dialogue_rules)
    def test_without_speakers_the_cues_are_unchanged(
        words: Stream, cuts: list[int], rules: CueSettings
    ) -> None:
        check_speakerless_path(words, cuts, rules)


# --- formats ------------------------------------------------------------------------------

SPOKEN = [
    Cue(1.0, 2.5, "Hello there.", speaker="SPEAKER_00"),
    Cue(3.0, 5.0, "- I didn't know you were there.\n- Neither did I.", speakers=("SPEAKER_00", "SPEAKER_01")),
    Cue(6.0, 8.0, "Two lines,\nthe same person.", speaker="Dr. Ann <&> Lee"),
    Cue(9.0, 10.0, "Nobody knows who."),
]

SPOKEN_VTT = """\
WEBVTT

00:00:01.000 --> 00:00:02.500
<v SPEAKER_00>Hello there.</v>

00:00:03.000 --> 00:00:05.000
<v SPEAKER_00>- I didn't know you were there.</v>
<v SPEAKER_01>- Neither did I.</v>

00:00:06.000 --> 00:00:08.000
<v Dr. Ann &lt;&amp;&gt; Lee>Two lines,
the same person.</v>

00:00:09.000 --> 00:00:10.000
Nobody knows who.
"""


def test_vtt_voice_spans_written_and_read_back() -> None:
    assert to_vtt(SPOKEN) == SPOKEN_VTT
    assert parse_vtt(SPOKEN_VTT) == SPOKEN
    # Other tools' spans: a class, no closing tag, one span per line of one speaker.
    other = "WEBVTT\n\n00:01.000 --> 00:02.000\n<v.loud Esme>It's a blue apple tree!\n"
    assert parse_vtt(other) == [Cue(1.0, 2.0, "It's a blue apple tree!", speaker="Esme")]
    same = "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Ann>one</v>\n<v Ann>two</v>\n"
    assert parse_vtt(same) == [Cue(1.0, 2.0, "one\ntwo", speaker="Ann")]


def test_srt_shows_the_dashes_and_json_carries_speakers() -> None:
    assert "3\n00:00:06,000 --> 00:00:08,000\nTwo lines,\nthe same person.\n" in to_srt(SPOKEN)
    assert "\n- I didn't know you were there.\n- Neither did I.\n" in to_srt(SPOKEN)
    data = json.loads(to_json(SPOKEN, {"job_id": "j"}))
    assert data["cues"][0] == {
        "index": 1,
        "start": 1.0,
        "end": 2.5,
        "text": "Hello there.",
        "speaker": "SPEAKER_00",
    }
    assert data["cues"][1]["speakers"] == ["SPEAKER_00", "SPEAKER_01"]
    assert "speaker" not in data["cues"][1]
    assert "speaker" not in data["cues"][3] and "speakers" not in data["cues"][3]
    assert cues_from_json(data) == SPOKEN
    # The document's words (the machine file's segments) keep their own speaker.
    segments = [turn("Neither did I.", "SPEAKER_01", 3.0)]
    words = json.loads(to_json(SPOKEN, {"segments": segments}))["segments"][0]["words"]
    assert [w["speaker"] for w in words] == ["SPEAKER_01"] * 3


def test_txt_dialogue_lines_and_speaker_labels() -> None:
    assert to_txt(SPOKEN) == (
        "Hello there.\n"
        "- I didn't know you were there.\n"
        "- Neither did I.\n"
        "Two lines, the same person.\n"
        "Nobody knows who.\n"
    )
    turns = [
        Cue(0.0, 1.0, "Hi.", speaker="A"),
        Cue(1.5, 2.5, "How are\nyou?", speaker="A"),
        Cue(3.0, 4.0, "- Fine.\n- Good.", speakers=("B", "A")),
        Cue(5.0, 6.0, "Untold."),
    ]
    assert to_txt(turns, speaker_labels=True) == ("[A] Hi. How are you?\n[B] Fine.\n[A] Good.\nUntold.\n")
    assert render("txt", turns, speaker_labels=True) == to_txt(turns, speaker_labels=True)
    assert render("srt", turns, speaker_labels=True) == to_srt(turns)  # subtitles keep the dashes


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"speaker": 5}, r"cues\[0\]\.speaker: expected a string"),
        ({"speaker": "  "}, r"cues\[0\]\.speaker: must not be blank"),
        ({"speaker": "x" * 65}, r"cues\[0\]\.speaker: at most 64 characters"),
        ({"speaker": "a\nb"}, r"cues\[0\]\.speaker: must not hold control characters"),
        ({"speakers": "AB"}, r"cues\[0\]\.speakers: expected a list"),
        ({"speakers": ["A"]}, r"cues\[0\]\.speakers: at least two"),
        ({"speakers": ["A", 3]}, r"cues\[0\]\.speakers\[1\]: expected a string"),
        ({"speakers": ["A", "B"], "speaker": "A"}, r"cues\[0\]: give speaker or speakers, not both"),
    ],
)
def test_cues_from_json_validates_speakers(item: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cues_from_json([{"start": 0.0, "end": 1.0, "text": "- a\n- b", **item}])


def test_cues_from_json_accepts_missing_or_null_speakers() -> None:
    got = cues_from_json([{"start": 0, "end": 1, "text": "a", "speaker": None, "speakers": None}])
    assert got == [Cue(0.0, 1.0, "a")]
    assert cues_from_json([{"start": 0, "end": 1, "text": "a", "speaker": " Ann "}])[0].speaker == "Ann"


# --- rules, settings and options ---------------------------------------------------------


def test_mixed_speakers_is_a_warning_unless_the_dialogue_form() -> None:
    cues = [
        Cue(0.0, 2.0, "- Where to?\n- Home.", speakers=("A", "B")),
        Cue(3.0, 5.0, "Where to? Home.", speakers=("A", "B")),
        Cue(6.0, 8.0, "Where to?\nHome.", speakers=("A", "B")),
        Cue(9.0, 11.0, "- Where to?\n- Home.\n- Now.", speakers=("A", "B", "A")),
        Cue(12.0, 14.0, "- Same person\n- twice.", speakers=("A", "A")),
        Cue(15.0, 17.0, "One person.", speaker="A"),
    ]
    assert codes(cues) == [
        (1, "mixed_speakers"),
        (2, "mixed_speakers"),
        (3, "too_many_lines"),
        (3, "mixed_speakers"),
    ]
    tight = CueSettings(max_lines=3, dialogue_dash="\u2013 ")
    assert (0, "mixed_speakers") in codes(cues, tight)  # the configured dash is the form
    message = {w["code"]: w["message"] for w in check_cues(cues, RULES)}["mixed_speakers"]
    assert message == "2 speakers in one cue: only a two-line dialogue cue, each line starting with '- '"


def test_dialogue_settings_are_validated_and_reach_the_job_rules() -> None:
    settings = load_settings(env={"VSRT_CUES_DIALOGUE_DASH": "\u2013 ", "VSRT_CUES_DIALOGUE_CUES": "false"})
    rules = cue_rules(settings, parse_options({}, settings))
    assert (rules.dialogue_dash, rules.dialogue_cues) == ("\u2013 ", False)
    for bad in (" ", " -", "abcd-", "-\n"):
        with pytest.raises(ConfigError, match=r"cues\.dialogue_dash"):
            load_settings(env={"VSRT_CUES_DIALOGUE_DASH": bad})


def test_speaker_labels_option() -> None:
    settings = load_settings(env={})
    assert parse_options({}, settings).speaker_labels is False
    assert parse_options({"speaker_labels": True}, settings).speaker_labels is True
    with pytest.raises(OptionError, match="speaker_labels must be true or false") as err:
        parse_options({"speaker_labels": "yes"}, settings)
    assert err.value.field == "speaker_labels"
