"""Several real `vsrt serve` nodes on one PostgreSQL database and one shared storage root, as
issue 14 deploys them: separate processes, each with its own data directory (its SQLite model
state) and its own runner pool (CPU runners, the bundled tiny.en), a short lease so a dead
node's jobs are taken over within seconds.

Sync on purpose: a module-scoped fixture shares one `LocalCluster` among a module's async
tests (starting a node with its runner costs seconds), and every process it started is
terminated, waited for, and killed if need be when the cluster closes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.pg import Cluster, pg_bin
from tests.procs import free_port, runner_pids

#: Seconds a claim holds a job without renewal: a SIGKILLed node's job is free again after it.
LEASE_SECONDS = 3.0


@dataclass
class Node:
    """One `vsrt serve` process of the cluster."""

    name: str
    port: int
    data_dir: Path
    log: Path
    proc: subprocess.Popen[bytes]
    runners: int
    url: str = field(init=False)

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def owns(self, lease_owner: str | None) -> bool:
        """Whether a job's `lease_owner` (host:pid:token, the scheduler's) is this process."""
        return bool(lease_owner) and (lease_owner or "").split(":")[1:2] == [str(self.pid)]

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/api/health", timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
            return body

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crashed host: no shutdown, no lease handed back. Its runners die with
        it (PR_SET_PDEATHSIG); waited for, so the test knows they are gone."""
        pid = self.pid
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        deadline = time.monotonic() + 10
        while runner_pids(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL if it has not exited within `grace`."""
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill()


class LocalCluster:
    """Nodes on one database (`store_url`) and one storage root under `root`."""

    def __init__(self, root: Path, store_url: str, lease: float = LEASE_SECONDS, **env: str) -> None:
        self.root = root
        self.store_url = store_url
        self.storage_root = root / "shared"
        self.storage_root.mkdir(parents=True, exist_ok=True)
        self.lease = lease
        self.env = env
        self.nodes: dict[str, Node] = {}

    def node_env(self, name: str, runners: int, **env: str) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "VSRT_DATA_DIR": str(self.root / name),
            "VSRT_STORAGE_ROOT": str(self.storage_root),
            "VSRT_JOBS_LEASE_SECONDS": str(self.lease),
            "VSRT_RUNNERS_DEVICES": ",".join(["cpu"] * runners),
            # Two cores shared by every node's runners: one thread each, else they thrash.
            "VSRT_RUNNERS_CPU_THREADS": "1",
            **self.env,
            **env,
        }

    def spawn(self, name: str, runners: int = 1, **env: str) -> Node:
        """Start a node's process (its runners start with it) without waiting for it; a name
        already used restarts that node on its data directory and port."""
        old = self.nodes.get(name)
        assert old is None or not old.alive, f"node {name} is running"
        port = old.port if old else free_port()
        data_dir = self.root / name
        data_dir.mkdir(parents=True, exist_ok=True)
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "vsrt_service.cli", "serve", "-v",
                    "--host", "127.0.0.1", "--port", str(port), "--store", self.store_url,
                ],
                env=self.node_env(name, runners, **env),
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        node = Node(name, port, data_dir, log, proc, runners)
        self.nodes[name] = node
        return node

    def wait_ready(self, *nodes: Node, within: float = 120.0) -> None:
        """Until each node answers /api/health with every work runner ready and warm (whisperx
        imported: seconds of CPU per runner, which would otherwise land in a test's first job)."""
        deadline = time.monotonic() + within
        for node in nodes:
            while True:
                assert node.alive, f"node {node.name} exited during start-up:\n{node.log_tail()}"
                with contextlib.suppress(OSError, ValueError):
                    runners = [r for r in node.health()["runners"] if r.get("role", "work") == "work"]
                    if len(runners) == node.runners and all(
                        r["state"] == "ready" and r["warm"] for r in runners
                    ):
                        break
                assert time.monotonic() < deadline, f"node {node.name} never got ready:\n{node.log_tail()}"
                time.sleep(0.1)

    def start(self, *names: str, runners: int = 1, **env: str) -> list[Node]:
        """Start these nodes side by side and wait until all are ready."""
        nodes = [self.spawn(name, runners, **env) for name in names]
        self.wait_ready(*nodes)
        return nodes

    def owner_of(self, lease_owner: str | None) -> Node | None:
        """The live node whose scheduler holds a job's lease."""
        return next((n for n in self.nodes.values() if n.alive and n.owns(lease_owner)), None)

    def close(self) -> None:
        """Stop every node side by side: SIGTERM all, then wait for each (SIGKILL past 20 s)."""
        live = [n for n in self.nodes.values() if n.alive]
        for node in live:
            with contextlib.suppress(ProcessLookupError):
                node.proc.terminate()
        for node in live:
            node.stop()


def _psql(pg: Cluster, sql: str) -> None:
    bindir = pg_bin()
    assert bindir is not None
    done = subprocess.run(
        [str(bindir / "psql"), pg.url(), "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


@contextlib.contextmanager
def local_cluster(
    pg: Cluster, root: Path, lease: float = LEASE_SECONDS, **env: str
) -> Iterator[LocalCluster]:
    """A fresh database on `pg` and a cluster of nodes on it (none started yet): every node is
    stopped and reaped on exit, then the database dropped."""
    name = f"cluster_{uuid.uuid4().hex[:12]}"
    _psql(pg, f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
    cluster = LocalCluster(root, pg.url(name), lease, **env)
    try:
        yield cluster
    finally:
        try:
            cluster.close()
        finally:
            _psql(pg, f"DROP DATABASE {name} WITH (FORCE)")
