"""Options users ask for: initial_prompt, hotwords, audio_track, and their validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import ServiceFactory
from tests.media import make_speech
from vsrt_service.service import Service

#: A name tiny.en misspells on its own ("We met Shivang, will you met the station?").
NAME = "We met Siobhan Quilliam at the station."


async def _text(svc: Service, path: Path, settings: dict[str, object] | None = None) -> str:
    job = await svc.submit(path, settings)
    done = await svc.wait(job.id)
    assert done.status == "completed", done
    return " ".join(s["text"] for s in (await svc.transcript(job.id)).segments)


@pytest.mark.slow
async def test_prompt_and_hotwords_reach_whisper_and_never_leak_into_the_next_job(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    clip = make_speech(tmp_path / "name.wav", [NAME], video=False, lead=0.3).path
    svc = await make_service()
    hot = await _text(svc, clip, {"hotwords": ["Siobhan", "Quilliam"], "align": False})
    prompted = await _text(svc, clip, {"initial_prompt": "Siobhan Quilliam", "align": False})
    plain = await _text(svc, clip, {"align": False})
    assert "Siobhan Quilliam" in hot and "Siobhan Quilliam" in prompted, (hot, prompted)
    assert "Siobhan" not in plain and "Quilliam" not in plain, plain  # nothing left from before
