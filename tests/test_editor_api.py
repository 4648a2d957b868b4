"""The editor's subtitle document over real HTTP on a job a real runner completed: cues with
a version, saves that keep every cue, conflicts between two editors, revert and reflow."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ClientFactory
from tests.http_helpers import is_complete, open_stream, upload
from tests.media import Speech
from tests.test_cue_rules import said_by
from tests.test_cues import check_invariants
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue
from vsrt_service.core.formats import cues_from_json, parse_srt


def cues_of(doc: dict[str, Any]) -> list[Cue]:
    return [Cue(c["start"], c["end"], c["text"]) for c in doc["cues"]]


@pytest.mark.slow
async def test_one_word_fixed_and_saved_keeps_every_cue(make_client: ClientFactory, speech: Speech) -> None:
    client = await make_client()
    job = await upload(client, speech.path, {"language": "en"})
    url = f"/api/jobs/{job['job_id']}/subtitles"
    not_yet = await client.get(f"{url}?format=json")
    assert not_yet.status == 409 and (await not_yet.json())["error"]["code"] == "not_ready"
    await (await open_stream(client, job["job_id"])).until(is_complete, wait=180)

    machine_srt = await (await client.get(f"{url}?format=srt")).text()
    doc = await (await client.get(f"{url}?format=json")).json()
    # The editor's document: the same cues as the SRT, the version to save against, the rules.
    assert doc["edited"] is False and doc["version"] == 0
    cues = cues_of(doc)
    assert [(round(c.start, 3), round(c.end, 3), c.text) for c in cues] == [
        (c.start, c.end, c.text) for c in parse_srt(machine_srt)
    ]
    assert len(cues) >= 4 and doc["speech"] and doc["segments"]
    rules = CueSettings(**doc["rules"])
    check_invariants(cues, rules)

    # One word changed, saved: every cue is still there, times unchanged, one text changed.
    k = len(cues) // 2
    first, *rest = cues[k].text.split(" ")
    fixed = " ".join([first.upper(), *rest])  # the same length: no rule's verdict changes
    texts = [fixed if i == k else c.text for i, c in enumerate(cues)]
    edited = [{"start": c.start, "end": c.end, "text": t} for c, t in zip(cues, texts, strict=True)]
    resp = await client.put(url, json={"cues": edited, "version": 0})
    saved = await resp.json()
    assert resp.status == 200, saved
    assert saved["version"] == 1 and saved["cues"] == len(cues)
    assert saved["warnings"] == doc["warnings"]
    after = parse_srt(await (await client.get(f"{url}?format=srt")).text())
    assert [(c.start, c.end) for c in after] == [(round(c.start, 3), round(c.end, 3)) for c in cues]
    assert [c.text for c in after] == texts
    check_invariants(after, rules)
    again = await (await client.get(f"{url}?format=json")).json()
    assert again["edited"] is True and again["version"] == 1 and cues_of(again)[k].text == fixed

    # A second editor still on version 0 is told, and nothing of the first is lost.
    late = await client.put(url, json={"cues": [{"start": 0, "end": 1, "text": "theirs"}], "version": 0})
    error = (await late.json())["error"]
    assert late.status == 409 and error["code"] == "version_conflict" and error["field"] == "version"
    assert "now version 1" in error["message"]
    assert parse_srt(await (await client.get(f"{url}?format=srt")).text()) == after

    # Rules broken by the user are warnings, not refusals.
    long_line = [{"start": 0.0, "end": 5.0, "text": "x " * 40}, *edited[1:]]
    resp = await client.put(url, json={"cues": long_line, "version": 1})
    body = await resp.json()
    assert resp.status == 200 and body["version"] == 2
    assert {"index": 0, "code": "line_too_long", "message": "a line of 79 characters, at most 42"} in body[
        "warnings"
    ]
    bad = await client.put(url, json={"cues": edited, "version": "two"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "version"

    # Revert: a stale version is refused; the current one brings back the machine's file.
    stale = await client.delete(f"{url}?version=1")
    assert stale.status == 409
    reverted = await (await client.delete(f"{url}?version=2")).json()
    assert reverted == {"job_id": job["job_id"], "edited": False, "version": 3}
    assert await (await client.get(f"{url}?format=srt")).text() == machine_srt

    # Reflow: two cues' text as one run is re-split by the builder within their span.
    joined = [{"start": cues[0].start, "end": cues[1].end, "text": " ".join(c.text for c in cues[:2])}]
    resp = await client.post(f"/api/jobs/{job['job_id']}/reflow", json={"cues": joined})
    out = cues_of(await resp.json())
    assert resp.status == 200
    check_invariants(out, rules)
    assert " ".join(c.text for c in out).split() == " ".join(c.text for c in cues[:2]).split()
    assert out[0].start >= cues[0].start and out[-1].end <= cues[1].end


@pytest.mark.slow
async def test_saved_speakers_come_back_in_the_document_and_the_downloads(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client()
    job = await upload(client, speech.path, {"language": "en"})
    url = f"/api/jobs/{job['job_id']}/subtitles"
    await (await open_stream(client, job["job_id"])).until(is_complete, wait=180)
    doc = await (await client.get(f"{url}?format=json")).json()
    cues = cues_of(doc)
    assert len(cues) >= 3

    # The user named the speakers, and one cue is a dialogue: both lines' speakers are kept.
    dialogue = "- " + cues[1].text.replace("\n", " ") + "\n- Neither did I."
    mine = [
        {"start": cues[0].start, "end": cues[0].end, "text": cues[0].text, "speaker": "Ana"},
        {"start": cues[1].start, "end": cues[1].end, "text": dialogue, "speakers": ["Ana", "Ben Lee"]},
        *({"start": c.start, "end": c.end, "text": c.text, "speaker": "Ben Lee"} for c in cues[2:]),
    ]
    resp = await client.put(url, json={"cues": mine, "version": doc["version"]})
    assert resp.status == 200, await resp.text()
    again = await (await client.get(f"{url}?format=json")).json()
    assert [(c.get("speaker"), c.get("speakers")) for c in again["cues"]] == [
        ("Ana", None),
        (None, ["Ana", "Ben Lee"]),
        *[("Ben Lee", None)] * (len(cues) - 2),
    ]
    vtt = await (await client.get(f"{url}?format=vtt")).text()
    assert f"<v Ana>{cues[0].text.split(chr(10))[0]}" in vtt
    assert "<v Ben Lee>- Neither did I." in vtt and vtt.count("<v Ben Lee>") == len(cues) - 1
    srt = parse_srt(await (await client.get(f"{url}?format=srt")).text())
    assert srt[1].text == dialogue and srt[0].text == cues[0].text

    # Reflow of the saved cues: every word keeps the speaker it had.
    resp = await client.post(f"/api/jobs/{job['job_id']}/reflow", json={"cues": again["cues"][:3]})
    assert resp.status == 200
    out = cues_from_json((await resp.json())["cues"])
    assert said_by(out) == said_by(cues_from_json(again["cues"][:3]))
