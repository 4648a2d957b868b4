"""A real install: the wheel, in a fresh venv with no editable vsrt, serves the UI and catalog.

The editable install in the project venv finds everything in the checkout, so it hides data
files a wheel would leave out. Here the package comes only from the wheel; the project venv's
installed dependencies are borrowed through a `.pth` line (its own `.pth` files, the editable
finder among them, are not processed there), so nothing is fetched and the runner extra is
absent unless the dependencies happen to include it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.procs import runner_pids
from tests.test_server import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = (
    "vsrt_service/data/models.toml",
    "vsrt_service/data/vsrt.toml",
    "vsrt_service/web/static/index.html",
    "vsrt_service/web/static/app.js",
    "vsrt_service/web/static/player.js",
    "vsrt_service/web/static/vendor/wavesurfer/wavesurfer.esm.js",
    "vsrt_service/web/static/vendor/wavesurfer/plugins/regions.esm.js",
    "vsrt_service/web/static/vendor/wavesurfer/SHA256SUMS",
    "vsrt_service/web/static/docs.html",
    "vsrt_service/web/static/vendor/swagger-ui/swagger-ui-bundle.js",
    "vsrt_service/web/openapi/api.yaml",
)


def _env() -> dict[str, str]:
    """This environment without the checkout on the import path."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> str:
    out = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"{args}: {out.stdout}\n{out.stderr}"
    return out.stdout


def build_wheel(tmp: Path) -> Path:
    """`pip wheel .` of a clean copy of the checkout (tracked and new, not ignored, files), so
    an earlier in-tree build/ never leaks stale files into the wheel. Build isolation: pip
    fetches the build backend (setuptools) from the package index."""
    src, dist = tmp / "src", tmp / "dist"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted but still tracked file is absent
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(source.read_bytes())
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--no-deps",
        "--disable-pip-version-check",
        "-w",
        dist,
        src,
        cwd=tmp,
    )
    (wheel,) = dist.glob("vsrt-*.whl")
    return wheel


def fresh_venv(tmp: Path) -> Path:
    """A new venv that sees the project venv's dependencies but not its editable vsrt."""
    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp)
    python = venv / "bin" / "python"
    purelib = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp).strip()
    )
    (purelib / "project-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def get(url: str) -> tuple[int, str, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


def test_a_wheel_installed_in_a_fresh_venv_serves_the_ui_and_the_catalog(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
    assert set(PACKAGED) <= names, sorted(set(PACKAGED) - names)

    venv = fresh_venv(tmp_path)
    python = venv / "bin" / "python"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = (
        "import importlib.util as u; print(u.find_spec('vsrt_service') is None, "
        "u.find_spec('aiohttp') is not None)"
    )
    # Dependencies visible, the editable vsrt not: its finder's .pth was not processed.
    assert _run(python, "-c", probe, cwd=elsewhere).split() == ["True", "True"]

    _run(
        python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-index",
        "--disable-pip-version-check",
        wheel,
        cwd=elsewhere,
    )
    where = _run(
        python,
        "-c",
        "import vsrt_service, gpu_runner; print(vsrt_service.__file__); print(gpu_runner.__file__)",
        cwd=elsewhere,
    ).split()
    assert all(Path(w).is_relative_to(venv) for w in where), where

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            str(venv / "bin" / "vsrt"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        cwd=elsewhere,
        env={**_env(), "VSRT_RUNNERS_ENABLED": "false"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"vsrt serve exited: {server.communicate()[1]}"
            try:
                status, _, body = get(f"{url}/api/health")
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline, "vsrt serve never answered /api/health"
                time.sleep(0.2)  # polling a starting server, not ordering anything
        assert status == 200 and json.loads(body)["runners"] == []

        status, ctype, page = get(f"{url}/")
        assert status == 200 and ctype.startswith("text/html")
        assert "<title>vsrt — subtitles</title>" in page
        status, ctype, script = get(f"{url}/static/app.js")
        assert status == 200 and "javascript" in ctype and script.strip()

        status, _, body = get(f"{url}/api/models/whisper")
        ids = {m["id"] for m in json.loads(body)["models"]}
        assert {"tiny.en", "large-v3"} <= ids, ids
        status, _, body = get(f"{url}/api/models/align")
        assert "en" in {m["id"] for m in json.loads(body)["models"]}
        assert runner_pids(server.pid) == []

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, server.communicate()[1]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
