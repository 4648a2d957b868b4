"""Audio extraction: ffmpeg-python builds the command lines, asyncio subprocesses run them.

ffmpeg-python's own `run()`/`probe()` block, so only its command builder is used here.

Media files are hostile until probed: an HLS playlist, a concat list or an image sequence
pattern makes ffmpeg read *other* files or URLs (a private file's speech would come back as
subtitles; a live playlist never ends). So ffprobe and ffmpeg both run with ffmpeg's own
demuxer allowlist (`-format_whitelist`, ALLOWED_FORMATS) and `-protocol_whitelist file`, the
input is named `file:<absolute path>` so nothing in a name reads as a protocol, extraction is
told the probed demuxer with `-f`, and every run has a timeout and is killed when it ends
early (timeout or cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ffmpeg

from vsrt_service.core.config import MediaSettings
from vsrt_service.core.errors import InvalidInput
from vsrt_service.core.files import PART_SUFFIX, replace_durably
from vsrt_service.core.options import OptionError

SAMPLE_RATE = 16000

#: ffmpeg demuxers (their short names, as `-f` takes them) of containers that hold their
#: media inside the file: nothing in them names another file or URL that ffmpeg would open.
#: `mov` is MP4, MOV, M4A and 3GP (its external data references stay off, ffmpeg's default);
#: `matroska` is MKV and WebM; `ogg` holds Vorbis, Opus and FLAC; `aac` is ADTS; `asf` is
#: WMA and WMV; `mpeg` is MPEG-PS (VOB, MPG). Left out on purpose: playlists and lists (hls,
#: dash, concat), image sequences (image2, *_pipe), and anything else that opens more inputs.
ALLOWED_FORMATS: tuple[str, ...] = (
    "mov",
    "matroska",
    "mp3",
    "wav",
    "w64",
    "flac",
    "ogg",
    "aac",
    "mpegts",
    "avi",
    "asf",
    "amr",
    "aiff",
    "caf",
    "mpeg",
    "flv",
    "ac3",
    "eac3",
    "au",
    "wv",
)
_FORMAT_WHITELIST = ",".join(ALLOWED_FORMATS)
_ACCEPTED = "MP4, MOV, M4A, MKV, WebM, MP3, WAV, FLAC, Ogg, Opus, AAC, MPEG-TS, AVI, WMA"

#: What ffmpeg logs when the allowlist stops a demuxer: "[hls @ 0x55d1...] Format not on ...".
_REFUSED_FORMAT = re.compile(r"^\[([^\s@\]]+) @ 0x[0-9a-f]+\] Format not on whitelist", re.MULTILINE)
#: Keep at most this much of a tool's stderr (a damaged file can make ffmpeg complain a lot).
_STDERR_TAIL = 64 * 1024


class MediaError(InvalidInput):
    """Input the pipeline cannot use; `code` is stable, the message is for a person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


@dataclass(frozen=True)
class AudioTrack:
    """One audio stream of a file, as a user picks it (`audio_track`)."""

    index: int  # among the file's audio streams: ffmpeg's `0:a:<index>`
    language: str | None  # the stream's language tag as written ("eng", "de"); None if untagged
    title: str | None
    codec: str | None
    channels: int | None
    default: bool  # the file marks it as the one to play
    duration: float = 0.0  # seconds (0.0 when unknown)

    def public(self) -> dict[str, Any]:
        """What a job shows of the track it used."""
        return {"index": self.index, "language": self.language, "title": self.title}

    def describe(self) -> str:
        """`1 (deu, "Kommentar", aac, 2 ch)`, for error messages that list a file's tracks."""
        parts = [self.language or "no language", *([f'"{self.title}"'] if self.title else [])]
        parts += [p for p in (self.codec, f"{self.channels} ch" if self.channels else None) if p]
        return f"{self.index} ({', '.join(parts)})"


@dataclass(frozen=True)
class MediaInfo:
    duration: float  # the container's, seconds (0.0 when unknown)
    has_audio: bool
    format_name: str  # as ffprobe names the demuxer, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    audio_duration: float = 0.0  # the first audio stream's, seconds (0.0 when unknown)
    tracks: tuple[AudioTrack, ...] = ()  # the audio streams, in order

    @property
    def demuxer(self) -> str:
        """The name `-f` takes (`mov` for "mov,mp4,m4a,3gp,3g2,mj2")."""
        return self.format_name.split(",")[0]

    @property
    def audio_seconds(self) -> float:
        """How long the extracted audio should last: the audio stream's, else the container's."""
        return self.audio_duration or self.duration

    def track_seconds(self, index: int | None) -> float:
        """How long one track's extracted audio should last (`audio_seconds` without one)."""
        track = next((t for t in self.tracks if t.index == index), None)
        return (track.duration if track else 0.0) or self.audio_seconds


#: ISO 639-1 codes and their ISO 639-2 forms (bibliographic and terminological), for the
#: languages files are most often tagged with: "de" asks for a track tagged "deu" or "ger".
LANGUAGE_CODES: dict[str, tuple[str, ...]] = {
    "ar": ("ara",), "bg": ("bul",), "bn": ("ben",), "ca": ("cat",), "cs": ("ces", "cze"),
    "cy": ("cym", "wel"), "da": ("dan",), "de": ("deu", "ger"), "el": ("ell", "gre"),
    "en": ("eng",), "es": ("spa",), "et": ("est",), "eu": ("eus", "baq"), "fa": ("fas", "per"),
    "fi": ("fin",), "fr": ("fra", "fre"), "ga": ("gle",), "gl": ("glg",), "he": ("heb",),
    "hi": ("hin",), "hr": ("hrv",), "hu": ("hun",), "hy": ("hye", "arm"), "id": ("ind",),
    "is": ("isl", "ice"), "it": ("ita",), "ja": ("jpn",), "ka": ("kat", "geo"), "ko": ("kor",),
    "lt": ("lit",), "lv": ("lav",), "mk": ("mkd", "mac"), "ms": ("msa", "may"), "nl": ("nld", "dut"),
    "no": ("nor", "nob", "nno"), "pl": ("pol",), "pt": ("por",), "ro": ("ron", "rum"),
    "ru": ("rus",), "sk": ("slk", "slo"), "sl": ("slv",), "sq": ("sqi", "alb"), "sr": ("srp",),
    "sv": ("swe",), "sw": ("swa",), "ta": ("tam",), "th": ("tha",), "tl": ("tgl",), "tr": ("tur",),
    "uk": ("ukr",), "ur": ("urd",), "vi": ("vie",), "zh": ("zho", "chi"),
}  # fmt: skip
_LANGUAGE_OF = {code: short for short, codes in LANGUAGE_CODES.items() for code in (short, *codes)}


def same_language(tag: str | None, code: str) -> bool:
    """Whether a stream's language tag ("eng", "en-US", "ger") is the language `code` asks for."""
    if not tag:
        return False

    def key(value: str) -> str:
        base = re.split(r"[-_]", value.strip().lower(), maxsplit=1)[0]
        return _LANGUAGE_OF.get(base, base)

    return key(tag) == key(code)


def choose_track(info: MediaInfo, choice: int | str | None, name: str) -> AudioTrack:
    """The track `audio_track` asks for: an index among the audio tracks, a language (the
    default track among several in it), or None for the file's default track (else the first).
    A choice the file cannot meet is an OptionError that lists what the file has."""
    tracks = list(info.tracks)
    if not tracks:
        raise MediaError("no_audio", f"{name} has no audio stream")
    if choice is None:
        return next((t for t in tracks if t.default), tracks[0])
    if isinstance(choice, int):
        if choice < len(tracks):
            return tracks[choice]
        problem = f"{name} has {len(tracks)} audio track{'s' if len(tracks) != 1 else ''}, no track {choice}"
    else:
        matching = [t for t in tracks if same_language(t.language, choice)]
        if matching:
            return next((t for t in matching if t.default), matching[0])
        problem = f"{name} has no audio track in {choice!r}"
    listed = "; ".join(t.describe() for t in tracks)
    raise OptionError("audio_track", f"{problem}; its audio tracks are {listed}")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise MediaError(
            "ffmpeg_missing",
            f"{name} was not found on PATH; install FFmpeg (e.g. `apt-get install ffmpeg`)",
        )
    return path


def _input(path: Path) -> str:
    """The input as a `file:` URL: a name with `:`, `|` or `%d` is only ever a name."""
    return f"file:{path.absolute()}"


async def run_tool(
    args: list[str],
    *,
    seconds: float,
    what: str,
    name: str,
    on_line: Callable[[str], Awaitable[None]] | None = None,
    on_chunk: Callable[[bytes], Awaitable[None]] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ffmpeg or ffprobe for at most `seconds`: its exit code, stdout and stderr's tail.

    `on_line` gets stdout line by line, `on_chunk` in blocks (and stdout is not kept then).
    On timeout, cancellation or any error the process is killed and reaped before this
    returns; a timeout is a MediaError.
    """
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    stdout, stderr = proc.stdout, proc.stderr
    out = bytearray()
    err = bytearray()

    async def read_out() -> None:
        if on_chunk is not None:
            while chunk := await stdout.read(1 << 20):
                await on_chunk(chunk)
            return
        if on_line is None:
            out.extend(await stdout.read())
            return
        async for raw in stdout:
            await on_line(raw.decode(errors="replace").strip())

    async def read_err() -> None:
        while chunk := await stderr.read(1 << 16):
            err.extend(chunk)
            del err[:-_STDERR_TAIL]

    try:
        async with asyncio.timeout(seconds):
            await asyncio.gather(read_out(), read_err())
            code = await proc.wait()
    except TimeoutError:
        raise MediaError(
            "media_timeout",
            f"{what} {name} took longer than {seconds:g} s and was stopped; "
            "the file may be damaged or not a plain audio or video file",
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
    return code, bytes(out), bytes(err)


def _last_line(stderr: bytes, path: Path) -> str:
    """ffmpeg's last complaint, without the server path it quotes."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    line = lines[-1] if lines else "no details"
    for spelling in (_input(path), str(path.absolute()), str(path)):
        line = line.replace(f"{spelling}: ", "").replace(spelling, "the file")
    return line


def _refused(name: str, demuxer: str) -> MediaError:
    return MediaError(
        "unsupported_media",
        f"{name} is in the {demuxer} format, not a self-contained audio or video file ({_ACCEPTED}, ...); "
        "playlists, file lists and image sequences are refused",
    )


def _seconds(value: object) -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return seconds if seconds > 0 and seconds != float("inf") else 0.0


def _ffprobe_args(path: Path, entries: str) -> list[str]:
    """ffprobe of a local file as JSON, locked to the allowed containers and to file access."""
    return [
        _tool("ffprobe"),
        "-v",
        "error",
        "-format_whitelist",
        _FORMAT_WHITELIST,
        "-protocol_whitelist",
        "file",
        "-show_entries",
        entries,
        "-of",
        "json",
        _input(path),
    ]


async def probe(path: Path, name: str | None = None, limits: MediaSettings | None = None) -> MediaInfo:
    """Streams and duration, or a MediaError saying why the file is unusable.

    Only ALLOWED_FORMATS are opened at all (ffprobe follows playlists while probing, so the
    probe is locked down as well as extraction). Messages name the file as the user knows it
    (`name`), never by its server path.
    """
    name = name or path.name
    limits = limits or MediaSettings()
    if not await asyncio.to_thread(path.is_file):
        raise MediaError("not_found", f"{name}: no such file")
    entries = (
        "format=format_name,duration:stream=codec_type,codec_name,channels,duration"
        ":stream_tags=language,title,duration:stream_disposition=default"
    )
    code, out, err = await run_tool(
        _ffprobe_args(path, entries), seconds=limits.probe_timeout, what="probing", name=name
    )
    if code != 0:
        refused = _REFUSED_FORMAT.search(err.decode(errors="replace"))
        if refused:
            raise _refused(name, refused.group(1))
        raise MediaError(
            "not_media", f"{name} is not a readable audio or video file ({_last_line(err, path)})"
        )
    try:
        info = json.loads(out)
    except ValueError:
        raise MediaError("not_media", f"{name}: ffprobe gave no usable answer") from None
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    format_name = str(fmt.get("format_name") or "")
    if not streams or not format_name:
        raise MediaError("not_media", f"{name} is not an audio or video file")
    if format_name.split(",")[0] not in ALLOWED_FORMATS:  # the whitelist's own check, again
        raise _refused(name, format_name.split(",")[0])
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    tracks = tuple(_track(i, s) for i, s in enumerate(audio))
    return MediaInfo(
        duration=_seconds(fmt.get("duration")),
        has_audio=bool(audio),
        format_name=format_name,
        audio_duration=tracks[0].duration if tracks else 0.0,
        tracks=tracks,
    )


def _track(index: int, stream: dict[str, Any]) -> AudioTrack:
    tags = {str(k).lower(): v for k, v in (stream.get("tags") or {}).items()}
    language = str(tags.get("language") or "").strip() or None
    title = str(tags.get("title") or "").strip() or None
    channels = stream.get("channels")
    return AudioTrack(
        index=index,
        language=None if language in (None, "und") else language,
        title=title,
        codec=str(stream.get("codec_name") or "") or None,
        channels=channels if isinstance(channels, int) and channels > 0 else None,
        default=bool((stream.get("disposition") or {}).get("default")),
        # Matroska keeps a stream's length in a tag ("00:00:03.698000000"), not the field.
        duration=_seconds(stream.get("duration")) or _clock_seconds(tags.get("duration")),
    )


def _clock_seconds(value: object) -> float:
    match = re.fullmatch(r"(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", str(value or "").strip())
    if not match:
        return 0.0
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


async def check_media(path: Path, name: str | None = None, limits: MediaSettings | None = None) -> MediaInfo:
    """What a job needs before it is queued: an allowed container with an audio stream."""
    info = await probe(path, name, limits)
    if not info.has_audio:
        raise MediaError("no_audio", f"{name or path.name} has no audio stream")
    return info


def extract_timeout(info: MediaInfo, limits: MediaSettings) -> float:
    """Time allowed to decode: scaled to the media's length, never below the floor."""
    return max(limits.extract_timeout, limits.extract_timeout_factor * info.duration)


async def extract_audio(
    src: Path,
    dst: Path,
    on_progress: Callable[[float], Awaitable[None]] | None = None,
    name: str | None = None,
    limits: MediaSettings | None = None,
    track: int | str | None = None,
    seconds: float | None = None,
) -> MediaInfo:
    """16 kHz mono 16-bit WAV of one audio track (`choose_track`: the default one unless
    `track` names another), written atomically to `dst`; only the first `seconds` if given."""
    name = name or src.name
    limits = limits or MediaSettings()
    info = await check_media(src, name, limits)
    chosen = choose_track(info, track, name)
    tmp = dst.with_name(dst.name + ".part")
    source = ffmpeg.input(
        _input(src), f=info.demuxer, format_whitelist=_FORMAT_WHITELIST, protocol_whitelist="file"
    )
    limit = {} if seconds is None else {"t": f"{seconds:.3f}"}
    stream = (
        source[f"a:{chosen.index}"]
        .output(
            _input(tmp), format="wav", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, vn=None, sn=None, **limit
        )
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-progress", "pipe:1")
        .overwrite_output()
    )

    async def on_line(line: str) -> None:
        key, _, value = line.partition("=")
        if key == "out_time_us" and on_progress and info.duration > 0 and value.isdigit():
            await on_progress(min(1.0, int(value) / 1e6 / info.duration))

    try:
        code, _, err = await run_tool(
            stream.compile(cmd=_tool("ffmpeg")),
            seconds=extract_timeout(info, limits),
            what="extracting the audio of",
            name=name,
            on_line=on_line,
        )
    except BaseException:
        await asyncio.to_thread(_unlink, tmp)
        raise
    if code != 0:
        await asyncio.to_thread(_unlink, tmp)
        raise MediaError("decode_failed", f"ffmpeg could not decode {name}: {_last_line(err, src)}")
    await asyncio.to_thread(replace_durably, tmp, dst)
    return info


def wav_seconds(path: Path) -> float | None:
    """How much audio a PCM WAV really holds (blocking; run it in a thread).

    Counts the bytes on disk, not the header's promise: a truncated file keeps the header of
    the whole one. None when the file is missing or not a WAV this module would write.
    """
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            riff = fh.read(12)
            if riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
                return None
            block_align = rate = 0
            while len(head := fh.read(8)) == 8:
                chunk, length = head[:4], struct.unpack("<I", head[4:])[0]
                if chunk == b"fmt ":
                    fmt = fh.read(length)
                    if len(fmt) < 16:
                        return None
                    _, _, rate, _, block_align = struct.unpack("<HHIIH", fmt[:14])
                    fh.seek(length % 2, os.SEEK_CUR)
                elif chunk == b"data":
                    if not rate or not block_align:
                        return None
                    on_disk = min(length, size - fh.tell())
                    return max(0, on_disk) // block_align / rate
                else:
                    fh.seek(length + length % 2, os.SEEK_CUR)
    except OSError:
        return None
    return None


def audio_is_complete(seconds: float | None, info: MediaInfo, track: int | None = None) -> bool:
    """Whether extracted audio covers the source's track (within 1 s or 2 %, codec padding aside)."""
    if seconds is None:
        return False
    expected = info.track_seconds(track)
    return seconds >= expected - max(1.0, 0.02 * expected)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# --- playback: what a browser needs to know, and an audio proxy it can always play ----------

#: MIME types by demuxer; `mov` and `ogg` depend on whether there is a picture (`_mime`).
_MIME: dict[str, str] = {
    "mp3": "audio/mpeg",
    "wav": "audio/wav",
    "w64": "audio/x-w64",
    "flac": "audio/flac",
    "aac": "audio/aac",
    "mpegts": "video/mp2t",
    "avi": "video/x-msvideo",
    "asf": "video/x-ms-asf",
    "amr": "audio/amr",
    "aiff": "audio/aiff",
    "caf": "audio/x-caf",
    "mpeg": "video/mpeg",
    "flv": "video/x-flv",
    "ac3": "audio/ac3",
    "eac3": "audio/eac3",
    "au": "audio/basic",
    "wv": "audio/x-wavpack",
}
#: Codecs a WebM file may hold: a Matroska file with only these is served as WebM.
_WEBM_CODECS = frozenset({"vp8", "vp9", "av1", "opus", "vorbis"})
#: H.264 profile names (as ffprobe spells them) to RFC 6381's profile_idc and constraint byte.
_AVC_PROFILES: dict[str, str] = {
    "Constrained Baseline": "42E0",
    "Baseline": "4200",
    "Main": "4D40",
    "Extended": "5800",
    "High": "6400",
    "High 10": "6E00",
    "High 4:2:2": "7A00",
    "High 4:4:4 Predictive": "F400",
}
_AAC_PROFILES = {"LC": "mp4a.40.2", "HE-AAC": "mp4a.40.5", "HE-AACv2": "mp4a.40.29", "Main": "mp4a.40.1"}
_SIMPLE_CODECS = {
    "opus": "opus",
    "vorbis": "vorbis",
    "mp3": "mp3",
    "flac": "flac",
    "vp8": "vp8",
    "theora": "theora",
    "ac3": "ac-3",
    "eac3": "ec-3",
    "alac": "alac",
}
#: The audio proxy: AAC-LC, mono, in MP4 with its index first; every browser plays it.
PROXY_MIME = "audio/mp4"
PROXY_CODECS = "mp4a.40.2"


@dataclass(frozen=True)
class Playback:
    """What the browser's player needs: the type to serve the file as and whether it can play it."""

    mime: str
    codecs: str | None  # RFC 6381 `codecs=` for canPlayType; None when a stream's is unknown
    has_video: bool
    width: int | None
    height: int | None
    duration: float
    audio_track: int | None  # the job's chosen audio track (`0:a:<index>`)

    def json(self) -> dict[str, Any]:
        return {
            "mime": self.mime,
            "codecs": self.codecs,
            "has_video": self.has_video,
            "width": self.width,
            "height": self.height,
            "duration": self.duration,
            "audio_track": self.audio_track,
        }


def _bit_depth(stream: dict[str, Any]) -> int:
    return 10 if "10" in str(stream.get("pix_fmt") or "") else 8


def codec_string(stream: dict[str, Any]) -> str | None:
    """One stream's RFC 6381 codec (`avc1.64001F`, `hvc1.1.6.L93.B0`, `mp4a.40.2`), or None."""
    name = str(stream.get("codec_name") or "")
    profile = str(stream.get("profile") or "")
    level = stream.get("level")
    level = level if isinstance(level, int) and level > 0 else None
    if name == "h264":
        head = _AVC_PROFILES.get(profile, "4D40")
        return f"avc1.{head}{level or 30:02X}"
    if name == "hevc":
        space = 2 if profile == "Main 10" else 1
        return f"hvc1.{space}.{4 if space == 2 else 6}.L{level or 93}.B0"
    if name == "vp9":
        number = re.search(r"\d", profile)
        return f"vp09.0{number.group(0) if number else 0}.10.{_bit_depth(stream):02d}"
    if name == "av1":
        tier = {"Main": 0, "High": 1, "Professional": 2}.get(profile, 0)
        return f"av01.{tier}.05M.{_bit_depth(stream):02d}"
    if name == "aac":
        return _AAC_PROFILES.get(profile, "mp4a.40.2")
    return _SIMPLE_CODECS.get(name)


def _mime(demuxer: str, has_video: bool, codecs: set[str]) -> str:
    if demuxer == "mov":
        return "video/mp4" if has_video else "audio/mp4"
    if demuxer == "matroska":
        if codecs <= _WEBM_CODECS:
            return "video/webm" if has_video else "audio/webm"
        return "video/x-matroska" if has_video else "audio/x-matroska"
    if demuxer == "ogg":
        return "video/ogg" if has_video else "audio/ogg"
    return _MIME.get(demuxer, "application/octet-stream")


def playback_of(probed: dict[str, Any], track: int | str | None, name: str) -> Playback:
    """The playback facts of an ffprobe answer (pure: `probe_playback` runs ffprobe)."""
    streams = [s for s in probed.get("streams") or [] if isinstance(s, dict)]
    fmt = probed.get("format") or {}
    demuxer = str(fmt.get("format_name") or "").split(",")[0]
    pictures = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    audio = [s for s in streams if s.get("codec_type") == "audio"]
    tracks = tuple(_track(i, s) for i, s in enumerate(audio))
    info = MediaInfo(_seconds(fmt.get("duration")), bool(audio), demuxer, 0.0, tracks)
    chosen = choose_track(info, track, name).index if tracks else None
    played = pictures[:1] + ([audio[chosen]] if chosen is not None else [])
    strings = [codec_string(s) for s in played]
    video = pictures[0] if pictures else {}
    width, height = video.get("width"), video.get("height")
    return Playback(
        mime=_mime(demuxer, bool(pictures), {str(s.get("codec_name")) for s in played}),
        codecs=None if not strings or None in strings else ", ".join(s for s in strings if s),
        has_video=bool(pictures),
        width=width if isinstance(width, int) else None,
        height=height if isinstance(height, int) else None,
        duration=_seconds(fmt.get("duration")),
        audio_track=chosen,
    )


async def probe_playback(path: Path, name: str, limits: MediaSettings, track: int | str | None) -> Playback:
    """`playback_of` the file, probed with the same allowlists as `probe` (after it)."""
    await probe(path, name, limits)  # refuses what is not allowed media, with its messages
    entries = (
        "format=format_name,duration:stream=codec_type,codec_name,profile,level,width,height,pix_fmt"
        ":stream_disposition=default,attached_pic"
    )
    code, out, err = await run_tool(
        _ffprobe_args(path, entries), seconds=limits.probe_timeout, what="probing", name=name
    )
    if code != 0:
        problem = _last_line(err, path)
        raise MediaError("not_media", f"{name} is not a readable audio or video file ({problem})")
    try:
        probed = json.loads(out)
    except ValueError:
        raise MediaError("not_media", f"{name}: ffprobe gave no usable answer") from None
    return playback_of(probed, track, name)


async def make_audio_proxy(
    src: Path, dst: Path, name: str, limits: MediaSettings, track: int | str | None
) -> None:
    """AAC-LC mono ~64 kb/s in MP4 (index first) of the chosen track, written atomically to
    `dst`: the player's fallback when the browser cannot play the file itself. Locked down as
    extraction is; a failed run leaves nothing behind."""
    info = await check_media(src, name, limits)
    chosen = choose_track(info, track, name)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}{PART_SUFFIX}")
    source = ffmpeg.input(
        _input(src), f=info.demuxer, format_whitelist=_FORMAT_WHITELIST, protocol_whitelist="file"
    )
    stream = (
        source[f"a:{chosen.index}"]
        .output(
            _input(tmp),
            format="mp4",
            acodec="aac",
            ac=1,
            audio_bitrate="64k",
            vn=None,
            sn=None,
            dn=None,
            movflags="+faststart",
            map_metadata=-1,
        )
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .overwrite_output()
    )
    try:
        code, _, err = await run_tool(
            stream.compile(cmd=_tool("ffmpeg")),
            seconds=extract_timeout(info, limits),
            what="making the audio proxy of",
            name=name,
        )
        if code != 0:
            problem = _last_line(err, src)
            raise MediaError("proxy_failed", f"ffmpeg could not make an audio proxy of {name}: {problem}")
        await asyncio.to_thread(_sync, tmp)
        await asyncio.to_thread(replace_durably, tmp, dst)
    except BaseException:
        await asyncio.to_thread(_unlink, tmp)
        raise


def _sync(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


async def decode_pcm(
    src: Path,
    name: str,
    limits: MediaSettings,
    track: int | str | None,
    on_chunk: Callable[[bytes], Awaitable[None]],
) -> None:
    """Decode the chosen track to 16 kHz mono s16le on a pipe, handing `on_chunk` the bytes
    (for waveform peaks when no extracted audio is kept). Locked down as extraction is."""
    info = await check_media(src, name, limits)
    chosen = choose_track(info, track, name)
    source = ffmpeg.input(
        _input(src), f=info.demuxer, format_whitelist=_FORMAT_WHITELIST, protocol_whitelist="file"
    )
    stream = (
        source[f"a:{chosen.index}"]
        .output("pipe:1", format="s16le", acodec="pcm_s16le", ac=1, ar=SAMPLE_RATE, vn=None, sn=None)
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
    )
    code, _, err = await run_tool(
        stream.compile(cmd=_tool("ffmpeg")),
        seconds=extract_timeout(info, limits),
        what="decoding the audio of",
        name=name,
        on_chunk=on_chunk,
    )
    if code != 0:
        raise MediaError("decode_failed", f"ffmpeg could not decode {name}: {_last_line(err, src)}")
