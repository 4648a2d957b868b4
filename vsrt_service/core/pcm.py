"""Raw PCM in a WAV file: clients of whisper-asr-webservice (Bazarr) send headerless 16 kHz
mono s16le audio (`encode=false`); with a header it is media ffmpeg probes like any upload.

Standard library only. The header is a function of the sizes alone, so the same PCM always
makes the same WAV bytes (identical requests hash alike and share one job).
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

from vsrt_service.core.errors import InvalidInput, TooLarge
from vsrt_service.core.files import close_synced

#: What whisper-asr-webservice's `encode=false` means: 16 kHz, one channel, 16-bit little-endian.
RATE = 16000
CHANNELS = 1
SAMPLE_BYTES = 2
HEADER_BYTES = 44
#: A RIFF size field is 32 bits: about 37 hours of 16 kHz mono s16le.
MAX_DATA_BYTES = 0xFFFFFFFF - (HEADER_BYTES - 8)


def wav_header(
    data_bytes: int, rate: int = RATE, channels: int = CHANNELS, sample_bytes: int = SAMPLE_BYTES
) -> bytes:
    """The 44-byte canonical PCM WAV header for `data_bytes` of interleaved samples."""
    block = channels * sample_bytes
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        HEADER_BYTES - 8 + data_bytes,
        b"WAVE",
        b"fmt ",
        16,  # the fmt chunk's size for plain PCM
        1,  # PCM
        channels,
        rate,
        rate * block,
        block,
        sample_bytes * 8,
        b"data",
        data_bytes,
    )


def pcm_to_wav(src: Path, dst: Path, *, field: str = "audio_file") -> int:
    """Write `src` (raw 16 kHz mono s16le) as a WAV file `dst`, in chunks; the data size.

    Refuses, naming `field`, what cannot be such PCM: nothing at all, or an odd byte count
    (a 16-bit sample split in two). Blocking: run it in a thread.
    """
    size = src.stat().st_size
    if size == 0:
        raise InvalidInput("the audio is empty (no PCM samples)", code="empty_file", field=field)
    if size % (CHANNELS * SAMPLE_BYTES):
        raise InvalidInput(
            f"raw PCM (encode=false) must be whole 16-bit samples; {size} bytes is an odd count",
            code="bad_pcm",
            field=field,
        )
    if size > MAX_DATA_BYTES:
        raise TooLarge("raw PCM over 4 GiB does not fit a WAV file", code="too_large", field=field)
    with src.open("rb") as raw:
        out = dst.open("wb")
        try:
            out.write(wav_header(size))
            shutil.copyfileobj(raw, out, 1 << 20)
        finally:
            close_synced(out)
    return size
