"""`runners.enabled = false`: a server with no model work (a front end, a packaging check)
starts no subprocess, keeps jobs queued and refuses downloads instead of hanging them."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import ClientFactory
from tests.http_helpers import upload
from tests.media import Speech
from tests.procs import runner_pids
from vsrt_service.core.config import ConfigError, load_settings
from vsrt_service.web.keys import SERVICE


def test_the_setting_reads_from_the_environment() -> None:
    assert load_settings(env={}).runners.enabled is True
    assert load_settings(env={"VSRT_RUNNERS_ENABLED": "false"}).runners.enabled is False
    with pytest.raises(ConfigError, match=r"runners\.enabled"):
        load_settings(env={"VSRT_RUNNERS_ENABLED": "maybe"})


async def test_disabled_runners_start_nothing_and_jobs_wait(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client(runners={"enabled": False}, jobs={"lease_seconds": 3})
    health = await client.get("/api/health")
    assert health.status == 200
    assert (await health.json())["runners"] == []

    job = await upload(client, speech.path)
    scheduler = client.app[SERVICE].scheduler
    assert scheduler.capacity == 0
    # The scheduler looks at the queue at least once a second (lease_seconds / 3): after
    # two of its passes the job is still waiting for a runner.
    for _ in range(2):
        await asyncio.sleep(1.1)
        status = await (await client.get(f"/api/status/{job['job_id']}")).json()
        assert status["status"] == "queued", status

    for path in ("/api/models/whisper/base.en/download", "/api/models/align/fr/download"):
        resp = await client.post(path)
        body = await resp.json()
        assert resp.status == 503, body
        assert body["error"]["code"] == "runners_disabled", body
    # A model that needs no download is simply ready.
    resp = await client.post("/api/models/whisper/tiny.en/download")
    assert resp.status == 200 and (await resp.json())["status"] == "ready"
    progress = await (await client.get("/api/models/progress")).json()
    assert progress["queue"] == [] and progress["active"] == []  # its aligner was not queued either
    catalog = await (await client.get("/api/models/whisper")).json()
    models = {m["id"]: m for m in catalog["models"]}
    assert models["base.en"]["status"] == "not_downloaded"

    assert runner_pids() == []
