"""A job's subtitle files from its aligned transcript, built in a child process for long ones.

Cue building and rendering are pure-Python CPU: seconds for hours of speech. In a thread
that work still shares the service's GIL, and whenever the busy thread is preempted while
holding it the event loop waits too (0.1-0.2 s stalls on a loaded machine). A child
process, `python -m vsrt_service.jobs.outputs JOB_DIR`, shares nothing: it reads
`{"rules", "meta", "segments", "speech", "speaker_labels"}` as JSON on stdin, writes every
format into JOB_DIR and answers `{"cues": N}` (or `{"error": "ExceptionName"}`) on stdout.
Short transcripts, the common case, are done in a thread: starting an interpreter costs
more than they do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from vsrt_service.core import bigjson
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue, build_cues
from vsrt_service.core.errors import VsrtError
from vsrt_service.core.files import write_atomic
from vsrt_service.core.formats import FORMATS, render
from vsrt_service.core.protocol import AlignedSegment

log = logging.getLogger("vsrt.outputs")

#: Transcripts with more words than this are built in a child process.
CHILD_ABOVE_WORDS = 3000


class OutputError(VsrtError):
    """The subtitle files could not be written; the message names no server path."""


def write_subtitles(
    job_dir: Path, cues: list[Cue], meta: dict[str, Any], speaker_labels: bool = False
) -> None:
    """Every format, each written whole and durably before the job is reported complete;
    `speaker_labels` (the job option) makes the TXT speaker turns."""
    job_dir.mkdir(parents=True, exist_ok=True)
    for fmt in FORMATS:
        write_atomic(job_dir / f"subtitles.{fmt}", render(fmt, cues, meta, speaker_labels=speaker_labels))


def build_and_write(
    job_dir: Path,
    segments: list[AlignedSegment],
    rules: CueSettings,
    meta: dict[str, Any],
    speech: Sequence[Sequence[float]] = (),
    speaker_labels: bool = False,
) -> int:
    """Cues from the transcript, written in every format (blocking); returns their number."""
    cues = build_cues(segments, rules, speech)
    write_subtitles(job_dir, cues, {**meta, "segments": segments}, speaker_labels)
    return len(cues)


async def write_job_outputs(
    job_dir: Path,
    segments: list[AlignedSegment],
    rules: CueSettings,
    meta: dict[str, Any],
    nice: int = 0,
    speech: Sequence[Sequence[float]] = (),
    speaker_labels: bool = False,
) -> int:
    """build_and_write, off the event loop; in a child process for a long transcript."""
    words = sum(len(s.get("words") or ()) for s in segments)
    if words <= CHILD_ABOVE_WORDS:
        return await asyncio.to_thread(
            build_and_write, job_dir, segments, rules, meta, speech, speaker_labels
        )
    payload = await asyncio.to_thread(
        bigjson.dumps,
        {
            "rules": asdict(rules),
            "meta": meta,
            "segments": segments,
            "speech": [list(r) for r in speech],
            "speaker_labels": speaker_labels,
        },
        2,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vsrt_service.jobs.outputs",
        str(job_dir),
        "--nice",
        str(nice),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(payload.encode())
    except BaseException:  # canceled (the job paused): the child must not outlive the call
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await asyncio.shield(proc.wait())
        raise
    try:
        answer = json.loads(out or b"{}")
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    if proc.returncode != 0 or not isinstance(answer.get("cues"), int):
        log.error(
            "writing subtitles in %s failed (status %s): %s",
            job_dir,
            proc.returncode,
            err.decode(errors="replace")[-2000:],
        )
        reason = answer.get("error") or f"exit status {proc.returncode}"
        raise OutputError(f"writing the subtitle files failed ({reason}); see the service log")
    return int(answer["cues"])


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vsrt_service.jobs.outputs", description=__doc__)
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    args = parser.parse_args(argv)
    if args.nice:
        os.nice(args.nice)
    try:
        data = json.load(sys.stdin.buffer)
        count = build_and_write(
            args.job_dir,
            data["segments"],
            CueSettings(**data["rules"]),
            data["meta"],
            data.get("speech", ()),
            bool(data.get("speaker_labels", False)),
        )
    except Exception as exc:
        log.exception("building subtitles failed")
        print(json.dumps({"error": type(exc).__name__}))
        return 1
    print(json.dumps({"cues": count}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.exit(main())
