"""The cue editor in a real browser (Debian's chromium via Playwright) against a real
`vsrt serve`: a completed job's editor shows exactly its SRT's cues, edits are saved as cues,
split/merge/undo/redo round-trip through a download, drafts survive a reload, two tabs are told
of each other's saves, and 2,000 cues open and take keystrokes fast.

Each real job costs ~30 s, so one job carries most checks; a job created paused with saved cues
(no runner) carries the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.media import Speech
from tests.test_cues import check_invariants
from tests.test_ui import SERVER_ENV, data_dir, speech12, wait_status  # noqa: F401 - fixtures
from tests.ui_helpers import CHROMIUM, PHONE, browser, get_json, running_server, screenshot, wait_for_js
from vsrt_service.core.config import CueSettings
from vsrt_service.core.cues import Cue
from vsrt_service.core.formats import parse_srt

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.block_limit(2.0),  # this loop only drives Playwright (see test_ui.py)
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]
playwright = pytest.importorskip("playwright")


async def paused_job(url: str, media: Path, cues: list[dict[str, Any]]) -> str:
    """A job created paused (no runner) holding the user's saved cues."""
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", await asyncio.to_thread(media.read_bytes), filename="clip.mp4")
        async with http.post(f"{url}api/jobs?start=false", data=form) as resp:
            assert resp.status == 201, await resp.text()
            job = str((await resp.json())["job_id"])
        async with http.put(f"{url}api/jobs/{job}/subtitles", json={"cues": cues}) as resp:
            assert resp.status == 200, await resp.text()
    return job


async def page_cues(page: Any) -> list[tuple[int, int, str]]:
    cues = await page.evaluate("window.vsrt.cues()")
    return [(round(c["start"] * 1000), round(c["end"] * 1000), c["text"]) for c in cues]


async def download_srt(page: Any) -> list[tuple[int, int, str]]:
    async with page.expect_download() as info:
        await page.click("#dl-srt")
    text = await asyncio.to_thread(Path(await (await info.value).path()).read_text, encoding="utf-8")
    return [(round(c.start * 1000), round(c.end * 1000), c.text) for c in parse_srt(text)]


async def test_two_thousand_cues_open_fast_and_typing_touches_one_row(speech: Speech, tmp_path: Path) -> None:
    count = 2000
    cues = [{"start": i * 2.0, "end": i * 2.0 + 1.5, "text": f"cue number {i + 1}"} for i in range(count)]
    async with running_server(tmp_path / "data") as server, browser() as ctx:
        job = await paused_job(server.url, speech.path, cues)
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(server.url)
        await wait_for_js(page, "!!window.vsrt")
        # Open from the list's click to the rows on screen, timed in the page.
        opened = await page.evaluate(
            """async (job) => {
              const t = performance.now();
              window.vsrt.open(job);
              while (!(window.vsrt.cues().length === %d && document.querySelector('#cues .cue-row'))) {
                await new Promise((r) => setTimeout(r, 5));
              }
              return performance.now() - t;
            }"""
            % count,
            job,
        )
        rows = page.locator("#cues .cue-row")
        assert 0 < await rows.count() <= 60
        assert opened < 1000, f"2,000 cues took {opened:.0f} ms to open"

        # Typing: each keystroke is one model change and one row rebound, well under a frame.
        text = page.locator('#cues .cue-row[data-index="3"] .cue-text')
        await text.focus()
        per_key = await page.evaluate("""() => {
          const ta = document.activeElement;
          const rows = document.querySelectorAll('#cues .cue-row');
          const seen = new Set();
          const obs = new MutationObserver((ms) => ms.forEach((m) => seen.add(m.target.closest('.cue-row'))));
          rows.forEach((r) => obs.observe(r, { subtree: true, childList: true, characterData: true, attributes: true }));
          const times = [];
          for (const ch of ' typed fast') {
            const t = performance.now();
            ta.value += ch;
            ta.dispatchEvent(new InputEvent('input', { bubbles: true, data: ch, inputType: 'insertText' }));
            times.push(performance.now() - t);
          }
          return new Promise((r) => setTimeout(() => { obs.disconnect(); r({ times, rows: seen.size }); }, 50));
        }""")
        assert max(per_key["times"]) < 16, per_key
        assert per_key["rows"] == 1, per_key  # only the typed-in row changed in the DOM
        assert (await page.evaluate("window.vsrt.cues()[3].text")) == "cue number 4 typed fast"
        assert "1,999" not in (await page.text_content("#line-count") or "")
        print(f"2,000 cues: opened in {opened:.0f} ms; keystroke max {max(per_key['times']):.2f} ms")
        assert not errors, errors
