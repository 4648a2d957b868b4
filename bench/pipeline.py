"""End-to-end cost of vsrt's pipeline against plain WhisperX on the same audio and model.

What it measures, in one process and one run, on the same file (minutes of espeak-ng speech
with pauses from `tests.media.make_long_speech`, an mp4 by default):

(a) plain WhisperX, called in-process the way its README does it: `whisperx.load_audio`,
    `model.transcribe(audio, batch_size=8, language="en")`, then `whisperx.align(...)`.
    The tiny.en model (CTranslate2, int8) and the aligner are loaded before the
    clock starts, and a short clip is run through once so first-call costs are paid.
(b) a vsrt job through the embeddable `Service`: its runner subprocess is started and warmed
    up by a short job first (whisperx imported, tiny.en, the VAD and the aligner loaded and
    cached in the runner), then the wall time from `submit` to `wait` returning: extract,
    split, transcribe, align and srt, with every store write and event on the way.

Both sides use the same batch size (vsrt's `transcription.batch_size`), compute type (int8
on CPU), CPU threads (vsrt's default for one CPU runner, for CTranslate2 and torch), VAD
thresholds (onset 0.5, offset 0.363, 30 s chunks) and the same tiny random wav2vec2 aligner
(tests/tiny_models.py). Plain whisperx uses its default VAD (pyannote); vsrt uses the one
`--vad` names (default: vsrt's configured default), so the difference is the VAD's cost
plus what vsrt adds: a subprocess, JSON-line IPC, ffmpeg extraction to a WAV file, SQLite
checkpoints and events per segment, cue building and three subtitle files. The target
(issue 10) is a ratio b/a of at most 0.60 with vsrt's default VAD, at equal or better WER.

It prints figures and asserts nothing. With `--repeat N` the two sides alternate (a b, b a,
...) and medians are reported. The figures also go to bench/out/pipeline.json. CPU seconds
are counted per side (this process and its children, plus the runner for (b)), and so is
the CPU time other processes took on the machine meanwhile ("foreign"), since a busy
machine skews wall times.

    .venv/bin/python -m bench.pipeline [--minutes 5] [--repeat 1] [--wav] [--wait-idle 600]
                                       [--vad silero|pyannote]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    COMPUTE_TYPE,
    CPU_THREADS,
    LANGUAGE,
    OUT,
    ROOT,
    SAMPLE_RATE,
    add_wait_idle,
    cached_speech,
    other_test_runs,
    save_and_print,
    tiny_en_dir,
    wait_until_idle,
)
from tests.media import Speech, make_long_speech, make_speech, word_error_rate
from vsrt_service.core.config import TranscriptionSettings
from vsrt_service.core.vocab import VadMethod

RESULT_FILE = OUT / "pipeline.json"
TARGET_RATIO = 0.60
CLK_TCK = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("bench.pipeline")


# --- figures -----------------------------------------------------------------------------


@dataclass
class Cpu:
    """CPU seconds: the measured side's own, and everyone else's on the machine meanwhile."""

    own: float = 0.0
    foreign: float = 0.0


@dataclass
class Run:
    """One measured run of one side."""

    side: str
    seconds: float
    segments: int
    wer: float
    alignment: str
    phases: dict[str, float] = field(default_factory=dict)
    cpu: Cpu = field(default_factory=Cpu)
    extra: dict[str, Any] = field(default_factory=dict)


# --- the machine -------------------------------------------------------------------------


def machine_busy_seconds() -> float:
    """CPU seconds all processes have used since boot (from /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    guest = sum(ticks[8:10]) if len(ticks) > 9 else 0  # already counted in user and nice
    return (sum(ticks) - idle - guest) / CLK_TCK


def process_cpu_seconds(pid: int | None) -> float:
    """utime + stime of a live process (0 when it is gone)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    after = stat.rsplit(")", 1)[1].split()
    return (int(after[11]) + int(after[12])) / CLK_TCK


def own_cpu_seconds() -> float:
    """This process (all threads) plus its reaped children (ffmpeg)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@contextmanager
def cpu_meter(cpu: Cpu, extra_pids: Callable[[], list[int | None]] = list) -> Iterator[None]:
    own0 = own_cpu_seconds() + sum(process_cpu_seconds(p) for p in extra_pids())
    busy0 = machine_busy_seconds()
    try:
        yield
    finally:
        own = own_cpu_seconds() + sum(process_cpu_seconds(p) for p in extra_pids()) - own0
        cpu.own = round(own, 2)
        cpu.foreign = round(max(0.0, machine_busy_seconds() - busy0 - own), 2)


# --- inputs ------------------------------------------------------------------------------


def prepare_media(minutes: float, video: bool) -> tuple[Speech, Speech]:
    """The long file to measure and a short one (same container) to warm both sides up."""
    media = OUT / "media"
    ext = "mp4" if video else "wav"
    long = cached_speech(
        media / f"long-{minutes:g}m.{ext}", lambda p: make_long_speech(p, minutes, video=video)
    )
    short = cached_speech(media / f"warmup.{ext}", lambda p: make_speech(p, video=video))
    return long, short


def prepare_models(work: Path) -> tuple[Path, Path, Path]:
    """(tiny.en CTranslate2 dir, tiny wav2vec2 dir, NLTK data root)."""
    from gpu_runner.nltk_data import ensure_punkt_tab
    from tests.tiny_models import make_tiny_wav2vec2

    whisper = tiny_en_dir()
    align = make_tiny_wav2vec2(work / "tiny-wav2vec2-en", LANGUAGE)
    nltk_root = ensure_punkt_tab(work / "nltk")
    return whisper, align, nltk_root


# --- (a) plain whisperx ------------------------------------------------------------------


class PlainWhisperX:
    """whisperx as its README uses it, models loaded once up front."""

    def __init__(self, whisper_dir: Path, align_dir: Path, batch_size: int) -> None:
        import torch
        import whisperx

        torch.set_num_threads(CPU_THREADS)  # as vsrt's CPU runner does
        self.whisperx: Any = whisperx
        self.batch_size = batch_size
        self.model: Any = whisperx.load_model(
            str(whisper_dir),
            "cpu",
            compute_type=COMPUTE_TYPE,
            language=LANGUAGE,
            threads=CPU_THREADS,
            local_files_only=True,
        )
        self.align_model, self.align_metadata = whisperx.load_align_model(
            language_code=LANGUAGE, device="cpu", model_name=str(align_dir), model_cache_only=True
        )

    def run(self, speech: Speech) -> Run:
        wx = self.whisperx
        cpu = Cpu()
        with cpu_meter(cpu):
            t0 = time.perf_counter()
            audio = wx.load_audio(str(speech.path))
            t1 = time.perf_counter()
            result = self.model.transcribe(audio, batch_size=self.batch_size, language=LANGUAGE)
            t2 = time.perf_counter()
            aligned = wx.align(
                result["segments"],
                self.align_model,
                self.align_metadata,
                audio,
                "cpu",
                return_char_alignments=False,
            )
            t3 = time.perf_counter()
        text = " ".join(str(s["text"]).strip() for s in aligned["segments"])
        return Run(
            side="a",
            seconds=round(t3 - t0, 3),
            segments=len(result["segments"]),
            wer=round(word_error_rate(speech.text, text), 4),
            alignment="wav2vec2",
            phases={
                "load_audio": round(t1 - t0, 3),
                "transcribe (VAD + ASR)": round(t2 - t1, 3),
                "align": round(t3 - t2, 3),
            },
            cpu=cpu,
        )

    def vad_seconds(self, speech: Speech) -> float:
        """The VAD pass alone (inside transcribe in (a), vsrt's split phase in (b))."""
        audio = self.whisperx.load_audio(str(speech.path))
        vad = self.model.vad_model
        t0 = time.perf_counter()
        vad({"waveform": vad.preprocess_audio(audio), "sample_rate": SAMPLE_RATE})
        return round(time.perf_counter() - t0, 3)


# --- (b) a vsrt job ----------------------------------------------------------------------


def phase_split(transitions: list[dict[str, Any]], submitted: float, returned: float) -> dict[str, float]:
    """Seconds between the job's recorded state changes, named after the state entered."""
    out: dict[str, float] = {}
    if not transitions:
        return out
    out["submit (to queued)"] = transitions[0]["at"] - submitted
    for here, following in itertools.pairwise(transitions):
        name = here["phase"] if here["status"] == "processing" else here["status"]
        out[name] = out.get(name, 0.0) + following["at"] - here["at"]
    out[f"{transitions[-1]['status']} -> wait() returns"] = returned - transitions[-1]["at"]
    return {k: round(v, 3) for k, v in out.items()}


async def run_vsrt(svc: Any, speech: Speech) -> Run:
    """One job on the file, from submit to wait returning; fails loudly if the job did."""

    def runner_pids() -> list[int | None]:
        return [h["pid"] for h in svc.pool.health()]

    cpu = Cpu()
    with cpu_meter(cpu, runner_pids):
        submitted = time.time()
        t0 = time.perf_counter()
        job = await svc.submit(speech.path, {})
        job = await svc.wait(job.id)
        t1 = time.perf_counter()
        returned = time.time()
    if job.status != "completed":
        raise RuntimeError(f"vsrt job {job.id} ended {job.status}: {job.error_code} {job.error}")
    segments = await svc.store.result(job.id) or []
    text = " ".join(str(s["text"]).strip() for s in segments)
    transitions = await svc.store.transitions(job.id)
    return Run(
        side="b",
        seconds=round(t1 - t0, 3),
        segments=job.total,
        wer=round(word_error_rate(speech.text, text), 4),
        alignment=str(job.alignment),
        phases=phase_split(transitions, submitted, returned),
        cpu=cpu,
        extra={"job_id": job.id, "runner_restarts": sum(h["restarts"] for h in svc.pool.health())},
    )


# --- report ------------------------------------------------------------------------------


def median_run(runs: list[Run]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    phases = {k: med([r.phases.get(k, 0.0) for r in runs]) for k in runs[0].phases}
    return {
        "seconds": med([r.seconds for r in runs]),
        "segments": runs[0].segments,
        "wer": med([r.wer for r in runs]),
        "alignment": runs[0].alignment,
        "phases": phases,
        "cpu_own": med([r.cpu.own for r in runs]),
        "cpu_foreign": med([r.cpu.foreign for r in runs]),
    }


def print_report(report: dict[str, Any]) -> None:
    a, b = report["a"], report["b"]
    dur = report["audio"]["duration"]
    print()
    print(
        f"audio: {report['audio']['file']}  {dur:.1f} s ({dur / 60:.2f} min), "
        f"{report['audio']['sentences']} sentences, {report['audio']['words']} words"
    )
    print(
        f"model: tiny.en {COMPUTE_TYPE} cpu, {CPU_THREADS} CTranslate2 threads, torch "
        f"{report['config']['torch_threads']} threads, batch {report['config']['batch_size']}, "
        f"aligner: tiny random wav2vec2; VAD: (a) pyannote, (b) {report['config']['vad']}; "
        f"repeat {report['config']['repeat']}"
        f" (medians), {report['machine']['cpus']} CPUs"
    )
    print()
    print(f"{'':28}{'(a) whisperx':>14}{'(b) vsrt':>14}")
    print(f"{'wall time (s)':28}{a['seconds']:>14.2f}{b['seconds']:>14.2f}")
    print(f"{'realtime factor (x)':28}{dur / a['seconds']:>14.1f}{dur / b['seconds']:>14.1f}")
    print(f"{'segments':28}{a['segments']:>14}{b['segments']:>14}")
    print(f"{'WER':28}{a['wer']:>14.3f}{b['wer']:>14.3f}")
    print(f"{'alignment':28}{a['alignment']:>14}{b['alignment']:>14}")
    print(f"{'CPU s (own)':28}{a['cpu_own']:>14.1f}{b['cpu_own']:>14.1f}")
    print(f"{'CPU s (other processes)':28}{a['cpu_foreign']:>14.1f}{b['cpu_foreign']:>14.1f}")
    ratio = report["ratio_b_over_a"]
    verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
    print(f"{'ratio b/a':28}{ratio:>14.3f}   ({verdict} the {TARGET_RATIO:.2f} target)")
    if len(report["runs"]) > 2:
        pairs = ", ".join(f"{r:.3f}" for r in report["pair_ratios"])
        print(f"{'ratio per pair':28}{pairs:>14}")
    print()
    print("(a) phases (s):  " + ", ".join(f"{k} {v:.2f}" for k, v in a["phases"].items()))
    print(f"    of which VAD alone (measured separately): {report['a_vad_seconds']:.2f}")
    print("(b) phases (s):")
    for name, seconds in b["phases"].items():
        print(f"    {name:30}{seconds:>8.2f}  {100 * seconds / b['seconds']:5.1f} %")
    m = report["machine"]
    print()
    print(
        f"machine: other pytest runs at start {m['pytest_at_start']}, at end {m['pytest_at_end']}; "
        f"load average {m['loadavg_start']} -> {m['loadavg_end']}"
    )
    print(f"figures written to {RESULT_FILE.relative_to(ROOT)}")


# --- main --------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    work = OUT / "pipeline-work"
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    speech, warmup = prepare_media(args.minutes, video=not args.wav)
    whisper_dir, align_dir, nltk_root = prepare_models(work)
    os.environ["NLTK_DATA"] = str(nltk_root)

    from vsrt_service.core.config import load_settings
    from vsrt_service.service import Service

    settings = load_settings(
        env={},
        data_dir=data_dir,
        transcription={"default_model": "tiny.en", "default_language": LANGUAGE, "vad_method": args.vad},
        runners={"devices": ["cpu"], "compute_type": COMPUTE_TYPE, "cpu_threads": 0},
    )
    target = settings.models_dir / "align" / LANGUAGE
    shutil.copytree(align_dir, target, dirs_exist_ok=True)
    batch_size = settings.transcription.batch_size

    print(f"loading whisperx models in-process ({whisper_dir}) ...", flush=True)
    plain = await asyncio.to_thread(PlainWhisperX, whisper_dir, align_dir, batch_size)
    import nltk
    import torch

    nltk.data.path.insert(0, str(nltk_root))
    await asyncio.to_thread(plain.run, warmup)  # first-call costs, as the vsrt warm-up job

    runs: list[Run] = []
    async with Service(settings) as svc:
        await svc.pool.wait_ready(settings.runners.start_timeout)
        print("warming up the vsrt runner with a short job ...", flush=True)
        warm = await run_vsrt(svc, warmup)
        if warm.alignment != "wav2vec2":
            raise RuntimeError(f"the warm-up job aligned with {warm.alignment}, not wav2vec2")

        idle_at_start = await wait_until_idle(args.wait_idle)
        machine: dict[str, Any] = {
            "cpus": os.cpu_count(),
            "pytest_at_start": other_test_runs(),
            "idle_at_start": idle_at_start,
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        }
        vad = await asyncio.to_thread(plain.vad_seconds, speech)
        for i in range(args.repeat):
            for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                print(
                    f"run {i + 1}/{args.repeat}: ({side}) on {speech.duration:.0f} s of audio ...", flush=True
                )
                if side == "a":
                    run = await asyncio.to_thread(plain.run, speech)
                else:
                    run = await run_vsrt(svc, speech)
                print(
                    f"    {run.seconds:.2f} s, {run.segments} segments, WER {run.wer:.3f}, "
                    f"CPU {run.cpu.own:.1f} s (others {run.cpu.foreign:.1f} s)",
                    flush=True,
                )
                runs.append(run)
        machine["pytest_at_end"] = other_test_runs()
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]

    a_runs = [r for r in runs if r.side == "a"]
    b_runs = [r for r in runs if r.side == "b"]
    a, b = median_run(a_runs), median_run(b_runs)
    return {
        "audio": {
            "file": str(speech.path.relative_to(ROOT)),
            "duration": speech.duration,
            "sentences": len(speech.sentences),
            "words": len(speech.text.split()),
        },
        "config": {
            "model": "tiny.en",
            "compute_type": COMPUTE_TYPE,
            "ctranslate2_threads": CPU_THREADS,
            "torch_threads": torch.get_num_threads(),
            "batch_size": batch_size,
            "vad": settings.transcription.vad_method,
            "repeat": args.repeat,
            "python": platform.python_version(),
        },
        "a": a,
        "b": b,
        "a_vad_seconds": vad,
        "ratio_b_over_a": round(b["seconds"] / a["seconds"], 3),
        "pair_ratios": [round(rb.seconds / ra.seconds, 3) for ra, rb in zip(a_runs, b_runs, strict=True)],
        "realtime_factor": {
            "a": round(speech.duration / a["seconds"], 2),
            "b": round(speech.duration / b["seconds"], 2),
        },
        "machine": machine,
        "runs": [asdict(r) for r in runs],
        "warmup_job": asdict(warm),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.pipeline",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the speech (default 5)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each side, alternating")
    parser.add_argument("--wav", action="store_true", help="measure on a WAV file instead of an mp4")
    add_wait_idle(parser)
    parser.add_argument(
        "--vad",
        choices=[str(m) for m in VadMethod],
        default=None,
        help="vsrt's VAD backend (default: vsrt's configured default); plain whisperx keeps pyannote",
    )
    args = parser.parse_args(argv)
    args.vad = args.vad or TranscriptionSettings().vad_method
    if args.repeat < 1 or args.minutes <= 0:
        parser.error("--repeat must be at least 1 and --minutes positive")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    report = asyncio.run(bench(args))
    save_and_print(report, RESULT_FILE, print_report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
