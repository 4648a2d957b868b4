"""Waveform peaks and the audio proxy for a 2-hour job: the editor's promise (issue 11) is
peaks for 2 h in < 3 s and < 1 MB.

Why: the editor fetches `GET /api/jobs/{id}/peaks` when it opens a job, so computing them
must not take long even when the pipeline did not write them (a job from before they were
written, or one whose audio.wav was dropped with no peaks file): then they come from the
input, decoded by ffmpeg on a pipe.

What it measures, with the service's own functions (`vsrt_service.jobs.peaks`, `.media`):
a `--minutes` (default 120) 16 kHz mono WAV of speech-like noise (pink noise gated on and off
like sentences, made by ffmpeg), and the same encoded as AAC in an m4a; then

1. peaks from the WAV (`write_peaks`: what the pipeline does after extraction),
2. peaks from the m4a (`decoded_peaks`: ffmpeg decodes to s16le on a pipe, numpy per block),
3. the audio proxy of the m4a (`make_audio_proxy`: AAC-LC mono 64 kb/s, faststart MP4),

each timed (wall seconds) with the size of what it made. Everything lives in a temporary
directory, removed at the end. It prints figures and asserts nothing.

    .venv/bin/python -m bench.peaks [--minutes 120]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from vsrt_service.core.config import MediaSettings
from vsrt_service.jobs.media import make_audio_proxy
from vsrt_service.jobs.peaks import HEADER, decoded_peaks, write_peaks


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def make_media(folder: Path, minutes: float) -> tuple[Path, Path]:
    """A WAV as the pipeline extracts it, and an AAC m4a of the same sound."""
    seconds = minutes * 60
    wav, m4a = folder / "audio.wav", folder / "input.m4a"
    # Pink noise at speech level, on for 2.5 s and nearly off for 1.5 s: sentences and pauses.
    _ffmpeg(
        "-f", "lavfi", "-i", f"anoisesrc=c=pink:r=16000:a=0.3:d={seconds}",
        "-af", "volume='if(lt(mod(t,4),2.5),1,0.03)':eval=frame",
        "-ac", "1", "-c:a", "pcm_s16le", str(wav),
    )  # fmt: skip
    _ffmpeg("-i", str(wav), "-c:a", "aac", "-b:a", "64k", str(m4a))
    return wav, m4a


async def measure(folder: Path, minutes: float) -> dict[str, float | int]:
    started = time.perf_counter()
    wav, m4a = await asyncio.to_thread(make_media, folder, minutes)
    figures: dict[str, float | int] = {
        "minutes": minutes,
        "make_media_s": round(time.perf_counter() - started, 2),
        "wav_bytes": wav.stat().st_size,
        "m4a_bytes": m4a.stat().st_size,
    }
    limits = MediaSettings(extract_timeout=3600)

    started = time.perf_counter()
    size = await write_peaks(wav, folder / "peaks.dat")
    figures["peaks_from_wav_s"] = round(time.perf_counter() - started, 3)
    figures["peaks_bytes"] = size
    figures["peaks_pairs"] = HEADER.unpack((folder / "peaks.dat").read_bytes()[: HEADER.size])[4]

    started = time.perf_counter()
    data = await decoded_peaks(m4a, m4a.name, limits, None)
    figures["peaks_from_m4a_s"] = round(time.perf_counter() - started, 3)
    figures["peaks_from_m4a_bytes"] = len(data)

    started = time.perf_counter()
    proxy = folder / "proxy.m4a"
    await make_audio_proxy(m4a, proxy, m4a.name, limits, None)
    figures["proxy_s"] = round(time.perf_counter() - started, 2)
    figures["proxy_bytes"] = proxy.stat().st_size
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="vsrt-bench-peaks-"))
    try:
        figures = asyncio.run(measure(folder, args.minutes))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for key, value in figures.items():
        print(f"{key:>22}: {value}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
