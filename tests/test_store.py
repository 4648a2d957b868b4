"""The job store on real SQLite files: claims, leases, checkpoints, schema, closing."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from vsrt_service.jobs.store import SCHEMA_VERSION, JobStatus, Store, StoreError


async def make_jobs(store: Store, n: int) -> list[str]:
    return [
        (await store.create_job(source_name=f"f{i}.mp4", input_path=f"f{i}.mp4", settings={"i": i})).id
        for i in range(n)
    ]


async def test_two_stores_never_claim_the_same_job(tmp_path: Path) -> None:
    """Two writers on one file (as two processes would be): every job is claimed once."""
    db = tmp_path / "jobs.sqlite3"
    async with Store.open(db) as a, Store.open(db) as b:
        ids = await make_jobs(a, 30)
        claimed: dict[str, list[str]] = {"a": [], "b": []}

        async def claimer(store: Store, name: str) -> None:
            while (job := await store.claim_next(name, 60)) is not None:
                claimed[name].append(job.id)

        await asyncio.gather(claimer(a, "a"), claimer(b, "b"), claimer(a, "a"), claimer(b, "b"))
        together = claimed["a"] + claimed["b"]
        assert sorted(together) == sorted(ids)
        assert len(set(together)) == len(together)
        job = await a.get_job(ids[0])
        assert job is not None and job.status == "processing" and job.attempts == 1


async def test_expired_lease_is_taken_over_and_old_owner_notices(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db") as store:
        (job_id,) = await make_jobs(store, 1)
        first = await store.claim_next("old", 0.05)
        assert first is not None and first.id == job_id
        assert await store.claim_next("new", 60) is None  # lease still valid
        await asyncio.sleep(0.1)
        second = await store.claim_next("new", 60)
        assert second is not None and second.lease_owner == "new" and second.attempts == 2
        assert first.claim and second.claim and first.claim != second.claim
        # The lease belongs to the claim: the old run can neither renew nor finish it.
        assert await store.renew_lease(job_id, first.claim, 60) is False
        assert await store.renew_lease(job_id, second.claim, 60) is True
        assert await store.set_status(job_id, JobStatus.FAILED, "x", expect=[JobStatus.PROCESSING],
                                      claim=first.claim) is None
        with pytest.raises(StoreError):
            await store.update_progress(job_id, phase="x", percent=1, message="x", claim=first.claim)
        done = await store.set_status(job_id, JobStatus.COMPLETED, "done", expect=[JobStatus.PROCESSING],
                                      claim=second.claim)
        assert done is not None and done.status == "completed" and done.claim is None


async def test_status_changes_are_compare_and_set(tmp_path: Path) -> None:
    """A change that expects another state changes nothing: a pause that lost the race to a
    claim cannot overwrite `processing`, nor a start re-queue a running job, nor a delete
    remove one."""
    async with Store.open(tmp_path / "db") as store:
        (job_id,) = await make_jobs(store, 1)
        claimed = await store.claim_next("me", 60)
        assert claimed is not None
        assert await store.set_status(job_id, JobStatus.PAUSED, "p", expect=[JobStatus.QUEUED]) is None
        assert await store.requeue(job_id, {"a": 1}, restart=False) is None
        assert await store.delete_job(job_id) is False
        job = await store.get_job(job_id)
        assert job is not None and job.status == "processing" and job.settings == {"i": 0}
        paused = await store.set_status(job_id, JobStatus.PAUSED, "p", expect=[JobStatus.PROCESSING],
                                        claim=claimed.claim)
        assert paused is not None and paused.lease_owner is None
        await store.save_segments(job_id, [(0.0, 1.0)], {"model": "m"}, 1.0)
        queued = await store.requeue(job_id, {"a": 2}, restart=True)
        assert queued is not None and queued.status == "queued" and queued.settings == {"a": 2}
        assert queued.checkpoint_settings is None and await store.segments(job_id) == []
        assert await store.delete_job(job_id) is True
        assert await store.get_job(job_id) is None


async def test_commits_are_synchronous(tmp_path: Path) -> None:
    """An acknowledged write (a user's edited cues) is on disk before the API answers: in WAL
    mode only synchronous=FULL syncs the log at every commit."""
    async with Store.open(tmp_path / "db") as store:
        async with store._w.execute("PRAGMA synchronous") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] == 2  # FULL


async def test_claim_can_be_restricted_to_some_jobs(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db") as store:
        _, second = await make_jobs(store, 2)
        assert await store.claim_next("me", 60, only=set()) is None
        job = await store.claim_next("me", 60, only={second})
        assert job is not None and job.id == second


async def test_percent_never_goes_down_and_phases_are_recorded(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db") as store:
        (job_id,) = await make_jobs(store, 1)
        await store.update_progress(job_id, phase="transcribe", percent=40, message="a")
        job = await store.update_progress(job_id, phase="transcribe", percent=30, message="b")
        assert job.percent == 40 and job.message == "b"
        await store.update_progress(job_id, phase="align", percent=85, message="c")
        phases = [t["phase"] for t in await store.transitions(job_id)]
        assert phases == ["queued", "transcribe", "align"]


async def test_a_segment_checkpoint_is_written_once(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db") as store:
        (job_id,) = await make_jobs(store, 1)
        await store.save_segments(job_id, [(0.0, 1.0), (1.5, 3.0)], {"model": "tiny.en"}, 3.0)
        assert await store.save_transcript(job_id, 0, "hello", "en") is True
        assert await store.save_transcript(job_id, 0, "again", "en") is False
        segments = await store.segments(job_id)
        assert [(s.text, s.transcribe_count) for s in segments] == [("hello", 1), (None, 0)]
        job = await store.get_job(job_id)
        assert job is not None and job.processed == 1 and job.total == 2
        assert job.checkpoint_settings == {"model": "tiny.en"}
        assert await store.record_crash(job_id, [1]) == 1
        assert await store.record_crash(job_id, [1]) == 2


async def test_a_failed_write_rolls_back(tmp_path: Path) -> None:
    async with Store.open(tmp_path / "db") as store:
        (job_id,) = await make_jobs(store, 1)
        with pytest.raises(sqlite3.IntegrityError):
            await store.create_job(source_name="x", input_path="x", settings={}, job_id=job_id)
        assert await store.count_jobs() == 1
        # The writer is usable afterwards (the transaction was not left open).
        await store.update_progress(job_id, phase="split", percent=6, message="ok")


async def test_schema_is_versioned(tmp_path: Path) -> None:
    db = tmp_path / "db"
    async with Store.open(db):
        pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer than this vsrt"):
        async with Store.open(db):
            pass


async def test_connections_are_closed_on_exit(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    async with Store.open(tmp_path / "db") as store:
        await make_jobs(store, 1)
        assert len(set(threading.enumerate()) - before) == 2  # writer and reader threads
    await asyncio.sleep(0.05)
    assert not [t for t in set(threading.enumerate()) - before if t.is_alive()]
