"""Waveform peaks for the editor, in audiowaveform's binary format version 1.

https://github.com/bbc/audiowaveform/blob/master/doc/DataFormat.md: a 20-byte little-endian
header (int32 version 1, uint32 flags 1 = 8-bit, int32 sample rate, int32 samples per pixel,
uint32 length), then `length` pairs of int8 (min, max). 320 samples of 16 kHz audio per pair
is 50 pairs a second: two hours are 720 KB, small enough to fetch whole and zoom in the browser.

numpy is imported inside the functions (min/max over 115 M samples of a 2-hour file: pure
Python takes seconds), so importing the service stays light; the work runs in a thread.
"""

from __future__ import annotations

import asyncio
import struct
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vsrt_service.core.config import MediaSettings
from vsrt_service.core.files import write_atomic
from vsrt_service.jobs.media import SAMPLE_RATE, decode_pcm

if TYPE_CHECKING:
    import numpy as np

PEAKS_NAME = "peaks.dat"
SAMPLES_PER_PIXEL = 320
HEADER = struct.Struct("<iIiiI")
#: Samples read from a WAV at a time (a minute: 1.9 MB), so a 2-hour file is never whole in memory.
BLOCK_SAMPLES = SAMPLE_RATE * 60


class Peaks:
    """Min/max pairs of s16le samples fed in pieces of any length (blocking: run in a thread)."""

    def __init__(self) -> None:
        self._pairs: list[np.ndarray[Any, Any]] = []
        self._rest = b""
        self._samples = 0

    def feed(self, data: bytes) -> None:
        import numpy as np

        data = self._rest + data
        whole = len(data) // (2 * SAMPLES_PER_PIXEL) * (2 * SAMPLES_PER_PIXEL)
        self._rest = data[whole:]
        if whole:
            samples = np.frombuffer(data, dtype="<i2", count=whole // 2)
            self._add(samples.reshape(-1, SAMPLES_PER_PIXEL))

    def _add(self, blocks: np.ndarray[Any, Any]) -> None:
        import numpy as np

        self._samples += blocks.size
        pairs = np.empty((blocks.shape[0], 2), dtype=np.int8)
        # 16 to 8 bits as audiowaveform does: the high byte (an arithmetic shift keeps the sign).
        pairs[:, 0] = blocks.min(axis=1) >> 8
        pairs[:, 1] = blocks.max(axis=1) >> 8
        self._pairs.append(pairs)

    def finish(self) -> bytes:
        """The whole file: a last partial pixel counts (length == ceil(samples / 320))."""
        import numpy as np

        if len(self._rest) >= 2:
            tail = np.frombuffer(self._rest, dtype="<i2", count=len(self._rest) // 2)
            self._add(tail.reshape(1, -1))
        self._rest = b""
        body = b"".join(p.tobytes() for p in self._pairs)
        length = len(body) // 2
        return HEADER.pack(1, 1, SAMPLE_RATE, SAMPLES_PER_PIXEL, length) + body


def wav_peaks(path: Path) -> bytes:
    """Peaks of the extracted audio (16 kHz mono s16le WAV), read a minute at a time (blocking)."""
    peaks = Peaks()
    with wave.open(str(path), "rb") as wav:
        if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
            raise ValueError("not 16 kHz mono 16-bit audio")
        while block := wav.readframes(BLOCK_SAMPLES):
            peaks.feed(block)
    return peaks.finish()


async def write_peaks(audio: Path, dst: Path) -> int:
    """Peaks of the extracted audio into `dst` (atomic); returns its size in bytes."""
    data = await asyncio.to_thread(wav_peaks, audio)
    await asyncio.to_thread(write_atomic, dst, data)
    return len(data)


async def decoded_peaks(src: Path, name: str, limits: MediaSettings, track: int | str | None) -> bytes:
    """Peaks of a media file's audio track, decoded by the locked-down ffmpeg on a pipe (for a
    job whose extracted audio is not there); the numpy work runs in a thread, a block at a time."""
    peaks = Peaks()
    pending: list[bytes] = []
    size = 0

    async def on_chunk(chunk: bytes) -> None:
        nonlocal size
        pending.append(chunk)
        size += len(chunk)
        if size >= BLOCK_SAMPLES * 2:
            block = b"".join(pending)
            pending.clear()
            size = 0
            await asyncio.to_thread(peaks.feed, block)

    await decode_pcm(src, name, limits, track, on_chunk)
    await asyncio.to_thread(peaks.feed, b"".join(pending))
    return await asyncio.to_thread(peaks.finish)
