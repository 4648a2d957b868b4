"""The wire protocol: every message round-trips; malformed lines are errors, not crashes."""

from __future__ import annotations

from typing import Any, assert_type, get_args, is_typeddict

import pytest

from gpu_runner.runner import Runner
from vsrt_service.core import protocol as p
from vsrt_service.runners.pool import RunnerSlot

REQUESTS = [
    p.Hello(id="1"),
    p.Ping(id="2"),
    p.LoadModel(id="3", model=p.ModelRef(kind="whisper", key="whisper:tiny.en", path="/m"), language="en"),
    p.Unload(id="4", key=None),
    p.Split(id="5", audio_path="/a.wav", vad_onset=0.4, vad_offset=0.3, chunk_size=20),
    p.Transcribe(id="6", audio_path="/a.wav", segments=[p.SegmentSpan(index=0, start=0.5, end=2.0)]),
    p.Align(id="7", audio_path="/a.wav", segments=[p.TextSegment(index=0, start=0, end=1, text="héllo")]),
    p.Cancel(id="8", target="6"),
    p.Shutdown(id="9"),
]
REPLIES = [
    p.Progress(id="1", done=3, total=10, message="x"),
    p.Fragment(id="1", index=2, start=1.5, end=3.25, text="line\nwith newline", language="en"),
    p.Result(id="1", data={"nested": {"a": [1, 2]}}),
    p.Error(id="1", code="canceled", message="canceled"),
]


@pytest.mark.parametrize("msg", REQUESTS, ids=lambda m: m.type)
def test_requests_round_trip(msg: p.Request) -> None:
    line = p.encode(msg)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert p.decode_request(line) == msg


@pytest.mark.parametrize("msg", REPLIES, ids=lambda m: m.type)
def test_replies_round_trip(msg: p.Reply) -> None:
    line = p.encode(msg)
    assert line.count(b"\n") == 1
    assert p.decode_reply(line) == msg


@pytest.mark.parametrize(
    ("line", "words"),
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"id": "1"}', "unknown message type"),
        (b'{"type": "ping"}', "without a string id"),
        (b'{"type": "ping", "id": 3}', "without a string id"),
        (b'{"type": "ping", "id": "1", "x": 1}', "unknown fields"),
        (b'{"type": "result", "id": "1"}', "unknown message type"),  # a reply is not a request
        (b"\xff", "not JSON"),
    ],
)
def test_malformed_requests(line: bytes, words: str) -> None:
    with pytest.raises(p.ProtocolError, match=words):
        p.decode_request(line)


def test_oversized_line_is_refused() -> None:
    with pytest.raises(p.ProtocolError, match="over the limit"):
        p.decode_reply(b" " * (p.MAX_LINE_BYTES + 1))


@pytest.mark.parametrize("cls", p.REQUEST_TYPES.values(), ids=lambda c: c.type)
def test_each_request_names_its_typed_result(cls: type[p.Request[Any]]) -> None:
    """`Result` is a TypedDict, the same one the class is generic in (what `call` returns),
    and the runner's handler for the kind is declared to return it."""
    assert is_typeddict(cls.Result)
    assert get_args(cls.__orig_bases__[0]) == (cls.Result,)  # type: ignore[attr-defined]
    handler = getattr(Runner, f"_do_{cls.type}", None) or (Runner.hello if cls is p.Hello else None)
    if handler is not None:  # the others are answered inline by Runner._dispatch
        # runner.py's annotations are strings (`from __future__ import annotations`)
        assert handler.__annotations__["return"] == f"p.{cls.Result.__name__}"


async def _typed_calls(slot: RunnerSlot) -> None:
    """Never run: mypy checks that `call` is typed by its request (`make lint`)."""
    assert_type(await slot.call(p.Split(id="1")), p.SplitResult)
    assert_type(await slot.call(p.Align(id="2")), p.AlignResult)
    assert_type(await slot.call(p.Download(id="3")), p.DownloadResult)
