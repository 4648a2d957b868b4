"""Voice-activity backends and speech boundaries: the energy refinement on signals with known
boundaries, the shared chunk merge, Silero in-process on espeak speech, and both backends
through a real runner."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from gpu_runner import onsets
from gpu_runner import vad as vads
from tests.media import LONG_SENTENCES, Speech, make_speech
from tests.test_runner import RawRunner, runner  # noqa: F401  (the fixture)
from vsrt_service.core import protocol as p
from vsrt_service.core.vocab import VadMethod
from vsrt_service.jobs.media import extract_audio

SR = 16000


def tone(seconds: float, level_db: float, freq: float = 220.0) -> np.ndarray:
    t = np.arange(round(seconds * SR)) / SR
    return (10 ** (level_db / 20) * np.sqrt(2) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise(seconds: float, level_db: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (10 ** (level_db / 20) * rng.standard_normal(round(seconds * SR))).astype(np.float32)


def bursts(layout: list[tuple[float, float]], total: float, floor_db: float | None = None) -> np.ndarray:
    """Tone bursts (-20 dBFS) at the given (start, end) seconds, over silence or a noise floor."""
    audio = noise(total, floor_db) if floor_db is not None else np.zeros(round(total * SR), np.float32)
    for start, end in layout:
        a = round(start * SR)
        audio[a : a + round((end - start) * SR)] += tone(end - start, -20)
    return audio


def assert_near(found: list[tuple[float, float]], truth: list[tuple[float, float]], tol: float) -> None:
    assert len(found) == len(truth), found
    for (a, b), (ta, tb) in zip(found, truth, strict=True):
        assert abs(a - ta) <= tol and abs(b - tb) <= tol, f"{(a, b)} vs {(ta, tb)}"


def test_every_vad_method_has_a_backend() -> None:
    assert set(VadMethod) == set(vads.BACKENDS)


@pytest.mark.parametrize("floor_db", [None, -60.0, -45.0])
@pytest.mark.parametrize(
    "shift",
    [(0.0, 0.0), (0.2, -0.2), (-0.2, 0.2), (0.12, 0.15), (-0.05, -0.22), (-0.45, 0.5)],
    ids=["exact", "late-early", "padded", "late-late", "early-early", "loose"],
)
def test_refine_finds_burst_boundaries_to_10_ms(floor_db: float | None, shift: tuple[float, float]) -> None:
    truth = [(1.0, 2.0), (2.6, 3.4), (5.0, 7.53)]
    audio = bursts(truth, 9.0, floor_db)
    vad = [(a + shift[0], b + shift[1]) for a, b in truth]
    assert_near(onsets.refine(audio, vad), truth, 0.011)


@pytest.mark.parametrize("floor_db", [None, -50.0])
def test_refine_cuts_a_region_at_pauses_inside_it(floor_db: float | None) -> None:
    # A VAD that bridges pauses between sentences: one region over three bursts. The 0.4 s
    # pause is cut; the 0.15 s one (a gap between words) is not.
    audio = bursts([(1.0, 2.0), (2.4, 3.0), (3.15, 4.0)], 5.0, floor_db)
    assert_near(onsets.refine(audio, [(0.9, 4.3)]), [(1.0, 2.0), (2.4, 4.0)], 0.011)


def test_refine_never_crosses_into_a_neighbour() -> None:
    # 120 ms apart: the window around each boundary reaches the other burst.
    truth = [(1.0, 2.0), (2.12, 3.0)]
    audio = bursts(truth, 4.0, -60.0)
    found = onsets.refine(audio, [(1.1, 2.05), (2.1, 2.9)])
    assert found[0][1] <= found[1][0]
    assert_near(found, truth, 0.011)


def test_refine_keeps_the_vad_boundary_without_contrast() -> None:
    # Speech-level noise throughout (music, a crowd): nothing to refine against.
    audio = noise(4.0, -20.0)
    assert onsets.refine(audio, [(1.0, 2.0)]) == [(1.0, 2.0)]
    # A region beyond the end of the audio, and none at all.
    assert onsets.refine(audio, [(3.9, 4.2)])[0][0] == pytest.approx(3.9)
    assert onsets.refine(audio, []) == []


def test_refine_ignores_a_click_before_the_speech() -> None:
    audio = bursts([(1.0, 2.0)], 3.0, -60.0)
    audio[round(0.85 * SR) : round(0.85 * SR) + 40] = 0.5  # 2.5 ms click
    assert_near(onsets.refine(audio, [(1.1, 2.0)]), [(1.0, 2.0)], 0.011)


def test_merge_packs_regions_into_padded_chunks() -> None:
    regions = [(1.0, 3.0), (3.5, 6.0), (6.2, 9.0), (12.0, 20.0), (20.05, 21.0)]
    chunks = vads.merge(regions, 10.0, 0.2, 21.1)
    assert [c.regions for c in chunks] == [regions[:3], regions[3:]]
    assert chunks[0].start == pytest.approx(0.8) and chunks[0].end == pytest.approx(9.2)
    assert chunks[1].start == pytest.approx(11.8) and chunks[1].end == pytest.approx(21.1)
    for c in chunks:
        assert c.end - c.start <= 10.0 + 1e-9
    # Chunks a short gap apart share it: neither pads into the other.
    close = vads.merge([(0.0, 9.9), (10.0, 12.0)], 10.0, 0.2, 12.0)
    assert close[0].end == pytest.approx(9.95) and close[1].start == pytest.approx(9.95)
    assert vads.merge([], 10.0, 0.2, 5.0) == []


@pytest.fixture(scope="module")
def espeak(tmp_path_factory: pytest.TempPathFactory) -> tuple[Speech, np.ndarray]:
    """Four sentences with short and long pauses, as the 16 kHz WAV a job's split reads."""
    out = tmp_path_factory.mktemp("vad")
    speech = make_speech(out / "speech.wav", LONG_SENTENCES[:4], pause=0.6, video=False)
    with wave.open(str(speech.path), "rb") as wav:
        assert wav.getframerate() == SR and wav.getnchannels() == 1
        audio = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float32) / 32768
    return speech, audio


def test_silero_regions_refined_start_with_the_sentences(espeak: tuple[Speech, np.ndarray]) -> None:
    speech, audio = espeak
    raw = vads.factory("silero")("cpu", 0.5, 0.363)(audio, 29.0)
    regions = onsets.refine(audio, raw)
    starts = [a for a, _ in regions]
    for sentence in speech.sentences:
        # Each sentence starts a region (word gaps inside it may start more).
        nearest = min(starts, key=lambda t: abs(t - sentence.start))
        assert abs(nearest - sentence.start) <= 0.03, (sentence, regions, raw)
        # and its speech is inside the regions up to its end.
        assert any(a <= sentence.end - 0.05 and b >= sentence.end - 0.03 for a, b in regions), regions
    for a, b in regions:
        assert any(s.start - 0.03 <= a and b <= s.end + 0.05 for s in speech.sentences), (a, b)


@pytest.mark.slow
async def test_split_on_a_runner_finds_the_sentences_with_each_backend(
    runner: RawRunner,  # noqa: F811
    tmp_path: Path,
    espeak: tuple[Speech, np.ndarray],
) -> None:
    speech, _ = espeak
    audio = tmp_path / "audio.wav"
    await extract_audio(speech.path, audio)
    for method in VadMethod:
        await runner.send(p.Split(id=method, audio_path=str(audio), vad=method, chunk_size=8))
        (done,) = await runner.until_done(method)
        assert isinstance(done, p.Result), done
        regions = [(r["start"], r["end"]) for r in done.data["speech"]]
        chunks = [(c["start"], c["end"]) for c in done.data["segments"]]
        for sentence in speech.sentences:
            assert min(abs(a - sentence.start) for a, _ in regions) <= 0.03, (method, sentence, regions)
            assert min(abs(b - sentence.end) for _, b in regions) <= 0.05, (method, sentence, regions)
        for a, b in regions:
            assert any(s.start - 0.03 <= a and b <= s.end + 0.05 for s in speech.sentences), (method, a, b)
            assert any(ca <= a and b <= cb for ca, cb in chunks), (method, a, b, chunks)
        assert all(cb - ca <= 8.0 for ca, cb in chunks) and len(chunks) >= 2, (method, chunks)
