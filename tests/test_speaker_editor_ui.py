"""Speakers in the cue editor, in a real browser (Debian's chromium via Playwright) against a
real `vsrt serve`: a completed job whose saved cues carry speakers (PUT through the API, so no
diarization model is needed) shows a speaker chip per cue; renaming a speaker for the whole job
is one undo step and reaches the VTT download as `<v Ana>`; a cue is reassigned by keyboard and
by a tap, and the saves keep it; the machine's cues (no speakers) show no chips."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.media import Speech
from tests.test_editor_ui import saved, state_is
from tests.test_ui import SERVER_ENV, data_dir  # noqa: F401 - fixtures
from tests.ui_helpers import CHROMIUM, PHONE, browser, get_json, running_server, screenshot, wait_for_js

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.block_limit(5.0),  # this loop only drives Playwright (see test_ui.py)
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]
playwright = pytest.importorskip("playwright")

# Each row's speaker chip, in list order: its text, or None where no chip is shown.
CHIPS = """() => {
  const num = (r) => Number(r.querySelector('.cue-num').textContent);
  return [...document.querySelectorAll('#cues .cue-row')].sort((a, b) => num(a) - num(b)).map((r) => {
    const chip = r.querySelector('.cue-spk');
    return chip && !chip.hidden && chip.offsetParent !== null ? chip.textContent : null;
  });
}"""

# The same with each row's number: [[number, chip]], for a list scrolled anywhere.
NUMBERED = """() => [...document.querySelectorAll('#cues .cue-row')].map((r) => {
  const chip = r.querySelector('.cue-spk');
  return [Number(r.querySelector('.cue-num').textContent), chip.hidden ? null : chip.textContent];
})"""


async def chips_are(page: Any, want: Sequence[str | None]) -> None:
    """The rows' chips are these (waits for the view to follow the model)."""
    try:
        await wait_for_js(
            page, f"JSON.stringify(({CHIPS})()) === {json.dumps(json.dumps(list(want)))}", ms=10_000
        )
    except TimeoutError:
        assert await page.evaluate(CHIPS) == list(want)


def chip(cue: dict[str, Any]) -> str:
    return "/".join(cue["speakers"]) if "speakers" in cue else str(cue["speaker"])


async def completed_job(url: str, media: Path) -> str:
    """A real job, run to completion by the real runner."""
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("settings", json.dumps({"language": "en"}), content_type="application/json")
        form.add_field("file", await asyncio.to_thread(media.read_bytes), filename="clip.mp4")
        async with http.post(f"{url}api/jobs", data=form) as resp:
            assert resp.status == 201, await resp.text()
            job = str((await resp.json())["job_id"])
    async with asyncio.timeout(180):
        while (status := (await get_json(f"{url}api/status/{job}"))["status"]) != "completed":
            assert status in ("queued", "processing"), status
            await asyncio.sleep(0.3)
    return job


async def put_cues(url: str, job: str, cues: list[dict[str, Any]]) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"{url}api/jobs/{job}/subtitles", json={"cues": cues}) as resp:
            assert resp.status == 200, await resp.text()


async def download_vtt(page: Any) -> str:
    async with page.expect_download() as info:
        await page.click("#dl-vtt")
    return await asyncio.to_thread(Path(await (await info.value).path()).read_text, encoding="utf-8")


async def test_speakers_shown_renamed_in_one_step_reassigned_and_saved(
    speech: Speech,
    data_dir: Path,  # noqa: F811 - the fixture
) -> None:
    async with running_server(data_dir, env=SERVER_ENV) as server, browser() as ctx:
        job = await completed_job(server.url, speech.path)
        url = f"{server.url}api/jobs/{job}/subtitles"
        machine = (await get_json(f"{url}?format=json"))["cues"]
        assert len(machine) >= 4, machine
        # Two speakers taking turns, and one dialogue cue (two lines, a dash each).
        cues: list[dict[str, Any]] = [
            {"start": c["start"], "end": c["end"], "text": c["text"], "speaker": f"SPEAKER_0{i % 2}"}
            for i, c in enumerate(machine)
        ]
        one_line = cues[2]["text"].replace("\n", " ")
        cues[2] = {
            **cues[2],
            "text": f"- {one_line}\n- Neither did I.",
            "speakers": ["SPEAKER_00", "SPEAKER_01"],
        }
        del cues[2]["speaker"]
        await put_cues(server.url, job, cues)

        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))  # the revert's confirm
        await page.goto(f"{server.url}#job={job}")
        await wait_for_js(page, f"window.vsrt.cues().length === {len(cues)}")

        # Each row shows its speaker; the dialogue cue shows both.
        shown = [chip(c) for c in cues]
        assert shown[2] == "SPEAKER_00/SPEAKER_01"
        await chips_are(page, shown)
        await page.locator("#cues").scroll_into_view_if_needed()
        await screenshot(page, "speakers-desktop")

        # Rename SPEAKER_00 to "Ana" for the whole job (the action bar's button, a click).
        await page.click("#rename-btn")
        await page.wait_for_selector("#rename-dialog[open]")
        await page.fill('#rename-list input[data-from="SPEAKER_00"]', "Ana")
        await screenshot(page, "speakers-rename")
        await page.click("#rename-ok")
        renamed = [s.replace("SPEAKER_00", "Ana") for s in shown]
        await chips_are(page, renamed)
        model = "window.vsrt.cues().map((c) => c.speakers ? c.speakers.join('/') : c.speaker)"
        assert await page.evaluate(model) == renamed
        await state_is(page, "Unsaved edits")

        # Undo takes the whole rename back in one step; redo brings it again.
        await page.locator('#cues .cue-row[data-index="0"] .cue-text').focus()
        await page.keyboard.press("Control+Z")
        await chips_are(page, shown)
        await page.keyboard.press("Control+Y")
        await chips_are(page, renamed)

        # Saved: the VTT download names Ana in voice spans, the dialogue cue per line.
        await saved(page)
        vtt = await download_vtt(page)
        assert "SPEAKER_00" not in vtt and "<v Ana>" in vtt, vtt
        assert "<v Ana>- " in vtt and "<v SPEAKER_01>- Neither did I." in vtt, vtt

        # Reassign by keyboard: Alt+P on cue 2, a new name typed, Enter.
        await page.locator('#cues .cue-row[data-index="1"] .cue-text').focus()
        await page.keyboard.press("Alt+P")
        await page.wait_for_selector("#speaker-dialog[open]")
        assert await page.text_content("#speaker-h") == "Speaker of cue 2"
        await page.keyboard.type("Ben")
        await page.keyboard.press("Enter")
        await chips_are(page, [renamed[0], "Ben", *renamed[2:]])
        # ... and by its number key: cue 4 to the first speaker of the list (Ana).
        await page.locator('#cues .cue-row[data-index="3"] .cue-text').focus()
        await page.keyboard.press("Alt+P")
        await page.wait_for_selector("#speaker-dialog[open]")
        picks = await page.locator("#speaker-picks .spk-name").all_text_contents()
        assert picks[0] == "Ana" and "Ben" in picks, picks
        await page.keyboard.press("1")
        reassigned = [renamed[0], "Ben", renamed[2], "Ana", *renamed[4:]]
        await chips_are(page, reassigned)

        # By touch or click: a tap on cue 5's chip, then on a speaker.
        await page.locator('#cues .cue-row[data-index="4"] .cue-spk').click()
        await page.wait_for_selector("#speaker-dialog[open]")
        await page.locator("#speaker-picks .spk-pick", has_text="Ben").click()
        reassigned[4] = "Ben"
        await chips_are(page, reassigned)

        # Saved with the keyboard: the server's cues carry the new speakers.
        await page.keyboard.press("Control+s")
        await state_is(page, "Edits saved")
        held = (await get_json(f"{url}?format=json"))["cues"]
        assert [chip(c) for c in held] == reassigned
        assert [c["text"] for c in held] == [c["text"] for c in cues]  # no text was touched

        # The sheet lists the speaker keys.
        await page.locator("#job-title").click()
        await page.keyboard.press("?")
        await page.wait_for_selector("#keys-dialog[open]")
        sheet = await page.text_content("#keys-list") or ""
        assert "Alt+P" in sheet and "Alt+Shift+P" in sheet and "Rename speakers" in sheet, sheet
        await page.keyboard.press("Escape")

        # On a phone the chips are there too (and tappable in their own line).
        await page.set_viewport_size(PHONE)
        await page.reload()
        await wait_for_js(page, f"window.vsrt.cues().length === {len(cues)}")
        await wait_for_js(page, "document.querySelector('#cues .cue-row .cue-spk:not([hidden])') !== null")
        on_phone = await page.evaluate(NUMBERED)
        assert on_phone and all(c == reassigned[n - 1] for n, c in on_phone), on_phone
        await page.locator("#cues").scroll_into_view_if_needed()
        await screenshot(page, "speakers-phone")

        # Back to the machine's cues, which have no speakers: no chips, no speaker buttons.
        await page.set_viewport_size({"width": 1280, "height": 800})
        await page.click("#revert")
        await wait_for_js(page, "!window.vsrt.model.edited")
        await wait_for_js(page, f"({CHIPS})().every((c) => c === null)")
        assert await page.is_hidden("#rename-btn")
        assert not errors, errors
