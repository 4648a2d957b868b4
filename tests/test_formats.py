"""Subtitle formats: exact SRT/WebVTT/JSON/text output, millisecond rounding, tolerant
parsing with line numbers in errors, and validation of user-edited cues."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from vsrt_service.core.cues import Cue
from vsrt_service.core.formats import (
    FORMATS,
    cues_from_json,
    parse_srt,
    parse_vtt,
    render,
    to_json,
    to_srt,
    to_txt,
    to_vtt,
)

CUES = [
    Cue(1.0, 2.5, "Hello there."),
    Cue(3.2, 7.049, "Two lines,\nthe second one."),
    Cue(3661.2346, 3662.0, "Late & <loud>"),
]

SRT = """\
1
00:00:01,000 --> 00:00:02,500
Hello there.

2
00:00:03,200 --> 00:00:07,049
Two lines,
the second one.

3
01:01:01,235 --> 01:01:02,000
Late & <loud>
"""

VTT = """\
WEBVTT

00:00:01.000 --> 00:00:02.500
Hello there.

00:00:03.200 --> 00:00:07.049
Two lines,
the second one.

01:01:01.235 --> 01:01:02.000
Late &amp; &lt;loud&gt;
"""


def srt_time(seconds: float) -> str:
    return to_srt([Cue(seconds, seconds + 1, "x")]).split("\n")[1].split(" --> ")[0]


# --- writing -----------------------------------------------------------------------------


def test_to_srt_exact() -> None:
    assert to_srt(CUES) == SRT
    assert to_srt([]) == ""


def test_to_vtt_exact() -> None:
    assert to_vtt(CUES) == VTT
    assert to_vtt([]).startswith("WEBVTT\n")
    assert parse_vtt(to_vtt([])) == []


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [
        (0.0, "00:00:00,000"),
        (3661.2346, "01:01:01,235"),
        (1.4445, "00:00:01,445"),  # 1444.4999... in binary floating point: still rounds up
        (0.0005, "00:00:00,001"),
        (0.0004999, "00:00:00,000"),
        (59.9996, "00:01:00,000"),  # never 1000 ms
        (3599.9995, "01:00:00,000"),
        (2.675, "00:00:02,675"),
        (362439.001, "100:40:39,001"),  # hours past 99 keep all their digits
        (-0.2, "00:00:00,000"),  # negative clamps to zero
    ],
)
def test_millisecond_rounding(seconds: float, expected: str) -> None:
    assert srt_time(seconds) == expected


def test_vtt_uses_a_period_and_srt_a_comma() -> None:
    cue = [Cue(59.9996, 61.0, "x")]
    assert "00:01:00.000 --> 00:01:01.000" in to_vtt(cue)
    assert "00:01:00,000 --> 00:01:01,000" in to_srt(cue)


def test_blank_lines_inside_a_cue_are_dropped() -> None:
    out = to_srt([Cue(0.0, 1.0, "first\n\n  \nsecond\r\nthird")])
    assert out == "1\n00:00:00,000 --> 00:00:01,000\nfirst\nsecond\nthird\n"


def test_to_txt_one_cue_per_line() -> None:
    assert to_txt(CUES) == "Hello there.\nTwo lines, the second one.\nLate & <loud>\n"
    assert to_txt([]) == ""
    # CJK lines join without a space.
    assert to_txt([Cue(0.0, 1.0, "今天天气很好\n我们去公园")]) == "今天天气很好我们去公园\n"


def test_to_json_merges_meta_and_keeps_unicode() -> None:
    cues = [Cue(1.0, 2.0, "你好"), Cue(2.5, 3.0001, "b")]
    out = to_json(cues, {"job_id": "j1", "language": "zh", "alignment": "wav2vec2"})
    assert "你好" in out  # ensure_ascii=False
    assert "\n  " in out  # indented
    data = json.loads(out)
    assert data == {
        "job_id": "j1",
        "language": "zh",
        "alignment": "wav2vec2",
        "cues": [
            {"index": 1, "start": 1.0, "end": 2.0, "text": "你好"},
            {"index": 2, "start": 2.5, "end": 3.0, "text": "b"},
        ],
    }


def test_render_dispatches_and_rejects_unknown_formats() -> None:
    assert FORMATS == ("srt", "vtt", "json", "txt")
    assert render("srt", CUES) == to_srt(CUES)
    assert render("vtt", CUES) == to_vtt(CUES)
    assert render("txt", CUES) == to_txt(CUES)
    assert render("json", CUES, {"a": 1}) == to_json(CUES, {"a": 1})
    assert json.loads(render("json", CUES))["cues"][0]["text"] == "Hello there."
    assert render("SRT", CUES) == to_srt(CUES)
    with pytest.raises(ValueError, match="docx"):
        render("docx", CUES)
    with pytest.raises(ValueError, match="srt, vtt, json, txt"):
        render("", CUES)


# --- reading -----------------------------------------------------------------------------


def test_srt_round_trip() -> None:
    parsed = parse_srt(to_srt(CUES))
    assert parsed == [
        Cue(1.0, 2.5, CUES[0].text),
        Cue(3.2, 7.049, CUES[1].text),
        Cue(3661.235, 3662.0, CUES[2].text),
    ]


def test_vtt_round_trip_unescapes_text() -> None:
    parsed = parse_vtt(to_vtt(CUES))
    assert [c.text for c in parsed] == [c.text for c in CUES]
    assert [(c.start, c.end) for c in parsed] == [(1.0, 2.5), (3.2, 7.049), (3661.235, 3662.0)]


def random_cues(rng: random.Random) -> list[Cue]:
    alphabet = "abcdefghij XYZ0123456789.,!?&<>'\"-你好世界"
    cues = []
    t = rng.randint(0, 10_000_000)
    for _ in range(rng.randint(0, 12)):
        start = t
        t += rng.randint(1, 20_000)
        lines = []
        for _ in range(rng.randint(1, 3)):
            line = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))).strip()
            lines.append(line or "x")
        cues.append(Cue(start / 1000, t / 1000, "\n".join(lines)))
        t += rng.randint(0, 5000)
    return cues


@pytest.mark.parametrize("seed", range(30))
def test_random_round_trips(seed: int) -> None:
    cues = random_cues(random.Random(seed))
    assert parse_srt(to_srt(cues)) == cues
    assert parse_vtt(to_vtt(cues)) == cues
    assert cues_from_json(json.loads(to_json(cues, {}))["cues"]) == cues


def test_parse_srt_is_tolerant() -> None:
    messy = (
        "\ufeff\r\n\r\n1\r\n00:00:01,000 --> 00:00:02,000\r\nHello\r\n\r\n\r\n\r\n"
        "2\r\n00:00:03,5 --> 00:00:04.250 X1:10 X2:20\r\nWorld\r\n"
        "\r\n"
        "00:00:05,000 --> 00:00:06,000\r\nno number\r\n\r\ncontinued after a blank line"
    )
    assert parse_srt(messy) == [
        Cue(1.0, 2.0, "Hello"),
        Cue(3.5, 4.25, "World"),
        Cue(5.0, 6.0, "no number\ncontinued after a blank line"),
    ]


def test_parse_srt_accepts_empty_files_and_empty_cues() -> None:
    assert parse_srt("") == []
    assert parse_srt("\n\n  \n") == []
    assert parse_srt("1\n00:00:01,000 --> 00:00:02,000\n") == [Cue(1.0, 2.0, "")]


def test_parse_srt_names_the_malformed_line() -> None:
    bad = "1\n00:00:01,000 --> 00:00:02,000\nok\n\n2\n00:00:03,000 -> 00:00:04,000\nbad\n"
    with pytest.raises(ValueError, match="line 6"):
        parse_srt(bad)
    with pytest.raises(ValueError, match="line 2"):
        parse_srt("1\n00:00:xx,000 --> 00:00:02,000\ntext\n")
    with pytest.raises(ValueError, match="line 3"):
        parse_srt("\n\nthis is not a subtitle file\n")


def test_parse_vtt_skips_header_notes_styles_and_settings() -> None:
    text = (
        "\ufeffWEBVTT - some title\nKind: captions\nLanguage: en\n\n"
        "NOTE this is a comment\nspanning lines\n\n"
        "STYLE\n::cue { color: yellow }\n\n"
        "intro\n00:01.000 --> 00:02.500 align:start position:10%\n<v Roger>Hi &amp; <i>bye</i>\n\n"
        "00:00:03.000 --> 00:00:04.000\nsecond\nline\n"
    )
    assert parse_vtt(text) == [Cue(1.0, 2.5, "Hi & bye", speaker="Roger"), Cue(3.0, 4.0, "second\nline")]


def test_parse_vtt_without_blank_line_after_header() -> None:
    assert parse_vtt("WEBVTT\n00:01.000 --> 00:02.000\nx") == [Cue(1.0, 2.0, "x")]


def test_parse_vtt_names_the_malformed_line() -> None:
    with pytest.raises(ValueError, match="line 4"):
        parse_vtt("WEBVTT\n\nid\n00:01.000 --> later\ntext\n")


# --- user-edited cues --------------------------------------------------------------------


def test_cues_from_json_accepts_valid_cues() -> None:
    items = [
        {"start": 0, "end": 1.5, "text": "first"},
        {"index": 7, "start": 2.0, "end": 3.0, "text": "two\r\nlines", "extra": True},
    ]
    assert cues_from_json(items) == [Cue(0.0, 1.5, "first"), Cue(2.0, 3.0, "two\nlines")]
    assert cues_from_json({"cues": items}) == cues_from_json(items)
    assert cues_from_json([]) == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ("not a list", r"cues: expected a list"),
        ({"start": 0}, r"cues: expected a list"),
        ([{"start": 0, "end": 1, "text": "a"}, "x"], r"cues\[1\]: expected an object"),
        ([{"end": 1.0, "text": "a"}], r"cues\[0\]: missing field 'start'"),
        ([{"start": 0.0, "text": "a"}], r"cues\[0\]: missing field 'end'"),
        ([{"start": 0.0, "end": 1.0}], r"cues\[0\]: missing field 'text'"),
        (
            [{"start": 0, "end": 1, "text": "a"}, {"start": 2.0, "end": 2.0, "text": "b"}],
            r"cues\[1\]\.end: must be after start",
        ),
        ([{"start": 3.0, "end": 2.0, "text": "a"}], r"cues\[0\]\.end: must be after start"),
        ([{"start": -1.0, "end": 2.0, "text": "a"}], r"cues\[0\]\.start: must not be negative"),
        ([{"start": 0.0, "end": 2.0, "text": 5}], r"cues\[0\]\.text: expected a string"),
        ([{"start": 0.0, "end": 2.0, "text": None}], r"cues\[0\]\.text: expected a string"),
        ([{"start": "0", "end": 2.0, "text": "a"}], r"cues\[0\]\.start: expected a number"),
        ([{"start": True, "end": 2.0, "text": "a"}], r"cues\[0\]\.start: expected a number"),
        ([{"start": 0.0, "end": float("nan"), "text": "a"}], r"cues\[0\]\.end: expected a finite"),
        ([{"start": 0.0, "end": float("inf"), "text": "a"}], r"cues\[0\]\.end: expected a finite"),
    ],
)
def test_cues_from_json_rejects_bad_input(items: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cues_from_json(items)
