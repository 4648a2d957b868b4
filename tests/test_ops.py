"""Operations: one process per data directory, durable writes, leftovers cleaned, limits."""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ServiceFactory, SettingsFactory
from tests.http_helpers import upload
from tests.media import Speech
from vsrt_service.app import create_app
from vsrt_service.datadir import LOCK_NAME, DataDirLocked
from vsrt_service.files import write_atomic
from vsrt_service.service import Service, open_store

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
def make_client(aiohttp_client: Any, make_settings: SettingsFactory) -> ClientFactory:
    async def make(**overrides: Any) -> TestClient[Any, Any]:
        return await aiohttp_client(create_app(make_settings(**overrides)))

    return make


# --- malformed cues ------------------------------------------------------------------------


#: A cue start as JSON text, and words the 400's message must hold.
BAD_STARTS = [
    ("1" + "0" * 400, "too large"),  # an integer no float can hold
    ("1e400", "finite"),  # json reads it as Infinity
    ("NaN", "finite"),
    ("-Infinity", "finite"),
    ("-0.5", "negative"),
    ("true", "number"),
    ('"1.5"', "number"),
    ("null", "number"),
    ("360001", "at most"),
]


async def test_malformed_cue_times_are_400_naming_the_field(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client()
    job = await upload(client, speech.path, start=False)
    url = f"/api/jobs/{job['job_id']}/subtitles"
    kept = {"cues": [{"start": 0.5, "end": 2.0, "text": "kept"}]}
    assert (await client.put(url, json=kept)).status == 200
    for start, words in BAD_STARTS:
        body = '{"cues": [{"start": ' + start + ', "end": 2.0, "text": "x"}]}'
        resp = await client.put(url, data=body, headers={"Content-Type": "application/json"})
        assert resp.status == 400, (start[:20], await resp.text())
        error = (await resp.json())["error"]
        assert error["code"] == "bad_cues" and error["field"] == "cues"
        assert "cues[0].start" in error["message"] and words in error["message"], error
    # The refused edits lost nothing: the earlier edit is still what is served.
    text = await (await client.get(f"{url}?format=txt")).text()
    assert text == "kept\n"


# --- one process per data directory ----------------------------------------------------------


async def test_a_second_service_on_the_same_data_dir_is_refused(
    make_settings: SettingsFactory, make_service: ServiceFactory, aiohttp_client: Any
) -> None:
    settings = make_settings()
    first = await make_service(settings)
    with pytest.raises(DataDirLocked) as refused:
        async with Service(settings):
            pass
    lock_file = settings.data_dir / LOCK_NAME
    assert lock_file.read_text().split("\n")[0] == str(os.getpid())
    assert refused.value.pid == os.getpid()
    assert f"in use by process {os.getpid()}" in str(refused.value)
    # The app's resources open the data directory the same way: its start-up fails.
    with pytest.raises(DataDirLocked):
        await aiohttp_client(create_app(settings))
    assert first.pool.slots, "the first service kept running"
    await first.__aexit__(None, None, None)
    # Released on close: the same process opens the directory again at once.
    async with open_store(settings) as store:
        assert await store.count_jobs() == 0
    assert lock_file.read_text() == ""


# --- durable writes ----------------------------------------------------------------------------


def test_write_atomic_replaces_whole_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    target = tmp_path / "subtitles.srt"
    write_atomic(target, "première\n")
    assert target.read_bytes() == "première\n".encode()
    plain = tmp_path / "plain"
    plain.write_bytes(b"")  # the mode an ordinary new file gets under this umask
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    write_atomic(target, b"\x00second")
    assert target.read_bytes() == b"\x00second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "subtitles.srt"]

    blocked = tmp_path / "blocked.srt"
    blocked.mkdir()  # a directory in the way: the rename fails
    with pytest.raises(IsADirectoryError):
        write_atomic(blocked, "text")
    assert blocked.is_dir() and not any(blocked.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked.srt", "plain", "subtitles.srt"]
