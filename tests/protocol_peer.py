"""A runner stand-in for pool tests: speaks the protocol, does no model work.

The pool is what those tests examine, and a real runner cannot be made to answer with three
hours of alignment or with a line over the limit. Run as `python -m tests.protocol_peer`
(the pool's options after it are ignored). It answers hello, ping, cancel, unload and
shutdown as the runner does, and:

- align: the synthetic aligned transcript of a 3-hour recording (tests/long_media.py);
- split: a result line over `MAX_LINE_BYTES`, ending the request;
- transcribe: a fragment line over `MAX_LINE_BYTES`, then it works on until canceled.
"""

from __future__ import annotations

import os
import sys
import time

from tests.long_media import aligned_result
from vsrt_service.core import protocol as p


def main() -> int:
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    working: str | None = None  # a transcribe request that runs until canceled

    def send(msg: p.Reply) -> None:
        out.write(p.encode(msg))

    def over_long(head: str, tail: str) -> None:
        out.write(f'{head}"'.encode() + b"x" * (p.MAX_LINE_BYTES + (1 << 20)) + f'"{tail}\n'.encode())

    for line in sys.stdin.buffer:
        req = p.decode_request(line)
        if isinstance(req, p.Hello):
            send(
                p.Result(
                    id=req.id,
                    data={
                        "protocol_version": p.PROTOCOL_VERSION,
                        "compatible": True,
                        "pid": os.getpid(),
                        "device": "cpu",
                        "warm": True,
                        "versions": {},
                        "loaded_models": [],
                        "load_count": 0,
                    },
                )
            )
        elif isinstance(req, p.Ping):
            send(p.Result(id=req.id, data={"ts": time.time(), "busy": working is not None, "warm": True}))
        elif isinstance(req, p.Cancel):
            found = req.target == working
            send(p.Result(id=req.id, data={"canceled": found}))
            if found:
                send(p.Error(id=req.target, code="canceled", message="canceled"))
                working = None
        elif isinstance(req, p.Unload):
            send(p.Result(id=req.id, data={"unloaded": [], "loaded_models": []}))
        elif isinstance(req, p.Shutdown):
            send(p.Result(id=req.id, data={"bye": True}))
            return 0
        elif isinstance(req, p.Align):
            send(p.Result(id=req.id, data={"alignment": "wav2vec2", "segments": aligned_result(3.0)}))
        elif isinstance(req, p.Split):
            over_long(f'{{"type":"result","id":"{req.id}","data":{{"pad":', "}}")
        elif isinstance(req, p.Transcribe):
            over_long(f'{{"type":"fragment","id":"{req.id}","index":0,"text":', "}")
            working = req.id
        else:
            send(p.Error(id=req.id, code="bad_request", message=f"the peer does not do {req.type}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
