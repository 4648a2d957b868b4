"""The wire protocol: every message round-trips; malformed lines are errors, not crashes."""

from __future__ import annotations

import pytest

from vsrt_service.core import protocol as p

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
