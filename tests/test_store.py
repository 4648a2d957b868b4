"""The job store on real SQLite files: the JobStore contract, then what only SQLite has
(schema versions, WAL, synchronous commits, connections), then the per-host model state store."""

from __future__ import annotations

import ast
import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

import vsrt_service.models
from tests.store_contract import JobStoreContract, make_jobs
from vsrt_service.core.integrity import ManifestFile
from vsrt_service.jobs.sqlite_store import SCHEMA_VERSION, SqliteJobStore
from vsrt_service.jobs.store import StoreError
from vsrt_service.models.state_store import ModelStateStore


class TestJobStoreContract(JobStoreContract):
    """The contract suite, run against every implementation in `store_contract.BACKENDS`."""


# --- SQLite only ---------------------------------------------------------------------------


async def test_commits_are_synchronous(tmp_path: Path) -> None:
    """An acknowledged write (a user's edited cues) is on disk before the API answers: in WAL
    mode only synchronous=FULL syncs the log at every commit."""
    async with SqliteJobStore.open(tmp_path / "db") as store:
        async with store._w.db.execute("PRAGMA synchronous") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == 2  # FULL


async def test_a_failed_write_rolls_back(tmp_path: Path) -> None:
    async with SqliteJobStore.open(tmp_path / "db") as store:
        (job_id,) = await make_jobs(store, 1)
        with pytest.raises(sqlite3.IntegrityError):
            await store.create_job(source_name="x", input_path="x", options={}, job_id=job_id)
        assert await store.count_jobs() == 1
        # The writer is usable afterwards (the transaction was not left open).
        await store.update_progress(job_id, phase="split", percent=6, message="ok")


async def test_schema_is_versioned(tmp_path: Path) -> None:
    db = tmp_path / "db"
    async with SqliteJobStore.open(db):
        pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this vsrt"):
        async with SqliteJobStore.open(db):
            pass


async def test_connections_are_closed_on_exit(tmp_path: Path) -> None:
    await asyncio.to_thread(int)  # the loop's executor thread (file work) lives on: not counted
    before = set(threading.enumerate())
    async with SqliteJobStore.open(tmp_path / "db") as store:
        await make_jobs(store, 1)
        assert len(set(threading.enumerate()) - before) == 2  # writer and reader threads
    await asyncio.sleep(0.05)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]


# --- model state: per host, its own store on the same file ---------------------------------

#: The models table as vsrt wrote it since schema version 2 (databases in use have it).
OLD_MODELS_TABLE = """
CREATE TABLE models (type TEXT NOT NULL, id TEXT NOT NULL, status TEXT NOT NULL, endpoint TEXT,
    commit_sha TEXT, manifest TEXT, error TEXT, updated_at REAL NOT NULL, PRIMARY KEY (type, id))
"""


async def test_model_state_is_saved_and_read_back(tmp_path: Path) -> None:
    db = tmp_path / "vsrt.sqlite3"
    async with SqliteJobStore.open(db), ModelStateStore.open(db) as models:
        assert await models.rows() == []
        manifest = [ManifestFile(name="model.bin", size=3, sha256="ab", blob_id=None)]
        await models.save(
            "whisper", "tiny.en", "ready", endpoint="https://hub", commit_sha="c1", manifest=manifest
        )
        await models.save("whisper", "tiny.en", "error", error="disk full")  # keeps the manifest
        await models.save("align", "en", "downloading")
        rows = {(r["type"], r["id"]): r for r in await models.rows()}
        tiny = rows["whisper", "tiny.en"]
        assert (tiny["status"], tiny["error"], tiny["endpoint"], tiny["commit_sha"]) == (
            "error",
            "disk full",
            "https://hub",
            "c1",
        )
        assert tiny["manifest"] == manifest
        assert rows["align", "en"]["status"] == "downloading" and rows["align", "en"]["manifest"] is None
        await models.save("whisper", "tiny.en", "not_downloaded", keep_manifest=False)
        rows = {(r["type"], r["id"]): r for r in await models.rows()}
        assert rows["whisper", "tiny.en"]["manifest"] is None


async def test_an_existing_database_keeps_its_model_rows(tmp_path: Path) -> None:
    """A database from before the split has its models table already: its rows stay."""
    db = tmp_path / "vsrt.sqlite3"
    async with SqliteJobStore.open(db):
        pass
    with sqlite3.connect(db) as conn:
        conn.execute(OLD_MODELS_TABLE)
        conn.execute("INSERT INTO models VALUES ('whisper', 'base', 'error', NULL, NULL, '[]', 'x', 1.0)")
    conn.close()
    async with SqliteJobStore.open(db) as jobs, ModelStateStore.open(db) as models:
        assert [(r["id"], r["status"], r["error"], r["manifest"]) for r in await models.rows()] == [
            ("base", "error", "x", [])
        ]
        await make_jobs(jobs, 1)


async def test_model_state_and_jobs_write_to_one_file_at_once(tmp_path: Path) -> None:
    """Two writers on one database, each with its own connection: neither fails as busy, and a
    model state store opened before the job store ever was leaves the job schema to it."""
    db = tmp_path / "vsrt.sqlite3"
    async with ModelStateStore.open(db) as models, SqliteJobStore.open(db) as jobs:
        await asyncio.gather(
            make_jobs(jobs, 20),
            *(models.save("whisper", f"m{i}", "downloading") for i in range(20)),
        )
        assert await jobs.count_jobs() == 20 and len(await models.rows()) == 20
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()


async def test_a_cancelled_model_state_write_never_poisons_the_store(tmp_path: Path) -> None:
    async with ModelStateStore.open(tmp_path / "db") as models:
        for yields in range(8):
            task = asyncio.create_task(models.save("align", "en", "downloading"))
            for _ in range(yields):
                await asyncio.sleep(0)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await models.save("align", "en", "ready")  # no "transaction within a transaction"
        assert [r["status"] for r in await models.rows()] == ["ready"]


def test_the_models_layer_does_not_import_jobs() -> None:
    """Model state is per host, not a job's: no module of the models layer imports the jobs
    layer (or anything above it)."""
    above = ("vsrt_service.jobs", "vsrt_service.service", "vsrt_service.web", "vsrt_service.cli")
    package = Path(vsrt_service.models.__file__).parent
    found = []
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{module.name}: {n}" for n in names if n.startswith(above)]
    assert found == []
