"""Subtitle quality against known speech: vsrt beside faster-whisper and plain WhisperX.

On a set of clips whose sentence onsets and offsets are known (espeak-ng speech assembled
sample by sample by `tests.media.make_speech`, re-measured on the decoded file; and a real
recorded phone call with hand-annotated utterance times), each system transcribes with the
same tiny.en model (CTranslate2 int8 on the CPU, the same thread count), models loaded and
warmed up before timing:

- `vsrt`: a job through `Service` on whatever vsrt code is on PYTHONPATH; its cues are the
  subtitles it writes (`subtitles.json`). Offline there is no wav2vec2 aligner, so the job
  runs with `align: false`: Whisper's own word times, exactly what a default job does when the
  aligner cannot be downloaded (without waiting for that download to fail).
- `faster-whisper`: `WhisperModel.transcribe(audio, word_timestamps=True, vad_filter=True)`,
  its segments as cues (what its users write to SRT).
- `whisperx`: `load_model(...).transcribe(audio, batch_size=8)`, its segments as cues; no
  aligner offline, so no `whisperx.align`.

Per clip and system: WER; per sentence the cue start error (start of the first cue holding
any of its words minus its onset) and end error (end of the last such cue minus its offset),
words matched by a difflib alignment of cue words to the true words; median/p90 of |start|,
the share within 0.3 s, median end error signed and absolute, p90 |end|; subtitle rule
breaks; wall time. Then the issue's targets, pass/fail per clip, for vsrt. It asserts nothing;
the figures go to bench/out/quality.json.

    .venv/bin/python -m bench.quality [--systems vsrt,faster-whisper,whisperx] [--clips a,b]
                                      [--vad silero|pyannote] [--wait-idle S] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import time
import wave
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import (
    COMPUTE_TYPE,
    CPU_THREADS,
    LANGUAGE,
    MEDIA,
    OUT,
    ROOT,
    add_wait_idle,
    cached_speech,
    other_test_runs,
    save_and_print,
    tiny_en_dir,
    wait_until_idle,
)
from tests.media import LONG_SENTENCES, Sentence, Speech, make_speech, normalize_text, word_error_rate
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue, round_ms
from vsrt_service.core.vocab import VadMethod

RESULT_FILE = OUT / "quality.json"
SYSTEMS = ("vsrt", "faster-whisper", "whisperx")
BATCH_SIZE = 8

#: The subtitle rules every system's cues are checked against (vsrt's defaults).
RULES = CueSettings()
#: A silence at least this long between sentences must have no text on screen at its middle.
LONG_SILENCE = 2.0
#: "Within" for the share of sentences whose cue starts near the speech.
NEAR = 0.3

#: The issue's targets for vsrt, on every clip.
TARGET_START_MEDIAN = 0.10
TARGET_START_SHARE = 0.95
TARGET_END_MEDIAN = 0.30

log = logging.getLogger("bench.quality")


# --- clips -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Clip:
    """One benchmark clip: how to make it (cached) and what it exercises."""

    name: str
    about: str
    make: Callable[[Path], Speech]
    timing: str = "measured"  # how the sentence times are known


def _speech(sentences: Sequence[str], **kw: Any) -> Callable[[Path], Speech]:
    return lambda out: make_speech(out, list(sentences), video=False, **kw)


def _cycle(values: Sequence[float], n: int) -> list[float]:
    return [values[i % len(values)] for i in range(n)]


_S = LONG_SENTENCES
_HYPHEN = "We run a twenty-four-hour service on weekdays."
_DIALOGUE = [
    "Did you see the match last night?",
    "No, I had to work late again.",
    "That is a shame, it was a great game.",
    "Who won in the end?",
    "The home team, by two goals.",
    "I will watch the highlights tonight.",
    "Let me know what you think of the second goal.",
    "Sure, I will call you tomorrow.",
    "Bring your brother to the next one.",
    "He would love that, thank you.",
]
PYANNOTE_SAMPLE = "pyannote/audio/sample/sample"


def _real_call(out: Path) -> Speech:
    """pyannote.audio's sample: a real two-person phone call (30 s, 16 kHz) with a hand-made
    transcript and utterance times (`sample.stm`), copied from the installed package."""
    import pyannote.audio

    base = Path(pyannote.audio.__file__).parent / "sample" / "sample"
    shutil.copyfile(base.with_suffix(".wav"), out)
    sentences = []
    for line in base.with_suffix(".stm").read_text().splitlines():
        _uri, _channel, _speaker, start, end, *words = line.split()
        sentences.append(Sentence(text=" ".join(words), start=float(start), end=float(end)))
    with wave.open(str(out), "rb") as w:
        duration = w.getnframes() / w.getframerate()
    return Speech(path=out, sentences=sentences, duration=round(duration, 4))


CLIPS: dict[str, Clip] = {
    c.name: c
    for c in [
        Clip(
            "us_175_short",
            "en-us, 175 wpm, pauses 0.3-0.5 s",
            _speech(_S[0:10], voice="en-us", speed=175, pauses=_cycle([0.3, 0.4, 0.5], 9)),
        ),
        Clip(
            "gb_130_short",
            "en-gb, 130 wpm, pauses 0.3-0.5 s",
            _speech(_S[10:18], voice="en-gb", speed=130, pauses=_cycle([0.5, 0.3, 0.4], 7)),
        ),
        Clip(
            "f3_150_mixed",
            "en-us+f3 (female), 150 wpm, pauses 0.4-2.5 s",
            _speech(_S[18:27], voice="en-us+f3", speed=150, pauses=_cycle([0.4, 1.0, 2.5, 0.6], 8)),
        ),
        Clip(
            "pauses_long",
            "en-us, 150 wpm, pauses 6-9 s",
            _speech(_S[27:30] + _S[0:2], voice="en-us", speed=150, pauses=[6.0, 9.0, 7.0, 8.0]),
        ),
        Clip(
            "one_word",
            "en-gb, 175 wpm; a hyphenated word, then 'Weekdays.' and 7 s of silence",
            _speech(
                [_S[3], _HYPHEN, "Which days?", "Weekdays.", _S[8], _S[12]],
                voice="en-gb",
                speed=175,
                pauses=[0.5, 0.8, 0.4, 7.0, 0.5],
            ),
        ),
        Clip(
            "dialogue",
            "two voices alternating (en-us / en-gb+f3), 150 wpm, gaps 0.2-0.6 s",
            _speech(
                _DIALOGUE,
                speed=150,
                voices=["en-us" if i % 2 == 0 else "en-gb+f3" for i in range(len(_DIALOGUE))],
                pauses=_cycle([0.3, 0.5, 0.2, 0.6], len(_DIALOGUE) - 1),
            ),
        ),
        Clip(
            "noise_music",
            "en-us, 150 wpm; pink noise or a plucked tune (2-4 s) inside 3-5 s pauses",
            _speech(
                _S[5:11],
                voice="en-us",
                speed=150,
                pauses=[3.0, 4.0, 5.0, 3.5, 4.5],
                fillers=["noise", "music", "noise", "music", "noise"],
            ),
        ),
        Clip(
            "real_call",
            "real phone call, two speakers (pyannote.audio's sample.wav)",
            _real_call,
            timing="hand-annotated (sample.stm)",
        ),
    ]
}


def prepare_clips(names: Sequence[str]) -> dict[str, Speech]:
    """Each clip from the cache under bench/out/media/, made when missing."""
    return {name: cached_speech(MEDIA / f"quality-{name}.wav", CLIPS[name].make) for name in names}


# --- metrics (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceError:
    """How one sentence's cues sit against its speech (None: no cue holds any of its words)."""

    index: int
    onset: float
    offset: float
    start_error: float | None
    end_error: float | None
    first_cue: int | None
    last_cue: int | None


@dataclass(frozen=True)
class Break:
    """One broken subtitle rule: its kind, the cue (index) and what was seen."""

    kind: str
    cue: int
    detail: str


def match_words(truth: Sequence[str], hypothesis: Sequence[str]) -> dict[int, int]:
    """Truth word index -> hypothesis word index, from a difflib alignment of the two word
    lists: equal runs word for word, substituted runs pairwise as far as both go."""
    matcher = difflib.SequenceMatcher(None, list(truth), list(hypothesis), autojunk=False)
    pairs: dict[int, int] = {}
    for op, i0, i1, j0, j1 in matcher.get_opcodes():
        if op in ("equal", "replace"):
            for k in range(min(i1 - i0, j1 - j0)):
                pairs[i0 + k] = j0 + k
    return pairs


def sentence_errors(sentences: Sequence[Sentence], cues: Sequence[Cue]) -> list[SentenceError]:
    """Per sentence: start of the first cue holding any of its words minus its onset, end
    of the last such cue minus its offset (normalized words, matched by `match_words`)."""
    truth = [(w, k) for k, s in enumerate(sentences) for w in normalize_text(s.text)]
    hyp = [(w, c) for c, cue in enumerate(cues) for w in normalize_text(cue.text)]
    pairs = match_words([w for w, _ in truth], [w for w, _ in hyp])
    held: dict[int, list[int]] = {}
    for ti, hi in pairs.items():
        held.setdefault(truth[ti][1], []).append(hyp[hi][1])
    out = []
    for k, s in enumerate(sentences):
        found = held.get(k)
        if not found:
            out.append(SentenceError(k, s.start, s.end, None, None, None, None))
            continue
        first, last = min(found), max(found)
        out.append(
            SentenceError(
                k,
                s.start,
                s.end,
                round(cues[first].start - s.start, 3),
                round(cues[last].end - s.end, 3),
                first,
                last,
            )
        )
    return out


def p90(values: Sequence[float]) -> float:
    """The nearest-rank 90th percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def timing_stats(errors: Sequence[SentenceError]) -> dict[str, Any]:
    """Median/p90 of |start error|, the share of all sentences starting within NEAR (a
    sentence no cue holds counts as outside), median end error signed and |.|, p90 |end|."""
    starts = [abs(e.start_error) for e in errors if e.start_error is not None]
    ends = [e.end_error for e in errors if e.end_error is not None]

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "sentences": len(errors),
        "missed": len(errors) - len(starts),
        "start_abs_median": r(statistics.median(starts)) if starts else None,
        "start_abs_p90": r(p90(starts)) if starts else None,
        "start_within": round(sum(s <= NEAR for s in starts) / len(errors), 3) if errors else None,
        "end_median": r(statistics.median(ends)) if ends else None,
        "end_abs_median": r(statistics.median([abs(e) for e in ends])) if ends else None,
        "end_abs_p90": r(p90([abs(e) for e in ends])) if ends else None,
    }


def silences(sentences: Sequence[Sentence], duration: float) -> list[tuple[float, float]]:
    """The stretches without speech longer than LONG_SILENCE (before, between, after)."""
    bounds = [0.0, *(t for s in sentences for t in (s.start, s.end)), duration]
    out = []
    for i in range(0, len(bounds), 2):
        lo, hi = bounds[i], bounds[i + 1]
        # utterances may overlap (real speech): a gap starts after everything before it
        lo = max([lo, *(s.end for s in sentences if s.start <= lo)])
        if hi - lo > LONG_SILENCE:
            out.append((lo, hi))
    return out


def rule_breaks(
    cues: Sequence[Cue], sentences: Sequence[Sentence], duration: float, rules: CueSettings = RULES
) -> list[Break]:
    """Every rule a list of cues breaks: lines too long or too many, cues too long or too
    short (unless the next cue or the end of the media leaves no room), overlaps, gaps
    under the minimum (2 frames), a line starting with "-" (a speaker mark), and text on
    screen at the middle of a silence longer than LONG_SILENCE."""
    out: list[Break] = []
    min_gap = round_ms(rules.min_gap_seconds)
    for i, cue in enumerate(cues):
        lines = cue.text.split("\n")
        for line in lines:
            if len(line) > rules.max_line_chars:
                out.append(Break(f"line>{rules.max_line_chars}", i, f"{len(line)} chars: {line!r}"))
            if line.lstrip().startswith("-"):
                out.append(Break("dash", i, repr(line)))
        if len(lines) > rules.max_lines:
            out.append(Break(f">{rules.max_lines} lines", i, f"{len(lines)} lines"))
        length = round_ms(cue.end) - round_ms(cue.start)
        if length > round_ms(rules.max_cue_seconds):
            out.append(Break(f">{rules.max_cue_seconds:g}s", i, f"{length / 1000:.3f} s"))
        if length < round_ms(rules.min_cue_seconds):
            room = round_ms(cues[i + 1].start) - min_gap if i + 1 < len(cues) else round_ms(duration)
            if room >= round_ms(cue.start) + round_ms(rules.min_cue_seconds):
                out.append(Break(f"<{rules.min_cue_seconds:g}s", i, f"{length / 1000:.3f} s"))
        if i + 1 < len(cues):
            gap = round_ms(cues[i + 1].start) - round_ms(cue.end)
            if gap < 0:
                out.append(Break("overlap", i, f"{-gap / 1000:.3f} s into the next cue"))
            elif gap < min_gap:
                out.append(Break("gap<2f", i, f"{gap / 1000:.3f} s to the next cue"))
    for lo, hi in silences(sentences, duration):
        mid = (lo + hi) / 2
        for i, cue in enumerate(cues):
            if cue.start <= mid <= cue.end:
                out.append(Break("silence", i, f"on screen at {mid:.2f} s, in silence {lo:.2f}-{hi:.2f} s"))
    return out


def evaluate(speech: Speech, cues: Sequence[Cue]) -> dict[str, Any]:
    """WER, timing figures and rule breaks of one system's cues on one clip."""
    errors = sentence_errors(speech.sentences, cues)
    breaks = rule_breaks(cues, speech.sentences, speech.duration)
    text = " ".join(c.text.replace("\n", " ") for c in cues)
    return {
        "wer": round(word_error_rate(speech.text, text), 4),
        "cues": len(cues),
        **timing_stats(errors),
        "rule_breaks": len(breaks),
        "breaks_by_kind": dict(Counter(b.kind for b in breaks)),
        "breaks": [asdict(b) for b in breaks],
        "per_sentence": [asdict(e) for e in errors],
        "cue_list": [asdict(c) for c in cues],
    }


def targets(row: dict[str, Any], peer_wers: Sequence[float]) -> dict[str, bool | None]:
    """The issue's targets for one clip's vsrt figures (None: not measurable here)."""

    def at_most(value: float | None, limit: float) -> bool | None:
        return None if value is None else value <= limit + 1e-9

    share = row["start_within"]
    return {
        f"start median <= {TARGET_START_MEDIAN:.2f}": at_most(row["start_abs_median"], TARGET_START_MEDIAN),
        f">= {TARGET_START_SHARE:.0%} within {NEAR}": None if share is None else share >= TARGET_START_SHARE,
        f"end |median| <= {TARGET_END_MEDIAN:.2f}": at_most(row["end_abs_median"], TARGET_END_MEDIAN),
        "WER <= best peer": at_most(row["wer"], min(peer_wers)) if peer_wers else None,
        "no rule broken": row["rule_breaks"] == 0,
    }


# --- systems -----------------------------------------------------------------------------


class FasterWhisper:
    """faster-whisper as its README uses it for subtitles: word timestamps and Silero VAD."""

    name = "faster-whisper"

    def __init__(self, model_dir: Path) -> None:
        from faster_whisper import WhisperModel

        self.model = WhisperModel(
            str(model_dir), device="cpu", compute_type=COMPUTE_TYPE, cpu_threads=CPU_THREADS
        )

    def cues(self, path: Path) -> list[Cue]:
        segments, _info = self.model.transcribe(
            str(path), language=LANGUAGE, word_timestamps=True, vad_filter=True
        )
        return [Cue(s.start, s.end, s.text.strip()) for s in segments if s.text.strip()]


class WhisperX:
    """Plain whisperx transcription (pyannote VAD, batched); no aligner offline."""

    name = "whisperx"

    def __init__(self, model_dir: Path) -> None:
        import torch
        import whisperx

        torch.set_num_threads(CPU_THREADS)
        self.whisperx: Any = whisperx
        self.model: Any = whisperx.load_model(
            str(model_dir),
            "cpu",
            compute_type=COMPUTE_TYPE,
            language=LANGUAGE,
            threads=CPU_THREADS,
            local_files_only=True,
        )

    def cues(self, path: Path) -> list[Cue]:
        audio = self.whisperx.load_audio(str(path))
        result = self.model.transcribe(audio, batch_size=BATCH_SIZE, language=LANGUAGE)
        return [
            Cue(float(s["start"]), float(s["end"]), str(s["text"]).strip())
            for s in result["segments"]
            if str(s["text"]).strip()
        ]


def load_peer(system: str, model_dir: Path) -> FasterWhisper | WhisperX:
    """A peer system with its model loaded (blocking)."""
    return FasterWhisper(model_dir) if system == "faster-whisper" else WhisperX(model_dir)


async def vsrt_cues(svc: Any, path: Path, options: dict[str, Any]) -> tuple[list[Cue], dict[str, Any]]:
    """One vsrt job on the file; its cues as written in subtitles.json."""
    from vsrt_service.core.formats import cues_from_json

    job = await svc.submit(path, options)
    job = await svc.wait(job.id)
    if job.status != "completed":
        raise RuntimeError(f"vsrt job {job.id} ended {job.status}: {job.error_code} {job.error}")
    cues = cues_from_json(json.loads(await svc.subtitles(job.id, "json")))
    return cues, {"job_id": job.id, "alignment": job.alignment}


async def timed(run: Callable[[], Any]) -> tuple[Any, float]:
    """The result of a coroutine function and its wall time."""
    t0 = time.perf_counter()
    result = await run()
    return result, round(time.perf_counter() - t0, 3)


# --- report ------------------------------------------------------------------------------


def _f(value: float | None, spec: str, width: int) -> str:
    return ("-" if value is None else f"{value:{spec}}").rjust(width)


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print()
    print(
        f"model: tiny.en {cfg['compute_type']} cpu, {cfg['threads']} threads; vsrt options "
        f"{cfg['vsrt_options']}; whisperx without aligner (none offline), segments as cues; "
        f"faster-whisper word_timestamps + vad_filter, segments as cues"
    )
    print(
        "start/end: cue start - sentence onset, cue end - sentence offset (s); "
        f"'<=0.3': share of sentences starting within {NEAR} s; miss: sentences no cue holds"
    )
    print()
    head = (
        f"{'clip':14}{'system':16}{'WER':>7}{'sent':>5}{'miss':>5}{'st|med|':>8}{'st p90':>8}"
        f"{'<=0.3':>7}{'end med':>8}{'end|med|':>9}{'end p90':>8}{'cues':>5}{'rules':>6}{'wall s':>8}"
    )
    print(head)
    print("-" * len(head))
    for name, clip in report["clips"].items():
        for system, row in clip["systems"].items():
            print(
                f"{name:14}{system:16}{row['wer']:>7.3f}{row['sentences']:>5}{row['missed']:>5}"
                f"{_f(row['start_abs_median'], '.2f', 8)}{_f(row['start_abs_p90'], '.2f', 8)}"
                f"{_f(row['start_within'], '.0%', 7)}{_f(row['end_median'], '+.2f', 8)}"
                f"{_f(row['end_abs_median'], '.2f', 9)}{_f(row['end_abs_p90'], '.2f', 8)}"
                f"{row['cues']:>5}{row['rule_breaks']:>6}{row['seconds']:>8.2f}"
            )
    print()
    print("rule breaks by kind:")
    for name, clip in report["clips"].items():
        for system, row in clip["systems"].items():
            if row["breaks_by_kind"]:
                kinds = ", ".join(f"{k} x{n}" for k, n in sorted(row["breaks_by_kind"].items()))
                print(f"  {name:14}{system:16}{kinds}")
    if report["targets"]:
        print()
        names = list(next(iter(report["targets"].values())))
        print(f"vsrt targets  {''.join(f'{n:>24}' for n in names)}")
        for clip, marks in report["targets"].items():
            cells = "".join(f"{('-' if v is None else 'pass' if v else 'FAIL'):>24}" for v in marks.values())
            print(f"{clip:14}{cells}")
    print()
    for name, clip in report["clips"].items():
        print(f"{name:14}{clip['duration']:6.1f} s  {clip['about']}; times {clip['timing']}")
    m = report["machine"]
    print(
        f"machine: {m['cpus']} CPUs, other pytest runs at start {m['pytest_at_start']}, "
        f"at end {m['pytest_at_end']}; load average {m['loadavg_start']} -> {m['loadavg_end']}"
    )
    print(f"figures written to {report['out']}")


# --- main --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    clips = await asyncio.to_thread(prepare_clips, args.clips)
    warmup = await asyncio.to_thread(
        cached_speech, MEDIA / "quality-warmup.wav", lambda p: make_speech(p, video=False)
    )
    model_dir = tiny_en_dir()
    options: dict[str, Any] = {"align": False}
    if args.vad:
        options["vad_method"] = args.vad

    peers: dict[str, FasterWhisper | WhisperX] = {}
    for system in args.systems:
        if system != "vsrt":
            print(f"loading {system} ...", flush=True)
            peer = await asyncio.to_thread(load_peer, system, model_dir)
            await asyncio.to_thread(peer.cues, warmup.path)  # first-call costs
            peers[system] = peer

    from vsrt_service.core.config import load_settings
    from vsrt_service.service import Service

    data_dir = OUT / "quality-work" / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    settings = load_settings(
        env={},
        data_dir=data_dir,
        transcription={"default_model": "tiny.en", "default_language": LANGUAGE},
        runners={"devices": ["cpu"], "compute_type": COMPUTE_TYPE, "cpu_threads": 0},
    )
    results: dict[str, Any] = {}
    async with Service(settings) as svc:
        if "vsrt" in args.systems:
            await svc.pool.wait_ready(settings.runners.start_timeout)
            print("warming up the vsrt runner with a short job ...", flush=True)
            await vsrt_cues(svc, warmup.path, options)
        idle = await wait_until_idle(args.wait_idle)
        machine: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "idle_at_start": idle,
            "pytest_at_start": other_test_runs(),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
        for name, speech in clips.items():
            clip = CLIPS[name]
            entry: dict[str, Any] = {
                "about": clip.about,
                "timing": clip.timing,
                "file": str(speech.path.relative_to(ROOT)),
                "duration": speech.duration,
                "sentences": [asdict(s) for s in speech.sentences],
                "systems": {},
            }
            for system in args.systems:
                extra: dict[str, Any] = {}
                if system == "vsrt":
                    (cues, extra), seconds = await timed(partial(vsrt_cues, svc, speech.path, options))
                else:
                    run = partial(asyncio.to_thread, peers[system].cues, speech.path)
                    cues, seconds = await timed(run)
                row = {**evaluate(speech, cues), "seconds": seconds, **extra}
                entry["systems"][system] = row
                print(
                    f"{name}: {system} {seconds:.2f} s, WER {row['wer']:.3f}, "
                    f"start |med| {row['start_abs_median']}, end med {row['end_median']}, "
                    f"rule breaks {row['rule_breaks']}",
                    flush=True,
                )
            results[name] = entry
        machine["pytest_at_end"] = other_test_runs()
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    marks: dict[str, Any] = {}
    if "vsrt" in args.systems:
        for name, entry in results.items():
            rows = entry["systems"]
            peer_wers = [r["wer"] for s, r in rows.items() if s != "vsrt"]
            marks[name] = targets(rows["vsrt"], peer_wers)
    return {
        "config": {
            "model": "tiny.en",
            "compute_type": COMPUTE_TYPE,
            "threads": CPU_THREADS,
            "batch_size": BATCH_SIZE,
            "systems": list(args.systems),
            "vsrt_options": options,
            "python": platform.python_version(),
        },
        "machine": machine,
        "clips": results,
        "targets": marks,
    }


def _names(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        names = [v.strip() for v in value.split(",") if v.strip()]
        wrong = [n for n in names if n not in choices]
        if wrong or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (got {value!r})")
        return names

    return parse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--systems", type=_names(SYSTEMS), default=list(SYSTEMS), help="comma-separated")
    parser.add_argument("--clips", type=_names(list(CLIPS)), default=list(CLIPS), help="comma-separated")
    parser.add_argument(
        "--vad",
        choices=[str(m) for m in VadMethod],
        default=None,
        help="vsrt's vad_method (default: its own)",
    )
    add_wait_idle(parser)
    parser.add_argument(
        "--out", type=Path, default=RESULT_FILE, help=f"JSON file (default {RESULT_FILE.relative_to(ROOT)})"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = asyncio.run(bench(args))
    save_and_print({**report, "out": str(args.out)}, args.out, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
