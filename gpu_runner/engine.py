"""The heavy work: whisperx models, voice-activity split, batched transcription, alignment.

Runs only inside the runner subprocess, on its single worker thread. whisperx (and so torch)
is imported lazily so the runner answers its handshake before the multi-second import ends.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import wave
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vsrt_service.core.protocol import (
    AlignedSegment,
    AlignResult,
    DetectLanguageResult,
    DiarizeResult,
    LoadedModel,
    MemoryInfo,
    ModelRef,
    SegmentSpan,
    SpeakerSegment,
    SpeechSpan,
    SplitResult,
    TextSegment,
    Word,
)

from . import onsets
from . import vad as vads

log = logging.getLogger("gpu_runner.engine")

SAMPLE_RATE = 16000
HOP_LENGTH = 160
#: faster-whisper's defaults (WhisperModel.transcribe): punctuation joined to the word it
#: precedes or follows.
PREPEND_PUNCTUATION = "\"'\u201c\u00bf([{-"
APPEND_PUNCTUATION = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"
#: Silence (s) kept around the speech of each chunk sent to Whisper, where there is some.
CHUNK_PAD = 0.2


class Canceled(Exception):
    """The request was canceled; raised at the next segment boundary."""


class EngineError(Exception):
    """A failure with a code the service maps to a user-facing message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Loaded:
    ref: ModelRef
    model: Any
    metadata: Any = None


def load_wav(path: str) -> np.ndarray:
    """The job's 16 kHz mono PCM WAV (written by the service's ffmpeg step) as float32."""
    try:
        with wave.open(path, "rb") as wav:
            if wav.getframerate() != SAMPLE_RATE or wav.getnchannels() != 1:
                raise EngineError("audio", f"{path}: expected 16 kHz mono audio")
            if wav.getsampwidth() != 2:
                raise EngineError("audio", f"{path}: expected 16-bit PCM")
            raw = wav.readframes(wav.getnframes())
    except (OSError, wave.Error, EOFError) as exc:
        raise EngineError("audio", f"cannot read audio {path}: {exc}") from None
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _vad_factory(name: str) -> vads.Factory:
    try:
        return vads.factory(name)
    except vads.UnknownVad as exc:
        raise EngineError("bad_request", str(exc)) from None


class Engine:
    """Loaded models (an LRU cache) and the operations the protocol exposes."""

    def __init__(
        self, device: str, compute_type: str = "auto", cpu_threads: int = 0, cache_size: int = 3
    ) -> None:
        self.device, _, index = device.partition(":")
        self.device_index = int(index or 0)
        if compute_type == "auto":
            compute_type = "int8" if self.device == "cpu" else "float16"
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.cache_size = cache_size
        self._models: OrderedDict[str, Loaded] = OrderedDict()
        self._vad: dict[tuple[str, float, float], vads.Detector] = {}
        self.load_count = 0
        #: Guards the cache: `unload` comes from the main thread while the worker uses it.
        self._lock = threading.Lock()
        #: Unloads so far, per key and of everything: a load they overtook is not cached.
        self._drops: dict[str, int] = {}
        self._clears = 0
        self._free_later = False

    # --- imports and cache -------------------------------------------------------------

    def warm_up(self) -> None:
        """Import whisperx ahead of the first request (it takes seconds); on the CPU, hold
        torch (VAD, alignment) to the same thread count as CTranslate2, so runners sharing
        the cores do not oversubscribe them."""
        import whisperx
        import whisperx.alignment  # noqa: F401

        if self.device == "cpu" and self.cpu_threads:
            import torch

            torch.set_num_threads(self.cpu_threads)

    @property
    def torch_device(self) -> str:
        return "cpu" if self.device == "cpu" else f"cuda:{self.device_index}"

    def loaded(self) -> list[LoadedModel]:
        """Cache contents, least recently used first."""
        with self._lock:
            return [
                {"key": key, "kind": m.ref["kind"], "path": m.ref["path"]} for key, m in self._models.items()
            ]

    def memory(self) -> MemoryInfo:
        """Resident memory of this process, and GPU memory held by torch when on a GPU."""
        rss = None
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1]) * 1024
        except OSError:
            pass
        gpu = None
        if self.device == "cuda" and "torch" in sys.modules:
            gpu = int(sys.modules["torch"].cuda.memory_allocated(self.device_index))
        return {"rss_bytes": rss, "gpu_allocated_bytes": gpu}

    def _cached(self, key: str) -> Loaded | None:
        with self._lock:
            cached = self._models.get(key)
            if cached is not None:
                self._models.move_to_end(key)
            return cached

    def _generation(self, key: str) -> tuple[int, int]:
        with self._lock:
            return self._clears, self._drops.get(key, 0)

    def _remember(self, loaded: Loaded, generation: tuple[int, int]) -> None:
        """Cache a model loaded for the current request, unless it was unloaded meanwhile
        (its files may be gone: the request still uses it, no later one will)."""
        key = loaded.ref["key"]
        with self._lock:
            if (self._clears, self._drops.get(key, 0)) != generation:
                log.info("%s was unloaded while loading; not cached", key)
                return
            self._models[key] = loaded
            self._models.move_to_end(key)
            evicted = []
            while len(self._models) > self.cache_size:
                evicted.append(self._models.popitem(last=False)[0])
        for k in evicted:
            log.info("evicted %s from the model cache", k)
        if evicted:
            self._free_memory()

    def unload(self, key: str | None) -> list[str]:
        """Drop one model (or all) from the cache and free its memory; safe from any thread.
        A model the worker is using lives on until its request ends (see `release`)."""
        with self._lock:
            keys = list(self._models) if key is None else [k for k in self._models if k == key]
            for k in keys:
                del self._models[k]
            if key is None:
                self._clears += 1
            else:
                self._drops[key] = self._drops.get(key, 0) + 1
            self._free_later = self._free_later or bool(keys)
        if keys:
            self._free_memory()
        return keys

    def release(self) -> None:
        """After a request (worker thread): free what models unloaded meanwhile still held."""
        if self._free_later:
            self._free_later = False
            self._free_memory()

    def _free_memory(self) -> None:
        import gc

        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def vad(self, onset: float, offset: float, name: str = vads.DEFAULT) -> vads.Detector:
        """A VAD backend by name (gpu_runner/vad.py), loaded once per name and thresholds."""
        make = _vad_factory(name)
        key = (name, onset, offset)
        if key not in self._vad:
            self._vad[key] = make(self.torch_device, onset, offset)
        return self._vad[key]

    def _load(self, ref: ModelRef, what: str, make: Callable[[], Loaded]) -> tuple[Loaded, bool]:
        """The cached model for `ref`, or one `make` loads now (counted, logged, remembered);
        (it, loaded_now). A failure to load is an EngineError naming `what`."""
        cached = self._cached(ref["key"])
        if cached is not None:
            return cached, False
        generation = self._generation(ref["key"])
        started = time.monotonic()
        try:
            loaded = make()
        except EngineError:
            raise
        except Exception as exc:
            raise EngineError("model", f"cannot load {what} {ref['key']}: {exc}") from exc
        self.load_count += 1
        log.info("loaded %s in %.1f s", ref["key"], time.monotonic() - started)
        self._remember(loaded, generation)
        return loaded, True

    def whisper(self, ref: ModelRef, language: str | None) -> tuple[Any, bool]:
        """The whisperx pipeline for a model directory; (pipeline, loaded_now)."""

        def make() -> Loaded:
            import whisperx

            pipeline = whisperx.load_model(
                ref["path"],
                self.device,
                device_index=self.device_index,
                compute_type=self.compute_type,
                language=language,
                vad_model=vads.NO_VAD,
                local_files_only=True,
                threads=self.cpu_threads or 4,
            )
            return Loaded(ref, pipeline)

        loaded, now = self._load(ref, "Whisper model", make)
        return loaded.model, now

    def align_model(self, ref: ModelRef, language: str) -> tuple[Loaded, bool]:
        def make() -> Loaded:
            import whisperx

            model, metadata = whisperx.load_align_model(
                language_code=language,
                device=self.torch_device,
                model_name=ref["path"],
                model_cache_only=True,
            )
            return Loaded(ref, model, metadata)

        return self._load(ref, "alignment model", make)

    def diarizer(self, ref: ModelRef) -> tuple[Any, bool]:
        """whisperx's DiarizationPipeline over a pyannote pipeline directory; (it, loaded_now).

        Local files only: a directory without its config.yaml is refused here, since
        pyannote would take the path for a hub id and try to download it."""

        def make() -> Loaded:
            if not (Path(ref["path"]) / "config.yaml").is_file():
                missing = f"diarization model {ref['key']} has no config.yaml: download it again"
                raise EngineError("model", missing)
            from whisperx.diarize import DiarizationPipeline

            pipeline = DiarizationPipeline(model_name=ref["path"], token=None, device=self.torch_device)
            return Loaded(ref, pipeline)

        loaded, now = self._load(ref, "diarization model", make)
        return loaded.model, now

    def load(self, ref: ModelRef, language: str | None) -> bool:
        if ref["kind"] == "whisper":
            return self.whisper(ref, language)[1]
        if ref["kind"] == "diarize":
            return self.diarizer(ref)[1]
        return self.align_model(ref, language or "en")[1]

    # --- operations ------------------------------------------------------------------

    def split(
        self, audio_path: str, onset: float, offset: float, chunk: float, vad_name: str = vads.DEFAULT
    ) -> SplitResult:
        """Voice-activity regions, refined to 10 ms with the signal's energy, and the same
        merged into chunks of at most `chunk` seconds."""
        _vad_factory(vad_name)  # an unknown name is refused before any work
        audio = load_wav(audio_path)
        if audio.size == 0:
            return {"segments": [], "speech": []}
        detect = self.vad(onset, offset, vad_name)
        pad = min(CHUNK_PAD, chunk / 10)
        # Refinement may widen a region by a window each side: it still fits in a chunk.
        regions = onsets.refine(audio, detect(audio, max(chunk / 2, chunk - 2 * (pad + onsets.WINDOW))))
        chunks = vads.merge(regions, chunk, pad, audio.size / SAMPLE_RATE)
        return {
            "segments": [_span(c.start, c.end) for c in chunks],
            "speech": [_span(a, b) for a, b in regions],
        }

    def transcribe(
        self,
        audio_path: str,
        ref: ModelRef,
        segments: list[SegmentSpan],
        language: str | None,
        task: str,
        batch_size: int,
        beam_size: int,
        canceled: threading.Event,
        emit: Callable[[SegmentSpan, str, str], None],
        initial_prompt: str | None = None,
        hotwords: str | None = None,
    ) -> str:
        """Batched whisperx inference over the given segments; `emit` gets each as it is done.

        The cached pipeline is shared by every job: its options are replaced on each request,
        prompt and hotwords included (None when not asked), so no job's text leaks into the next.
        """
        from faster_whisper.tokenizer import Tokenizer

        pipeline, _ = self.whisper(ref, language)
        pipeline.options = replace(
            pipeline.options, beam_size=beam_size, best_of=beam_size, initial_prompt=None, hotwords=None
        )
        audio = load_wav(audio_path)
        if not segments:
            return language or ""
        if language is None:
            first = segments[0]
            language = pipeline.detect_language(_slice(audio, first["start"], first["end"]))
        tok = pipeline.tokenizer
        if tok is None or tok.task != _task_token(tok, task) or tok.language_code != language:
            pipeline.tokenizer = Tokenizer(
                pipeline.model.hf_tokenizer,
                pipeline.model.model.is_multilingual,
                task=task,
                language=language,
            )
        if initial_prompt or hotwords:
            prompt, hot = _fit_prompt(pipeline.tokenizer, initial_prompt, hotwords)
            pipeline.options = replace(pipeline.options, initial_prompt=prompt, hotwords=hot)

        def inputs() -> Iterator[dict[str, np.ndarray]]:
            for seg in segments:
                yield {"inputs": _slice(audio, seg["start"], seg["end"])}

        outputs = pipeline(inputs(), batch_size=batch_size, num_workers=0)
        for seg, out in zip(segments, outputs, strict=True):
            text = out["text"]
            if isinstance(text, list):
                text = text[0]
            emit(seg, str(text).strip(), language)
            if canceled.is_set():
                raise Canceled()
        return language

    def detect_language(
        self, audio_path: str, ref: ModelRef, seconds: float, top: int
    ) -> DetectLanguageResult:
        """Whisper's language guess over the first `seconds` of speech (Silero skips the
        silence and music before it), with the `top` candidates."""
        pipeline, _ = self.whisper(ref, None)
        model = pipeline.model  # faster_whisper.WhisperModel
        audio = load_wav(audio_path)
        if not model.model.is_multilingual:
            # An English-only model has no language tokens to compare: it can only hear English.
            return {
                "language": "en",
                "probability": 1.0,
                "candidates": [{"language": "en", "probability": 1.0}],
                "speech_seconds": round(min(seconds, audio.size / SAMPLE_RATE), 3),
            }
        from faster_whisper.vad import collect_chunks, get_speech_timestamps

        chunks = get_speech_timestamps(audio) if audio.size else []
        if chunks:
            pieces, _ = collect_chunks(audio, chunks)
            audio = np.concatenate(pieces)
        audio = audio[: int(seconds * SAMPLE_RATE)]
        if audio.size == 0:
            raise EngineError("no_speech", "no speech was heard to tell its language")
        _, _, ranked = model.detect_language(audio=audio, language_detection_segments=1)
        best = [{"language": code, "probability": round(float(prob), 4)} for code, prob in ranked[:top]]
        return {
            "language": best[0]["language"],
            "probability": best[0]["probability"],
            "candidates": best,  # type: ignore[typeddict-item]
            "speech_seconds": round(audio.size / SAMPLE_RATE, 3),
        }

    def align(
        self,
        audio_path: str,
        language: str,
        segments: list[TextSegment],
        align_ref: ModelRef | None,
        whisper_ref: ModelRef | None,
        progress: Callable[[float], None],
    ) -> AlignResult:
        """Word timings: wav2vec2 forced alignment, or Whisper's cross-attention timings."""
        audio = load_wav(audio_path)
        transcript = [s for s in segments if s["text"].strip()]
        if align_ref is not None:
            import whisperx

            loaded, _ = self.align_model(align_ref, language)
            result = whisperx.align(
                [{"start": s["start"], "end": s["end"], "text": s["text"]} for s in transcript],
                loaded.model,
                loaded.metadata,
                audio,
                self.torch_device,
                return_char_alignments=False,
                progress_callback=progress,
            )
            out = [_clean_segment(s) for s in result["segments"]]
            return {"alignment": "wav2vec2", "segments": out}
        if whisper_ref is None:
            raise EngineError("bad_request", "align needs an alignment or a Whisper model")
        return {
            "alignment": "whisper",
            "segments": self._whisper_word_times(audio, language, transcript, whisper_ref, progress),
        }

    def diarize(
        self,
        audio_path: str,
        ref: ModelRef,
        num_speakers: int | None,
        min_speakers: int | None,
        max_speakers: int | None,
        progress: Callable[[float], None],
    ) -> DiarizeResult:
        """Speaker turns over the whole file; `progress` gets percent done (and may raise
        Canceled: pyannote calls it between batches)."""
        for name, value in (
            ("num_speakers", num_speakers),
            ("min_speakers", min_speakers),
            ("max_speakers", max_speakers),
        ):
            if value is not None and value < 1:
                raise EngineError("bad_request", f"{name} must be at least 1")
        if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
            raise EngineError("bad_request", "min_speakers must not be above max_speakers")
        audio = load_wav(audio_path)
        if audio.size == 0:
            return {"segments": [], "speakers": []}
        pipeline, _ = self.diarizer(ref)
        frame = pipeline(
            audio,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            progress_callback=progress,
        )
        turns: list[SpeakerSegment] = []
        duration = audio.size / SAMPLE_RATE  # pyannote pads the last window: turns may run past it
        for row in frame.itertuples(index=False):
            start, end = round(float(row.start), 3), round(min(float(row.end), duration), 3)
            if end > start:
                turns.append({"start": start, "end": end, "speaker": str(row.speaker)})
        turns.sort(key=lambda t: (t["start"], t["end"]))
        return {"segments": turns, "speakers": list(dict.fromkeys(t["speaker"] for t in turns))}

    def _whisper_word_times(
        self,
        audio: np.ndarray,
        language: str,
        segments: list[TextSegment],
        ref: ModelRef,
        progress: Callable[[float], None],
    ) -> list[AlignedSegment]:
        """Align the stored texts with Whisper's cross-attention (faster-whisper's DTW)."""
        from faster_whisper.tokenizer import Tokenizer
        from faster_whisper.transcribe import merge_punctuations
        from whisperx.audio import N_SAMPLES, log_mel_spectrogram

        pipeline, _ = self.whisper(ref, language)
        model = pipeline.model
        tokenizer = Tokenizer(
            model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
        )
        n_mels = model.feat_kwargs.get("feature_size") or 80
        out: list[AlignedSegment] = []
        for i, seg in enumerate(segments):
            clip = _slice(audio, seg["start"], seg["end"])[:N_SAMPLES]
            features = log_mel_spectrogram(clip, n_mels=n_mels, padding=N_SAMPLES - clip.shape[0])
            encoder_output = model.encode(features.numpy() if hasattr(features, "numpy") else features)
            tokens = tokenizer.encode(" " + seg["text"].strip())
            found = model.find_alignment(tokenizer, [tokens], encoder_output, clip.shape[0] // HOP_LENGTH)
            if found:
                # As faster-whisper's own word timestamps do: "?" or "." is its own token here,
                # timed on the silence after the word; it belongs to the word before.
                merge_punctuations(found[0], PREPEND_PUNCTUATION, APPEND_PUNCTUATION)
            words: list[Word] = [
                Word(
                    word=w["word"].strip(),
                    start=round(seg["start"] + float(w["start"]), 3),
                    end=round(seg["start"] + float(w["end"]), 3),
                    score=round(float(w["probability"]), 3),
                )
                for w in (found[0] if found else [])
                if w["word"].strip()
            ]
            out.append(
                AlignedSegment(start=seg["start"], end=seg["end"], text=seg["text"].strip(), words=words)
            )
            progress(100.0 * (i + 1) / len(segments))
        return out


def _span(start: float, end: float) -> SpeechSpan:
    return {"start": round(float(start), 3), "end": round(float(end), 3)}


def _slice(audio: np.ndarray, start: float, end: float) -> np.ndarray:
    return audio[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)]


#: Whisper's decoder holds 448 tokens; the prompt (hotwords and initial prompt together) may
#: take half, as OpenAI's and faster-whisper's own limits do, leaving the rest for the text.
PROMPT_TOKENS = 223


def _fit_prompt(tokenizer: Any, prompt: str | None, hotwords: str | None) -> tuple[str | None, str | None]:
    """Hotwords first, then the end of the prompt (what Whisper reads last matters most),
    within PROMPT_TOKENS: faster-whisper cuts each alone, not the two together."""
    hot_tokens = tokenizer.encode(" " + hotwords.strip()) if hotwords else []
    if len(hot_tokens) > PROMPT_TOKENS // 2 and prompt:
        hot_tokens = hot_tokens[: PROMPT_TOKENS // 2]
        hotwords = tokenizer.decode(hot_tokens).strip()
    room = PROMPT_TOKENS - len(hot_tokens)
    if prompt:
        tokens = tokenizer.encode(" " + prompt.strip())
        if len(tokens) > room:
            prompt = tokenizer.decode(tokens[-room:]).strip() if room > 0 else None
    return prompt or None, hotwords or None


def _task_token(tokenizer: Any, task: str) -> Any:
    """faster-whisper keeps the task as a token id; compare like with like."""
    return tokenizer.tokenizer.token_to_id(f"<|{task}|>") if isinstance(tokenizer.task, int) else task


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if f != f else round(f, 3)  # NaN -> None


def _clean_segment(seg: dict[str, Any]) -> AlignedSegment:
    """whisperx output as plain JSON types; words it could not place lose their times."""
    words: list[Word] = []
    for w in seg.get("words", []):
        word: dict[str, Any] = {"word": str(w.get("word", "")).strip(), "score": _num(w.get("score"))}
        start, end = _num(w.get("start")), _num(w.get("end"))
        if start is not None and end is not None:
            word["start"], word["end"] = start, end
        if word["word"]:
            words.append(word)  # type: ignore[arg-type]
    return AlignedSegment(
        start=_num(seg.get("start")) or 0.0,
        end=_num(seg.get("end")) or 0.0,
        text=str(seg.get("text", "")).strip(),
        words=words,
    )
