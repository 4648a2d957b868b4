"""whisper-asr-webservice's API (`/asr`, `/detect-language`): Bazarr's exact requests against a
live `vsrt serve`, every output, failures as non-2xx, and a disconnected client's retry.

The query parsing, the WAV wrapping of raw PCM and the output writers are pure functions,
tested here without a runner; the rest runs the real runner over real HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import sqlite3
import subprocess
import time
import uuid
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from multidict import MultiDict

from tests.conftest import ClientFactory, SettingsFactory, install_model
from tests.media import Speech, make_speech, word_error_rate
from tests.test_pipeline import transcript
from tests.test_server import Server, make_server  # noqa: F401  (the fixture)
from vsrt_service.core.cues import Cue
from vsrt_service.core.errors import InvalidInput
from vsrt_service.core.formats import parse_srt, parse_vtt
from vsrt_service.core.pcm import pcm_to_wav, wav_header
from vsrt_service.web.api_asr import AsrQuery, parse_asr_query, to_asr_tsv, to_asr_vtt
from vsrt_service.web.keys import SERVICE

# --- pure functions ------------------------------------------------------------------------


def query(**params: str) -> MultiDict[str]:
    return MultiDict(params)


def test_query_defaults_and_every_bad_value_names_its_parameter() -> None:
    assert parse_asr_query(query()) == AsrQuery()
    assert parse_asr_query(query()).settings() == {
        "task": "transcribe",
        "language": "auto",
        "initial_prompt": None,
    }
    # Bazarr's query, with its `video_file` (ignored, as that service does).
    bazarr = parse_asr_query(
        query(task="translate", language="de", output="srt", encode="false", video_file="/tv/a.mkv")
    )
    assert bazarr == AsrQuery(encode=False, task="translate", language="de", output="srt", video_name="a.mkv")
    full = parse_asr_query(
        query(
            initial_prompt="Names: Ada.",
            word_timestamps="true",
            vad_filter="1",
            diarize="false",
            min_speakers="1",
            max_speakers="3",
            output="json",
        )
    )
    assert full.word_timestamps and full.vad_filter and (full.min_speakers, full.max_speakers) == (1, 3)
    assert full.settings()["initial_prompt"] == "Names: Ada."
    bad = {
        "task": query(task="summarise"),
        "output": query(output="docx"),
        "language": query(language="english"),
        "encode": query(encode="maybe"),
        "word_timestamps": query(word_timestamps="2"),
        "vad_filter": query(vad_filter="yes please"),
        "min_speakers": query(min_speakers="two"),
        "max_speakers": query(max_speakers="0"),
        "diarize": query(diarize="perhaps"),
    }
    for field, params in bad.items():
        with pytest.raises(InvalidInput) as info:
            parse_asr_query(params)
        assert info.value.field == field, (field, info.value)
        assert field in str(info.value)
    with pytest.raises(InvalidInput) as info:
        parse_asr_query(query(min_speakers="3", max_speakers="2"))
    assert info.value.field == "min_speakers"
    with pytest.raises(InvalidInput) as info:
        parse_asr_query(query(diarize="true", min_speakers="-1"))
    assert info.value.field == "min_speakers"
    with pytest.raises(InvalidInput) as info:
        parse_asr_query(query(max_speakers="21"))
    assert info.value.field == "max_speakers"


def test_diarize_and_its_speaker_counts_are_job_settings_only_when_on() -> None:
    """They split a shared job only when they change what it makes."""
    assert "diarize" not in parse_asr_query(query(diarize="false", min_speakers="2")).settings()
    on = parse_asr_query(query(diarize="true", min_speakers="2", max_speakers="3")).settings()
    assert (on["diarize"], on["min_speakers"], on["max_speakers"]) == (True, 2, 3)


def test_pcm_becomes_a_wav_and_a_bad_pcm_body_is_refused(tmp_path: Path) -> None:
    raw = tmp_path / "audio_file"
    raw.write_bytes(bytes(range(256)) * 125)  # 32,000 bytes: one second
    wav = tmp_path / "a.wav"
    assert pcm_to_wav(raw, wav) == 32_000
    with wave.open(str(wav)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 16000)
        assert w.readframes(16000) == raw.read_bytes()
    assert wav.read_bytes()[:44] == wav_header(32_000)
    again = tmp_path / "b.wav"
    pcm_to_wav(raw, again)
    assert again.read_bytes() == wav.read_bytes()  # identical requests hash alike
    raw.write_bytes(b"\x00" * 33)
    with pytest.raises(InvalidInput) as info:
        pcm_to_wav(raw, tmp_path / "c.wav")
    assert info.value.field == "audio_file" and "33 bytes" in str(info.value)
    raw.write_bytes(b"")
    with pytest.raises(InvalidInput) as info:
        pcm_to_wav(raw, tmp_path / "d.wav")
    assert info.value.code == "empty_file"


def test_outputs_follow_that_services_writers() -> None:
    cues = [Cue(1.0, 2.5, "Hello <there>\nand\tyou"), Cue(3725.25, 3727.0, "Late.")]
    assert to_asr_vtt(cues) == (
        "WEBVTT\n\n"
        "00:01.000 --> 00:02.500\nHello &lt;there&gt;\nand\tyou\n\n"
        "01:02:05.250 --> 01:02:07.000\nLate.\n\n"
    )
    assert (
        to_asr_tsv(cues) == "start\tend\ttext\n1000\t2500\tHello <there> and you\n3725250\t3727000\tLate.\n"
    )


# --- over HTTP, with the real runner -------------------------------------------------------


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(
        tmp_path_factory.mktemp("asr") / "short.mp4", ["One short sentence for the subtitles."]
    )


def bazarr_pcm(path: Path) -> bytes:
    """The audio as Bazarr encodes it (whisperai.py `encode_audio_stream`): ffmpeg to raw
    16 kHz mono s16le on stdout."""
    cmd = ["ffmpeg", "-nostdin", "-threads", "0", "-i", str(path), "-f", "s16le", "-acodec", "pcm_s16le"]
    cmd += ["-ac", "1", "-ar", "16000", "-af", "aresample=async=1", "-"]
    return subprocess.run(cmd, capture_output=True, check=True).stdout


def requests_form(pcm: bytes) -> tuple[bytes, str]:
    """The body python-requests sends for `files={"audio_file": pcm}`: the key as the file
    name and no Content-Type on the part."""
    boundary = uuid.uuid4().hex
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="audio_file"; filename="audio_file"\r\n\r\n'
    return (
        head.encode() + pcm + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


BAZARR_ASR = {
    "task": "transcribe",
    "language": "en",
    "output": "srt",
    "encode": "false",
    "video_file": "/tv/Show/episode.mkv",
}


def transcribe_counts(data_dir: Path, job_id: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(data_dir / "vsrt.sqlite3")) as db:
        rows = db.execute("SELECT transcribe_count FROM segments WHERE job_id = ?", (job_id,)).fetchall()
    return [count for (count,) in rows]


@pytest.mark.slow
async def test_bazarr_requests_against_live_server_with_disconnect_and_retry(
    make_server: Callable[..., Awaitable[Server]],  # noqa: F811
    speech: Speech,
) -> None:
    server = await make_server()
    pcm = await asyncio.to_thread(bazarr_pcm, speech.path)
    body, content_type = requests_form(pcm)
    async with aiohttp.ClientSession(server.url) as http:
        # The client posts, then disconnects while its job runs.
        async def post() -> aiohttp.ClientResponse:
            return await http.post(
                "/asr", params=BAZARR_ASR, data=body, headers={"Content-Type": content_type}
            )

        first = asyncio.create_task(post())
        job: dict[str, Any] = {}
        for _ in range(600):
            jobs = (await (await http.get("/api/jobs")).json())["jobs"]
            if jobs and jobs[0]["status"] == "processing":
                job = jobs[0]
                break
            assert not first.done(), "the request ended before its job ran"
            await asyncio.sleep(0.05)  # polling another process's state
        assert job, "no job appeared"
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        status = await (await http.get(f"/api/status/{job['job_id']}")).json()
        assert status["status"] in ("queued", "processing"), status  # left running, mid-job

        # Bazarr retries with its own client (python-requests): the same job answers.
        params = {**BAZARR_ASR, "video_file": {"/tv/Show/episode.mkv"}}
        resp = await asyncio.to_thread(
            requests.post, f"{server.url}/asr", params=params, files={"audio_file": pcm}, timeout=(10, 300)
        )
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Disposition"] == 'attachment; filename="audio_file.srt"'
        assert resp.headers["Asr-Engine"] == "whisperx"
        assert resp.headers["Content-Type"] == "text/plain; charset=utf-8"
        cues = parse_srt(resp.text)
        assert cues and all(c.end > c.start for c in cues)
        assert word_error_rate(speech.text, transcript(resp.text)) < 0.25, resp.text

        listed = (await (await http.get("/api/jobs")).json())["jobs"]
        assert [j["job_id"] for j in listed] == [job["job_id"]]
        assert listed[0]["status"] == "completed" and listed[0]["source_name"] == "episode.mkv"
        counts = await asyncio.to_thread(transcribe_counts, server.data_dir, job["job_id"])
        assert counts and all(c == 1 for c in counts), counts

        # Language detection of the whole track, as Bazarr asks it: within seconds.
        started = time.monotonic()
        resp = await asyncio.to_thread(
            requests.post,
            f"{server.url}/detect-language",
            params={"encode": "false", "video_file": {"/tv/Show/episode.mkv"}},
            files={"audio_file": pcm},
            timeout=(10, 60),
        )
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"detected_language": "english", "language_code": "en", "confidence": 1.0}
        assert time.monotonic() - started < 15
    # The retry's and the detection's uploads are gone; the job keeps its own.
    assert len(list((server.data_dir / "uploads").iterdir())) == 1


@pytest.mark.slow
async def test_every_output_from_one_job_and_bad_requests_refused(
    make_client: ClientFactory, short_speech: Speech
) -> None:
    client = await make_client()
    media = await asyncio.to_thread(short_speech.path.read_bytes)

    async def asr(**params: str) -> aiohttp.ClientResponse:
        form = aiohttp.FormData()
        form.add_field("audio_file", media, filename="short.mp4")
        return await client.post("/asr", params=params, data=form)

    texts: dict[str, str] = {}
    for output in ("txt", "vtt", "srt", "tsv", "json"):
        resp = await asr(output=output, language="en", word_timestamps="true")
        texts[output] = await resp.text()
        assert resp.status == 200, texts[output]
        assert resp.headers["Content-Disposition"] == f'attachment; filename="short.mp4.{output}"'
        assert resp.headers["Asr-Engine"] == "whisperx"
    jobs = (await (await client.get("/api/jobs")).json())["jobs"]
    assert len(jobs) == 1 and jobs[0]["status"] == "completed"  # the others attached to it
    svc = client.app[SERVICE]
    assert all(s.transcribe_count == 1 for s in await svc.store.segments(jobs[0]["job_id"]))

    srt = parse_srt(texts["srt"])
    assert srt and word_error_rate(short_speech.text, transcript(texts["srt"])) < 0.25
    assert texts["txt"] == "".join(" ".join(c.text.split("\n")) + "\n" for c in srt)
    assert texts["vtt"].startswith("WEBVTT\n\n") and re.search(
        r"^00:\d\d\.\d{3} --> 00:\d\d\.\d{3}$", texts["vtt"], re.M
    )
    assert [c.text for c in parse_vtt(texts["vtt"])] == [c.text for c in srt]
    rows = texts["tsv"].splitlines()
    assert rows[0] == "start\tend\ttext" and len(rows) == len(srt) + 1
    assert (
        rows[1]
        == f"{round(srt[0].start * 1000)}\t{round(srt[0].end * 1000)}\t{srt[0].text.replace(chr(10), ' ')}"
    )
    result = json.loads(texts["json"])
    assert set(result) == {"text", "segments", "language"} and result["language"] == "en"
    assert word_error_rate(short_speech.text, result["text"]) < 0.25
    segment = result["segments"][0]
    assert {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob"} <= set(segment)
    assert segment["words"] and {"word", "start", "end", "probability"} <= set(segment["words"][0])

    # A job canceled (from the job API) while its request waits: a non-2xx answer, not a 200.
    waiting = asyncio.create_task(asr(output="srt", initial_prompt="Another request."))
    other: list[dict[str, Any]] = []
    while not other:
        assert not waiting.done(), await (await waiting).text()
        listed = (await (await client.get("/api/jobs")).json())["jobs"]
        other = [j for j in listed if j["job_id"] != jobs[0]["job_id"]]
        await asyncio.sleep(0.02)  # polling for the new job
    assert (await client.post(f"/api/cancel/{other[0]['job_id']}")).status == 200
    resp = await waiting
    body = await resp.json()
    assert resp.status == 409 and body["error"]["code"] == "canceled", body

    # Bad requests: a clear 4xx naming the parameter, nothing left in the uploads.
    resp = await asr(diarize="perhaps")
    body = await resp.json()
    assert resp.status == 400 and body["error"]["field"] == "diarize" and "diarize" in body["detail"], body
    form = aiohttp.FormData()
    form.add_field("audio_file", b"\x01\x02\x03", filename="audio_file")
    resp = await client.post("/asr", params={"encode": "false"}, data=form)
    body = await resp.json()
    assert resp.status == 400 and body["error"]["code"] == "bad_pcm", body
    form = aiohttp.FormData()
    form.add_field("file", media, filename="short.mp4")
    resp = await client.post("/detect-language", data=form)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "audio_file"
    form = aiohttp.FormData()
    form.add_field("audio_file", b"plain text, not media", filename="notes.mp4")
    resp = await client.post("/asr", data=form)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "audio_file"
    kept = {Path((await svc.get(j["job_id"])).input_path).name for j in (jobs[0], other[0])}
    assert {p.name for p in svc.settings.uploads_dir.iterdir()} <= kept  # only the jobs' own files


@pytest.mark.slow
async def test_a_failed_job_is_never_a_200(make_client: ClientFactory, short_speech: Speech) -> None:
    # ffmpeg cannot extract anything within a millisecond: the job fails (media_timeout).
    client = await make_client(media={"extract_timeout": 0.001, "extract_timeout_factor": 0.0})
    form = aiohttp.FormData()
    form.add_field("audio_file", await asyncio.to_thread(short_speech.path.read_bytes), filename="short.mp4")
    resp = await client.post("/asr", params={"output": "srt"}, data=form)
    body = await resp.json()
    assert resp.status == 500, body
    assert body["error"]["code"] == "media_timeout" and "/" not in body["detail"], body
    jobs = (await (await client.get("/api/jobs")).json())["jobs"]
    assert len(jobs) == 1 and jobs[0]["status"] == "failed"


@pytest.mark.slow
async def test_diarize_true_makes_a_diarized_job_whose_json_has_speakers(
    make_client: ClientFactory, make_settings: SettingsFactory, tiny_diarization: Path, dialogue: Speech
) -> None:
    install_model(make_settings(), tiny_diarization, "diarize", "community-1")
    client = await make_client()
    form = aiohttp.FormData()
    form.add_field("audio_file", await asyncio.to_thread(dialogue.path.read_bytes), filename="talk.wav")
    params = {"diarize": "true", "max_speakers": "3", "output": "json", "word_timestamps": "true"}
    resp = await client.post("/asr", params=params, data=form)
    assert resp.status == 200, await resp.text()
    result = json.loads(await resp.text())
    assert result["segments"] and all(s.get("speaker") for s in result["segments"]), result
    assert all(w.get("speaker") for s in result["segments"] for w in s["words"]), result
    (job,) = (await (await client.get("/api/jobs")).json())["jobs"]
    assert job["settings"]["diarize"] is True and job["settings"]["max_speakers"] == 3
