"""Finding runner and ffmpeg processes through /proc (tests and benchmarks check none is orphaned)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


def _live_processes() -> Iterator[tuple[int, list[bytes], int]]:
    """(pid, command line, parent pid) of every process that is not a zombie."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry.name), args, int(fields[1])


def runner_pids(parent: int | None = None) -> list[int]:
    """Live `python -m gpu_runner` processes started by `parent` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    return [
        pid
        for pid, args, _ in _live_processes()
        if b"gpu_runner" in args
        and b"--parent-pid" in args
        and args[args.index(b"--parent-pid") + 1] == str(parent).encode()
    ]


def runner_option(pid: int, option: str) -> str:
    """The value a running runner was given for a command-line option."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return args[args.index(option.encode()) + 1].decode()


def tool_pids(tool: str, mentioning: str, parent: int | None = None) -> list[int]:
    """Live `tool` processes (ffmpeg, ffprobe) of `parent` (default: this process) whose
    command line mentions `mentioning` (a job id, a file name)."""
    parent = os.getpid() if parent is None else parent
    return [
        pid
        for pid, args, ppid in _live_processes()
        if ppid == parent
        and Path(args[0].decode(errors="replace")).name == tool
        and any(mentioning.encode() in a for a in args)
    ]
