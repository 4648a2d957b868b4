"""Voice-activity backends by name: what a `split` request's `vad` field may say.

Each backend is a factory (torch device, onset, offset) -> a `Detector`: called with the 16 kHz
float32 audio and the longest region allowed, it gives the speech regions (seconds, in order).
`merge` then packs regions into the chunks sent to Whisper, the same for every backend.
Adding a backend is one `@backend(...)` function.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

#: The backend a request gets when it names none (the protocol's default too).
DEFAULT = "pyannote"
SAMPLE_RATE = 16000

Region = tuple[float, float]


class Detector(Protocol):
    def __call__(self, audio: np.ndarray, max_region: float) -> list[Region]: ...


Factory = Callable[[str, float, float], Detector]
BACKENDS: dict[str, Factory] = {}


class UnknownVad(LookupError):
    """A request named a backend this runner does not have."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown VAD backend {name!r}; this runner has: {', '.join(sorted(BACKENDS))}")


def backend(name: str) -> Callable[[Factory], Factory]:
    def register(factory: Factory) -> Factory:
        BACKENDS[name] = factory
        return factory

    return register


def factory(name: str) -> Factory:
    """The factory of a backend name, or UnknownVad (before anything is imported or loaded)."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UnknownVad(name) from None


@backend("pyannote")
def _pyannote(device: str, onset: float, offset: float) -> Detector:
    """whisperx's bundled pyannote segmentation model (shipped in the wheel, no download)."""
    import torch
    from whisperx.vads import Pyannote
    from whisperx.vads.pyannote import Binarize

    model = Pyannote(torch.device(device), token=None, vad_onset=onset, vad_offset=offset)

    def detect(audio: np.ndarray, max_region: float) -> list[Region]:
        scores = model({"waveform": torch.from_numpy(audio).unsqueeze(0), "sample_rate": SAMPLE_RATE})
        active = Binarize(max_duration=max_region, onset=onset, offset=offset)(scores)
        return [(float(s.start), float(s.end)) for s in active.get_timeline()]

    return detect


#: Silero's speech probabilities come per 32 ms window; a pause shorter than this does not
#: end a region (word gaps), and its regions get this little padding (the energy refinement
#: in gpu_runner/onsets.py then finds the true boundary).
SILERO_MIN_SILENCE_MS = 200
SILERO_PAD_MS = 30


@backend("silero")
def _silero(device: str, onset: float, offset: float) -> Detector:
    """Silero VAD v6 as ONNX from faster-whisper's wheel (onnxruntime on the CPU, no download;
    fast enough that a GPU would not help). onset/offset are its speech/silence thresholds."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps, get_vad_model

    get_vad_model()  # load now: a bad install fails at load time, not mid-split

    def detect(audio: np.ndarray, max_region: float) -> list[Region]:
        options = VadOptions(
            threshold=onset,
            neg_threshold=min(offset, onset),
            min_silence_duration_ms=SILERO_MIN_SILENCE_MS,
            speech_pad_ms=SILERO_PAD_MS,
            max_speech_duration_s=max_region,
        )
        found = get_speech_timestamps(audio, options, sampling_rate=SAMPLE_RATE)
        return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in found]

    return detect


@dataclass(frozen=True)
class Chunk:
    """What Whisper transcribes in one go: [start, end] and the speech regions inside it."""

    start: float
    end: float
    regions: list[Region]


def merge(regions: list[Region], chunk_size: float, pad: float, duration: float) -> list[Chunk]:
    """Pack consecutive regions into chunks of at most `chunk_size` s (whisperx's merge, the
    "cut & merge" of its paper), each widened by up to `pad` s of the silence around it
    (Whisper transcribes a little lead-in better), never into a neighbour or past the audio."""
    groups: list[list[Region]] = []
    for region in regions:
        if groups and region[1] - groups[-1][0][0] + 2 * pad <= chunk_size:
            groups[-1].append(region)
        else:
            groups.append([region])
    chunks: list[Chunk] = []
    for i, group in enumerate(groups):
        first, last = group[0][0], group[-1][1]
        start = max(chunks[-1].end if chunks else 0.0, first - pad, 0.0)
        # Halfway into the gap to the next chunk at most, so that one gets its share of it.
        end = min(last + pad, (last + groups[i + 1][0][0]) / 2 if i + 1 < len(groups) else duration)
        end = max(end, last)
        start = max(start, min(first, end - chunk_size))
        chunks.append(Chunk(start, end, group))
    return chunks


class _NoVad:
    """Stands in for whisperx's own VAD in its pipeline: vsrt splits with the backends above
    and never calls the pipeline's `transcribe`, so loading whisperx's VAD there is waste."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("vsrt splits the audio itself (gpu_runner/vad.py)")


NO_VAD = _NoVad()
