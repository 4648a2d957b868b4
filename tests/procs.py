"""Processes of the tests: runner and ffmpeg processes found through /proc (tests and benchmarks
check none is orphaned), and `vsrt serve` as a real subprocess: `Server` for one test's own
server (async, started and stopped by the test), `vsrt_serve` for a module to share (sync)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """One `vsrt serve` subprocess; `start()` polls /api/health until it answers."""

    def __init__(self, data_dir: Path, port: int, env: dict[str, str]) -> None:
        self.data_dir, self.port, self.env = data_dir, port, env
        self.proc: asyncio.subprocess.Process | None = None
        self.url = f"http://127.0.0.1:{port}"

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vsrt_service.cli",
            "serve",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{self.url}/api/health") as resp:
                        if resp.status == 200:
                            return
                assert self.proc.returncode is None, "server exited during start-up"
                await asyncio.sleep(0.1)
        raise AssertionError("server never answered /api/health")

    async def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@contextlib.contextmanager
def vsrt_serve(data_dir: Path, env: dict[str, str] | None = None, wait: float = 30.0) -> Iterator[str]:
    """A real `vsrt serve` process on a free port for a module's tests (a sync fixture can
    share it, so several tests pay for one start): yields its base URL, then stops and
    reaps it (SIGTERM, then SIGKILL), its runners with it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vsrt_service.cli", "serve", "--port", str(port), "--data-dir", str(data_dir)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + wait
        while True:
            assert proc.poll() is None, "vsrt serve exited during start-up"
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "vsrt serve never answered /api/health"
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
