"""Model downloads with huggingface_hub, in the runner, with byte progress and checksums.

huggingface_hub resumes partial files (`.incomplete` under the target's .cache) and checks
only sizes, so every fetched file is verified here against the hub's sha256 / blob hash.
Byte progress comes from huggingface_hub's own progress bars: their class is replaced by
one that reports to the download running on the current thread.
"""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vsrt_service.core import protocol as p
from vsrt_service.core.integrity import ManifestFile, file_problem

from .engine import Canceled, EngineError

log = logging.getLogger("gpu_runner.download")

_current = threading.local()
_installed = False
_install_lock = threading.Lock()


def _install_progress_hook() -> None:
    """Route huggingface_hub's byte progress bars to the download on this thread."""
    global _installed
    with _install_lock:
        if _installed:
            return
        import importlib

        import huggingface_hub.constants as constants

        # The module, not the class of the same name that huggingface_hub.utils re-exports.
        hf_tqdm = importlib.import_module("huggingface_hub.utils.tqdm")

        constants.DOWNLOAD_CHUNK_SIZE = 1 << 20  # finer progress and resume points than 10 MiB
        base = hf_tqdm.tqdm

        class Reporting(base):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["disable"] = True  # nothing on stderr; we report ourselves
                super().__init__(*args, **kwargs)
                hook = getattr(_current, "hook", None)
                if hook is not None:
                    hook(int(kwargs.get("initial") or 0), starting=True)

            def update(self, n: float | None = 1) -> bool | None:
                hook = getattr(_current, "hook", None)
                if hook is not None and n:
                    hook(int(n))
                return super().update(n)

        hf_tqdm.tqdm = Reporting  # type: ignore[attr-defined]
        _installed = True


def gated(repo: str) -> str:
    """What to do about a gated repository the hub would not serve (401 or 403)."""
    return (
        f"{repo} is gated: accept its licence at https://hf.co/{repo} and set models.hf_token (or HF_TOKEN)"
    )


def describe(exc: BaseException, endpoint: str, repo: str = "") -> str:
    """A failure in words a user can act on."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    cause: BaseException = exc
    while cause.__cause__ is not None and isinstance(cause, LocalEntryNotFoundError):
        cause = cause.__cause__
    text = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if isinstance(cause, OfflineModeIsEnabled):
        return "offline mode is on (HF_HUB_OFFLINE): nothing can be downloaded"
    status = (
        cause.response.status_code if isinstance(cause, HfHubHTTPError) and cause.response is not None else 0
    )
    if isinstance(cause, GatedRepoError):  # before RepositoryNotFoundError, which it also is
        return f"{endpoint}: {gated(repo or 'the repository')}"
    if isinstance(cause, RepositoryNotFoundError):
        return f"{endpoint}: repository not found (check the model's repo name)"
    if isinstance(cause, RevisionNotFoundError):
        return f"{endpoint}: revision not found"
    if isinstance(cause, EntryNotFoundError) and not isinstance(cause, LocalEntryNotFoundError):
        return f"{endpoint}: file not found in the repository"
    if isinstance(cause, OSError) and getattr(cause, "errno", None) == 28:
        return "disk full: free space in the data directory's models folder"
    if status:
        if status in (401, 403):
            need = "the model may need a token (models.hf_token or HF_TOKEN)"
            return f"{endpoint}: access denied ({status}); {need}"
        if status == 407:
            return f"{endpoint}: the proxy wants authentication (check HTTPS_PROXY)"
        return f"{endpoint}: the hub answered {status} ({text[:120]})"
    name = type(cause).__name__
    if "ProxyError" in name:
        return f"{endpoint}: cannot connect through the proxy (check HTTPS_PROXY): {text[:120]}"
    if "ConnectionError" in name or "ConnectTimeout" in name or "Timeout" in name:
        return f"{endpoint}: cannot connect (no network, or the endpoint is down): {text[:120]}"
    return f"{endpoint}: {name}: {text[:160]}"


def _manifest(siblings: list[Any], patterns: list[str], prefer: list[str]) -> list[ManifestFile]:
    chosen = [s for s in siblings if any(fnmatch.fnmatch(s.rfilename, pat) for pat in patterns)]
    names = {s.rfilename for s in chosen}
    keep = next((name for name in prefer if name in names), None)
    if keep is not None:
        chosen = [s for s in chosen if s.rfilename == keep or s.rfilename not in prefer]
    return [
        ManifestFile(
            name=s.rfilename,
            size=int(s.size or (s.lfs.size if s.lfs else 0) or 0),
            sha256=s.lfs.sha256 if s.lfs else None,
            blob_id=None if s.lfs else s.blob_id,
        )
        for s in chosen
    ]


class _Tally:
    """Bytes done across a repository's files, reported at most five times a second."""

    def __init__(
        self, total: int, progress: Callable[[int, int, str], None], canceled: threading.Event
    ) -> None:
        self.total, self.done = total, 0
        self._progress, self._canceled = progress, canceled
        self._last = 0.0

    def at(self, done: int, name: str, force: bool = False) -> None:
        if self._canceled.is_set():
            raise Canceled()
        self.done = done
        now = time.monotonic()
        if force or now - self._last >= 0.2:
            self._last = now
            self._progress(self.done, self.total, name)

    def file_hook(self, file_start: int, name: str) -> Callable[..., None]:
        """The callback huggingface_hub's progress bar drives for one file."""

        def hook(n: int, starting: bool = False) -> None:
            self.at(file_start + n if starting else self.done + n, name)

        return hook


def _without(secret: str | None, text: str) -> str:
    """`text` with the token cut out (a library's message could quote a header)."""
    return text.replace(secret, "***") if secret else text


def download(
    req: p.Download, canceled: threading.Event, progress: Callable[[int, int, str], None]
) -> p.DownloadResult:
    """Fetch the repository's wanted files; returns the manifest the service records.

    The token goes to huggingface_hub only; without one, none is sent (`False`: not even a
    token huggingface_hub finds on this machine), so what the service configured decides."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub import constants as hf_constants

    _install_progress_hook()
    if hf_constants.HF_HUB_OFFLINE:
        raise EngineError("offline", "offline mode is on (HF_HUB_OFFLINE): nothing can be downloaded")
    target = Path(req.target_dir)
    target.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    token: str | bool = req.token or False
    for endpoint in req.endpoints:
        try:
            info = HfApi(endpoint=endpoint, token=token).model_info(
                req.repo, revision=req.revision, files_metadata=True
            )
        except Exception as exc:
            failures.append(_without(req.token, describe(exc, endpoint, req.repo)))
            continue
        manifest = _manifest(list(info.siblings or []), req.patterns, req.prefer)
        if not manifest:
            raise EngineError("download", f"{req.repo} has none of the files a model needs")
        tally = _Tally(sum(f["size"] for f in manifest), progress, canceled)
        fetched: list[str] = []
        try:
            for item in manifest:
                path = target / item["name"]
                file_start = tally.done
                if file_problem(path, item) is None:
                    tally.at(file_start + item["size"], item["name"], force=True)
                    continue
                if path.exists():
                    path.unlink()  # wrong bytes: fetch this one again, from the start
                _current.hook = tally.file_hook(file_start, item["name"])
                try:
                    hf_hub_download(
                        req.repo,
                        item["name"],
                        revision=info.sha,
                        local_dir=target,
                        endpoint=endpoint,
                        token=token,
                    )
                finally:
                    _current.hook = None
                problem = file_problem(path, item)
                if problem is not None:
                    path.unlink(missing_ok=True)
                    raise EngineError("checksum", f"{item['name']}: {problem}; the download was corrupted")
                fetched.append(item["name"])
                tally.at(file_start + item["size"], item["name"], force=True)
        except (Canceled, EngineError):
            raise
        except Exception as exc:
            if canceled.is_set():
                raise Canceled() from exc
            failures.append(_without(req.token, describe(exc, endpoint, req.repo)))
            log.warning("download of %s from %s failed: %s", req.repo, endpoint, failures[-1])
            continue
        _clean_cache(target)
        return {
            "endpoint": endpoint,
            "commit": info.sha,
            "files": manifest,
            "fetched": fetched,
            "total_bytes": tally.total,
        }
    raise EngineError("download", "; ".join(failures) or "no endpoint configured")


def _clean_cache(target: Path) -> None:
    """Drop huggingface_hub's bookkeeping once every file is verified."""
    import shutil

    shutil.rmtree(target / ".cache", ignore_errors=True)
