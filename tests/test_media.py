"""Tests of the synthetic-media helpers (tests/media.py, tests/tiny_models.py)."""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import subprocess
from pathlib import Path

import pytest

from tests.media import (
    DEFAULT_SENTENCES,
    LONG_SENTENCES,
    Speech,
    ffprobe,
    make_corrupt_media,
    make_long_speech,
    make_silent_video,
    make_speech,
    make_text_file,
    make_video_without_audio,
    media_duration,
    normalize_text,
    word_error_rate,
)
from vsrt_service.jobs.media import ALLOWED_FORMATS, MediaInfo, audio_is_complete, extract_audio, wav_seconds

HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
HAS_TORCH = importlib.util.find_spec("torch") is not None


def _stream_types(path: Path) -> list[str]:
    streams = ffprobe(path)["streams"]
    assert isinstance(streams, list)
    return [str(s["codec_type"]) for s in streams]


def _check_sentences(speech: Speech) -> None:
    previous_end = 0.0
    for sentence in speech.sentences:
        assert previous_end < sentence.start < sentence.end <= speech.duration
        assert sentence.end - sentence.start > 0.5  # a spoken sentence, not a click
        previous_end = sentence.end


@pytest.fixture(scope="module")
def speech_mp4(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(tmp_path_factory.mktemp("speech") / "speech.mp4")


def test_make_speech_mp4(speech_mp4: Speech) -> None:
    assert speech_mp4.path.is_file()
    assert sorted(_stream_types(speech_mp4.path)) == ["audio", "video"]
    assert [s.text for s in speech_mp4.sentences] == DEFAULT_SENTENCES
    assert media_duration(speech_mp4.path) == pytest.approx(speech_mp4.duration, abs=0.1)
    _check_sentences(speech_mp4)
    # lead silence before the first sentence, 1.5 s pauses between them
    assert speech_mp4.sentences[0].start == pytest.approx(0.7, abs=0.05)
    for a, b in itertools.pairwise(speech_mp4.sentences):
        assert b.start - a.end == pytest.approx(1.5, abs=0.06)
    # no intermediate files left next to the output
    assert list(speech_mp4.path.parent.iterdir()) == [speech_mp4.path]


@pytest.mark.parametrize("ext", [".wav", ".mp3", ".flac", ".m4a"])
def test_make_speech_audio_only(tmp_path: Path, ext: str, speech_mp4: Speech) -> None:
    speech = make_speech(tmp_path / f"a{ext}", DEFAULT_SENTENCES[:2], video=False, pause=0.8, lead=0.3)
    assert _stream_types(speech.path) == ["audio"]
    assert media_duration(speech.path) == pytest.approx(speech.duration, abs=0.1)
    _check_sentences(speech)
    assert speech.sentences[0].start == pytest.approx(0.3, abs=0.05)
    # the same sentence lasts the same whatever the container and codec
    first = speech_mp4.sentences[0]
    assert speech.sentences[0].end - speech.sentences[0].start == pytest.approx(
        first.end - first.start, abs=0.05
    )


def test_make_long_speech(tmp_path: Path) -> None:
    speech = make_long_speech(tmp_path / "long.wav", minutes=0.5, video=False)
    assert 30.0 <= speech.duration < 36.0
    assert media_duration(speech.path) == pytest.approx(speech.duration, abs=0.1)
    assert len({s.text for s in speech.sentences}) == len(speech.sentences) >= 6
    _check_sentences(speech)


def test_make_silent_video(tmp_path: Path) -> None:
    path = make_silent_video(tmp_path / "silent.mp4", seconds=3.0)
    assert sorted(_stream_types(path)) == ["audio", "video"]
    assert media_duration(path) == pytest.approx(3.0, abs=0.1)
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-ac", "1", "-f", "s16le", "-"],
        capture_output=True,
        check=True,
    ).stdout
    assert raw and not any(raw)  # all-zero samples


def test_make_video_without_audio(tmp_path: Path) -> None:
    path = make_video_without_audio(tmp_path / "noaudio.mp4")
    assert _stream_types(path) == ["video"]
    with pytest.raises(ValueError, match="no 'a' stream"):
        media_duration(path)


def test_make_corrupt_media(tmp_path: Path) -> None:
    path = make_corrupt_media(tmp_path / "corrupt.mp4")
    assert path.stat().st_size > 1000
    proc = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "null", "-"], capture_output=True, check=False
    )
    assert proc.returncode != 0
    assert list(tmp_path.iterdir()) == [path]


def test_make_text_file(tmp_path: Path) -> None:
    path = make_text_file(tmp_path / "video.mp4")
    assert path.read_text(encoding="utf-8").startswith("This is not a media file.")
    proc = subprocess.run(["ffprobe", "-v", "error", str(path)], capture_output=True, check=False)
    assert proc.returncode != 0


def test_make_speech_rejects_bad_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        make_speech(tmp_path / "x.wav", video=True)
    with pytest.raises(ValueError):
        make_speech(tmp_path / "x.xyz", video=False)


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("The quick brown fox.", "the quick brown fox", 0.0),
        ("Hello,  world!", "hello world", 0.0),
        ("I have 21 cats.", "I have twenty-one cats", 0.0),
        ("It costs 3.5 dollars", "it costs three point five dollars", 0.0),
        ("Don't stop", "dont stop", 0.0),
        ("a b c d", "a x c d", 0.25),  # substitution
        ("a b c d", "a c d", 0.25),  # deletion
        ("a b c d", "a b c d e f", 0.5),  # insertions
        ("a b", "", 1.0),
        ("", "", 0.0),
        ("", "something", 1.0),
    ],
)
def test_word_error_rate(reference: str, hypothesis: str, expected: float) -> None:
    assert word_error_rate(reference, hypothesis) == pytest.approx(expected)


def test_normalize_text() -> None:
    assert normalize_text("It's 1,250 km, O.K.?") == [
        "its",
        "one",
        "thousand",
        "two",
        "hundred",
        "fifty",
        "km",
        "o",
        "k",
    ]


@pytest.mark.skipif(
    not (HAS_TRANSFORMERS and HAS_TORCH), reason="torch/transformers not installed: no tiny wav2vec2"
)
def test_tiny_wav2vec2(tmp_path: Path) -> None:
    from transformers import Wav2Vec2ForCTC, Wav2Vec2Processor

    from tests.tiny_models import CHAR_VOCAB, make_tiny_wav2vec2

    out = make_tiny_wav2vec2(tmp_path / "w2v")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "vocab.json"} <= files
    assert sum(p.stat().st_size for p in out.iterdir()) < 2 * 1024 * 1024
    assert [p.name for p in tmp_path.iterdir()] == ["w2v"]

    processor = Wav2Vec2Processor.from_pretrained(str(out))
    model = Wav2Vec2ForCTC.from_pretrained(str(out))
    vocab = processor.tokenizer.get_vocab()
    assert all(k == k.lower() for k in vocab)
    assert set(CHAR_VOCAB) <= set(vocab)
    assert processor.tokenizer.word_delimiter_token == "|"

    import torch

    with torch.inference_mode():
        logits = model(torch.zeros(1, 16000)).logits
    assert logits.shape[-1] == len(vocab)
    assert 45 <= logits.shape[1] <= 50  # ~one frame per 20 ms


@pytest.mark.skipif(importlib.util.find_spec("whisperx") is None, reason="whisperx not installed")
def test_tiny_wav2vec2_aligns_with_offline_punkt(tmp_path: Path) -> None:
    """The tiny model and the generated punkt_tab are enough for whisperx.align."""
    import nltk
    import whisperx

    from gpu_runner.nltk_data import ensure_punkt_tab
    from tests.tiny_models import make_tiny_wav2vec2

    root = ensure_punkt_tab(tmp_path / "nltk_data")
    assert ensure_punkt_tab(root) == root  # idempotent
    speech = make_speech(tmp_path / "s.wav", DEFAULT_SENTENCES[:2], video=False)
    saved = list(nltk.data.path)
    nltk.data.path[:] = [str(root)]
    try:
        model, meta = whisperx.load_align_model(
            language_code="en", device="cpu", model_name=str(make_tiny_wav2vec2(tmp_path / "w2v"))
        )
        audio = whisperx.load_audio(str(speech.path))
        segment = {"start": 0.0, "end": speech.duration, "text": " " + speech.text}
        result = whisperx.align([segment], model, meta, audio, "cpu")
    finally:
        nltk.data.path[:] = saved
    # punkt split the segment into its two sentences (the first keeps the segment's
    # leading space: whisperx does not strip sentence texts)
    assert [s["text"].strip() for s in result["segments"]] == DEFAULT_SENTENCES[:2]
    words = result["word_segments"]
    assert [w["word"] for w in words] == speech.text.split()
    for w in words:
        assert 0.0 <= w["start"] <= w["end"] <= speech.duration


# --- vsrt_service.jobs.media on ordinary files -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "video", "demuxer"),
    [
        ("talk.mp4", True, "mov"),
        ("talk.mkv", True, "matroska"),
        ("talk.wav", False, "wav"),
        ("talk.mp3", False, "mp3"),
        ("talk.ogg", False, "ogg"),
        ("talk.opus", False, "ogg"),
        ("talk.flac", False, "flac"),
        ("talk.m4a", False, "mov"),
        ("talk.webm", False, "matroska"),
        ("talk.ts", False, "mpegts"),
    ],
)
async def test_ordinary_media_still_extracts(tmp_path: Path, name: str, video: bool, demuxer: str) -> None:
    # A folder whose name ffmpeg would otherwise read as a protocol and a sequence pattern.
    folder = tmp_path / "odd: name %03d"
    speech = await asyncio.to_thread(make_speech, folder / name, LONG_SENTENCES[:1], video=video, lead=0.3)
    out = folder / "audio.wav"
    info = await extract_audio(speech.path, out)
    assert info.has_audio and info.demuxer == demuxer and demuxer in ALLOWED_FORMATS
    seconds = await asyncio.to_thread(wav_seconds, out)
    assert seconds == pytest.approx(speech.duration, abs=0.15)
    assert audio_is_complete(seconds, info)
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, "audio.wav"])


def test_wav_seconds_counts_what_is_on_disk(tmp_path: Path) -> None:
    """A truncated WAV keeps the header of the whole file: only the bytes on disk count."""
    wav = make_speech(tmp_path / "s.wav", DEFAULT_SENTENCES[:2], video=False).path
    whole = wav_seconds(wav)
    assert whole is not None and whole == pytest.approx(media_duration(wav), abs=0.01)
    data = wav.read_bytes()
    wav.write_bytes(data[: len(data) // 2])
    half = wav_seconds(wav)
    assert half is not None and half == pytest.approx(whole / 2, abs=0.05)
    info = MediaInfo(duration=whole + 0.5, has_audio=True, format_name="wav")
    assert audio_is_complete(whole, info) and not audio_is_complete(half, info)
    wav.write_bytes(b"RIFF")
    assert wav_seconds(wav) is None and not audio_is_complete(None, info)
    assert wav_seconds(tmp_path / "missing.wav") is None
