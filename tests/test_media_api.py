"""The player's routes over real HTTP with real ffmpeg: the job's media with Range, its
playback info, the audio proxy made once, waveform peaks, and media grants."""

from __future__ import annotations

import asyncio
import math
import struct
import time
import wave
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import ClientFactory
from tests.http_helpers import is_complete, open_stream, upload
from tests.media import Speech, _decode_pcm, _ffmpeg, ffprobe, make_hevc_mkv, make_tone_bursts
from vsrt_service.jobs.media import codec_string, playback_of
from vsrt_service.jobs.peaks import HEADER, wav_peaks
from vsrt_service.service import Service
from vsrt_service.web.keys import GRANTS, SERVICE, SETTINGS


def service(client: TestClient[Any, Any]) -> Service:
    return client.app[SERVICE]


async def job_dir(client: TestClient[Any, Any], job_id: str) -> Path:
    return service(client).ctx.job_dir(job_id)


async def input_of(client: TestClient[Any, Any], job_id: str) -> Path:
    svc = service(client)
    return svc.ctx.input_file(await svc.get(job_id))


def no_server_path(client: TestClient[Any, Any], text: str) -> None:
    data_dir = str(client.app[SETTINGS].data_dir)
    assert data_dir not in text and "/tmp" not in text, text


async def get_bytes(
    client: TestClient[Any, Any], url: str, status: int, **headers: str
) -> tuple[bytes, dict[str, str]]:
    resp = await client.get(url, headers=headers)
    body = await resp.read()
    assert resp.status == status, body[:300]
    return body, dict(resp.headers)


def pairs(data: bytes) -> list[tuple[int, int]]:
    body = data[HEADER.size :]
    values = struct.unpack(f"<{len(body)}b", body)
    return list(zip(values[::2], values[1::2], strict=True))


# --- pure: playback facts of ffprobe answers ------------------------------------------------


def test_codec_strings_for_can_play_type() -> None:
    assert codec_string({"codec_name": "h264", "profile": "High", "level": 31}) == "avc1.64001F"
    assert codec_string({"codec_name": "h264", "profile": "Constrained Baseline", "level": 30}) == (
        "avc1.42E01E"
    )
    assert codec_string({"codec_name": "hevc", "profile": "Main", "level": 93}) == "hvc1.1.6.L93.B0"
    assert codec_string({"codec_name": "vp9", "profile": "Profile 0"}) == "vp09.00.10.08"
    assert codec_string({"codec_name": "av1", "profile": "Main", "pix_fmt": "yuv420p"}) == "av01.0.05M.08"
    assert codec_string({"codec_name": "aac", "profile": "LC"}) == "mp4a.40.2"
    assert codec_string({"codec_name": "aac", "profile": "HE-AAC"}) == "mp4a.40.5"
    assert [codec_string({"codec_name": c}) for c in ("opus", "vorbis", "mp3", "flac")] == [
        "opus",
        "vorbis",
        "mp3",
        "flac",
    ]
    assert codec_string({"codec_name": "prores"}) is None


def test_playback_of_picks_the_type_and_the_jobs_track() -> None:
    def probed(fmt: str, *streams: dict[str, Any]) -> dict[str, Any]:
        return {"format": {"format_name": fmt, "duration": "12.5"}, "streams": list(streams)}

    h264 = {"codec_type": "video", "codec_name": "h264", "profile": "High", "level": 40, "width": 1280}
    aac = {"codec_type": "audio", "codec_name": "aac", "profile": "LC"}
    opus = {"codec_type": "audio", "codec_name": "opus"}
    vp9 = {"codec_type": "video", "codec_name": "vp9", "profile": "Profile 0", "width": 640, "height": 360}
    cover = {"codec_type": "video", "codec_name": "mjpeg", "disposition": {"attached_pic": 1}}
    mp3 = {"codec_type": "audio", "codec_name": "mp3"}

    mp4 = playback_of(probed("mov,mp4,m4a,3gp,3g2,mj2", h264, aac), None, "a.mp4")
    assert (mp4.mime, mp4.codecs, mp4.has_video, mp4.duration) == (
        "video/mp4",
        "avc1.640028, mp4a.40.2",
        True,
        12.5,
    )
    m4a = playback_of(probed("mov,mp4,m4a,3gp,3g2,mj2", aac), None, "a.m4a")
    assert (m4a.mime, m4a.has_video, m4a.width) == ("audio/mp4", False, None)
    webm = playback_of(probed("matroska,webm", vp9, opus), None, "a.webm")
    assert (webm.mime, webm.codecs, webm.width, webm.height) == (
        "video/webm",
        "vp09.00.10.08, opus",
        640,
        360,
    )
    mkv = playback_of(probed("matroska,webm", h264, aac, opus), 1, "a.mkv")
    assert (mkv.mime, mkv.codecs, mkv.audio_track) == ("video/x-matroska", "avc1.640028, opus", 1)
    song = playback_of(probed("mp3", mp3, cover), None, "a.mp3")  # cover art is no video
    assert (song.mime, song.codecs, song.has_video) == ("audio/mpeg", "mp3", False)
    odd = playback_of(
        probed("matroska,webm", {"codec_type": "video", "codec_name": "prores"}, aac), None, "x"
    )
    assert odd.codecs is None  # unknown: the player asks canPlayType with the type alone


# --- the original file with Range -----------------------------------------------------------


async def test_media_with_range_head_types_and_gone(
    make_client: ClientFactory, speech: Speech, tmp_path: Path
) -> None:
    client = await make_client()
    job = await upload(client, speech.path, start=False)
    url = f"/api/jobs/{job['job_id']}/media"
    whole = speech.path.read_bytes()
    size = len(whole)

    body, headers = await get_bytes(client, url, 200)
    assert body == whole
    assert headers["Content-Type"] == "video/mp4"
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Disposition"] == "inline"
    assert headers["Cache-Control"] == "private, max-age=3600"

    body, headers = await get_bytes(client, url, 206, Range="bytes=0-99")
    assert body == whole[:100] and headers["Content-Range"] == f"bytes 0-99/{size}"
    body, headers = await get_bytes(client, url, 206, Range="bytes=-500")
    assert body == whole[-500:] and headers["Content-Range"] == f"bytes {size - 500}-{size - 1}/{size}"
    body, _ = await get_bytes(client, url, 206, Range="bytes=1000-2999")
    assert body == whole[1000:3000]
    _, headers = await get_bytes(client, url, 416, Range=f"bytes={size + 10}-")
    assert headers["Content-Range"] == f"bytes */{size}"
    # If-Range: the same file (its date or its entity tag) gives the range, a file changed
    # since the client's copy (an older date, another tag, a weak tag) the whole file.
    head = await client.head(url)
    for same in (head.headers["Last-Modified"], head.headers["ETag"]):
        body, _ = await get_bytes(client, url, 206, Range="bytes=0-9", **{"If-Range": same})
        assert body == whole[:10]
    for stale in ("Mon, 01 Jan 2001 00:00:00 GMT", '"0-0"', f"W/{head.headers['ETag']}"):
        body, headers = await get_bytes(client, url, 200, Range="bytes=0-9", **{"If-Range": stale})
        assert body == whole and headers["Content-Type"] == "video/mp4"

    head = await client.head(url)
    assert head.status == 200 and int(head.headers["Content-Length"]) == size
    assert head.headers["Content-Type"] == "video/mp4" and await head.read() == b""

    info = await (await client.get(f"{url}/info")).json()
    assert info["mime"] == "video/mp4" and info["has_video"] is True
    assert info["codecs"].startswith("avc1.") and info["codecs"].endswith(", mp4a.40.2")
    assert (info["width"], info["height"], info["audio_track"]) == (160, 90, 0)
    assert abs(info["duration"] - speech.duration) < 0.5
    assert info["proxy"] == {"mime": "audio/mp4", "codecs": "mp4a.40.2", "ready": False}
    assert (await job_dir(client, job["job_id"]) / "media.json").is_file()
    assert service(client).media_runs["info"] == 1  # probed once, then read from media.json
    await client.get(f"{url}/info")
    await client.get(url)
    assert service(client).media_runs["info"] == 1

    bad = await client.get(f"{url}?variant=../../etc/passwd")
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "variant"
    assert (await client.get("/api/jobs/0123456789abcdef0123456789abcdef/media")).status == 404

    (await input_of(client, job["job_id"])).unlink()  # the upload is gone
    for path in (url, f"{url}/info", f"{url}?variant=audio"):
        gone = await client.get(path)
        text = await gone.text()
        assert gone.status == 404 and (await gone.json())["error"]["code"] == "no_media", text
        no_server_path(client, text)


async def test_media_types_of_audio_files(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client()
    expected = {
        "a.wav": ("audio/wav", None),
        "a.mp3": ("audio/mpeg", "mp3"),
        "a.m4a": ("audio/mp4", "mp4a.40.2"),
        "a.ogg": ("audio/ogg", "vorbis"),
        "a.opus": ("audio/ogg", "opus"),
        "a.flac": ("audio/flac", "flac"),
        "a.webm": ("audio/webm", "opus"),
    }
    for name, (mime, codecs) in expected.items():
        make_tone_bursts(tmp_path / name, [(0.2, 0.6)], 1.0)
        job = await upload(client, tmp_path / name, start=False)
        resp = await client.get(f"/api/jobs/{job['job_id']}/media")
        assert resp.status == 200 and resp.headers["Content-Type"] == mime, name
        assert await resp.read() == (tmp_path / name).read_bytes()
        info = await (await client.get(f"/api/jobs/{job['job_id']}/media/info")).json()
        assert (info["mime"], info["codecs"], info["has_video"]) == (mime, codecs, False), name


# --- HEVC in Matroska: the audio proxy ------------------------------------------------------


async def test_hevc_mkv_info_and_audio_proxy_made_once(make_client: ClientFactory, tmp_path: Path) -> None:
    source = make_hevc_mkv(tmp_path / "hevc.mkv", seconds=3.0)
    client = await make_client()
    job = await upload(client, source, start=False)
    url = f"/api/jobs/{job['job_id']}/media"
    info = await (await client.get(f"{url}/info")).json()
    assert info["mime"] == "video/x-matroska" and info["has_video"] is True
    assert info["codecs"].startswith("hvc1.") and info["codecs"].endswith(", mp4a.40.2")
    assert (info["width"], info["height"]) == (320, 180)
    assert info["proxy"]["ready"] is False

    # Two players ask at once: one ffmpeg run, both get the same file.
    first, second = await asyncio.gather(
        get_bytes(client, f"{url}?variant=audio", 200), get_bytes(client, f"{url}?variant=audio", 200)
    )
    assert first[0] == second[0] and first[1]["Content-Type"] == "audio/mp4"
    svc = service(client)
    assert svc.media_runs["proxy"] == 1
    folder = await job_dir(client, job["job_id"])
    proxy = folder / "proxy.m4a"
    made = proxy.stat()
    again, _ = await get_bytes(client, f"{url}?variant=audio", 200)
    assert again == first[0] and svc.media_runs["proxy"] == 1
    assert (proxy.stat().st_ino, proxy.stat().st_mtime_ns) == (made.st_ino, made.st_mtime_ns)
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".part")]

    # It plays: AAC, mono, as long as the source; and Range works on it.
    served = tmp_path / "served.m4a"
    served.write_bytes(first[0])
    probed: Any = ffprobe(served)
    (stream,) = probed["streams"]
    assert (stream["codec_name"], stream["channels"]) == ("aac", 1)
    assert abs(float(probed["format"]["duration"]) - 3.0) < 0.15
    assert probed["format"]["format_name"].startswith("mov,mp4")
    part, headers = await get_bytes(client, f"{url}?variant=audio", 206, Range="bytes=100-199")
    assert part == first[0][100:200] and headers["Content-Range"] == f"bytes 100-199/{len(first[0])}"
    info = await (await client.get(f"{url}/info")).json()
    assert info["proxy"]["ready"] is True

    # Removed with the job.
    assert (await client.delete(f"/api/jobs/{job['job_id']}")).status == 200
    assert not folder.exists()


async def test_a_failed_proxy_leaves_nothing_and_says_why(make_client: ClientFactory, tmp_path: Path) -> None:
    client = await make_client()
    job = await upload(client, make_tone_bursts(tmp_path / "t.wav", [(0.1, 0.5)], 1.0), start=False)
    src = await input_of(client, job["job_id"])
    src.write_bytes(b"RIFF" + b"\xff" * 200)  # replaced by something ffmpeg cannot read
    resp = await client.get(f"/api/jobs/{job['job_id']}/media?variant=audio")
    text = await resp.text()
    assert resp.status == 400, text
    error = (await resp.json())["error"]
    assert error["code"] in ("not_media", "proxy_failed", "decode_failed") and "t.wav" in error["message"]
    no_server_path(client, text)
    folder = await job_dir(client, job["job_id"])
    assert not list(folder.iterdir())  # no proxy, no .part
    assert service(client).media_runs["proxy"] == 1


async def test_proxy_info_and_peaks_follow_the_jobs_audio_track(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    two = tmp_path / "two.mkv"  # track 0 silent, track 1 a loud tone
    await asyncio.to_thread(
        _ffmpeg,
        "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=2",
        "-f", "lavfi", "-i", "aevalsrc=0.8*sin(2*PI*440*t):s=16000:d=2",
        "-map", "0:a", "-map", "1:a", "-c:a", "aac", two,
    )  # fmt: skip
    client = await make_client()
    job = await upload(client, two, {"audio_track": 1}, start=False)
    url = f"/api/jobs/{job['job_id']}"
    info = await (await client.get(f"{url}/media/info")).json()
    assert (info["audio_track"], info["mime"], info["codecs"]) == (1, "audio/x-matroska", "mp4a.40.2")
    proxy, _ = await get_bytes(client, f"{url}/media?variant=audio", 200)
    served = tmp_path / "proxy.m4a"
    served.write_bytes(proxy)
    assert max(abs(v) for v in _decode_pcm(served, 16000)) > 20000  # the tone, not the silence
    data, _ = await get_bytes(client, f"{url}/peaks", 200)
    assert max(hi for _, hi in pairs(data)) > 80


# --- peaks ----------------------------------------------------------------------------------


async def test_peaks_of_tone_bursts(make_client: ClientFactory, tmp_path: Path) -> None:
    seconds = 4.0
    source = make_tone_bursts(tmp_path / "bursts.m4a", [(1.0, 1.5), (3.0, 3.5)], seconds)
    client = await make_client()
    job = await upload(client, source, start=False)
    url = f"/api/jobs/{job['job_id']}/peaks"
    # No audio.wav yet: decoded from the input; concurrent requests share one run.
    (data, headers), (same, _) = await asyncio.gather(
        get_bytes(client, url, 200), get_bytes(client, url, 200)
    )
    assert data == same and service(client).media_runs["peaks"] == 1
    assert headers["Content-Type"] == "application/octet-stream"
    assert headers["Cache-Control"] == "private, max-age=3600"
    version, flags, rate, per_pixel, length = HEADER.unpack(data[: HEADER.size])
    assert (version, flags, rate, per_pixel) == (1, 1, 16000, 320)
    # What ffmpeg decodes of the AAC track (its priming and padding included).
    decoded = tmp_path / "decoded.wav"
    await asyncio.to_thread(_ffmpeg, "-i", source, "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le", decoded)
    with wave.open(str(decoded), "rb") as wav:
        samples = wav.getnframes()
    assert length == math.ceil(samples / 320) == len(pairs(data))
    assert abs(length - seconds * 50) <= 3
    levels = [max(-lo, hi) for lo, hi in pairs(data)]
    for a, b in ((1.0, 1.5), (3.0, 3.5)):
        assert min(levels[int(a * 50) + 2 : int(b * 50) - 2]) > 80  # 0.8 of full scale: ~102
    for a, b in ((0.0, 0.85), (1.65, 2.85), (3.65, 3.95)):
        assert max(levels[int(a * 50) : int(b * 50)]) <= 2  # silence
    assert (await job_dir(client, job["job_id"]) / "peaks.dat").is_file()
    assert (await get_bytes(client, url, 200))[0] == data and service(client).media_runs["peaks"] == 1

    # The same audio as extracted (a 16 kHz WAV) gives the same peaks.
    assert wav_peaks(decoded) == data

    # Nothing to make them from: not ready.
    other = await upload(client, make_tone_bursts(tmp_path / "b.wav", [(0.1, 0.2)], 0.5), start=False)
    (await input_of(client, other["job_id"])).unlink()
    resp = await client.get(f"/api/jobs/{other['job_id']}/peaks")
    assert resp.status == 409 and (await resp.json())["error"]["code"] == "not_ready"


@pytest.mark.slow
async def test_completed_job_serves_peaks_after_audio_is_dropped(
    make_client: ClientFactory, speech: Speech
) -> None:
    client = await make_client()  # jobs.keep_audio_hours = 0: audio.wav goes when the job ends
    job = await upload(client, speech.path, {"language": "en"})
    await (await open_stream(client, job["job_id"])).until(is_complete, wait=180)
    folder = await job_dir(client, job["job_id"])
    assert not (folder / "audio.wav").exists() and (folder / "peaks.dat").is_file()
    (await input_of(client, job["job_id"])).unlink()  # nor the upload: written by the pipeline
    data, _ = await get_bytes(client, f"/api/jobs/{job['job_id']}/peaks", 200)
    assert service(client).media_runs["peaks"] == 0
    length = HEADER.unpack(data[: HEADER.size])[4]
    assert abs(length - speech.duration * 50) <= 50 and len(data) == HEADER.size + 2 * length
    levels = [max(-lo, hi) for lo, hi in pairs(data)]
    assert max(levels) > 20 and min(levels[: int(0.5 * 50)]) <= 2  # speech, and the silent lead


# --- media grants ---------------------------------------------------------------------------


async def test_media_grant_opens_only_its_jobs_media(make_client: ClientFactory, tmp_path: Path) -> None:
    token = "s3cret-token-0123456789"
    client = await make_client(server={"auth_token": token})
    auth = {"Authorization": f"Bearer {token}"}
    clip = make_tone_bursts(tmp_path / "g.m4a", [(0.2, 0.6)], 1.0)
    job = await upload(client, clip, start=False, headers=auth)
    other = await upload(client, clip, start=False, headers=auth)
    url = f"/api/jobs/{job['job_id']}"

    assert (await client.get(f"{url}/media")).status == 401
    assert (await client.post(f"{url}/media/grant")).status == 401
    resp = await client.post(f"{url}/media/grant", headers=auth)
    granted = await resp.json()
    assert resp.status == 200 and granted["query"].startswith("grant=") and granted["expires_in"] >= 3600
    query = granted["query"]

    for path in ("media", "media?variant=audio", "media/info", "peaks"):
        sep = "&" if "?" in path else "?"
        resp = await client.get(f"{url}/{path}{sep}{query}")
        assert resp.status == 200, (path, await resp.text())
    resp = await client.get(f"{url}/media?{query}", headers={"Range": "bytes=0-9"})
    assert resp.status == 206 and await resp.read() == clip.read_bytes()[:10]
    assert (await client.head(f"{url}/media?{query}")).status == 200  # reusable

    for method, path in (
        ("GET", f"/api/jobs/{other['job_id']}/media"),
        ("GET", f"/api/jobs/{other['job_id']}/peaks"),
        ("GET", url),
        ("GET", f"{url}/subtitles"),
        ("GET", "/api/jobs"),
        ("POST", f"{url}/media/grant"),
        ("DELETE", url),
    ):
        resp = await client.request(method, f"{path}?{query}")
        assert resp.status == 401, (method, path)
    expires, _, mac = query.removeprefix("grant=").partition(".")
    for forged in (f"{int(expires) + 999}.{mac}", f"{expires}.{mac[:-2]}AA", "0.x", "garbage"):
        assert (await client.get(f"{url}/media?grant={forged}")).status == 401

    client.app[GRANTS].lifetime = 1  # a short-lived grant, then past its time
    short = (await (await client.post(f"{url}/media/grant", headers=auth)).json())["query"]
    assert (await client.get(f"{url}/media?{short}")).status == 200
    ends = int(short.removeprefix("grant=").partition(".")[0])
    await asyncio.sleep(max(0.0, ends - time.time()) + 0.05)
    late = await client.get(f"{url}/media?{short}")
    assert late.status == 401 and (await late.json())["error"]["code"] == "unauthorized"
    assert (await client.delete(url, headers=auth)).status == 200
