"""One job through the pipeline: extract, split, transcribe, align, diarize (when on), srt.

Every step starts from what the store already holds, so running a job again after a pause,
a crash or a restart redoes nothing that was finished. Each write is committed before the
event about it is published. The scheduler owns the task; this module owns the job's
final state, which is written under `asyncio.shield` whatever ends the run.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import wave
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from vsrt_service.core import protocol as p
from vsrt_service.core.broker import Broker, job_channel
from vsrt_service.core.config import Settings
from vsrt_service.core.cue_rules import cue_rules
from vsrt_service.core.errors import VsrtError
from vsrt_service.core.options import SPEAKER_OPTIONS, OptionError, parse_options, track_choice
from vsrt_service.core.redact import public_text
from vsrt_service.core.speakers import SpeakerTurn, assign_speakers
from vsrt_service.core.speech import sentence_lines, snap_words
from vsrt_service.core.vocab import STEPS, Phase, Signal
from vsrt_service.jobs.datadir import AUDIO_NAME, TRACK_NAME, audio_files
from vsrt_service.jobs.media import (
    MediaError,
    audio_is_complete,
    choose_track,
    extract_audio,
    probe,
    wav_seconds,
)
from vsrt_service.jobs.outputs import OutputError, write_job_outputs
from vsrt_service.jobs.peaks import PEAKS_NAME, write_peaks
from vsrt_service.jobs.storage import Storage, remove_paths, storage_for
from vsrt_service.jobs.store import Job, JobStore
from vsrt_service.models.manager import ModelManager
from vsrt_service.runners.pool import RunnerError, RunnerLost, RunnerPool, RunnerSlot, new_id

log = logging.getLogger("vsrt.pipeline")

#: phase -> (start percent, end percent); the SPEC's shares, from core/vocab.py.
PHASES: dict[Phase, tuple[float, float]] = {s.phase: (s.start, s.end) for s in STEPS}


class JobFailed(VsrtError):
    """Ends a job as failed with a code and a message a user can act on."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


class Requeue(Exception):
    """The runner died under the job; it goes back to the queue and resumes later."""


@dataclass
class JobContext:
    """What a running job needs; built once by the service. `files`: the shared media
    (`storage`), else the one the settings name."""

    settings: Settings
    store: JobStore
    broker: Broker
    pool: RunnerPool
    models: ModelManager
    files: InitVar[Storage | None] = None
    storage: Storage = field(init=False)

    def __post_init__(self, files: Storage | None) -> None:
        self.storage = storage_for(self.settings) if files is None else files

    def job_dir(self, job_id: str) -> Path:
        return self.storage.workdir(job_id)

    def input_file(self, job: Job) -> Path:
        """The job's input file; `input_path` is relative to the storage root when inside it
        (older versions: to the data directory, which is the root when none is set)."""
        return self.storage.input_file(job.input_path)

    def publish(self, job_id: str, event: str, data: dict[str, Any]) -> None:
        self.broker.publish(job_channel(job_id), event, data)


def percent(phase: Phase, fraction: float) -> float:
    lo, hi = PHASES[phase]
    return lo + (hi - lo) * max(0.0, min(1.0, fraction))


class JobRun:
    """The pipeline for one claimed job."""

    def __init__(self, ctx: JobContext, job: Job) -> None:
        self.ctx = ctx
        self.job = job
        self.options = parse_options(job.options, ctx.settings, base=None, catalog=ctx.models.catalog)
        self.dir = ctx.job_dir(job.id)
        self.audio = self.dir / AUDIO_NAME
        self.language: str | None = job.language or self.options.language
        #: The split's speech regions: kept when the split runs, else read once from the store.
        self._speech: list[tuple[float, float]] | None = None

    async def progress(
        self,
        phase: Phase,
        fraction: float,
        message: str,
        processed: int | None = None,
        total: int | None = None,
    ) -> None:
        job = await self.ctx.store.update_progress(
            self.job.id,
            phase=phase,
            percent=percent(phase, fraction),
            message=message,
            processed=processed,
            total=total,
            claim=self.job.claim,
        )
        self.ctx.publish(self.job.id, "progress", job.progress_dict())

    async def run(self) -> None:
        await asyncio.to_thread(self.dir.mkdir, parents=True, exist_ok=True)
        await self.extract()
        await self.write_peaks()
        segments = await self.split()
        if segments:
            await self.transcribe()
        aligned, alignment = await self.align()
        aligned = await self.diarize(aligned, alignment)
        await self.write_outputs(aligned, alignment)
        if self.ctx.settings.jobs.keep_audio_hours == 0:
            # Nothing reads it once the subtitles are written; a restart extracts it again.
            await asyncio.to_thread(remove_paths, audio_files(self.dir))

    async def speech(self) -> list[tuple[float, float]]:
        """Where the speech is (empty for jobs split before regions were kept)."""
        if self._speech is None:
            self._speech = await self.ctx.store.speech(self.job.id)
        return self._speech

    # --- phases --------------------------------------------------------------------------

    async def extract(self) -> None:
        src = self.ctx.input_file(self.job)
        limits = self.ctx.settings.media
        choice = track_choice(self.options.audio_track)
        # Which track audio.wav holds: a restart may ask for another one and keeps the audio.
        marker = self.dir / TRACK_NAME
        if await asyncio.to_thread(self.audio.is_file):
            # Audio from an earlier run is kept only if it covers the source: a truncated
            # file (full disk, a copy cut short) keeps the header of the whole one.
            seconds = await asyncio.to_thread(wav_seconds, self.audio)
            try:
                info = await probe(src, self.job.source_name, limits)
            except MediaError as exc:
                if seconds is not None:  # the source is gone or unreadable: nothing to compare
                    log.warning("job %s: keeping audio.wav unchecked (%s)", self.job.id, exc)
                    return
                raise JobFailed(exc.code, str(exc)) from None
            try:
                track = choose_track(info, choice, self.job.source_name).index
            except (MediaError, OptionError) as exc:
                raise JobFailed(exc.code, str(exc)) from None
            held = await asyncio.to_thread(_read_marker, marker)
            if held in (None, track) and audio_is_complete(seconds, info, track):
                return
            log.warning(
                "job %s: audio.wav holds %s s of %.1f s; extracting again",
                self.job.id,
                "unreadable" if seconds is None else f"{seconds:.1f}",
                info.audio_seconds,
            )
        await self.progress(Phase.EXTRACT, 0, "extracting audio")

        async def on_progress(fraction: float) -> None:
            await self.progress(Phase.EXTRACT, fraction, "extracting audio")

        try:
            info = await extract_audio(
                src, self.audio, on_progress, name=self.job.source_name, limits=limits, track=choice
            )
        except (MediaError, OptionError) as exc:
            raise JobFailed(exc.code, str(exc)) from None
        track = choose_track(info, choice, self.job.source_name).index
        await asyncio.to_thread(marker.write_text, f"{track}\n")
        await self.progress(Phase.EXTRACT, 1, "audio extracted")

    async def write_peaks(self) -> None:
        """The editor's waveform, from the audio just extracted (it outlives audio.wav); a
        failure only costs the service decoding the input later, never the job."""
        try:
            await write_peaks(self.audio, self.dir / PEAKS_NAME)
        except Exception as exc:  # peaks are an extra: the job goes on
            log.warning("job %s: no waveform peaks (%s)", self.job.id, exc)

    async def split(self) -> int:
        if self.job.locked_options is not None:
            return self.job.total
        await self.progress(Phase.SPLIT, 0, "finding speech")
        async with self.ctx.pool.lease() as runner:
            data = await self._call(
                runner,
                p.Split(
                    id=new_id(),
                    audio_path=str(self.audio),
                    vad=self.options.vad_method,
                    vad_onset=self.options.vad_onset,
                    vad_offset=self.options.vad_offset,
                    chunk_size=self.options.chunk_size,
                ),
            )
        spans = [(float(s["start"]), float(s["end"])) for s in data["segments"]]
        speech = [(float(s["start"]), float(s["end"])) for s in data["speech"]]
        duration = await asyncio.to_thread(wav_duration, self.audio)
        count = await self.ctx.store.save_segments(
            self.job.id, spans, self.options.locked(), duration, speech, claim=self.job.claim
        )
        self._speech = speech
        message = f"{count} speech segments" if count else "no speech found"
        await self.progress(Phase.SPLIT, 1, message, processed=0, total=count)
        return count

    async def transcribe(self) -> None:
        store = self.ctx.store
        segments = await store.segments(self.job.id)
        total = len(segments)
        pending = [s for s in segments if s.text is None]
        done = total - len(pending)
        if not pending:
            return
        speech = await self.speech()
        ref = self._whisper_ref()
        await self.progress(Phase.TRANSCRIBE, done / total, f"transcribing {done}/{total}", done, total)
        in_flight = {s.index for s in pending}

        async def on_reply(msg: p.Reply) -> None:
            nonlocal done
            if not isinstance(msg, p.Fragment):
                return
            in_flight.discard(msg.index)
            if not await store.save_transcript(self.job.id, msg.index, msg.text, msg.language):
                return  # already stored by an earlier run: never twice
            done += 1
            self.language = self.language or msg.language
            self.ctx.publish(
                self.job.id,
                "fragment",
                {
                    "segment_index": msg.index,
                    "language": msg.language,
                    "segments": live_lines(msg.index, msg.start, msg.end, msg.text, speech),
                },
            )
            await self.progress(Phase.TRANSCRIBE, done / total, f"transcribing {done}/{total}", done, total)

        request = p.Transcribe(
            id=new_id(),
            audio_path=str(self.audio),
            model=ref,
            segments=[p.SegmentSpan(index=s.index, start=s.start, end=s.end) for s in pending],
            language=self.language,
            task=self.options.task,
            initial_prompt=self.options.initial_prompt,
            hotwords=self.options.hotwords,
            batch_size=self.ctx.settings.transcription.batch_size,
            beam_size=self.ctx.settings.transcription.beam_size,
        )
        async with self.ctx.pool.lease() as runner:
            try:
                result = await runner.call(request, on_reply)
            except RunnerLost as exc:
                await self._runner_lost(sorted(in_flight), str(exc))
                raise AssertionError("unreachable") from exc
            except RunnerError as exc:
                raise self._runner_failed("transcription", exc) from None
        self.language = self.language or result.get("language") or None

    async def _runner_lost(self, in_flight: list[int], reason: str) -> None:
        """Count the crash against the batch in flight; fail a poison segment, else requeue."""
        reason = self._public(reason)
        batch = in_flight[: self.ctx.settings.transcription.batch_size]
        crashes = await self.ctx.store.record_crash(self.job.id, batch)
        limit = self.ctx.settings.jobs.max_segment_crashes
        if crashes >= limit:
            where = f"segment {batch[0]}" if len(batch) == 1 else f"segments {batch[0]}-{batch[-1]}"
            raise JobFailed("runner_crash", f"{where} crashed the runner {crashes} times; last: {reason}")
        raise Requeue(f"runner lost ({reason}); resuming from the checkpoint")

    async def align(self) -> tuple[list[p.AlignedSegment], str]:
        stored = await self.ctx.store.result(self.job.id)
        job = await self.ctx.store.get_job(self.job.id)
        if stored is not None and job is not None and job.alignment:
            return stored, job.alignment
        segments = [s for s in await self.ctx.store.segments(self.job.id) if s.text]
        language = self.language or "en"
        if not segments:
            await self.ctx.store.save_result(self.job.id, [], "none", self.language, claim=self.job.claim)
            return [], "none"
        texts = [p.TextSegment(index=s.index, start=s.start, end=s.end, text=s.text or "") for s in segments]
        align_ref = await self._aligner(language) if self.options.align else None
        message = "aligning words (wav2vec2)" if align_ref else "word timings from Whisper"
        if self.options.align and align_ref is None:
            message = f"no alignment model for '{language}': using Whisper's word timings"
        await self.progress(Phase.ALIGN, 0, message)

        async def on_reply(msg: p.Reply) -> None:
            if isinstance(msg, p.Progress) and msg.total:
                await self.progress(Phase.ALIGN, msg.done / msg.total, message)

        request = p.Align(
            id=new_id(),
            audio_path=str(self.audio),
            language=language,
            segments=texts,
            align_model=align_ref,
            whisper_model=self._whisper_ref(),
        )
        async with self.ctx.pool.lease() as runner:
            try:
                data = await self._call(runner, request, on_reply)
            except JobFailed as exc:
                if align_ref is None:
                    raise
                log.warning("job %s: wav2vec2 alignment failed (%s); using Whisper", self.job.id, exc)
                request.align_model = None
                message = f"alignment model failed ({exc}); using Whisper's word timings"
                data = await self._call(runner, request, on_reply)
        alignment = str(data["alignment"])
        # Aligners smear words over the silence around them: move them into the speech.
        speech = await self.speech()
        aligned: list[p.AlignedSegment] = await asyncio.to_thread(snap_words, data["segments"], speech)
        await self.ctx.store.save_result(self.job.id, aligned, alignment, self.language, claim=self.job.claim)
        await self.progress(Phase.ALIGN, 1, f"aligned ({alignment})")
        self.ctx.publish(
            self.job.id,
            "signal",
            {
                "code": Signal.ALIGNMENT_READY,
                "message": f"word timings ready ({alignment})",
                "alignment": alignment,
            },
        )
        return aligned, alignment

    async def diarize(self, aligned: list[p.AlignedSegment], alignment: str) -> list[p.AlignedSegment]:
        """Speakers on the aligned words, from turns checkpointed once per set of speaker
        hints; without the model the job goes on without speakers and says why."""
        store = self.ctx.store
        if not self.options.diarize:
            if any("speaker" in w for s in aligned for w in s["words"]):  # diarized before: not now
                aligned = _without_speakers(aligned)
                await store.save_result(self.job.id, aligned, alignment, self.language, claim=self.job.claim)
            return aligned
        if not aligned:
            return aligned
        wanted = {k: getattr(self.options, k) for k in SPEAKER_OPTIONS}
        stored = await store.speakers(self.job.id)
        if stored is not None and stored.get("options") == wanted:
            turns: list[SpeakerTurn] = stored["turns"]
        else:
            found = await self._diarize_turns(wanted)
            if found is None:
                return aligned
            turns = found
        labelled = await asyncio.to_thread(assign_speakers, aligned, turns)
        await store.save_result(self.job.id, labelled, alignment, self.language, claim=self.job.claim)
        labels = list(dict.fromkeys(t["speaker"] for t in turns))
        await self.progress(Phase.DIARIZE, 1, f"{len(labels)} speakers")
        self.ctx.publish(
            self.job.id,
            "signal",
            {"code": Signal.SPEAKERS_READY, "message": f"{len(labels)} speakers", "speakers": labels},
        )
        return labelled

    async def _diarize_turns(self, wanted: dict[str, Any]) -> list[SpeakerTurn] | None:
        """The runner's turns, checkpointed; None (and the reason told) without the model."""
        ref, why = await self._diarizer()
        if ref is None:
            message = self._public(f"no speakers: {why}")
            log.warning("job %s: %s", self.job.id, message)
            await self.progress(Phase.DIARIZE, 1, message)
            self.ctx.publish(self.job.id, "signal", {"code": Signal.SPEAKERS_OFF, "message": message})
            return None
        message = "finding who speaks when"
        await self.progress(Phase.DIARIZE, 0, message)

        async def on_reply(msg: p.Reply) -> None:
            if isinstance(msg, p.Progress) and msg.total:
                await self.progress(Phase.DIARIZE, msg.done / msg.total, message)

        request = p.Diarize(id=new_id(), audio_path=str(self.audio), model=ref, **wanted)
        async with self.ctx.pool.lease() as runner:
            data = await self._call(runner, request, on_reply)
        turns: list[SpeakerTurn] = [
            {"start": float(t["start"]), "end": float(t["end"]), "speaker": str(t["speaker"])}
            for t in data["segments"]
        ]
        await self.ctx.store.save_speakers(
            self.job.id, {"turns": turns, "model": ref["key"], "options": wanted}
        )
        return turns

    async def write_outputs(self, aligned: list[p.AlignedSegment], alignment: str) -> None:
        await self.progress(Phase.SRT, 0, "building subtitles")
        meta = {k: v for k, v in self.metadata(alignment, aligned).items() if k != "segments"}
        try:  # seconds of CPU for hours of speech: off the event loop, in a child if long
            count = await write_job_outputs(
                self.dir,
                aligned,
                cue_rules(self.ctx.settings, self.options),
                meta,
                nice=self.ctx.settings.runners.nice,
                speech=await self.speech(),
                speaker_labels=self.options.speaker_labels,
            )
        except OutputError as exc:
            raise JobFailed("subtitles", str(exc)) from None
        await self.progress(Phase.SRT, 1, f"{count} cues written")

    def metadata(self, alignment: str, aligned: list[p.AlignedSegment]) -> dict[str, Any]:
        return {
            "job_id": self.job.id,
            "source": self.job.source_name,
            "model": self.options.model,
            "language": self.language,
            "task": self.options.task,
            "audio_track": self.options.audio_track if isinstance(self.options.audio_track, dict) else None,
            "alignment": alignment,
            "segments": aligned,
        }

    # --- helpers -------------------------------------------------------------------------

    async def _aligner(self, language: str) -> p.ModelRef | None:
        """The language's wav2vec2 model; a missing one is downloaded and waited for (bounded)."""
        models = self.ctx.models
        ref = models.align_ref(language)
        if ref is not None or models.catalog.get("align", language) is None:
            return ref
        ref = await self._fetch("align", language, Phase.ALIGN, f"the '{language}' alignment model")
        if ref is None:
            log.warning(
                "job %s: no '%s' aligner (download failed or took over %.0f s)",
                self.job.id,
                language,
                self.ctx.settings.jobs.align_wait_seconds,
            )
        return ref

    async def _fetch(self, kind: str, model_id: str, phase: Phase, what: str) -> p.ModelRef | None:
        """Download a model the job needs and wait for it (at most `jobs.align_wait_seconds`),
        the download's progress shown as the job's message."""
        wait = self.ctx.settings.jobs.align_wait_seconds

        async def on_progress(info: dict[str, Any]) -> None:
            await self.progress(phase, 0, f"waiting for {what}: {info['status']} {info['progress']:.0f}%")

        await self.progress(phase, 0, f"downloading {what}")
        return await self.ctx.models.ensure(kind, model_id, wait, on_progress)

    async def _diarizer(self) -> tuple[p.ModelRef | None, str]:
        """The diarization model, downloaded first if it can be (bounded wait, as the
        aligner); without it, why not, in words a user can act on."""
        models = self.ctx.models
        model_id = self.ctx.settings.models.default_diarize
        ref = models.diarize_ref(model_id)
        entry = models.catalog.get("diarize", model_id)
        if ref is not None or entry is None:
            return ref, f"no diarization model {model_id!r} in the catalog"
        if entry.gated and not self.ctx.settings.models.hf_token:
            return None, (
                f"the diarization model {model_id} is not downloaded and is gated: accept its licence "
                f"at https://hf.co/{entry.repo} and set models.hf_token (or HF_TOKEN)"
            )
        ref = await self._fetch("diarize", model_id, Phase.DIARIZE, f"the diarization model {model_id}")
        if ref is not None:
            return ref, ""
        error = models.state("diarize", model_id).error
        reason = error or f"not ready in {self.ctx.settings.jobs.align_wait_seconds:.0f} s"
        return None, f"the diarization model {model_id} could not be had ({reason})"

    def _whisper_ref(self) -> p.ModelRef:
        ref = self.ctx.models.whisper_ref(self.options.model)
        if ref is None:
            raise JobFailed(
                "model_missing",
                f"Whisper model {self.options.model} is not downloaded; download it in the model "
                f"manager or with `vsrt models download {self.options.model}`",
            )
        return ref

    async def _call(self, runner: RunnerSlot, request: p.Request[p.R], on_reply: Any = None) -> p.R:
        try:
            return await runner.call(request, on_reply)
        except RunnerLost as exc:
            raise Requeue(self._public(f"runner lost ({exc}); resuming from the checkpoint")) from None
        except RunnerError as exc:
            raise self._runner_failed(request.type, exc) from None

    def _runner_failed(self, what: str, exc: RunnerError) -> JobFailed:
        return JobFailed(exc.code, self._public(f"{what} failed: {exc}"))

    def _public(self, text: str) -> str:
        """Runner messages quote job files and tracebacks; clients see `jobs/...`, no server path."""
        return public_text(text, self.ctx.settings.data_dir)


def _without_speakers(segments: list[p.AlignedSegment]) -> list[p.AlignedSegment]:
    """Copies without the speakers an earlier diarized run put on the words."""
    return [
        {**s, "words": [p.Word(**{k: v for k, v in w.items() if k != "speaker"}) for w in s["words"]]}  # type: ignore[typeddict-item]
        for s in segments
    ]


def _read_marker(path: Path) -> int | None:
    """The track index an earlier extraction wrote; None when there is none (older jobs)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def live_lines(
    index: int, start: float, end: float, text: str, speech: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    """A chunk's unaligned text as sentence lines for the live view; ids `"{index}.{k}"` are
    unique in the job and the same in `fragment` events and the checkpoint's transcript."""
    return [
        {"id": f"{index}.{k}", "start": a, "end": b, "text": line}
        for k, (a, b, line) in enumerate(sentence_lines(text, start, end, speech))
    ]


def wav_duration(path: Path) -> float:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes() / wav.getframerate()


def remove_job_files(job_dir: Path) -> None:
    shutil.rmtree(job_dir, ignore_errors=True)
