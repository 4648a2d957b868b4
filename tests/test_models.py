"""Model management for real: huggingface_hub in the download runner against a local fake hub."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import SettingsFactory, loop_lag
from tests.fakehub import FakeHub, serving_as_endpoint, start_fake_hub
from tests.http_helpers import catalog_entry, done_for, is_complete, model_events, open_stream, upload
from tests.media import Speech
from tests.sse_client import SseReader
from vsrt_service.core.config import Settings
from vsrt_service.models.bundled import bundled_tiny_en
from vsrt_service.web.keys import SERVICE

WHISPER_REPO = "Systran/faster-whisper-tiny"
ALIGN_REPO = "facebook/wav2vec2-base-960h"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def hub(tiny_align_model: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    """The real tiny.en files as the catalog's `tiny`, and a tiny wav2vec2 as the English aligner."""
    bundled = bundled_tiny_en()
    assert bundled is not None
    fake = FakeHub()
    fake.add_repo_from_dir(WHISPER_REPO, bundled)
    fake.add_repo_from_dir(ALIGN_REPO, tiny_align_model)
    async with serving_as_endpoint(fake, monkeypatch):
        yield fake


@pytest.fixture
def make_client(make_client: ClientFactory) -> ClientFactory:
    """conftest's clients, without preloading the default model (these tests manage models)."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        overrides.setdefault("models", {}).setdefault("preload_on_start", False)
        return await make_client(**overrides)

    return make


@pytest.mark.slow
async def test_download_with_progress_then_the_model_transcribes(
    make_client: ClientFactory, hub: FakeHub, speech: Speech
) -> None:
    hub.throttle_bytes_per_s = 40e6  # about two seconds for model.bin: several progress events
    client = await make_client()
    events = await model_events(client)
    assert (await catalog_entry(client, "whisper", "tiny"))["status"] == "not_downloaded"
    assert (await catalog_entry(client, "whisper", "tiny.en"))["status"] == "ready"

    resp = await client.post("/api/models/whisper/tiny/download")
    assert resp.status == 202 and (await resp.json())["status"] == "started"
    seen = await events.until(done_for("whisper", "tiny"), wait=120)
    progress = [e.data for e in seen if e.event == "model_progress" and e.data["model_id"] == "tiny"]
    downloading = [p for p in progress if p["status"] == "downloading"]
    sizes = [p["downloaded_bytes"] for p in downloading]
    assert len(set(sizes)) >= 3 and sizes == sorted(sizes)
    assert any(p["speed_mbps"] > 0 and p["eta_s"] is not None for p in downloading)
    assert seen[-1].event == "model_complete" and seen[-1].data["total_time_seconds"] > 0

    entry = await catalog_entry(client, "whisper", "tiny")
    assert entry["status"] == "ready" and entry["path"] == "models/whisper/tiny"
    # Asking for the Whisper model also queued the default language's aligner.
    await events.until(done_for("align", "en"), wait=60)
    assert (await catalog_entry(client, "align", "en"))["status"] == "ready"

    job = await upload(client, speech.path, {"model": "tiny", "language": "en"})
    stream = await open_stream(client, job["job_id"])
    await stream.until(is_complete, wait=180)
    text = await (await client.get(f"/api/transcription-text/{job['job_id']}")).json()
    assert text["alignment"] == "wav2vec2" and "fox" in text["text"].lower()


async def test_two_requests_download_once(make_client: ClientFactory, hub: FakeHub) -> None:
    hub.throttle_bytes_per_s = 200e3
    client = await make_client(transcription={"default_language": None})
    events = await model_events(client)
    first, second = await asyncio.gather(
        client.post("/api/models/align/en/download"),
        client.post("/api/models/align/en/download"),
    )
    statuses = sorted([(await first.json())["status"], (await second.json())["status"]])
    assert statuses == ["already_downloading", "started"]
    seen = await events.until(done_for("align", "en"), wait=60)
    assert seen[-1].event == "model_complete", seen[-1].data
    assert (await (await client.post("/api/models/align/en/download")).json())["status"] == "ready"
    for name in hub.repos[ALIGN_REPO].files:
        assert hub.downloads(ALIGN_REPO, name) == 1, name


@pytest.mark.slow
async def test_killed_download_runner_resumes_without_refetching(
    make_client: ClientFactory, hub: FakeHub
) -> None:
    hub.throttle_bytes_per_s = 15e6
    client = await make_client(
        transcription={"default_language": None}, runners={"restart_backoff_initial": 0.1}
    )
    events = await model_events(client)
    await client.post("/api/models/whisper/tiny/download")
    await events.until(
        lambda e: (
            e.event == "model_progress" and e.data["model_id"] == "tiny" and e.data["downloaded_bytes"] > 20e6
        ),
        wait=60,
    )
    downloader = client.app[SERVICE].pool.downloader
    pid = downloader.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    seen = await events.until(done_for("whisper", "tiny"), wait=120)
    assert seen[-1].event == "model_complete", seen[-1].data
    assert downloader.pid not in (None, pid)
    ranged = [r for name, r in hub.ranges if name == "model.bin"]
    assert ranged and int(ranged[-1].split("=")[1].split("-")[0]) > 10e6  # resumed, not restarted
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        assert hub.downloads(WHISPER_REPO, name) == 1, name
    assert (await catalog_entry(client, "whisper", "tiny"))["status"] == "ready"


async def test_corrupt_file_is_found_and_only_it_is_repaired(
    make_client: ClientFactory, make_settings: SettingsFactory, hub: FakeHub
) -> None:
    client = await make_client(transcription={"default_language": None})
    events = await model_events(client)
    await client.post("/api/models/align/en/download")
    await events.until(done_for("align", "en"), wait=60)
    weights = make_settings().models_dir / "align" / "en" / "model.safetensors"
    data = bytearray(await asyncio.to_thread(weights.read_bytes))
    data[100:110] = bytes(10)
    await asyncio.to_thread(weights.write_bytes, bytes(data))
    await client.close()

    client = await make_client(transcription={"default_language": None})  # a restart validates
    models = client.app[SERVICE].models
    for _ in range(100):
        if models.state("align", "en").status == "incomplete":
            break
        await asyncio.sleep(0.05)
    assert (await catalog_entry(client, "align", "en"))["status"] == "incomplete"
    events = await model_events(client)
    await client.post("/api/models/align/en/download")
    await events.until(done_for("align", "en"), wait=60)
    assert (await catalog_entry(client, "align", "en"))["status"] == "ready"
    assert hub.downloads(ALIGN_REPO, "model.safetensors") == 2
    for name in hub.repos[ALIGN_REPO].files:
        if name != "model.safetensors":
            assert hub.downloads(ALIGN_REPO, name) == 1, name


async def test_mirror_down_falls_back_then_both_down_is_a_clear_error(
    make_client: ClientFactory, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    down = FakeHub()
    down.down = True
    down_url, stop = await start_fake_hub(down)
    try:
        client = await make_client(transcription={"default_language": None}, models={"mirrors": [down_url]})
        events = await model_events(client)
        await client.post("/api/models/align/en/download")
        seen = await events.until(done_for("align", "en"), wait=60)
        assert seen[-1].event == "model_complete"
        assert down.requests and all(path.startswith("/api/models/") for _, path in down.requests)
        await client.close()

        hub.down = True
        client = await make_client(transcription={"default_language": None}, models={"mirrors": [down_url]})
        events = await model_events(client)
        await client.post("/api/models/align/de/download")
        seen = await events.until(done_for("align", "de"), wait=60)
        error = seen[-1]
        assert error.event == "model_error" and error.data["status"] == "error"
        assert down_url in error.data["error"] and "503" in error.data["error"]
        entry = await catalog_entry(client, "align", "de")
        assert entry["status"] == "error" and entry["path"] is None
    finally:
        await stop()


@pytest.mark.slow
async def test_delete_refused_while_in_use_then_removes_everything(
    make_client: ClientFactory, make_settings: SettingsFactory, hub: FakeHub, speech: Speech
) -> None:
    client = await make_client(transcription={"default_language": None})
    events = await model_events(client)
    await client.post("/api/models/whisper/tiny/download")
    await events.until(done_for("whisper", "tiny"), wait=60)
    job = await upload(client, speech.path, {"model": "tiny", "language": "en", "align": False})
    stream = await open_stream(client, job["job_id"])
    await stream.until(lambda e: e.event == "progress" and e.data["phase"] == "transcribe")
    resp = await client.delete("/api/models/whisper/tiny")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "in_use"
    await stream.until(is_complete, wait=180)

    cache = await (await client.get("/api/models/cache/status")).json()
    assert "whisper:tiny" in [m["key"] for m in cache["runners"][0]["loaded"]]
    resp = await client.delete("/api/models/whisper/tiny")
    assert resp.status == 200
    deleted = await events.until(lambda e: e.event == "model_deleted")
    assert deleted[-1].data["model_id"] == "tiny" and deleted[-1].data["deleted_at"] > 0
    assert not (make_settings().models_dir / "whisper" / "tiny").exists()
    cache = await (await client.get("/api/models/cache/status")).json()
    assert "whisper:tiny" not in [m["key"] for m in cache["runners"][0]["loaded"]]
    assert (await catalog_entry(client, "whisper", "tiny"))["status"] == "not_downloaded"
    bundled = await client.delete("/api/models/whisper/tiny.en")
    assert bundled.status == 409 and (await bundled.json())["error"]["code"] == "bundled"


@pytest.mark.slow
async def test_job_waits_for_its_missing_aligner_or_falls_back(
    make_client: ClientFactory, hub: FakeHub, speech: Speech
) -> None:
    client = await make_client(transcription={"default_language": None})
    job = await upload(client, speech.path)
    stream = await open_stream(client, job["job_id"])
    events = await stream.until(is_complete, wait=180)
    messages = [e.data["message"] for e in events if e.event == "progress" and e.data["phase"] == "align"]
    assert any("alignment model" in m for m in messages), messages
    final = await (await client.get(f"/api/jobs/{job['job_id']}")).json()
    assert final["alignment"] == "wav2vec2"
    assert hub.downloads(ALIGN_REPO, "config.json") == 1


async def test_hub_down_job_completes_with_whisper_timings(
    make_client: ClientFactory, hub: FakeHub, speech: Speech
) -> None:
    hub.down = True
    client = await make_client(transcription={"default_language": None})
    job = await upload(client, speech.path)
    stream = await open_stream(client, job["job_id"])
    await stream.until(is_complete, wait=180)
    final = await (await client.get(f"/api/jobs/{job['job_id']}")).json()
    assert final["status"] == "completed" and final["alignment"] == "whisper"
    meta = await (await client.get(f"/api/jobs/{job['job_id']}/subtitles?format=json")).json()
    assert meta["alignment"] == "whisper"
    entry = await catalog_entry(client, "align", "en")
    assert entry["status"] == "error" and "503" in entry["error"]


@pytest.mark.slow
async def test_preload_loads_the_default_model_once(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client(models={"preload_on_start": False})
    resp = await client.post("/api/models/preload/start")
    assert (await resp.json())["status"] == "started"
    again = await (await client.post("/api/models/preload/start")).json()
    assert again["status"] in ("already_running", "started")
    for _ in range(600):
        status = await (await client.get("/api/models/preload/status")).json()
        if not status["running"]:
            break
        await asyncio.sleep(0.1)
    assert status["runners"]["runner-0"]["status"] == "loaded", status
    cache = await (await client.get("/api/models/cache/status")).json()
    assert [m["key"] for m in cache["runners"][0]["loaded"]] == ["whisper:tiny.en"]
    assert cache["runners"][0]["load_count"] == 1
    assert cache["runners"][0]["memory"]["rss_bytes"] > 0

    job = await upload(client, speech.path, {"align": False})
    stream = await open_stream(client, job["job_id"])
    await stream.until(is_complete, wait=180)
    cache = await (await client.get("/api/models/cache/status")).json()
    assert cache["runners"][0]["load_count"] == 1  # the job spent no time loading

    cleared = await (await client.post("/api/models/cache/clear")).json()
    assert cleared["unloaded"] == ["whisper:tiny.en"]
    reset = await (await client.post("/api/models/preload/reset")).json()
    assert reset["runners"]["runner-0"]["failures"] == 0


async def test_offline_mode_is_honoured(
    make_client: ClientFactory, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = await make_client(transcription={"default_language": None})
    events = await model_events(client)
    await client.post("/api/models/align/en/download")
    seen = await events.until(done_for("align", "en"), wait=60)
    assert seen[-1].event == "model_error" and "offline" in seen[-1].data["error"]
    assert not hub.requests


async def test_unknown_models_are_404(make_client: ClientFactory) -> None:
    client = await make_client()
    for method, path in [
        ("POST", "/api/models/whisper/huge/download"),
        ("POST", "/api/models/align/xx/download"),
        ("DELETE", "/api/models/whisper/huge"),
        ("POST", "/api/models/other/x/download"),
        ("GET", "/api/models/events/whisper/huge"),
    ]:
        resp = await client.request(method, path)
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found", path


@pytest.mark.serial
@pytest.mark.slow
async def test_event_loop_stays_responsive_during_a_job_and_a_download(
    make_client: ClientFactory, hub: FakeHub, speech: Speech
) -> None:
    hub.throttle_bytes_per_s = 20e6
    client = await make_client(transcription={"default_language": None})
    async with loop_lag() as lags:
        await download_while_transcribing(client, speech, lags)


async def download_while_transcribing(
    client: TestClient[Any, Any], speech: Speech, lags: list[float]
) -> None:
    events = await model_events(client)
    await client.post("/api/models/whisper/tiny/download")
    job = await upload(client, speech.path, {"align": False})
    status_ms: list[float] = []
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        resp = await client.get(f"/api/status/{job['job_id']}")
        status_ms.append((loop.time() - started) * 1000)
        status = (await resp.json())["status"]
        if status in ("completed", "failed"):
            break
        await asyncio.sleep(0.05)
    assert status == "completed"
    seen = await events.until(done_for("whisper", "tiny"), wait=120)
    assert seen[-1].event == "model_complete"  # a download really ran alongside the job
    assert len(lags) > 100 and max(lags) < 0.1, f"loop lag up to {max(lags) * 1000:.0f} ms"
    assert max(status_ms) < 500, max(status_ms)


async def test_cancel_a_download_then_resume_it(make_client: ClientFactory, hub: FakeHub) -> None:
    hub.throttle_bytes_per_s = 10e6
    client = await make_client(transcription={"default_language": None})
    one = SseReader(await client.get("/api/models/events/whisper/tiny"))
    assert (await one.next()).data["models"][0]["id"] == "tiny"
    await client.post("/api/models/whisper/tiny/download")
    await one.until(lambda e: e.event == "model_progress" and e.data["downloaded_bytes"] > 5e6)
    canceled = await (await client.post("/api/models/whisper/tiny/cancel")).json()
    assert canceled["canceled"] is True
    stopped = await one.until(lambda e: e.data.get("message") == "download canceled")
    assert all(e.data.get("model_id", "tiny") == "tiny" for e in stopped)  # only this model
    assert (await catalog_entry(client, "whisper", "tiny"))["status"] in ("not_downloaded", "incomplete")

    hub.throttle_bytes_per_s = None
    await client.post("/api/models/whisper/tiny/download")
    done = await one.until(done_for("whisper", "tiny"), wait=120)
    assert done[-1].event == "model_complete"
    ranged = [int(r.split("=")[1].split("-")[0]) for name, r in hub.ranges if name == "model.bin"]
    assert ranged and ranged[-1] > 0, "the second download started over"


async def test_cli_models_download_and_delete(hub: FakeHub, tmp_path: Path) -> None:
    async def vsrt(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vsrt_service.cli",
            "models",
            *args,
            "--data-dir",
            str(tmp_path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        return proc.returncode or 0, out.decode(), err.decode()

    code, _, err = await vsrt("download", "en", "--align")
    assert code == 0, err
    assert "ready" in err  # the progress line ends ready
    code, out, _ = await vsrt("list")
    line = next(li for li in out.splitlines() if li.strip().startswith("en "))
    assert "ready" in line and "models/align/en" in line
    code, out, _ = await vsrt("delete", "en", "--align")
    assert code == 0 and "deleted" in out
    assert not (tmp_path / "models" / "align" / "en").exists()
    code, _, err = await vsrt("download", "nope")
    assert code == 2 and "no whisper model 'nope'" in err
    hub.down = True
    code, _, err = await vsrt("download", "de", "--align")
    assert code == 1 and "download failed" in err and "503" in err


async def test_cancel_lets_its_callers_own_cancellation_through(
    make_client: ClientFactory, hub: FakeHub
) -> None:
    hub.throttle_bytes_per_s = 2e6
    client = await make_client(transcription={"default_language": None})
    one = SseReader(await client.get("/api/models/events/whisper/tiny"))
    await one.next()
    await client.post("/api/models/whisper/tiny/download")
    await one.until(lambda e: e.event == "model_progress" and e.data["downloaded_bytes"] > 0)
    models = client.app[SERVICE].models
    download = models.state("whisper", "tiny").task
    assert download is not None
    canceling = asyncio.create_task(models.cancel("whisper", "tiny"))
    while not download.cancelling():  # noqa: ASYNC110 - until `canceling` has asked, and awaits it
        await asyncio.sleep(0)
    assert not download.done()  # `canceling` is waiting for the download to end...
    canceling.cancel()  # ...when its own caller gives up: that must reach the caller
    with pytest.raises(asyncio.CancelledError):
        await canceling
    with contextlib.suppress(asyncio.CancelledError):
        await download
    assert download.cancelled()  # and the download was canceled all the same


def _place(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    for f in source.iterdir():
        try:
            os.link(f, target / f.name)
        except OSError:  # another file system
            shutil.copy2(f, target / f.name)


@pytest.fixture
async def tiny_installed(make_settings: SettingsFactory) -> Path:
    """The catalog's `tiny`, installed by hand (tiny.en's files): deleting it needs no hub."""
    bundled = bundled_tiny_en()
    assert bundled is not None
    settings: Settings = make_settings()
    target = settings.models_dir / "whisper" / "tiny"
    await asyncio.to_thread(_place, bundled, target)
    return target


async def busy_runner(client: TestClient[Any, Any], speech: Speech) -> tuple[str, SseReader]:
    """A job on the bundled tiny.en, once its runner is inside a long call: two-second
    segments (a dozen; each costs a full Whisper window), one at a time (the client's
    batch_size is 1). Returns its id and stream."""
    assert (await catalog_entry(client, "whisper", "tiny"))["status"] == "ready"
    job = await upload(
        client, speech.path, {"model": "tiny.en", "language": "en", "align": False, "chunk_size": 2}
    )
    stream = await open_stream(client, job["job_id"])
    await stream.until(lambda e: e.event == "fragment", wait=180)
    return job["job_id"], stream


@pytest.mark.slow
async def test_delete_answers_at_once_while_the_runner_is_busy(
    make_client: ClientFactory, tiny_installed: Path, speech: Speech
) -> None:
    client = await make_client(transcription={"batch_size": 1})
    job_id, stream = await busy_runner(client, speech)
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await client.delete("/api/models/whisper/tiny")
    took = loop.time() - started
    assert resp.status == 200, await resp.text()
    job = await (await client.get(f"/api/status/{job_id}")).json()
    # The answer did not wait for the end of the runner's transcription call.
    assert job["phase"] == "transcribe" and job["processed"] < job["total"], (job, took)
    assert took < 5, took
    assert not await asyncio.to_thread(tiny_installed.exists)
    assert (await catalog_entry(client, "whisper", "tiny"))["status"] == "not_downloaded"
    await stream.until(is_complete, wait=180)  # the job, on another model, is unaffected


@pytest.mark.slow
async def test_a_model_being_deleted_is_never_ready_without_its_files(
    make_client: ClientFactory, tiny_installed: Path, speech: Speech
) -> None:
    client = await make_client(transcription={"batch_size": 1})
    events = await model_events(client)
    _, stream = await busy_runner(client, speech)
    weights = tiny_installed / "model.bin"
    deleting = asyncio.create_task(client.delete("/api/models/whisper/tiny"))
    seen: list[tuple[bool, str]] = []
    while not deleting.done():
        present = await asyncio.to_thread(weights.is_file)  # the files first, then the state
        seen.append((present, (await catalog_entry(client, "whisper", "tiny"))["status"]))
    assert (await deleting).status == 200
    assert (False, "ready") not in seen, seen
    changes = await events.until(lambda e: e.event == "model_deleted")
    assert [e.data["status"] for e in changes if e.data.get("model_id") == "tiny"][-1] == "not_downloaded"
    assert all(e.data["status"] != "ready" for e in changes if e.data.get("model_id") == "tiny")
    await stream.until(is_complete, wait=180)


@pytest.mark.slow
async def test_a_job_claimed_while_its_model_is_deleted_fails_with_model_missing(
    make_client: ClientFactory, tiny_installed: Path, speech: Speech
) -> None:
    # Two runners: the first busy with a job on tiny.en, the second free for the next job.
    client = await make_client(transcription={"batch_size": 1}, runners={"devices": ["cpu", "cpu"]})
    _, stream = await busy_runner(client, speech)
    deleting = asyncio.create_task(client.delete("/api/models/whisper/tiny"))
    weights = tiny_installed / "model.bin"
    async with asyncio.timeout(60):
        while await asyncio.to_thread(weights.is_file):  # noqa: ASYNC110 - the DELETE removes it
            await asyncio.sleep(0.01)
    job = await upload(client, speech.path, {"model": "tiny", "language": "en", "align": False})
    failed = await (await open_stream(client, job["job_id"])).until(lambda e: e.event == "error", wait=180)
    assert (await deleting).status == 200
    error = failed[-1].data
    assert error["code"] == "model_missing", error
    assert "tiny" in error["message"] and "download" in error["message"], error
    status = await (await client.get(f"/api/status/{job['job_id']}")).json()
    assert status["status"] == "failed" and status["error"]["code"] == "model_missing"
    await stream.until(is_complete, wait=180)
