"""Synchronous requests share jobs, and language detection, with the real runner.

The compatible APIs (OpenAI, whisper-asr-webservice) make a job per request through
`Service.submit_shared`: a retried identical request follows the running job, or gets the
finished one, instead of transcribing the same audio again.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.conftest import ClientFactory, ServiceFactory
from tests.media import Speech, make_speech
from vsrt_service.core.errors import Conflict, InvalidInput
from vsrt_service.service import Service
from vsrt_service.web.keys import SERVICE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def short_speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    return make_speech(tmp_path_factory.mktemp("shared") / "short.mp4", ["One short sentence."])


def uploaded(svc: Service, source: Path, name: str) -> Path:
    """A copy of `source` where an upload would be stored (the service owns it from then on)."""
    svc.settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    target = svc.settings.uploads_dir / name
    shutil.copyfile(source, target)
    return target


async def test_identical_requests_share_one_transcription(
    make_service: ServiceFactory, short_speech: Speech
) -> None:
    svc = await make_service()
    settings = {"language": "en"}
    first, second = await asyncio.gather(
        svc.submit_shared(uploaded(svc, short_speech.path, "a.mp4"), settings, source_name="a.mp4"),
        svc.submit_shared(uploaded(svc, short_speech.path, "b.mp4"), settings, source_name="b.mp4"),
    )
    assert first.job.id == second.job.id
    assert sorted([first.attached, second.attached]) == [False, True]
    # The attached request's own copy is gone; the job's is kept.
    assert sorted(p.name for p in svc.settings.uploads_dir.iterdir()) == [Path(first.job.input_path).name]
    done = await asyncio.wait_for(svc.finished(first.job.id), 120)
    assert done.status == "completed" and done.language == "en"
    # Asked again after it finished: the stored job, at once, with no second transcription.
    again = await svc.submit_shared(uploaded(svc, short_speech.path, "c.mp4"), settings, source_name="c.mp4")
    assert again.attached and again.job.id == done.id and again.job.status == "completed"
    segments = await svc.store.segments(done.id)
    assert segments and all(s.transcribe_count == 1 for s in segments)
    # Other settings are another request.
    other = await svc.submit_shared(
        uploaded(svc, short_speech.path, "d.mp4"), {"language": "en", "max_lines": 1}, source_name="d.mp4"
    )
    assert not other.attached and other.job.id != done.id
    # A canceled job is no result to share: the same request runs anew.
    await svc.cancel(other.job.id)
    with pytest.raises(Conflict) as info:
        await svc.finished(other.job.id)
    assert info.value.code == "canceled"
    fresh = await svc.submit_shared(
        uploaded(svc, short_speech.path, "e.mp4"), {"language": "en", "max_lines": 1}, source_name="e.mp4"
    )
    assert not fresh.attached and fresh.job.id != other.job.id
    # What is not media is refused before any job exists.
    text = svc.settings.uploads_dir / "notes.mp4"
    text.write_text("not media")
    with pytest.raises(InvalidInput):
        await svc.submit_shared(text, settings, source_name="notes.mp4")


async def test_detect_language_over_http(
    make_client: ClientFactory, short_speech: Speech, tmp_path: Path
) -> None:
    media = tmp_path / "media"
    media.mkdir()
    # Twenty seconds of silence before the speech: detection listens for speech, not the start.
    late = await asyncio.to_thread(
        make_speech, media / "late.m4a", ["Good evening, and welcome to the news."], lead=20.0, video=False
    )
    client = await make_client(server={"media_roots": [str(media)]})
    with short_speech.path.open("rb") as fh:
        resp = await client.post("/api/detect-language", data={"file": fh})
    body = await resp.json()
    assert resp.status == 200, body
    assert body["model"] == "tiny.en" and body["language"] == "en" and body["probability"] == 1.0
    assert body["candidates"] == [{"language": "en", "probability": 1.0}]
    assert 0 < body["speech_seconds"] <= 30
    resp = await client.post("/api/detect-language", json={"path": "late.m4a"})
    body = await resp.json()
    assert resp.status == 200 and body["language"] == "en", body
    # Bad input: clear errors, and no temporary file left behind.
    resp = await client.post("/api/detect-language", json={"path": "../etc/passwd"})
    assert resp.status == 403
    resp = await client.post("/api/detect-language", data={"file": b"plain text, not media"})
    body = await resp.json()
    assert resp.status == 400 and body["error"]["field"] == "file", body
    resp = await client.post("/api/detect-language", json={"path": "late.m4a", "model": "no-such-model"})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "model"
    uploads = client.app[SERVICE].settings.uploads_dir
    assert not uploads.exists() or not list(uploads.iterdir())
    assert late.path.exists()


async def test_identical_requests_on_two_nodes_at_once_make_one_job(
    pg_url: str, make_service: ServiceFactory, short_speech: Speech, tmp_path: Path
) -> None:
    """Two nodes on one PostgreSQL database and one storage root get the same synchronous
    request at the same moment (a client retrying through a load balancer): one job, the
    other request attached to it. (No runner: only the job store decides.)"""
    shared = {
        "store": {"url": pg_url},
        "storage": {"root": str(tmp_path / "shared")},
        "runners": {"enabled": False},
    }
    a = await make_service(data_dir=tmp_path / "a", **shared)
    b = await make_service(data_dir=tmp_path / "b", **shared)
    settings = {"language": "en"}
    for round_ in range(3):
        first, second = await asyncio.gather(
            a.submit_shared(uploaded(a, short_speech.path, f"a{round_}.mp4"), settings, source_name="a.mp4"),
            b.submit_shared(uploaded(b, short_speech.path, f"b{round_}.mp4"), settings, source_name="b.mp4"),
        )
        assert first.job.id == second.job.id, (first, second)
        assert sorted([first.attached, second.attached]) == [False, True]
        jobs, count = await a.list_jobs()
        assert count == round_ + 1, jobs  # one per round
        await a.cancel(first.job.id)  # a canceled job is not reused: the next round is new
