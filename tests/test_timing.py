"""Cue timing against the truth: synthetic speech whose sentence onsets and offsets are
measured from the samples, long pauses between them, a real runner (tiny.en, Whisper's own
word timings, which smear words over the silence around them)."""

from __future__ import annotations

import asyncio
import json
import statistics
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory
from tests.long_media import aligned_result
from tests.media import Speech, make_speech
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import build_cues
from vsrt_service.core.formats import parse_srt, render
from vsrt_service.jobs.outputs import CHILD_ABOVE_WORDS, write_job_outputs

SENTENCES = [
    "Good morning, and welcome to the city library.",
    "Weekdays.",
    "We now run a 24-hour service for everyone.",
    "Please bring your card when you visit.",
]
#: Silence after each sentence but the last: long pauses, 7 s after the one-word sentence.
PAUSES = [6.5, 7.0, 8.5]
#: How far a cue may start from its sentence's onset.
START_TOLERANCE = 0.15
#: Beyond the linger, how late a cue may end: the speech regions' own precision (the runner
#: refines them to 10 ms; measured here: 0.004 s at most).
END_TOLERANCE = 0.1


@pytest.fixture(scope="module")
def paused_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    out = tmp_path_factory.mktemp("timing") / "paused.wav"
    return make_speech(out, SENTENCES, pauses=PAUSES, video=False)


@pytest.mark.slow
async def test_cues_start_and_end_with_the_speech(
    make_service: ServiceFactory, paused_speech: Speech
) -> None:
    svc = await make_service()
    rules = CueSettings()
    job = await svc.submit(paused_speech.path)
    events = [ev async for ev in svc.events(job.id)]
    done = await svc.get(job.id)
    assert done.status == "completed", done.error
    cues = parse_srt(await svc.subtitles(job.id, "srt"))
    meta = json.loads(await svc.subtitles(job.id, "json"))
    assert meta["alignment"] == "whisper"

    sentences = paused_speech.sentences
    starts: list[float] = []
    ends: list[float] = []
    for k, sentence in enumerate(sentences):
        mine = [c for c in cues if sentence.start - 1.0 <= c.start <= sentence.end + 0.5]
        assert mine, (sentence, cues)
        first, last = mine[0], mine[-1]
        starts.append(first.start - sentence.start)
        ends.append(last.end - sentence.end)
        assert abs(first.start - sentence.start) <= START_TOLERANCE, (sentence, first)
        # Ends a linger after the speech, later only where the rules need it.
        chars = len(last.text.replace("\n", " "))
        needed = max(
            sentence.end + rules.linger_seconds,
            last.start + rules.min_cue_seconds,
            last.start + chars / rules.max_chars_per_second,
        )
        assert sentence.end - END_TOLERANCE <= last.end <= needed + END_TOLERANCE, (sentence, last)
        if k + 1 < len(sentences):  # nothing on screen in the middle of a long silence
            middle = (sentence.end + sentences[k + 1].start) / 2
            assert not [c for c in cues if c.start <= middle <= c.end], (middle, cues)
    for cue in cues:
        for line in cue.text.split("\n"):
            assert not line.startswith("-"), cue  # "24" / "-hour" never cut apart
    print(
        f"\ncue start error: median {statistics.median(abs(s) for s in starts):.3f} s,"
        f" max {max(abs(s) for s in starts):.3f} s; end - speech end: median"
        f" {statistics.median(ends):.3f} s, max {max(ends):.3f} s"
    )

    # Live lines: sentences, not a paragraph per chunk, timed near their speech.
    lines = [line for ev in events if ev.event == "fragment" for line in ev.data["segments"]]
    assert len(lines) >= len(sentences), lines
    for sentence in sentences:
        assert min(abs(line["start"] - sentence.start) for line in lines) <= 0.3, (sentence, lines)
    ids = [line["id"] for line in lines]
    assert len(set(ids)) == len(ids)


async def test_subtitles_built_in_a_child_process_respect_the_speech_regions(tmp_path: Path) -> None:
    # Long transcripts are built in `python -m vsrt_service.jobs.outputs`: the regions travel
    # there as JSON. Speech without words 0.25 s after each segment: no cue lingers into it.
    segments = await asyncio.to_thread(aligned_result, 0.4)
    assert sum(len(s["words"]) for s in segments) > CHILD_ABOVE_WORDS
    speech = [(s["start"], s["end"]) for s in segments]
    speech += [(s["end"] + 0.25, s["end"] + 0.45) for s in segments]
    rules = CueSettings()
    count = await write_job_outputs(tmp_path, segments, rules, {"job_id": "x"}, speech=speech)
    expected = await asyncio.to_thread(build_cues, segments, rules, speech)
    without = await asyncio.to_thread(build_cues, segments, rules)
    assert count == len(expected) and expected != without
    srt = await asyncio.to_thread((tmp_path / "subtitles.srt").read_text, encoding="utf-8")
    assert srt == render("srt", expected, {"job_id": "x"})
