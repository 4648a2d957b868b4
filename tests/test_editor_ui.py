"""The cue editor in a real browser (Debian's chromium via Playwright) against a real
`vsrt serve`: a completed job's editor shows exactly its SRT's cues, edits are saved as cues,
split/merge/undo/redo round-trip through a download, drafts survive a reload, two tabs are told
of each other's saves, and 2,000 cues open and take keystrokes fast.

Each real job costs ~30 s, so one job carries most checks; a job created paused with saved cues
(no runner) carries the rest."""

from __future__ import annotations

import asyncio
import json
import urllib.request
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
    pytest.mark.block_limit(5.0),  # this loop only drives Playwright (see test_ui.py)
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


@pytest.mark.serial
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
            """async ([job, count]) => {
              const t = performance.now();
              window.vsrt.open(job);
              while (!(window.vsrt.cues().length === count && document.querySelector('#cues .cue-row'))) {
                await new Promise((r) => setTimeout(r, 5));
              }
              return performance.now() - t;
            }""",
            [job, count],
        )
        rows = page.locator("#cues .cue-row")
        assert 0 < await rows.count() <= 60
        assert opened < 1000, f"2,000 cues took {opened:.0f} ms to open"

        # Typing: each keystroke is one model change and one row rebound, well under a frame.
        # Once the player has loaded (its first `active` cue moves no rows any more), focus and
        # type in one go, so nothing re-renders the list between the focus and the keys.
        await wait_for_js(page, "!!window.vsrt.player.media && window.vsrt.player.media.readyState >= 1")
        row = '#cues .cue-row[data-index="3"] .cue-text'
        await page.evaluate(f"document.querySelector({row!r}).focus()")  # selects it; the player seeks
        await page.wait_for_timeout(300)
        per_key = await page.evaluate("""() => {
          const ta = document.activeElement;
          if (!ta.matches('#cues .cue-row[data-index="3"] .cue-text')) return { focus: 'lost' };
          const rows = document.querySelectorAll('#cues .cue-row');
          const seen = new Set();
          const obs = new MutationObserver((ms) => ms.forEach((m) => seen.add(m.target.closest('.cue-row'))));
          const what = { subtree: true, childList: true, characterData: true, attributes: true };
          rows.forEach((r) => obs.observe(r, what));
          const times = [];
          for (const ch of ' typed fast') {
            const t = performance.now();
            ta.value += ch;
            ta.dispatchEvent(new InputEvent('input', { bubbles: true, data: ch, inputType: 'insertText' }));
            times.push(performance.now() - t);
          }
          // The row's indicators follow at most every 150 ms: count the rows that changed once
          // they have (mutation records arrive in a microtask after each change).
          const done = () => {
            obs.disconnect();
            return { times, rows: seen.size };
          };
          return new Promise((r) => setTimeout(r, 400)).then(done);
        }""")
        assert max(per_key["times"]) < 16, per_key
        assert per_key["rows"] == 1, per_key  # only the typed-in row changed in the DOM
        assert (await page.evaluate("window.vsrt.cues()[3].text")) == "cue number 4 typed fast"
        # The counters follow at most every 150 ms.
        await wait_for_js(page, "document.querySelector('#line-count').textContent === '(2000)'")
        print(f"2,000 cues: opened in {opened:.0f} ms; keystroke max {max(per_key['times']):.2f} ms")
        assert not errors, errors


def clock(ms: int) -> str:
    """The editor's time field for whole milliseconds (store.js formatTime)."""
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, frac = divmod(rest, 1000)
    return f"{h}:{m:02d}:{s:02d}.{frac:03d}" if h else f"{m:02d}:{s:02d}.{frac:03d}"


# The rows on screen, in list order: (start field, end field, text), read from the DOM.
SHOWN = """() => {
  const num = (r) => Number(r.querySelector('.cue-num').textContent);
  const field = (r, c) => r.querySelector(c).value;
  return [...document.querySelectorAll('#cues .cue-row')].sort((a, b) => num(a) - num(b))
    .map((r) => [field(r, '.cue-start'), field(r, '.cue-end'), field(r, '.cue-text')]);
}"""


async def shows_exactly(page: Any, cues: list[tuple[int, int, str]]) -> None:
    """The editor's rows are these cues, fields as shown (waits for the load to land)."""
    want = [[clock(a), clock(b), text] for a, b, text in cues]
    try:
        await wait_for_js(page, f"JSON.stringify(({SHOWN})()) === {json_str(want)}", ms=15_000)
    except TimeoutError:
        assert await page.evaluate(SHOWN) == want


def json_str(value: Any) -> str:
    return json.dumps(json.dumps(value, ensure_ascii=False))


async def srt_of(url: str, job: str) -> list[tuple[int, int, str]]:
    status, body = await asyncio.to_thread(_get_text, f"{url}api/jobs/{job}/subtitles?format=srt")
    assert status == 200, body
    return [(round(c.start * 1000), round(c.end * 1000), c.text) for c in parse_srt(body)]


def _get_text(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.read().decode("utf-8")


async def state_is(page: Any, text: str) -> None:
    shown = "document.querySelector('#save-state').textContent"
    await wait_for_js(page, f"{shown} === {json.dumps(text)}", ms=5000)


async def saved(page: Any) -> None:
    await page.click("#save")
    await wait_for_js(page, "document.querySelector('#save-state').textContent === 'Edits saved'")


async def test_completed_job_edits_round_trip_drafts_and_conflicts(
    speech12: Speech,  # noqa: F811 - the fixture
    data_dir: Path,  # noqa: F811
) -> None:
    async with running_server(data_dir, env=SERVER_ENV) as server, browser() as ctx:
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Confirmations (leave with unsaved edits, revert) are answered yes.
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.goto(server.url)
        await page.set_input_files("#file", str(speech12.path))
        await page.select_option("#language", "en")
        await page.click("#submit")
        await page.wait_for_selector("#job-view:not([hidden])")
        await wait_status(page, "completed")
        job = str(await page.evaluate("new URLSearchParams(location.hash.slice(1)).get('job')"))

        # (a) The regression: the editor shows exactly the SRT's cues, watched live and reopened.
        machine = await srt_of(server.url, job)
        assert len(machine) >= 6, machine
        await shows_exactly(page, machine)
        await page.reload()
        await shows_exactly(page, machine)
        await screenshot(page, "editor-desktop")

        # One word changed and saved: the SRT has the same cues with that word changed.
        word = machine[1][2].split()[0]
        changed = machine[1][2].replace(word, "Changed", 1)
        await page.locator('#cues .cue-row[data-index="1"] .cue-text').fill(changed)
        await saved(page)
        after = await srt_of(server.url, job)
        assert after == [*machine[:1], (*machine[1][:2], changed), *machine[2:]]
        doc = await get_json(f"{server.url}api/jobs/{job}/subtitles?format=json")
        check_invariants([Cue(a / 1000, b / 1000, t) for a, b, t in after], CueSettings(**doc["rules"]))

        # (b) Split at the caret, merge, undo, redo by keys; saved, reloaded, downloaded: the
        # SRT is the page's cues.
        n = len(machine)
        text = page.locator('#cues .cue-row[data-index="2"] .cue-text')
        await text.focus()
        caret = machine[2][2].index(" ", len(machine[2][2]) // 2)
        await text.evaluate(f"t => t.setSelectionRange({caret}, {caret})")
        await page.keyboard.press("Control+Enter")
        await wait_for_js(page, f"window.vsrt.cues().length === {n + 1}")
        split = await page_cues(page)
        assert split[2][2] == machine[2][2][:caret].strip() and split[3][2] == machine[2][2][caret:].strip()
        assert split[2][0] == machine[2][0] and split[3][1] == machine[2][1] and split[2][1] == split[3][0]
        await page.locator('#cues .cue-row[data-index="4"] .cue-text').focus()
        await page.keyboard.press("Alt+M")  # cue 5 with cue 6
        await wait_for_js(page, f"window.vsrt.cues().length === {n}")
        merged = await page_cues(page)
        assert merged[4][:2] == (machine[3][0], machine[4][1])
        await page.keyboard.press("Control+Z")
        assert await page_cues(page) == split
        await page.keyboard.press("Control+Y")
        assert await page_cues(page) == merged
        await saved(page)
        # Undo and redo reach across the save (and back to what was saved).
        await page.keyboard.press("Control+Z")
        assert await page_cues(page) == split
        await state_is(page, "Unsaved edits")  # the head follows the model on the next frame
        await page.keyboard.press("Control+Y")
        assert await page_cues(page) == merged
        await state_is(page, "Edits saved")  # the head follows the model on the next frame
        await page.reload()
        await wait_for_js(page, f"window.vsrt.cues().length === {n}")
        assert await page_cues(page) == merged
        assert await download_srt(page) == merged

        # (c) Unsaved edits survive a reload: restored from the draft, with a notice.
        first = page.locator('#cues .cue-row[data-index="0"] .cue-text')
        await first.fill(merged[0][2] + " DRAFTED")
        await wait_for_js(page, f"(localStorage.getItem('vsrt.draft.{job}') || '').includes('DRAFTED')")
        await page.reload()
        await wait_for_js(page, "!document.querySelector('#draft-note').hidden")
        assert "Restored unsaved edits" in (await page.text_content("#draft-text") or "")
        assert (await page_cues(page))[0][2] == merged[0][2] + " DRAFTED"
        await state_is(page, "Unsaved edits")  # the head follows the model on the next frame
        await saved(page)
        assert await page.evaluate(f"localStorage.getItem('vsrt.draft.{job}')") is None

        # (d) Two tabs: A saves, B's save is told and overwrites on request.
        tab_b = await ctx.new_page()
        tab_b.on("pageerror", lambda e: errors.append(str(e)))
        await tab_b.goto(f"{server.url}#job={job}")
        await wait_for_js(tab_b, f"window.vsrt.cues().length === {n}")
        await page.locator('#cues .cue-row[data-index="1"] .cue-text').fill("FROM TAB A")
        await saved(page)
        await tab_b.locator('#cues .cue-row[data-index="2"] .cue-text').fill("FROM TAB B")
        await tab_b.click("#save")
        await tab_b.wait_for_selector("#conflict-dialog[open]")
        assert "Saved elsewhere" in (await tab_b.text_content("#conflict-h") or "")
        await tab_b.click("#conflict-mine")
        await wait_for_js(tab_b, "document.querySelector('#save-state').textContent === 'Edits saved'")
        held = await srt_of(server.url, job)
        assert held[2][2] == "FROM TAB B" and held[1][2] != "FROM TAB A"
        assert held == await page_cues(tab_b)

        # Revert to the machine subtitles (confirmed): the page and the SRT are the machine's.
        await tab_b.close()
        await page.reload()
        await wait_for_js(page, f"window.vsrt.cues().length === {n}")
        await page.click("#revert")
        await shows_exactly(page, machine)
        assert await srt_of(server.url, job) == machine
        await state_is(page, "")

        await page.set_viewport_size(PHONE)
        await page.reload()
        await wait_for_js(page, f"window.vsrt.cues().length === {n}")
        await screenshot(page, "editor-phone")
        assert not errors, errors


async def test_selection_nudge_shift_find_reflow_and_the_key_sheet(speech: Speech, tmp_path: Path) -> None:
    texts = ["cue one here", "cue two here", "cue three here", "cue four here", "cue five here", "cue six"]
    cues = [{"start": 1.0 + i * 3, "end": 3.0 + i * 3, "text": t} for i, t in enumerate(texts)]
    async with running_server(tmp_path / "data") as server, browser() as ctx:
        job = await paused_job(server.url, speech.path, cues)
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(f"{server.url}#job={job}")
        await wait_for_js(page, "window.vsrt.cues().length === 6")
        num = lambda i: page.locator(f'#cues .cue-row[data-index="{i}"] .cue-num')  # noqa: E731

        # Multi-select on the row numbers: click, Shift+click a range, Ctrl+click one out.
        await num(1).click()
        await num(3).click(modifiers=["Shift"])
        await num(2).click(modifiers=["Control"])
        selected = "window.vsrt.cues().filter((c) => window.vsrt.model.selected.has(c.id)).map((c) => c.text)"
        assert await page.evaluate(selected) == ["cue two here", "cue four here"]

        # Nudge the selection's starts and ends by keys (100 ms).
        await page.keyboard.press("Alt+]")
        await page.keyboard.press("Alt+,")
        got = await page_cues(page)
        assert got[1][:2] == (4100, 5900) and got[3][:2] == (10100, 11900) and got[2][:2] == (7000, 9000)

        # Shift all cues by -0.5 s from the dialog.
        await page.keyboard.press("Alt+T")
        await page.wait_for_selector("#shift-dialog[open]")
        await page.fill("#shift-amount", "-0.5")
        await page.check("#shift-all")
        await page.click("#shift-ok")
        assert [c[0] for c in await page_cues(page)] == [500, 3600, 6500, 9600, 12500, 15500]

        # Find and replace: all, case-insensitive.
        await page.keyboard.press("Alt+R")
        await page.fill("#find-text", "CUE")
        await page.fill("#replace-text", "line")
        await page.click("#find-all")
        assert await page.text_content("#find-status") == "replaced in 6 cues"
        assert [c[2] for c in await page_cues(page)][:2] == ["line one here", "line two here"]
        await page.click("#find-close")

        # Undo takes the replace back in one step; redo brings it again.
        await page.locator('#cues .cue-row[data-index="0"] .cue-text').focus()
        await page.keyboard.press("Control+Z")
        assert (await page_cues(page))[0][2] == "cue one here"
        await page.keyboard.press("Control+Shift+Z")
        assert (await page_cues(page))[0][2] == "line one here"

        # Reflow the selection with the server's cue builder: one step, the same words.
        await num(4).click()
        await num(5).click(modifiers=["Shift"])
        before = await page_cues(page)
        await page.keyboard.press("Alt+W")
        await wait_for_js(page, "window.vsrt.model.lastEdit && window.vsrt.model.lastEdit.label === 'reflow'")
        after = await page_cues(page)
        assert " ".join(c[2] for c in after[4:]).split() == "line five here line six".split()
        assert after[:4] == before[:4]

        # Insert after and delete, from the action bar (touch) and by key.
        await page.locator('#cues .cue-row[data-index="0"] .cue-text').focus()
        await page.click('#action-bar [data-act="insert"]')
        await wait_for_js(page, f"window.vsrt.cues().length === {len(after) + 1}")
        assert (await page_cues(page))[1][2] == ""
        await page.keyboard.press("Alt+Delete")
        await wait_for_js(page, f"window.vsrt.cues().length === {len(after)}")

        # The sheet lists every key, the player's too (registered through editor.js's hook).
        await page.evaluate(
            """async () => {
              const { addShortcut } = await import(new URL('static/editor.js', document.baseURI).href);
              const run = () => (window.__ran = true);
              addShortcut({ key: 'Alt+Q', label: 'Set start at the playhead', run });
            }"""
        )
        await page.locator("#cues").click(position={"x": 5, "y": 5})
        await page.keyboard.press("Alt+Q")
        assert await page.evaluate("window.__ran") is True
        await page.keyboard.press("Escape")
        await page.locator("#job-title").click()
        await page.keyboard.press("?")
        await page.wait_for_selector("#keys-dialog[open]")
        sheet = await page.text_content("#keys-list") or ""
        for key in (
            "Ctrl+Z",
            "Ctrl+Enter",
            "Alt+M",
            "Alt+T",
            "Alt+R",
            "Alt+W",
            "Alt+Q",
            "Set start at the playhead",
        ):
            assert key in sheet, (key, sheet)
        await page.keyboard.press("Escape")

        # Revert (confirmed) on a job with no machine cues yet: back to an empty, clean list.
        page.on("dialog", lambda d: asyncio.ensure_future(d.accept()))
        await page.click("#revert")
        await wait_for_js(page, "window.vsrt.cues().length === 0 && !window.vsrt.model.edited")
        assert await page.is_hidden("#job-error")
        assert (await get_json(f"{server.url}api/jobs/{job}"))["status"] == "paused"
        assert not errors, errors
