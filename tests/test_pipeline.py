"""The whole pipeline for real: runner subprocess, whisperx on tiny.en, ffmpeg, SQLite."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.conftest import ServiceFactory, SettingsFactory, install_align_model
from tests.media import (
    Speech,
    make_corrupt_media,
    make_silent_video,
    make_text_file,
    make_video_without_audio,
    word_error_rate,
)
from vsrt_service.core.errors import VsrtError
from vsrt_service.core.formats import parse_srt
from vsrt_service.core.vocab import VadMethod
from vsrt_service.service import Service

pytestmark = pytest.mark.slow


def check_cues_follow_rules(srt: str, max_line: int = 42, max_lines: int = 2) -> None:
    cues = parse_srt(srt)
    assert cues, "no cues"
    for prev, cue in itertools.pairwise(cues):
        assert cue.start >= prev.end + 0.083 - 1e-3, f"cues too close: {prev} / {cue}"
    for cue in cues:
        lines = cue.text.split("\n")
        assert len(lines) <= max_lines, cue
        assert all(len(line) <= max_line for line in lines), cue
        assert 0.83 - 1e-3 <= cue.end - cue.start <= 7.0 + 1e-3, cue


def transcript(srt: str) -> str:
    return " ".join(c.text.replace("\n", " ") for c in parse_srt(srt))


async def test_job_end_to_end_with_whisper_word_timings(make_service: ServiceFactory, speech: Speech) -> None:
    svc = await make_service()
    job = await svc.submit(speech.path)
    events = [ev async for ev in svc.events(job.id)]
    done = await svc.get(job.id)
    assert done.status == "completed", done

    names = [ev.event for ev in events]
    assert names[0] == "connected"
    percents = [ev.data["percent"] for ev in events if ev.event == "progress"]
    assert percents == sorted(percents) and percents[-1] == 100.0
    phases = [ev.data["phase"] for ev in events if ev.event == "progress"]
    assert [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p] == [
        "extract",
        "split",
        "transcribe",
        "align",
        "srt",
    ]
    fragments = [ev.data for ev in events if ev.event == "fragment"]
    assert len(fragments) == done.total > 0
    signals = [ev.data["code"] for ev in events if ev.event == "signal"]
    assert signals == ["alignment_ready", "job_complete"]
    ids = [ev.id for ev in events[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    srt = await svc.subtitles(job.id, "srt")
    assert word_error_rate(speech.text, transcript(srt)) < 0.25
    fragment_text = " ".join(s["text"] for f in fragments for s in f["segments"])
    assert word_error_rate(speech.text, fragment_text) < 0.25
    check_cues_follow_rules(srt)
    meta = json.loads(await svc.subtitles(job.id, "json"))
    assert meta["alignment"] == "whisper"
    assert meta["language"] == "en"


async def test_wav2vec2_alignment_from_local_model_unless_align_is_off(
    make_settings: SettingsFactory,
    make_service: ServiceFactory,
    speech: Speech,
    tiny_align_model: Path,
) -> None:
    settings = make_settings()
    install_align_model(settings, tiny_align_model)
    svc = await make_service(settings)
    job = await svc.submit(speech.path)
    off = await svc.submit(speech.path, {"align": False})
    done = await svc.wait(job.id)
    assert done.status == "completed", done.error
    assert done.alignment == "wav2vec2"
    meta = json.loads(await svc.subtitles(job.id, "json"))
    assert meta["alignment"] == "wav2vec2"
    words = [w for s in meta["segments"] for w in s["words"]]
    assert len(words) >= len(speech.text.split()) * 0.75
    # A random model places words badly but in order, inside their segment.
    for seg in meta["segments"]:
        times = [w["start"] for w in seg["words"] if "start" in w]
        assert times == sorted(times)
    check_cues_follow_rules(await svc.subtitles(job.id, "srt"))
    # The same installed model, but the job asked for Whisper's own timings.
    done_off = await svc.wait(off.id)
    assert done_off.status == "completed" and done_off.alignment == "whisper"


@pytest.mark.parametrize(
    ("maker", "code", "words"),
    [
        (make_video_without_audio, "no_audio", "no audio stream"),
        (make_corrupt_media, "not_media", "not a readable"),
        (make_text_file, "not_media", "not"),
    ],
)
async def test_bad_input_is_refused_clearly(
    make_service: ServiceFactory, tmp_path: Path, maker, code: str, words: str, speech: Speech
) -> None:
    svc = await make_service()
    bad = await asyncio.to_thread(maker, tmp_path / "bad.mp4")
    good = await svc.submit(speech.path)
    with pytest.raises(VsrtError) as refused:  # before a job exists
        await svc.submit(bad)
    assert refused.value.code == code and refused.value.field == "path"
    assert words in str(refused.value)
    assert "bad.mp4" in str(refused.value) and str(tmp_path) not in str(refused.value)
    # The bad file costs nothing else: the other job completes.
    assert (await svc.wait(good.id)).status == "completed"


async def test_silent_video_completes_with_empty_subtitles(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    svc = await make_service()
    job = await svc.submit(await asyncio.to_thread(make_silent_video, tmp_path / "silent.mp4"))
    done = await svc.wait(job.id)
    assert done.status == "completed", done.error
    assert done.total == 0
    assert await svc.subtitles(job.id, "srt") == ""
    assert (await svc.subtitles(job.id, "vtt")).startswith("WEBVTT")
    assert json.loads(await svc.subtitles(job.id, "json"))["cues"] == []


def segment_rows(db: Path, job_id: str) -> list[tuple[int, str | None, int]]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT idx, text, transcribe_count FROM segments WHERE job_id = ? ORDER BY idx", (job_id,)
        ).fetchall()


@pytest.mark.parametrize("vad_method", list(VadMethod))
async def test_runner_killed_mid_transcribe_resumes_from_checkpoint(
    make_service: ServiceFactory, speech: Speech, vad_method: str
) -> None:
    # batch_size 1: every segment is checkpointed on its own, so a kill lands between them.
    overrides = {"transcription": {"batch_size": 1}, "runners": {"restart_backoff_initial": 0.1}}
    options = {"chunk_size": 5, "vad_method": vad_method}  # a chunk per sentence
    svc = await make_service(**overrides)
    # The uninterrupted reference runs on the same service first (one runner start less).
    reference = await svc.wait((await svc.submit(speech.path, options)).id)
    assert reference.status == "completed" and reference.total >= 4
    expected = await svc.subtitles(reference.id, "srt")
    assert svc.pool.slots[0].restarts == 0

    job = await svc.submit(speech.path, options)
    killed_pid = None
    async for ev in svc.events(job.id):
        if ev.event == "fragment" and killed_pid is None:
            killed_pid = svc.pool.slots[0].pid
            assert killed_pid is not None
            os.kill(killed_pid, signal.SIGKILL)
        if ev.event == "signal" and ev.data["code"] == "requeued":
            break
    assert killed_pid is not None
    done = await svc.wait(job.id)
    assert done.status == "completed", done.error
    assert svc.pool.slots[0].restarts >= 1
    assert svc.pool.slots[0].pid not in (None, killed_pid)

    rows = segment_rows(svc.settings.database_path, job.id)
    assert len(rows) == reference.total
    assert all(text is not None for _, text, _ in rows), "a segment is missing"
    assert all(count == 1 for _, _, count in rows), f"a segment was transcribed twice: {rows}"
    assert await svc.subtitles(job.id, "srt") == expected


async def test_segment_that_keeps_crashing_the_runner_fails_the_job(
    make_service: ServiceFactory, speech: Speech
) -> None:
    svc = await make_service(jobs={"max_segment_crashes": 2}, runners={"restart_backoff_initial": 0.1})
    job = await svc.submit(speech.path)
    kills = 0
    while kills < 2:
        current = await svc.get(job.id)
        slot = svc.pool.slots[0]
        if current.status == "processing" and current.phase == "transcribe" and slot.leased:
            pid = slot.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            kills += 1
            while slot.pid == pid or slot.pid is None or not slot.ready.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # polling another process's state
        assert current.status in ("queued", "processing"), current
        await asyncio.sleep(0.02)
    failed = await svc.wait(job.id)
    assert failed.status == "failed"
    assert failed.error_code == "runner_crash"
    assert "crashed the runner 2 times" in (failed.error or "")


async def test_pause_then_resume_keeps_checkpoint_settings(
    make_service: ServiceFactory, long_speech: Speech
) -> None:
    svc = await make_service(transcription={"batch_size": 1})
    job = await svc.submit(long_speech.path, {"chunk_size": 10})
    async for ev in svc.events(job.id):
        if ev.event == "fragment":
            await svc.pause(job.id)
    paused = await svc.get(job.id)
    assert paused.status == "paused"
    before = segment_rows(svc.settings.database_path, job.id)
    assert any(t is None for _, t, _ in before) and any(t for _, t, _ in before)

    _, conflicts = await svc.resume_conflicts(job.id, {"model": "base.en", "max_line_chars": 30})
    assert [c["field"] for c in conflicts] == ["model"]
    resumed = await svc.resume(job.id, {"model": "base.en", "max_line_chars": 30})
    assert resumed.options["model"] == "tiny.en"  # locked: forced back
    assert resumed.options["max_line_chars"] == 30  # free to change
    done = await svc.wait(job.id)
    assert done.status == "completed", done.error
    rows = segment_rows(svc.settings.database_path, job.id)
    assert all(count == 1 for _, _, count in rows)
    check_cues_follow_rules(await svc.subtitles(job.id, "srt"), max_line=30)


async def test_service_restart_resumes_interrupted_job(
    make_settings: SettingsFactory, long_speech: Speech
) -> None:
    settings = make_settings(transcription={"batch_size": 1})
    async with Service(settings) as svc:
        job = await svc.submit(long_speech.path, {"chunk_size": 10})
        async for ev in svc.events(job.id):
            if ev.event == "fragment":
                break
    # Closing the service mid-job put it back in the queue with its checkpoint.
    async with Service(settings) as svc:
        interrupted = await svc.get(job.id)
        assert interrupted.processed >= 1
        done = await svc.wait(job.id)
        assert done.status == "completed", done.error
    rows = segment_rows(settings.database_path, job.id)
    assert rows and all(text is not None and count == 1 for _, text, count in rows)
