"""whisper-asr-webservice's API over vsrt jobs: `POST /asr` and `POST /detect-language`, so
Bazarr, subgen and the other clients of that service work unchanged.

Each `/asr` request is an ordinary vsrt job (`Service.submit_shared`): listed, checkpointed,
with live events; a client that disconnects leaves it running and its identical retry
attaches to it, or gets the finished result at once. Bazarr saves whatever body a reply
carries as the subtitle without looking at the status, so a 200 always carries the
subtitle and every failure is a non-2xx status. The outputs follow that service's writers
(its `app/utils.py`) over vsrt's cues; `json` is the Whisper result dict.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiohttp import web
from multidict import MultiMapping

from vsrt_service.core.config import parse_flag
from vsrt_service.core.cues import Cue, round_ms
from vsrt_service.core.errors import InvalidInput
from vsrt_service.core.formats import to_srt, to_txt
from vsrt_service.core.languages import LANGUAGE_NAMES, language_name
from vsrt_service.core.options import MAX_SPEAKERS
from vsrt_service.core.pcm import pcm_to_wav
from vsrt_service.jobs.store import Job
from vsrt_service.service import Service, Transcript
from vsrt_service.web.keys import SERVICE
from vsrt_service.web.uploads import Form, display_name, receive_form

routes = web.RouteTableDef()

#: The routes of this API, each a prefix of its own in web/app.py's APIS.
PREFIXES = ("/asr", "/detect-language")
FILE_FIELD = "audio_file"
OUTPUTS = ("txt", "vtt", "srt", "tsv", "json")
TASKS = ("transcribe", "translate")
#: The `Asr-Engine` header: vsrt transcribes and aligns with WhisperX.
ENGINE = "whisperx"


def asr_error(status: int, code: str, message: str, field: str | None = None) -> web.Response:
    """FastAPI's `{"detail": message}` (what that service's clients show), with vsrt's
    `{"error": {"code", "message", "field"?}}` beside it."""
    error: dict[str, str] = {"code": code, "message": message}
    if field:
        error["field"] = field
    return web.json_response({"detail": message, "error": error}, status=status)


# --- the query -----------------------------------------------------------------------------


@dataclass(frozen=True)
class AsrQuery:
    """`/asr`'s query parameters, checked; those that change the transcription are job settings,
    the others (output, word_timestamps) only shape the reply, so they share the job."""

    encode: bool = True
    task: str = "transcribe"
    language: str | None = None
    initial_prompt: str | None = None
    output: str = "txt"
    word_timestamps: bool = False
    vad_filter: bool = False
    diarize: bool = False
    min_speakers: int | None = None
    max_speakers: int | None = None
    #: Bazarr's `video_file` (the video's path, with "pass video name"): the job's name in the
    #: job list instead of the part's "audio_file"; not a setting, so it does not split a job.
    video_name: str | None = None

    def settings(self) -> dict[str, Any]:
        """The vsrt job settings (no language: detected, as that service does); the speaker
        counts only with diarize, as there, so they split a shared job only when they count."""
        settings: dict[str, Any] = {
            "task": self.task,
            "language": self.language or "auto",
            "initial_prompt": self.initial_prompt,
        }
        if self.diarize:
            settings |= {
                "diarize": True,
                "min_speakers": self.min_speakers,
                "max_speakers": self.max_speakers,
            }
        return settings


def _last(query: MultiMapping[str], name: str) -> str | None:
    """The value of a query parameter, the last one when repeated (as FastAPI reads it)."""
    values = query.getall(name, [])
    return values[-1] if values else None


def _bool(query: MultiMapping[str], name: str, default: bool) -> bool:
    raw = _last(query, name)
    if raw is None:
        return default
    flag = parse_flag(raw)
    if flag is None:
        raise InvalidInput(f"{name} must be true or false, not {raw!r}", code="bad_parameter", field=name)
    return flag


def _choice(query: MultiMapping[str], name: str, allowed: Sequence[str], default: str) -> str:
    raw = _last(query, name)
    if raw is None or raw == "":
        return default
    if raw not in allowed:
        raise InvalidInput(
            f"{name} must be one of {', '.join(allowed)}, not {raw!r}", code="bad_parameter", field=name
        )
    return raw


def _speakers(query: MultiMapping[str], name: str) -> int | None:
    raw = _last(query, name)
    if raw is None or raw == "":
        return None
    try:
        count = int(raw)
    except ValueError:
        raise InvalidInput(
            f"{name} must be a whole number, not {raw!r}", code="bad_parameter", field=name
        ) from None
    if not 1 <= count <= MAX_SPEAKERS:
        raise InvalidInput(f"{name} must be from 1 to {MAX_SPEAKERS}", code="bad_parameter", field=name)
    return count


def parse_encode(query: MultiMapping[str]) -> bool:
    return _bool(query, "encode", True)


def parse_asr_query(query: MultiMapping[str]) -> AsrQuery:
    """Check every parameter that service takes; others are ignored, as there (Bazarr's
    `video_file` only names the job). The speaker counts are checked even without diarize."""
    language = _last(query, "language") or None
    if language is not None and language not in LANGUAGE_NAMES:
        raise InvalidInput(
            f"language must be a Whisper language code such as 'en', not {language!r}",
            code="bad_parameter",
            field="language",
        )
    minimum, maximum = _speakers(query, "min_speakers"), _speakers(query, "max_speakers")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise InvalidInput(
            "min_speakers must not exceed max_speakers", code="bad_parameter", field="min_speakers"
        )
    parsed = AsrQuery(
        encode=parse_encode(query),
        task=_choice(query, "task", TASKS, "transcribe"),
        language=language,
        initial_prompt=_last(query, "initial_prompt") or None,
        output=_choice(query, "output", OUTPUTS, "txt"),
        word_timestamps=_bool(query, "word_timestamps", False),
        vad_filter=_bool(query, "vad_filter", False),
        diarize=_bool(query, "diarize", False),
        min_speakers=minimum,
        max_speakers=maximum,
        video_name=display_name(video) if (video := _last(query, "video_file")) else None,
    )
    return parsed


# --- the outputs ---------------------------------------------------------------------------


def _timestamp(seconds: float, *, hours: bool, marker: str) -> str:
    """That service's `format_timestamp`: [HH:]MM:SS<marker>mmm, hours only when asked or > 0."""
    ms = max(0, round_ms(seconds))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    head = f"{h:02d}:" if hours or h > 0 else ""
    return f"{head}{m:02d}:{s:02d}{marker}{ms:03d}"


def _one_line(cue: Cue) -> str:
    return to_txt([cue]).strip()


def to_asr_vtt(cues: Sequence[Cue]) -> str:
    """`WEBVTT`, a blank line, then `MM:SS.mmm --> MM:SS.mmm` cues each followed by a blank line."""
    out = ["WEBVTT\n\n"]
    for cue in cues:
        lines = [line.strip() for line in cue.text.splitlines() if line.strip()]
        text = "\n".join(lines).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        start = _timestamp(cue.start, hours=False, marker=".")
        end = _timestamp(cue.end, hours=False, marker=".")
        out.append(f"{start} --> {end}\n{text}\n\n")
    return "".join(out)


def to_asr_tsv(cues: Sequence[Cue]) -> str:
    """A `start\\tend\\ttext` header, then integer milliseconds and the cue on one line."""
    rows = ["start\tend\ttext\n"]
    rows += [f"{round_ms(c.start)}\t{round_ms(c.end)}\t{_one_line(c).replace(chr(9), ' ')}\n" for c in cues]
    return "".join(rows)


def to_whisper_json(transcript: Transcript, language: str | None, words: bool) -> str:
    """The Whisper result dict: `{text, segments: [{id, seek, start, end, text, tokens,
    temperature, avg_logprob, compression_ratio, no_speech_prob, words?, speaker?}], language}`.
    vsrt keeps no tokens or decoding statistics, so those hold neutral values. A diarized job's
    segments and words carry `speaker`, as whisperx's result does."""
    segments = []
    for i, seg in enumerate(transcript.segments):
        item: dict[str, Any] = {
            "id": i,
            "seek": 0,
            "start": seg["start"],
            "end": seg["end"],
            "text": " " + str(seg["text"]).strip(),
            "tokens": [],
            "temperature": 0.0,
            "avg_logprob": 0.0,
            "compression_ratio": 0.0,
            "no_speech_prob": 0.0,
        }
        if words:
            item["words"] = [
                {
                    "word": " " + str(w.get("word", "")),
                    **{k: w[k] for k in ("start", "end") if w.get(k) is not None},
                    "probability": w.get("score") if w.get("score") is not None else w.get("probability"),
                    **({"speaker": w["speaker"]} if w.get("speaker") else {}),
                }
                for w in seg.get("words") or []
            ]
        if (speaker := main_speaker(seg.get("words") or [])) is not None:
            item["speaker"] = speaker
        segments.append(item)
    text = "".join(s["text"] for s in segments)
    return json.dumps({"text": text, "segments": segments, "language": language}, ensure_ascii=False)


def main_speaker(words: Sequence[Any]) -> str | None:
    """The speaker of most of a segment's words (the first such on a tie); None if none has one."""
    counts: dict[str, int] = {}
    for w in words:
        if w.get("speaker"):
            counts[w["speaker"]] = counts.get(w["speaker"], 0) + 1
    return max(counts, key=lambda k: counts[k]) if counts else None


async def render_output(svc: Service, job: Job, query: AsrQuery) -> str:
    """The finished job in the asked output: cues (the user's edits when saved) for the
    subtitle formats, the aligned transcript for json."""
    if query.output == "json":
        return to_whisper_json(await svc.transcript(job.id), job.language, query.word_timestamps)
    cues = (await svc.cue_document(job.id)).cues
    if query.output == "srt":
        return to_srt(cues)
    if query.output == "vtt":
        return to_asr_vtt(cues)
    if query.output == "tsv":
        return to_asr_tsv(cues)
    return to_txt(cues)


# --- routes --------------------------------------------------------------------------------


async def receive_audio(request: web.Request, svc: Service, encode: bool) -> Form:
    """The `audio_file` part stored in the uploads; with encode=false the raw PCM is wrapped
    in a WAV header first. Nothing is left on disk when it is refused."""
    form = await receive_form(
        request, svc.storage, svc.settings.server.max_upload_mb << 20, file_field=FILE_FIELD
    )
    if form.path is None:
        raise InvalidInput(f"the form has no `{FILE_FIELD}` part", code="missing_file", field=FILE_FIELD)
    if encode:
        return form
    raw = form.path
    wav = raw.with_name(raw.name.split(".")[0] + ".wav")
    try:
        await asyncio.to_thread(pcm_to_wav, raw, wav, field=FILE_FIELD)
    except BaseException:
        await asyncio.shield(asyncio.to_thread(wav.unlink, missing_ok=True))
        raise
    finally:
        await asyncio.shield(asyncio.to_thread(raw.unlink, missing_ok=True))
    return Form(wav, form.name, form.fields)


async def _discard(path: Path) -> None:
    await asyncio.shield(asyncio.to_thread(path.unlink, missing_ok=True))


@routes.post("/asr")
async def asr(request: web.Request) -> web.Response:
    """Transcribe (or translate) `audio_file` and answer the subtitle text in `output`."""
    query = parse_asr_query(request.query)
    svc = request.app[SERVICE]
    form = await receive_audio(request, svc, query.encode)
    assert form.path is not None
    try:
        shared = await svc.submit_shared(
            form.path, query.settings(), source_name=query.video_name or form.name, field=FILE_FIELD
        )
    except BaseException:
        await _discard(form.path)
        raise
    job = await svc.finished(shared.job.id)
    body = await render_output(svc, job, query)
    return web.Response(
        text=body,
        content_type="text/plain",
        charset="utf-8",
        headers={
            "Asr-Engine": ENGINE,
            "Content-Disposition": f'attachment; filename="{quote(form.name)}.{query.output}"',
        },
    )


@routes.post("/detect-language")
async def detect_language(request: web.Request) -> web.Response:
    """`{detected_language, language_code, confidence}` from the first 30 s of speech."""
    encode = parse_encode(request.query)
    svc = request.app[SERVICE]
    form = await receive_audio(request, svc, encode)
    assert form.path is not None
    try:
        found = await svc.detect_language(form.path, source_name=form.name, field=FILE_FIELD)
    finally:
        await _discard(form.path)
    code = str(found.result["language"])
    return web.json_response(
        {
            "detected_language": language_name(code),
            "language_code": code,
            "confidence": found.result["probability"],
        }
    )
