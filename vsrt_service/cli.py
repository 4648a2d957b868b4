"""The `vsrt` command: serve, transcribe files in-process, list models.

Exit codes: 0 success, 1 a file failed, 2 bad usage or configuration, 69 the job store's server
(store.url) cannot be reached, 75 the data directory is in use by another process (EX_TEMPFAIL:
try again once it stops, or use another --data-dir), 130 interrupted.

Every command opens the data directory for itself and locks it (vsrt_service.jobs.datadir): while
`vsrt serve` runs on ./data, `vsrt transcribe` and `vsrt models ...` on ./data stop at once
with a line naming the server's pid, rather than sharing its database behind its back.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from vsrt_service.core.broker import MODELS_CHANNEL
from vsrt_service.core.catalog import Catalog
from vsrt_service.core.config import ConfigError, Settings, StorageSettings, StoreSettings, load_settings
from vsrt_service.core.errors import NotFound, VsrtError
from vsrt_service.core.files import write_atomic
from vsrt_service.core.formats import FORMATS
from vsrt_service.core.options import OptionError, parse_options
from vsrt_service.core.vocab import VadMethod
from vsrt_service.jobs.datadir import DataDirLocked
from vsrt_service.jobs.store import StoreUnavailable
from vsrt_service.models.manager import ModelManager
from vsrt_service.service import Service

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_BUSY, EXIT_INTERRUPTED = 0, 1, 2, 75, 130
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE: the job store's server cannot be reached


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="data directory (default ./data, or $VSRT_DATA_DIR)")
    parser.add_argument("--config", help="a vsrt.toml with settings to override")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details to stderr")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsrt", description="Subtitles from video and audio.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the HTTP service and browser UI")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default 8000)")
    serve.add_argument(
        "--store",
        metavar="URL",
        help="the job store: postgresql://user@host:port/db shared by several nodes (default: the SQLite"
        " file in the data directory; a password is better given in $VSRT_STORE_URL)",
    )
    serve.add_argument(
        "--storage-root",
        metavar="PATH",
        help="where uploads and job files live, a directory every node mounts at the same path"
        " (default: the data directory; or $VSRT_STORAGE_ROOT)",
    )

    tr = sub.add_parser("transcribe", help="make subtitles for files, without a server")
    _common(tr)
    tr.add_argument("files", nargs="+", metavar="FILE")
    tr.add_argument("-o", "--output-dir", default=".", help="where to write <stem>.<format>")
    tr.add_argument("--format", default="srt", help=f"comma-separated: {','.join(FORMATS)}")
    tr.add_argument("--model", help=f"Whisper model ({', '.join(Catalog.load().ids('whisper'))})")
    tr.add_argument("--language", help="language code, or 'auto' to detect")
    tr.add_argument("--task", choices=("transcribe", "translate"))
    tr.add_argument("--no-align", action="store_true", help="use Whisper's word timings only")
    tr.add_argument("--vad-method", help=f"voice-activity detection ({', '.join(VadMethod)})")
    tr.add_argument("--initial-prompt", metavar="TEXT", help="text Whisper reads first: names, spellings")
    tr.add_argument("--hotwords", metavar="WORDS", help="names and jargon to favour, comma-separated")
    tr.add_argument(
        "--audio-track", metavar="N|LANG", help="audio track: index from 0, or a language code (en, deu)"
    )
    tr.add_argument(
        "--min-silence-for-new-cue", type=float, metavar="SECONDS", help="a pause this long starts a new cue"
    )
    tr.add_argument(
        "--webhook-url", metavar="URL", help="an http(s) URL to POST each job's final state to (signed)"
    )
    tr.add_argument("--diarize", action="store_true", help="find who speaks: a speaker on every cue")
    tr.add_argument("--num-speakers", type=int, metavar="N", help="the exact number of speakers, if known")
    tr.add_argument("--min-speakers", type=int, metavar="N", help="at least this many speakers")
    tr.add_argument("--max-speakers", type=int, metavar="N", help="at most this many speakers")
    tr.add_argument(
        "--speaker-labels", action="store_true", help='TXT as speaker turns, each starting "[SPEAKER_00] "'
    )
    tr.add_argument(
        "--priority", type=int, metavar="N", help="queue priority, -100..100: higher is taken first (0)"
    )

    models = sub.add_parser("models", help="list, download or delete models")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    _common(msub.add_parser("list", help="the catalog and what is installed"))
    for action, text in (
        ("download", "download a model (with a progress bar)"),
        ("delete", "delete a downloaded model"),
    ):
        cmd = msub.add_parser(action, help=text)
        _common(cmd)
        cmd.add_argument("model", metavar="ID", help="a Whisper model id, or a language code with --align")
        cmd.add_argument("--align", action="store_true", help="the alignment model for a language")
    return parser


def _settings(args: argparse.Namespace, **server: Any) -> Settings:
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if getattr(args, "store", None):
        overrides["store"] = {"url": args.store}
    if getattr(args, "storage_root", None):
        overrides["storage"] = {"root": args.storage_root}
    server = {k: v for k, v in server.items() if v is not None}
    if server:
        overrides["server"] = server
    return load_settings(args.config, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "serve":
            from vsrt_service.web.server import serve

            return serve(_settings(args, host=args.host, port=args.port))
        if args.command == "transcribe":
            return asyncio.run(transcribe(args, _settings(args)))
        if args.command == "models":
            return asyncio.run(models_command(args, _settings(args)))
    except ConfigError as exc:
        print(f"vsrt: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DataDirLocked as exc:
        print(f"vsrt: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except StoreUnavailable as exc:
        print(f"vsrt: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except KeyboardInterrupt:
        print("vsrt: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_USAGE


# --- transcribe ----------------------------------------------------------------------------


@dataclass
class _Line:
    name: str
    phase: str = "queued"
    percent: float = 0.0
    message: str = ""
    done: bool = False
    failed: bool = False


class Progress:
    """One line per file: redrawn in place on a terminal, phase changes only otherwise."""

    def __init__(self, names: list[str], out: TextIO) -> None:
        self.lines = [_Line(n) for n in names]
        self.out = out
        self.tty = out.isatty()
        self._drawn = False

    def update(self, i: int, **changes: Any) -> None:
        line = self.lines[i]
        old_phase = line.phase
        for k, v in changes.items():
            setattr(line, k, v)
        if self.tty:
            self._draw()
        elif line.phase != old_phase or changes.get("done"):
            self.out.write(f"{line.name}: {line.phase} {line.percent:.0f}% {line.message}\n")
            self.out.flush()

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        if self._drawn:
            self.out.write(f"\x1b[{len(self.lines)}F")
        for line in self.lines:
            bar_w = 24
            filled = int(bar_w * line.percent / 100)
            bar = "#" * filled + "-" * (bar_w - filled)
            status = "FAILED" if line.failed else line.phase
            text = f"{line.name[:30]:30} [{bar}] {line.percent:5.1f}% {status}: {line.message}"
            self.out.write("\x1b[2K" + text[: width - 1] + "\n")
        self.out.flush()
        self._drawn = True


async def transcribe(args: argparse.Namespace, settings: Settings) -> int:
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        print(f"vsrt: unknown format {', '.join(bad) or '(none)'}; use {','.join(FORMATS)}", file=sys.stderr)
        return EXIT_USAGE
    files = [Path(f) for f in args.files]
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        print("vsrt: two input files share a name; their outputs would overwrite each other", file=sys.stderr)
        return EXIT_USAGE
    out_dir = Path(args.output_dir)
    job_settings: dict[str, Any] = {}
    if args.model:
        job_settings["model"] = args.model
    if args.language:
        job_settings["language"] = None if args.language == "auto" else args.language
    if args.task:
        job_settings["task"] = args.task
    if args.no_align:
        job_settings["align"] = False
    for flag in ("diarize", "speaker_labels"):
        if getattr(args, flag):
            job_settings[flag] = True
    for key in (
        "vad_method",
        "initial_prompt",
        "hotwords",
        "audio_track",
        "min_silence_for_new_cue",
        "webhook_url",
        "num_speakers",
        "min_speakers",
        "max_speakers",
        "priority",
    ):
        if getattr(args, key) is not None:
            job_settings[key] = getattr(args, key)
    try:  # a bad flag stops the run before any work; a file without the audio track fails alone
        parse_options(job_settings, settings)
    except OptionError as exc:
        print(f"vsrt: invalid --{(exc.field or '').replace('_', '-')}: {exc}", file=sys.stderr)
        return EXIT_USAGE

    failures: list[str] = []
    progress = Progress([f.name for f in files], sys.stderr)
    # Its files, its runners: its jobs stay in this host's data directory, never in a store
    # or storage root shared with servers (they would claim them; housekeeping there would
    # take the cluster's jobs, unknown to this store, for orphans).
    settings = replace(settings, store=StoreSettings(), storage=StorageSettings())
    async with Service(settings, own_jobs_only=True) as svc:
        jobs: list[tuple[int, str]] = []
        for i, f in enumerate(files):
            try:
                job = await svc.submit(f, job_settings)
            except VsrtError as exc:
                failures.append(f"{f}: {exc}")
                progress.update(i, failed=True, done=True, message=str(exc))
                continue
            jobs.append((i, job.id))

        async def follow(i: int, job_id: str) -> None:
            async for ev in svc.events(job_id):
                if ev.event in ("progress", "connected"):
                    progress.update(
                        i,
                        phase=ev.data.get("phase", ""),
                        percent=ev.data.get("percent", 0.0),
                        message=ev.data.get("message", ""),
                    )
            job = await svc.get(job_id)
            if job.status != "completed":
                msg = job.error or job.message
                failures.append(f"{files[i]}: {msg}")
                progress.update(i, failed=True, done=True, message=msg)
                return
            target = out_dir
            try:
                await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
                for fmt in formats:
                    text = await svc.subtitles(job_id, fmt)
                    target = out_dir / f"{files[i].stem}.{fmt}"
                    await asyncio.to_thread(write_atomic, target, text)
            except OSError as exc:
                msg = f"cannot write {target}: {exc.strerror or exc}"
                failures.append(f"{files[i]}: {msg}")
                progress.update(i, failed=True, done=True, message=msg)
                return
            progress.update(
                i,
                phase="done",
                percent=100.0,
                done=True,
                message=", ".join(f"{files[i].stem}.{f}" for f in formats),
            )

        await asyncio.gather(*(follow(i, job_id) for i, job_id in jobs))
        if not await svc.send_notices([job_id for _, job_id in jobs]):
            print("vsrt: some webhooks are not sent yet; the next start sends them", file=sys.stderr)
    for line in failures:
        print(f"vsrt: failed: {line}", file=sys.stderr)
    return EXIT_FAILED if failures else EXIT_OK


# --- models --------------------------------------------------------------------------------


async def models_command(args: argparse.Namespace, settings: Settings) -> int:
    """Model commands run the service with only the download runner, no jobs, and no
    background hashing (the command's exit would wait for it)."""
    async with Service(settings, work_runners=False, run_jobs=False, validate_models=False) as svc:
        if args.models_command == "list":
            return models_list(svc.models)
        kind = "align" if args.align else "whisper"
        try:
            if args.models_command == "delete":
                await svc.delete_model(kind, args.model)
                print(f"deleted {kind} model {args.model}")
                return EXIT_OK
            return await models_download(svc, kind, args.model)
        except VsrtError as exc:
            print(f"vsrt: {exc}", file=sys.stderr)
            return EXIT_USAGE if isinstance(exc, NotFound) else EXIT_FAILED


async def models_download(svc: Service, kind: str, model_id: str) -> int:
    sub, _ = svc.broker.subscribe(MODELS_CHANNEL)
    try:
        status = await svc.models.request(kind, model_id, with_aligner=False)
        if status == "ready":
            print(f"{kind} model {model_id} is already downloaded")
            return EXIT_OK
        bar = Progress([f"{kind}:{model_id}"], sys.stderr)
        async for ev in sub:
            if ev.data.get("type") != kind or ev.data.get("model_id") != model_id:
                continue
            if ev.event == "model_progress":
                mb = ev.data["downloaded_bytes"] / 1e6
                eta = ev.data.get("eta_s")
                bar.update(
                    0,
                    phase="download",
                    percent=ev.data["progress"],
                    message=f"{mb:.1f} MB, {ev.data['speed_mbps']:.1f} MB/s"
                    + (f", {eta:.0f} s left" if eta else ""),
                )
            elif ev.event == "model_complete":
                bar.update(0, phase="ready", percent=100.0, done=True, message="ready")
                return EXIT_OK
            elif ev.event == "model_error":
                print(f"vsrt: download failed: {ev.data['error']}", file=sys.stderr)
                return EXIT_FAILED
        return EXIT_FAILED
    finally:
        sub.close()


def models_list(models: ModelManager) -> int:
    for kind in models.catalog.types:
        print("Alignment models:" if kind == "align" else f"{kind.capitalize()} models:")
        for info in models.catalog_state(kind):
            size = f"{info['size_bytes'] / 1e6:,.0f} MB"
            where = f"  {info['path']}" if info["path"] else ""
            print(f"  {info['id']:16} {info['status'].replace('_', ' '):16} {size:>10}{where}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
