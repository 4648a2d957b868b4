"""The JobStore contract: what any implementation must do, whatever keeps its rows.

`JobStoreContract` holds the tests; a test module subclasses it (tests/test_store.py does) and
pytest runs them once per implementation in `BACKENDS`. A new implementation (PostgreSQL)
adds one opener there and must pass the same suite unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from tests.pg import Cluster, fresh_database
from vsrt_service.core.protocol import AlignedSegment
from vsrt_service.jobs.pg_store import PgJobStore
from vsrt_service.jobs.sqlite_store import SqliteJobStore
from vsrt_service.jobs.store import (
    FINAL,
    DeliveryStatus,
    Job,
    JobStatus,
    JobStore,
    Notice,
    Renewal,
    StoreError,
)

#: Opens a store on the one database a test uses; each call is another client of it.
Opener = Callable[[], AbstractAsyncContextManager[JobStore]]


@contextlib.asynccontextmanager
async def sqlite_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A fresh database file per test; pytest's tmp_path removes it."""
    db = tmp_path / "jobs.sqlite3"
    yield lambda: SqliteJobStore.open(db)


@contextlib.asynccontextmanager
async def pg_backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A fresh database per test on the session's PostgreSQL cluster (skipped without one)."""
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    async with fresh_database(cluster) as url:
        yield lambda: PgJobStore.open(url)


#: name -> a context manager giving an opener on a fresh, empty database (cleaned up on exit).
BACKENDS: dict[str, Callable[[pytest.FixtureRequest, Path], AbstractAsyncContextManager[Opener]]] = {
    "sqlite": sqlite_backend,
    "postgresql": pg_backend,
}
#: name -> the session fixtures a backend needs started (before the test's loop runs).
BACKEND_FIXTURES: dict[str, tuple[str, ...]] = {"postgresql": ("pg_cluster",)}


async def make_jobs(store: JobStore, n: int) -> list[str]:
    return [
        (await store.create_job(source_name=f"f{i}.mp4", input_path=f"f{i}.mp4", options={"i": i})).id
        for i in range(n)
    ]


class JobStoreContract:
    @pytest.fixture(params=sorted(BACKENDS))
    def backend(self, request: pytest.FixtureRequest) -> str:
        """The backend's name; its session resources start here, outside the test's event loop
        (starting a server would block it)."""
        for name in BACKEND_FIXTURES.get(request.param, ()):
            request.getfixturevalue(name)
        return str(request.param)

    @pytest.fixture
    async def opener(
        self, backend: str, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[Opener]:
        async with BACKENDS[backend](request, tmp_path) as opener:
            yield opener

    @pytest.fixture
    async def store(self, opener: Opener) -> AsyncIterator[JobStore]:
        async with opener() as store:
            yield store

    # --- records -------------------------------------------------------------------------

    async def test_create_get_list_count(self, store: JobStore) -> None:
        assert await store.count_jobs() == 0 and await store.list_jobs() == []
        assert await store.get_job("nope") is None
        job = await store.create_job(
            source_name="a.mp4", input_path="uploads/a.mp4", options={"model": "tiny.en"}
        )
        assert (job.status, job.phase, job.percent, job.attempts) == ("queued", "queued", 0, 0)
        assert job.options == {"model": "tiny.en"} and job.claim is None and job.lease_owner is None
        paused = await store.create_job(
            source_name="b.mp4", input_path="b.mp4", options={}, status="paused", job_id="my-id"
        )
        assert paused.id == "my-id" and paused.status == "paused"
        assert await store.get_job(job.id) == job
        assert await store.count_jobs() == 2
        # Newest first, paged.
        assert [j.id for j in await store.list_jobs()] == ["my-id", job.id]
        assert [j.id for j in await store.list_jobs(limit=1, offset=1)] == [job.id]

    # --- claims and leases ---------------------------------------------------------------

    async def test_claims_take_the_oldest_queued_job_first(self, store: JobStore) -> None:
        ids = await make_jobs(store, 3)
        await store.set_status(ids[0], JobStatus.PAUSED, "p", expect=[JobStatus.QUEUED])
        first = await store.claim_next("me", 60)
        assert first is not None and first.id == ids[1]
        assert first.status == "processing" and first.lease_owner == "me" and first.attempts == 1
        assert first.claim and first.lease_expires is not None
        second = await store.claim_next("me", 60)
        assert second is not None and second.id == ids[2] and second.claim != first.claim
        assert await store.claim_next("me", 60) is None  # a paused job is not claimed

    async def test_claim_can_be_restricted_to_some_jobs_or_exclude_some(self, store: JobStore) -> None:
        first, second, third = await make_jobs(store, 3)
        assert await store.claim_next("me", 60, only=set()) is None
        job = await store.claim_next("me", 60, only={second})
        assert job is not None and job.id == second
        job = await store.claim_next("me", 60, exclude={first})
        assert job is not None and job.id == third

    async def test_expired_lease_is_taken_over_and_the_old_claim_is_dead(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        first = await store.claim_next("old", 0.3)
        assert first is not None and first.id == job_id and first.claim
        assert await store.claim_next("new", 60) is None  # lease still valid
        assert [j.id for j in await store.interrupted_jobs()] == [job_id]
        await asyncio.sleep(0.4)  # the lease runs out (it is a time, not an ordering)
        second = await store.claim_next("new", 60)
        assert second is not None and second.lease_owner == "new" and second.attempts == 2
        assert second.claim and first.claim != second.claim
        # The lease belongs to the claim: the old run can neither renew, progress nor finish.
        assert not await store.renew_lease(job_id, first.claim, 60)
        assert await store.renew_lease(job_id, second.claim, 60) == Renewal(True)
        assert (
            await store.set_status(
                job_id, JobStatus.FAILED, "x", expect=[JobStatus.PROCESSING], claim=first.claim
            )
            is None
        )
        with pytest.raises(StoreError):
            await store.update_progress(job_id, phase="x", percent=1, message="x", claim=first.claim)
        moved = await store.update_progress(job_id, phase="split", percent=5, message="s", claim=second.claim)
        assert moved.phase == "split"
        done = await store.set_status(
            job_id, JobStatus.COMPLETED, "done", expect=[JobStatus.PROCESSING], claim=second.claim
        )
        assert done is not None and done.status == "completed"
        assert (done.claim, done.lease_owner, done.lease_expires) == (None, None, None)
        # A finished claim renews nothing either.
        assert not await store.renew_lease(job_id, second.claim, 60)

    async def test_checkpoints_of_a_run_that_lost_its_job_change_nothing(self, store: JobStore) -> None:
        """A run that lost its job (its lease ran out and another took it over) and writes late
        can wipe nothing: not the new run's split and transcripts, nor its result."""
        (job_id,) = await make_jobs(store, 1)
        old = await store.claim_next("old", 0.3)
        assert old is not None and old.claim
        await asyncio.sleep(0.4)
        new = await store.claim_next("new", 60)
        assert new is not None and new.claim
        assert await store.save_segments(job_id, [(0, 1), (1, 2)], {"model": "m"}, 2.0, claim=new.claim) == 2
        assert await store.save_transcript(job_id, 0, "kept", "en")
        result: list[AlignedSegment] = [{"start": 0.0, "end": 1.0, "text": "kept", "words": []}]
        await store.save_result(job_id, result, "wav2vec2", "en", claim=new.claim)
        with pytest.raises(StoreError):
            await store.save_segments(job_id, [(0, 2)], {"model": "m"}, 2.0, claim=old.claim)
        with pytest.raises(StoreError):
            await store.save_result(job_id, [], "none", "en", claim=old.claim)
        assert [(s.index, s.text) for s in await store.segments(job_id)] == [(0, "kept"), (1, None)]
        assert await store.result(job_id) == result

    async def test_a_renewed_lease_is_not_taken_over(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        job = await store.claim_next("me", 0.05)
        assert job is not None and job.claim
        assert await store.renew_lease(job_id, job.claim, 60) == Renewal(True)
        await asyncio.sleep(0.1)  # past the first lease, well inside the renewed one
        assert await store.claim_next("other", 60) is None

    async def test_two_stores_never_claim_the_same_job(self, opener: Opener) -> None:
        """Two clients of one database (as two processes would be): every job is claimed once."""
        async with opener() as a, opener() as b:
            ids = await make_jobs(a, 30)
            claimed: dict[str, list[str]] = {"a": [], "b": []}

            async def claimer(store: JobStore, name: str) -> None:
                while (job := await store.claim_next(name, 60)) is not None:
                    claimed[name].append(job.id)

            await asyncio.gather(claimer(a, "a"), claimer(b, "b"), claimer(a, "a"), claimer(b, "b"))
            together = claimed["a"] + claimed["b"]
            assert sorted(together) == sorted(ids)
            assert len(set(together)) == len(together)
            job = await b.get_job(ids[0])
            assert job is not None and job.status == "processing" and job.attempts == 1

    async def test_claims_take_a_higher_priority_first_then_the_oldest(self, store: JobStore) -> None:
        ids = [
            (await store.create_job(source_name="f", input_path="f", options={"priority": p})).id
            for p in (0, 5, 0, 5, -1)
        ]
        # A resumed job takes the priority of its new options.
        await store.set_status(ids[4], JobStatus.PAUSED, "p", expect=[JobStatus.QUEUED])
        await store.requeue(ids[4], {"priority": 7}, restart=False)
        order = []
        while (job := await store.claim_next("me", 60)) is not None:
            order.append(job.id)
        assert order == [ids[4], ids[1], ids[3], ids[0], ids[2]]

    async def test_claims_take_only_jobs_whose_model_this_node_runs(self, store: JobStore) -> None:
        tiny, base, tiny2 = [
            (await store.create_job(source_name="f", input_path="f", options={"model": m})).id
            for m in ("tiny.en", "base", "tiny.en")
        ]
        assert await store.claim_next("me", 60, models=set()) is None
        assert await store.claim_next("me", 60, models={"small"}) is None
        job = await store.claim_next("me", 60, models={"base", "small"})
        assert job is not None and job.id == base
        job = await store.claim_next("me", 60, models={"base", "tiny.en"})
        assert job is not None and job.id == tiny
        job = await store.claim_next("me", 60)  # None: any model
        assert job is not None and job.id == tiny2

    async def test_odd_text_in_a_jobs_options_never_stops_the_claims(self, store: JobStore) -> None:
        """A NUL or a lone surrogate in a prompt is text JSON can carry; no claim may choke on it
        (on every node, it would stop all work until the job was deleted)."""
        odd_options = {"model": "base", "initial_prompt": "a\x00b \ud800", "hotwords": "\udfff"}
        odd = await store.create_job(source_name="f", input_path="f", options=odd_options)
        fine = await store.create_job(source_name="g", input_path="g", options={"model": "tiny.en"})
        job = await store.claim_next("me", 60, models={"tiny.en"})
        assert job is not None and job.id == fine.id
        job = await store.claim_next("me", 60, models={"base"})
        assert job is not None and job.id == odd.id and job.options == odd_options
        back = await store.requeue(odd.id, {**odd_options, "model": "small"}, restart=False)
        assert back is None  # it runs: nothing changes
        assert await store.set_status(
            odd.id, JobStatus.PAUSED, "p", expect=[JobStatus.PROCESSING], claim=job.claim
        )
        assert await store.requeue(odd.id, {**odd_options, "model": "small"}, restart=False)
        assert await store.claim_next("me", 60, models={"base"}) is None
        job = await store.claim_next("me", 60, models={"small"})
        assert job is not None and job.id == odd.id

    async def test_two_stores_claiming_by_priority_never_share_a_job(self, opener: Opener) -> None:
        async with opener() as a, opener() as b:
            ids = [
                (await a.create_job(source_name="f", input_path="f", options={"priority": i % 3})).id
                for i in range(24)
            ]
            claimed: list[tuple[str, int]] = []

            async def claimer(store: JobStore) -> None:
                while (job := await store.claim_next("x", 60)) is not None:
                    claimed.append((job.id, job.options["priority"]))

            await asyncio.gather(claimer(a), claimer(b), claimer(a), claimer(b))
            assert sorted(i for i, _ in claimed) == sorted(ids) and len({i for i, _ in claimed}) == 24
            # Every priority-2 job was claimed before any priority-0 one began to be.
            priorities = [p for _, p in claimed]
            assert max(i for i, p in enumerate(priorities) if p == 2) < min(
                i for i, p in enumerate(priorities) if p == 0
            )

    # --- stop requests from other processes ------------------------------------------------

    async def test_a_stop_request_is_compare_and_set_and_a_cancel_wins(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        assert await store.request_stop(job_id, "paused") is None  # queued: nothing runs to stop
        assert await store.request_stop("nope", "paused") is None
        with pytest.raises(StoreError):
            await store.request_stop(job_id, "completed")
        job = await store.claim_next("me", 60)
        assert job is not None and job.claim and job.stop_request is None
        asked = await store.request_stop(job_id, "paused")
        assert asked is not None and asked.stop_request == "paused" and asked.status == "processing"
        # The owner's renewal carries the request.
        assert await store.renew_lease(job_id, job.claim, 60) == Renewal(True, "paused")
        canceled = await store.request_stop(job_id, "canceled")
        assert canceled is not None and canceled.stop_request == "canceled"
        weaker = await store.request_stop(job_id, "paused")  # a pause never overrides a cancel
        assert weaker is not None and weaker.stop_request == "canceled"
        done = await store.set_status(
            job_id, JobStatus.CANCELED, "canceled", expect=[JobStatus.PROCESSING], claim=job.claim
        )
        assert done is not None and done.stop_request is None  # cleared as the job left processing
        assert await store.request_stop(job_id, "canceled") is None

    async def test_a_pending_stop_request_goes_to_the_next_owner(self, store: JobStore) -> None:
        """An owner that died before carrying a stop out: whoever takes the job over after its
        lease gets the request with it; once the job leaves processing the request is gone."""
        (job_id,) = await make_jobs(store, 1)
        first = await store.claim_next("dead", 0.05)
        assert first is not None
        await store.request_stop(job_id, "paused")
        await asyncio.sleep(0.1)  # the lease runs out (it is a time, not an ordering)
        second = await store.claim_next("heir", 60)
        assert second is not None and second.id == job_id and second.stop_request == "paused"
        requeued = await store.set_status(
            job_id, JobStatus.QUEUED, "q", expect=[JobStatus.PROCESSING], claim=second.claim
        )
        assert requeued is not None and requeued.stop_request is None
        third = await store.claim_next("heir", 60)
        assert third is not None and third.stop_request is None

    # --- compare-and-set status changes --------------------------------------------------

    async def test_status_changes_are_compare_and_set(self, store: JobStore) -> None:
        """A change that expects another state changes nothing: a pause that lost the race to a
        claim cannot overwrite `processing`, nor a start re-queue a running job, nor a delete
        remove one."""
        (job_id,) = await make_jobs(store, 1)
        claimed = await store.claim_next("me", 60)
        assert claimed is not None
        assert await store.set_status(job_id, JobStatus.PAUSED, "p", expect=[JobStatus.QUEUED]) is None
        assert await store.requeue(job_id, {"a": 1}, restart=False) is None
        assert await store.delete_job(job_id) is False
        job = await store.get_job(job_id)
        assert job is not None and job.status == "processing" and job.options == {"i": 0}
        # The right status but another holder changes nothing either.
        assert (
            await store.set_status(
                job_id, JobStatus.PAUSED, "p", expect=[JobStatus.PROCESSING], lease_owner="someone else"
            )
            is None
        )
        assert (
            await store.set_status(
                job_id, JobStatus.PAUSED, "p", expect=[JobStatus.PROCESSING], claim="another claim"
            )
            is None
        )
        paused = await store.set_status(
            job_id,
            JobStatus.PAUSED,
            "p",
            expect=[JobStatus.PROCESSING],
            claim=claimed.claim,
            lease_owner="me",
        )
        assert paused is not None and paused.status == "paused" and paused.lease_owner is None
        assert await store.set_status("gone", JobStatus.PAUSED, "p", expect=[JobStatus.QUEUED]) is None

    async def test_a_failure_records_its_error_and_a_new_claim_clears_it(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        job = await store.claim_next("me", 60)
        assert job is not None
        failed = await store.set_status(
            job_id,
            JobStatus.FAILED,
            "boom",
            expect=[JobStatus.PROCESSING],
            claim=job.claim,
            error_code="runner_crashed",
            error="it crashed",
            phase="transcribe",
            percent=40,
        )
        assert failed is not None and failed.status == "failed" and failed.status in FINAL
        assert (failed.error_code, failed.error, failed.phase, failed.percent) == (
            "runner_crashed",
            "it crashed",
            "transcribe",
            40,
        )
        assert failed.status_dict()["error"] == {"code": "runner_crashed", "message": "it crashed"}
        queued = await store.requeue(job_id, {"i": 0}, restart=False)
        assert queued is not None and queued.error is None and queued.error_code is None
        assert queued.attempts == 0 and queued.percent == 40  # resumed, not restarted

    async def test_requeue_restart_forgets_every_result(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        job = await store.claim_next("me", 60)
        assert job is not None
        await store.save_segments(job_id, [(0.0, 1.0)], {"model": "m"}, 1.0, speech=[(0.1, 0.9)])
        await store.save_transcript(job_id, 0, "hello", "en")
        await store.save_result(job_id, [aligned(0.0, 1.0, "hello")], "wav2vec2", "en")
        turns = {"turns": [{"start": 0.1, "end": 0.9, "speaker": "SPEAKER_00"}], "options": {}}
        assert await store.speakers(job_id) is None
        await store.save_speakers(job_id, turns)
        await store.update_progress(job_id, phase="align", percent=80, message="a", claim=job.claim)
        await store.set_status(job_id, JobStatus.PAUSED, "p", expect=[JobStatus.PROCESSING])
        kept = await store.requeue(job_id, {"a": 1}, restart=False)
        assert kept is not None and kept.status == "queued" and kept.options == {"a": 1}
        assert kept.locked_options == {"model": "m"} and kept.percent == 80
        assert len(await store.segments(job_id)) == 1 and await store.result(job_id) is not None
        assert await store.speech(job_id) == [(0.1, 0.9)]
        assert await store.speakers(job_id) == turns
        queued = await store.requeue(job_id, {"a": 2}, restart=True)
        assert queued is not None and queued.status == "queued" and queued.options == {"a": 2}
        assert queued.locked_options is None and await store.segments(job_id) == []
        assert await store.speech(job_id) == []
        assert (queued.percent, queued.phase, queued.processed, queued.total) == (0, "queued", 0, 0)
        assert (queued.language, queued.duration, queued.alignment) == (None, None, None)
        assert await store.result(job_id) is None and await store.speakers(job_id) is None

    async def test_delete_refuses_a_running_job(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        job = await store.claim_next("me", 60)
        assert job is not None
        assert await store.delete_job(job_id) is False
        await store.set_status(job_id, JobStatus.CANCELED, "c", expect=[JobStatus.PROCESSING])
        await store.save_edited_cues(job_id, [{"start": 0.0, "end": 1.0, "text": "x"}])
        assert await store.delete_job(job_id) is True
        assert await store.get_job(job_id) is None and await store.transitions(job_id) == []
        assert await store.segments(job_id) == [] and await store.edited_cues(job_id) is None
        assert await store.delete_job(job_id) is False  # gone

    # --- progress and events -------------------------------------------------------------

    async def test_percent_never_goes_down_and_transitions_are_recorded(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        job = await store.claim_next("me", 60)
        assert job is not None
        await store.update_progress(job_id, phase="transcribe", percent=40, message="a", processed=1, total=4)
        job = await store.update_progress(job_id, phase="transcribe", percent=30, message="b")
        assert job.percent == 40 and job.message == "b" and (job.processed, job.total) == (1, 4)
        await store.update_progress(job_id, phase="align", percent=85, message="c")
        await store.set_status(
            job_id, JobStatus.COMPLETED, "done", expect=[JobStatus.PROCESSING], phase="done", percent=100
        )
        history = await store.transitions(job_id)
        # One entry per status or phase change, oldest first; a repeated phase adds none.
        assert [(t["status"], t["phase"]) for t in history] == [
            ("queued", "queued"),
            ("processing", "claimed"),
            ("processing", "transcribe"),
            ("processing", "align"),
            ("completed", "done"),
        ]
        assert [t["message"] for t in history][-1] == "done"
        times = [t["at"] for t in history]
        assert times == sorted(times)
        assert await store.transitions("nope") == []

    # --- checkpoint and results ----------------------------------------------------------

    async def test_a_segment_checkpoint_is_written_once(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        assert await store.speech(job_id) == []
        speech = [(0.05, 0.4), (0.6, 0.95), (1.6, 2.9)]
        count = await store.save_segments(job_id, [(0.0, 1.0), (1.5, 3.0)], {"model": "tiny.en"}, 3.0, speech)
        assert count == 2 and await store.speech(job_id) == speech
        assert await store.save_transcript(job_id, 0, "hello", "en") is True
        assert await store.save_transcript(job_id, 0, "again", "de") is False
        segments = await store.segments(job_id)
        assert [(s.index, s.start, s.end) for s in segments] == [(0, 0.0, 1.0), (1, 1.5, 3.0)]
        assert [(s.text, s.language, s.transcribe_count) for s in segments] == [
            ("hello", "en", 1),
            (None, None, 0),
        ]
        job = await store.get_job(job_id)
        assert job is not None and job.processed == 1 and job.total == 2
        assert job.locked_options == {"model": "tiny.en"}
        assert job.duration == 3.0 and job.language == "en"

    async def test_concurrent_checkpoints_of_one_job_all_count(self, opener: Opener) -> None:
        """Segments of one job checkpointed at once by two clients (two runners of a job, or two
        nodes): `processed` counts every one of them, none is lost to the other's write."""
        async with opener() as a, opener() as b:
            (job_id,) = await make_jobs(a, 1)
            n = 16
            await a.save_segments(job_id, [(float(i), i + 1.0) for i in range(n)], {}, float(n))
            saved = await asyncio.gather(
                *(
                    store.save_transcript(job_id, i, f"t{i}", "en")
                    for i, store in zip(range(n), itertools.cycle((a, b)))
                )
            )
            assert saved == [True] * n
            job = await b.get_job(job_id)
            assert job is not None and job.processed == n

    async def test_crashes_are_counted_per_segment(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        await store.save_segments(job_id, [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)], {}, 3.0)
        assert await store.record_crash(job_id, []) == 0
        assert await store.record_crash(job_id, [1]) == 1
        assert await store.record_crash(job_id, [1, 2]) == 2  # the worst of those in flight
        assert [s.crashes for s in await store.segments(job_id)] == [0, 2, 1]

    async def test_results_and_edited_cues_round_trip(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        assert await store.result(job_id) is None and await store.edited_cues(job_id) is None
        result = [aligned(0.0, 1.2, "Hello there."), aligned(1.5, 2.0, "Ünïcode ✓")]
        await store.save_result(job_id, result, "wav2vec2", "en")
        assert await store.result(job_id) == result
        job = await store.get_job(job_id)
        assert job is not None and job.alignment == "wav2vec2" and job.language == "en"
        cues = [{"start": 0.0, "end": 1.0, "text": "edited"}]
        await store.save_edited_cues(job_id, cues)
        assert await store.edited_cues(job_id) == cues
        await store.save_edited_cues(job_id, None)
        assert await store.edited_cues(job_id) is None

    async def test_edits_are_versioned_compare_and_set(self, store: JobStore) -> None:
        (job_id,) = await make_jobs(store, 1)
        assert await store.edits_version(job_id) == 0
        mine = [{"start": 0.0, "end": 1.0, "text": "mine"}]
        theirs = [{"start": 0.0, "end": 1.0, "text": "theirs"}]
        assert await store.save_edited_cues(job_id, mine, expected_version=0) == 1
        # A second editor that loaded version 0 saves too late: nothing is written.
        assert await store.save_edited_cues(job_id, theirs, expected_version=0) is None
        assert await store.edited_cues(job_id) == mine and await store.edits_version(job_id) == 1
        assert await store.save_edited_cues(job_id, theirs, expected_version=1) == 2
        # Without an expected version a save always lands; a revert is a version too.
        assert await store.save_edited_cues(job_id, mine) == 3
        assert await store.save_edited_cues(job_id, None, expected_version=3) == 4
        assert await store.edited_cues(job_id) is None and await store.edits_version(job_id) == 4
        assert await store.save_edited_cues("no-such-job", mine) is None
        assert await store.edits_version("no-such-job") == 0

    async def test_a_request_key_finds_its_newest_live_job(self, store: JobStore) -> None:
        assert await store.find_request("k") is None
        first = await store.create_job(source_name="a", input_path="a", options={}, request_key="k")
        await store.create_job(source_name="b", input_path="b", options={}, request_key="other")
        await store.create_job(source_name="c", input_path="c", options={})
        found = await store.find_request("k")
        assert found is not None and found.id == first.id
        # A failed or canceled job is not a result to share: the next identical request runs anew.
        assert await store.set_status(first.id, JobStatus.CANCELED, "x", expect=(JobStatus.QUEUED,))
        assert await store.find_request("k") is None
        second = await store.create_job(source_name="a", input_path="a", options={}, request_key="k")
        found = await store.find_request("k")
        assert found is not None and found.id == second.id

    async def test_identical_requests_on_two_stores_at_once_make_one_job(self, opener: Opener) -> None:
        async with opener() as a, opener() as b:
            for key in ("k1", "k2", "k3"):
                made = await asyncio.gather(
                    *(
                        store.create_for_request(key, source_name=f"{n}", input_path=f"{n}", options={"n": n})
                        for n, store in enumerate([a, b, a, b])
                    )
                )
                assert [created for _, created in made].count(True) == 1, made
                assert len({job.id for job, _ in made}) == 1
                job = made[0][0]
                assert job.status == JobStatus.QUEUED and (await a.find_request(key)) == job
            # A canceled job is not shared: the same key makes a new one.
            assert await a.set_status(job.id, JobStatus.CANCELED, "x", expect=(JobStatus.QUEUED,))
            again, created = await b.create_for_request("k3", source_name="z", input_path="z", options={})
            assert created and again.id != job.id
            assert await a.count_jobs() == 4

    # --- outbox --------------------------------------------------------------------------

    async def test_a_final_state_writes_its_one_delivery(self, opener: Opener) -> None:
        seen: list[Job] = []
        wakes: list[int] = []

        def policy(job: Job) -> Notice | None:
            seen.append(job)
            return None if job.options.get("quiet") else Notice(f"job.{job.status}", "https://h/x", b"{}")

        async with opener() as store:
            store.use_outbox(policy, lambda: wakes.append(1))
            ids = await make_jobs(store, 4)
            # Not final, or a compare-and-set that lost: no delivery.
            await store.set_status(ids[0], JobStatus.PAUSED, "p", expect=[JobStatus.QUEUED])
            assert await store.set_status(ids[1], JobStatus.FAILED, "f", expect=[JobStatus.PAUSED]) is None
            assert await store.deliveries() == [] and seen == [] and wakes == []
            claimed = await store.claim_next("me", 60)
            assert claimed is not None and claimed.id == ids[1]
            done = await store.set_status(
                ids[1], JobStatus.FAILED, "boom", expect=[JobStatus.PROCESSING], error="boom", error_code="x"
            )
            assert done is not None and wakes == [1]
            # The policy saw the job as written (final status, error), inside the write.
            assert (seen[-1].status, seen[-1].error, seen[-1].updated_at) == (
                "failed",
                "boom",
                done.updated_at,
            )
            await store.set_status(ids[0], JobStatus.CANCELED, "c", expect=[JobStatus.PAUSED])
            [first, second] = await store.deliveries()
            assert (first.job_id, first.event, first.url, first.body) == (
                ids[1],
                "job.failed",
                "https://h/x",
                b"{}",
            )
            assert (first.status, first.attempts, first.delivered_at, first.last_error) == (
                "pending",
                0,
                None,
                None,
            )
            assert first.next_at is not None and first.next_at <= first.created_at + 1
            assert second.event == "job.canceled" and [d.id for d in await store.deliveries(ids[0])] == [
                second.id
            ]
            # A policy that sends nothing, or one that fails: the state is written all the same.
            await store.create_job(source_name="q", input_path="q", options={"quiet": True}, job_id="quiet")
            assert await store.set_status("quiet", JobStatus.CANCELED, "c", expect=[JobStatus.QUEUED])

            def broken(job: Job) -> Notice | None:
                raise RuntimeError("bug")

            store.use_outbox(broken)
            assert await store.set_status(ids[2], JobStatus.CANCELED, "c", expect=[JobStatus.QUEUED])
            store.use_outbox(None)
            assert await store.set_status(ids[3], JobStatus.CANCELED, "c", expect=[JobStatus.QUEUED])
            assert len(await store.deliveries()) == 2
        # The state and its delivery commit together or not at all: a crash in between
        # (here the write interrupted while the row is made) leaves neither.
        async with opener() as store:

            def crash(job: Job) -> Notice | None:
                raise _Crash

            store.use_outbox(crash)
            job = await store.create_job(source_name="k", input_path="k", options={})
            with pytest.raises(_Crash):
                await store.set_status(job.id, JobStatus.CANCELED, "c", expect=[JobStatus.QUEUED])
            still = await store.get_job(job.id)
            assert still is not None and still.status == "queued"
            assert await store.deliveries(job.id) == []
        # Durable, and a deleted job keeps its pending delivery.
        async with opener() as store:
            assert await store.delete_job(ids[1])
            assert [d.id for d in await store.deliveries(ids[1])] == [first.id]

    async def test_deliveries_are_claimed_under_a_lease_and_recorded_once(self, opener: Opener) -> None:
        async with opener() as store, opener() as other:
            store.use_outbox(lambda job: Notice("job.canceled", "https://h/x", b'{"a": 1}'))
            ids = await make_jobs(store, 2)
            for job_id in ids:
                await store.set_status(job_id, JobStatus.CANCELED, "c", expect=[JobStatus.QUEUED])
            assert await store.next_delivery_at() is not None
            # A sender that died mid-attempt: once its lease runs out the row is due again.
            [died, _] = await store.claim_deliveries(10, 0)
            [d] = await store.claim_deliveries(1, 60)
            assert (d.id, d.job_id, d.attempts, d.body) == (died.id, ids[0], 2, b'{"a": 1}')
            assert not await store.record_attempt(died.id, died.attempts, DeliveryStatus.DELIVERED)
            # Another client (another process) gets only what is not under a lease.
            [r] = await other.claim_deliveries(10, 60)
            assert (r.job_id, r.attempts) == (ids[1], 2) and await other.claim_deliveries(10, 60) == []
            # Tried again later: due only then.
            later = d.created_at + 1000
            assert await store.record_attempt(
                d.id, d.attempts, DeliveryStatus.PENDING, error="HTTP 500", next_at=later
            )
            with pytest.raises(StoreError):
                await store.record_attempt(d.id, d.attempts, DeliveryStatus.PENDING)
            assert await other.record_attempt(r.id, r.attempts, DeliveryStatus.DELIVERED)
            # Recorded once: a second outcome for the same attempt changes nothing.
            assert not await other.record_attempt(r.id, r.attempts, DeliveryStatus.FAILED, error="late")
            [one, two] = await store.deliveries()
            assert (one.status, one.last_error, one.next_at, one.delivered_at) == (
                "pending",
                "HTTP 500",
                later,
                None,
            )
            assert two.status == "delivered" and two.delivered_at is not None and two.next_at is None
            assert await store.next_delivery_at() == later and await store.claim_deliveries(10, 60) == []
            assert await store.record_attempt(one.id, one.attempts, DeliveryStatus.FAILED, error="gave up")
            assert (await store.deliveries())[0].status == "failed" and await store.next_delivery_at() is None


class _Crash(BaseException):
    """Stands for the process dying in the middle of a write."""


def aligned(start: float, end: float, text: str) -> AlignedSegment:
    return {
        "start": start,
        "end": end,
        "text": text,
        "words": [{"word": text, "start": start, "end": end, "score": 0.9}],
    }
