"""Synthetic media for the test suite and the benchmarks.

Everything here is synchronous (``subprocess``) and meant to run in fixtures or
benchmark set-up, never on an event loop.  Speech is synthesised with ``espeak-ng``
and assembled in pure Python (``wave``/``array``), so the onset and offset of every
sentence are known from sample counts; they are then re-measured on the decoded
final file (lossy codecs and container edit lists can shift things slightly).

Needs the ``espeak-ng``, ``ffmpeg`` and ``ffprobe`` executables.
"""

from __future__ import annotations

import array
import errno
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import wave
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = [
    "DEFAULT_SENTENCES",
    "LONG_SENTENCES",
    "Sentence",
    "Speech",
    "Tripwire",
    "ffprobe",
    "fifo_tripwire",
    "make_corrupt_media",
    "make_ffconcat",
    "make_hls_playlist",
    "make_long_speech",
    "make_silent_video",
    "make_speech",
    "make_text_file",
    "make_tracks",
    "make_video_without_audio",
    "media_duration",
    "normalize_text",
    "word_error_rate",
]


@dataclass(frozen=True)
class Sentence:
    text: str
    start: float  # seconds, measured speech onset in the final file
    end: float  # seconds, measured speech offset in the final file


@dataclass(frozen=True)
class Speech:
    path: Path  # the produced media file
    sentences: list[Sentence]
    duration: float  # seconds

    @property
    def text(self) -> str:
        """All sentences joined by spaces (the reference transcript)."""
        return " ".join(s.text for s in self.sentences)


DEFAULT_SENTENCES: list[str] = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells fresh bread at the market every morning.",
    "We walked along the river until the sun went down.",
    "My brother bought a new car last week.",
    "Please close the door when you leave the room.",
    "The children played football in the park after school.",
]

# ~30 distinct sentences for long files (cycled by make_long_speech).
LONG_SENTENCES: list[str] = [
    *DEFAULT_SENTENCES,
    "I would like a cup of hot tea with milk.",
    "The train to the city leaves at nine in the morning.",
    "He reads the newspaper before he goes to work.",
    "Our teacher told us a story about the old castle.",
    "The weather was cold and windy all day long.",
    "They are planning a trip to the mountains next summer.",
    "Can you help me carry these heavy boxes upstairs?",
    "The little cat is sleeping on the warm blanket.",
    "We need to buy apples, eggs and cheese for dinner.",
    "My sister plays the piano every evening after dinner.",
    "The doctor said that I should drink more water.",
    "A big red bus stopped in front of the hotel.",
    "The garden is full of yellow and white flowers.",
    "He forgot his keys on the kitchen table again.",
    "The museum opens early on the first day of the week.",
    "She wrote a long letter to her best friend.",
    "The dog ran across the field to catch the ball.",
    "It started to rain just as we reached the beach.",
    "Everyone in the room laughed at the funny joke.",
    "The phone rang while I was cooking the soup.",
    "Our neighbours painted their house a bright blue colour.",
    "The shop on the corner sells books and maps.",
    "I like to walk in the forest on quiet Sunday mornings.",
    "The pilot said that the flight would be on time.",
]

# Sample values (16-bit PCM) at or below this are treated as silence when trimming
# espeak's output (its silence is exact digital zero).
_TRIM_THRESHOLD = 30
# Threshold used when re-measuring onsets on the decoded (possibly lossy) final file.
_MEASURE_THRESHOLD = 200
# How far (seconds) around the planned onset/offset the re-measurement looks.
_MEASURE_WINDOW = 0.25

_AUDIO_CODECS: dict[str, list[str]] = {
    ".wav": ["-c:a", "pcm_s16le"],
    ".mp3": ["-c:a", "libmp3lame", "-b:a", "64k"],
    ".m4a": ["-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k"],
    ".aac": ["-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k"],
    ".flac": ["-c:a", "flac"],
    ".ogg": ["-c:a", "libvorbis", "-q:a", "3"],
    ".opus": ["-c:a", "libopus", "-b:a", "32k"],
    ".webm": ["-c:a", "libopus", "-b:a", "32k"],
    ".mka": ["-c:a", "flac"],
    ".ts": ["-c:a", "aac", "-aac_coder", "fast", "-b:a", "64k"],  # MPEG-TS, as HLS segments are
}


# --------------------------------------------------------------------------- utils


def _run(cmd: Sequence[str | Path]) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, check=False)
    if proc.returncode != 0:
        err = proc.stderr.decode("utf-8", "replace")[-2000:]
        raise RuntimeError(f"command failed ({proc.returncode}): {cmd[0]} ...\n{err}")
    return proc


def _ffmpeg(*args: str | Path) -> None:
    _run(["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *args])


@lru_cache(maxsize=1)
def _video_codec() -> list[str]:
    """libx264 when this ffmpeg has it, else the built-in mpeg4 encoder."""
    out = _run(["ffmpeg", "-hide_banner", "-encoders"]).stdout.decode("utf-8", "replace")
    if re.search(r"^\s*V\S*\s+libx264\s", out, re.MULTILINE):
        return ["-c:v", "libx264", "-preset", "ultrafast", "-tune", "stillimage", "-pix_fmt", "yuv420p"]
    return ["-c:v", "mpeg4", "-q:v", "10", "-pix_fmt", "yuv420p"]


@contextmanager
def _workdir(out: Path) -> Iterator[Path]:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _color_input(seconds: float, color: str = "0x3060a0") -> list[str]:
    return ["-f", "lavfi", "-i", f"color=c={color}:s=160x90:r=5:d={seconds:.3f}"]


def ffprobe(path: Path) -> dict[str, object]:
    """``ffprobe -show_format -show_streams`` as a dict."""
    proc = _run(["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", path])
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def media_duration(path: Path, stream: str = "a") -> float:
    """Duration (s) of the first stream of the given type ('a' or 'v') per ffprobe."""
    proc = _run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            f"{stream}:0",
            "-show_entries",
            "stream=duration:format=duration",
            "-of",
            "json",
            path,
        ]
    )
    data = json.loads(proc.stdout)
    streams = data.get("streams") or []
    if not streams:
        raise ValueError(f"{path} has no {stream!r} stream")
    dur = streams[0].get("duration") or data.get("format", {}).get("duration")
    return float(dur)


# --------------------------------------------------------------------------- speech


def _read_pcm(path: Path) -> tuple[array.array[int], int]:
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1:
            raise ValueError(f"{path}: expected 16-bit mono PCM")
        rate = w.getframerate()
        samples = array.array("h", w.readframes(w.getnframes()))
    if sys.byteorder == "big":
        samples.byteswap()
    return samples, rate


def _write_pcm(path: Path, samples: array.array[int], rate: int) -> None:
    data = samples
    if sys.byteorder == "big":
        data = array.array("h", samples)
        data.byteswap()
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())


def _first_above(samples: Sequence[int], threshold: int, lo: int, hi: int) -> int | None:
    for i in range(max(lo, 0), min(hi, len(samples))):
        if abs(samples[i]) > threshold:
            return i
    return None


def _last_above(samples: Sequence[int], threshold: int, lo: int, hi: int) -> int | None:
    for i in range(min(hi, len(samples)) - 1, max(lo, 0) - 1, -1):
        if abs(samples[i]) > threshold:
            return i
    return None


def _trim(samples: array.array[int]) -> array.array[int] | None:
    first = _first_above(samples, _TRIM_THRESHOLD, 0, len(samples))
    if first is None:
        return None
    last = _last_above(samples, _TRIM_THRESHOLD, first, len(samples))
    assert last is not None
    return samples[first : last + 1]


def _synth_all(
    texts: Sequence[str],
    tmp: Path,
    voice: str,
    speed: int,
    voices: Sequence[str] | None = None,
) -> tuple[dict[tuple[str, str], array.array[int]], int]:
    """Each distinct (text, voice) through espeak-ng (in parallel, a few at a time), trimmed
    of its own leading/trailing silence; ``voices`` gives one voice per text (else ``voice``
    for all).  Returns ``{(text, voice): samples}`` and the rate."""
    distinct = list(dict.fromkeys(zip(texts, voices or [voice] * len(texts), strict=True)))
    result: dict[tuple[str, str], array.array[int]] = {}
    rate = 0
    batch = 8
    for base in range(0, len(distinct), batch):
        procs: list[tuple[tuple[str, str], Path, subprocess.Popen[bytes]]] = []
        for i, (text, voice) in enumerate(distinct[base : base + batch], base):
            wav = tmp / f"s{i:04d}.wav"
            cmd = ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(wav), text]
            procs.append(
                ((text, voice), wav, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            )
        for key, wav, proc in procs:
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"espeak-ng failed for {key!r}: {err.decode('utf-8', 'replace')[-500:]}")
            samples, rate = _read_pcm(wav)
            wav.unlink()
            trimmed = _trim(samples)
            if trimmed is None:
                raise RuntimeError(f"espeak-ng produced silence for {key!r}")
            result[key] = trimmed
    return result, rate


#: sox ``synth`` arguments of the sounds a pause may hold (``fillers``), at full length.
FILLERS: dict[str, Callable[[float], list[str]]] = {
    "noise": lambda seconds: ["synth", f"{seconds:.3f}", "pinknoise", "vol", "0.25"],
    "music": lambda seconds: [  # a plucked tune, one note each 0.3 s (sox chains joined by ":")
        arg
        for i in range(max(1, math.ceil(seconds / 0.3)))
        for arg in [*([":"] if i else []), "synth", "0.3", "pluck", "CDEGAGEC"[i % 8] + "4", "vol", "0.3"]
    ],
}
#: Silence kept on each side of a filler, so a sentence's measured onset/offset stays its own.
FILLER_MARGIN = 0.5


def _filler(kind: str, seconds: float, rate: int, tmp: Path) -> array.array[int]:
    """``seconds`` of a FILLERS sound (sox) as samples at ``rate``, cut or padded to length."""
    wav = tmp / f"filler-{kind}.wav"
    _run(["sox", "-n", "-r", str(rate), "-b", "16", "-c", "1", wav, *FILLERS[kind](seconds)])
    samples, _ = _read_pcm(wav)
    wav.unlink()
    want = round(seconds * rate)
    del samples[want:]
    samples.extend(array.array("h", bytes(2 * (want - len(samples)))))
    return samples


def _pause(seconds: float, filler: str | None, rate: int, tmp: Path) -> array.array[int]:
    """Silence, or a filler between FILLER_MARGIN s of silence on either side."""
    if filler is None:
        return array.array("h", bytes(2 * round(seconds * rate)))
    inner = seconds - 2 * FILLER_MARGIN
    if inner < 0.5:
        raise ValueError(f"a {filler} pause needs at least {2 * FILLER_MARGIN + 0.5} s, got {seconds}")
    edge = array.array("h", bytes(2 * round(FILLER_MARGIN * rate)))
    return edge + _filler(filler, inner, rate, tmp) + edge


def _decode_pcm(path: Path, rate: int) -> array.array[int]:
    """The first audio stream of ``path`` as mono s16 samples at ``rate``."""
    proc = _run(
        [
            "ffmpeg",
            "-hide_banner",
            "-nostdin",
            "-loglevel",
            "error",
            "-i",
            path,
            "-map",
            "0:a:0",
            "-ac",
            "1",
            "-ar",
            str(rate),
            "-f",
            "s16le",
            "-",
        ]
    )
    samples = array.array("h", proc.stdout)
    if sys.byteorder == "big":
        samples.byteswap()
    return samples


def _build(
    out: Path,
    texts: Sequence[str] | Callable[[dict[str, float]], Sequence[str]],
    pauses: Sequence[float],
    *,
    lead: float,
    video: bool,
    voice: str,
    speed: int,
    sample_rate: int,
    pool: Sequence[str] = (),
    voices: Sequence[str] | None = None,
    fillers: Sequence[str | None] | None = None,
) -> Speech:
    """Synthesise ``texts`` separated by ``pauses[i]`` (at least len(texts) - 1 of
    them) into ``out``.  ``texts`` may instead be a planner, called with the spoken
    length (s) of each text of ``pool`` once those are synthesised.  ``voices`` (one per
    text) and ``fillers`` (one per pause, a FILLERS name or None) need a list of texts."""
    if video and out.suffix.lower() not in {".mp4", ".mov", ".m4v", ".mkv"}:
        raise ValueError(f"video output needs an .mp4/.mov/.m4v/.mkv name, got {out.name}")
    if not video and out.suffix.lower() not in _AUDIO_CODECS:
        raise ValueError(f"unsupported audio extension {out.suffix!r}")
    with _workdir(out) as tmp:
        if callable(texts):
            cache, rate = _synth_all(pool, tmp, voice, speed)
            texts = texts({t: len(v) / rate for (t, _), v in cache.items()})
        else:
            cache, rate = _synth_all(texts, tmp, voice, speed, voices)
        if not texts:
            raise ValueError("at least one sentence is needed")
        voices = voices or [voice] * len(texts)
        timeline = array.array("h", bytes(2 * round(lead * rate)))
        planned: list[tuple[int, int]] = []
        for i, text in enumerate(texts):
            if i:
                timeline.extend(_pause(pauses[i - 1], fillers[i - 1] if fillers else None, rate, tmp))
            start = len(timeline)
            timeline.extend(cache[text, voices[i]])
            planned.append((start, len(timeline)))
        timeline.extend(array.array("h", bytes(2 * round(lead * rate))))
        seconds = len(timeline) / rate
        wav = tmp / "speech.wav"
        _write_pcm(wav, timeline, rate)
        del timeline

        target = tmp / f"out{out.suffix}"
        if video:
            _ffmpeg(
                *_color_input(seconds),
                "-i",
                wav,
                "-map",
                "0:v",
                "-map",
                "1:a",
                *_video_codec(),
                *_AUDIO_CODECS[".m4a"],
                "-ar",
                str(sample_rate),
                "-ac",
                "1",
                "-movflags",
                "+faststart",
                target,
            )
        else:
            _ffmpeg(
                "-i", wav, "-ar", str(sample_rate), "-ac", "1", *_AUDIO_CODECS[out.suffix.lower()], target
            )

        # Re-measure each onset/offset on what a decoder actually gets back.
        decoded = _decode_pcm(target, sample_rate)
        scale = sample_rate / rate
        win = round(_MEASURE_WINDOW * sample_rate)
        sentences: list[Sentence] = []
        bounds = [0, *(round(x * scale) for ab in planned for x in ab), len(decoded)]
        for k, (text, (a, b)) in enumerate(zip(texts, planned, strict=True)):
            ps, pe = round(a * scale), round(b * scale)
            # Never look past the middle of the silence next to this sentence.
            lo = max(ps - win, (bounds[2 * k] + ps) // 2)
            hi = min(pe + win, (pe + bounds[2 * k + 3]) // 2)
            s = _first_above(decoded, _MEASURE_THRESHOLD, lo, min(ps + win, pe))
            e = _last_above(decoded, _MEASURE_THRESHOLD, max(pe - win, ps), hi)
            onset = (s if s is not None else ps) / sample_rate
            offset = (e + 1 if e is not None else pe) / sample_rate
            sentences.append(Sentence(text=text, start=round(onset, 4), end=round(offset, 4)))
        target.replace(out)
    return Speech(path=out, sentences=sentences, duration=round(seconds, 4))


def make_speech(
    out: Path,
    sentences: Sequence[str] = DEFAULT_SENTENCES,
    *,
    pause: float = 1.5,
    lead: float = 0.7,
    video: bool = True,
    voice: str = "en-us",
    speed: int = 150,
    sample_rate: int = 16000,
    pauses: Sequence[float] | None = None,
    voices: Sequence[str] | None = None,
    fillers: Sequence[str | None] | None = None,
) -> Speech:
    """Spoken ``sentences`` (espeak-ng) with ``lead`` s of silence before and after and
    ``pause`` s between them, as an mp4 (``video=True``: 160x90 colour at 5 fps, AAC
    mono) or an audio file whose format follows ``out``'s extension.  ``pauses`` (one per
    gap) overrides ``pause``, ``voices`` (one per sentence, e.g. a dialogue) ``voice``, and
    ``fillers`` puts a FILLERS sound (``"noise"``, ``"music"``) in the middle of a gap."""
    out = Path(out)
    gaps = list(pauses) if pauses is not None else [pause] * (len(sentences) - 1)
    for name, given in (("pauses", gaps), ("fillers", fillers)):
        if given is not None and len(given) != len(sentences) - 1:
            raise ValueError(f"{name}: one per gap ({len(sentences) - 1}), got {len(given)}")
    if voices is not None and len(voices) != len(sentences):
        raise ValueError(f"voices: one per sentence ({len(sentences)}), got {len(voices)}")
    return _build(
        out,
        list(sentences),
        gaps,
        lead=lead,
        video=video,
        voice=voice,
        speed=speed,
        sample_rate=sample_rate,
        voices=voices,
        fillers=fillers,
    )


def make_long_speech(
    out: Path,
    minutes: float = 5.0,
    *,
    pause: float = 1.5,
    lead: float = 0.7,
    video: bool = True,
    voice: str = "en-us",
    speed: int = 150,
    sample_rate: int = 16000,
) -> Speech:
    """About ``minutes`` of speech for benchmarks: ``LONG_SENTENCES`` cycled, with
    pauses that vary deterministically around ``pause`` (0.6x to 1.6x).  Other
    keywords as for make_speech.  Each distinct sentence is synthesised once."""
    out = Path(out)
    rng = random.Random(1234)
    pauses = [round(pause * rng.uniform(0.6, 1.6), 3) for _ in range(10_000)]

    def plan(lengths: dict[str, float]) -> list[str]:
        texts: list[str] = []
        total = 2 * lead
        while total < minutes * 60.0 or not texts:
            if texts:
                total += pauses[len(texts) - 1]
            text = LONG_SENTENCES[len(texts) % len(LONG_SENTENCES)]
            texts.append(text)
            total += lengths[text]
        return texts

    return _build(
        out,
        plan,
        pauses,
        lead=lead,
        video=video,
        voice=voice,
        speed=speed,
        sample_rate=sample_rate,
        pool=LONG_SENTENCES,
    )


# --------------------------------------------------------------------------- odd media


def make_silent_video(out: Path, seconds: float = 4.0) -> Path:
    """An mp4 (160x90, 5 fps) with a silent AAC audio track (anullsrc)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg(
        *_color_input(seconds, "0x208040"),
        "-f",
        "lavfi",
        "-i",
        f"anullsrc=r=16000:cl=mono:d={seconds:.3f}",
        "-map",
        "0:v",
        "-map",
        "1:a",
        *_video_codec(),
        *_AUDIO_CODECS[".m4a"],
        "-movflags",
        "+faststart",
        out,
    )
    return out


def make_tracks(out: Path, tracks: Sequence[tuple[Sequence[str], str, str | None]]) -> list[Speech]:
    """A Matroska file with one audio stream per ``(sentences, language tag, title)``, in
    that order (each spoken by espeak-ng, AAC mono); the Speech of each track."""
    out = Path(out)
    with _workdir(out) as tmp:
        spoken = [
            make_speech(tmp / f"track{i}.wav", sentences, video=False, lead=0.3)
            for i, (sentences, _, _) in enumerate(tracks)
        ]
        args: list[str | Path] = []
        for sp in spoken:
            args += ["-i", sp.path]
        for i, (_, language, title) in enumerate(tracks):
            args += ["-map", f"{i}:a", f"-metadata:s:a:{i}", f"language={language}"]
            if title is not None:
                args += [f"-metadata:s:a:{i}", f"title={title}"]
        _ffmpeg(*args, "-c:a", "aac", "-b:a", "64k", out)
    return [Speech(out, sp.sentences, sp.duration) for sp in spoken]


def make_video_without_audio(out: Path, seconds: float = 2.0) -> Path:
    """An mp4 with a video stream only (no audio stream at all)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg(*_color_input(seconds, "0x802020"), *_video_codec(), "-an", "-movflags", "+faststart", out)
    return out


def make_corrupt_media(out: Path) -> Path:
    """A file that looks like an mp4 (valid ``ftyp`` box, same size as a real one) but
    whose ``moov`` header and data are overwritten with random bytes, so that ffmpeg
    cannot decode it (``moov atom not found`` / ``Invalid data``)."""
    out = Path(out)
    with _workdir(out) as tmp:
        real = make_silent_video(tmp / "real.mp4", seconds=2.0)
        data = bytearray(real.read_bytes())
    ftyp_size = int.from_bytes(data[0:4], "big") if data[4:8] == b"ftyp" else 0
    rng = random.Random(0xBAD)
    data[ftyp_size:] = bytes(rng.getrandbits(8) for _ in range(len(data) - ftyp_size))
    out.write_bytes(bytes(data))
    return out


def make_text_file(out: Path) -> Path:
    """Plain text, whatever the extension of ``out`` (e.g. ``notes.txt`` or a fake
    ``video.mp4``)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "This is not a media file.\nIt only contains plain text, a few lines of it.\n" * 20,
        encoding="utf-8",
    )
    return out


def make_hevc_mkv(out: Path, seconds: float = 3.0) -> Path:
    """A Matroska file with HEVC video (libx265, 320x180) and a 440 Hz AAC tone: a file
    browsers other than Safari cannot play, so the player falls back to the audio proxy."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc=s=320x180:r=10:d={seconds:.3f}",
        "-f",
        "lavfi",
        "-i",
        f"sine=f=440:r=48000:d={seconds:.3f}",
        "-c:v",
        "libx265",
        "-preset",
        "ultrafast",
        "-x265-params",
        "log-level=error",
        "-pix_fmt",
        "yuv420p",
        "-c:a",
        "aac",
        "-ac",
        "2",
        out,
    )
    return out


def make_tone_bursts(
    out: Path, bursts: Sequence[tuple[float, float]], seconds: float, rate: int = 16000
) -> Path:
    """Silence with a loud 440 Hz tone during each ``(start, end)`` burst; the container
    follows ``out``'s extension (16 kHz mono)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gate = "+".join(f"between(t,{a},{b})" for a, b in bursts) or "0"
    _ffmpeg(
        "-f", "lavfi", "-i", f"aevalsrc='0.8*sin(2*PI*440*t)*({gate})':s={rate}:d={seconds}", "-ac", "1", out
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------- hostile media


def make_hls_playlist(out: Path, segment: str | Path, *, endlist: bool = True, seconds: float = 40.0) -> Path:
    """An HLS playlist (text, whatever ``out``'s extension) naming ``segment``, a path or
    URL. Without ``endlist`` it is a live playlist, which a reader reloads forever."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#EXTM3U", f"#EXT-X-TARGETDURATION:{round(seconds)}", f"#EXTINF:{seconds:.1f},", str(segment)]
    out.write_text("\n".join([*lines, *(["#EXT-X-ENDLIST"] if endlist else [])]) + "\n", encoding="utf-8")
    return out


def make_ffconcat(out: Path, *targets: str | Path) -> Path:
    """An ``ffconcat version 1.0`` list of ``targets`` (ffmpeg's concat demuxer detects it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(f"file {t}\n" for t in targets)
    out.write_text(f"ffconcat version 1.0\n{body}", encoding="utf-8")
    return out


class Tripwire:
    """A FIFO that records whether any process ever opened it for reading.

    A thread keeps trying ``open(O_WRONLY | O_NONBLOCK)``: that fails with ENXIO while
    no reader has the FIFO open and succeeds the moment one does (a reader blocked in
    ``open`` included), so not even a brief read goes unseen. The reader then sees EOF.
    """

    def __init__(self, path: Path, every: float = 0.005) -> None:
        self.path = Path(path)
        self.every = every
        self.opened = threading.Event()
        self.error: OSError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"tripwire {self.path.name}", daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    self.error = exc
                    return
            else:
                self.opened.set()
                os.close(fd)
            self._stop.wait(self.every)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(self.path)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise self.error


@contextmanager
def fifo_tripwire(path: Path) -> Iterator[Tripwire]:
    """A watched FIFO at ``path``, created here and removed after the block."""
    wire = Tripwire(path)
    wire.start()
    try:
        yield wire
    finally:
        try:
            wire.stop()
        finally:
            wire.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- WER

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand")]


def _spell_int(n: int) -> str:
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {_spell_int(rest)}" if rest else "")
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            return f"{_spell_int(high)} {name}" + (f" {_spell_int(rest)}" if rest else "")
    raise AssertionError(n)  # pragma: no cover


def _spell_number(match: re.Match[str]) -> str:
    token = match.group(0).replace(",", "")
    whole, _, frac = token.partition(".")
    words = _spell_int(int(whole)) if len(whole) <= 15 else " ".join(_ONES[int(d)] for d in whole)
    if frac:
        words += " point " + " ".join(_ONES[int(d)] for d in frac)
    return f" {words} "


def normalize_text(text: str) -> list[str]:
    """Words for WER: lowercase, numbers spelled out, apostrophes dropped (``don't`` ->
    ``dont``), other punctuation to spaces, whitespace collapsed."""
    text = text.lower()
    text = re.sub(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?", _spell_number, text)
    text = re.sub(r"['\u2019`]", "", text)
    text = re.sub(r"[^\w\s]|_", " ", text)
    return text.split()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Standard WER: word-level Levenshtein distance (substitutions + deletions +
    insertions) over the number of reference words, after ``normalize_text``.  An
    empty reference gives 0.0 for an empty hypothesis, else 1.0."""
    ref = normalize_text(reference)
    hyp = normalize_text(hypothesis)
    if not ref:
        return 0.0 if not hyp else 1.0
    prev = list(range(len(hyp) + 1))
    for i, rw in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, hw in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1] / len(ref)
