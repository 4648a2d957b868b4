"""The diarization model, managed like the others, and the runner's diarize op, for real.

The fake hub serves a tiny random pyannote pipeline (pyannote's own classes, the layout of
pyannote/speaker-diarization-community-1) as a gated repository: huggingface_hub downloads it
in the download runner, pyannote loads it in a work runner. Weights are random, so the tests
check the structure and coverage of what it finds, not who speaks.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import DIARIZE_REPO, HUB_TOKEN, SettingsFactory
from tests.fakehub import FakeHub
from tests.http_helpers import catalog_entry, done_for, model_events
from tests.media import Speech
from tests.sse_client import SseEvent
from vsrt_service.core import protocol as p
from vsrt_service.core.catalog import Catalog
from vsrt_service.core.config import ConfigError, load_settings
from vsrt_service.core.speakers import SpeakerTurn, assign_speakers
from vsrt_service.runners.pool import new_id
from vsrt_service.web.keys import SERVICE

REPO = DIARIZE_REPO
TOKEN = HUB_TOKEN
GATED = f"{REPO} is gated: accept its licence at https://hf.co/{REPO} and set models.hf_token (or HF_TOKEN)"

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]


# --- catalog and settings ----------------------------------------------------------------


def test_the_catalog_has_a_gated_diarize_type_whose_files_are_the_pipeline(tiny_diarization: Path) -> None:
    catalog = Catalog.load()
    assert catalog.types == ("whisper", "align", "diarize")
    entry = catalog.get("diarize", "community-1")
    assert entry is not None and entry.repo == REPO and entry.gated
    written = sorted(
        f.relative_to(tiny_diarization).as_posix() for f in tiny_diarization.rglob("*") if f.is_file()
    )
    assert all(any(fnmatch.fnmatch(name, pat) for pat in entry.files) for name in written), written
    assert sorted(entry.required) == written, "every file pyannote reads is required"
    assert load_settings(env={}).models.default_diarize == "community-1"


def test_the_token_comes_from_the_setting_or_hf_token_and_is_never_printed(tmp_path: Path) -> None:
    assert load_settings(env={}).models.hf_token == ""
    assert load_settings(env={"HF_TOKEN": TOKEN}).models.hf_token == TOKEN
    config = tmp_path / "vsrt.toml"
    config.write_text('[models]\nhf_token = "hf_fromTheFile0123456789"\n')
    settings = load_settings(config, env={"HF_TOKEN": TOKEN})
    assert settings.models.hf_token == "hf_fromTheFile0123456789", "the setting wins over HF_TOKEN"
    assert load_settings(env={"VSRT_MODELS_HF_TOKEN": TOKEN}).models.hf_token == TOKEN
    assert TOKEN not in repr(load_settings(env={"HF_TOKEN": TOKEN}))
    with pytest.raises(ConfigError, match=r"models\.hf_token") as bad:
        load_settings(env={"HF_TOKEN": "hf_two words"})
    assert "two words" not in str(bad.value)


def test_the_download_request_hides_its_token() -> None:
    req = p.Download(id="1", repo=REPO, token=TOKEN)
    assert TOKEN not in repr(req) and TOKEN not in str(req)
    decoded = p.decode_request(p.encode(req))
    assert isinstance(decoded, p.Download) and decoded.token == TOKEN


# --- the fake hub's gate and the runner's download, in-process ------------------------------


async def test_a_gated_repo_without_the_token_or_its_licence_is_a_clear_error(
    gated_hub: FakeHub, tmp_path: Path
) -> None:
    """401 without a token, 403 with one whose licence is not accepted: the same advice."""
    from gpu_runner.download import download
    from gpu_runner.engine import EngineError

    def fetch(token: str | None, target: Path) -> p.DownloadResult:
        req = p.Download(
            id="1",
            repo=REPO,
            endpoints=[gated_hub.base_url],
            target_dir=str(target),
            patterns=["config.yaml"],
            token=token,
        )
        return download(req, threading.Event(), lambda done, total, name: None)

    for token, status in ((None, 401), ("hf_someoneElsesToken12345678", 403)):
        with pytest.raises(EngineError) as failed:
            await asyncio.to_thread(fetch, token, tmp_path / str(status))
        assert GATED in str(failed.value), str(failed.value)
        assert gated_hub.denied[-1] == status
        if token:
            assert token not in str(failed.value)
    assert not list((tmp_path / "401").glob("*.yaml")) and not list((tmp_path / "403").glob("*.yaml"))
    data = await asyncio.to_thread(fetch, TOKEN, tmp_path / "ok")
    assert data["fetched"] == ["config.yaml"] and (tmp_path / "ok" / "config.yaml").is_file()
    assert gated_hub.authorized, "the hub saw the token"


def test_diarize_refuses_bad_speaker_counts_and_a_directory_without_its_pipeline(tmp_path: Path) -> None:
    """Checked before any model loads: pyannote would read a missing directory as a hub id."""
    from gpu_runner.engine import Engine, EngineError

    engine = Engine("cpu")
    ref: p.ModelRef = {"kind": "diarize", "key": "diarize:community-1", "path": str(tmp_path)}
    for (num, low, high), words in (((0, None, None), "num_speakers"), ((None, 3, 2), "min_speakers")):
        with pytest.raises(EngineError, match=words) as bad:
            engine.diarize(str(tmp_path / "a.wav"), ref, num, low, high, lambda pct: None)
        assert bad.value.code == "bad_request"
    with pytest.raises(EngineError, match=r"no config\.yaml") as missing:
        engine.load(ref, None)
    assert missing.value.code == "model" and engine.load_count == 0


# --- speakers for aligned words (pure) -------------------------------------------------------


def turn(start: float, end: float, speaker: str) -> SpeakerTurn:
    return {"start": start, "end": end, "speaker": speaker}


def seg(*words: tuple[str, float | None, float | None]) -> p.AlignedSegment:
    out: list[p.Word] = []
    for text, start, end in words:
        w: p.Word = {"word": text, "score": 0.9}
        if start is not None and end is not None:
            w["start"], w["end"] = start, end
        out.append(w)
    times = [w["start"] for w in out if "start" in w] + [w["end"] for w in out if "end" in w]
    return {"start": min(times), "end": max(times), "text": " ".join(t for t, _, _ in words), "words": out}


def speakers(segments: list[p.AlignedSegment]) -> list[str | None]:
    return [w.get("speaker") for s in segments for w in s["words"]]


def test_each_word_takes_the_speaker_it_overlaps_most() -> None:
    turns = [turn(0.0, 1.0, "A"), turn(0.9, 2.0, "B"), turn(0.95, 1.05, "A")]
    segments = [seg(("one", 0.1, 0.5), ("two", 0.8, 1.1), ("three", 1.2, 1.9))]
    # "two": A overlaps 0.2 + 0.1 (two turns), B 0.2: the total decides.
    assert speakers(assign_speakers(segments, turns)) == ["A", "A", "B"]
    assert "speaker" not in segments[0]["words"][0], "the input is left as it was"


def test_words_outside_every_turn_take_the_nearest_and_untimed_words_their_neighbour() -> None:
    turns = [turn(0.0, 1.0, "A"), turn(3.0, 4.0, "B")]
    segments = [
        seg(("hello", 0.2, 0.6), ("1999", None, None), ("there", 1.4, 1.6)),
        seg(("and", 2.6, 2.8), ("you", 3.1, 3.5)),
        seg(("42", None, None), ("yes", 5.0, 5.2)),
    ]
    assert speakers(assign_speakers(segments, turns)) == ["A", "A", "A", "B", "B", "B", "B"]


def test_without_turns_no_word_gets_a_speaker() -> None:
    segments = [seg(("hello", 0.2, 0.6))]
    assert speakers(assign_speakers(segments, [])) == [None]


def test_random_streams_agree_with_whisperx_where_words_have_times() -> None:
    """The same choice as whisperx.assign_word_speakers(fill_nearest=True), on random data."""
    import pandas as pd  # type: ignore[import-untyped]
    from whisperx.diarize import assign_word_speakers

    rng = random.Random(13)
    for _ in range(200):
        turns = []
        t = 0.0
        for _ in range(rng.randint(1, 8)):
            t += rng.uniform(0, 2)
            length = rng.uniform(0.1, 3)
            turns.append(turn(round(t, 3), round(t + length, 3), rng.choice("ABC")))
            t += rng.uniform(-length, length)
        words = []
        w = 0.0
        for i in range(rng.randint(1, 20)):
            w += rng.uniform(0, 1)
            length = rng.uniform(0.05, 0.6)
            words.append((f"w{i}", round(w, 3), round(w + length, 3)))
            w += length
        segments = [seg(*words)]
        ours = speakers(assign_speakers(segments, turns))
        frame = pd.DataFrame(turns)
        theirs = assign_word_speakers(frame, {"segments": [dict(s) for s in segments]}, fill_nearest=True)
        assert ours == [w.get("speaker") for w in theirs["segments"][0]["words"]], (turns, words)


# --- end to end: the service, its runners, the gated fake hub --------------------------------


class Seen:
    """Every body the service answered and every event it sent, for the token check."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    async def json(self, resp: Any) -> Any:
        text = await resp.text()
        self.texts.append(text)
        return json.loads(text)

    def events(self, events: list[SseEvent]) -> list[SseEvent]:
        self.texts.extend(ev.raw.decode() for ev in events)
        return events


@pytest.mark.slow
async def test_gated_download_diarize_and_delete_never_show_the_token(
    make_client: ClientFactory,
    make_settings: SettingsFactory,
    gated_hub: FakeHub,
    dialogue: Speech,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)  # every service log line, the runners' stderr included
    monkeypatch.setenv("VSRT_RUNNER_LOG", "DEBUG")
    seen = Seen()
    quiet = {"preload_on_start": False}

    # Without the token: a model_error that says what to do.
    client = await make_client(models=quiet)
    events = await model_events(client)
    resp = await client.post("/api/models/diarize/community-1/download")
    assert resp.status == 202, await seen.json(resp)
    failed = seen.events(await events.until(done_for("diarize", "community-1"), wait=60))
    assert failed[-1].event == "model_error" and GATED in failed[-1].data["error"], failed[-1].data
    entry = await catalog_entry(client, "diarize", "community-1")
    assert entry["status"] == "error" and GATED in entry["error"] and entry["gated"] is True
    assert 401 in gated_hub.denied
    await client.close()

    # With it: progress, then ready.
    gated_hub.throttle_bytes_per_s = 8e6  # about two seconds for the embedding weights
    client = await make_client(models=quiet | {"hf_token": TOKEN})
    events = await model_events(client)
    resp = await client.post("/api/models/diarize/community-1/download")
    assert resp.status == 202 and (await seen.json(resp))["status"] == "started"
    done = seen.events(await events.until(done_for("diarize", "community-1"), wait=120))
    assert done[-1].event == "model_complete", done[-1].data
    sizes = [e.data["downloaded_bytes"] for e in done if e.data.get("status") == "downloading"]
    assert len(set(sizes)) >= 3 and sizes == sorted(sizes)
    entry = await catalog_entry(client, "diarize", "community-1")
    assert entry["status"] == "ready" and entry["path"] == "models/diarize/community-1"
    assert gated_hub.authorized

    # The runner diarizes the two-voice dialogue from the downloaded directory.
    svc = client.app[SERVICE]
    ref = svc.models.diarize_ref()
    assert ref is not None and ref["kind"] == "diarize" and ref["key"] == "diarize:community-1"
    slot = svc.pool.slots[0]
    await slot.ready.wait()
    progress: list[float] = []

    async def on_reply(msg: p.Reply) -> None:
        if isinstance(msg, p.Progress):
            progress.append(msg.done)

    wav = dialogue.path
    result = await slot.call(p.Diarize(id=new_id(), audio_path=str(wav), model=ref, max_speakers=3), on_reply)
    turns = result["segments"]
    assert turns and result["speakers"] == list(dict.fromkeys(t["speaker"] for t in turns))
    assert 1 <= len(result["speakers"]) <= 3
    for t in turns:
        assert 0 <= t["start"] < t["end"] <= dialogue.duration + 0.001, t  # (ms rounding)
    assert [t["start"] for t in turns] == sorted(t["start"] for t in turns)
    for sentence in dialogue.sentences:  # the speech is covered (who speaks: random weights)
        covered = sum(
            max(0.0, min(t["end"], sentence.end) - max(t["start"], sentence.start)) for t in merged(turns)
        )
        assert covered >= 0.8 * (sentence.end - sentence.start), (sentence, turns)
    assert progress and progress == sorted(progress) and progress[-1] == 100
    hello = await slot.call(p.Hello(id=new_id()))
    assert "diarize:community-1" in [m["key"] for m in hello["loaded_models"]]

    # Delete: gone from disk and from the runner's cache.
    resp = await client.delete("/api/models/diarize/community-1")
    assert resp.status == 200, await seen.json(resp)
    await seen.json(resp)
    assert not (svc.settings.models_dir / "diarize" / "community-1").exists()
    assert (await catalog_entry(client, "diarize", "community-1"))["status"] == "not_downloaded"
    hello = await slot.call(p.Hello(id=new_id()))
    assert "diarize:community-1" not in [m["key"] for m in hello["loaded_models"]]
    for path in ("/api/models/diarize", "/api/models", "/api/models/cache", "/api/health"):
        resp = await client.get(path)
        seen.texts.append(await resp.text())

    # The token went to the hub and nowhere else.
    stderr = "\n".join(line for s in [*svc.pool.slots, svc.pool.downloader] for line in s.stderr_tail)
    assert "urllib3" in caplog.text, "the runners' debug lines (their stderr) were captured"
    texts = {"responses and events": "\n".join(seen.texts), "logs": caplog.text, "runner stderr": stderr}
    for where, text in texts.items():
        assert TOKEN[3:] not in text, where


def merged(turns: list[Any]) -> list[Any]:
    """Overlapping turns as one stretch of speech each."""
    out: list[dict[str, float]] = []
    for t in sorted(turns, key=lambda t: t["start"]):
        if out and t["start"] <= out[-1]["end"]:
            out[-1]["end"] = max(out[-1]["end"], t["end"])
        else:
            out.append({"start": t["start"], "end": t["end"]})
    return out
