"""Shared fixtures: real media, real models, services that clean up after themselves.

Three guards run for every test: an async test fails if anything blocks its event loop for
longer than BLOCK_LIMIT (asyncio debug mode reports slow callbacks), the session fails if a
runner subprocess of this process outlives the tests, and the official Hugging Face endpoint
is a local port that refuses connections, so no test depends on (or waits for) the internet.
The heap earlier tests left is frozen while a test runs, so its collection is not charged
to the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.fakehub import FakeHub, serving_as_endpoint
from tests.media import Speech, make_speech
from tests.pg import MISSING, Cluster, fresh_database, pg_bin, running_cluster
from tests.procs import runner_pids
from vsrt_service.core.config import Settings, load_settings
from vsrt_service.service import Service
from vsrt_service.web.app import create_app

#: Longest a callback may hold the event loop before the test fails.
BLOCK_LIMIT = 0.5

SettingsFactory = Callable[..., Settings]
ServiceFactory = Callable[..., Awaitable[Service]]
ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture(scope="session", autouse=True)
def no_orphaned_runners() -> Iterator[None]:
    yield
    left = runner_pids()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"runner processes outlived the tests: {left}"


@pytest.fixture(scope="session", autouse=True)
def hub_unreachable() -> Iterator[str]:
    """HF_ENDPOINT at a bound but unlistening port: a download fails at once, as offline.

    Tests that need a hub start the fake one and point HF_ENDPOINT at it themselves."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    before = os.environ.get("HF_ENDPOINT")
    os.environ["HF_ENDPOINT"] = url
    try:
        yield url
    finally:
        closed.close()
        if before is None:
            os.environ.pop("HF_ENDPOINT", None)
        else:
            os.environ["HF_ENDPOINT"] = before


class _SlowCallbacks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing") and "took" in message:
            self.records.append(message)


#: Earlier tests' garbage is collected between tests, once every this many tests.
COLLECT_EVERY = 25
_TESTS_RUN = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def frozen_heap(request: pytest.FixtureRequest) -> Iterator[None]:
    """Freeze what the session has piled up on the heap while a test runs.

    With torch and transformers imported (the tiny models are built in this process), a
    full collection takes about 0.22 s on an idle machine and more on a busy one; it was
    charged to whichever in-process server loop was running, while the real server's own
    process has no such heap. Frozen objects are not scanned; they are collected between
    tests instead.
    """
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        run = request.config.stash.get(_TESTS_RUN, 0) + 1
        request.config.stash[_TESTS_RUN] = run
        if run % COLLECT_EVERY == 0:
            gc.collect()


@pytest.fixture(autouse=True)
async def loop_not_blocked(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fail the test if a callback held the event loop for longer than BLOCK_LIMIT
    (or the test's `block_limit` marker)."""
    marker = request.node.get_closest_marker("block_limit")
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = marker.args[0] if marker else BLOCK_LIMIT
    handler = _SlowCallbacks()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    gc_pauses = _GcPauses()
    gc.callbacks.append(gc_pauses)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        gc.callbacks.remove(gc_pauses)
    assert not handler.records, (
        "event loop blocked:\n"
        + "\n".join(handler.records)
        + (f"\n(longest garbage collection during the test: {gc_pauses.longest * 1000:.0f} ms)")
    )


class _GcPauses:
    """The longest garbage collection while a test ran, to tell GC from a blocking call."""

    def __init__(self) -> None:
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.longest = max(self.longest, time.perf_counter() - self._started)


@contextlib.asynccontextmanager
async def loop_lag(every: float = 0.01) -> AsyncIterator[list[float]]:
    """Sample how late this event loop wakes a sleeper (the in-process server's loop;
    `frozen_heap` keeps the test session's own garbage collection out of the figures)."""
    lags: list[float] = []

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(every)
            lags.append(loop.time() - before - every)

    task = asyncio.create_task(sample())
    try:
        yield lags
    finally:
        task.cancel()


async def until(check: Callable[[], Awaitable[bool]], within: float = 60.0, every: float = 0.0) -> None:
    """Poll `check`, by default with bare yields to the loop so the moment it turns true is
    not missed."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(every)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def speech(media_dir: Path) -> Speech:
    """Six known English sentences, espeak-ng voice, muxed into an mp4."""
    return make_speech(media_dir / "speech.mp4")


@pytest.fixture(scope="session")
def long_speech(media_dir: Path) -> Speech:
    """Ten sentences (42 s): five segments at a 10 s chunk size, enough for a kill or a pause to
    land between checkpointed segments (each segment costs a full Whisper window, so no more)."""
    from tests.media import LONG_SENTENCES

    return make_speech(media_dir / "long.mp4", LONG_SENTENCES[:10])


@pytest.fixture(scope="session")
def tiny_align_model(media_dir: Path) -> Path:
    """A randomly initialised wav2vec2 CTC model (a few hundred KB) in a local directory."""
    from tests.tiny_models import make_tiny_wav2vec2

    return make_tiny_wav2vec2(media_dir / "tiny-wav2vec2-en")


@pytest.fixture(scope="session")
def tiny_diarization(media_dir: Path) -> Path:
    """A randomly initialised pyannote pipeline laid out as speaker-diarization-community-1."""
    from tests.tiny_models import make_tiny_diarization

    return make_tiny_diarization(media_dir / "tiny-diarization")


#: The catalog's diarization repository, gated on the (fake) hub.
DIARIZE_REPO = "pyannote/speaker-diarization-community-1"
#: A token only the fake hub knows; it must show up nowhere but in the hub's requests.
HUB_TOKEN = "hf_vsrtTestTokenQ7rW2xZk9LmN4pV8sT1"


@pytest.fixture
async def gated_hub(tiny_diarization: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    """The tiny pipeline as the catalog's community-1, readable only with HUB_TOKEN."""
    fake = FakeHub()
    fake.add_repo_from_dir(DIARIZE_REPO, tiny_diarization, gated_tokens=[HUB_TOKEN])
    async with serving_as_endpoint(fake, monkeypatch):
        yield fake


@pytest.fixture(scope="session")
def dialogue(media_dir: Path) -> Speech:
    """A two-person exchange, one espeak-ng voice each, as a 16 kHz mono WAV (11 s)."""
    return make_speech(
        media_dir / "dialogue.wav",
        ["I didn't know you were there.", "Neither did I, to be honest.", "Well, now we both know."],
        voices=["en-us", "en-us+f3", "en-us"],
        video=False,
    )


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL cluster for the session (per xdist worker), started on first use;
    the test is skipped where PostgreSQL is not installed."""
    bindir = pg_bin()
    if bindir is None:
        pytest.skip(MISSING)
    with running_cluster(bindir) as cluster:
        yield cluster


@pytest.fixture
async def pg_url(pg_cluster: Cluster) -> AsyncIterator[str]:
    """The URL of a fresh, empty PostgreSQL database of this test's own."""
    async with fresh_database(pg_cluster) as url:
        yield url


@pytest.fixture
def make_settings(tmp_path: Path) -> SettingsFactory:
    """Settings for a fresh data directory; nested overrides as in a TOML file."""

    def make(**overrides: Any) -> Settings:
        overrides.setdefault("data_dir", tmp_path / "data")
        return load_settings(env={}, **overrides)

    return make


@pytest.fixture
def make_client(aiohttp_client: Any, make_settings: SettingsFactory) -> ClientFactory:
    """A test client over real sockets for `create_app` with these settings overrides."""

    async def make(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides)))

    return make


@pytest.fixture
async def make_service(make_settings: SettingsFactory) -> AsyncIterator[ServiceFactory]:
    """Started services (real runner subprocesses); all closed, runners reaped, at the end."""
    stack = contextlib.AsyncExitStack()

    async def make(settings: Settings | None = None, **overrides: Any) -> Service:
        svc = Service(settings or make_settings(**overrides))
        return await stack.enter_async_context(svc)

    async with stack:
        yield make


def install_align_model(settings: Settings, source: Path, language: str = "en") -> Path:
    """Place a model directory where the service looks for the language's aligner."""
    return install_model(settings, source, "align", language)


def install_model(settings: Settings, source: Path, kind: str, model_id: str) -> Path:
    """Place a model directory where the service looks for a catalog model (ready at start)."""
    import shutil

    target = settings.models_dir / kind / model_id
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target, dirs_exist_ok=True)
    return target
