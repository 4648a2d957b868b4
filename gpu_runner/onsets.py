"""Speech boundaries to 10 ms: the VAD's regions, refined with short-time energy.

A VAD decides per frame of 17-32 ms, with thresholds and smoothing that put its boundaries up
to a few hundred ms off the real onset and offset. Near each boundary the energy contour says
where the sound really starts and stops, so each boundary is moved there, within a window
around the VAD's, and only when the contrast between speech and the local floor is clear.
Pure numpy; the runner calls it after every split.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16000
#: Energy frames of 10 ms: the resolution of the refined boundaries.
FRAME = 0.01
#: How far (s) from the VAD's boundary the real one is looked for.
WINDOW = 0.25
#: Energies are clipped to this floor (dB full scale): digital silence is not -inf.
FLOOR_DB = -80.0
#: Below this contrast (dB) between the region's speech and the silence around a boundary
#: (music, loud noise), the VAD's boundary is kept.
MIN_CONTRAST_DB = 12.0
#: A quiet stretch this long (s) inside a region is a pause between utterances, not a gap
#: between words or a stop consonant's closure.
MIN_PAUSE = 0.25
#: Where between the floor and the speech level the threshold lies (0 floor, 1 speech).
THRESHOLD_AT = 0.2

Region = tuple[float, float]


def frame_energy(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, frame: float = FRAME) -> np.ndarray:
    """RMS level in dB full scale of each `frame` s of `audio` (the last frame zero-padded)."""
    n = max(1, round(sample_rate * frame))
    count = -(-len(audio) // n)
    padded = np.zeros(count * n, dtype=np.float64)
    padded[: len(audio)] = audio
    rms = np.sqrt(np.mean(padded.reshape(count, n) ** 2, axis=1))
    return np.maximum(20 * np.log10(np.maximum(rms, 1e-12)), FLOOR_DB)


def refine(
    audio: np.ndarray,
    regions: list[Region],
    sample_rate: int = SAMPLE_RATE,
    window: float = WINDOW,
) -> list[Region]:
    """`regions` (in order, not overlapping) with each onset and offset moved to where the
    energy crosses a threshold set between the local floor and the region's speech level:
    inward as far as the region is quiet, outward at most `window` s and never into a
    neighbour region; a region is also cut at each pause inside it of `MIN_PAUSE` s or more
    (a VAD's smoothing bridges short pauses between sentences)."""
    if not regions:
        return []
    energy = frame_energy(audio, sample_rate)
    last = len(energy)
    reach = round(window / FRAME)
    out: list[Region] = []
    for k, (start, end) in enumerate(regions):
        s = min(_frame(start), last - 1)
        e = min(max(s + 1, _frame(end)), last)
        lo = _frame(out[-1][1]) if out else 0
        hi = _frame(regions[k + 1][0]) if k + 1 < len(regions) else last
        level = float(np.percentile(energy[s:e], 90))
        # Each floor is taken over twice the window, so that it holds some silence even when
        # the VAD's boundary is a whole window off.
        on_threshold = _threshold(energy, (max(lo, s - 2 * reach), min(e, s + 2 * reach)), level)
        onset = _onset(energy, s, max(lo, s - reach), e, on_threshold)
        off_threshold = _threshold(energy, (max(onset, e - 2 * reach), min(hi, e + 2 * reach)), level)
        offset = _offset(energy, onset + 1, e, min(hi, e + reach), off_threshold)
        if offset <= onset:
            out.append((start, end))
            continue
        known = [t for t in (on_threshold, off_threshold) if t is not None]
        pieces = _cut_at_pauses(energy, onset, offset, min(known)) if known else [(onset, offset)]
        out.extend((round(a * FRAME, 3), round(b * FRAME, 3)) for a, b in pieces)
    return out


def _cut_at_pauses(energy: np.ndarray, onset: int, offset: int, threshold: float) -> list[tuple[int, int]]:
    """[onset, offset) split at every run of quiet frames of `MIN_PAUSE` s or more."""
    need = round(MIN_PAUSE / FRAME)
    quiet = energy[onset:offset] < threshold
    pieces: list[tuple[int, int]] = []
    begin, i = onset, 0
    while i < len(quiet):
        j = i
        while j < len(quiet) and quiet[j]:
            j += 1
        if j - i >= need and 0 < i and j < len(quiet):
            pieces.append((begin, onset + i))
            begin = onset + j
        i = j + 1
    pieces.append((begin, offset))
    return [(a, b) for a, b in pieces if b - a >= 2]


def _frame(t: float) -> int:
    return max(0, round(t / FRAME))


def _threshold(energy: np.ndarray, span: tuple[int, int], speech_level: float) -> float | None:
    """The level that separates speech from the floor in energy[a:b], or None without contrast."""
    a, b = span
    if b <= a:
        return None
    floor = float(np.percentile(energy[a:b], 10))
    if speech_level - floor < MIN_CONTRAST_DB:
        return None
    return floor + THRESHOLD_AT * (speech_level - floor)


def _onset(energy: np.ndarray, s: int, first: int, anchor_by: int, threshold: float | None) -> int:
    """The first frame of the sound in the VAD's region (frame `s` if unclear): the first
    loud frame in [s, anchor_by) (two in a row, so a click does not count), then back while
    the frames before it stay loud (a one-frame dip allowed), down to frame `first`."""
    if threshold is None:
        return s
    loud = energy >= threshold
    anchor = next((i for i in range(s, anchor_by) if loud[i] and i + 1 < len(loud) and loud[i + 1]), None)
    if anchor is None:
        return s
    i = anchor
    while i - 1 >= first and (loud[i - 1] or (i - 2 >= first and loud[i - 2])):
        i -= 1
    return i


def _offset(energy: np.ndarray, anchor_from: int, e: int, stop: int, threshold: float | None) -> int:
    """The frame just after the sound in the VAD's region (frame `e` if unclear): the last
    loud frame in [anchor_from, e), then on while the frames after it stay loud, up to `stop`."""
    if threshold is None:
        return e
    loud = energy >= threshold
    anchor = next((i for i in range(e - 1, anchor_from - 1, -1) if loud[i] and i >= 1 and loud[i - 1]), None)
    if anchor is None:
        return e
    i = anchor
    while i + 1 < stop and (loud[i + 1] or (i + 2 < stop and loud[i + 2])):
        i += 1
    return i + 1
