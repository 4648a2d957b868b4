"""Three hours of aligned words through the service, with its event loop free throughout.

The aligned transcript of a 3-hour recording (31k words in 2000 segments, tests/long_media.py)
is stored, read back, turned into cues and subtitle files, and served as JSON. Each of those
steps takes from a tenth of a second to seconds of CPU; none may hold the loop. (The pool's
decoding of such a reply is tested in tests/test_pool.py.)
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.conftest import SettingsFactory, loop_lag
from tests.long_media import aligned_result
from vsrt_service.core import bigjson
from vsrt_service.core.formats import parse_srt
from vsrt_service.jobs.pipeline import JobContext, JobRun
from vsrt_service.models.manager import ModelManager
from vsrt_service.runners.pool import RunnerPool
from vsrt_service.service import open_broker, open_model_state, open_store
from vsrt_service.web.app import create_app
from vsrt_service.web.keys import SERVICE

#: Longest the loop may stall while a 3-hour result is handled.
MAX_LAG = 0.1


@pytest.mark.serial
async def test_storing_and_writing_a_three_hour_result_leaves_the_loop_free(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    segments = await asyncio.to_thread(aligned_result, 3.0)
    async with (
        open_store(settings) as store,
        open_broker(settings) as broker,
        open_model_state(settings) as state,
    ):
        pool = RunnerPool(settings)  # never started: no model work here
        ctx = JobContext(settings, store, broker, pool, ModelManager(settings, state, broker, pool))
        job = await store.create_job(
            source_name="three-hours.mp4", input_path="uploads/x.mp4", options={}, status="paused"
        )
        run = JobRun(ctx, job)
        async with loop_lag() as lags:
            await store.save_result(job.id, segments, "wav2vec2", "en")
            stored, alignment = await run.align()  # a resumed job starts from the stored result
            await run.write_outputs(stored, alignment)
        assert stored == segments and alignment == "wav2vec2"
        srt = await asyncio.to_thread((ctx.job_dir(job.id) / "subtitles.srt").read_text)
        cues = await asyncio.to_thread(parse_srt, srt)
        assert len(cues) > 2000 and cues[-1].end > 3 * 3600 - 60
        assert len(lags) > 50 and max(lags) < MAX_LAG, f"loop lag up to {max(lags) * 1000:.0f} ms"


@pytest.mark.serial
async def test_transcription_text_of_a_three_hour_job_leaves_the_loop_free(
    aiohttp_client: Any, make_settings: SettingsFactory
) -> None:
    client = await aiohttp_client(create_app(make_settings(models={"preload_on_start": False})))
    store = client.app[SERVICE].store
    segments = await asyncio.to_thread(aligned_result, 3.0)
    job = await store.create_job(
        source_name="three-hours.mp4", input_path="uploads/x.mp4", options={}, status="completed"
    )
    await store.save_result(job.id, segments, "wav2vec2", "en")
    async with loop_lag() as lags:
        resp = await client.get(f"/api/transcription-text/{job.id}")
        body = await resp.read()  # parsed below, off the loop: the client is not under test
    assert resp.status == 200, body[:200]
    text = await asyncio.to_thread(json.loads, body)
    assert text["source"] == "aligned" and text["alignment"] == "wav2vec2"
    assert [s["words"] for s in text["segments"]] == [s["words"] for s in segments]
    assert text["text"].startswith(segments[0]["text"])
    assert len(lags) >= 3 and max(lags) < MAX_LAG, f"loop lag up to {max(lags) * 1000:.0f} ms"


def test_big_json_gives_what_the_json_module_gives() -> None:
    """bigjson walks the top levels itself; its text and values are the json module's."""
    samples: list[Any] = [
        aligned_result(0.2),
        {"data": {"segments": aligned_result(0.05)}, "id": "r1"},
        [],
        {},
        [[], {}],
        {"a": [1, 2.5, None, True, 'é\u2028\\"', {"b": []}]},
        "text",
        3,
        {"nan": float("nan"), "deep": [[[[[1]]]]], "tuple": (1, 2)},
        [{"x": {"y": [1, {"z": 2}]}}],
    ]
    for obj in samples:
        for depth in range(5):
            text = bigjson.dumps(obj, depth)
            assert text == json.dumps(obj)
            assert repr(bigjson.loads(text, depth)) == repr(json.loads(text))
            spaced = json.dumps(obj, indent=1, separators=(" ,", " : "))
            assert repr(bigjson.loads(f" \n{spaced}\t", depth)) == repr(json.loads(spaced))
            assert repr(bigjson.loads(spaced.encode(), depth)) == repr(json.loads(spaced))
    for bad in ["[1,]", '{"a" 1}', '{"a": 1,}', "[1] 2", "{1: 2}", "[1 2]", "", '["\x01"]', '{"a": [}']:
        with pytest.raises(json.JSONDecodeError):
            json.loads(bad)
        for depth in range(4):
            with pytest.raises(json.JSONDecodeError):
                bigjson.loads(bad, depth)
