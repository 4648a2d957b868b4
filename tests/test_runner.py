"""The runner process over its real pipes: handshake, bad lines, ping and cancel mid-work."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.media import LONG_SENTENCES, make_speech
from vsrt_service.core import protocol as p
from vsrt_service.jobs.media import extract_audio
from vsrt_service.models.bundled import bundled_tiny_en


class RawRunner:
    """A runner subprocess driven line by line, as the pool does, without the pool."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.backlog: list[p.Reply] = []  # replies read while waiting for another request

    async def send_line(self, line: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line)
        await self.proc.stdin.drain()

    async def send(self, req: p.Request) -> None:
        await self.send_line(p.encode(req))

    async def reply(self, wait: float = 120) -> p.Reply:
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), wait)
        assert line, "runner closed its stdout"
        return p.decode_reply(line)

    async def until_done(self, req_id: str, wait: float = 120) -> list[p.Reply]:
        out = [m for m in self.backlog if m.id == req_id]
        self.backlog = [m for m in self.backlog if m.id != req_id]
        if out and isinstance(out[-1], p.Result | p.Error):
            return out
        while True:
            msg = await self.reply(wait)
            if msg.id != req_id:
                self.backlog.append(msg)
            else:
                out.append(msg)
                if isinstance(msg, p.Result | p.Error):
                    return out


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[RawRunner]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gpu_runner",
        "--device",
        "cpu",
        "--nltk-data",
        str(tmp_path / "nltk"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        yield RawRunner(proc)
    finally:
        if proc.returncode is None:
            proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_handshake_reports_capabilities(runner: RawRunner) -> None:
    await runner.send(p.Hello(id="h1"))
    (msg,) = await runner.until_done("h1", wait=30)
    assert isinstance(msg, p.Result)
    assert msg.data["compatible"] is True
    assert msg.data["protocol_version"] == p.PROTOCOL_VERSION
    assert msg.data["device"] == "cpu"
    assert msg.data["versions"]["whisperx"] == "3.8.6"
    assert msg.data["loaded_models"] == []


async def test_handshake_with_another_version_is_flagged(runner: RawRunner) -> None:
    await runner.send(p.Hello(id="h1", protocol_version=p.PROTOCOL_VERSION + 1))
    (msg,) = await runner.until_done("h1", wait=30)
    assert isinstance(msg, p.Result) and msg.data["compatible"] is False


@pytest.mark.parametrize(
    "line",
    [
        b"not json at all\n",
        b"[1, 2, 3]\n",
        b'{"type": "explode", "id": "x"}\n',
        b'{"type": "ping"}\n',
        b'{"type": "ping", "id": "x", "surprise": 1}\n',
        b"\xff\xfe\n",
    ],
)
async def test_malformed_line_is_answered_and_survived(runner: RawRunner, line: bytes) -> None:
    await runner.send_line(line)
    msg = await runner.reply(wait=30)
    assert isinstance(msg, p.Error) and msg.code == "bad_request" and msg.id == ""
    await runner.send(p.Ping(id="after"))
    (pong,) = await runner.until_done("after", wait=30)
    assert isinstance(pong, p.Result)


async def test_ping_and_cancel_are_answered_during_transcription(runner: RawRunner, tmp_path: Path) -> None:
    speech = await asyncio.to_thread(make_speech, tmp_path / "long.wav", LONG_SENTENCES[:12], video=False)
    audio = tmp_path / "audio.wav"
    await extract_audio(speech.path, audio)
    model_dir = bundled_tiny_en()
    assert model_dir is not None
    spans = [p.SegmentSpan(index=i, start=s.start, end=s.end) for i, s in enumerate(speech.sentences)]
    await runner.send(
        p.Transcribe(
            id="t1",
            audio_path=str(audio),
            segments=spans,
            language="en",
            batch_size=1,
            model=p.ModelRef(kind="whisper", key="whisper:tiny.en", path=str(model_dir)),
        )
    )
    first = await runner.reply()
    assert isinstance(first, p.Fragment) and first.id == "t1" and first.index == 0

    await runner.send(p.Ping(id="ping"))
    replies = await runner.until_done("ping", wait=5)
    assert isinstance(replies[-1], p.Result) and replies[-1].data["busy"] is True

    await runner.send(p.Cancel(id="c1", target="t1"))
    seen = await runner.until_done("t1")
    assert isinstance(seen[-1], p.Error) and seen[-1].code == "canceled"
    fragments = [m for m in seen if isinstance(m, p.Fragment)]
    assert 1 + len(fragments) < len(spans), "cancel did not stop the work early"

    # The runner is free again and keeps its model loaded.
    await runner.send(p.Hello(id="h2"))
    hello = next(m for m in await runner.until_done("h2") if isinstance(m, p.Result))
    assert [m["key"] for m in hello.data["loaded_models"]] == ["whisper:tiny.en"]
    assert hello.data["load_count"] == 1


async def test_bad_audio_is_an_error_not_a_crash(runner: RawRunner, tmp_path: Path) -> None:
    await runner.send(p.Split(id="s1", audio_path=str(tmp_path / "missing.wav")))
    (msg,) = await runner.until_done("s1")
    assert isinstance(msg, p.Error) and msg.code == "audio"
    assert "missing.wav" in msg.message


async def test_shutdown_exits_cleanly(runner: RawRunner) -> None:
    await runner.send(p.Shutdown(id="bye"))
    (msg,) = await runner.until_done("bye", wait=30)
    assert isinstance(msg, p.Result)
    assert await asyncio.wait_for(runner.proc.wait(), 15) == 0


@pytest.mark.slow
async def test_split_names_its_vad_backend(runner: RawRunner, tmp_path: Path) -> None:
    speech = await asyncio.to_thread(make_speech, tmp_path / "short.wav", LONG_SENTENCES[:2], video=False)
    audio = tmp_path / "audio.wav"
    await extract_audio(speech.path, audio)

    # An unknown backend is a clear error naming it and the ones there are; the runner lives on.
    await runner.send(p.Split(id="s1", audio_path=str(audio), vad="no-such-vad"))
    (msg,) = await runner.until_done("s1")
    assert isinstance(msg, p.Error) and msg.code == "bad_request", msg
    assert "no-such-vad" in msg.message and "pyannote" in msg.message, msg.message

    # The default is today's backend, by its name, and still finds the speech.
    assert p.Split(id="").vad == "pyannote"
    await runner.send(p.Split(id="s2", audio_path=str(audio), chunk_size=5))
    (done,) = await runner.until_done("s2")
    assert isinstance(done, p.Result), done
    spans = done.data["segments"]
    assert spans and spans[0]["start"] < speech.sentences[0].end
    assert spans[-1]["end"] > speech.sentences[-1].start
