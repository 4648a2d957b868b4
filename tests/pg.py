"""A throwaway PostgreSQL cluster for the tests: `initdb` in a temporary directory, a free port on
127.0.0.1, its unix socket in that directory, durability off (fsync) for speed.

PostgreSQL refuses to run as root, so where the tests run as root (this machine, CI's clean
clone) the cluster runs as the `postgres` user the Debian package creates (else `nobody`);
elsewhere it runs as whoever runs the tests. Each test gets a database of its own
(`fresh_database`: CREATE DATABASE takes milliseconds), dropped afterwards.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

#: The cluster's superuser (trust authentication: it is reachable only from this machine).
USER = "vsrt"
#: Why the PostgreSQL tests are skipped where the server is not installed.
MISSING = "PostgreSQL is not installed (no initdb): `scripts/setup.sh test` installs the postgresql package"
SERVER_OPTIONS = (
    "-c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    " -c max_connections=200"
)


@dataclass(frozen=True)
class Cluster:
    port: int
    socket_dir: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"


def pg_bin() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, else the newest Debian version's."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(versions[-1]).parent if versions else None


def _account() -> pwd.struct_passwd | None:
    """Whom the cluster runs as when we are root (None: ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, and neither a postgres nor a nobody user exists to run PostgreSQL")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_cluster(bindir: Path) -> Iterator[Cluster]:
    """Start a cluster; stop it (immediate: nothing in it is kept) and remove it on exit."""
    account = _account()
    run_as: dict[str, Any] = {}
    # Under /tmp when another account runs the server: it must reach the directory (and a unix
    # socket's path must stay short).
    root = Path(tempfile.mkdtemp(prefix="vsrt-pg-", dir="/tmp" if account is not None else None))
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    data, logfile = root / "data", root / "server.log"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        # cwd: the unprivileged account may not enter ours.
        return subprocess.run(
            [str(bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=root,
            timeout=120,
            **run_as,
        )

    try:
        made = run(
            "initdb", "-D", str(data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"
        )
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        for _ in range(5):  # another process may take the free port first: try another
            port = _free_port()
            started = run(
                "pg_ctl", "-D", str(data), "-l", str(logfile), "-w", "-t", "60",
                "-o", f"-p {port} -k {root} {SERVER_OPTIONS}", "start",
            )  # fmt: skip
            if started.returncode == 0:
                break
        else:
            log = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr.strip()}\n{log}")
        try:
            yield Cluster(port, root)
        finally:
            run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(cluster: Cluster) -> AsyncIterator[str]:
    """The URL of a new, empty database on the cluster, dropped on exit (connections and all)."""
    name = f"test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(cluster.url())
    try:
        # A file copy of the pristine template: the quickest way here (checkpoints cost nothing
        # without fsync), about half the time of the default WAL-logged copy.
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY FILE_COPY")
        try:
            yield cluster.url(name)
        finally:
            await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
    finally:
        await admin.close()
