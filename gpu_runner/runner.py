"""The runner process: reads requests from stdin, answers on a private copy of stdout.

The main thread only reads and dispatches, so `ping`, `cancel` and `unload` are answered
while the single worker thread is busy with a model. Anything a library prints goes to
stderr: fd 1 is pointed at stderr at start-up and the protocol uses a duplicate of the
original fd.
"""

from __future__ import annotations

import ctypes
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from vsrt_service.core import protocol as p

from .engine import Canceled, Engine, EngineError

log = logging.getLogger("gpu_runner")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def die_with_parent(parent_pid: int | None) -> None:
    """Ask Linux to kill us when the service dies, so no runner is ever orphaned."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(0)  # the parent died before prctl took effect


class Runner:
    def __init__(self, engine: Engine, out: BinaryIO, warm: bool = True) -> None:
        self.engine = engine
        self._warm = warm
        self._out = out
        self._out_lock = threading.Lock()
        self._work: queue.Queue[p.Request[Any] | None] = queue.Queue()
        self._cancel: dict[str, threading.Event] = {}
        self._ready = threading.Event()
        self._warm_error: str | None = None
        self._worker = threading.Thread(target=self._work_loop, name="worker", daemon=True)

    def send(self, msg: p.Reply) -> None:
        """Write one reply line. One over the service's line limit is not written (the service
        could not read it): EngineError("reply_too_large") ends the request instead."""
        data = p.encode(msg)
        if len(data) > p.MAX_LINE_BYTES:
            raise EngineError(
                "reply_too_large",
                f"the {msg.type} reply of {len(data)} bytes is over the {p.MAX_LINE_BYTES >> 20} MiB "
                "line limit",
            )
        with self._out_lock:
            self._out.write(data)
            self._out.flush()

    def _finish(self, reply: p.Result | p.Error) -> None:
        """A request's last reply; one too long to send becomes a short error saying so."""
        try:
            self.send(reply)
        except EngineError as exc:
            what = f" (it was an error: {reply.code})" if isinstance(reply, p.Error) else ""
            log.error("request %s: %s%s", reply.id, exc, what)
            self.send(p.Error(id=reply.id, code=exc.code, message=f"{exc}{what}"))

    # --- main thread -------------------------------------------------------------------

    def serve(self, stdin: BinaryIO) -> int:
        self._worker.start()
        for line in stdin:
            if not line.strip():
                continue
            try:
                req = p.decode_request(line)
            except p.ProtocolError as exc:
                log.warning("ignoring malformed request: %s", exc)
                self.send(p.Error(id="", code="bad_request", message=str(exc)))
                continue
            if isinstance(req, p.Shutdown):
                if not self._ready.is_set():
                    # Still importing whisperx: no work has started (what waits behind the import
                    # is abandoned; the service fails those calls as it stops), and the import
                    # would hold a stopping service up for seconds.
                    self.send(p.Result(id=req.id, data={"bye": True}))
                    os._exit(0)
                self._stop_work()
                self.send(p.Result(id=req.id, data={"bye": True}))
                return 0
            self._dispatch(req)
        self._stop_work()  # stdin closed: the service is gone
        return 0

    def _dispatch(self, req: p.Request[Any]) -> None:
        if isinstance(req, p.Ping):
            self.send(
                p.Result(
                    id=req.id,
                    data={
                        "ts": time.time(),
                        "busy": self._busy(),
                        "warm": self._ready.is_set(),
                    },
                )
            )
        elif isinstance(req, p.Hello):
            self.send(p.Result(id=req.id, data=self.hello(req)))
        elif isinstance(req, p.Cancel):
            event = self._cancel.get(req.target)
            if event is not None:
                event.set()
            self.send(p.Result(id=req.id, data={"canceled": event is not None}))
        elif isinstance(req, p.Unload):
            # Here, not behind the worker's current job: a model being deleted leaves the
            # cache at once (one in use is freed when its request ends).
            unloaded = self.engine.unload(req.key)
            self.send(p.Result(id=req.id, data={"unloaded": unloaded, "loaded_models": self.engine.loaded()}))
        elif isinstance(req, p.Download):
            # Downloads are I/O: each gets its own thread so they never wait for model work.
            self._cancel[req.id] = threading.Event()
            threading.Thread(target=self._run, args=(req,), name=f"download-{req.id}", daemon=True).start()
        else:
            self._cancel[req.id] = threading.Event()
            self._work.put(req)

    def _busy(self) -> bool:
        return bool(self._cancel)

    def hello(self, req: p.Hello) -> p.HelloResult:
        return {
            "protocol_version": p.PROTOCOL_VERSION,
            "compatible": req.protocol_version == p.PROTOCOL_VERSION,
            "pid": os.getpid(),
            "device": self.engine.torch_device,
            "compute_type": self.engine.compute_type,
            "versions": {
                name: _version(name) for name in ("whisperx", "torch", "ctranslate2", "faster-whisper")
            },
            "loaded_models": self.engine.loaded(),
            "load_count": self.engine.load_count,
            "memory": self.engine.memory(),
            "warm": self._ready.is_set(),
        }

    def _stop_work(self) -> None:
        for event in list(self._cancel.values()):
            event.set()
        self._work.put(None)
        self._worker.join(timeout=10)

    # --- worker thread -----------------------------------------------------------------

    def _work_loop(self) -> None:
        if self._warm:
            try:
                self.engine.warm_up()
            except Exception as exc:  # reported on every request
                self._warm_error = f"whisperx is not usable here: {exc}"
                log.exception("warm-up failed")
        self._ready.set()
        while (req := self._work.get()) is not None:
            self._run(req)
            self.engine.release()

    def _run(self, req: p.Request[Any]) -> None:
        """Handle one request to its single result or error."""
        canceled = self._cancel[req.id]
        reply: p.Result | p.Error
        try:
            if self._warm_error and not isinstance(req, p.Download):
                raise EngineError("internal", self._warm_error)
            if canceled.is_set():
                raise Canceled()
            reply = p.Result(id=req.id, data=self._handle(req, canceled))
        except Canceled:
            reply = p.Error(id=req.id, code="canceled", message="canceled")
        except EngineError as exc:
            reply = p.Error(id=req.id, code=exc.code, message=str(exc))
        except Exception as exc:
            log.exception("request %s (%s) failed", req.id, req.type)
            reply = p.Error(id=req.id, code="internal", message=f"{type(exc).__name__}: {exc}")
        finally:
            # Before the last reply: a `cancel` that finds nothing means it has been sent.
            self._cancel.pop(req.id, None)
        self._finish(reply)

    def _handle(self, req: p.Request[Any], canceled: threading.Event) -> Mapping[str, Any]:
        handler: Callable[[Any, threading.Event], Mapping[str, Any]] | None = getattr(
            self, f"_do_{req.type}", None
        )
        if handler is None:
            raise EngineError("bad_request", f"unsupported request {req.type!r}")
        return handler(req, canceled)

    def _do_load_model(self, req: p.LoadModel, canceled: threading.Event) -> p.LoadModelResult:
        started = time.monotonic()
        loaded_now = self.engine.load(req.model, req.language)
        return {
            "loaded_now": loaded_now,
            "seconds": round(time.monotonic() - started, 3),
            "load_count": self.engine.load_count,
        }

    def _do_split(self, req: p.Split, canceled: threading.Event) -> p.SplitResult:
        return self.engine.split(req.audio_path, req.vad_onset, req.vad_offset, req.chunk_size, req.vad)

    def _do_transcribe(self, req: p.Transcribe, canceled: threading.Event) -> p.TranscribeResult:
        count = 0

        def emit(seg: p.SegmentSpan, text: str, language: str) -> None:
            nonlocal count
            count += 1
            self.send(
                p.Fragment(
                    id=req.id,
                    index=seg["index"],
                    start=seg["start"],
                    end=seg["end"],
                    text=text,
                    language=language,
                )
            )

        language = self.engine.transcribe(
            req.audio_path,
            req.model,
            req.segments,
            req.language,
            req.task,
            req.batch_size,
            req.beam_size,
            canceled,
            emit,
            initial_prompt=req.initial_prompt,
            hotwords=req.hotwords,
        )
        return {"language": language, "count": count, "load_count": self.engine.load_count}

    def _do_detect_language(self, req: p.DetectLanguage, canceled: threading.Event) -> p.DetectLanguageResult:
        return self.engine.detect_language(req.audio_path, req.model, req.seconds, req.top)

    def _do_download(self, req: p.Download, canceled: threading.Event) -> p.DownloadResult:
        from .download import download

        def progress(done: int, total: int, name: str) -> None:
            self.send(p.Progress(id=req.id, done=done, total=total, message=name))

        return download(req, canceled, progress)

    def _percent(self, req: p.Request[Any], canceled: threading.Event, what: str) -> Callable[[float], None]:
        """A progress callback: percent replies at most four a second (and 100), and the
        cancel check between the model's batches."""
        last = [0.0]

        def progress(percent: float) -> None:
            now = time.monotonic()
            if now - last[0] >= 0.25 or percent >= 100:
                last[0] = now
                self.send(p.Progress(id=req.id, done=round(percent, 1), total=100, message=what))
            if canceled.is_set():
                raise Canceled()

        return progress

    def _do_align(self, req: p.Align, canceled: threading.Event) -> p.AlignResult:
        progress = self._percent(req, canceled, "aligning")
        return self.engine.align(
            req.audio_path, req.language, req.segments, req.align_model, req.whisper_model, progress
        )

    def _do_diarize(self, req: p.Diarize, canceled: threading.Event) -> p.DiarizeResult:
        progress = self._percent(req, canceled, "diarizing")
        return self.engine.diarize(
            req.audio_path, req.model, req.num_speakers, req.min_speakers, req.max_speakers, progress
        )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gpu_runner", description=__doc__)
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N")
    parser.add_argument("--compute-type", default="auto")
    parser.add_argument("--cpu-threads", type=int, default=0)
    parser.add_argument("--cache-size", type=int, default=3)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--nltk-data", default=None, help="directory for NLTK's punkt_tab")
    parser.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority")
    parser.add_argument(
        "--role",
        choices=("work", "download"),
        default="work",
        help="download: only fetch models (no whisperx import)",
    )
    args = parser.parse_args(argv)

    # Keep the protocol channel private: libraries that print() must not corrupt it.
    proto_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(
        level=os.environ.get("VSRT_RUNNER_LOG", "INFO"),
        stream=sys.stderr,
        format=f"%(asctime)s runner[{args.device}] %(levelname)s %(name)s: %(message)s",
    )
    die_with_parent(args.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service decides when we stop
    if args.nice:
        # On a CPU box model threads would otherwise crowd out the service's event loop.
        os.nice(args.nice)
    if args.nltk_data:
        from .nltk_data import ensure_punkt_tab

        os.environ["NLTK_DATA"] = str(ensure_punkt_tab(Path(args.nltk_data)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")  # plain HTTP: resumable, verified, tested
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")  # pyannote would report usage online
    engine = Engine(args.device, args.compute_type, args.cpu_threads, args.cache_size)
    return Runner(engine, proto_out, warm=args.role == "work").serve(sys.stdin.buffer)
