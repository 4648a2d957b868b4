"""The player and the waveform in a real browser (Debian's chromium via Playwright) against a
real `vsrt serve`: the job's media played with the cues over it, the playhead driving the
active cue, seeks from clicks, keys at the playhead, region edges dragged with the mouse, the
HEVC fallback to the audio copy, and the vendored wavesurfer.js checked against its pins.

The browser tests need the media routes (`/api/jobs/{id}/media`, `/media/info`, `/peaks`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.media import Speech
from tests.ui_helpers import CHROMIUM, PHONE, ROOT, browser, running_server, screenshot, wait_for_js
from tests.vendored import check_vendored
from vsrt_service.web.security import CONTENT_SECURITY_POLICY

pytestmark = [pytest.mark.timeout(300), pytest.mark.block_limit(5.0)]  # only drives Playwright (test_ui.py)

STATIC = ROOT / "vsrt_service" / "web" / "static"
VENDOR = STATIC / "vendor" / "wavesurfer"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")

# --- the vendored library ------------------------------------------------------------------------


def wavesurfer_style_hash(source: str, height: int) -> str:
    """The CSP hash of the <style> wavesurfer.js writes into its shadow root at `height` px:
    the template literal's text, with its one interpolation (the height) filled in."""
    start = source.index("<style${")
    start = source.index(">", start) + 1
    text = source[start : source.index("</style>", start)].replace("\\n", "\n")
    text, count = re.subn(r"\$\{this\.getHeight\([^}]*\)\}", str(height), text)
    assert count == 1 and "${" not in text, "the style template changed: recompute the CSP hash"
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def test_vendored_wavesurfer_matches_its_pins_checksums_and_the_csp() -> None:
    check_vendored(VENDOR, "wavesurfer.js", 7)

    # The one inline style the UI allows is wavesurfer's, at the height waveform.js uses.
    height = re.search(r"export const WAVE_HEIGHT = (\d+);", (STATIC / "waveform.js").read_text())
    assert height
    expected = wavesurfer_style_hash((VENDOR / "wavesurfer.esm.js").read_text(), int(height.group(1)))
    style_src = next(d for d in CONTENT_SECURITY_POLICY.split("; ") if d.startswith("style-src"))
    assert style_src.split()[1:] == ["'self'", expected]
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY


# --- in the browser ------------------------------------------------------------------------------

#: The pure functions of waveform.js, in the page: peaks decoding and snapping.
PURE = """async () => {
  const w = await import('./static/waveform.js');
  const buf = new ArrayBuffer(20 + 6);
  const v = new DataView(buf);
  v.setInt32(0, 1, true); v.setUint32(4, 1, true); v.setInt32(8, 16000, true);
  v.setInt32(12, 320, true); v.setUint32(16, 3, true);
  new Int8Array(buf, 20).set([-64, 32, -8, 127, 0, 0]);
  const d = w.decodePeaks(buf);
  return {
    peaks: [...d.peaks], duration: d.duration,
    near: w.snapTime(1.04, [0.5, 1.0, 2.0]), far: w.snapTime(1.2, [0.5, 1.0, 2.0]),
    none: w.snapTime(3, []),
  };
}"""


async def upload(base: str, media: Path, cues: list[dict[str, Any]] | None = None) -> str:
    """Upload without starting (`start=false`); with `cues`, save them as the job's edits."""
    async with aiohttp.ClientSession() as http:
        form = aiohttp.FormData()
        form.add_field("file", await asyncio.to_thread(media.read_bytes), filename=media.name)
        async with http.post(f"{base}api/jobs?start=false", data=form) as resp:
            assert resp.status == 201, await resp.text()
            job = str((await resp.json())["job_id"])
        if cues is not None:
            async with http.put(f"{base}api/jobs/{job}/subtitles", json={"cues": cues}) as resp:
                assert resp.status == 200, await resp.text()
    return job


async def open_job(page: Any, base: str, job: str, cues: int) -> None:
    await page.goto(f"{base}#job={job}")
    await wait_for_js(page, f"window.vsrt.model.cues.length === {cues}")
    await wait_for_js(page, "!!window.vsrt.player.media && window.vsrt.player.media.readyState >= 1")


async def seek(page: Any, t: float) -> None:
    await page.evaluate(f"""() => new Promise((r) => {{
      const m = window.vsrt.player.media;
      m.addEventListener('seeked', () => r(), {{ once: true }});
      window.vsrt.player.seek({t});
    }})""")


REGION = "#media-pane .wave [part~='{id}']"


@needs_chromium
async def test_play_follow_click_seek_keys_and_drag(speech: Speech, tmp_path: Path) -> None:
    cues: list[dict[str, Any]] = [{"start": s.start, "end": s.end, "text": s.text} for s in speech.sentences]
    async with running_server(tmp_path / "data") as server, browser() as ctx:
        job = await upload(server.url, speech.path, cues)
        page = await ctx.new_page()
        await open_job(page, server.url, job, len(cues))
        assert await page.evaluate("window.vsrt.player.mode") == "video"
        assert await page.evaluate("window.vsrt.player.media.tagName") == "VIDEO"
        pure = await page.evaluate(PURE)
        assert pure["peaks"] == [0.5, 127 / 128, 0.0] and pure["duration"] == 0.06
        assert (pure["near"], pure["far"], pure["none"]) == (1.0, 1.2, 3)

        # The cues are on the video's text track, showing.
        track = await page.evaluate("""() => {
          const t = window.vsrt.player.media.textTracks[0];
          return { mode: t.mode, cues: [...t.cues].map((c) => [c.startTime, c.endTime, c.text]) };
        }""")
        assert track["mode"] == "showing"
        assert [c[2] for c in track["cues"]] == [c["text"] for c in cues]

        # Play (muted): the playhead advances and the active cue follows it.
        await page.evaluate("() => { const m = window.vsrt.player.media; m.muted = true; return m.play(); }")
        second = speech.sentences[1]
        await wait_for_js(page, f"window.vsrt.player.media.currentTime > {second.start + 0.2}", ms=20_000)
        state = await page.evaluate("""() => {
          const m = window.vsrt.model, t = window.vsrt.player.media.currentTime;
          const c = m.get(m.active);
          return { t, start: c && c.start, end: c && c.end };
        }""")
        assert state["start"] is not None and state["start"] <= state["t"] + 0.3, state
        await page.evaluate("window.vsrt.player.media.pause()")
        active = await page.evaluate("window.vsrt.model.active")
        await page.locator(f"{REGION.format(id=active)}.active").wait_for()

        # A view's seek request (the model's "seek" event) moves the playhead.
        await page.evaluate("window.vsrt.model.seek(1.25)")
        await wait_for_js(page, "Math.abs(window.vsrt.player.media.currentTime - 1.25) < 0.05")

        # Clicking cue 5's region (a real mouse click) makes it active and seeks to its start.
        await page.evaluate("window.vsrt.waveform.zoom(40)")
        fifth = await page.evaluate("window.vsrt.model.cues[4].id")
        await seek(page, cues[4]["start"] - 0.5)
        region = page.locator(REGION.format(id=fifth)).first
        await region.wait_for()
        box = await region.bounding_box()
        assert box
        await page.mouse.click(box["x"] + box["width"] / 2, box["y"] + 10)
        await wait_for_js(page, f"window.vsrt.model.active === {fifth!r}")
        await wait_for_js(page, f"Math.abs(window.vsrt.player.media.currentTime - {cues[4]['start']}) < 0.05")

        # The list's click (model.select with an active cue) seeks the same way.
        third = await page.evaluate("window.vsrt.model.cues[2].id")
        await page.evaluate(f"window.vsrt.model.select([{third!r}], {{ active: {third!r} }})")
        await wait_for_js(page, f"Math.abs(window.vsrt.player.media.currentTime - {cues[2]['start']}) < 0.05")

        # "Set start" (Alt+I) at the playhead: the active cue starts there.
        await seek(page, cues[2]["start"] + 0.3)
        await page.locator("body").click(position={"x": 5, "y": 5})  # focus the page, not a field
        playhead = await page.evaluate("window.vsrt.player.media.currentTime")
        await page.keyboard.press("Alt+KeyI")
        start = await page.evaluate(f"window.vsrt.model.get({third!r}).start")
        assert abs(start - playhead) < 0.05, (start, playhead)
        assert await page.evaluate(f"window.vsrt.model.get({third!r}).modified")

        # Drag the end edge of cue 5's region right by 40 px (no snap target there).
        end_before = await page.evaluate(f"window.vsrt.model.get({fifth!r}).end")
        handle = page.locator(f"{REGION.format(id=fifth)} [part~='region-handle-right']").first
        hb = await handle.bounding_box()
        assert hb
        x, y = hb["x"] + hb["width"] / 2, hb["y"] + hb["height"] / 2
        await page.mouse.move(x, y)
        await page.mouse.down()
        for step in range(1, 9):
            await page.mouse.move(x + 5 * step, y)
        await page.mouse.up()
        await wait_for_js(page, f"window.vsrt.model.get({fifth!r}).end > {end_before + 0.3}")
        end_after = await page.evaluate(f"window.vsrt.model.get({fifth!r}).end")
        overlay = await page.evaluate(
            f"window.vsrt.player.media.textTracks[0].cues.getCueById({fifth!r}).endTime"
        )
        assert abs(overlay - end_after) < 1e-3, (overlay, end_after)
        # Undo brings the region back.
        await page.evaluate("window.vsrt.model.undo()")
        await wait_for_js(page, f"window.vsrt.model.get({fifth!r}).end === {end_before}")

        await screenshot(page, "player-desktop")
        await page.set_viewport_size(PHONE)
        await page.reload()
        await open_job(page, server.url, job, len(cues))
        assert await page.locator("#media-pane .wave-toggle").get_attribute("aria-expanded") == "false"
        await screenshot(page, "player-phone")


def make_hevc_speech(source: Path, out: Path) -> Path:
    """`source`'s sound with its picture re-encoded as HEVC (libx265) in Matroska: a file
    Chromium cannot show."""
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", source,
         "-c:v", "libx265", "-preset", "ultrafast", "-x265-params", "log-level=error",
         "-c:a", "copy", out],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return out


@needs_chromium
async def test_hevc_mkv_plays_the_audio_copy_with_captions_and_seeks(speech: Speech, tmp_path: Path) -> None:
    mkv = await asyncio.to_thread(make_hevc_speech, speech.path, tmp_path / "hevc.mkv")
    cues: list[dict[str, Any]] = [{"start": s.start, "end": s.end, "text": s.text} for s in speech.sentences]
    async with running_server(tmp_path / "data") as server, browser() as ctx:
        job = await upload(server.url, mkv, cues)
        page = await ctx.new_page()
        await page.goto(f"{server.url}#job={job}")
        await wait_for_js(page, f"window.vsrt.model.cues.length === {len(cues)}")
        await wait_for_js(page, "window.vsrt.player.mode === 'audio'", ms=60_000)
        await wait_for_js(page, "window.vsrt.player.media.readyState >= 1", ms=60_000)
        assert await page.evaluate("window.vsrt.player.media.tagName") == "AUDIO"
        assert "audio copy" in (await page.text_content("#media-pane .media-note") or "")
        assert "HEVC" in (await page.text_content("#media-pane .media-note") or "")
        target = cues[3]["start"] + 0.2
        await seek(page, target)
        assert abs(await page.evaluate("window.vsrt.player.media.currentTime") - target) < 0.1
        await wait_for_js(page, "!!document.querySelector('#media-pane .media-caption')")
        assert await page.text_content("#media-pane .media-caption") == cues[3]["text"]
        await screenshot(page, "player-audio-copy")


@needs_chromium
@pytest.mark.serial
async def test_two_thousand_cues_stay_cheap(speech: Speech, tmp_path: Path) -> None:
    """A 2,000-cue document (every 1/40 of the clip): loading it into the player and the
    waveform, and one edit, take few milliseconds; regions exist only near the view."""
    n = 2000
    step = speech.duration / n
    cues = [{"start": i * step, "end": i * step + step * 0.8, "text": f"cue {i + 1}"} for i in range(n)]
    async with running_server(tmp_path / "data") as server, browser() as ctx:
        job = await upload(server.url, speech.path, cues)
        page = await ctx.new_page()
        await open_job(page, server.url, job, n)
        await wait_for_js(page, "!!window.vsrt.waveform.ws && window.vsrt.waveform.drawn.size > 0")
        await page.evaluate(f"window.vsrt.waveform.zoom({400})")
        timing = await page.evaluate("""async () => {
          const { makeCue } = await import('./static/cues.js');
          const m = window.vsrt.model;
          const fresh = m.cues.map((c) => makeCue(c.start, c.end, c.text + '.'));
          let t = performance.now();
          m.load(fresh);
          const load = performance.now() - t;
          const id = m.cues[1000].id;
          t = performance.now();
          for (let i = 0; i < 50; i++) m.setText(id, 'typed ' + i);
          const edit = (performance.now() - t) / 50;
          return { load, edit, regions: window.vsrt.waveform.drawn.size,
                   track: window.vsrt.player.media.textTracks[0].cues.length };
        }""")
        print(
            f"2000 cues: load {timing['load']:.1f} ms, edit {timing['edit']:.2f} ms, "
            f"regions {timing['regions']}"
        )
        assert timing["track"] == n
        assert timing["regions"] < n / 2, timing
        assert timing["load"] < 500 and timing["edit"] < 16, timing
