"""Voice-activity backends by name: what a `split` request's `vad` field may say.

Each backend is a factory (torch device, onset, offset) -> a whisperx-style VAD model: called
with `{"waveform", "sample_rate"}` it gives speech regions, and its `merge_chunks` joins them
into segments of at most a chunk's length. Adding a backend is one `@backend(...)` function.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

#: The backend a request gets when it names none (the service's default too).
DEFAULT = "pyannote"

Factory = Callable[[str, float, float], Any]
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
def _pyannote(device: str, onset: float, offset: float) -> Any:
    """whisperx's bundled pyannote segmentation model (shipped in the wheel, no download)."""
    import torch
    from whisperx.vads import Pyannote

    return Pyannote(torch.device(device), token=None, vad_onset=onset, vad_offset=offset)
