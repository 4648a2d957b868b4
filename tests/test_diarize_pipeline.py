"""Diarization as a pipeline phase, for real: runner subprocesses, the tiny pyannote pipeline
(random weights: the tests check structure, not who speaks), the gated fake hub, SQLite.

The settings' many cases are pure unit tests; the real jobs are few and short.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import HUB_TOKEN, ServiceFactory, SettingsFactory, install_model
from tests.fakehub import FakeHub
from tests.media import Speech, make_speech
from tests.test_pipeline import segment_rows
from vsrt_service.core.config import load_settings
from vsrt_service.core.options import OptionError, parse_options
from vsrt_service.core.vocab import STEPS, Phase
from vsrt_service.service import Service

DASH = "- "


@pytest.fixture(scope="module")
def one_sentence(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    """The shortest job: what happens without the model does not depend on the speech."""
    return make_speech(
        tmp_path_factory.mktemp("diarize") / "one.wav", ["Nobody knows who says this."], video=False
    )


# --- settings (pure) ----------------------------------------------------------------------


def test_diarize_settings_default_off_and_take_whole_speaker_counts() -> None:
    settings = load_settings(env={})
    plain = parse_options({}, settings)
    assert (plain.diarize, plain.num_speakers, plain.min_speakers, plain.max_speakers) == (
        False,
        None,
        None,
        None,
    )
    on = parse_options({"diarize": True, "min_speakers": 2, "max_speakers": 2.0}, settings)
    assert (on.diarize, on.min_speakers, on.max_speakers) == (True, 2, 2)
    assert parse_options({"num_speakers": 20}, settings).num_speakers == 20


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"diarize": "yes"}, "diarize"),
        ({"num_speakers": 0}, "num_speakers"),
        ({"num_speakers": 21}, "num_speakers"),
        ({"num_speakers": 2.5}, "num_speakers"),
        ({"min_speakers": True}, "min_speakers"),
        ({"max_speakers": "3"}, "max_speakers"),
        ({"num_speakers": 2, "max_speakers": 3}, "num_speakers"),
        ({"min_speakers": 3, "max_speakers": 2}, "min_speakers"),
    ],
)
def test_bad_speaker_settings_name_their_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(OptionError) as bad:
        parse_options(raw, load_settings(env={}))
    assert bad.value.field == field, bad.value


def test_the_diarize_phase_runs_between_align_and_srt_with_its_own_share() -> None:
    order = [s.phase for s in STEPS]
    assert order.index(Phase.DIARIZE) == order.index(Phase.ALIGN) + 1 == order.index(Phase.SRT) - 1
    step = next(s for s in STEPS if s.phase == Phase.DIARIZE)
    assert step.share > 0 and sum(s.share for s in STEPS) == 100


# --- real jobs ---------------------------------------------------------------------------


def check_speakers(document: dict[str, Any]) -> set[str]:
    """Every word has a speaker; a cue has one speaker, or is a dialogue cue whose lines
    (each starting with the dash) are the turns of different speakers. Returns the labels."""
    words = [w for s in document["segments"] for w in s["words"]]
    assert words and all(w.get("speaker") for w in words), words
    for cue in document["cues"]:
        if "speakers" in cue:
            lines = cue["text"].split("\n")
            assert "speaker" not in cue and len(lines) == len(cue["speakers"]) == 2, cue
            assert all(line.startswith(DASH) for line in lines), cue
            assert cue["speakers"][0] != cue["speakers"][1], cue
        else:
            assert cue.get("speaker"), cue
            assert not cue["text"].startswith(DASH), cue
    return {w["speaker"] for w in words}


@pytest.mark.slow
async def test_a_diarized_job_fetches_the_gated_model_and_puts_a_speaker_on_every_word(
    make_service: ServiceFactory, gated_hub: FakeHub, dialogue: Speech
) -> None:
    svc = await make_service(models={"hf_token": HUB_TOKEN, "preload_on_start": False})
    assert svc.models.diarize_ref() is None, "not downloaded yet: the job fetches it"
    job = await svc.submit(dialogue.path, {"diarize": True, "max_speakers": 3, "speaker_labels": True})
    events = [ev async for ev in svc.events(job.id)]
    done = await svc.get(job.id)
    assert done.status == "completed", done.error
    assert gated_hub.authorized and svc.models.diarize_ref() is not None

    progress = [ev.data for ev in events if ev.event == "progress"]
    phases = [d["phase"] for d in progress]
    assert [ph for i, ph in enumerate(phases) if i == 0 or phases[i - 1] != ph] == [
        "extract",
        "split",
        "transcribe",
        "align",
        "diarize",
        "srt",
    ]
    percents = [d["percent"] for d in progress]
    assert percents == sorted(percents) and percents[-1] == 100
    assert any("diarization model" in d["message"] for d in progress if d["phase"] == "diarize")
    signals = [ev.data for ev in events if ev.event == "signal"]
    assert [s["code"] for s in signals] == ["alignment_ready", "speakers_ready", "job_complete"]

    document = json.loads(await svc.subtitles(job.id, "json"))
    labels = check_speakers(document)
    assert labels <= set(signals[1]["speakers"])  # a short turn may win no word
    stored = await svc.store.speakers(job.id)
    assert stored is not None and stored["turns"] and stored["options"]["max_speakers"] == 3
    txt = await svc.subtitles(job.id, "txt")
    assert txt.startswith("[SPEAKER_"), txt


@pytest.mark.slow
async def test_a_runner_killed_in_the_diarize_phase_resumes_without_transcribing_again(
    make_service: ServiceFactory, make_settings: SettingsFactory, tiny_diarization: Path, dialogue: Speech
) -> None:
    settings = make_settings(runners={"restart_backoff_initial": 0.1})
    install_model(settings, tiny_diarization, "diarize", "community-1")
    svc = await make_service(settings)
    job = await svc.submit(dialogue.path, {"diarize": True})
    killed_pid, requeued = None, False
    async for ev in svc.events(job.id):
        if ev.event == "progress" and ev.data["phase"] == "diarize" and killed_pid is None:
            assert "diarize:community-1" in svc.models_in_use(), "deleting it now must be refused"
            killed_pid = svc.pool.slots[0].pid
            assert killed_pid is not None
            os.kill(killed_pid, signal.SIGKILL)
        if ev.event == "signal" and ev.data["code"] == "requeued":
            requeued = True
            break
    assert killed_pid is not None and requeued, "the kill did not land in the diarize call"
    done = await svc.wait(job.id)
    assert done.status == "completed", done.error
    assert svc.pool.slots[0].pid not in (None, killed_pid)
    rows = segment_rows(svc.settings.database_path, job.id)
    assert rows and all(count == 1 for _, _, count in rows), f"transcribed again: {rows}"
    check_speakers(json.loads(await svc.subtitles(job.id, "json")))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("", "is gated: accept its licence at https://hf.co/pyannote/speaker-diarization-community-1"),
        (HUB_TOKEN, "could not be had"),  # the hub is unreachable (conftest's hub_unreachable)
    ],
)
async def test_without_the_model_the_job_completes_without_speakers_and_says_why(
    make_service: ServiceFactory, one_sentence: Speech, token: str, why: str
) -> None:
    svc: Service = await make_service(models={"hf_token": token, "preload_on_start": False})
    job = await svc.submit(one_sentence.path, {"diarize": True})
    events = [ev async for ev in svc.events(job.id)]
    done = await svc.get(job.id)
    assert done.status == "completed", done.error
    off = [ev.data for ev in events if ev.event == "signal" and ev.data["code"] == "speakers_off"]
    assert len(off) == 1 and why in off[0]["message"], off
    assert str(svc.settings.data_dir) not in off[0]["message"]
    last = [ev.data for ev in events if ev.event == "progress" and ev.data["phase"] == "diarize"][-1]
    assert why in last["message"]
    document = json.loads(await svc.subtitles(job.id, "json"))
    assert document["cues"] and not any("speaker" in w for s in document["segments"] for w in s["words"])
    assert not any("speaker" in c or "speakers" in c for c in document["cues"])
