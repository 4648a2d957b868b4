"""Finding runner processes through /proc (tests and benchmarks check none is orphaned)."""

from __future__ import annotations

import os
from pathlib import Path


def runner_pids(parent: int | None = None) -> list[int]:
    """Live `python -m gpu_runner` processes started by `parent` (default: this process)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and b"gpu_runner" in args and b"--parent-pid" in args:
            if args[args.index(b"--parent-pid") + 1] == str(parent).encode():
                found.append(int(entry.name))
    return found


def runner_option(pid: int, option: str) -> str:
    """The value a running runner was given for a command-line option."""
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return args[args.index(option.encode()) + 1].decode()


def tool_pids(tool: str, mentioning: str, parent: int | None = None) -> list[int]:
    """Live `tool` processes (ffmpeg, ffprobe) of `parent` (default: this process) whose
    command line mentions `mentioning` (a job id, a file name)."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if (
            state != "Z"
            and ppid == parent
            and Path(args[0].decode(errors="replace")).name == tool
            and any(mentioning.encode() in a for a in args)
        ):
            found.append(int(entry.name))
    return found
