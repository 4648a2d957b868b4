"""The OpenAI-compatible API (/v1) with the real `openai` SDK against a live `vsrt serve`.

The form, model names, word times and stream pieces are pure functions, tested without a
server. One server serves the rest of the module. Requests with the same audio and settings
are one vsrt job (`Service.submit_shared`): the first transcribes, the others (another
`response_format`, word timestamps, a translation by the English-only model) attach to the
finished job and answer at once. So the clip is transcribed four times in all (plainly, with
one prompt for the stream, with another for the client that leaves, diarized for
diarized_json), and twice more it fails after the split (a model that is not downloaded).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import openai
import pytest
from multidict import MultiDict
from openai.types.audio import (
    Transcription,
    TranscriptionDiarized,
    TranscriptionVerbose,
    Translation,
    TranslationVerbose,
)

from tests.conftest import install_model
from tests.media import Speech, make_speech, normalize_text, word_error_rate
from tests.procs import vsrt_serve
from vsrt_service.core.catalog import Catalog
from vsrt_service.core.config import load_settings
from vsrt_service.core.errors import InvalidInput, NotFound
from vsrt_service.core.formats import parse_srt, parse_vtt
from vsrt_service.jobs.store import Job
from vsrt_service.service import Transcript
from vsrt_service.web.api_openai import (
    diarized_json,
    error_body,
    parse_request,
    resolve_model,
    stored_pieces,
    timed_words,
)

TOKEN = "openai-test-token-0123456789"
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "She sells fresh bread at the market."]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(tmp_path_factory.mktemp("openai") / "clip.mp3", SENTENCES, video=False)


# The service runs in its own process; this loop only drives the SDK, whose first request
# imports its resource modules and encodes the multipart body in the loop (0.9 s was seen
# beside the other pytest-xdist worker).
pytestmark = pytest.mark.block_limit(3.0)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, tiny_diarization: Path) -> Path:
    """The server's data directory, with the tiny diarization model ready in it."""
    path = tmp_path_factory.mktemp("openai-data")
    install_model(load_settings(env={}, data_dir=path), tiny_diarization, "diarize", "community-1")
    return path


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    # chunk_size 4: each sentence is a segment of its own, so a stream has a fragment per sentence.
    # A 1 MB upload limit: the clip is far under it, a 2 MB body over it.
    env = {
        "VSRT_SERVER_AUTH_TOKEN": TOKEN,
        "VSRT_TRANSCRIPTION_CHUNK_SIZE": "4",
        "VSRT_SERVER_MAX_UPLOAD_MB": "1",
    }
    with vsrt_serve(data_dir, env) as url:
        yield url


@pytest.fixture
async def client(server: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=0, timeout=120) as c:
        yield c


@pytest.fixture
async def api(server: str) -> AsyncIterator[aiohttp.ClientSession]:
    """vsrt's own /api, to see the jobs the OpenAI requests made."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(server, headers=headers) as http:
        yield http


async def audio(clip: Speech) -> tuple[str, bytes]:
    return clip.path.name, await asyncio.to_thread(clip.path.read_bytes)


def stored(uploads: Path) -> set[str]:
    return {p.name for p in uploads.iterdir()} if uploads.exists() else set()


async def jobs(api: aiohttp.ClientSession) -> list[dict[str, Any]]:
    async with api.get("/api/jobs") as resp:
        assert resp.status == 200
        return list((await resp.json())["jobs"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations so
async def test_each_response_format_is_one_job(
    client: openai.AsyncOpenAI, api: aiohttp.ClientSession, clip: Speech
) -> None:
    file = await audio(clip)
    first = await client.audio.transcriptions.create(file=file, model="whisper-1")
    assert isinstance(first, Transcription)
    assert word_error_rate(clip.text, first.text) < 0.3, first.text
    mine = [
        j
        for j in await jobs(api)
        if j["settings"]["initial_prompt"] is None and j["settings"]["model"] == "tiny.en"
    ]
    assert len(mine) == 1 and mine[0]["status"] == "completed" and mine[0]["source_name"] == "clip.mp3"
    job_id = mine[0]["job_id"]

    # The same audio and settings: the finished job answers, in each format.
    text = await client.audio.transcriptions.create(file=file, model="whisper-1", response_format="text")
    srt = await client.audio.transcriptions.create(file=file, model="tiny.en", response_format="srt")
    vtt = await client.audio.transcriptions.create(
        file=file, model="Systran/faster-whisper-tiny.en", response_format="vtt", language="en"
    )
    for fmt, body in (("txt", text), ("srt", srt), ("vtt", vtt)):
        async with api.get(f"/api/jobs/{job_id}/subtitles", params={"format": fmt}) as resp:
            assert isinstance(body, str) and body == await resp.text(), fmt
    assert [c.text for c in parse_srt(srt)] == [c.text for c in parse_vtt(vtt)]
    assert normalize_text(" ".join(c.text for c in parse_srt(srt))) == normalize_text(first.text)

    verbose = await client.audio.transcriptions.create(
        file=file, model="whisper-1", response_format="verbose_json", temperature=0.2
    )
    assert isinstance(verbose, TranscriptionVerbose)
    assert verbose.language == "english" and verbose.text == first.text and verbose.words is None
    assert verbose.duration == pytest.approx(clip.duration, abs=0.1)
    assert verbose.segments and [s.id for s in verbose.segments] == list(range(len(verbose.segments)))
    assert " ".join(s.text.strip() for s in verbose.segments) == first.text
    assert all(0 <= s.start < s.end <= verbose.duration + 0.01 for s in verbose.segments)

    words = await client.audio.transcriptions.create(
        file=file,
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word", "segment"],
    )
    assert words.words and words.segments
    assert normalize_text(" ".join(w.word for w in words.words)) == normalize_text(first.text)
    starts = [w.start for w in words.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= clip.duration + 0.01 for w in words.words)
    # Inside the speech: the first word starts near the first sentence, the last ends near the last.
    assert abs(words.words[0].start - clip.sentences[0].start) < 0.5
    assert abs(words.words[-1].end - clip.sentences[-1].end) < 0.5

    # An English-only model "translates" English speech to English: the same job again.
    translation = await client.audio.translations.create(file=file, model="whisper-1")
    assert isinstance(translation, Translation) and translation.text == first.text
    verbose_translation = await client.audio.translations.create(
        file=file, model="whisper-1", response_format="verbose_json"
    )
    assert isinstance(verbose_translation, TranslationVerbose)
    assert verbose_translation.language == "english" and verbose_translation.segments

    # Seven requests, one job, each segment transcribed once.
    again = [j for j in await jobs(api) if j["settings"] == mine[0]["settings"]]
    assert [j["job_id"] for j in again] == [job_id]


@pytest.mark.slow
async def test_stream_sends_a_delta_per_fragment(
    client: openai.AsyncOpenAI, api: aiohttp.ClientSession, clip: Speech
) -> None:
    prompt = "A fox, and bread at the market."  # another request: a job of its own, transcribed live
    stream = await client.audio.transcriptions.create(
        file=await audio(clip), model="whisper-1", prompt=prompt, stream=True
    )
    events = [event async for event in stream]
    deltas = [e.delta for e in events if e.type == "transcript.text.delta"]
    done = events[-1]
    assert done.type == "transcript.text.done"
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * len(deltas)
    assert "".join(deltas) == done.text
    assert word_error_rate(clip.text, done.text) < 0.3, done.text
    job = next(j for j in await jobs(api) if j["settings"]["initial_prompt"] == prompt)
    assert job["status"] == "completed"
    assert len(deltas) == job["total"] >= 2  # one per checkpointed segment


@pytest.mark.slow
async def test_a_client_that_leaves_mid_job_gets_the_result_on_retry(
    client: openai.AsyncOpenAI, api: aiohttp.ClientSession, clip: Speech, data_dir: Path
) -> None:
    file = await audio(clip)
    prompt = "Brown fox, fresh bread."
    stream = await client.audio.transcriptions.create(
        file=file, model="whisper-1", prompt=prompt, stream=True
    )
    first = await anext(aiter(stream))
    assert first.type == "transcript.text.delta"
    await stream.close()  # the client leaves after the first fragment
    again = await client.audio.transcriptions.create(file=file, model="whisper-1", prompt=prompt)
    assert word_error_rate(clip.text, again.text) < 0.3, again.text
    mine = [j for j in await jobs(api) if j["settings"]["initial_prompt"] == prompt]
    assert len(mine) == 1 and mine[0]["status"] == "completed"
    counts = await asyncio.to_thread(transcribe_counts, data_dir, mine[0]["job_id"])
    assert counts and all(count == 1 for count in counts), counts  # no segment transcribed twice


def transcribe_counts(data_dir: Path, job_id: str) -> list[int]:
    with contextlib.closing(sqlite3.connect(data_dir / "vsrt.sqlite3")) as db:
        rows = db.execute("SELECT transcribe_count FROM segments WHERE job_id = ? ORDER BY idx", (job_id,))
        return [int(count) for (count,) in rows.fetchall()]


@pytest.mark.slow
async def test_models(client: openai.AsyncOpenAI) -> None:
    listed = {m.id: m async for m in client.models.list()}
    assert {"tiny.en", "large-v3", "whisper-1"} <= set(listed)
    assert all(m.object == "model" and isinstance(m.created, int) for m in listed.values())
    tiny = await client.models.retrieve("tiny.en")
    assert tiny.id == "tiny.en" and tiny.owned_by == "Systran"
    assert tiny.model_extra and tiny.model_extra["downloaded"] is True
    assert listed["large-v3"].model_extra and listed["large-v3"].model_extra["downloaded"] is False
    by_repo = await client.models.retrieve("Systran/faster-whisper-tiny.en")
    assert by_repo.id == "tiny.en"
    with pytest.raises(openai.NotFoundError) as info:
        await client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found" and "no-such-model" in info.value.message


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # the SDK marks translations so
async def test_errors_in_openai_shape(
    server: str, client: openai.AsyncOpenAI, api: aiohttp.ClientSession, clip: Speech, data_dir: Path
) -> None:
    file = await audio(clip)
    uploads = data_dir / "uploads"
    before = await asyncio.to_thread(stored, uploads)  # the inputs of earlier tests' jobs
    with pytest.raises(openai.NotFoundError) as info:
        await client.audio.transcriptions.create(file=file, model="no-such-model")
    assert info.value.code == "model_not_found" and "no-such-model" in info.value.message
    assert info.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.transcriptions.create(file=file, model="whisper-1", temperature=1.5)
    assert bad.value.param == "temperature" and bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.translations.create(  # type: ignore[call-overload]
            file=file, model="whisper-1", response_format="diarized_json"
        )
    assert bad.value.param == "response_format"
    with pytest.raises(openai.BadRequestError) as bad:
        await client.audio.transcriptions.create(file=("notes.mp3", b"not audio at all"), model="whisper-1")
    assert bad.value.param == "file"
    with pytest.raises(openai.APIStatusError) as big:
        await client.audio.transcriptions.create(file=("big.mp3", bytes(2 << 20)), model="whisper-1")
    assert big.value.status_code == 413 and big.value.code == "too_large"
    assert await asyncio.to_thread(stored, uploads) == before, "a refused request left its upload behind"

    async with openai.AsyncOpenAI(
        base_url=f"{server}/v1", api_key="a-wrong-key-0123456789", max_retries=0
    ) as wrong:
        with pytest.raises(openai.AuthenticationError):
            await wrong.models.list()
        with pytest.raises(openai.AuthenticationError):
            await wrong.audio.transcriptions.create(file=file, model="whisper-1")

    # A job that fails (its model is not downloaded) is a 500 with the job's message, never a 200.
    with pytest.raises(openai.InternalServerError) as failed:
        await client.audio.transcriptions.create(file=file, model="base.en")
    assert failed.value.code == "model_missing" and "base.en is not downloaded" in failed.value.message
    # Streamed, the same failure ends the stream with an error event, which the SDK raises.
    stream = await client.audio.transcriptions.create(file=file, model="base.en", stream=True)
    with pytest.raises(openai.APIError) as streamed:
        async for _ in stream:
            pass
    assert "base.en is not downloaded" in streamed.value.message

    # The SDK retries a 500 twice by default unless the answer says not to: a failed job is not
    # run three times over (a retry cannot help it, and a failed job is never shared).
    async def base_en_jobs() -> int:
        return sum(j["settings"]["model"] == "base.en" for j in await jobs(api))

    before_retries = await base_en_jobs()
    async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=TOKEN, max_retries=2) as retrying:
        with pytest.raises(openai.InternalServerError):
            await retrying.audio.transcriptions.create(file=file, model="base.en")
    assert await base_en_jobs() == before_retries + 1


# --- pure functions ------------------------------------------------------------------------------


@pytest.mark.slow
async def test_diarized_json_is_a_diarized_job_with_a_speaker_per_segment(
    client: openai.AsyncOpenAI, api: aiohttp.ClientSession, clip: Speech
) -> None:
    file = await audio(clip)
    result = await client.audio.transcriptions.create(
        file=file, model="whisper-1", response_format="diarized_json"
    )
    assert isinstance(result, TranscriptionDiarized), result
    assert word_error_rate(clip.text, result.text) < 0.3, result.text
    assert result.segments and all(s.speaker.isalpha() and s.speaker.isupper() for s in result.segments)
    assert [s.start for s in result.segments] == sorted(s.start for s in result.segments)
    diarized = [j for j in await jobs(api) if j["settings"]["diarize"]]
    assert len(diarized) == 1 and diarized[0]["status"] == "completed"


def test_model_names() -> None:
    catalog = Catalog.load()
    for alias in ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"):
        assert resolve_model(catalog, "tiny.en", alias) == "tiny.en"
    assert resolve_model(catalog, "tiny.en", "small") == "small"
    assert resolve_model(catalog, "tiny.en", "Systran/faster-whisper-small") == "small"
    assert resolve_model(catalog, "tiny.en", "systran/FASTER-whisper-small.en") == "small.en"
    assert (
        resolve_model(catalog, "tiny.en", "mobiuslabsgmbh/faster-whisper-large-v3-turbo") == "large-v3-turbo"
    )
    with pytest.raises(NotFound) as info:
        resolve_model(catalog, "tiny.en", "whisper-2")
    assert info.value.code == "model_not_found" and info.value.field == "model"
    assert "whisper-2" in str(info.value)


def form(**fields: str | list[str]) -> MultiDict[str]:
    out: MultiDict[str] = MultiDict()
    for key, value in fields.items():
        for v in value if isinstance(value, list) else [value]:
            out.add(key.replace("__", "[]"), v)
    return out


def test_form_fields_to_job_settings() -> None:
    catalog = Catalog.load()
    plain = parse_request(form(model="whisper-1"), "transcribe", catalog, "tiny.en")
    assert plain.settings == {"model": "tiny.en", "task": "transcribe"}
    assert (plain.response_format, plain.temperature, plain.words, plain.stream) == (
        "json",
        0.0,
        False,
        False,
    )
    full = parse_request(
        form(
            model="small",
            language="DE",
            prompt="Namen: Jürgen",
            response_format="verbose_json",
            temperature="0.4",
            timestamp_granularities__=["word", "segment"],
            include__="logprobs",
            stream="true",
        ),
        "transcribe",
        catalog,
        "tiny.en",
    )
    assert full.settings == {
        "model": "small",
        "task": "transcribe",
        "language": "de",
        "initial_prompt": "Namen: Jürgen",
    }
    assert (full.response_format, full.temperature, full.words, full.stream) == (
        "verbose_json",
        0.4,
        True,
        True,
    )
    diarized = parse_request(
        form(model="whisper-1", response_format="diarized_json"), "transcribe", catalog, "tiny.en"
    )
    assert diarized.settings == {"model": "tiny.en", "task": "transcribe", "diarize": True}
    with pytest.raises(InvalidInput) as info:
        parse_request(form(model="small", response_format="diarized_json"), "translate", catalog, "tiny.en")
    assert info.value.field == "response_format"
    # A multilingual model translates; an English-only one transcribes English (its only language).
    assert parse_request(form(model="small"), "translate", catalog, "tiny.en").settings["task"] == "translate"
    english = parse_request(form(model="whisper-1"), "translate", catalog, "tiny.en")
    assert english.task == "translate" and english.settings == {
        "model": "tiny.en",
        "task": "transcribe",
        "language": "en",
    }


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({}, "model"),
        ({"model": ["whisper-1", "small"]}, "model"),
        ({"model": "whisper-1", "temperature": "hot"}, "temperature"),
        ({"model": "whisper-1", "temperature": "1.5"}, "temperature"),
        ({"model": "whisper-1", "temperature": "-0.1"}, "temperature"),
        ({"model": "whisper-1", "timestamp_granularities__": "char"}, "timestamp_granularities[]"),
        ({"model": "whisper-1", "include__": "everything"}, "include[]"),
        ({"model": "whisper-1", "stream": "maybe"}, "stream"),
    ],
)
def test_bad_form_fields_name_the_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        parse_request(form(**fields), "transcribe", Catalog.load(), "tiny.en")
    assert info.value.field == field


def test_every_word_has_times_in_order() -> None:
    segment = {
        "start": 1.0,
        "end": 4.0,
        "text": "I have 42 cats",
        "words": [
            {"word": "I", "start": 1.0, "end": 1.2},
            {"word": "have", "start": 1.3, "end": 1.6},
            {"word": "42"},  # the aligner could not place digits
            {"word": "cats", "start": 3.0, "end": 3.5},
        ],
    }
    assert timed_words(segment) == [
        {"word": "I", "start": 1.0, "end": 1.2},
        {"word": "have", "start": 1.3, "end": 1.6},
        {"word": "42", "start": 1.6, "end": 3.0},
        {"word": "cats", "start": 3.0, "end": 3.5},
    ]
    assert timed_words({"start": 0.0, "end": 1.0, "text": "", "words": []}) == []


def test_diarized_json_is_what_the_sdk_parses_cut_at_speaker_changes() -> None:
    job = cast(Job, None)
    w = [
        {"word": "Hello", "start": 0.0, "end": 0.4, "speaker": "SPEAKER_01"},
        {"word": "there.", "start": 0.5, "end": 0.9, "speaker": "SPEAKER_01"},
        {"word": "Hi!", "start": 1.2, "end": 1.5, "speaker": "SPEAKER_00"},
        {"word": "42", "speaker": "SPEAKER_00"},
    ]
    segments: list[dict[str, Any]] = [
        {"id": 0, "start": 0.0, "end": 2.0, "text": " Hello there. Hi! 42", "words": w},
        {
            "id": 1,
            "start": 3.0,
            "end": 4.0,
            "text": " Renamed.",
            "words": [{"word": "Renamed.", "speaker": "Ada"}],
        },
        {
            "id": 2,
            "start": 5.0,
            "end": 6.0,
            "text": " No speakers.",
            "words": [{"word": "No"}, {"word": "speakers."}],
        },
    ]
    body = diarized_json(6.5, Transcript(job, "aligned", segments, None), "Hello there. Hi! 42 Renamed.")
    parsed = TranscriptionDiarized.model_validate(body)
    assert parsed.task == "transcribe" and parsed.duration == 6.5
    assert [(s.speaker, s.text, s.start, s.end) for s in parsed.segments] == [
        ("A", "Hello there.", 0.0, 0.9),
        ("B", "Hi! 42", 1.2, 2.0),
        ("Ada", "Renamed.", 3.0, 4.0),  # untimed words: the segment's times
        ("unknown", "No speakers.", 5.0, 6.0),
    ]
    assert len({s.id for s in parsed.segments}) == 4
    assert all(s.type == "transcript.text.segment" for s in parsed.segments)


def test_stored_pieces_are_what_fragments_carry() -> None:
    job = cast(Job, None)
    lines = [
        {"id": "1.0", "start": 5.0, "end": 6.0, "text": "Second chunk."},
        {"id": "0.0", "start": 0.0, "end": 1.0, "text": "First sentence."},
        {"id": "0.1", "start": 1.0, "end": 2.0, "text": " Still the first chunk. "},
    ]
    checkpoint = Transcript(job, "checkpoint", lines, None)
    assert stored_pieces(checkpoint) == [(0, "First sentence. Still the first chunk."), (1, "Second chunk.")]
    aligned = Transcript(job, "aligned", [{"id": 0, "text": " All of it. "}], None)
    assert stored_pieces(aligned) == [(None, "All of it.")]


def test_error_body_is_openais() -> None:
    assert error_body(404, "model_not_found", "no such model", "model") == {
        "error": {
            "message": "no such model",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_found",
        }
    }
    assert error_body(401, "unauthorized", "a bearer token is required")["error"]["code"] == "invalid_api_key"
    assert error_body(500, "model_missing", "not downloaded")["error"]["type"] == "server_error"
