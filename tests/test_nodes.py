"""The node registry (jobs/nodes.py): nodes sharing one PostgreSQL database list each other,
a node that stops beating is gone after its timeout, a clean shutdown removes it at once, and
/api/health lists them over real HTTP; with SQLite a node lists just itself."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import ClientFactory
from tests.ui_helpers import CHROMIUM, browser, running_server, screenshot, wait_for_js
from vsrt_service.jobs.nodes import Node, PgNodes, registered
from vsrt_service.jobs.pg_store import PgJobStore
from vsrt_service.web.keys import SERVICE


def info(name: str, jobs: list[str] | None = None) -> dict[str, Any]:
    """A node's heartbeat info as the service writes it (Service.node_info's keys)."""
    return {
        "runners": [
            {"name": name, "role": "work", "device": "cpu", "state": "ready", "warm": True, "busy": False}
        ],
        "running_jobs": jobs or [],
        "capacity": 1,
        "models": [{"type": "whisper", "id": "tiny.en", "status": "ready"}],
    }


@contextlib.asynccontextmanager
async def node(url: str, node_id: str, gone_after: float = 30.0) -> AsyncIterator[PgNodes]:
    """A node's registry on its own store (its own pool), as each `vsrt serve` has."""
    async with PgJobStore.open(url) as store:
        yield PgNodes(store.pool, node_id, gone_after)


def ids(nodes: list[Node]) -> list[str]:
    return [n.id for n in nodes]


async def test_two_nodes_on_one_database_see_each_other(pg_url: str) -> None:
    async with node(pg_url, "b-host:2:bbbb") as b, node(pg_url, "a-host:1:aaaa") as a:
        async with registered(b, lambda: info("b0", ["job1"]), 10.0), registered(a, lambda: info("a0"), 10.0):
            for registry in (a, b):
                seen = await registry.nodes()
                assert ids(seen) == ["a-host:1:aaaa", "b-host:2:bbbb"]  # sorted by id
            listed = {n.id: n.json() for n in await a.nodes()}
            other = listed["b-host:2:bbbb"]
            assert other["running_jobs"] == ["job1"] and other["capacity"] == 1
            assert other["runners"][0]["name"] == "b0"
            assert other["models"] == [{"type": "whisper", "id": "tiny.en", "status": "ready"}]
            assert other["started_at"] <= other["seen_at"]


async def test_a_node_that_stops_beating_is_gone_after_the_timeout(pg_url: str) -> None:
    """A crashed node (its row stays, no more heartbeats) is listed until `gone_after` has
    passed on the database's clock, then no more; its row is left for the day-old sweep."""
    async with (
        node(pg_url, "crashed:1:dead", gone_after=1.5) as dead,
        node(pg_url, "alive:2:beef", 1.5) as alive,
    ):
        async with registered(alive, lambda: info("a0"), 0.3):
            beat = await dead.beat(info("d0"))  # its one and last heartbeat
            assert ids(await alive.nodes()) == ["alive:2:beef", "crashed:1:dead"]
            # The alive node beats on meanwhile; the crashed one is gone once 1.5 s have passed.
            await asyncio.sleep(1.5 + 0.3 - (time.time() - beat.seen_at))
            assert ids(await alive.nodes()) == ["alive:2:beef"]  # the living one beats on
    db = await asyncpg.connect(pg_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM nodes WHERE id = 'crashed:1:dead'") == 1
        # A day later any node's heartbeat sweeps it away.
        await db.execute("UPDATE nodes SET seen_at = seen_at - 86500 WHERE id = 'crashed:1:dead'")
        async with node(pg_url, "later:3:cafe") as later:
            await later.beat(info("l0"))
        assert await db.fetchval("SELECT count(*) FROM nodes WHERE id = 'crashed:1:dead'") == 0
    finally:
        await db.close()


async def test_a_clean_shutdown_removes_the_node_at_once(pg_url: str) -> None:
    async with node(pg_url, "stays:1:aaaa") as stays, node(pg_url, "leaves:2:bbbb") as leaves:
        async with registered(stays, lambda: info("s0"), 10.0):
            async with registered(leaves, lambda: info("l0"), 10.0):
                assert ids(await stays.nodes()) == ["leaves:2:bbbb", "stays:1:aaaa"]
            assert ids(await stays.nodes()) == ["stays:1:aaaa"]  # not after a timeout: now


async def test_health_over_http_lists_every_node_on_postgresql(
    make_client: ClientFactory, pg_url: str
) -> None:
    """A real server on the database and a second node's row written through the registry:
    /api/health names this node (its scheduler's lease owner id) and lists both, sorted."""
    client = await make_client(store={"url": pg_url}, runners={"enabled": False})
    svc = client.app[SERVICE]
    async with node(pg_url, "zz-other:9:ffff") as other, registered(other, lambda: info("o0", ["j9"]), 10.0):
        resp = await client.get("/api/health")
        assert resp.status == 200
        health = await resp.json()
    assert health["status"] == "ok"
    me = health["node"]
    assert me["id"] == svc.scheduler.owner
    assert [n["id"] for n in health["nodes"]] == sorted([svc.scheduler.owner, "zz-other:9:ffff"])
    listed = {n["id"]: n for n in health["nodes"]}
    assert listed["zz-other:9:ffff"]["running_jobs"] == ["j9"]
    assert listed[me["id"]]["capacity"] == 0 and listed[me["id"]]["runners"] == []
    assert {"type": "whisper", "id": "tiny.en", "status": "ready"} in me["models"]  # bundled
    assert str(svc.settings.data_dir) not in await resp.text()
    # The row goes with the server.
    await client.close()
    db = await asyncpg.connect(pg_url)
    try:
        assert await db.fetchval("SELECT count(*) FROM nodes WHERE id = $1", me["id"]) == 0
    finally:
        await db.close()


async def test_health_with_sqlite_lists_this_node_only(make_client: ClientFactory) -> None:
    client = await make_client()
    svc = client.app[SERVICE]
    health = await (await client.get("/api/health")).json()
    assert [n["id"] for n in health["nodes"]] == [svc.scheduler.owner] == [health["node"]["id"]]
    me = health["node"]
    assert me["runners"] and all(
        set(r) == {"name", "role", "device", "state", "warm", "busy"} for r in me["runners"]
    )
    assert me["capacity"] == svc.scheduler.capacity
    assert set(me) == {"id", "host", "started_at", "seen_at", "runners", "running_jobs", "capacity", "models"}


async def test_strangers_of_a_server_with_a_token_see_no_nodes(make_client: ClientFactory) -> None:
    token = "nodes-token-0123456789"
    client = await make_client(server={"auth_token": token}, runners={"enabled": False})
    public = await (await client.get("/api/health")).json()
    assert "nodes" not in public and "node" not in public
    full = await (await client.get("/api/health", headers={"Authorization": f"Bearer {token}"})).json()
    assert [n["id"] for n in full["nodes"]] == [full["node"]["id"]]


@pytest.mark.timeout(300)
@pytest.mark.block_limit(5.0)  # the loop drives Playwright, as in tests/test_ui.py
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
async def test_the_model_manager_shows_each_node(pg_url: str, tmp_path: Path) -> None:
    """A real `vsrt serve` on the database and a second node's row (through the registry, the
    way a second server writes it): the manager shows each model's state on both nodes."""
    pytest.importorskip("playwright")
    env = {"VSRT_STORE_URL": pg_url, "VSRT_MODELS_PRELOAD_ON_START": "false"}
    other_models = [
        {"type": "whisper", "id": "tiny.en", "status": "not_downloaded"},
        {"type": "whisper", "id": "tiny", "status": "ready"},
        {"type": "whisper", "id": "base.en", "status": "downloading"},
    ]
    other_info = {**info("gpu0"), "models": other_models}
    async with running_server(tmp_path / "data", env=env) as server, browser() as ctx:
        page = await ctx.new_page()
        async with (
            node(pg_url, "gpu-host-2:4242:0badf00d") as other,
            registered(other, lambda: other_info, 1.0),
        ):
            await page.goto(server.url)
            await page.click("#open-models")
            here = page.locator('#panel [data-model="tiny.en"] .model-node:not([data-node^="gpu-host-2"])')
            await here.wait_for()
            assert await here.get_attribute("data-status") == "ready"  # bundled on this server
            assert "(this server)" in (await here.text_content() or "")
            there = '#panel [data-model="{}"] .model-node[data-node="gpu-host-2:4242:0badf00d"]'
            expected = {"tiny.en": ("not_downloaded", "absent"), "tiny": ("ready", "ready")}
            expected["base.en"] = ("downloading", "downloading")
            for model, (status, words) in expected.items():
                badge = page.locator(there.format(model))
                assert await badge.get_attribute("data-status") == status
                assert words in (await badge.text_content() or "")
            await screenshot(page, "models-two-nodes")
        # The other node shut down: this server alone, the manager looks as before.
        await page.click("#models-close")
        await page.click("#open-models")
        await page.locator('#panel [data-model="tiny.en"]').wait_for()
        await wait_for_js(page, "!document.querySelector('#panel .model-nodes')")
