"""Options users ask for: initial_prompt, hotwords, audio_track, and their validation."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ClientFactory, ServiceFactory, SettingsFactory
from tests.http_helpers import is_complete, open_stream, post_upload, upload
from tests.media import Speech, make_speech, make_tracks, word_error_rate
from tests.test_pipeline import transcript
from vsrt_service.core.options import OptionError, parse_options, track_choice
from vsrt_service.jobs.media import AudioTrack, MediaInfo, choose_track, probe
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
    clip = (await asyncio.to_thread(make_speech, tmp_path / "name.wav", [NAME], video=False, lead=0.3)).path
    svc = await make_service()
    hot = await _text(svc, clip, {"hotwords": ["Siobhan", "Quilliam"], "align": False})
    prompted = await _text(svc, clip, {"initial_prompt": "Siobhan Quilliam", "align": False})
    plain = await _text(svc, clip, {"align": False})
    assert "Siobhan Quilliam" in hot and "Siobhan Quilliam" in prompted, (hot, prompted)
    assert "Siobhan" not in plain and "Quilliam" not in plain, plain  # nothing left from before


# --- audio_track --------------------------------------------------------------------------

TRACKS = [
    (["The quick brown fox jumps over the lazy dog."], "eng", None),
    (["She sells fresh bread at the market every morning."], "deu", "Kommentar"),
]


@pytest.fixture(scope="module")
def two_tracks(tmp_path_factory: pytest.TempPathFactory) -> list[Speech]:
    """English words on both tracks (tiny.en is English-only): they differ by sentence."""
    return make_tracks(tmp_path_factory.mktemp("tracks") / "two tracks.mkv", TRACKS)


async def test_probe_lists_the_audio_tracks(two_tracks: list[Speech]) -> None:
    info = await probe(two_tracks[0].path)
    assert [(t.index, t.language, t.title, t.codec, t.channels, t.default) for t in info.tracks] == [
        (0, "eng", None, "aac", 1, True),
        (1, "deu", "Kommentar", "aac", 1, False),
    ]


def _info(*tracks: tuple[str | None, bool]) -> MediaInfo:
    return MediaInfo(
        duration=3.0,
        has_audio=bool(tracks),
        format_name="matroska,webm",
        tracks=tuple(
            AudioTrack(index=i, language=lang, title=None, codec="aac", channels=2, default=default)
            for i, (lang, default) in enumerate(tracks)
        ),
    )


@pytest.mark.parametrize(
    ("choice", "index"),
    [(None, 0), (0, 0), (1, 1), (2, 2), ("en", 0), ("eng", 0), ("de", 1), ("deu", 1), ("ger", 1), ("fr", 2)],
)
def test_a_track_is_chosen_by_index_or_by_either_form_of_its_language(
    choice: int | str | None, index: int
) -> None:
    info = _info(("eng", True), ("ger", False), ("fre", False))
    assert choose_track(info, choice, "film.mkv").index == index


def test_without_a_choice_the_default_track_is_used() -> None:
    assert choose_track(_info(("eng", False), ("deu", True)), None, "film.mkv").index == 1
    assert choose_track(_info(("eng", False), ("deu", False)), None, "film.mkv").index == 0
    # of several tracks in the language asked for, the default one
    assert choose_track(_info(("eng", False), ("eng", True)), "en", "film.mkv").index == 1


@pytest.mark.parametrize("choice", [3, "fr", "es"])
def test_a_track_the_file_lacks_names_the_field_and_lists_the_tracks(choice: int | str) -> None:
    info = _info(("eng", True), ("deu", False), (None, False))
    with pytest.raises(OptionError) as caught:
        choose_track(info, choice, "film.mkv")
    assert caught.value.field == "audio_track"
    message = str(caught.value)
    assert "film.mkv" in message and "0 (eng" in message and "1 (deu" in message and "2 (" in message


@pytest.mark.parametrize(("choice", "words"), [(3, "has 2 audio tracks"), ("fr", "no audio track in 'fr'")])
async def test_a_track_the_upload_lacks_is_400_at_submit(
    make_client: ClientFactory, two_tracks: list[Speech], choice: int | str, words: str
) -> None:
    client = await make_client(runners={"enabled": False})
    resp = await post_upload(client, two_tracks[0].path, {"audio_track": choice})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == "audio_track" and words in error["message"], error
    assert "0 (eng" in error["message"] and '1 (deu, "Kommentar"' in error["message"]
    assert (await (await client.get("/api/jobs")).json())["total"] == 0


@pytest.mark.slow
async def test_a_two_track_file_is_transcribed_from_the_track_asked_for(
    make_client: ClientFactory, two_tracks: list[Speech]
) -> None:
    """By index, by language, by default; and a restart asking for another track gets it,
    though it keeps the audio extracted before (kept here: `keep_audio_hours`)."""
    client = await make_client(jobs={"keep_audio_hours": 1})
    first, second = (t.text for t in two_tracks)
    english = {"index": 0, "language": "eng", "title": None}
    german = {"index": 1, "language": "deu", "title": "Kommentar"}

    async def check(job_id: str, track: dict[str, Any], expected: str) -> None:
        stream = await open_stream(client, job_id)
        await stream.until(is_complete, wait=120)
        done = await (await client.get(f"/api/jobs/{job_id}")).json()
        assert done["audio_track"] == track and done["settings"]["audio_track"] == track
        listed = (await (await client.get("/api/jobs")).json())["jobs"]
        assert [j["audio_track"] for j in listed if j["job_id"] == job_id] == [track]
        result = await (await client.get(f"/api/jobs/{job_id}/subtitles?format=json")).json()
        assert result["audio_track"] == track
        srt = await (await client.get(f"/api/jobs/{job_id}/subtitles")).text()
        assert word_error_rate(expected, transcript(srt)) < 0.3, (track, srt)

    by_index = await upload(client, two_tracks[0].path, {"audio_track": 1, "align": False})
    assert by_index["audio_track"] == german
    await check(by_index["job_id"], german, second)

    default = await upload(client, two_tracks[0].path, {"align": False})
    assert default["audio_track"] == english
    await check(default["job_id"], english, first)

    resp = await client.post(
        "/api/start", json={"job_id": default["job_id"], "settings": {"audio_track": "de"}, "restart": True}
    )
    assert resp.status == 200 and (await resp.json())["audio_track"] == german
    await check(default["job_id"], german, second)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({"vad_method": "webrtc"}, "vad_method", "one of: silero, pyannote"),
        ({"vad_method": None}, "vad_method", "one of"),
        ({"initial_prompt": 42}, "initial_prompt", "a string or null"),
        ({"initial_prompt": "x" * 1001}, "initial_prompt", "at most 1000 characters"),
        ({"hotwords": ["Kubernetes", 7]}, "hotwords", "a list of strings"),
        ({"hotwords": {"a": 1}}, "hotwords", "a string"),
        ({"audio_track": -1}, "audio_track", "index from 0"),
        ({"audio_track": 64}, "audio_track", "index from 0"),
        ({"audio_track": True}, "audio_track", "language code"),
        ({"audio_track": 1.5}, "audio_track", "language code"),
        ({"audio_track": "english"}, "audio_track", "language code"),
        ({"audio_track": {"index": "1"}}, "audio_track", "{index, language, title}"),
        ({"audio_track": {"index": 1, "path": "/x"}}, "audio_track", "{index, language, title}"),
        ({"min_silence_for_new_cue": 0}, "min_silence_for_new_cue", "between 0.1 and 30"),
        ({"min_silence_for_new_cue": "long"}, "min_silence_for_new_cue", "a number"),
        ({"priority": 101}, "priority", "between -100 and 100"),
        ({"priority": 1.5}, "priority", "a whole number"),
        ({"priority": "high"}, "priority", "a number"),
        ({"priority": True}, "priority", "a number"),
    ],
)
def test_each_bad_new_option_names_its_field(
    make_settings: SettingsFactory, raw: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(OptionError) as caught:
        parse_options(raw, make_settings())
    assert caught.value.field == field and words in str(caught.value), str(caught.value)


def test_new_options_are_normalised(make_settings: SettingsFactory) -> None:
    settings = make_settings()
    options = parse_options(
        {
            "hotwords": [" Kubernetes ", "", "Siobhan  Quilliam"],
            "initial_prompt": "  ",
            "audio_track": " 1 ",
            "vad_method": "silero",
            "min_silence_for_new_cue": 2,
        },
        settings,
    )
    assert options.hotwords == "Kubernetes, Siobhan Quilliam" and options.initial_prompt is None
    assert options.audio_track == 1 and options.vad_method == "silero"
    assert options.priority == 0  # the default: claimed by age alone
    assert parse_options({"priority": -100}, settings).priority == -100
    # A job stored before priorities existed keeps parsing (resume over its options).
    assert parse_options(None, settings, base={k: v for k, v in options.to_dict().items() if k != "priority"})
    assert options.min_silence_for_new_cue == 2.0
    assert parse_options({"audio_track": "DE"}, settings).audio_track == "de"
    # A job's resolved track (as its settings show it) is accepted back, as that index.
    resolved = {"index": 1, "language": "deu", "title": "Kommentar"}
    assert parse_options({"audio_track": resolved}, settings).audio_track == resolved
    assert track_choice(resolved) == 1 and track_choice("de") == "de" and track_choice(None) is None
