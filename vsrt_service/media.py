"""Audio extraction: ffmpeg-python builds the command lines, asyncio subprocesses run them.

ffmpeg-python's own `run()`/`probe()` block, so only its command builder is used here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import ffmpeg

SAMPLE_RATE = 16000


class MediaError(Exception):
    """Input the pipeline cannot use; `code` is stable, the message is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MediaInfo:
    duration: float
    has_audio: bool
    format_name: str


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(
            "ffmpeg_missing",
            f"{name} was not found on PATH; install FFmpeg (e.g. `apt-get install ffmpeg`)",
        )
    return path


async def _run(args: list[str]) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out, err


def _last_line(stderr: bytes, path: Path) -> str:
    """ffmpeg's last complaint, without the server path it quotes."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    line = lines[-1] if lines else "no details"
    return line.replace(f"{path}: ", "").replace(str(path), "the file")


async def probe(path: Path, name: str | None = None) -> MediaInfo:
    """Streams and duration, or a MediaError saying why the file is unusable.

    Messages name the file as the user knows it (`name`), never by its server path.
    """
    name = name or path.name
    if not await asyncio.to_thread(path.is_file):
        raise MediaError("not_found", f"{name}: no such file")
    args = [
        _tool("ffprobe"), "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path),
    ]
    code, out, err = await _run(args)
    if code != 0:
        raise MediaError(
            "unsupported_media",
            f"{name} is not a readable audio or video file ({_last_line(err, path)})",
        )
    try:
        info = json.loads(out)
    except ValueError:
        raise MediaError("unsupported_media", f"{name}: ffprobe gave no usable answer") from None
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    has_audio = any(s.get("codec_type") == "audio" for s in streams)
    if not streams or fmt.get("format_name") in (None, "tty"):
        raise MediaError("unsupported_media", f"{name} is not an audio or video file")
    try:
        duration = float(fmt.get("duration") or 0.0)
    except ValueError:
        duration = 0.0
    return MediaInfo(duration=duration, has_audio=has_audio, format_name=str(fmt.get("format_name")))


async def extract_audio(
    src: Path,
    dst: Path,
    on_progress: Callable[[float], Awaitable[None]] | None = None,
    name: str | None = None,
) -> MediaInfo:
    """16 kHz mono 16-bit WAV of the first audio stream, written atomically to `dst`."""
    name = name or src.name
    info = await probe(src, name)
    if not info.has_audio:
        raise MediaError("no_audio", f"{name} has no audio stream")
    tmp = dst.with_name(dst.name + ".part")
    stream = (
        ffmpeg.input(str(src))
        .output(str(tmp), format="wav", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, vn=None, sn=None)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-progress", "pipe:1")
        .overwrite_output()
    )
    args = stream.compile(cmd=_tool("ffmpeg"))
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    err_task = asyncio.ensure_future(proc.stderr.read())
    try:
        async for raw in proc.stdout:
            key, _, value = raw.decode(errors="replace").strip().partition("=")
            if key == "out_time_us" and on_progress and info.duration > 0 and value.isdigit():
                await on_progress(min(1.0, int(value) / 1e6 / info.duration))
        err = await err_task
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        err_task.cancel()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    if code != 0:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise MediaError("decode_failed", f"ffmpeg could not decode {name}: {_last_line(err, src)}")
    os.replace(tmp, dst)
    return info
