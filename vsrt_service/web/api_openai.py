"""The OpenAI-compatible API under /v1 (SPEC section 8): what the `openai` SDK and the tools
built on it (Open WebUI, scripts) call, answered by ordinary vsrt jobs.

Each transcription or translation is a job made by `Service.submit_shared`, so it shows in
the job list and the UI, is checkpointed, and an identical retry follows the same job. Shapes
are the ones the SDK parses; errors are OpenAI's `{"error": {message, type, param, code}}`.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from multidict import MultiDict

from vsrt_service.core.broker import Event
from vsrt_service.core.catalog import Catalog, CatalogEntry
from vsrt_service.core.config import parse_flag
from vsrt_service.core.errors import InvalidInput, NotFound
from vsrt_service.core.languages import language_name
from vsrt_service.core.protocol import Word
from vsrt_service.core.text import has_cjk
from vsrt_service.core.vocab import ModelStatus
from vsrt_service.jobs.store import Job, JobStatus
from vsrt_service.service import Service, Transcript
from vsrt_service.web.keys import SERVICE
from vsrt_service.web.uploads import receive_form

routes = web.RouteTableDef()

#: Model names OpenAI clients send (speaches answers them too): the configured default model.
ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt", "diarized_json")
#: A diarization's own labels (SPEAKER_00...), answered as OpenAI's A, B, ...; a name the
#: user gave a speaker is answered as it is.
MODEL_LABEL = re.compile(r"^SPEAKER_\d+$")
#: The speaker of words no diarization labelled (the job ran without the model).
UNKNOWN_SPEAKER = "unknown"
GRANULARITIES = ("word", "segment")
#: `include[]` values the SDK may send; vsrt has no token log probabilities, so none is returned.
INCLUDES = ("logprobs",)
TEXT_FORMATS = {"text": "txt", "srt": "srt", "vtt": "vtt"}
TEXT_TYPES = {"text": "text/plain", "srt": "text/plain", "vtt": "text/vtt"}
#: The form fields each route accepts (the SDK's; `chunking_strategy` is accepted and ignored).
TRANSCRIBE_FIELDS = (
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "include[]",
    "stream",
    "chunking_strategy",
)
TRANSLATE_FIELDS = ("model", "prompt", "response_format", "temperature", "stream")


def error_body(status: int, code: str, message: str, field: str | None = None) -> dict[str, Any]:
    """OpenAI's error body: the SDK raises the status's exception with `message`, `code`, `param`."""
    kind = "server_error" if status >= 500 else "invalid_request_error"
    if status == 401:
        code = "invalid_api_key"
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}


#: The statuses worth the SDK's automatic retries (it retries 408, 409, 429 and 5xx unless told).
RETRYABLE = (429, 503)


def openai_error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """OpenAI's error body; `x-should-retry: false` (which the SDK obeys) where a retry cannot
    help: a failed job would run again, a paused or canceled one would be resumed."""
    headers = {"x-should-retry": "true" if status in RETRYABLE else "false"}
    return web.json_response(error_body(status, code, message, field), status=status, headers=headers)


# --- models ------------------------------------------------------------------------------------


def resolve_model(catalog: Catalog, default: str, name: str) -> str:
    """The catalog id a client's model name means: an alias (the default), an id, or the
    Hugging Face repository of a catalog entry (what speaches users send)."""
    if name in ALIASES:
        return default
    if catalog.get("whisper", name) is not None:
        return name
    for entry in catalog.of_type("whisper"):
        if entry.repo.lower() == name.lower():
            return entry.id
    raise NotFound(
        f"The model '{name}' does not exist; use one of GET /v1/models", code="model_not_found", field="model"
    )


def _model_json(svc: Service, entry: CatalogEntry, model_id: str | None = None) -> dict[str, Any]:
    """A catalog entry as an OpenAI model, with vsrt's `downloaded` and `status` beside."""
    status = svc.models.state("whisper", entry.id).status
    return {
        "id": model_id or entry.id,
        "object": "model",
        "created": 0,  # the catalog has no release dates
        "owned_by": entry.repo.split("/")[0],
        "downloaded": status == ModelStatus.READY,
        "status": str(status),
        "repo": entry.repo,
        "english_only": entry.english_only,
    }


def _alias_json(svc: Service, alias: str) -> dict[str, Any]:
    default = svc.settings.transcription.default_model
    entry = svc.models.catalog.get("whisper", default)
    assert entry is not None  # the settings are validated against the catalog
    return {**_model_json(svc, entry, alias), "owned_by": "vsrt", "alias_of": default}


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    svc = request.app[SERVICE]
    data = [_model_json(svc, e) for e in svc.models.catalog.of_type("whisper")]
    data += [_alias_json(svc, alias) for alias in ALIASES]
    return web.json_response({"object": "list", "data": data})


@routes.get("/v1/models/{id:.+}")
async def get_model(request: web.Request) -> web.Response:
    """One model by id, alias or repository (`Systran/faster-whisper-tiny.en`)."""
    svc = request.app[SERVICE]
    name = request.match_info["id"]
    if name in ALIASES:
        return web.json_response(_alias_json(svc, name))
    model_id = resolve_model(svc.models.catalog, svc.settings.transcription.default_model, name)
    entry = svc.models.catalog.get("whisper", model_id)
    assert entry is not None
    return web.json_response(_model_json(svc, entry))


# --- transcriptions and translations -----------------------------------------------------------


@dataclass(frozen=True)
class AudioRequest:
    """A transcription or translation request, read from its form."""

    task: str  # what the client asked: "transcribe" or "translate"
    settings: dict[str, Any]  # the job's settings
    response_format: str
    temperature: float
    words: bool  # timestamp_granularities[] has "word"
    stream: bool


def _one(fields: MultiDict[str], name: str) -> str | None:
    values = fields.getall(name, [])
    if len(values) > 1:
        raise InvalidInput(f"{name} may be given once", field=name)
    return values[0] if values else None


def parse_request(fields: MultiDict[str], task: str, catalog: Catalog, default_model: str) -> AudioRequest:
    """Validate the form fields and turn them into job settings.

    The translation of an English-only model (`whisper-1` maps to tiny.en offline) is a
    transcription in English: such a model only hears English, and English is the target.
    """
    name = (_one(fields, "model") or "").strip()
    if not name:
        raise InvalidInput("model is required (whisper-1 or a model of GET /v1/models)", field="model")
    model = resolve_model(catalog, default_model, name)
    response_format = _one(fields, "response_format") or "json"
    if response_format not in RESPONSE_FORMATS:
        raise InvalidInput(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}", field="response_format"
        )
    raw = _one(fields, "temperature")
    try:
        temperature = float(raw) if raw not in (None, "") else 0.0
    except ValueError:
        raise InvalidInput("temperature must be a number from 0 to 1", field="temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise InvalidInput("temperature must be a number from 0 to 1", field="temperature")
    granularities = fields.getall("timestamp_granularities[]", [])
    for value in granularities:
        if value not in GRANULARITIES:
            raise InvalidInput(
                "timestamp_granularities[] must be word or segment", field="timestamp_granularities[]"
            )
    for value in fields.getall("include[]", []):
        if value not in INCLUDES:
            raise InvalidInput(f"include[] must be one of {', '.join(INCLUDES)}", field="include[]")
    stream = parse_flag(_one(fields, "stream") or "false")
    if stream is None:
        raise InvalidInput("stream must be true or false", field="stream")
    settings: dict[str, Any] = {"model": model, "task": task}
    if response_format == "diarized_json":
        if task != "transcribe":
            raise InvalidInput("diarized_json is for transcriptions", field="response_format")
        settings["diarize"] = True  # a job setting: it does not share a job made without it
    language = _one(fields, "language")
    if language is not None:
        settings["language"] = language.strip().lower() or None
    prompt = _one(fields, "prompt")
    if prompt is not None:
        settings["initial_prompt"] = prompt
    entry = catalog.get("whisper", model)
    if task == "translate" and entry is not None and entry.english_only:
        settings.update(task="transcribe", language="en")
    return AudioRequest(task, settings, response_format, temperature, "word" in granularities, stream)


@routes.post("/v1/audio/transcriptions")
async def transcriptions(request: web.Request) -> web.StreamResponse:
    return await _audio(request, "transcribe", TRANSCRIBE_FIELDS)


@routes.post("/v1/audio/translations")
async def translations(request: web.Request) -> web.StreamResponse:
    """Into English (OpenAI's translations have no language field)."""
    return await _audio(request, "translate", TRANSLATE_FIELDS)


async def _audio(request: web.Request, task: str, allowed: tuple[str, ...]) -> web.StreamResponse:
    svc = request.app[SERVICE]
    settings = svc.settings
    form = await receive_form(request, svc.storage, settings.server.max_upload_mb << 20, allowed=allowed)
    try:  # the form's file is ours until the service takes it
        if form.path is None:
            raise InvalidInput("the form has no `file` part", code="missing_file", field="file")
        asked = parse_request(form.fields, task, svc.models.catalog, settings.transcription.default_model)
        shared = await svc.submit_shared(form.path, asked.settings, source_name=form.name)
    except BaseException:
        if form.path is not None:
            await asyncio.shield(asyncio.to_thread(form.path.unlink, missing_ok=True))
        raise
    if asked.stream:
        return await _stream(request, svc, shared.job.id)
    job = await svc.finished(shared.job.id)
    if asked.response_format in TEXT_FORMATS:
        body = await svc.subtitles(job.id, TEXT_FORMATS[asked.response_format])
        return web.Response(text=body, content_type=TEXT_TYPES[asked.response_format])
    transcript = await svc.transcript(job.id)
    text = " ".join(s["text"].strip() for s in transcript.segments if s["text"].strip())
    if asked.response_format == "json":
        return web.json_response({"text": text})
    if asked.response_format == "diarized_json":
        return web.json_response(diarized_json(job.duration or 0.0, transcript, text))
    return web.json_response(verbose_json(asked, job, transcript, text))


def diarized_json(duration: float, transcript: Transcript, text: str) -> dict[str, Any]:
    """OpenAI's `diarized_json` (the SDK's TranscriptionDiarized): each aligned segment cut
    where its words change speaker; speakers A, B, ... in order of appearance, as OpenAI
    labels them, and `unknown` where the job has none (it ran without the model)."""
    letters: dict[str, str] = {}

    def label(speaker: str | None) -> str:
        if not speaker:
            return UNKNOWN_SPEAKER
        if not MODEL_LABEL.match(speaker):
            return speaker
        if speaker not in letters:
            n, name = len(letters), ""
            while True:  # A..Z, then AA, AB, ...
                n, k = divmod(n, 26)
                name = chr(ord("A") + k) + name
                if n == 0:
                    break
                n -= 1
            letters[speaker] = name
        return letters[speaker]

    segments: list[dict[str, Any]] = []
    for seg in transcript.segments:
        words: list[Word] = seg.get("words") or []
        times = timed_words(seg)
        runs: list[tuple[str | None, list[int]]] = []
        for i, w in enumerate(words):
            speaker = w.get("speaker")
            if runs and runs[-1][0] == speaker:
                runs[-1][1].append(i)
            else:
                runs.append((speaker, [i]))
        gap = "" if has_cjk(seg["text"]) else " "
        for speaker, indexes in runs or [(None, [])]:
            piece = gap.join(times[i]["word"] for i in indexes) if len(runs) > 1 else seg["text"].strip()
            if not piece:
                continue
            segments.append(
                {
                    "type": "transcript.text.segment",
                    "id": f"seg_{len(segments)}",
                    "start": times[indexes[0]]["start"] if indexes else float(seg["start"]),
                    "end": times[indexes[-1]]["end"] if indexes else float(seg["end"]),
                    "text": piece,
                    "speaker": label(speaker),
                }
            )
    return {
        "task": "transcribe",
        "duration": duration,
        "text": text,
        "segments": segments,
        "usage": {"type": "duration", "seconds": duration},
    }


def verbose_json(asked: AudioRequest, job: Job, transcript: Transcript, text: str) -> dict[str, Any]:
    """OpenAI's `verbose_json` from a finished job's aligned segments.

    vsrt keeps no token ids or decoding statistics: `tokens` is empty, `avg_logprob` and
    `no_speech_prob` are 0, `temperature` is Whisper's first (0); `compression_ratio` is
    computed from the text as Whisper does; `seek` is the start in 10 ms frames.
    """
    segments = [
        {
            "id": i,
            "seek": round(float(s["start"]) * 100),
            "start": float(s["start"]),
            "end": float(s["end"]),
            "text": s["text"].strip(),
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": compression_ratio(s["text"]),
            "no_speech_prob": 0.0,
        }
        for i, s in enumerate(transcript.segments)
    ]
    body: dict[str, Any] = {
        "task": asked.task,
        "language": "english" if asked.task == "translate" else language_name(job.language),
        "duration": job.duration or 0.0,
        "text": text,
        "segments": segments,
    }
    if asked.words and asked.task == "transcribe":
        body["words"] = [w for s in transcript.segments for w in timed_words(s)]
    return body


def compression_ratio(text: str) -> float:
    """Whisper's measure of repetition: the text's bytes over its zlib-compressed bytes."""
    raw = text.strip().encode()
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0


def timed_words(segment: dict[str, Any]) -> list[dict[str, Any]]:
    """A segment's words as `{word, start, end}`; a word the aligner could not place (digits)
    takes the gap between its neighbours, so every word has times, in order."""
    words: list[Word] = segment.get("words") or []
    out: list[dict[str, Any]] = []
    last_start = last_end = float(segment["start"])
    for i, w in enumerate(words):
        start = float(w["start"]) if "start" in w else last_end
        if "end" in w:
            end = float(w["end"])
        else:
            later = next((float(n["start"]) for n in words[i + 1 :] if "start" in n), float(segment["end"]))
            end = max(start, later)
        start = max(start, last_start)
        end = max(end, start)
        out.append({"word": w["word"].strip(), "start": round(start, 3), "end": round(end, 3)})
        last_start, last_end = start, end
    return out


# --- streaming ---------------------------------------------------------------------------------


async def _stream(request: web.Request, svc: Service, job_id: str) -> web.StreamResponse:
    """`transcript.text.delta` per transcribed segment as the job checkpoints it, then
    `transcript.text.done` with the deltas' sum; a job that fails ends with an error event
    (`data: {"error": ...}`, which the SDK raises). A client that leaves does not stop the job."""
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    text = ""
    try:
        async for piece in transcribed_pieces(svc, job_id):
            delta = piece if not text else f" {piece}"
            text += delta
            await _send(resp, {"type": "transcript.text.delta", "delta": delta})
        job = await svc.get(job_id)
        if job.status == JobStatus.COMPLETED:
            await _send(resp, {"type": "transcript.text.done", "text": text})
        elif job.status == JobStatus.FAILED:
            await _send(resp, error_body(500, job.error_code or "failed", job.error or "the job failed"))
        else:  # paused, canceled, or the server is shutting down
            await _send(
                resp, error_body(409, str(job.status), f"the job was {job.status} before it finished")
            )
        await resp.write_eof()
    except ConnectionError:  # the client left; the job goes on (the scheduler runs it)
        pass
    return resp


async def transcribed_pieces(svc: Service, job_id: str) -> AsyncIterator[str]:
    """The job's text, one piece per segment: what is already stored first, then each new
    `fragment` event, until the job ends. Subscribed before the store is read, so nothing
    falls between the two; a segment seen in both is given once."""
    events = cast(AsyncGenerator[Event, None], svc.events(job_id))
    try:
        await anext(events)  # the `connected` snapshot: subscribed from here on
        transcript = await svc.transcript(job_id)
        complete = transcript.source == "aligned"  # everything is transcribed already
        seen: set[int] = set()
        for index, piece in stored_pieces(transcript):
            if index is not None:
                seen.add(index)
            if piece:
                yield piece
        async for ev in events:
            if ev.event != "fragment" or complete or ev.data["segment_index"] in seen:
                continue
            seen.add(ev.data["segment_index"])
            piece = " ".join(line["text"].strip() for line in ev.data["segments"] if line["text"].strip())
            if piece:
                yield piece
    finally:
        await events.aclose()


def stored_pieces(transcript: Transcript) -> list[tuple[int | None, str]]:
    """(segment index or None, text) of what a job has: aligned segments, or the checkpoint's
    sentence lines (ids `"{index}.{k}"`) joined per transcribed segment, as fragments carry them."""
    if transcript.source != "checkpoint":
        return [(None, s["text"].strip()) for s in transcript.segments]
    pieces: dict[int, list[str]] = {}
    for line in transcript.segments:
        index = int(str(line["id"]).split(".")[0])
        if line["text"].strip():
            pieces.setdefault(index, []).append(line["text"].strip())
    return [(index, " ".join(lines)) for index, lines in sorted(pieces.items())]


async def _send(resp: web.StreamResponse, data: dict[str, Any]) -> None:
    await resp.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
