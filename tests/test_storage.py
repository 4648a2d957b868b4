"""The storage root: uploads and job folders under a directory every node sees, the per-host
files (database, models, lock) in the data directory, and housekeeping that leaves another
node's fresh files alone."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from tests.conftest import ClientFactory, ServiceFactory, SettingsFactory
from tests.http_helpers import upload
from tests.media import Speech
from vsrt_service.cli import _settings, build_parser
from vsrt_service.core.config import ConfigError, load_settings
from vsrt_service.jobs.datadir import LOCK_NAME
from vsrt_service.jobs.store import JobStatus
from vsrt_service.service import Service, open_store

#: Older than the grace period a shared root gives other nodes' fresh files (an hour).
LONG_AGO = 2 * 3600.0

# --- settings --------------------------------------------------------------------------------


def test_storage_root_from_the_file_the_environment_and_the_flag(tmp_path: Path) -> None:
    data, shared = tmp_path / "data", tmp_path / "shared"
    plain = load_settings(env={}, data_dir=data)
    assert plain.storage.root == "" and plain.storage_root == data.resolve()
    assert plain.uploads_dir == data.resolve() / "uploads" and plain.jobs_dir == data.resolve() / "jobs"

    s = load_settings(env={"VSRT_STORAGE_ROOT": str(shared)}, data_dir=data)
    assert s.storage_root == shared.resolve()
    assert s.uploads_dir == shared.resolve() / "uploads" and s.jobs_dir == shared.resolve() / "jobs"
    # What is per host stays in the data directory.
    assert s.database_path.parent == data.resolve() and s.models_dir.parent == data.resolve()

    assert load_settings(env={}, data_dir=data, storage={"root": "media"}).storage_root == data / "media"
    cfg = tmp_path / "vsrt.toml"
    cfg.write_text(f'[storage]\nroot = "{shared}"\n')
    assert load_settings(cfg, env={}, data_dir=data).storage_root == shared.resolve()

    args = build_parser().parse_args(["serve", "--data-dir", str(data), "--storage-root", str(shared)])
    assert _settings(args).storage_root == shared.resolve()


def test_a_storage_root_inside_the_models_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.root"):
        load_settings(env={}, data_dir=tmp_path, storage={"root": "models/shared"})


async def test_postgresql_without_a_storage_root_warns_that_nodes_will_not_share_files(
    make_settings: SettingsFactory, pg_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="vsrt.service"):
        async with open_store(make_settings(store={"url": pg_url})):
            pass
    warned = [r.getMessage() for r in caplog.records if "storage.root" in r.getMessage()]
    assert len(warned) == 1 and "other nodes" in warned[0], caplog.text
    caplog.clear()
    shared = make_settings(store={"url": pg_url}, storage={"root": str(tmp_path / "shared")})
    with caplog.at_level(logging.WARNING, logger="vsrt.service"):
        async with open_store(shared):
            pass
    assert "storage.root" not in caplog.text


# --- where a job's files live ------------------------------------------------------------------


async def test_rows_of_older_versions_relative_to_the_data_dir_keep_working(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Older versions stored `input_path` relative to the data directory: with no storage
    root, that is the root, so those rows name the same file; new rows are relative to the root."""
    settings = make_settings()
    async with open_store(settings) as store:
        old = await store.create_job(source_name="a.mp4", input_path=f"uploads/{'a' * 32}.mp4", options={})
    from vsrt_service.jobs.storage import storage_for

    storage = storage_for(settings)
    assert storage.input_file(old.input_path) == settings.data_dir / "uploads" / f"{'a' * 32}.mp4"
    shared = storage_for(make_settings(storage={"root": str(tmp_path / "shared")}))
    inside = shared.upload_path(f"{'b' * 32}.mp4")
    assert shared.input_key(inside) == f"uploads/{'b' * 32}.mp4"
    assert shared.input_file(shared.input_key(inside)) == inside
    outside = tmp_path / "media" / "film.mkv"
    assert shared.input_key(outside) == str(outside) and shared.input_file(str(outside)) == outside


@pytest.mark.slow
async def test_a_job_keeps_its_upload_audio_and_outputs_under_the_storage_root(
    make_service: ServiceFactory, speech: Speech, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    svc = await make_service(storage={"root": str(root)}, jobs={"keep_audio_hours": 1})
    uploaded = svc.settings.uploads_dir / f"{'c' * 32}.wav"
    uploaded.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(speech.path, uploaded)
    job = await svc.submit(uploaded, source_name="speech.wav")
    assert job.input_path == f"uploads/{uploaded.name}"  # relative to the root, not the data dir
    assert (await svc.wait(job.id)).status == JobStatus.COMPLETED
    folder = root / "jobs" / job.id
    assert {"audio.wav", "subtitles.srt", "subtitles.json"} <= {p.name for p in folder.iterdir()}
    assert speech.sentences[0].text.split()[0].lower().strip(",.") in (await svc.subtitles(job.id)).lower()
    data = svc.settings.data_dir
    assert not (data / "uploads").exists() and not (data / "jobs").exists()
    per_host = {"vsrt.sqlite3", "models", LOCK_NAME}
    assert {p.name for p in data.iterdir() if not p.name.startswith("vsrt.sqlite3-")} <= per_host | {
        "webhook-secret"
    }
    await svc.delete(job.id)
    assert not folder.exists() and not uploaded.exists()


async def test_an_upload_over_http_is_stored_under_the_root_and_goes_with_its_job(
    make_client: ClientFactory, make_settings: SettingsFactory, speech: Speech, tmp_path: Path
) -> None:
    root = tmp_path / "shared"
    client = await make_client(storage={"root": str(root)}, runners={"enabled": False})
    job = await upload(client, speech.path, start=False)
    stored = list((root / "uploads").iterdir())
    assert len(stored) == 1 and stored[0].suffix == speech.path.suffix
    assert not (make_settings().data_dir / "uploads").exists()
    resp = await client.delete(f"/api/jobs/{job['job_id']}")
    assert resp.status == 200, await resp.text()
    assert list((root / "uploads").iterdir()) == []


# --- housekeeping on a shared root ---------------------------------------------------------------


async def test_two_nodes_on_one_root_never_remove_each_others_fresh_files(
    make_settings: SettingsFactory, tmp_path: Path
) -> None:
    """Node B starts while node A writes an upload (`.part`), has stored one whose job is not
    created yet, and just made a job folder: B's store knows none of them, yet keeps them all.
    The same leftovers an hour old are a crash's and go."""
    root = tmp_path / "shared"
    node_a = make_settings(data_dir=tmp_path / "a", storage={"root": str(root)})
    node_b = make_settings(data_dir=tmp_path / "b", storage={"root": str(root)})
    async with open_store(node_b) as store_b:  # a job both know (one PostgreSQL in production)
        job = await store_b.create_job(source_name="a.mp4", input_path="uploads/a.mp4", options={})
    async with Service(node_a, work_runners=False, run_jobs=False) as a:
        jobs = node_a.jobs_dir

        def leftovers(mark: str) -> list[Path]:
            return [
                a.storage.upload_path(f"{mark * 32}.mp4.part"),
                a.storage.upload_path(f"{mark * 32}.mkv"),
                a.storage.workdir(mark * 32),
                a.storage.workdir(job.id) / f"audio.wav.{mark}.part",
            ]

        fresh, old = leftovers("e"), leftovers("f")
        for path in fresh + old:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.parent == jobs:
                path.mkdir()
            else:
                path.write_bytes(b"x")
        then = time.time() - LONG_AGO
        for path in old:
            os.utime(path, (then, then))

        async with Service(node_b, work_runners=False, run_jobs=False):
            pass  # B's start-up clean-up; its first pass is over once it is closed
        assert [p for p in fresh if not p.exists()] == []
        assert [p for p in old if p.exists()] == []

    # A data directory of its own (not shared) is cleaned at once: nobody else writes there.
    alone = make_settings(data_dir=tmp_path / "c")
    stray = alone.uploads_dir / f"{'d' * 32}.mp4.part"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"x")
    async with open_store(alone):
        assert not stray.exists()
