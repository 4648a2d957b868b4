"""The typed vocabularies, the catalog as the registry of model types and ids, and
`GET /api/meta`, through which the UI learns them."""

from __future__ import annotations

import itertools
import json
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.conftest import ClientFactory, SettingsFactory
from vsrt_service.core.catalog import CATALOG_FILE, Catalog
from vsrt_service.core.options import OptionError, parse_options
from vsrt_service.core.vocab import STEPS, ModelStatus, Phase, Signal, span
from vsrt_service.jobs.store import JobStatus


def test_phase_shares_are_the_specs_and_cover_0_to_100_without_gaps() -> None:
    assert [s.phase for s in STEPS] == list(Phase)
    assert {s.phase: s.share for s in STEPS} == {
        "extract": 5,
        "split": 5,
        "transcribe": 70,
        "align": 10,
        "diarize": 5,
        "srt": 5,
    }
    assert sum(s.share for s in STEPS) == 100
    assert STEPS[0].start == 0 and STEPS[-1].end == 100
    for before, after in itertools.pairwise(STEPS):
        assert before.end == after.start
    assert span("transcribe") == (10.0, 80.0)
    assert span("diarize") == (90.0, 95.0)
    with pytest.raises(ValueError):
        span("translate")


def test_vocabularies_are_the_plain_strings_on_the_wire() -> None:
    payload = {"code": Signal.JOB_COMPLETE, "phase": Phase.SRT, "status": ModelStatus.NOT_DOWNLOADED}
    assert json.dumps(payload) == '{"code": "job_complete", "phase": "srt", "status": "not_downloaded"}'
    assert {str(s) for s in Signal} >= {"alignment_ready", "job_complete", "paused", "canceled", "requeued"}
    assert [str(s) for s in ModelStatus] == [
        "not_downloaded",
        "waiting",
        "downloading",
        "ready",
        "incomplete",
        "error",
    ]


def custom_catalog(tmp_path: Path, extra: str) -> Catalog:
    path = tmp_path / "models.toml"
    path.write_text(CATALOG_FILE.read_text() + extra)
    return Catalog.load(path)


def test_model_types_come_from_the_catalog_in_file_order(tmp_path: Path) -> None:
    assert Catalog.load().types == ("whisper", "align", "diarize")
    extra = '\n[separate."htdemucs"]\nrepo = "facebook/htdemucs"\n'
    catalog = custom_catalog(tmp_path, extra)
    assert catalog.types == ("whisper", "align", "diarize", "separate")
    assert [e.id for e in catalog.of_type("separate")] == ["htdemucs"]
    assert Catalog.load() is Catalog.load(), "the packaged catalog is read once, not per request"


def test_options_accept_a_model_added_to_the_catalog(make_settings: SettingsFactory, tmp_path: Path) -> None:
    catalog = custom_catalog(
        tmp_path,
        (
            '\n[whisper."distil-small.en"]\nrepo = "Systran/faster-distil-whisper-small.en"\n'
            "english_only = true\n"
            '\n[whisper."my-finetune"]\nrepo = "me/my-finetune"\n'
        ),
    )
    settings = make_settings()
    options = parse_options({"model": "my-finetune", "language": "de"}, settings, catalog=catalog)
    assert (options.model, options.language) == ("my-finetune", "de")
    # English-only is the catalog's word for it, not a guess from the id.
    english = parse_options({"model": "distil-small.en", "language": None}, settings, catalog=catalog)
    assert english.language == "en"
    with pytest.raises(OptionError) as refused:
        parse_options({"model": "distil-small.en", "task": "translate"}, settings, catalog=catalog)
    assert refused.value.field == "task"
    # Not in the packaged catalog, so refused there, naming the field.
    with pytest.raises(OptionError) as unknown:
        parse_options({"model": "my-finetune"}, settings)
    assert unknown.value.field == "model" and "my-finetune" in str(unknown.value)


def test_english_only_is_explicit_in_the_packaged_catalog() -> None:
    raw = tomllib.loads(CATALOG_FILE.read_text())
    catalog = Catalog.load()
    for model_id in raw["whisper"]:
        entry = catalog.get("whisper", model_id)
        assert entry is not None
        assert entry.english_only is raw["whisper"][model_id].get("english_only", False)
    assert [e.id for e in catalog.of_type("whisper") if e.english_only] == [
        "tiny.en",
        "base.en",
        "small.en",
        "medium.en",
    ]


async def test_meta_over_http_is_the_vocabularies_and_the_catalog(make_client: ClientFactory) -> None:
    client = await make_client()
    resp = await client.get("/api/meta")
    assert resp.status == 200
    meta = await resp.json()
    assert meta["phases"] == [
        {"name": str(s.phase), "label": s.label, "share": s.share, "start": s.start, "end": s.end}
        for s in STEPS
    ]
    assert meta["job_statuses"] == [str(s) for s in JobStatus]
    assert meta["model_types"] == list(Catalog.load().types)
    assert meta["model_statuses"] == [str(s) for s in ModelStatus]
    assert meta["signals"] == [str(s) for s in Signal]
    assert meta["version"] == metadata.version("vsrt")
