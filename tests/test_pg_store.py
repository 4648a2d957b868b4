"""The job store on a real PostgreSQL server (the session's throwaway cluster): what only it
has (schema versions under an advisory lock, connection errors), and a real job run on it.
The JobStore contract runs on it with SQLite's (tests/test_store.py, `BACKENDS`)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ServiceFactory
from tests.media import make_speech, word_error_rate
from tests.pg import USER, Cluster
from tests.test_pipeline import transcript
from vsrt_service.jobs.pg_store import MIGRATIONS, SCHEMA_VERSION, PgJobStore
from vsrt_service.jobs.store import StoreError, StoreUnavailable

#: A few seconds of speech: the store is under test here, not the recognition.
SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Subtitles are stored in the database."]


async def test_nodes_starting_together_migrate_the_schema_once(pg_url: str) -> None:
    """Five nodes open a new database at the same moment: one creates the schema under the
    advisory lock, the others wait and find it made (no duplicate-table errors)."""

    async def node() -> int:
        async with PgJobStore.open(pg_url) as store:
            return await store.count_jobs()

    assert await asyncio.gather(*(node() for _ in range(5))) == [0] * 5
    db = await asyncpg.connect(pg_url)
    try:
        versions = [r[0] for r in await db.fetch("SELECT version FROM schema_versions ORDER BY version")]
    finally:
        await db.close()
    assert versions == sorted(MIGRATIONS)


async def test_jobs_of_before_the_model_column_get_their_model(pg_url: str) -> None:
    """Migration 6 fills the new `model` column of older rows from their settings, without
    jsonb (which refuses some text a prompt may hold): claims by model find them."""
    async with PgJobStore.open(pg_url) as store:
        plain = await store.create_job(source_name="a", input_path="a", options={"model": "base.en"})
        odd = await store.create_job(
            source_name="b", input_path="b", options={"initial_prompt": "x\x00\ud800", "model": "small"}
        )
        none = await store.create_job(source_name="c", input_path="c", options={})
        async with store.pool.acquire() as db:
            await db.execute("UPDATE jobs SET model = NULL")  # as version 5 left them
            await db.execute(MIGRATIONS[6])
            models = dict(await db.fetch("SELECT id, model FROM jobs"))
        assert models == {plain.id: "base.en", odd.id: "small", none.id: None}


async def test_a_database_from_a_newer_vsrt_is_refused(pg_url: str) -> None:
    async with PgJobStore.open(pg_url):
        pass
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute("INSERT INTO schema_versions (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await db.close()
    with pytest.raises(StoreError, match="newer than this vsrt"):
        async with PgJobStore.open(pg_url):
            pass


async def test_an_unreachable_server_is_a_clear_error_without_the_password(pg_cluster: Cluster) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        with pytest.raises(StoreUnavailable) as caught:
            async with PgJobStore.open(f"postgresql://vsrt:s3cret@127.0.0.1:{port}/vsrt"):
                pass
    message = str(caught.value)
    assert f"cannot open the job store at postgresql://vsrt:***@127.0.0.1:{port}/vsrt: " in message
    assert "s3cret" not in message
    # A server that is there but has no such database says so too.
    with pytest.raises(StoreUnavailable, match="no_such_db"):
        async with PgJobStore.open(pg_cluster.url("no_such_db")):
            pass


async def test_a_role_that_may_not_make_the_schema_is_a_clear_error(pg_url: str) -> None:
    """A server that answers but refuses the schema (PostgreSQL 15 lets only the database's owner
    create tables in `public`) says so at start, as a store error, not an asyncpg traceback."""
    role = f"reader_{uuid.uuid4().hex[:8]}"
    db = await asyncpg.connect(pg_url)
    try:
        await db.execute(f"CREATE ROLE {role} LOGIN")
    finally:
        await db.close()
    as_reader = pg_url.replace(f"{USER}@", f"{role}@")
    with pytest.raises(StoreUnavailable, match=r"cannot prepare the job store at .*: permission denied"):
        async with PgJobStore.open(as_reader):
            pass


@pytest.mark.slow
async def test_a_service_runs_a_real_job_on_postgresql(
    make_service: ServiceFactory, pg_url: str, tmp_path: Path
) -> None:
    """`store.url` puts the jobs in PostgreSQL: a real job runs to completion there, each segment
    transcribed once, while the host's model state stays in its SQLite file."""
    speech = await asyncio.to_thread(make_speech, tmp_path / "short.wav", SENTENCES, video=False)
    svc = await make_service(store={"url": pg_url})
    assert isinstance(svc.store, PgJobStore)
    job = await svc.submit(speech.path)
    done = await svc.finished(job.id)
    assert done.status == "completed" and done.total > 0 and done.processed == done.total
    assert word_error_rate(speech.text, transcript(await svc.subtitles(job.id, "srt"))) < 0.25
    db = await asyncpg.connect(pg_url)
    try:
        row = await db.fetchrow("SELECT status, attempts FROM jobs WHERE id = $1", job.id)
        counts = [
            r[0] for r in await db.fetch("SELECT transcribe_count FROM segments WHERE job_id = $1", job.id)
        ]
    finally:
        await db.close()
    assert row is not None and (row["status"], row["attempts"]) == ("completed", 1)
    assert counts == [1] * done.total
    # The SQLite file holds this host's model state only: no jobs went there.
    with sqlite3.connect(svc.settings.database_path) as local:
        tables = {r[0] for r in local.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "jobs" not in tables
